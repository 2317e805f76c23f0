"""What the server and its clients agree on: the error codes and the score columns.

This is the one definition of both. The server (``flowserve.service``, shipped in the same
distribution as this package) builds its errors, its binary ``/score`` replies and its bulk
tables from it; the clients map error codes to their exception classes and name their score
columns with it; ``scripts/api_docs.py`` writes the error table of docs/api.md from it.
It imports nothing but the standard library, so the bulk scorer reads it without httpx.

Example:
    >>> error_code("too_many_rows").status
    413
    >>> [c.name for c in SCORE_COLUMNS if c.offline]
    ['log_prob', 'score', 'percentile', 'p_value', 'is_anomaly', 'status']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ERROR_CODES",
    "LEGACY_NPY_COLUMNS",
    "SCORE_COLUMNS",
    "STATUS_NON_FINITE_INPUT",
    "STATUS_NON_FINITE_LOG_PROB",
    "STATUS_OK",
    "ErrorCode",
    "ScoreColumn",
    "error_code",
]


@dataclass(frozen=True)
class ErrorCode:
    """One machine code of the error body ``{"error": {"code", "message", ...details}}``.

    Arguments:
        code: the machine code, e.g. ``"invalid_input"``.
        status: the HTTP status it is answered with.
        exception: the name of the client exception class it raises (in ``_exceptions``).
        meaning: when the server answers it, and its detail fields in parentheses (docs/api.md).
        framework: it also names the web framework's own errors of this status (an unknown
            route's 404, a 405), which carry no code of their own.
    """

    code: str
    status: int
    exception: str
    meaning: str
    framework: bool = False


ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode(
        "invalid_input",
        422,
        "InvalidInput",
        "wrong width (`expected`, `got`), NaN/Inf or beyond float32 (`rows`, `count`), rows off "
        "the model's data kind: off the sphere, non-integer or out-of-range pixels (`rows`, "
        "`count`, `data_kind`), non-numeric (`row`, `column`/`feature`), empty batch, "
        "missing/unknown feature names (`missing`, `unknown`), bad JSON, bad `.npy`, "
        "unknown/missing fields, wrong option types (`errors`)",
    ),
    ErrorCode(
        "out_of_range",
        422,
        "InvalidInput",
        "`n`, `temperature`, `fpr`, `seed` outside their range (`field`); a `temperature` other "
        "than 1 for a compact base (circle, torus, sphere); an `fpr` below the model's "
        "attainable minimum 1/(n+1) (`field`, `min_fpr`, `n_rows`); `fdr`, `permutations` "
        "outside their range (`field`)",
    ),
    ErrorCode(
        "too_many_rows",
        413,
        "PayloadTooLarge",
        "more JSON rows than `MAX_ROWS` (`rows`, `max_rows`), or a body that may hold more "
        "values than that allows, found before parsing (`max_rows`, `max_values`); an "
        "`/explain` request that would score more than 2**20 hybrid rows (`rows`)",
    ),
    ErrorCode(
        "body_too_large",
        413,
        "PayloadTooLarge",
        "body over `MAX_BODY_BYTES`, from Content-Length or while streaming, before parsing "
        "(`limit`)",
        framework=True,
    ),
    ErrorCode("model_not_found", 404, "ModelNotFound", "unknown model name (`model`)"),
    ErrorCode(
        "version_not_found",
        404,
        "ModelNotFound",
        "unknown or non-integer version (`model`, `version`)",
    ),
    ErrorCode(
        "model_unavailable",
        503,
        "ServiceUnavailable",
        "the version (or every version of the name) failed to load; message has the load error",
    ),
    ErrorCode(
        "unauthorized",
        401,
        "Unauthorized",
        "missing or invalid API key (or admin key on `/admin/*`)",
        framework=True,
    ),
    ErrorCode(
        "admin_disabled",
        403,
        "Unauthorized",
        "`/admin/*` with no admin key configured: admin endpoints are off",
    ),
    ErrorCode(
        "overloaded",
        503,
        "ServiceUnavailable",
        "more than `MAX_IN_FLIGHT` requests in progress; header `Retry-After` "
        "(`max_in_flight`, `retry_after_s`)",
    ),
    ErrorCode(
        "unsupported_media_type",
        415,
        "InvalidInput",
        "Content-Type other than JSON (or `.npy` where allowed) (`allowed`)",
        framework=True,
    ),
    ErrorCode("not_found", 404, "ModelNotFound", "no such route", framework=True),
    ErrorCode(
        "method_not_allowed", 405, "FlowServeError", "no such method on the route", framework=True
    ),
    ErrorCode("not_ready", 503, "ServiceUnavailable", "`/readyz` before models are ready"),
    ErrorCode("draining", 503, "ServiceUnavailable", "`/readyz` after SIGTERM"),
    ErrorCode(
        "internal_error",
        500,
        "ServerError",
        "a server bug (logged; no traceback in the response)",
    ),
)

_BY_CODE = {e.code: e for e in ERROR_CODES}


def error_code(code: str) -> ErrorCode:
    """The table entry of ``code`` (``KeyError`` for a code the table lacks)."""
    return _BY_CODE[code]


@dataclass(frozen=True)
class ScoreColumn:
    """One per-row column of an anomaly-score result.

    Arguments:
        name: the column's name: the JSON field of ``/score``, the ``?columns=`` name of its
            binary reply, the :class:`~flowserve_client.ScoreResult` attribute, the column of
            bulk and ``flowserve score`` tables.
        dtype: the type of its values in a table (``float``, ``bool`` or ``str``).
        http: ``/score`` answers it.
        offline: the bulk tables (``score_frame``, ``flowserve score``) hold it.
        derived: the client computes it from the others (``score = -log_prob``), so it is not
            asked of a binary reply.
        needs_fdr: only present when the request names a false-discovery rate.
    """

    name: str
    dtype: type
    http: bool = True
    offline: bool = True
    derived: bool = False
    needs_fdr: bool = False


# In output order: JSON bodies, ScoreResult.to_frame() and the bulk tables list them so.
SCORE_COLUMNS: tuple[ScoreColumn, ...] = (
    ScoreColumn("log_prob", float),
    ScoreColumn("score", float, derived=True),
    ScoreColumn("percentile", float),
    ScoreColumn("p_value", float),
    ScoreColumn("is_anomaly", bool),
    ScoreColumn("fdr_selected", bool, offline=False, needs_fdr=True),
    ScoreColumn("status", str, http=False),
)

# What a binary /score reply holds without ?columns= (all that servers sent before it existed).
LEGACY_NPY_COLUMNS: tuple[str, ...] = ("log_prob", "percentile", "is_anomaly")

# Values of the ``status`` column: why a row's numbers are what they are.
STATUS_OK = "ok"
STATUS_NON_FINITE_INPUT = "non_finite_input"  # NaN/Inf (or beyond float32) features, coerced
STATUS_NON_FINITE_LOG_PROB = "non_finite_log_prob"  # finite features, but no finite density
