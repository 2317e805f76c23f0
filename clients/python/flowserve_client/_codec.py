"""The binary ``.npy`` body used for bulk requests (``Content-Type: application/x-npy``)."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["NPY_MEDIA_TYPE", "decode_npy", "encode_npy"]

NPY_MEDIA_TYPE = "application/x-npy"


def encode_npy(array: np.ndarray) -> bytes:
    """The ``.npy`` bytes of ``array`` (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """The array held by ``.npy`` bytes (pickled object arrays are refused)."""
    return np.load(io.BytesIO(data), allow_pickle=False)
