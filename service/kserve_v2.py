"""Open Inference Protocol (KServe V2 REST) on top of the service's model repository.

So that KServe, Triton clients (tritonclient) and MLServer tooling can call flowserve as they call
any V2 server. Routes (``[/versions/{v}]`` optional everywhere a model is named)::

    GET  /v2/health/live                          {"live": true}
    GET  /v2/health/ready                         {"ready": bool}   (503 when not ready)
    GET  /v2                                      server metadata, with the extensions below
    GET  /v2/models/{name}[/versions/{v}]         model metadata (input/output tensors)
    GET  /v2/models/{name}[/versions/{v}]/ready   {"name", "ready"}
    GET  /v2/models/{name}[/versions/{v}]/config  model configuration (Triton's JSON form)
    GET  /v2/models[/{name}[/versions/{v}]]/stats inference statistics (this worker process)
    POST /v2/repository/index                     every version: READY or UNAVAILABLE, and why
    POST /v2/models/{name}[/versions/{v}]/infer   inference

Inference takes one input tensor ``x`` (``[N, dim]``, any numeric datatype, read as declared;
JSON data flat or nested, row-major, or binary) and answers the outputs ``log_prob`` (FP32
``[N]``), ``z`` (FP32 ``[N, dim]``), ``score`` (FP32 ``[N]``, = -log_prob), ``percentile``
(FP64 ``[N]``), ``is_anomaly`` (BOOL ``[N]``) and ``p_value`` (FP64 ``[N]``, the conformal
p-value), all of them unless the request's ``outputs`` names some. Request ``parameters`` may
carry ``fpr`` (false-positive rate for ``is_anomaly``); the response ``parameters`` carry the
``fpr`` and ``threshold`` used. The binary tensor extension
(:mod:`~flowserve.service.v2_tensors`) works both ways.

Errors on every /v2 path, unknown ones included, use the V2 shape ``{"error": "<message>"}`` with
the service's status codes. Inference runs through the service's
:class:`~flowserve.service.batching.InferenceEngine` on models from its
:class:`~flowserve.service.repository.ModelRepository`: nothing here re-implements scoring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

import flowserve

from . import codec, limits, v2_tensors
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
from .v2_schemas import V2Error, V2InferenceResponse
from .v2_tensors import V2Body

__all__ = ["EXTENSIONS", "OUTPUTS", "V2Route", "fast_lane_routes", "kserve_v2_router", "v2_errors"]

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
# The protocol extensions implemented here, as Triton names them.
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
_PLATFORM = {"onnxruntime": "onnxruntime_onnx", "torchscript": "pytorch_torchscript"}
_BACKEND = {"onnxruntime": "onnxruntime", "torchscript": "pytorch"}
_CATCH_ALL = "/v2/{path:path}"


def _v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = codec.json_response({"error": message}, status)
    if headers:
        response.headers.update(headers)
    return response


def v2_errors(
    handler: Callable[..., Coroutine[Any, Any, Response]],
) -> Callable[..., Coroutine[Any, Any, Response]]:
    """``handler`` with its errors (including auth and model resolution) in the V2 shape
    ``{"error": "..."}`` instead of the service's ``{"error": {"code", "message"}}``: what
    :class:`V2Route` runs, and what the fast lane calls for ``/v2/.../infer``."""

    async def v2_handler(request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(request, *args, **kwargs)
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


class V2Route(APIRoute):
    """A route whose errors use the V2 error shape (:func:`v2_errors`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return v2_errors(super().get_route_handler())


def fast_lane_routes() -> dict[str, Callable[..., Coroutine[Any, Any, Response]]]:
    """Path template -> route function of the V2 routes the fast lane answers (inference)."""
    answer = v2_errors(infer)
    return {"/v2/models/{name}/infer": answer, "/v2/models/{name}/versions/{version}/infer": answer}


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
    return {"name": "flowserve", "version": flowserve.__version__, "extensions": EXTENSIONS}


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


def _input_rows(body: V2Body, mv: ModelVersion, max_rows: int) -> np.ndarray:
    assert mv.manifest is not None
    manifest = mv.manifest
    inputs = body.header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InvalidInput(
            f"'inputs' must be a list holding one tensor named {INPUT_NAME!r} "
            f"(shape [N, {manifest.dim}])"
        )
    tensor = _object(inputs[0], "inputs[0]")
    if tensor.get("name") != INPUT_NAME:
        raise InvalidInput(
            f"unknown input tensor {tensor.get('name')!r}: this model takes {INPUT_NAME!r}"
        )
    shape = tensor.get("shape")
    if isinstance(shape, list) and shape and isinstance(shape[0], int) and shape[0] > max_rows:
        raise TooManyRows(
            f"{shape[0]} rows is more than this server accepts in one request "
            f"({max_rows}); split the request or use the binary .npy endpoints",
            rows=shape[0],
            max_rows=max_rows,
        )
    scan = b"true" in body.raw_json or b"false" in body.raw_json
    values, shape, _ = v2_tensors.decode_input(tensor, body.binary, 0, scan)
    if len(shape) < 2 or math.prod(shape[1:]) != manifest.dim:
        raise InvalidInput(
            f"input {INPUT_NAME!r}: expected shape [N, {manifest.dim}] "
            f"(features {manifest.feature_names}), got {shape}"
        )
    if shape[0] == 0:
        raise InvalidInput(f"input {INPUT_NAME!r} is empty: send at least one row")
    with np.errstate(over="ignore"):  # overflow becomes Inf, reported by check_finite
        rows = np.ascontiguousarray(values.reshape(shape[0], manifest.dim), dtype=np.float32)
    codec.check_finite(rows, f"input {INPUT_NAME!r}")
    return rows


def _flag(params: Any, key: str, what: str) -> bool | None:
    if params is None:
        return None
    value = _object(params, f"{what} 'parameters'").get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{what} parameter {key!r} must be true or false, got {value!r}")
    return value


def _requested_outputs(payload: dict[str, Any]) -> list[tuple[str, bool]]:
    """``(name, binary)`` of each output to return, in the order asked."""
    binary_all = bool(_flag(payload.get("parameters"), "binary_data_output", "the request's"))
    outputs = payload.get("outputs")
    if outputs is None:
        return [(name, binary_all) for name in OUTPUTS]
    if not isinstance(outputs, list) or not outputs:
        raise InvalidInput("'outputs' must be a non-empty list of {'name': ...} objects")
    wanted: dict[str, bool] = {}
    for o in outputs:
        out = _object(o, "each output")
        name = out.get("name")
        if name not in OUTPUTS:
            raise InvalidInput(f"unknown output {name!r}; this model has {list(OUTPUTS)}")
        binary = _flag(out.get("parameters"), "binary_data", f"output {name!r}")
        wanted[name] = binary_all if binary is None else binary
    return list(wanted.items())


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
        s = state.settings
        assert mv.manifest is not None
        dim = mv.manifest.dim
        body = v2_tensors.split_body(
            await request.body(),
            request.headers.get(v2_tensors.HEADER_LENGTH),
            lambda raw: limits.check_json_values(raw, s.max_rows, dim, s.max_json_values),
        )
        payload = _object(body.header, "the request body")
        x = _input_rows(body, mv, state.settings.max_rows)
        wanted = _requested_outputs(payload)
        fpr = _fpr(payload)
        assert mv.model is not None
        z, folds = None, None
        if mv.model.has_score_graph and all(out != "z" for out, _ in wanted):
            # cross-conformal p-values need the fold models' scores: the score graph alone gives
            # them and the served log_prob, one graph call
            log_prob, folds = await state.engine.score_log_probs(mv.model, x)
        else:
            z, log_prob = await state.engine.forward(mv.model, x)
            if mv.model.has_score_graph:
                folds = (await state.engine.score_log_probs(mv.model, x))[1]
        scored = score_batch(state, mv, log_prob, fpr, folds)  # 422 below 1/(n+1); drift window
        values: dict[str, np.ndarray] = {
            "log_prob": log_prob.astype(np.float32, copy=False),
            "score": (-log_prob).astype(np.float32, copy=False),
            "percentile": np.asarray(scored.percentile, dtype=np.float64),
            "is_anomaly": np.asarray(scored.is_anomaly, dtype=bool),
            "p_value": np.asarray(scored.p_value, dtype=np.float64),
        }
        if z is not None:  # computed when asked for (always, on models without a score graph)
            values["z"] = z
        state.metrics.rows.labels("v2_infer", mv.name).inc(len(x))
    except ApiError as e:
        status = str(e.status_code)
        raise
    finally:
        state.metrics.requests.labels("v2_infer", mv.name, str(mv.version), status).inc()
        state.metrics.latency.labels("v2_infer", mv.name).observe(time.perf_counter() - start)
    head: dict[str, Any] = {
        "model_name": mv.name,
        "model_version": str(mv.version),
        "parameters": {"fpr": scored.fpr, "threshold": scored.threshold},
    }
    if "id" in payload:
        head["id"] = payload["id"]
    return v2_tensors.encode_response(
        head, [(out, OUTPUTS[out][0], values[out], binary) for out, binary in wanted]
    )


# -- model configuration, statistics, repository index ----------------------------------------


def _config(mv: ModelVersion, state: ServiceState) -> dict[str, Any]:
    assert mv.manifest is not None and mv.model is not None
    dim = mv.manifest.dim
    engine = state.engine
    config: dict[str, Any] = {
        "name": mv.name,
        "platform": _PLATFORM.get(mv.model.runtime, mv.model.runtime),
        "backend": _BACKEND.get(mv.model.runtime, mv.model.runtime),
        # 0: the batch dimension is part of each tensor's dims (-1), as the inputs declare it.
        "max_batch_size": 0,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [-1, dim]}],
        "output": [
            {"name": name, "data_type": f"TYPE_{dtype}", "dims": [-1, dim] if wide else [-1]}
            for name, (dtype, wide) in OUTPUTS.items()
        ],
        "parameters": {
            "family": {"string_value": mv.manifest.family},
            "max_rows_per_request": {"string_value": str(state.settings.max_rows)},
        },
    }
    if engine.batching:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(engine.max_delay_s * 1e6),
            "max_batch_size": engine.max_batch_size,
        }
    return config


