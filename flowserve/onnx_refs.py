"""The external-data files an ONNX model references, read from its protobuf bytes without onnx.

An ONNX tensor may keep its bytes in a separate file (``external_data`` entry ``location``,
``data_location = EXTERNAL``); ONNX Runtime opens that path relative to the model. The serving
side has no ``onnx`` package, so this walks the protobuf wire format itself, descending only into
the messages that can hold tensors: the graph's initializers and sparse initializers, node
attributes (tensors and subgraphs of ``If``/``Loop``/``Scan``) and model-local functions.

Field numbers are those of ``onnx.proto`` (ModelProto.graph = 7, GraphProto.initializer = 5,
TensorProto.external_data = 13, ...).
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["OnnxFormatError", "external_data_locations"]

_VARINT, _I64, _LEN, _START_GROUP, _END_GROUP, _I32 = 0, 1, 2, 3, 4, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64  # nested subgraphs; real models stay far below


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise OnnxFormatError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """``(field number, wire type, value)``: a sub-buffer for LEN fields, an int otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise OnnxFormatError("a field runs past the end of its message")
            yield number, wire, buf[pos : pos + size]
            pos += size
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > len(buf):
                raise OnnxFormatError("truncated fixed-width field")
            yield number, wire, 0
        elif wire == _START_GROUP:  # deprecated, but parsers skip it: so must this one
            pos = _skip_group(buf, pos, number)
        else:
            raise OnnxFormatError(f"invalid protobuf wire type {wire}")


def _skip_group(buf: memoryview, pos: int, number: int) -> int:
    """The position after the END_GROUP that closes group ``number`` (nested groups too)."""
    depth = 1
    while depth:
        if pos >= len(buf):
            raise OnnxFormatError("unterminated group")
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos)
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            pos += size
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
        elif wire == _START_GROUP:
            depth += 1
        elif wire == _END_GROUP:
            depth -= 1
        else:
            raise OnnxFormatError(f"invalid protobuf wire type {wire}")
    return pos


def _tensor(buf: memoryview, out: list[str]) -> None:
    location: str | None = None
    external = False
    for number, wire, value in _fields(buf):
        if number == 14 and wire == _VARINT:
            external = value == _EXTERNAL
        elif number == 13 and wire == _LEN:
            key = entry = None
            for n, w, v in _fields(value):  # type: ignore[arg-type]
                if w == _LEN and n in (1, 2):
                    text = bytes(v).decode("utf-8", "replace")  # type: ignore[arg-type]
                    key, entry = (text, entry) if n == 1 else (key, text)
            if key == "location":
                location = entry if entry is not None else ""
    if external or location is not None:
        out.append(location or "")


def _sparse(buf: memoryview, out: list[str]) -> None:
    for number, wire, value in _fields(buf):
        if number in (1, 2) and wire == _LEN:  # values, indices
            _tensor(value, out)  # type: ignore[arg-type]


def _attribute(buf: memoryview, out: list[str], depth: int) -> None:
    for number, wire, value in _fields(buf):
        if wire != _LEN:
            continue
        if number in (5, 10):  # t, tensors
            _tensor(value, out)  # type: ignore[arg-type]
        elif number in (6, 11):  # g, graphs
            _graph(value, out, depth + 1)  # type: ignore[arg-type]
        elif number in (22, 23):  # sparse_tensor, sparse_tensors
            _sparse(value, out)  # type: ignore[arg-type]


def _nodes(buf: memoryview, node_field: int, out: list[str], depth: int) -> None:
    for number, wire, value in _fields(buf):
        if number == node_field and wire == _LEN:
            for n, w, v in _fields(value):  # type: ignore[arg-type]
                if n == 5 and w == _LEN:  # NodeProto.attribute
                    _attribute(v, out, depth)  # type: ignore[arg-type]


def _graph(buf: memoryview, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise OnnxFormatError(f"subgraphs nested deeper than {_MAX_DEPTH} levels")
    for number, wire, value in _fields(buf):
        if wire != _LEN:
            continue
        if number == 5:  # initializer
            _tensor(value, out)  # type: ignore[arg-type]
        elif number == 15:  # sparse_initializer
            _sparse(value, out)  # type: ignore[arg-type]
    _nodes(buf, 1, out, depth)  # GraphProto.node


def external_data_locations(model: bytes) -> list[str]:
    """The ``location`` of every tensor stored outside ``model`` (an empty string where a tensor
    is marked external but names no file); raises :class:`OnnxFormatError` on malformed bytes."""
    buf = memoryview(model)
    out: list[str] = []
    for number, wire, value in _fields(buf):
        if wire != _LEN:
            continue
        if number == 7:  # ModelProto.graph
            _graph(value, out, 0)  # type: ignore[arg-type]
        elif number == 25:  # ModelProto.functions
            _nodes(value, 7, out, 0)  # type: ignore[arg-type]  # FunctionProto.node
    return out
