"""Open Inference Protocol (KServe V2 REST) on top of the service's model repository.

So that KServe, Triton-style clients and MLServer tooling can call flowserve as they call any
V2 server. Routes (``{v}`` optional everywhere a model is named)::

    GET  /v2/health/live                          {"live": true}
    GET  /v2/health/ready                         {"ready": bool}   (503 when not ready)
    GET  /v2                                      server metadata
    GET  /v2/models/{name}[/versions/{v}]         model metadata (input/output tensors)
    GET  /v2/models/{name}[/versions/{v}]/ready   {"name", "ready"}
    POST /v2/models/{name}[/versions/{v}]/infer   inference

Inference takes one input tensor ``x`` (``[N, dim]``, any numeric datatype, data flat or
nested, row-major) and answers the outputs ``log_prob`` (FP32 ``[N]``), ``z`` (FP32
``[N, dim]``), ``score`` (FP32 ``[N]``, = -log_prob), ``percentile`` (FP64 ``[N]``),
``is_anomaly`` (BOOL ``[N]``) and ``p_value`` (FP64 ``[N]``, the conformal p-value), all of them
unless the request's ``outputs`` names some.
Request ``parameters`` may carry ``fpr`` (false-positive rate for ``is_anomaly``); the response
``parameters`` carry the ``fpr`` and ``threshold`` used.

Errors use the V2 shape ``{"error": "<message>"}`` with the service's status codes. Inference
runs through the service's :class:`~flowserve.service.batching.InferenceEngine` on models from
its :class:`~flowserve.service.repository.ModelRepository`: nothing here re-implements scoring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import flowserve

from . import codec
from .errors import (
    ApiError,
    InvalidInput,
    ModelUnavailable,
    OutOfRange,
    TooManyRows,
    from_validation_errors,
)
from .repository import ModelVersion
from .routes_ops import readiness
from .routes_predict import score_batch
from .state import ServiceState, get_state, require_api_key

__all__ = ["OUTPUTS", "V2Route", "kserve_v2_router"]

INPUT_NAME = "x"
# output name -> (datatype, True when the tensor is [N, dim] rather than [N])
OUTPUTS: dict[str, tuple[str, bool]] = {
    "log_prob": ("FP32", False),
    "z": ("FP32", True),
    "score": ("FP32", False),
    "percentile": ("FP64", False),
    "is_anomaly": ("BOOL", False),
    "p_value": ("FP64", False),
}
_NUMERIC_TYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
     "UINT64"}
)  # fmt: skip
_PLATFORM = {"onnxruntime": "onnxruntime_onnx", "torchscript": "pytorch_torchscript"}


def _v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = codec.json_response({"error": message}, status)
    if headers:
        response.headers.update(headers)
    return response


class V2Route(APIRoute):
    """A route whose errors (including auth and model resolution) use the V2 error shape
    ``{"error": "..."}`` instead of the service's ``{"error": {"code", "message"}}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                _count_error(request, e.code)
                auth = {"WWW-Authenticate": "Bearer"} if e.status_code == 401 else None
                return _v2_error(e.status_code, e.message, auth)
            except RequestValidationError as e:
                err = from_validation_errors(e.errors())
                _count_error(request, err.code)
                return _v2_error(err.status_code, err.message)
            except StarletteHTTPException as e:
                return _v2_error(e.status_code, str(e.detail), dict(e.headers or {}))

        return v2_handler


def _count_error(request: Request, code: str) -> None:
    state = getattr(request.app.state, "flowserve", None)
    if state is not None:
        state.metrics.error(code)


def _resolve(request: Request, name: str, version: str | None) -> ModelVersion:
    require_api_key(request)
    return get_state(request).repository.snapshot.resolve(name, version)


# -- health and metadata ----------------------------------------------------------------------


async def live() -> dict[str, bool]:
    return {"live": True}


async def ready(request: Request) -> Response:
    is_ready, _, _ = readiness(get_state(request))
    return codec.json_response({"ready": is_ready}, 200 if is_ready else 503)


async def server_metadata() -> dict[str, Any]:
    return {"name": "flowserve", "version": flowserve.__version__, "extensions": []}


def _metadata(mv: ModelVersion, versions: list[int]) -> dict[str, Any]:
    assert mv.manifest is not None and mv.model is not None
    dim = mv.manifest.dim
    return {
        "name": mv.name,
        "versions": [str(v) for v in versions],
        "platform": _PLATFORM.get(mv.model.runtime, mv.model.runtime),
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, dim]}],
        "outputs": [
            {"name": name, "datatype": dtype, "shape": [-1, dim] if wide else [-1]}
            for name, (dtype, wide) in OUTPUTS.items()
        ],
    }


async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    mv = _resolve(request, name, version)
    snap = get_state(request).repository.snapshot
    versions = sorted(v for v, m in snap.models.get(name, {}).items() if m.ready)
    return codec.json_response(_metadata(mv, versions))


async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    try:
        mv = _resolve(request, name, version)
    except ModelUnavailable:
        return codec.json_response({"name": name, "ready": False}, 503)
    return codec.json_response({"name": mv.name, "ready": mv.ready})


