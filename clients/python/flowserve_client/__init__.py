"""flowserve client: talk to a flowserve service over HTTP (httpx + numpy only).

>>> from flowserve_client import FlowClient  # doctest: +SKIP
>>> FlowClient("http://localhost:8000").score(df).to_frame()  # doctest: +SKIP

The public API is exactly ``__all__``; everything in underscore modules is private.
"""

import typing as _typing

from ._codec import NPY_MEDIA_TYPE, decode_npy, encode_npy
from ._exceptions import (
    ConnectionFailed,
    FlowServeError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
)
from ._models import Encoding, Explanation, ScoreResult

if _typing.TYPE_CHECKING:
    from ._async_client import AsyncFlowClient
    from ._client import FlowClient

__version__ = "0.1.0"

__all__ = [
    "NPY_MEDIA_TYPE",
    "AsyncFlowClient",
    "ConnectionFailed",
    "Encoding",
    "Explanation",
    "FlowClient",
    "FlowServeError",
    "InvalidInput",
    "ModelNotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ScoreResult",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "__version__",
    "decode_npy",
    "encode_npy",
]


def __getattr__(name: str) -> _typing.Any:
    # The two clients need httpx; they are imported on first use so that the wire tables in
    # _protocol, which the server's bulk scorer shares, import without httpx installed.
    if name == "FlowClient":
        from ._client import FlowClient

        return FlowClient
    if name == "AsyncFlowClient":
        from ._async_client import AsyncFlowClient

        return AsyncFlowClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
