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
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .limits import JSON_SLACK
from .repository import ModelSnapshot, ModelVersion
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


@dataclass(frozen=True)
class _Rows:
    """What a route's row bodies must look like: width, feature names, smallest fpr."""

    dim: int
    names: tuple[str, ...]
    min_fpr: float
    chain_rule: bool = False  # whether /explain may ask for method chain_rule


def _rows_of(mv: ModelVersion) -> _Rows | None:
    m = mv.manifest
    if m is None:
        return None
    return _Rows(
        m.dim, tuple(m.feature_names), m.calibration.min_fpr, m.chain_rule_order is not None
    )


def _default_rows(snapshot: ModelSnapshot) -> _Rows | None:
    name = snapshot.default_name
    version = snapshot.default_version(name) if name is not None else None
    return None if version is None else _rows_of(snapshot.models[name][version])  # type: ignore[index]


def _shared_rows(snapshot: ModelSnapshot) -> _Rows | None:
    """One width and feature names for every ready version of every model (the named routes
    can then document them too), with the largest of their smallest attainable fpr."""
    rows = [r for r in map(_rows_of, snapshot.ready_versions()) if r is not None]
    if not rows or len({(r.dim, r.names) for r in rows}) != 1:
        return None
    return _Rows(
        rows[0].dim,
        rows[0].names,
        max(r.min_fpr for r in rows),
        all(r.chain_rule for r in rows),
    )


def _fpr_schema(min_fpr: float) -> dict[str, Any]:
    return {"type": "number", "minimum": min_fpr, "exclusiveMaximum": 1.0}


def _row_variants(dim: int | None, names: list[str] | None, named: bool) -> list[dict[str, Any]]:
    """One row as a list of numbers and (where names are accepted) as an object."""
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
    return variants


def _inputs(dim: int | None, names: list[str] | None, named: bool, max_rows: int) -> dict:
    variants = _row_variants(dim, names, named)
    arrays = [{"type": "array", "items": v, "minItems": 1, "maxItems": max_rows} for v in variants]
    return {
        **(arrays[0] if len(arrays) == 1 else {"anyOf": arrays}),
        "description": "rows of the model's width"
        + (f" ({dim}: {names})" if dim is not None else " (see GET /models: dim)")
        + "; all lists of numbers, or all objects keyed by feature name",
    }


def _row_bodies(
    components: dict[str, Any], suffix: str, rows: _Rows | None, state: ServiceState
) -> None:
    s = state.settings
    dim, names = (rows.dim, list(rows.names)) if rows is not None else (None, None)
    # Rows also count against the JSON value budget checked before parsing.
    max_rows = (
        s.max_rows
        if dim is None
        else min(s.max_rows, (s.max_json_values - JSON_SLACK) // (dim + 1))
    )
    for body in _ROW_BODIES:
        js = copy.deepcopy(components[body])
        js["properties"]["inputs"] = _inputs(dim, names, body != "DecodeRequest", max_rows)
        if body == "ExplainRequest" and dim is not None:
            one = js["properties"]["baseline"]
            one.pop("anyOf", None)
            one["anyOf"] = [*_row_variants(dim, names, True), {"type": "null"}]
        if body == "ExplainRequest" and rows is not None and not rows.chain_rule:
            # Only models that ship the exact decomposition take method chain_rule.
            js["properties"]["method"]["enum"] = ["auto", "shapley"]
        if body == "ScoreRequest" and rows is not None:
            js["properties"]["fpr"]["anyOf"] = [_fpr_schema(rows.min_fpr), {"type": "null"}]
        js.pop("title", None)
        components[f"{body}{suffix}"] = js


def _tighten_options(components: dict[str, Any], state: ServiceState) -> None:
    s = state.settings
    props = components["SampleRequest"]["properties"]
    props["n"]["maximum"] = s.max_sample
    props["temperature"]["maximum"] = s.max_temperature


def _specialize_paths(
    paths: dict[str, Any], snapshot: ModelSnapshot, default: _Rows | None, shared: _Rows | None
) -> None:
    names = snapshot.names()
    for path, item in paths.items():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            route = path.rsplit("/", 1)[-1]
            default_route = path == f"/{route}"
            rows = default if default_route else shared
            for param in op.get("parameters", []):
                if param.get("in") == "query" and param["name"] == "fpr" and rows is not None:
                    param["schema"] = {"anyOf": [_fpr_schema(rows.min_fpr), {"type": "null"}]}
                if param.get("in") != "path":
                    continue
                if param["name"] == "name" and names:
                    param["schema"] = {"type": "string", "enum": names}
                elif param["name"] == "version":
                    param["schema"] = {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"}
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
    default = _default_rows(snapshot)
    _row_bodies(components, "Default", default, state)
    shared = _shared_rows(snapshot)
    if shared is not None:
        _row_bodies(components, "Named", shared, state)
    _specialize_paths(schema.get("paths", {}), snapshot, default, shared)
    app.openapi_schema = schema
    app.state.openapi_generation = snapshot.generation
    return schema