async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    mv = _resolve(request, name, version)
    return codec.json_response(_config(mv, get_state(request)))


def _stats(mv: ModelVersion, state: ServiceState) -> dict[str, Any]:
    assert mv.model is not None
    s = state.engine.stats(mv.model)

    def pair(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}

    return {
        "name": mv.name,
        "version": str(mv.version),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": pair(s.success_count, s.success_ns),
            "fail": pair(s.fail_count, s.fail_ns),
            # Time waiting for a batch and computing, per request: success minus compute.
            "queue": pair(s.success_count, max(s.success_ns - s.compute_ns, 0)),
            "compute_input": pair(s.execution_count, 0),
            "compute_infer": pair(s.execution_count, s.compute_ns),
            "compute_output": pair(s.execution_count, 0),
        },
        "batch_stats": [],
    }


async def model_stats(
    request: Request, name: str | None = None, version: str | None = None
) -> Response:
    """Per model version, since it was loaded, in this worker process."""
    require_api_key(request)
    state = get_state(request)
    snap = state.repository.snapshot
    if name is None:
        chosen = snap.ready_versions()
    elif version is None:
        snap.resolve(name)  # 404 for unknown names, 503 when none is ready
        chosen = [mv for mv in snap.models[name].values() if mv.ready]
    else:
        chosen = [snap.resolve(name, version)]
    return codec.json_response({"model_stats": [_stats(mv, state) for mv in chosen]})


