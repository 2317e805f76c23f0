"""Open Inference Protocol tensors: declared datatypes, JSON data and the binary tensor extension.

A V2 request is JSON, or (binary tensor extension, what tritonclient and the kserve client send
by default) a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
little-endian bytes of every input whose ``parameters`` carry ``binary_data_size``, in order.
Responses are laid out the same way for outputs asked for in binary (``binary_data`` on an
output, or ``binary_data_output`` on the request).

Every input is read with the datatype it declares: an ``FP32`` tensor holds numbers, an
``INT32`` tensor integers within range; strings, booleans and ``BOOL``/``BYTES`` tensors are
refused with :class:`~flowserve.service.errors.InvalidInput` naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.responses import Response

from . import codec
from .errors import InvalidInput

__all__ = [
    "HEADER_LENGTH",
    "NUMERIC_TYPES",
    "V2Body",
    "decode_input",
    "encode_response",
    "split_body",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_TYPE = "application/octet-stream"

# V2 datatype -> numpy dtype of its binary (little-endian) layout.
NUMERIC_TYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in (
        ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"),
        ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"),
        ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"),
    )
}  # fmt: skip
_OUTPUT_TYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BOOL": np.dtype("?")}


@dataclass(frozen=True)
class V2Body:
    """A parsed request: the JSON header and the binary section after it (may be empty)."""

    header: Any
    binary: memoryview
    raw_json: bytes


def split_body(
    body: bytes, header_length: str | None, check_json: Callable[[bytes], None] | None = None
) -> V2Body:
    """Split a request body by its ``Inference-Header-Content-Length`` (absent: all JSON);
    ``check_json`` sees the JSON part before it is parsed (the service's value bound)."""
    if header_length is None:
        if check_json is not None:
            check_json(body)
        return V2Body(codec.loads(body), memoryview(b""), body)
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise InvalidInput(
            f"header {HEADER_LENGTH} must be the byte length of the JSON header, between 1 and "
            f"the body's {len(body)} bytes; got {header_length!r}"
        )
    head = body[:n]
    if check_json is not None:
        check_json(head)
    return V2Body(codec.loads(head), memoryview(body)[n:], head)


def _binary_size(tensor: dict[str, Any], name: str) -> int | None:
    params = tensor.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise InvalidInput(f"input {name!r}: 'parameters' must be a JSON object")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"input {name!r}: binary_data_size must be a byte count, got {size!r}")
    return size


def _has_literal_bools(value: Any) -> bool:
    # Walked only when the raw JSON holds a true/false literal somewhere (a cheap byte search):
    # numpy would otherwise take true as 1.0 without a word.
    if isinstance(value, list):
        return any(_has_literal_bools(v) for v in value)
    return isinstance(value, bool)


def _from_json(data: Any, name: str, datatype: str, dtype: np.dtype[Any], scan: bool) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: 'data' must be a list of numbers")
    if scan and _has_literal_bools(data):
        raise InvalidInput(f"input {name!r} is {datatype}: its data must be numbers, not booleans")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):  # ragged nesting, huge integers
        raise InvalidInput(f"input {name!r}: 'data' must be a (nested) list of numbers") from None
    integral = dtype.kind in "iu"
    if arr.dtype.kind not in ("iu" if integral else "iuf"):
        what = "integers" if integral else "numbers"
        got = {"U": "strings", "b": "booleans", "f": "fractional numbers"}.get(
            arr.dtype.kind, "values that are not numbers"
        )
        raise InvalidInput(f"input {name!r} is {datatype}: its data must be {what}, got {got}")
    if integral and arr.size:
        info = np.iinfo(dtype)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise InvalidInput(
                f"input {name!r} is {datatype}: values must lie in [{info.min}, {info.max}]"
            )
    return arr.reshape(-1)


def decode_input(
    tensor: dict[str, Any], binary: memoryview, offset: int, scan_bools: bool
) -> tuple[np.ndarray, list[int], int]:
    """``(flat values as float64/float32, shape, next binary offset)`` of one input tensor.

    The shape must already be checked by the caller only for meaning; here it is checked for form
    and against the number of values.
    """
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of sizes, got {shape!r}")
    dtype = NUMERIC_TYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input {name!r} has datatype {datatype!r}; this model takes numbers: one of "
            f"{sorted(NUMERIC_TYPES)}"
        )
    count = math.prod(shape)
    size = _binary_size(tensor, str(name))
    if size is not None:
        if "data" in tensor:
            raise InvalidInput(f"input {name!r} has both 'data' and binary_data_size: send one")
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: shape {shape} of {datatype} is {count * dtype.itemsize} bytes, "
                f"binary_data_size says {size}"
            )
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r}: the body holds {len(binary) - offset} binary bytes after the "
                f"JSON header, {size} announced"
            )
        values = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
        return values, shape, offset + size
    if "data" not in tensor:
        raise InvalidInput(f"input {name!r} has no 'data' (and no binary_data_size)")
    values = _from_json(tensor["data"], str(name), datatype, dtype, scan_bools)
    if values.size != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} values, data holds {values.size}"
        )
    return values, shape, offset


def encode_response(
    body: dict[str, Any], outputs: list[tuple[str, str, np.ndarray, bool]]
) -> Response:
    """The response for ``body`` (model name, id, parameters) plus ``outputs`` as
    ``(name, datatype, array, binary)``; binary outputs go after the JSON header."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, datatype, array, binary in outputs:
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = np.ascontiguousarray(array, dtype=_OUTPUT_TYPES[datatype]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.reshape(-1)
        tensors.append(tensor)
    body["outputs"] = tensors
    if not chunks:
        return codec.json_response(body)
    head = codec.json_response(body).body
    return Response(
        b"".join([head, *chunks]),
        media_type=BINARY_TYPE,
        headers={HEADER_LENGTH: str(len(head))},
    )
