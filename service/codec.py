"""Request bodies to validated float32 rows, and numpy results to JSON or ``.npy`` responses.

JSON rows are lists of numbers or objects keyed by feature names; binary bodies are ``.npy``
arrays (``Content-Type: application/x-npy``) read without copying the payload. Every problem
raises an :mod:`~flowserve.service.errors` exception naming the rows and columns at fault.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from starlette.responses import Response

from flowserve.artifact import Manifest

from .errors import InvalidInput, TooManyRows, UnsupportedMediaType

try:  # the serve extra installs orjson; the standard library is the fallback
    import orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    orjson = None  # type: ignore[assignment]

__all__ = [
    "JSON_TYPE",
    "NPY_TYPE",
    "body_kind",
    "check_domain",
    "check_finite",
    "json_response",
    "loads",
    "npy_response",
    "rows_from_json",
    "rows_from_npy",
    "wants_npy",
]

JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
_SHOW = 10  # row indices listed in an error message
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def body_kind(content_type: str | None, *, binary_ok: bool = True) -> Literal["json", "npy"]:
    """Which parser a ``Content-Type`` asks for; a missing header means JSON."""
    media = (content_type or JSON_TYPE).split(";", 1)[0].strip().lower()
    if media == JSON_TYPE or media.endswith("+json"):
        return "json"
    if binary_ok and media == NPY_TYPE:
        return "npy"
    allowed = f"{JSON_TYPE} or {NPY_TYPE}" if binary_ok else JSON_TYPE
    raise UnsupportedMediaType(
        f"Content-Type '{media}' is not supported here; send {allowed}", allowed=allowed
    )


def wants_npy(accept: str | None) -> bool:
    """Whether the client asked for a ``.npy`` response (``Accept: application/x-npy``)."""
    return bool(accept) and NPY_TYPE in accept.lower()


def loads(body: bytes) -> Any:
    """Parse a JSON body; NaN/Infinity literals are accepted so they can be reported by row."""
    if not body.strip():
        raise InvalidInput("the request body is empty; send a JSON object")
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            # NaN/Infinity, which orjson rejects, go to the standard parser so they can be
            # reported by row; any other error is final (orjson also bounds nesting depth).
            if b"NaN" not in body and b"Infinity" not in body:
                raise InvalidInput(f"the request body is not valid JSON: {e}") from None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the request body is not valid JSON: {e}") from e
    except RecursionError:
        raise InvalidInput("the request body is not valid JSON: it is nested too deeply") from None


def _rows_named(rows: list[Any], names: list[str]) -> np.ndarray:
    wanted = set(names)
    out = np.empty((len(rows), len(names)), dtype=np.float64)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidInput(
                f"row {i} is not an object: rows must all be objects keyed by feature names "
                "or all be lists of numbers",
                row=i,
            )
        if row.keys() != wanted:
            missing = [n for n in names if n not in row]
            unknown = sorted(str(k) for k in row if k not in wanted)
            parts = []
            if missing:
                parts.append(f"missing features {missing}")
            if unknown:
                parts.append(f"unknown features {unknown}")
            raise InvalidInput(
                f"row {i}: {' and '.join(parts)} (expected exactly {names})",
                row=i,
                missing=missing,
                unknown=unknown,
            )
        for j, name in enumerate(names):
            v = row[name]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidInput(
                    f"row {i}, feature '{name}' is not a number: {v!r}", row=i, feature=name
                )
            out[i, j] = v
    return out


def _diagnose(rows: list[Any], dim: int, strict: bool = False) -> InvalidInput | None:
    """The first concrete problem in rows that numpy could not turn into a number matrix."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return InvalidInput(
                f"row {i} is not a list of numbers (got {type(row).__name__})", row=i
            )
        if len(row) != dim:
            return InvalidInput(
                f"row {i} has {len(row)} values, expected {dim}", row=i, expected=dim, got=len(row)
            )
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return InvalidInput(f"row {i}, column {j} is not a number: {v!r}", row=i, column=j)
    return None if strict else InvalidInput("inputs must be a list of rows of numbers")


def check_finite(rows: np.ndarray, what: str = "inputs") -> None:
    """Reject NaN, +-Inf (and float64 values beyond float32 range), naming the rows."""
    finite = np.isfinite(rows)
    if finite.all():
        return
    bad = np.flatnonzero(~finite.all(axis=1))
    shown = bad[:_SHOW].tolist()
    more = f" and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
    raise InvalidInput(
        f"{what} rows {shown}{more} contain NaN or Inf (or values beyond float32 range)",
        rows=shown,
        count=len(bad),
    )


def check_domain(rows: np.ndarray, manifest: Manifest, what: str = "inputs") -> None:
    """Reject rows outside the model's data kind (off the sphere, non-integer pixels), naming
    them; real-valued and angle data accept every finite row."""
    if manifest.preprocessing.data_kind in ("real", "angle"):
        return
    bad, reason = manifest.preprocessing.invalid_rows(rows)
    if bad.size == 0:
        return
    shown = bad[:_SHOW].tolist()
    more = f" and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
    raise InvalidInput(
        f"{what} rows {shown}{more} {reason} (data kind {manifest.preprocessing.data_kind})",
        rows=shown,
        count=len(bad),
        data_kind=manifest.preprocessing.data_kind,
    )


