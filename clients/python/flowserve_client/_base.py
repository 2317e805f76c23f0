"""What the sync and async clients share: configuration, input conversion, request building,
response parsing and the retry policy. Only sending differs between the two clients.

Every model operation is a :class:`Call`: the HTTP request to send plus the function that turns
the response into numpy. The clients send a call (with retries) and apply its parser.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from ._codec import NPY_MEDIA_TYPE, decode_npy, encode_npy
from ._exceptions import FlowServeError, InvalidInput, error_for_response
from ._models import Encoding, Explanation, ScoreResult
from ._protocol import LEGACY_NPY_COLUMNS, SCORE_COLUMNS

__all__ = [
    "DEFAULT_BINARY_THRESHOLD",
    "DEFAULT_TIMEOUT",
    "RETRYABLE_ERRORS",
    "BaseClient",
    "Call",
    "is_dataframe",
    "raise_for_error",
    "retry_delay",
]

DEFAULT_TIMEOUT = 30.0
# Above this many values (rows x features) a request travels as .npy: JSON parsing dominates
# the server's time for large batches, and .npy is also about 3x smaller on the wire.
DEFAULT_BINARY_THRESHOLD = 16_384
MAX_BACKOFF = 30.0

# Failures where the request never reached a handler (or the connection dropped before any
# answer): safe to retry because every flowserve model endpoint is a pure function of its input.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
)

Parser = Callable[[httpx.Response], Any]


@dataclass
class Call:
    """One HTTP request and how to read its successful response."""

    method: str
    path: str
    parse: Parser
    json_body: Any = None
    content: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    # Statuses handed to ``parse`` instead of raising, and whether 503 is retried.
    passthrough: tuple[int, ...] = ()
    retry_unavailable: bool = True

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": self.params or None, "headers": dict(self.headers)}
        if self.json_body is not None:
            # NaN/Inf are sent as such (allow_nan) so that the server names the offending rows.
            kwargs["content"] = json.dumps(self.json_body, allow_nan=True).encode()
            kwargs["headers"]["Content-Type"] = "application/json"
        elif self.content is not None:
            kwargs["content"] = self.content
        return kwargs


def retry_delay(attempt: int, backoff: float, response: httpx.Response | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``backoff * 2**attempt``, capped;
    a numeric ``Retry-After`` header from the server wins when present."""
    if response is not None:
        retry_after = response.headers.get("Retry-After", "")
        try:
            return min(max(float(retry_after), 0.0), MAX_BACKOFF)
        except ValueError:
            pass
    return min(backoff * (2**attempt), MAX_BACKOFF)


def raise_for_error(response: httpx.Response) -> None:
    """Raise the typed :class:`FlowServeError` for a 4xx/5xx response."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_for_response(response.status_code, body, response.text)


def is_dataframe(x: Any) -> bool:
    """Whether ``x`` is a pandas DataFrame (without importing pandas when it is not loaded)."""
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(x, pd.DataFrame)


def as_matrix(x: Any) -> np.ndarray:
    """Rows as a float ``[N, dim]`` array: a 1-D input is one row, >2-D rows are flattened."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInput(
            f"inputs must be numeric rows of equal length: {e}", code="invalid_input"
        ) from e
    if arr.ndim == 0:
        raise InvalidInput("inputs must be rows (a 1-D or 2-D array), got a scalar")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[0] == 0:
        raise InvalidInput("inputs hold no rows: send at least one", code="invalid_input")
    return arr


def frame_to_matrix(frame: Any, feature_names: list[str]) -> np.ndarray:
    """The DataFrame's feature columns, in the model's feature order (extra columns ignored)."""
    from pandas.api.types import is_numeric_dtype

    missing = [name for name in feature_names if name not in frame.columns]
    if missing:
        raise InvalidInput(
            f"the DataFrame lacks feature column(s) {missing}; the model expects {feature_names}",
            code="invalid_input",
        )
    non_numeric = [name for name in feature_names if not is_numeric_dtype(frame[name].dtype)]
    if non_numeric:
        raise InvalidInput(f"feature column(s) {non_numeric} are not numeric", code="invalid_input")
    return as_matrix(frame[feature_names].to_numpy(dtype=np.float64))


def feature_names_of(info: Mapping[str, Any], version: int | None) -> list[str]:
    """Feature names of ``version`` (the default version when None) in a ModelInfo body."""
    wanted = version if version is not None else info.get("default_version")
    versions = info.get("versions") or []
    for entry in versions:
        if wanted is None or entry.get("version") == wanted:
            names = entry.get("feature_names")
            if names:
                return list(names)
    raise FlowServeError(
        f"model {info.get('name')!r} lists no feature names for version {wanted}",
        code="no_feature_names",
    )


