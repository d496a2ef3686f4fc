"""Inline weights: left in the memory-mapped model file on load, streamed back on write.

An export of a few hundred MB is almost all `raw_data` of initializers. Nothing `inspect`, the
checks or the width analysis read needs those bytes, and a widening changes a few of them. So:

- **Reading** (`split_weights`, `InlineTensor`): the file is memory-mapped and its protobuf wire
  format walked down to the main graph's initializers (model field 7 → graph field 5 → tensor
  field 9). An initializer with one `raw_data` of more than `WEIGHT_BYTES` is handed to protobuf
  without it (the *skeleton*), and its data becomes an `InlineTensor`: ``numpy()`` is a
  read-only view of the mapped file, nothing is copied. Everything else (nodes, small
  constants, typed-field data, subgraphs) is parsed by protobuf as usual. A file the walk does
  not expect (several graph fields, group wire types, a length past the end) gives None: the
  caller parses it whole, and protobuf words the error.
- **Writing** (`write_inline`): onnx-ir serialises the model with each large tensor replaced by
  its header (the same TensorProto without data); the bytes are then written with each
  tensor's data spliced in where protobuf puts field 9 (fields are written in field-number
  order). An unchanged `InlineTensor` is copied file to file (`os.copy_file_range`), a changed
  tensor written from memory. The file is byte for byte what ``onnx_ir.save`` writes.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from surgery.external import ConcatenatedTensor, _little_endian_bytes, _Sink, _Sources

#: Initializers with more data than this are weights: left out of parsing, checks and shape
#: inference (onnx-ir's shape inference draws the line at the same size). Smaller ones are kept,
#: since shape computations read them (Reshape targets, Slice bounds, Split sizes).
WEIGHT_BYTES = 1000

_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_NAME, _TENSOR_RAW_DATA = 7, 5, 8, 9
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _Unexpected(Exception):
    """The bytes are not in the plain form the walk maps."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Unexpected
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire: int = _LENGTH) -> bytes:
    return _encode_varint(number << 3 | wire)


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(number, field start, payload start, field end) of each field of the message buf[start:end].

    The payload of a length-delimited field is its content, of other fields the value itself.
    """
    pos = start
    while pos < end:
        first = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, stop = pos, _varint(buf, pos, end)[1]
        elif wire == _LENGTH:
            length, value = _varint(buf, pos, end)
            stop = value + length
        elif wire in (_FIXED64, _FIXED32):
            value, stop = pos, pos + (8 if wire == _FIXED64 else 4)
        else:
            raise _Unexpected  # groups (3, 4) are not used by ONNX; 6, 7 are not wire types
        if stop > end or number == 0:
            raise _Unexpected
        yield number, first, value, stop
        pos = stop


@dataclass(frozen=True)
class Weight:
    """An initializer left out of the skeleton: its header and where its raw_data lies in the file."""

    header: onnx.TensorProto
    offset: int
    length: int


def split_weights(buf) -> tuple[bytes, dict[str, Weight]] | None:
    """The skeleton of the serialized model `buf` and the weights left out of it, by name.

    None when the bytes are not in the plain form mapped here (the caller parses them whole), or
    on a big-endian machine (raw_data is little-endian and is viewed in place).
    """
    if sys.byteorder != "little":
        return None
    try:
        graphs = [
            (first, value, stop) for number, first, value, stop in _fields(buf, 0, len(buf)) if number == _MODEL_GRAPH
        ]
        if len(graphs) != 1:
            return None
        first, start, stop = graphs[0]
        weights: dict[str, Weight] = {}
        graph = bytearray()
        run = start  # start of the bytes copied unchanged since the last weight
        for number, field, value, end in _fields(buf, start, stop):
            if number != _GRAPH_INITIALIZER:
                continue
            found = _weight(buf, value, end)
            if found is None or found[1].header.name in weights:
                continue
            header_bytes, weight = found
            graph += buf[run:field]
            graph += _key(_GRAPH_INITIALIZER) + _encode_varint(len(header_bytes)) + header_bytes
            run = end
            weights[weight.header.name] = weight
        graph += buf[run:stop]
    except _Unexpected:
        return None
    skeleton = b"".join([buf[:first], _key(_MODEL_GRAPH), _encode_varint(len(graph)), bytes(graph), buf[stop:]])
    return skeleton, weights


def _weight(buf, start: int, end: int) -> tuple[bytes, Weight] | None:
    """A tensor message with exactly one raw_data longer than WEIGHT_BYTES: its header and data span."""
    raw = [
        (first, value, stop) for number, first, value, stop in _fields(buf, start, end) if number == _TENSOR_RAW_DATA
    ]
    if len(raw) != 1 or raw[0][2] - raw[0][1] <= WEIGHT_BYTES:
        return None
    first, value, stop = raw[0]
    header_bytes = bytes(buf[start:first]) + bytes(buf[stop:end])
    try:
        header = onnx.TensorProto.FromString(header_bytes)
    except Exception:  # protobuf's DecodeError: leave the whole message to protobuf, which will word it
        return None
    if not header.name or header.data_location == onnx.TensorProto.EXTERNAL:
        return None  # nameless or contradictory: left whole for the validation to word
    return header_bytes, Weight(header, value, stop - value)


class MappedFile:
    """A model file open and mapped read-only for as long as tensors read from it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(self.fd)
            raise
        weakref.finalize(self, os.close, self.fd)


