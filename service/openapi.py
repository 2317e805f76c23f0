"""The OpenAPI document, completed with what only the running server knows.

FastAPI documents the routes; the row-carrying bodies are parsed by the routes themselves, so
their schemas are added here, and then tightened to what this server accepts right now:

- the row width and feature names of the default model (and of the ``/models/{name}`` routes
  when every served model has the same ones), numbers within float32 range;
- the maxima: rows per request (``max_rows``, and the JSON value budget), ``n`` up to
  ``max_sample``, ``temperature`` up to ``max_temperature``, ``seed`` in ``[0, 2**63 - 1]``;
- ``name`` as one of the served models, ``version`` as a canonical decimal.

The document is rebuilt whenever a reload changes the repository snapshot.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .limits import JSON_SLACK
from .repository import ModelSnapshot
from .schemas import (
    DecodeRequest,
    ErrorBody,
    ExplainRequest,
    RowsRequest,
    SampleRequest,
    ScoreRequest,
)
from .state import ServiceState
from .v2_schemas import V2_BODY_SCHEMAS

__all__ = ["openapi_document"]

# Request bodies parsed by the routes themselves; their schemas are added to the document.
_BODY_SCHEMAS = (
    RowsRequest, ScoreRequest, DecodeRequest, SampleRequest, ExplainRequest, ErrorBody,
    *V2_BODY_SCHEMAS,
)  # fmt: skip
_ROW_BODIES = ("RowsRequest", "ScoreRequest", "DecodeRequest", "ExplainRequest")
_FLOAT32_MAX = 3.4028234663852886e38
_NUMBER = {"type": "number", "minimum": -_FLOAT32_MAX, "maximum": _FLOAT32_MAX}
_MODEL_ROUTES = ("log_prob", "score", "explain", "encode", "decode", "sample")


def _width(snapshot: ModelSnapshot, name: str | None) -> tuple[int, list[str]] | None:
    """(dim, feature names) of ``name``'s default version, None when it has no ready one."""
    if name is None or snapshot.default_version(name) is None:
        return None
    manifest = snapshot.models[name][snapshot.default_version(name)].manifest  # type: ignore[index]
    return (manifest.dim, list(manifest.feature_names)) if manifest is not None else None


def _inputs(dim: int | None, names: list[str] | None, named: bool, max_rows: int) -> dict:
    row: dict[str, Any] = {"type": "array", "items": _NUMBER}
    if dim is not None:
        row |= {"minItems": dim, "maxItems": dim}
    variants = [row]  # every row a list, or (where names are accepted) every row an object
    if named:
        obj: dict[str, Any] = {"type": "object", "additionalProperties": _NUMBER}
        if names is not None:
            obj = {
                "type": "object",
                "properties": {n: _NUMBER for n in names},
                "required": names,
                "additionalProperties": False,
            }
        variants.append(obj)
    arrays = [{"type": "array", "items": v, "minItems": 1, "maxItems": max_rows} for v in variants]
    return {
        **(arrays[0] if len(arrays) == 1 else {"anyOf": arrays}),
        "description": "rows of the model's width"
        + (f" ({dim}: {names})" if dim is not None else " (see GET /models: dim)")
        + "; all lists of numbers, or all objects keyed by feature name",
    }


def _row_bodies(
    components: dict[str, Any], suffix: str, width: tuple[int, list[str]] | None, state: Any
) -> None:
    s = state.settings
    dim, names = width if width is not None else (None, None)
    # Rows also count against the JSON value budget checked before parsing.
    max_rows = (
        s.max_rows
        if dim is None
        else min(s.max_rows, (s.max_json_values - JSON_SLACK) // (dim + 1))
    )
    for body in _ROW_BODIES:
        js = copy.deepcopy(components[body])
        js["properties"]["inputs"] = _inputs(dim, names, body != "DecodeRequest", max_rows)
        js.pop("title", None)
        components[f"{body}{suffix}"] = js


def _tighten_options(components: dict[str, Any], state: ServiceState) -> None:
    s = state.settings
    props = components["SampleRequest"]["properties"]
    props["n"]["maximum"] = s.max_sample
    props["temperature"]["maximum"] = s.max_temperature


def _specialize_paths(paths: dict[str, Any], snapshot: ModelSnapshot, shared: bool) -> None:
    names = snapshot.names()
    for path, item in paths.items():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            for param in op.get("parameters", []):
                if param.get("in") != "path":
                    continue
                if param["name"] == "name" and names:
                    param["schema"] = {"type": "string", "enum": names}
                elif param["name"] == "version":
                    param["schema"] = {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"}
            route = path.rsplit("/", 1)[-1]
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if route not in _MODEL_ROUTES or content is None or path.startswith("/v2"):
                continue
            if route == "sample":
                op["requestBody"]["required"] = False  # an empty body means the defaults
                continue
            ref = content["schema"].get("$ref", "")
            body = ref.rsplit("/", 1)[-1]
            if body not in _ROW_BODIES:
                continue
            default_route = path == f"/{route}"
            suffix = "Default" if default_route else ("Named" if shared else "")
            if suffix:
                content["schema"] = {"$ref": f"#/components/schemas/{body}{suffix}"}


def openapi_document(app: FastAPI, state: ServiceState) -> dict[str, Any]:
    """The document for the current snapshot (cached until the next reload changes it)."""
    snapshot = state.repository.snapshot
    cached = getattr(app.state, "openapi_generation", None)
    if app.openapi_schema is not None and cached == snapshot.generation:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in _BODY_SCHEMAS:
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(js.pop("$defs", {}))
        components[model.__name__] = js
    _tighten_options(components, state)
    _row_bodies(components, "Default", _width(snapshot, snapshot.default_name), state)
    # One width for every ready version of every model: the named routes can document it too.
    distinct = {
        (mv.manifest.dim, tuple(mv.manifest.feature_names))
        for mv in snapshot.ready_versions()
        if mv.manifest is not None
    }
    shared = len(distinct) == 1
    if shared:
        dim, names = next(iter(distinct))
        _row_bodies(components, "Named", (dim, list(names)), state)
    _specialize_paths(schema.get("paths", {}), snapshot, shared)
    app.openapi_schema = schema
    app.state.openapi_generation = snapshot.generation
    return schema