def _float(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _header_float(response: httpx.Response, name: str) -> float:
    value = response.headers.get(name)
    return float(value) if value is not None else float("nan")


def _model_of(response: httpx.Response) -> tuple[str, int]:
    return (
        response.headers.get("X-Flowserve-Model", ""),
        int(response.headers.get("X-Flowserve-Version", "0") or 0),
    )


def _parse_log_prob(response: httpx.Response) -> np.ndarray:
    if _is_npy(response):
        return _float(decode_npy(response.content))
    return _float(response.json()["log_prob"])


# Columns asked of a binary /score reply: all but those computed here (score = -log_prob) and
# fdr_selected, asked only with fdr. Servers that predate ?columns= send LEGACY_NPY_COLUMNS and
# no X-Flowserve-Columns header.
_NPY_SCORE_COLUMNS = [c.name for c in SCORE_COLUMNS if c.http and not c.derived and not c.needs_fdr]
_NPY_FDR_COLUMNS = [c.name for c in SCORE_COLUMNS if c.http and c.needs_fdr]


def _parse_score(response: httpx.Response) -> ScoreResult:
    if _is_npy(response):
        names = response.headers.get("X-Flowserve-Columns", ",".join(LEGACY_NPY_COLUMNS)).split(",")
        table = _float(decode_npy(response.content)).reshape(-1, len(names))
        cols = {name: table[:, i] for i, name in enumerate(names)}
        model, version = _model_of(response)
        log_prob = cols["log_prob"]
        fdr = response.headers.get("X-Flowserve-Fdr")
        return ScoreResult(
            log_prob=log_prob,
            score=-log_prob,
            percentile=cols["percentile"],
            is_anomaly=cols["is_anomaly"] > 0.5,
            threshold=_header_float(response, "X-Flowserve-Threshold"),
            fpr=_header_float(response, "X-Flowserve-Fpr"),
            model=model,
            version=version,
            p_value=cols.get("p_value"),
            fdr=float(fdr) if fdr is not None else None,
            fdr_selected=cols["fdr_selected"] > 0.5 if "fdr_selected" in cols else None,
        )
    body = response.json()
    return ScoreResult(
        log_prob=_float(body["log_prob"]),
        score=_float(body["score"]),
        percentile=_float(body["percentile"]),
        is_anomaly=np.asarray(body["is_anomaly"], dtype=bool),
        threshold=float(body["threshold"]),
        fpr=float(body["fpr"]),
        model=str(body.get("model", "")),
        version=int(body.get("version", 0)),
        p_value=_float(body["p_value"]) if "p_value" in body else None,
        fdr=float(body["fdr"]) if body.get("fdr") is not None else None,
        fdr_selected=(
            np.asarray(body["fdr_selected"], dtype=bool)
            if body.get("fdr_selected") is not None
            else None
        ),
    )


def _parse_explain(response: httpx.Response) -> Explanation:
    body = response.json()
    return Explanation(
        kind=str(body["kind"]),
        contributions=_float(body["contributions"]),
        score=_float(body["score"]),
        baseline=_float(body["baseline"]),
        baseline_score=float(body["baseline_score"]),
        feature_names=list(body["feature_names"]),
        permutations=body.get("permutations"),
        model=str(body.get("model", "")),
        version=int(body.get("version", 0)),
    )


def _parse_encode(response: httpx.Response) -> Encoding:
    body = response.json()
    return Encoding(z=_float(body["z"]), log_det=_float(body["log_det"]))


def _parse_decode(response: httpx.Response) -> np.ndarray:
    if _is_npy(response):
        return _float(decode_npy(response.content))
    return _float(response.json()["x"])


def _parse_sample(response: httpx.Response) -> np.ndarray:
    return _float(response.json()["samples"])


def _parse_json(response: httpx.Response) -> Any:
    return response.json()


def _is_npy(response: httpx.Response) -> bool:
    return response.headers.get("Content-Type", "").startswith(NPY_MEDIA_TYPE)


class BaseClient:
    """Configuration and request building shared by :class:`FlowClient` and
    :class:`AsyncFlowClient` (see their docstrings for the arguments)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        model: str | None = None,
        version: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
        binary_threshold: int | None = DEFAULT_BINARY_THRESHOLD,
    ) -> None:
        if version is not None and model is None:
            raise ValueError("version needs model: name the model whose version to use")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0, got {backoff}")
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.binary_threshold = binary_threshold
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["X-API-Key"] = api_key
        self._feature_names: list[str] | None = None
        self._model_name_cache: str | None = model

    def __repr__(self) -> str:
        target = self.model or "<default model>"
        if self.version is not None:
            target += f" v{self.version}"
        return f"{type(self).__name__}({self.url!r}, {target})"

    # -- request building ------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The route prefix of the configured model ('' for the service's default model)."""
        if self.model is None:
            return ""
        prefix = f"/models/{quote(self.model, safe='')}"
        if self.version is not None:
            prefix += f"/versions/{int(self.version)}"
        return prefix

    def _binary(self, rows: np.ndarray) -> bool:
        return self.binary_threshold is not None and rows.size >= self.binary_threshold

    def _rows_call(self, op: str, rows: np.ndarray, parse: Parser, binary_reply: bool) -> Call:
        path = f"{self.prefix}/{op}"
        if self._binary(rows):
            headers = {"Content-Type": NPY_MEDIA_TYPE}
            if binary_reply:
                headers["Accept"] = NPY_MEDIA_TYPE
            # float32 is what the model computes in, so nothing is lost and the body halves.
            body = encode_npy(rows.astype(np.float32))
            return Call("POST", path, parse, content=body, headers=headers)
        return Call("POST", path, parse, json_body={"inputs": rows.tolist()})

    def _log_prob_call(self, rows: np.ndarray) -> Call:
        return self._rows_call("log_prob", rows, _parse_log_prob, binary_reply=True)

    def _score_call(self, rows: np.ndarray, fpr: float | None, fdr: float | None = None) -> Call:
        call = self._rows_call("score", rows, _parse_score, binary_reply=True)
        options = {k: float(v) for k, v in (("fpr", fpr), ("fdr", fdr)) if v is not None}
        if call.json_body is not None:
            call.json_body.update(options)
        else:
            call.params.update(options)
            columns = [*_NPY_SCORE_COLUMNS, *(_NPY_FDR_COLUMNS if fdr is not None else [])]
            call.params["columns"] = ",".join(columns)
        return call

    def _explain_call(
        self, rows: np.ndarray, baseline: Any, permutations: int | None, seed: int | None
    ) -> Call:
        # JSON both ways: the reply is a [N, dim] table plus a few fields.
        body: dict[str, Any] = {"inputs": rows.tolist()}
        if baseline is not None:
            body["baseline"] = (
                dict(baseline) if isinstance(baseline, Mapping) else as_matrix(baseline)[0].tolist()
            )
        if permutations is not None:
            body["permutations"] = int(permutations)
        if seed is not None:
            body["seed"] = int(seed)
        return Call("POST", f"{self.prefix}/explain", _parse_explain, json_body=body)

    def _encode_call(self, rows: np.ndarray) -> Call:
        # The binary /encode reply holds z only; a JSON reply also carries log_det.
        return self._rows_call("encode", rows, _parse_encode, binary_reply=False)

    def _decode_call(self, z: np.ndarray) -> Call:
        return self._rows_call("decode", z, _parse_decode, binary_reply=True)

    def _sample_call(self, n: int, temperature: float, seed: int | None) -> Call:
        body: dict[str, Any] = {"n": int(n), "temperature": float(temperature)}
        if seed is not None:
            body["seed"] = int(seed)
        return Call("POST", f"{self.prefix}/sample", _parse_sample, json_body=body)

    def _models_call(self) -> Call:
        return Call("GET", "/models", _parse_json)

    def _model_info_call(self, name: str) -> Call:
        return Call("GET", f"/models/{quote(name, safe='')}", _parse_json)

    def _health_call(self) -> Call:
        return Call("GET", "/healthz", _parse_json)

    def _ready_call(self) -> Call:
        # "Not ready" is an answer, not an error, and waiting for readiness is the caller's call.
        return Call(
            "GET",
            "/readyz",
            lambda r: r.status_code == 200,
            passthrough=(503,),
            retry_unavailable=False,
        )

    # -- inputs ----------------------------------------------------------------------------

    def _default_model_from(self, models_body: Mapping[str, Any]) -> str:
        name = models_body.get("default")
        if not name:
            raise FlowServeError("the service names no default model", code="no_default_model")
        return str(name)

    def _matrix(self, x: Any, feature_names: list[str] | None) -> np.ndarray:
        if is_dataframe(x):
            assert feature_names is not None
            return frame_to_matrix(x, feature_names)
        return as_matrix(x)