class InlineTensor(ir.LazyTensor):
    """An initializer whose raw_data stays in the mapped model file: ``numpy()`` is a view of it."""

    __slots__ = ("header", "length", "offset", "source")

    def __init__(self, weight: Weight, source: MappedFile) -> None:
        header = weight.header
        super().__init__(
            self._view,
            ir.DataType(header.data_type),
            ir.Shape(list(header.dims), frozen=True),
            name=header.name,
            doc_string=header.doc_string or None,
            metadata_props={entry.key: entry.value for entry in header.metadata_props} or None,
        )
        self.header, self.offset, self.length, self.source = header, weight.offset, weight.length, source

    def _view(self) -> ir.Tensor:
        dims = [int(d) for d in self.header.dims]
        array = np.frombuffer(self.source.map, dtype=self.dtype.numpy(), count=math.prod(dims), offset=self.offset)
        return ir.Tensor(array.reshape(dims), dtype=self.dtype, name=self.name)


def attach_weights(model: ir.Model, weights: dict[str, Weight], source: MappedFile) -> None:
    """Give the initializers the skeleton left without data their `InlineTensor`s."""
    for name, weight in weights.items():
        model.graph.initializers[name].const_value = InlineTensor(weight, source)


def _header(value: ir.Value, tensor: ir.TensorProtocol, exact: bool) -> onnx.TensorProto | None:
    """The TensorProto onnx-ir would write for `tensor`, without its data; None to leave it as it is.

    Exact (for writing): an `InlineTensor` (its header as read), and an in-memory tensor of a
    byte-sized, non-string type with more than WEIGHT_BYTES and no metadata (onnx-ir writes
    its `tobytes()` as raw_data); protos, external and string tensors are left to onnx-ir. Not
    exact (for shape inference, which reads only name, type and shape): every non-string tensor
    with more than WEIGHT_BYTES.
    """
    if isinstance(tensor, InlineTensor) and exact:
        header = onnx.TensorProto()
        header.CopyFrom(tensor.header)
        header.name = value.name
        return header
    if tensor.dtype == ir.DataType.STRING or tensor.nbytes <= WEIGHT_BYTES:
        return None
    if exact and (
        isinstance(tensor, (ir.serde.TensorProtoTensor, ir.ExternalTensor))
        or tensor.dtype.bitwidth % 8
        or tensor.metadata_props
    ):
        return None
    header = onnx.TensorProto(name=value.name, data_type=tensor.dtype.value, dims=tensor.shape.numpy())
    if tensor.doc_string and exact:
        header.doc_string = tensor.doc_string
    return header


