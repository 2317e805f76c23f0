"""The asyncio client, :class:`AsyncFlowClient`: the same methods as the sync client, awaited."""

from __future__ import annotations

import asyncio
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

__all__ = ["AsyncFlowClient"]


class AsyncFlowClient(BaseClient):
    """An asyncio client for one flowserve model; arguments as for :class:`FlowClient`
    (``transport`` is an ``httpx.AsyncBaseTransport`` here).

    Example:
        >>> async with AsyncFlowClient("http://localhost:8000") as client:  # doctest: +SKIP
        ...     log_prob = await client.log_prob(rows)
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, model, version, timeout, retries, backoff, binary_threshold)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncFlowClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- model operations ------------------------------------------------------------------

    async def log_prob(self, x: Any) -> np.ndarray:
        """Log-density of each row, in nats: ``[N]``."""
        return await self._execute(self._log_prob_call(await self._rows(x)))

    async def score(
        self, x: Any, fpr: float | None = None, fdr: float | None = None
    ) -> ScoreResult:
        """Anomaly scores of each row at false-positive rate ``fpr``, with conformal p-values
        (and Benjamini-Hochberg selection at false-discovery rate ``fdr`` when given)."""
        return await self._execute(self._score_call(await self._rows(x), fpr, fdr))

    async def explain(
        self,
        x: Any,
        baseline: Any = None,
        permutations: int | None = None,
        seed: int | None = None,
    ) -> Explanation:
        """Per-feature contributions to each row's anomaly score (see
        :meth:`FlowClient.explain`)."""
        call = self._explain_call(await self._rows(x), baseline, permutations, seed)
        return await self._execute(call)

    async def encode(self, x: Any) -> Encoding:
        """Latent codes ``z`` ``[N, dim]`` and ``log|det dz/dx|`` ``[N]`` of each row."""
        return await self._execute(self._encode_call(await self._rows(x)))

    async def decode(self, z: Any) -> np.ndarray:
        """Rows ``[N, dim]`` whose latent codes are ``z``."""
        return await self._execute(self._decode_call(self._matrix(z, None)))

    async def sample(self, n: int, temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
        """``n`` new rows ``[n, dim]``; the same ``seed`` gives the same rows."""
        return await self._execute(self._sample_call(n, temperature, seed))

    # -- metadata and operations -----------------------------------------------------------

    async def models(self) -> dict[str, Any]:
        """``{"default": name, "models": [ModelInfo, ...]}``."""
        return await self._execute(self._models_call())

    async def model_info(self, name: str | None = None) -> dict[str, Any]:
        """ModelInfo of ``name`` (this client's model, or the default model, when None)."""
        return await self._execute(self._model_info_call(name or await self._model_name()))

    async def health(self) -> dict[str, Any]:
        """The liveness answer, ``{"status": "ok"}``."""
        return await self._execute(self._health_call())

    async def ready(self) -> bool:
        """Whether the service has loaded and warmed up its models."""
        return await self._execute(self._ready_call())

    async def feature_names(self) -> list[str]:
        """The model's feature names, in input order (fetched once, then cached)."""
        if self._feature_names is None:
            info = await self.model_info()
            self._feature_names = feature_names_of(info, self.version)
        return self._feature_names

    # -- plumbing --------------------------------------------------------------------------

    async def _model_name(self) -> str:
        if self._model_name_cache is None:
            self._model_name_cache = self._default_model_from(await self.models())
        return self._model_name_cache

    async def _rows(self, x: Any) -> np.ndarray:
        return self._matrix(x, await self.feature_names() if is_dataframe(x) else None)

    async def _execute(self, call: Call) -> Any:
        response = await self._send(call)
        if response.status_code not in call.passthrough:
            raise_for_error(response)
        return call.parse(response)

    async def _send(self, call: Call) -> httpx.Response:
        kwargs = call.request_kwargs()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._http.request(call.method, call.path, **kwargs)
            except RETRYABLE_ERRORS as e:
                if last:
                    raise ConnectionFailed(
                        f"cannot reach {self.url} after {self.retries + 1} attempts: {e}",
                        code="connection_failed",
                    ) from e
                await asyncio.sleep(retry_delay(attempt, self.backoff))
                continue
            except httpx.TimeoutException as e:
                raise RequestTimeout(
                    f"{call.method} {call.path} got no answer within {self.timeout} s",
                    code="timeout",
                ) from e
            except httpx.HTTPError as e:
                raise FlowServeError(f"{call.method} {call.path} failed: {e}", code="http") from e
            if response.status_code == 503 and call.retry_unavailable and not last:
                await asyncio.sleep(retry_delay(attempt, self.backoff, response))
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover
