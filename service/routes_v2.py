"""KServe V2 / Open Inference Protocol routes, for tools that speak it.

``POST /v2/models/{name}[/versions/{v}]/infer`` takes one input ``x`` (``[N, dim]``, FP32 or
FP64, row-major flat ``data``) and returns the outputs asked for (default: all) among
``log_prob``, ``z``, ``score``, ``percentile``, ``is_anomaly``; ``parameters.fpr`` sets the
false-positive rate. Errors keep this service's JSON error shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

import flowserve

from . import codec
from .errors import InvalidInput
from .repository import ModelVersion
from .routes_predict import _check_fpr
from .state import ApiKey, State, get_state

__all__ = ["v2_router"]

OUTPUTS = ("log_prob", "z", "score", "percentile", "is_anomaly")


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class V2Output(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2Output] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2Tensor]


v2_router = APIRouter(prefix="/v2", tags=["kserve-v2"])


@v2_router.get("")
def server_metadata() -> dict[str, Any]:
    return {"name": "flowserve", "version": flowserve.__version__, "extensions": []}


@v2_router.get("/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@v2_router.get("/health/ready")
def ready(state: State) -> Response:
    from .routes_ops import readiness

    ok = readiness(state)[0]
    return codec.json_response({"ready": ok}, 200 if ok else 503)


def _metadata(mv: ModelVersion) -> dict[str, Any]:
    m = mv.manifest
    assert m is not None
    return {
        "name": mv.name,
        "versions": [str(mv.version)],
        "platform": f"flowserve_{mv.model.runtime if mv.model else 'none'}",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, m.dim]}],
        "outputs": [
            {"name": "log_prob", "datatype": "FP32", "shape": [-1]},
            {"name": "z", "datatype": "FP32", "shape": [-1, m.dim]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "percentile", "datatype": "FP32", "shape": [-1]},
            {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]},
        ],
    }


def _resolve(request: Request, name: str, version: str | None) -> ModelVersion:
    return get_state(request).repository.snapshot.resolve(name, version)


async def _infer(request: Request, mv: ModelVersion, body: V2InferRequest) -> dict[str, Any]:
    state = get_state(request)
    assert mv.manifest is not None and mv.model is not None
    if len(body.inputs) != 1:
        raise InvalidInput(f"expected one input tensor 'x', got {len(body.inputs)}")
    t = body.inputs[0]
    if t.datatype not in ("FP32", "FP64"):
        raise InvalidInput(f"input datatype must be FP32 or FP64, got {t.datatype}")
    if len(t.shape) != 2 or t.shape[1] != mv.manifest.dim:
        raise InvalidInput(
            f"input shape must be [N, {mv.manifest.dim}], got {t.shape}",
            expected=mv.manifest.dim,
        )
    flat = t.data
    if flat and isinstance(flat[0], list):  # tolerate nested data
        flat = [v for row in flat for v in row]
    n = t.shape[0]
    if n * t.shape[1] != len(flat):
        raise InvalidInput(f"shape {t.shape} needs {n * t.shape[1]} values, got {len(flat)}")
    rows = codec.rows_from_json(
        [flat[i * t.shape[1] : (i + 1) * t.shape[1]] for i in range(n)],
        mv.manifest,
        state.settings.max_rows,
        named=False,
    )
    wanted = [o.name for o in body.outputs] if body.outputs else list(OUTPUTS)
    unknown = sorted(set(wanted) - set(OUTPUTS))
    if unknown:
        raise InvalidInput(f"unknown outputs {unknown}; available: {list(OUTPUTS)}")
    fpr = _check_fpr((body.parameters or {}).get("fpr"))
    z, lp = await state.engine.forward(mv.model, rows)
    res = mv.model.score_log_prob(lp, fpr)
    values: dict[str, tuple[np.ndarray, str]] = {
        "log_prob": (lp, "FP32"),
        "z": (z, "FP32"),
        "score": (-lp, "FP32"),
        "percentile": (res.percentile.astype(np.float32), "FP32"),
        "is_anomaly": (res.is_anomaly, "BOOL"),
    }
    outputs = [
        {
            "name": k,
            "shape": list(values[k][0].shape),
            "datatype": values[k][1],
            "data": values[k][0].reshape(-1),
        }
        for k in wanted
    ]
    return {
        "model_name": mv.name,
        "model_version": str(mv.version),
        "id": body.id,
        "outputs": outputs,
        "parameters": {"fpr": res.fpr, "threshold": res.threshold},
    }


for _prefix in ("/models/{name}", "/models/{name}/versions/{version}"):

    @v2_router.get(_prefix, dependencies=[ApiKey], summary="Model metadata (V2)")
    def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
        return _metadata(_resolve(request, name, version))

    @v2_router.get(_prefix + "/ready", dependencies=[ApiKey], summary="Model readiness (V2)")
    def model_ready(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
        mv = _resolve(request, name, version)
        return {"name": mv.name, "ready": mv.ready}

    @v2_router.post(
        _prefix + "/infer",
        dependencies=[ApiKey],
        response_model=V2InferResponse,
        summary="Inference (V2): log_prob, z, score, percentile, is_anomaly",
    )
    async def infer(
        request: Request, body: V2InferRequest, name: str, version: str | None = None
    ) -> Response:
        return codec.json_response(await _infer(request, _resolve(request, name, version), body))