def _as_rows(arr: np.ndarray, manifest: Manifest, what: str, latent: bool = False) -> np.ndarray:
    dim = manifest.dim
    if arr.ndim == 1 + len(manifest.input_shape) and list(arr.shape[1:]) == manifest.input_shape:
        arr = arr.reshape(len(arr), dim)
    if arr.ndim != 2 or arr.shape[1] != dim:
        got = arr.shape[1] if arr.ndim == 2 else f"shape {list(arr.shape)}"
        raise InvalidInput(
            f"{what}: expected rows of {dim} values, got {got}",
            expected=dim,
            got=arr.shape[1] if arr.ndim == 2 else list(arr.shape),
        )
    if len(arr) == 0:
        raise InvalidInput(f"{what} is empty: send at least one row")
    with np.errstate(over="ignore"):  # overflow becomes Inf, reported by check_finite
        rows = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype == np.float64:
        # Values just above float32's largest round down to it instead of overflowing:
        # mark them too, so "beyond float32 range" means exactly that.
        with np.errstate(invalid="ignore"):
            beyond = np.abs(arr) > _FLOAT32_MAX
        if beyond.any():
            rows = rows.copy()
            rows[beyond] = np.inf
    check_finite(rows, what)
    if not latent:
        check_domain(rows, manifest, what)
    return rows


def rows_from_json(
    value: Any,
    manifest: Manifest,
    max_rows: int,
    *,
    named: bool = True,
    what: str = "inputs",
    scan_types: bool = False,
    latent: bool = False,
) -> np.ndarray:
    """Validated float32 ``[N, dim]`` rows from a JSON ``inputs`` value (data rows are checked
    against the model's data kind; ``latent=True`` rows, for ``/decode``, are not).

    numpy turns ``true``/``false`` into 1/0 silently; ``scan_types=True`` (set when the raw body
    contains such literals, a cheap byte search) checks every value's type first.
    """
    if not isinstance(value, list):
        raise InvalidInput(f"{what} must be a list of rows, got {type(value).__name__}")
    if not value:
        raise InvalidInput(f"{what} is empty: send at least one row")
    if len(value) > max_rows:
        raise TooManyRows(
            f"{len(value)} rows is more than this server accepts in one JSON request "
            f"({max_rows}); split the request or send a binary .npy body",
            rows=len(value),
            max_rows=max_rows,
        )
    if isinstance(value[0], Mapping):
        if not named:
            raise InvalidInput(f"{what} must be lists of numbers here, not objects")
        return _as_rows(_rows_named(value, manifest.feature_names), manifest, what, latent)
    if scan_types:
        err = _diagnose(value, manifest.dim, strict=True)
        if err is not None:
            raise err
    try:
        arr = np.array(value)
    except (ValueError, TypeError):  # ragged rows
        raise _diagnose(value, manifest.dim) or InvalidInput("inputs are not numbers") from None
    if arr.dtype.kind not in "fiu" or arr.ndim != 2:
        raise _diagnose(value, manifest.dim) or InvalidInput("inputs are not rows of numbers")
    if arr.shape[1] != manifest.dim:
        raise InvalidInput(
            f"{what}: expected rows of {manifest.dim} values "
            f"(features {manifest.feature_names}), got {arr.shape[1]}",
            expected=manifest.dim,
            got=int(arr.shape[1]),
        )
    return _as_rows(arr, manifest, what, latent)


def rows_from_npy(
    body: bytes, manifest: Manifest, *, what: str = "inputs", latent: bool = False
) -> np.ndarray:
    """Validated float32 rows from a ``.npy`` body (float32 or float64, ``[N, dim]`` or
    ``[N, *input_shape]``); float32 C-order payloads are used in place, not copied."""
    buf = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(buf)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    except ValueError as e:
        raise InvalidInput(f"the body is not a valid .npy array: {e}") from e
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise InvalidInput(f"the .npy array must be float32 or float64, got {dtype}")
    count = math.prod(shape)
    offset = buf.tell()
    if len(body) - offset != count * dtype.itemsize:
        raise InvalidInput(
            f"the .npy payload holds {len(body) - offset} bytes, but its header announces "
            f"shape {list(shape)} of {dtype} ({count * dtype.itemsize} bytes)"
        )
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return _as_rows(arr, manifest, what, latent)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def json_response(content: dict[str, Any], status_code: int = 200) -> Response:
    """Serialize (numpy arrays included; non-finite floats become null) and respond."""
    if orjson is not None:
        body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    else:  # pragma: no cover
        body = json.dumps(_jsonable(content), allow_nan=False).encode()
    return Response(body, status_code=status_code, media_type=JSON_TYPE)


def npy_response(array: np.ndarray, headers: dict[str, str]) -> Response:
    """A ``.npy`` response: the header, then the array's bytes (one copy, no buffer file)."""
    array = np.ascontiguousarray(array)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(array))
    return Response(head.getvalue() + array.data.cast("B"), media_type=NPY_TYPE, headers=headers)