# -- inference --------------------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _input_rows(payload: dict[str, Any], mv: ModelVersion, max_rows: int) -> np.ndarray:
    assert mv.manifest is not None
    manifest = mv.manifest
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InvalidInput(
            f"'inputs' must be a list holding one tensor named {INPUT_NAME!r} "
            f"(shape [N, {manifest.dim}])"
        )
    tensor = _object(inputs[0], "inputs[0]")
    name, shape, dtype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if name != INPUT_NAME:
        raise InvalidInput(f"unknown input tensor {name!r}: this model takes {INPUT_NAME!r}")
    if dtype not in _NUMERIC_TYPES:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has datatype {dtype!r}; use a numeric one such as FP32"
        )
    if not (
        isinstance(shape, list)
        and len(shape) >= 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise InvalidInput(f"input {INPUT_NAME!r} needs a shape [N, {manifest.dim}], got {shape!r}")
    if shape[0] == 0:
        raise InvalidInput(f"input {INPUT_NAME!r} is empty: send at least one row")
    if shape[0] > max_rows:
        raise TooManyRows(
            f"{shape[0]} rows is more than this server accepts in one JSON request "
            f"({max_rows}); split the request or use the binary .npy endpoints",
            rows=shape[0],
            max_rows=max_rows,
        )
    if math.prod(shape[1:]) != manifest.dim:
        raise InvalidInput(
            f"input {INPUT_NAME!r}: expected shape [N, {manifest.dim}] "
            f"(features {manifest.feature_names}), got {shape}"
        )
    try:
        data = np.asarray(tensor.get("data"), dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"input {INPUT_NAME!r}: data must be numbers") from None
    if data.size != math.prod(shape):
        raise InvalidInput(
            f"input {INPUT_NAME!r}: shape {shape} needs {math.prod(shape)} values, "
            f"data holds {data.size}"
        )
    rows = np.ascontiguousarray(data.reshape(shape[0], manifest.dim), dtype=np.float32)
    codec.check_finite(rows, f"input {INPUT_NAME!r}")
    return rows


def _requested_outputs(payload: dict[str, Any]) -> list[str]:
    outputs = payload.get("outputs")
    if outputs is None:
        return list(OUTPUTS)
    if not isinstance(outputs, list) or not outputs:
        raise InvalidInput("'outputs' must be a non-empty list of {'name': ...} objects")
    names = [_object(o, "each output").get("name") for o in outputs]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
    return list(dict.fromkeys(names))  # type: ignore[arg-type]


def _fpr(payload: dict[str, Any]) -> float | None:
    params = payload.get("parameters") or {}
    fpr = _object(params, "'parameters'").get("fpr")
    if fpr is None:
        return None
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0.0 < fpr < 1.0:
        raise OutOfRange(f"parameters.fpr must be a number in (0, 1), got {fpr!r}", field="fpr")
    return float(fpr)


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    mv = _resolve(request, name, version)
    state: ServiceState = get_state(request)
    start = time.perf_counter()
    status = "200"
    try:
        payload = _object(codec.loads(await request.body()), "the request body")
        x = _input_rows(payload, mv, state.settings.max_rows)
        wanted = _requested_outputs(payload)
        fpr = _fpr(payload)
        assert mv.model is not None
        z, log_prob = await state.engine.forward(mv.model, x)
        scored = score_batch(state, mv, log_prob, fpr)  # 422 below 1/(n+1); drift window
        values: dict[str, np.ndarray] = {
            "log_prob": log_prob.astype(np.float32, copy=False),
            "z": z,
            "score": (-log_prob).astype(np.float32, copy=False),
            "percentile": np.asarray(scored.percentile, dtype=np.float64),
            "is_anomaly": np.asarray(scored.is_anomaly, dtype=bool),
            "p_value": np.asarray(scored.p_value, dtype=np.float64),
        }
        state.metrics.rows.labels("v2_infer", mv.name).inc(len(x))
    except ApiError as e:
        status = str(e.status_code)
        raise
    finally:
        state.metrics.requests.labels("v2_infer", mv.name, str(mv.version), status).inc()
        state.metrics.latency.labels("v2_infer", mv.name).observe(time.perf_counter() - start)
    body: dict[str, Any] = {
        "model_name": mv.name,
        "model_version": str(mv.version),
        "parameters": {"fpr": scored.fpr, "threshold": scored.threshold},
        "outputs": [
            {
                "name": out,
                "datatype": OUTPUTS[out][0],
                "shape": list(values[out].shape),
                "data": values[out].reshape(-1),
            }
            for out in wanted
        ],
    }
    if "id" in payload:
        body["id"] = payload["id"]
    return codec.json_response(body)


def kserve_v2_router() -> APIRouter:
    """The V2 routes, for ``app.include_router(kserve_v2_router())``."""
    router = APIRouter(prefix="/v2", tags=["kserve-v2"], route_class=V2Route)
    router.add_api_route("/health/live", live, methods=["GET"], summary="V2 liveness")
    router.add_api_route("/health/ready", ready, methods=["GET"], summary="V2 readiness")
    router.add_api_route("", server_metadata, methods=["GET"], summary="V2 server metadata")
    for suffix in ("", "/versions/{version}"):
        base = "/models/{name}" + suffix
        router.add_api_route(base, model_metadata, methods=["GET"], summary="V2 model metadata")
        router.add_api_route(
            base + "/ready", model_ready, methods=["GET"], summary="V2 model readiness"
        )
        router.add_api_route(
            base + "/infer", infer, methods=["POST"], summary="V2 inference (Open Inference)"
        )
    return router
