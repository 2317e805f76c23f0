"""The synchronous client, :class:`FlowClient`."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np

from ._base import (
    DEFAULT_BINARY_THRESHOLD,
    DEFAULT_TIMEOUT,
    RETRYABLE_ERRORS,
    BaseClient,
    Call,
    feature_names_of,
    is_dataframe,
    raise_for_error,
    retry_delay,
)
from ._exceptions import ConnectionFailed, FlowServeError, RequestTimeout
from ._models import Encoding, Explanation, ScoreResult

__all__ = ["FlowClient"]


class FlowClient(BaseClient):
    """A blocking client for one flowserve model (the service's default model unless named).

    Inputs are numpy arrays, nested lists or pandas DataFrames (columns are matched to the
    model's feature names, extra columns ignored); outputs are numpy arrays in input row order.
    Batches of at least ``binary_threshold`` values travel as ``.npy`` bodies.

    Arguments:
        url: base URL of the service, e.g. ``"http://localhost:8000"``.
        api_key: sent as ``X-API-Key`` when the service requires keys.
        model: model name; None means the service's default model.
        version: model version; None means the model's newest ready version.
        timeout: seconds to wait for each answer.
        retries: how often to retry after a connection error or a 503 answer.
        backoff: first retry delay in seconds; it doubles on every further retry.
        binary_threshold: values (rows x features) from which requests use ``.npy`` bodies;
            None never does, 0 always does.
        transport: an ``httpx`` transport (for tests, e.g. ``httpx.MockTransport``).

    Example:
        >>> with FlowClient("http://localhost:8000") as client:  # doctest: +SKIP
        ...     result = client.score(df)
    """

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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, model, version, timeout, retries, backoff, binary_threshold)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> FlowClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- model operations ------------------------------------------------------------------

    def log_prob(self, x: Any) -> np.ndarray:
        """Log-density of each row, in nats: ``[N]``."""
        return self._execute(self._log_prob_call(self._rows(x)))

    def score(self, x: Any, fpr: float | None = None, fdr: float | None = None) -> ScoreResult:
        """Anomaly scores of each row at false-positive rate ``fpr`` (the model's default if
        None; at least its ``min_fpr``, else :class:`InvalidInput` with code ``out_of_range`` and
        ``details["min_fpr"]``), with conformal p-values.
        With ``fdr``, ``fdr_selected`` holds the rows Benjamini-Hochberg selects at that
        false-discovery rate over this batch."""
        return self._execute(self._score_call(self._rows(x), fpr, fdr))

    def explain(
        self,
        x: Any,
        baseline: Any = None,
        permutations: int | None = None,
        seed: int | None = None,
    ) -> Explanation:
        """Per-feature contributions to each row's anomaly score (Shapley values against
        ``baseline``, default the model's central row); rows sum to ``score - baseline_score``.
        ``permutations`` and ``seed`` apply to models of more than 10 features."""
        return self._execute(self._explain_call(self._rows(x), baseline, permutations, seed))

    def encode(self, x: Any) -> Encoding:
        """Latent codes ``z`` ``[N, dim]`` and ``log|det dz/dx|`` ``[N]`` of each row."""
        return self._execute(self._encode_call(self._rows(x)))

    def decode(self, z: Any) -> np.ndarray:
        """Rows ``[N, dim]`` whose latent codes are ``z``."""
        return self._execute(self._decode_call(self._matrix(z, None)))

    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
        """``n`` new rows ``[n, dim]``; the same ``seed`` gives the same rows."""
        return self._execute(self._sample_call(n, temperature, seed))

    # -- metadata and operations -----------------------------------------------------------

    def models(self) -> dict[str, Any]:
        """``{"default": name, "models": [ModelInfo, ...]}``."""
        return self._execute(self._models_call())

    def model_info(self, name: str | None = None) -> dict[str, Any]:
        """ModelInfo of ``name`` (this client's model, or the default model, when None)."""
        return self._execute(self._model_info_call(name or self._model_name()))

    def health(self) -> dict[str, Any]:
        """The liveness answer, ``{"status": "ok"}``."""
        return self._execute(self._health_call())

    def ready(self) -> bool:
        """Whether the service has loaded and warmed up its models."""
        return self._execute(self._ready_call())

    def feature_names(self) -> list[str]:
        """The model's feature names, in input order (fetched once, then cached)."""
        if self._feature_names is None:
            info = self.model_info()
            self._feature_names = feature_names_of(info, self.version)
        return self._feature_names

    # -- plumbing --------------------------------------------------------------------------

    def _model_name(self) -> str:
        if self._model_name_cache is None:
            self._model_name_cache = self._default_model_from(self.models())
        return self._model_name_cache

    def _rows(self, x: Any) -> np.ndarray:
        return self._matrix(x, self.feature_names() if is_dataframe(x) else None)

    def _execute(self, call: Call) -> Any:
        response = self._send(call)
        if response.status_code not in call.passthrough:
            raise_for_error(response)
        return call.parse(response)

    def _send(self, call: Call) -> httpx.Response:
        kwargs = call.request_kwargs()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(call.method, call.path, **kwargs)
            except RETRYABLE_ERRORS as e:
                if last:
                    raise ConnectionFailed(
                        f"cannot reach {self.url} after {self.retries + 1} attempts: {e}",
                        code="connection_failed",
                    ) from e
                time.sleep(retry_delay(attempt, self.backoff))
                continue
            except httpx.TimeoutException as e:
                raise RequestTimeout(
                    f"{call.method} {call.path} got no answer within {self.timeout} s",
                    code="timeout",
                ) from e
            except httpx.HTTPError as e:
                raise FlowServeError(f"{call.method} {call.path} failed: {e}", code="http") from e
            if response.status_code == 503 and call.retry_unavailable and not last:
                time.sleep(retry_delay(attempt, self.backoff, response))
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover
