"""The model endpoints (/log_prob, /score, /explain, /encode, /decode, /sample), mounted under
three prefixes: ``""`` (default model), ``/models/{name}`` (its newest ready version) and
``/models/{name}/versions/{version}``. One implementation serves all three.

Each endpoint is one :class:`Endpoint` record in :data:`ENDPOINTS`: its handler, its schemas and
what sets it apart (query options, binary bodies and replies), so adding one touches one entry.
"""

# No ``from __future__ import annotations`` here: the endpoint signatures built in _endpoint
# carry annotation objects, which FastAPI must see as real objects, not strings.
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from flowserve.conformal import benjamini_hochberg
from flowserve_client._protocol import LEGACY_NPY_COLUMNS, SCORE_COLUMNS

from . import codec, explain, limits
from .drift import drift_window
from .errors import ApiError, InvalidInput, OutOfRange, TooManyRows, from_validation_errors
from .repository import ModelVersion
from .runtime import ScoreResult
from .schemas import (
    DecodeResponse,
    EncodeResponse,
    ErrorBody,
    ExplainOptions,
    ExplainResponse,
    LogProbResponse,
    SampleRequest,
    SampleResponse,
    ScoreOptions,
    ScoreResponse,
)
from .state import ServiceState, get_state, require_api_key

__all__ = [
    "ENDPOINTS",
    "Endpoint",
    "prediction_router",
    "request_body_docs",
    "route_functions",
    "score_batch",
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (401, "missing or invalid API key"),
        (404, "unknown model or version"),
        (413, "too many rows or body too large"),
        (415, "unsupported Content-Type"),
        (422, "invalid input or out-of-range option"),
        (503, "the version failed to load"),
    )
}
_NPY_OUT = {"application/x-npy": {"schema": {"type": "string", "format": "binary"}}}


