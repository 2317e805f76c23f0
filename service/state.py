"""What the routes share, held on ``app.state.flowserve``, and the dependencies that reach it."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .batching import InferenceEngine
from .errors import AdminDisabled, Unauthorized
from .metrics import ServiceMetrics
from .repository import ModelRepository, ModelVersion
from .settings import ServiceSettings

__all__ = [
    "AdminKey",
    "ApiKey",
    "ServiceState",
    "State",
    "get_state",
    "require_admin_key",
    "require_api_key",
]


@dataclass
class ServiceState:
    settings: ServiceSettings
    repository: ModelRepository
    engine: InferenceEngine
    metrics: ServiceMetrics
    draining: bool = False  # set on SIGTERM: /readyz answers 503 while in-flight work finishes


def get_state(request: Request) -> ServiceState:
    return request.app.state.flowserve


# Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a worker
# thread, a hop that cost more than the whole inference of a small request.
async def _state_dep(request: Request) -> ServiceState:
    return request.app.state.flowserve


State = Annotated[ServiceState, Depends(_state_dep)]


def _given_key(request: Request) -> str | None:
    given = request.headers.get("x-api-key")
    if given is None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return given


def _check_key(request: Request, keys: list[str]) -> None:
    given = _given_key(request)
    if given is None:
        raise Unauthorized(
            "missing API key: send it as header 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
        )
    # Compare against every key in constant time, so timing reveals nothing about near misses.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    if not ok:
        raise Unauthorized("invalid API key")


def require_api_key(request: Request) -> None:
    """When API keys are configured: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``."""
    keys = request.app.state.flowserve.settings.api_keys
    if keys:
        _check_key(request, keys)


def require_admin_key(request: Request) -> None:
    """Admin routes need an admin key (model keys are not admin keys); with none configured
    they are off (403), so a default server cannot be reloaded by anyone who reaches it."""
    keys = request.app.state.flowserve.settings.admin_keys
    if not keys:
        raise AdminDisabled(
            "admin endpoints are off: start the server with FLOWSERVE_ADMIN_KEYS or "
            "FLOWSERVE_ADMIN_KEY_FILE set (or use --watch to follow the model root)"
        )
    _check_key(request, keys)


async def _api_key_dep(request: Request) -> None:
    require_api_key(request)


ApiKey = Depends(_api_key_dep)


async def _admin_key_dep(request: Request) -> None:
    require_admin_key(request)


AdminKey = Depends(_admin_key_dep)


# The model version each route prefix serves (``""``, ``/models/{name}``, its ``/versions/...``):
# routes_predict calls these directly rather than as dependencies (see its ``_endpoint``).
async def _default(request: Request) -> ModelVersion:
    return get_state(request).repository.snapshot.resolve()


async def _named(request: Request, name: str) -> ModelVersion:
    return get_state(request).repository.snapshot.resolve(name)


async def _versioned(request: Request, name: str, version: str) -> ModelVersion:
    return get_state(request).repository.snapshot.resolve(name, version)