async def repository_index(request: Request) -> Response:
    """Every version in the repository, ready or not (``{"ready": true}`` filters)."""
    require_api_key(request)
    raw = await request.body()
    only_ready = False
    if raw.strip():
        only_ready = bool(_flag(_object(codec.loads(raw), "the request body"), "ready", "index"))
    snap = get_state(request).repository.snapshot
    entries = []
    for name in snap.names():
        for version, mv in sorted(snap.models[name].items()):
            if only_ready and not mv.ready:
                continue
            entries.append(
                {
                    "name": name,
                    "version": str(version),
                    "state": "READY" if mv.ready else "UNAVAILABLE",
                    "reason": mv.error or "",
                }
            )
    return codec.json_response(entries)  # type: ignore[arg-type]


def _unknown_path(routes: list[Any]) -> Callable[..., Coroutine[Any, Any, Response]]:
    async def unknown_path(request: Request, path: str) -> Response:
        """Any other /v2 path: a V2-shaped 404, or 405 where the path exists."""
        for route in routes:
            if route.path != _CATCH_ALL and route.matches(request.scope)[0] != Match.NONE:
                method, where = request.method, request.url.path
                return _v2_error(405, f"method {method} is not allowed on {where}")
        return _v2_error(404, f"no such V2 endpoint: {request.method} {request.url.path}")

    return unknown_path