def request_body_docs(schema: str, binary: bool = True) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for routes that parse their body themselves."""
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    }
    if binary:
        content["application/x-npy"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": ".npy float32/float64 array [N, dim]",
        }
    return {"requestBody": {"required": True, "content": content}}


def _headers(mv: ModelVersion) -> dict[str, str]:
    return {"X-Flowserve-Model": mv.name, "X-Flowserve-Version": str(mv.version)}


def _object(payload: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidInput(
            f"the body must be a JSON object with {sorted(required) or sorted(allowed)}"
        )
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; this endpoint accepts {sorted(allowed)}")
    missing = sorted(required - set(payload))
    if missing:
        raise InvalidInput(f"missing field {missing[0]!r}")
    return payload


async def _rows(
    request: Request, state: ServiceState, mv: ModelVersion, allowed: set[str], named: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """Validated rows and the other JSON fields, from a JSON or .npy body."""
    kind = codec.body_kind(request.headers.get("content-type"))
    body = await request.body()
    assert mv.manifest is not None
    if kind == "npy":
        return codec.rows_from_npy(body, mv.manifest, latent=not named), {}
    s = state.settings
    limits.check_json_values(body, s.max_rows, mv.manifest.dim, s.max_json_values)
    payload = _object(codec.loads(body), allowed, {"inputs"})
    rows = codec.rows_from_json(
        payload["inputs"],
        mv.manifest,
        state.settings.max_rows,
        named=named,
        latent=not named,  # /decode takes latents, not data rows
        scan_types=b"true" in body or b"false" in body,
    )
    return rows, payload


Handler = Callable[[Request, ServiceState, ModelVersion], Awaitable[Response]]


async def _observe(endpoint: str, request: Request, mv: ModelVersion, handler: Handler) -> Response:
    state = get_state(request)
    start = time.perf_counter()
    status = "200"
    try:
        return await handler(request, state, mv)
    except ApiError as e:
        status = str(e.status_code)
        raise
    finally:
        state.metrics.request(endpoint, mv.name, mv.version, status, time.perf_counter() - start)


def _score_options(payload: dict[str, Any], query: dict[str, Any]) -> ScoreOptions:
    """``fpr`` and ``fdr``: the body's win; the query's were validated by FastAPI."""
    try:
        given = ScoreOptions.model_validate({k: payload[k] for k in ("fpr", "fdr") if k in payload})
    except ValidationError as e:
        raise from_validation_errors(e.errors()) from None
    return ScoreOptions.model_construct(
        fpr=given.fpr if "fpr" in payload else query.get("fpr"),
        fdr=given.fdr if "fdr" in payload else query.get("fdr"),
    )


def score_batch(
    state: ServiceState,
    mv: ModelVersion,
    log_prob: np.ndarray,
    fpr: float | None,
    fold_log_prob: np.ndarray | None = None,
) -> ScoreResult:
    """Anomaly scores of served log-likelihoods at ``fpr`` (with the score graph's
    ``fold_log_prob`` for a cross-fitted calibration), added to the version's drift window.

    A rate below the calibration's attainable minimum ``1/(n+1)`` is a 422 that names it.
    """
    assert mv.model is not None and mv.manifest is not None
    try:
        res = mv.model.score_log_prob(log_prob, fpr, fold_log_prob)
    except ValueError as e:
        cal = mv.manifest.calibration
        raise OutOfRange(str(e), field="fpr", min_fpr=cal.min_fpr, n_rows=cal.n_rows) from None
    window = drift_window(mv.model)
    assert window is not None
    summary = window.observe(res.p_value, res.is_anomaly, res.fpr)
    state.metrics.observe_drift(mv.name, mv.version, summary)
    return res


# The per-row columns of a /score reply; a binary reply holds those named by ?columns= (by
# default the ones it held before ?columns= existed).
_SCORE_COLUMNS = [c for c in SCORE_COLUMNS if c.http]
_NPY_COLUMNS = tuple(c.name for c in _SCORE_COLUMNS)
_DEFAULT_NPY_COLUMNS = ",".join(LEGACY_NPY_COLUMNS)


def _npy_columns(query: str | None, fdr: float | None) -> list[str]:
    names = [c.strip() for c in (query or _DEFAULT_NPY_COLUMNS).split(",") if c.strip()]
    unknown = sorted(set(names) - set(_NPY_COLUMNS))
    if unknown or not names:
        raise InvalidInput(
            f"columns: unknown column(s) {unknown}; choose from {list(_NPY_COLUMNS)}"
            if unknown
            else "columns: name at least one column",
            field="columns",
        )
    needing_fdr = [c.name for c in _SCORE_COLUMNS if c.needs_fdr and c.name in names]
    if needing_fdr and fdr is None:
        raise InvalidInput(f"columns: {needing_fdr[0]} needs fdr (?fdr=0.1)", field="columns")
    return names


async def _log_prob(request: Request, state: ServiceState, mv: ModelVersion) -> Response:
    x, _ = await _rows(request, state, mv, {"inputs"}, named=True)
    lp = await state.engine.log_prob(mv.model, x)  # type: ignore[arg-type]
    state.metrics.rows_done("log_prob", mv.name, len(x))
    if codec.wants_npy(request.headers.get("accept")):
        return codec.npy_response(lp.astype(np.float32, copy=False), _headers(mv))
    return codec.json_response({"model": mv.name, "version": mv.version, "log_prob": lp})


async def _score(request: Request, state: ServiceState, mv: ModelVersion) -> Response:
    x, payload = await _rows(request, state, mv, {"inputs", "fpr", "fdr"}, named=True)
    query = request.state.query
    opts = _score_options(payload, query)
    npy_out = codec.wants_npy(request.headers.get("accept"))
    columns = _npy_columns(query.get("columns"), opts.fdr) if npy_out else []
    lp, folds = await state.engine.score_log_probs(mv.model, x)  # type: ignore[arg-type]
    res = score_batch(state, mv, lp, opts.fpr, folds)
    selected = None if opts.fdr is None else benjamini_hochberg(res.p_value, opts.fdr)
    state.metrics.rows_done("score", mv.name, len(x))
    values = {
        "log_prob": lp,
        "score": -lp,
        "percentile": res.percentile,
        "p_value": res.p_value,
        "is_anomaly": res.is_anomaly,
        "fdr_selected": selected,
    }
    if npy_out:
        table = np.stack([values[c] for c in columns], axis=1).astype(np.float32)
        headers = _headers(mv)
        headers["X-Flowserve-Threshold"] = repr(res.threshold)
        headers["X-Flowserve-Fpr"] = repr(res.fpr)
        headers["X-Flowserve-Columns"] = ",".join(columns)
        if opts.fdr is not None:
            headers["X-Flowserve-Fdr"] = repr(opts.fdr)
        return codec.npy_response(table, headers)
    body: dict[str, Any] = {
        "model": mv.name,
        "version": mv.version,
        "fpr": res.fpr,
        "threshold": res.threshold,
        **{c.name: values[c.name] for c in _SCORE_COLUMNS if not c.needs_fdr},
    }
    if selected is not None:
        body["fdr"] = opts.fdr
        body["fdr_selected"] = selected
    return codec.json_response(body)


async def _explain(request: Request, state: ServiceState, mv: ModelVersion) -> Response:
    allowed = {"inputs", "baseline", "method", "permutations", "seed"}
    x, payload = await _rows(request, state, mv, allowed, named=True)
    model, manifest = mv.model, mv.manifest
    assert model is not None and manifest is not None
    try:
        opts = ExplainOptions.model_validate(
            {k: payload[k] for k in ("method", "permutations", "seed") if k in payload}
        )
    except ValidationError as e:
        raise from_validation_errors(e.errors()) from None
    has_chain = explain.has_chain_rule(model)
    if opts.method == "chain_rule" and not has_chain:
        raise InvalidInput(
            f"method: this model ({manifest.family}) has no exact chain-rule decomposition "
            "(its variables mix in more than one order); use method shapley or auto",
            field="method",
        )
    given = payload.get("baseline") is not None
    if given:
        row = payload["baseline"]
        values = row.values() if isinstance(row, dict) else row
        if not isinstance(row, (list, dict)) or any(isinstance(v, bool) for v in values):
            raise InvalidInput(
                "baseline: expected one row of numbers (a list, or an object keyed by feature "
                "name)",
                field="baseline",
            )
    if opts.method == "chain_rule" and given:
        raise InvalidInput("baseline: the chain-rule decomposition takes no baseline")
    # auto: the exact decomposition where the model ships one, unless a baseline asks for Shapley
    if opts.method == "chain_rule" or (opts.method == "auto" and not given and has_chain):
        return await _explain_chain_rule(state, mv, x)
    if given:
        baseline = codec.rows_from_json([payload["baseline"]], manifest, 1, what="baseline")[0]
    else:
        baseline = await state.engine.run(central_row, model)
    cost = explain.evaluations(len(x), manifest.dim, opts.permutations)
    if cost > explain.MAX_EVALUATIONS:
        raise TooManyRows(
            f"explaining {len(x)} rows of {manifest.dim} features scores {cost} hybrid rows, "
            f"more than {explain.MAX_EVALUATIONS} per request; send fewer rows"
            + (" or fewer permutations" if manifest.dim > explain.EXACT_MAX_FEATURES else ""),
            rows=len(x),
        )
    kind, values, scores, base_score = await state.engine.run(
        explain.explain_rows, model.log_prob, x, baseline, opts.permutations, opts.seed
    )
    state.metrics.rows_done("explain", mv.name, len(x))
    return codec.json_response(
        {
            "model": mv.name,
            "version": mv.version,
            "kind": kind,
            "feature_names": manifest.feature_names,
            "order": None,
            "baseline": baseline.astype(np.float64),
            "baseline_score": base_score,
            "score": scores,
            "contributions": values,
            "permutations": opts.permutations if kind == "shapley_sampled" else None,
        }
    )


async def _explain_chain_rule(state: ServiceState, mv: ModelVersion, x: np.ndarray) -> Response:
    model, manifest = mv.model, mv.manifest
    assert model is not None and manifest is not None and manifest.chain_rule_order is not None
    lp = await state.engine.log_prob(model, x)
    terms = await state.engine.run(explain.chain_rule_terms, model, x)
    state.metrics.rows_done("explain", mv.name, len(x))
    return codec.json_response(
        {
            "model": mv.name,
            "version": mv.version,
            "kind": "chain_rule",
            "feature_names": manifest.feature_names,
            "order": [manifest.feature_names[i] for i in manifest.chain_rule_order],
            "baseline": None,
            "baseline_score": None,
            "score": -lp.astype(np.float64),
            "contributions": -terms,
            "permutations": None,
        }
    )


def central_row(model: Any) -> np.ndarray:
    """The model's central row: the base distribution's centre through the inverse graph."""
    base = model.manifest.base
    centre = 0.0 if base.kind == "normal" else (base.low + base.high) / 2
    return model.decode(np.full((1, model.dim), centre, dtype=np.float32))[0]


async def _encode(request: Request, state: ServiceState, mv: ModelVersion) -> Response:
    from .runtime import base_log_prob

    x, _ = await _rows(request, state, mv, {"inputs"}, named=True)
    z, lp = await state.engine.forward(mv.model, x)  # type: ignore[arg-type]
    state.metrics.rows_done("encode", mv.name, len(x))
    if codec.wants_npy(request.headers.get("accept")):
        return codec.npy_response(z, _headers(mv))
    assert mv.manifest is not None
    log_det = (lp - base_log_prob(mv.manifest.base, z)).astype(np.float32)
    return codec.json_response(
        {"model": mv.name, "version": mv.version, "z": z, "log_det": log_det}
    )


async def _decode(request: Request, state: ServiceState, mv: ModelVersion) -> Response:
    z, _ = await _rows(request, state, mv, {"inputs"}, named=False)
    x = await state.engine.inverse(mv.model, z)  # type: ignore[arg-type]
    state.metrics.rows_done("decode", mv.name, len(z))
    if codec.wants_npy(request.headers.get("accept")):
        return codec.npy_response(x, _headers(mv))
    return codec.json_response({"model": mv.name, "version": mv.version, "x": x})


async def _sample(request: Request, state: ServiceState, mv: ModelVersion) -> Response:
    codec.body_kind(request.headers.get("content-type"), binary_ok=False)
    body = await request.body()
    limits.check_options_size(body)
    payload = codec.loads(body) if body.strip() else {}
    try:
        req = SampleRequest.model_validate(payload)
    except ValidationError as e:
        raise from_validation_errors(e.errors()) from None
    s = state.settings
    if req.n > s.max_sample:
        raise OutOfRange(
            f"n is out of range: at most {s.max_sample} rows per request, got {req.n}",
            field="n",
        )
    if req.temperature > s.max_temperature:
        raise OutOfRange(
            f"temperature is out of range: it must be in (0, {s.max_temperature}], "
            f"got {req.temperature}",
            field="temperature",
        )
    model = mv.model
    assert model is not None and mv.manifest is not None
    if req.temperature != 1.0 and not mv.manifest.base.takes_temperature:
        raise OutOfRange(
            f"temperature has no meaning for this model's {mv.manifest.base.kind} base (a "
            f"compact manifold): it must be 1, got {req.temperature}",
            field="temperature",
        )
    # Small n: the noise is drawn here and the inverse graph runs inline or batched by the same
    # measured-cost rule as /log_prob; large n: drawn on a worker thread too.
    if req.n <= state.engine.inline_max_rows:
        z = model.sample_latent(req.n, req.temperature, req.seed)
    else:
        z = await state.engine.run(model.sample_latent, req.n, req.temperature, req.seed)
    samples = mv.manifest.preprocessing.as_data(await state.engine.inverse(model, z))
    state.metrics.rows_done("sample", mv.name, req.n)
    if codec.wants_npy(request.headers.get("accept")):
        return codec.npy_response(samples, _headers(mv))
    return codec.json_response({"model": mv.name, "version": mv.version, "samples": samples})


_SCORE_QUERY: dict[str, Any] = {
    "fpr": Annotated[
        float | None, Query(gt=0.0, lt=1.0, description="false-positive rate (binary bodies)")
    ],
    "fdr": Annotated[
        float | None,
        Query(gt=0.0, lt=1.0, description="false-discovery rate (binary bodies)"),
    ],
    "columns": Annotated[
        str | None,
        Query(
            description="binary replies: comma-separated columns among "
            f"{', '.join(_NPY_COLUMNS)} (default {_DEFAULT_NPY_COLUMNS})"
        ),
    ],
}


@dataclass(frozen=True)
class Endpoint:
    """One model endpoint, ``POST <prefix>/<name>``, and what OpenAPI says of it.

    Arguments:
        name: the path segment, also the endpoint's label in metrics.
        handler: answers a request for the resolved model version.
        response: the model of its JSON reply.
        request_schema: the OpenAPI schema of its JSON body (the handler parses the body).
        doc: the description; its first sentence is the summary.
        npy_body: the body may be an ``.npy`` array instead of JSON.
        npy_reply: OpenAPI lists an ``.npy`` form of the 200 reply.
        query: query options as annotated FastAPI parameters, validated by FastAPI; the handler
            reads them from ``request.state.query``.
    """

    name: str
    handler: Handler
    response: type[BaseModel]
    request_schema: str
    doc: str
    npy_body: bool = True
    npy_reply: bool = True
    query: Mapping[str, Any] = field(default_factory=dict)

    def responses(self) -> dict[int | str, dict[str, Any]]:
        return {**_ERRORS, 200: {"content": _NPY_OUT}} if self.npy_reply else _ERRORS


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "log_prob", _log_prob, LogProbResponse, "RowsRequest", "Log-density of each row (nats)."
    ),
    Endpoint(
        "score",
        _score,
        ScoreResponse,
        "ScoreRequest",
        "Anomaly scores: score = -log_prob, percentile against held-out data, conformal "
        "p_value, is_anomaly (p_value <= fpr) at false-positive rate fpr (JSON field or ?fpr= "
        "query; default: the model's; at least 1/(n+1)); with fdr, Benjamini-Hochberg "
        "selection fdr_selected.",
        query=_SCORE_QUERY,
    ),
    Endpoint(
        "explain",
        _explain,
        ExplainResponse,
        "ExplainRequest",
        "Per-feature contributions to each row's anomaly score: Shapley values of the "
        "hybrid-row score against a baseline row (exact up to 10 features, sampled above); each "
        "row's contributions sum to score - baseline_score.",
        npy_reply=False,
    ),
    Endpoint(
        "encode", _encode, EncodeResponse, "RowsRequest", "Latent codes z and log|det dz/dx|."
    ),
    Endpoint("decode", _decode, DecodeResponse, "DecodeRequest", "Rows for latent codes z."),
    Endpoint(
        "sample",
        _sample,
        SampleResponse,
        "SampleRequest",
        "n new rows (same seed, same rows).",
        npy_body=False,
        npy_reply=False,
    ),
)


def _endpoint(
    ep: Endpoint, resolver: Callable[..., Awaitable[ModelVersion]]
) -> Callable[..., Awaitable[Response]]:
    """The route function: API key, then the model version, then the handler.

    Both are called directly rather than as FastAPI dependencies: resolving two sub-dependencies
    cost more per request than parsing and validating a one-row body. The function's signature
    still declares the path parameters (and the endpoint's query options), so OpenAPI is
    unchanged.
    """

    async def endpoint(request: Request, **params: Any) -> Response:
        require_api_key(request)
        # The query options, validated by FastAPI (on /score the body's fpr and fdr win).
        request.state.query = {k: params.pop(k, None) for k in ep.query}
        mv = await resolver(request, **params)
        return await _observe(ep.name, request, mv, ep.handler)

    request_param = inspect.Parameter(
        "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
    )
    path_params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(resolver, eval_str=True).parameters.values()
        if p.name != "request"
    ]
    query_params = [
        inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a)
        for option, a in ep.query.items()
    ]
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [request_param, *path_params, *query_params], return_annotation=Response
    )
    return endpoint


def route_functions(
    resolver: Callable[..., Awaitable[ModelVersion]],
) -> dict[str, Callable[..., Awaitable[Response]]]:
    """Endpoint name -> route function (:data:`ENDPOINTS`), the model resolved by ``resolver``:
    what FastAPI routes to and what :class:`~flowserve.service.fast_lane.FastLane` calls."""
    return {ep.name: _endpoint(ep, resolver) for ep in ENDPOINTS}


def prediction_router(
    functions: Mapping[str, Callable[..., Awaitable[Response]]], prefix: str, tag: str
) -> APIRouter:
    """The model endpoints (:data:`ENDPOINTS`) under ``prefix``, answered by ``functions``
    (from :func:`route_functions`)."""
    router = APIRouter(prefix=prefix, tags=[tag])
    route_suffix = prefix.replace("/", "_").replace("{", "").replace("}", "")
    for ep in ENDPOINTS:
        router.add_api_route(
            f"/{ep.name}",
            functions[ep.name],
            methods=["POST"],
            response_model=ep.response,
            responses=ep.responses(),
            summary=ep.doc.split(".")[0],
            description=ep.doc,
            openapi_extra=request_body_docs(ep.request_schema, binary=ep.npy_body),
            name=f"{ep.name}{route_suffix}",
        )
    return router
