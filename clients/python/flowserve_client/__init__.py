"""flowserve client: talk to a flowserve service over HTTP (httpx + numpy only).

>>> from flowserve_client import FlowClient  # doctest: +SKIP
>>> FlowClient("http://localhost:8000").score(df).to_frame()  # doctest: +SKIP

The public API is exactly ``__all__``; everything in underscore modules is private.
"""

from ._async_client import AsyncFlowClient
from ._client import FlowClient
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