class _ModelRoute(NamedTuple):
    """One per-model V2 route, served under ``/models/{name}`` and its ``/versions/{version}``."""

    path: str
    handler: Callable[..., Coroutine[Any, Any, Response]]
    summary: str
    method: str = "GET"
    responses: dict[int | str, dict[str, Any]] | None = None
    openapi_extra: dict[str, Any] | None = None


def _model_routes(errors: dict[int | str, dict[str, Any]]) -> tuple[_ModelRoute, ...]:
    return (
        _ModelRoute("", model_metadata, "V2 model metadata", responses=errors),
        _ModelRoute("/ready", model_ready, "V2 model readiness"),
        _ModelRoute("/config", model_config, "V2 model configuration", responses=errors),
        _ModelRoute("/stats", model_stats, "V2 model statistics", responses=errors),
        _ModelRoute(
            "/infer",
            infer,
            "V2 inference (Open Inference Protocol, binary tensor extension)",
            method="POST",
            responses={200: {"model": V2InferenceResponse}, **errors},
            openapi_extra=_body_docs("V2InferenceRequest", binary=True),
        ),
    )


def kserve_v2_router() -> APIRouter:
    """The V2 routes, for ``app.include_router(kserve_v2_router())``."""
    router = APIRouter(prefix="/v2", tags=["kserve-v2"], route_class=V2Route)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": V2Error} for code in (401, 404, 413, 422, 503)
    }
    router.add_api_route("/health/live", live, methods=["GET"], summary="V2 liveness")
    router.add_api_route("/health/ready", ready, methods=["GET"], summary="V2 readiness")
    router.add_api_route(
        "", server_metadata, methods=["GET"], summary="V2 server metadata", response_model=None
    )
    router.add_api_route(
        "/repository/index",
        repository_index,
        methods=["POST"],
        summary="V2 repository index (every version, READY or UNAVAILABLE)",
        responses=errors,
        openapi_extra=_body_docs("V2RepositoryIndexRequest", required=False),
    )
    router.add_api_route(
        "/models/stats", model_stats, methods=["GET"], summary="V2 statistics of every model"
    )
    model_routes = _model_routes(errors)
    for suffix in ("", "/versions/{version}"):
        for route in model_routes:
            router.add_api_route(
                "/models/{name}" + suffix + route.path,
                route.handler,
                methods=[route.method],
                summary=route.summary,
                responses=route.responses,
                openapi_extra=route.openapi_extra,
            )
    router.add_api_route(
        _CATCH_ALL.removeprefix("/v2"),
        _unknown_path(router.routes),
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
        include_in_schema=False,
    )
    return router


def _body_docs(schema: str, *, binary: bool = False, required: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    }
    if binary:
        content[v2_tensors.BINARY_TYPE] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "binary tensor extension: the JSON request (its length in header "
            f"{v2_tensors.HEADER_LENGTH}), then the raw little-endian input bytes",
        }
    return {"requestBody": {"required": required, "content": content}}
