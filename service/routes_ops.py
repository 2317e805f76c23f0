"""Metadata, health, metrics and admin routes: /models, /healthz, /readyz, /metrics,
/admin/reload."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from starlette.responses import Response

from . import codec
from .drift import drift_info
from .errors import ModelNotFound, VersionNotFound, error_body
from .metrics import CONTENT_TYPE_LATEST
from .repository import ModelSnapshot, ModelVersion
from .schemas import (
    CalibrationSummary,
    ErrorBody,
    HealthResponse,
    ModelInfo,
    ModelList,
    ReadyResponse,
    ReloadResponse,
    VersionInfo,
)
from .state import AdminKey, ApiKey, ServiceState, State

__all__ = ["admin_router", "health_router", "model_info", "models_router", "version_info"]


def version_info(mv: ModelVersion) -> VersionInfo:
    m = mv.manifest
    if m is None:
        return VersionInfo(version=mv.version, status=mv.status, error=mv.error)
    return VersionInfo(
        version=mv.version,
        status=mv.status,
        error=mv.error,
        reload_error=mv.reload_error,
        reload_failed_at=mv.reload_failed_at,
        family=m.family,
        dim=m.dim,
        input_shape=m.input_shape,
        feature_names=m.feature_names,
        base=m.base.kind,
        data_kind=m.preprocessing.data_kind,
        power_transformed=m.preprocessing.power_transformed(m.feature_names),
        runtime=mv.model.runtime if mv.model is not None else None,
        metrics=m.metrics.model_dump(exclude_none=True),
        calibration=CalibrationSummary(
            default_fpr=m.calibration.default_fpr,
            threshold=m.calibration.threshold,
            n_rows=m.calibration.n_rows,
            method=m.calibration.method,
            min_fpr=m.calibration.min_fpr,
            exact=m.calibration.exact,
            folds=m.calibration.folds,
        ),
        drift=drift_info(mv.model),
        created_at=m.created_at,
    )


def model_info(snapshot: ModelSnapshot, name: str) -> ModelInfo:
    versions = snapshot.models.get(name)
    if versions is None:
        known = ", ".join(snapshot.names()) or "none"
        raise ModelNotFound(f"model '{name}' not found (models: {known})", model=name)
    return ModelInfo(
        name=name,
        default_version=snapshot.default_version(name),
        versions=[version_info(mv) for _, mv in sorted(versions.items(), reverse=True)],
    )


def model_list(snapshot: ModelSnapshot) -> ModelList:
    return ModelList(
        default=snapshot.default_name,
        models=[model_info(snapshot, n) for n in snapshot.names()],
    )


models_router = APIRouter(prefix="/models", tags=["models"], dependencies=[ApiKey])
_ERR = {404: {"model": ErrorBody}, 401: {"model": ErrorBody}}


@models_router.get("", response_model=ModelList, summary="All models and their versions")
async def list_models(state: State) -> ModelList:
    return model_list(state.repository.snapshot)


@models_router.get("/{name}", response_model=ModelInfo, responses=_ERR, summary="One model")
async def get_model(name: str, state: State) -> ModelInfo:
    return model_info(state.repository.snapshot, name)


@models_router.get(
    "/{name}/versions/{version}",
    response_model=VersionInfo,
    responses=_ERR,
    summary="One model version (failed versions say why)",
)
async def get_version(name: str, version: str, state: State) -> VersionInfo:
    info = model_info(state.repository.snapshot, name)
    for v in info.versions:
        if str(v.version) == version:
            return v
    known = ", ".join(str(v.version) for v in info.versions)
    raise VersionNotFound(f"model '{name}' has no version '{version}' (versions: {known})")


health_router = APIRouter(tags=["health"])


@health_router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    return HealthResponse()


def readiness(state: ServiceState) -> tuple[bool, dict[str, int | None], list[str]]:
    snap = state.repository.snapshot
    models = {n: snap.default_version(n) for n in snap.names()}
    failed = [f"{mv.name}/{mv.version}" for mv in snap.failed_versions()]
    ready = state.repository.loaded and any(v is not None for v in models.values())
    return ready, models, failed


@health_router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ErrorBody, "description": "no model loaded yet, or shutting down"}},
    summary="Readiness: models loaded and warmed up",
)
async def readyz(state: State) -> Response:
    ready, models, failed = readiness(state)
    if state.draining:
        return codec.json_response(
            error_body("draining", "not ready: shutting down", models=models, failed=failed),
            503,
        )
    if not ready:
        why = "models are still loading" if not state.repository.loaded else "no model is ready"
        return codec.json_response(
            error_body("not_ready", f"not ready: {why}", models=models, failed=failed), 503
        )
    return codec.json_response({"status": "ready", "models": models, "failed": failed})


@health_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    snap = state.repository.snapshot
    state.metrics.set_models(len(snap.ready_versions()), len(snap.failed_versions()))
    # Multiprocess mode reads every worker's files: off the event loop.
    body = await anyio.to_thread.run_sync(state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey])


@admin_router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorBody, "description": "missing or invalid admin key"},
        403: {"model": ErrorBody, "description": "admin endpoints are off (no admin key set)"},
    },
    summary="Rescan the model root and load new or changed versions",
)
async def reload(state: State) -> ReloadResponse:
    # Its own worker thread, not an inference slot: loading must not stall requests.
    snap = await anyio.to_thread.run_sync(state.repository.reload)
    state.metrics.set_models(len(snap.ready_versions()), len(snap.failed_versions()))
    return ReloadResponse(generation=snap.generation, **model_list(snap).model_dump())