@contextlib.contextmanager
def headers_only(model: ir.Model, *, exact: bool = True) -> Iterator[dict[str, ir.TensorProtocol]]:
    """While open, the main graph's large tensors are data-less headers (see `_header`).

    Yields the tensors set aside, by initializer name; puts them back on exit.
    """
    aside: dict[str, tuple[ir.Value, ir.TensorProtocol]] = {}
    try:
        for value in model.graph.initializers.values():
            tensor = value.const_value
            header = None if tensor is None else _header(value, tensor, exact)
            if header is not None:
                aside[value.name] = (value, tensor)
                value.const_value = ir.serde.TensorProtoTensor(header)
        yield {name: tensor for name, (_, tensor) in aside.items()}
    finally:
        for value, tensor in aside.values():
            value.const_value = tensor


def _write_data(sink: _Sink, tensor: ir.TensorProtocol) -> None:
    if isinstance(tensor, InlineTensor):
        sink.copy(tensor.source.fd, tensor.offset, tensor.length)
    elif isinstance(tensor, ConcatenatedTensor):
        sources = _Sources()
        try:
            tensor.stream_into(sink, sources)
        finally:
            sources.close()
    elif isinstance(tensor, ir.Tensor) and isinstance(tensor.raw, np.ndarray):
        sink.write(_little_endian_bytes(tensor.raw).reshape(-1).view(np.uint8))
    else:
        sink.write(tensor.tobytes())


def write_inline(model: ir.Model, path: str | os.PathLike) -> None:
    """Write `model` to `path` as one inline .onnx, the bytes ``onnx_ir.save`` writes; large
    tensors are streamed (see the module docstring), so memory holds at most one changed tensor."""
    with headers_only(model) as aside:
        skeleton = ir.serde.serialize_model(model).SerializeToString()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        _splice(skeleton, aside, _Sink(fd, 0))
    finally:
        os.close(fd)


def _splice(skeleton: bytes, aside: dict[str, ir.TensorProtocol], sink: _Sink) -> None:
    """Write `skeleton` with the data of the tensors set aside put back into their initializers."""
    graph = next(((f, v, s) for number, f, v, s in _fields(skeleton, 0, len(skeleton)) if number == _MODEL_GRAPH), None)
    if graph is None:  # an empty graph: nothing set aside
        sink.write(skeleton)
        return
    first, start, stop = graph
    pieces: list[bytes | ir.TensorProtocol] = []  # the graph's content: bytes, and tensors whose data goes there
    size = 0
    run = start
    for number, field, value, end in _fields(skeleton, start, stop):
        if number != _GRAPH_INITIALIZER:
            continue
        name = next(
            (
                skeleton[v:s].decode(errors="replace")
                for n, _, v, s in _fields(skeleton, value, end)
                if n == _TENSOR_NAME
            ),
            None,
        )
        tensor = aside.pop(name, None)
        if tensor is None:
            continue
        at = next((f for n, f, _, _ in _fields(skeleton, value, end) if n > _TENSOR_RAW_DATA), end)
        nbytes = tensor.length if isinstance(tensor, InlineTensor) else tensor.nbytes
        data_key = _key(_TENSOR_RAW_DATA) + _encode_varint(nbytes)
        length = end - value + len(data_key) + nbytes
        head = _key(_GRAPH_INITIALIZER) + _encode_varint(length) + skeleton[value:at] + data_key
        pieces += [skeleton[run:field], head, tensor, skeleton[at:end]]
        size += len(pieces[-4]) + len(pieces[-3]) + nbytes + len(pieces[-1])
        run = end
    pieces.append(skeleton[run:stop])
    size += len(pieces[-1])
    sink.write(skeleton[:first] + _key(_MODEL_GRAPH) + _encode_varint(size))
    for piece in pieces:
        if isinstance(piece, bytes):
            sink.write(piece)
        else:
            _write_data(sink, piece)
    sink.write(skeleton[stop:])


__all__ = [
    "WEIGHT_BYTES",
    "InlineTensor",
    "MappedFile",
    "Weight",
    "attach_weights",
    "headers_only",
    "split_weights",
    "write_inline",
]
