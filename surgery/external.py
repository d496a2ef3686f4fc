"""Writing models whose weights live in external data files, at about the speed of copying them.

Size: the plan-then-write streaming writer and its byte-range planning are one mechanism
(each plan entry is written by the code next to it); the file-system fallbacks are part of it.

A widening changes a few tensors of a model; the rest are bytes that only need to move. The
writer here therefore treats each tensor by what it is:

- an unchanged `ir.ExternalTensor` (memory-mapped from the input by `surgery.modelio.load_model`)
  is copied file-to-file into the new data file with `os.copy_file_range` (in the kernel, no
  Python buffers), or in 8 MiB chunks where the file system refuses that;
- a `ConcatenatedTensor` (a widened parameter described as "old tensor plus new units") is
  streamed block by block: the old part is read in bounded chunks, never whole;
- any other tensor (an in-memory `ir.Tensor`) is written from memory without an extra copy;
- tensors of at most `INLINE_LIMIT` bytes that were not external stay inside the ``.onnx``.

Memory stays bounded by the chunk size plus what the caller already holds in memory.

Source files are opened only through `open_checked_source`, which repeats the checks
`surgery.modelio.load_model` made when the model was loaded (relative location inside the model's
folder, no symlink, a regular file with one hard link) on the descriptor it then reads from.

Example:
    >>> model = surgery.modelio.load_model("big/model.onnx")          # weights stay on disk
    >>> w = model.graph.initializers["W3"]
    >>> extra = np.zeros((w.shape[0], 256), np.float32)
    >>> w.const_value = concatenate([w.const_value, extra], axis=1, name="W3")
    >>> w.shape = w.const_value.shape
    >>> write_model(model, "wide/model.onnx")   # wide/model.onnx + wide/model.onnx.data
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError

#: Tensors of at most this many bytes that are not external already stay inside the .onnx file.
INLINE_LIMIT = 1024
#: Offsets of tensors at least this big are aligned to `ALIGNMENT` (page size: mmap-friendly,
#: and file systems that share extents can then share whole blocks).
ALIGN_THRESHOLD = 64 * 1024
ALIGNMENT = 4096
#: Upper bound of the Python buffers used while streaming.
CHUNK_BYTES = 8 << 20
#: Protobuf refuses messages of 2 GiB; leave room for the graph itself.
INLINE_MODEL_LIMIT = (1 << 31) - (64 << 20)

_COPY_RANGE_FALLBACK_ERRNOS = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM}

Part = np.ndarray | ir.TensorProtocol | tuple[ir.TensorProtocol, int, int]


def _data_file(tensor: ir.ExternalTensor) -> str:
    """The path of the file `tensor` keeps its data in (its model folder joined with its location)."""
    return os.path.join(os.fspath(tensor.base_dir), os.fspath(tensor.location))


def _data_length(tensor: ir.ExternalTensor) -> int:
    """Bytes of `tensor`'s data in its file: its declared length, else what shape and type need."""
    return tensor.length if tensor.length is not None else tensor.nbytes


def _external_source_path(tensor: ir.ExternalTensor) -> tuple[Path, Path]:
    """(folder, file) of an external tensor, refusing locations that leave the folder."""
    if not tensor.base_dir or not os.path.isabs(tensor.base_dir):
        raise SurgeryError(
            f"external tensor {tensor.name!r} has no known model folder; load it with surgery.modelio.load_model"
        )
    folder = Path(tensor.base_dir)
    location = Path(os.fspath(tensor.location))
    if location.is_absolute() or ".." in location.parts or not location.parts:
        raise SurgeryError(f"tensor {tensor.name!r} keeps its data at {str(location)!r}, outside the model's folder")
    return folder, folder / location


def open_checked_source(tensor: ir.ExternalTensor) -> int:
    """A read-only descriptor on `tensor`'s data file, after the same checks the loader makes.

    The final path component is opened with ``O_NOFOLLOW`` and the descriptor itself is checked
    (regular file, one hard link, inside the model's folder), so a file swapped for a link after
    loading is refused before a byte of it is read.
    """
    folder, path = _external_source_path(tensor)
    if not Path(os.path.realpath(path.parent)).is_relative_to(os.path.realpath(folder)):
        raise SurgeryError(
            f"external data {str(tensor.location)!r} of tensor {tensor.name!r} is a link out of the model's folder"
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise SurgeryError(
                f"external data {str(tensor.location)!r} of tensor {tensor.name!r} is a symbolic link; refusing to read it"
            ) from None
        raise SurgeryError(
            f"external data {str(tensor.location)!r} of tensor {tensor.name!r}: {error.strerror}"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise SurgeryError(
            f"external data {str(tensor.location)!r} of tensor {tensor.name!r} is not a plain file of the model's folder"
        )
    end = (tensor.offset or 0) + _data_length(tensor)
    if end > info.st_size:
        os.close(fd)
        raise SurgeryError(
            f"external data {str(tensor.location)!r} is shorter than tensor {tensor.name!r} needs ({info.st_size} < {end} bytes)"
        )
    return fd


class _Sources:
    """Checked descriptors on the input's data files, opened once per file for one write."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def fd(self, tensor: ir.ExternalTensor) -> int:
        key = _data_file(tensor)
        if key not in self._fds:
            self._fds[key] = open_checked_source(tensor)
        else:  # the file is already checked; the tensor's own range still has to fit in it
            end = (tensor.offset or 0) + _data_length(tensor)
            if end > os.fstat(self._fds[key]).st_size:
                raise SurgeryError(
                    f"external data {str(tensor.location)!r} is shorter than tensor {tensor.name!r} needs"
                )
        return self._fds[key]

    def read(self, tensor: ir.ExternalTensor, start: int, length: int) -> bytes:
        fd = self.fd(tensor)
        data = os.pread(fd, length, (tensor.offset or 0) + start)
        if len(data) != length:
            raise SurgeryError(
                f"external data {str(tensor.location)!r} ended early while reading tensor {tensor.name!r}"
            )
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _Sink:
    """A cursor into the data file being written: positioned writes and kernel copies.

    Each job of the writer gets its own cursor at the offset planned for its bytes.
    """

    def __init__(self, fd: int, offset: int = 0) -> None:
        self.fd = fd
        self.size = offset  # the position the next byte goes to
        self._kernel_copy = hasattr(os, "copy_file_range")

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self.fd, view[: CHUNK_BYTES * 8], self.size)
            self.size += written
            view = view[written:]

    def copy(self, source_fd: int, offset: int, length: int) -> None:
        done = 0
        if self._kernel_copy:
            try:
                while done < length:
                    copied = os.copy_file_range(
                        source_fd, self.fd, min(1 << 30, length - done), offset + done, self.size + done
                    )
                    if copied == 0:
                        break
                    done += copied
            except OSError as error:
                if error.errno not in _COPY_RANGE_FALLBACK_ERRNOS:
                    raise
                self._kernel_copy = False
        while done < length:  # portable path: bounded buffer
            chunk = os.pread(source_fd, min(CHUNK_BYTES, length - done), offset + done)
            if not chunk:
                raise SurgeryError("external data file ended early while copying")
            os.pwrite(self.fd, chunk, self.size + done)
            done += len(chunk)
        self.size += length


def _little_endian_bytes(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


class ConcatenatedTensor(ir.LazyTensor):
    """A tensor made of parts joined along one axis, materialised only when written or read.

    A widened parameter is mostly its old self: ``W' = concat([W, new_columns], axis=1)``.
    Keeping that as a description lets the writer stream `W` from its data file in bounded
    chunks instead of holding both `W` and `W'` in memory. Anything else that asks for the
    data (``numpy()``, ``tobytes()``, onnx-ir's own serialiser) gets the concatenation,
    computed afresh each time (an `ir.LazyTensor` without cache).

    Parts are numpy arrays, tensors (`ir.ExternalTensor` parts are read through checked
    descriptors when written), or ``(tensor, start, stop)`` for a slice of a tensor along `axis`.
    All parts share the dtype and every dimension but `axis`.

    Example:
        >>> w = model.graph.initializers["W"].const_value          # [512, 1024], on disk
        >>> wide = ConcatenatedTensor([w, np.zeros((512, 64), np.float32)], axis=1, name="W")
        >>> wide.shape
        Shape([512, 1088])
    """

    __slots__ = ("_axis", "_parts")

    def __init__(
        self, parts: Sequence[Part], axis: int, *, name: str | None = None, doc_string: str | None = None
    ) -> None:
        if not parts:
            raise ValueError("ConcatenatedTensor needs at least one part")
        normalised: list[tuple[ir.TensorProtocol | np.ndarray, int, int]] = []
        dtype: ir.DataType | None = None
        dims: list[int] | None = None
        for part in parts:
            source, start, stop = part if isinstance(part, tuple) else (part, 0, None)
            part_dtype = ir.DataType.from_numpy(source.dtype) if isinstance(source, np.ndarray) else source.dtype
            part_dims = list(source.shape) if isinstance(source, np.ndarray) else list(source.shape.numpy())
            if dims is None:
                dtype, dims = part_dtype, list(part_dims)
                axis = axis % len(dims)
                dims[axis] = 0
            if (
                part_dtype != dtype
                or len(part_dims) != len(dims)
                or any(a != b for i, (a, b) in enumerate(zip(part_dims, dims)) if i != axis)
            ):
                raise ValueError(
                    f"part of {name!r} has dtype {part_dtype} shape {part_dims}, expected {dtype} and {dims} outside axis {axis}"
                )
            stop = part_dims[axis] if stop is None else stop
            if not 0 <= start <= stop <= part_dims[axis]:
                raise ValueError(f"slice {start}:{stop} out of range for a part of {name!r}")
            normalised.append((source, start, stop))
            dims[axis] += stop - start
        assert dtype is not None and dims is not None
        if dtype.bitwidth % 8:
            raise ValueError(f"{dtype} packs several values per byte; concatenate it in memory")
        super().__init__(self._materialise, dtype, ir.Shape(dims, frozen=True), name=name, doc_string=doc_string)
        self._parts = normalised
        self._axis = axis

    @property
    def axis(self) -> int:
        return self._axis

    @property
    def parts(self) -> list[tuple[ir.TensorProtocol | np.ndarray, int, int]]:
        """The parts as ``(source, start, stop)`` along `axis`, in order."""
        return list(self._parts)

    def __repr__(self) -> str:
        return f"{self._repr_base()}(parts={len(self._parts)}, axis={self._axis}, name={self.name!r})"

    def _part_array(self, index: int) -> np.ndarray:
        source, start, stop = self._parts[index]
        array = source if isinstance(source, np.ndarray) else source.numpy()
        return array[(slice(None),) * self._axis + (slice(start, stop),)]

    def _materialise(self) -> ir.Tensor:
        parts = [self._part_array(i) for i in range(len(self._parts))]
        return ir.Tensor(np.concatenate(parts, axis=self._axis), dtype=self.dtype, name=self.name)

    def external_parts(self) -> list[ir.ExternalTensor]:
        return [source for source, _, _ in self._parts if isinstance(source, ir.ExternalTensor)]

    def stream_into(self, sink: _Sink, sources: _Sources) -> None:
        """Write this tensor's bytes at `sink`, holding at most about `CHUNK_BYTES` at a time."""
        dims = list(self.shape.numpy())
        itemsize = int(self.dtype.itemsize)
        outer = math.prod(dims[: self._axis])
        inner = math.prod(dims[self._axis + 1 :])
        if outer == 1:  # each part is one contiguous byte range
            for index, (source, start, stop) in enumerate(self._parts):
                if isinstance(source, ir.ExternalTensor):
                    sink.copy(
                        sources.fd(source),
                        (source.offset or 0) + start * inner * itemsize,
                        (stop - start) * inner * itemsize,
                    )
                else:
                    sink.write(_little_endian_bytes(self._part_array(index)).reshape(-1).view(np.uint8))
            return
        row_bytes = dims[self._axis] * inner * itemsize
        rows = max(1, CHUNK_BYTES // max(1, row_bytes))
        np_dtype = np.dtype(self.dtype.numpy()).newbyteorder("<")
        for first in range(0, outer, rows):
            count = min(rows, outer - first)
            blocks = []
            for source, start, stop in self._parts:
                extent = (
                    source.shape[self._axis] if isinstance(source, np.ndarray) else source.shape.numpy()[self._axis]
                )
                if isinstance(source, ir.ExternalTensor):
                    size = extent * inner * itemsize
                    data = sources.read(source, first * size, count * size)
                    block = np.frombuffer(data, dtype=np_dtype).reshape(count, extent, inner)
                else:
                    array = source if isinstance(source, np.ndarray) else source.numpy()
                    block = array.reshape(outer, extent, inner)[first : first + count]
                blocks.append(block[:, start:stop])
            sink.write(_little_endian_bytes(np.concatenate(blocks, axis=1)).reshape(-1).view(np.uint8))


def concatenate(parts: Sequence[Part], axis: int, *, name: str | None = None) -> ConcatenatedTensor:
    """``np.concatenate`` for tensors, without reading them: see `ConcatenatedTensor`."""
    return ConcatenatedTensor(parts, axis, name=name)


@dataclass
class _Slot:
    """Where a tensor sits in the model, so the writer can swap in its external reference."""

    tensor: ir.TensorProtocol
    value: ir.Value | None = None
    node: ir.Node | None = None
    attribute: str | None = None

    def put(self, tensor: ir.TensorProtocol) -> None:
        if self.value is not None:
            self.value.const_value = tensor
        else:
            assert self.node is not None and self.attribute is not None
            self.node.attributes[self.attribute] = ir.AttrTensor(self.attribute, tensor)


def _slots(model: ir.Model) -> list[_Slot]:
    """Every tensor of the model: initializers of all graphs and tensor attributes of all nodes."""
    slots = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                slots.append(_Slot(value.const_value, value=value))
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                slots.append(_Slot(attr.value, node=node, attribute=attr.name))
            elif attr.type == ir.AttributeType.TENSORS and any(isinstance(t, ir.ExternalTensor) for t in attr.value):
                raise SurgeryError(
                    f"node {node.name!r}: external data inside a list-of-tensors attribute is not supported"
                )
    return slots


def needs_external_data(model: ir.Model) -> bool:
    """True when the model has external tensors or is too big for one protobuf message."""
    slots = _slots(model)
    if any(isinstance(slot.tensor, ir.ExternalTensor) for slot in slots):
        return True
    return sum(slot.tensor.nbytes for slot in slots) > INLINE_MODEL_LIMIT


def external_files(model: ir.Model) -> list[Path]:
    """The data files the model's external tensors read from (absolute paths, first use order)."""
    seen: dict[str, None] = {}
    for slot in _slots(model):
        if isinstance(slot.tensor, ir.ExternalTensor):
            seen.setdefault(_data_file(slot.tensor))
    return [Path(p) for p in seen]


#: Temporary files created and not yet renamed or removed (see `remove_temporary_files`).
_PENDING: set[Path] = set()


def temporary_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new hidden file ``.NAME.XXXX.tmp`` in `folder`, open for writing, to be renamed to `name`.

    It gets the permissions an ordinary new file would (0666 less the umask), not mkstemp's 0600,
    so that outputs are not private to the writer. Its path is recorded before the file exists,
    so that `remove_temporary_files` finds it even when Ctrl-C lands before the caller's cleanup.
    """
    umask = os.umask(0o022)
    os.umask(umask)
    for _ in range(100):
        path = folder / f".{name}.{os.urandom(6).hex()}.tmp"
        _PENDING.add(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666 & ~umask)
        except FileExistsError:
            _PENDING.discard(path)
            continue
        return fd, path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder / f".{name}.*.tmp"))


def settle_temporary_file(path: Path) -> None:
    """`path` was renamed into place or removed: no longer `remove_temporary_files`' business."""
    _PENDING.discard(path)


def remove_temporary_files() -> None:
    """Remove every temporary file still pending (an interrupted write): the CLI's Ctrl-C path."""
    for path in list(_PENDING):
        with contextlib.suppress(OSError):
            path.unlink()
        _PENDING.discard(path)


def _shared_location(tensor: ir.ExternalTensor, folder: Path) -> str:
    """`tensor`'s data file relative to the output folder, which must contain it."""
    source = Path(os.path.realpath(_data_file(tensor)))
    real_folder = Path(os.path.realpath(folder))
    if not source.is_relative_to(real_folder):
        raise SurgeryError(
            f"{{param}}: the output folder {folder} does not contain the input's data file {source}; "
            "onnx refuses external data outside a model's folder, so write the output next to the input "
            "(or drop the flag)",
            param="share_external_data",
        )
    return source.relative_to(real_folder).as_posix()


#: Copies larger than this are split into several jobs (bounded work between interruptions).
_COPY_PIECE = 256 << 20


def _write_tensors(model: ir.Model, data_name: str, folder: Path, data_fd: int, share: bool) -> tuple[list[_Slot], int]:
    """Write every tensor that goes to the data file; swap external references into the model.

    First plans the layout (every offset, and every source file opened and checked), then runs
    the copies and writes; nothing is written unless every source passed its checks. (Copying
    on several threads measured no faster: the copies are bound by memory bandwidth.) Returns
    the slots (to restore the model afterwards) and the size of the data file.
    """
    slots = _slots(model)
    sources = _Sources()
    written: dict[int, ir.ExternalTensor] = {}
    jobs: list[tuple[int, Callable[[_Sink], None]]] = []
    size = 0

    def place(nbytes: int) -> int:
        nonlocal size
        if nbytes >= ALIGN_THRESHOLD:
            size = -(-size // ALIGNMENT) * ALIGNMENT  # the gap stays a hole of zeros
        offset, size = size, size + nbytes
        return offset

    try:
        for slot in slots:
            tensor = slot.tensor
            if id(tensor) in written:  # one tensor object used in two places: one copy
                slot.put(written[id(tensor)])
                continue
            if isinstance(tensor, ir.ExternalTensor) and share:
                sources.fd(tensor)  # same checks as a copy: the output must only point at safe files
                location, offset, length = _shared_location(tensor, folder), tensor.offset, tensor.length
            elif isinstance(tensor, ir.ExternalTensor):
                length = _data_length(tensor)
                offset, location, fd = place(length), data_name, sources.fd(tensor)
                for start in range(0, length, _COPY_PIECE):
                    piece = min(_COPY_PIECE, length - start)
                    source_offset = (tensor.offset or 0) + start
                    jobs.append((offset + start, lambda sink, fd=fd, at=source_offset, n=piece: sink.copy(fd, at, n)))
            elif tensor.nbytes <= INLINE_LIMIT or tensor.dtype == ir.DataType.STRING:
                continue
            elif isinstance(tensor, ConcatenatedTensor):
                for part in tensor.external_parts():
                    sources.fd(part)
                length = tensor.nbytes
                offset, location = place(length), data_name
                jobs.append((offset, lambda sink, t=tensor: t.stream_into(sink, sources)))
            else:
                length = tensor.nbytes
                offset, location = place(length), data_name
                if (
                    tensor.dtype.bitwidth % 8 == 0
                    and isinstance(tensor, ir.Tensor)
                    and isinstance(tensor.raw, np.ndarray)
                ):
                    jobs.append(
                        (
                            offset,
                            lambda sink, a=tensor.raw: sink.write(_little_endian_bytes(a).reshape(-1).view(np.uint8)),
                        )
                    )
                else:  # packed 4/2-bit types, tensors from other libraries
                    jobs.append((offset, lambda sink, t=tensor: sink.write(t.tobytes())))
            replacement = ir.ExternalTensor(
                location,
                offset,
                length,
                tensor.dtype,
                shape=tensor.shape.copy(),
                name=tensor.name or (slot.value.name if slot.value else slot.attribute) or "",
                doc_string=tensor.doc_string,
                metadata_props=dict(tensor.metadata_props) or None,
                base_dir=folder,
            )
            written[id(tensor)] = replacement
            slot.put(replacement)
        for offset, job in jobs:
            job(_Sink(data_fd, offset))
        os.ftruncate(data_fd, size)  # a trailing alignment gap still belongs to the file
    except BaseException:
        for slot in slots:
            slot.put(slot.tensor)
        raise
    finally:
        sources.close()
    return slots, size


def all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of `proto`: initializers and tensor attributes, subgraphs and functions included.

    The one use of onnx's private walk (`onnx.external_data_helper._get_all_tensors`), so that a
    change of it in onnx is met in one place.
    """
    return onnx.external_data_helper._get_all_tensors(proto)


def _rename_data_file(proto: onnx.ModelProto, staged: str, final: str) -> None:
    """Point every tensor of `proto` stored in the data file `staged` at `final` instead."""
    for tensor in all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == staged:
                entry.value = final


@contextlib.contextmanager
def _staged(model: ir.Model, path: Path, force: bool, share_external_data: bool) -> Iterator[tuple[Path, bool]]:
    """`staged_model`, also telling whether a data file was written."""
    from surgery.modelio import check_output  # modelio imports this module: the path rules live there

    check_output(path, force=force, inputs=external_files(model))
    folder = (path.parent if str(path.parent) else Path(".")).resolve()
    data_name = f"{path.name}.data"
    data_path = folder / data_name
    if share_external_data and any(os.path.realpath(f) == os.path.realpath(data_path) for f in external_files(model)):
        raise SurgeryError(
            f"{{param}}: the output's data file {data_path} is the input's own data file; choose another output name",
            param="share_external_data",
        )
    check_output(data_path, force=force, inputs=external_files(model))

    data_fd, data_tmp = temporary_file(folder, data_name)
    model_tmp: Path | None = None
    try:
        try:
            slots, size = _write_tensors(model, data_tmp.name, folder, data_fd, share_external_data)
        finally:
            os.close(data_fd)
        try:
            proto = ir.serde.serialize_model(model)
        finally:
            for slot in slots:
                slot.put(slot.tensor)
        model_fd, model_tmp = temporary_file(folder, path.name)
        with os.fdopen(model_fd, "wb") as handle:
            handle.write(proto.SerializeToString())
        if size == 0:
            data_tmp.unlink()
        yield model_tmp, bool(size)
        if size:  # the staged .onnx names the staged data file; the final one names its final name
            _rename_data_file(proto, data_tmp.name, data_name)
            model_tmp.write_bytes(proto.SerializeToString())
        if force and path.exists():
            path.unlink()  # never leave the old .onnx pointing at the new data file
        if size:
            os.replace(data_tmp, data_path)
        os.replace(model_tmp, path)
    finally:
        data_tmp.unlink(missing_ok=True)
        settle_temporary_file(data_tmp)
        if model_tmp is not None:
            model_tmp.unlink(missing_ok=True)
            settle_temporary_file(model_tmp)


@contextlib.contextmanager
def staged_model(
    model: ir.Model, path: str | os.PathLike, *, force: bool = False, share_external_data: bool = False
) -> Iterator[Path]:
    """Write `model` as hidden temporary files beside `path`; commit them when the block succeeds.

    Yields the temporary ``.onnx``: a complete model that onnxruntime (or `surgery.verification`)
    can load by path. Its tensors point at the temporary data file (``.OUT.onnx.data.XXXX.tmp``),
    which sits in the destination folder under that name until the commit, so external data
    resolves while the block runs. When the block ends without an error the ``.onnx`` is
    rewritten to name the final data file ``path + ".data"``, then the files are moved into
    place as `write_model` describes; when it raises (a failed verification, Ctrl-C) both
    temporary files are removed and nothing else is touched.

    Example:
        >>> with staged_model(model, "wide/model.onnx") as staged:
        ...     if not surgery.verify("big/model.onnx", staged).equivalent:
        ...         raise NotEquivalentError("not written")
    """
    with _staged(model, Path(path), force, share_external_data) as (staged, _):
        yield staged


def write_model(
    model: ir.Model, path: str | os.PathLike, *, force: bool = False, share_external_data: bool = False
) -> Path | None:
    """Write `model` as ``path`` plus its data file ``path + ".data"``, both or neither.

    Order of events: both files are written as hidden temporary files in the destination folder;
    only when both are complete is an existing ``path`` removed (with `force`), the data file
    renamed into place, then the ``.onnx``. An error or Ctrl-C before the renames leaves nothing;
    a crash between the two renames leaves a data file without its ``.onnx`` (never an ``.onnx``
    whose data is missing or stale). Nothing is fsync'ed: after a power loss, what the file
    system had flushed is what remains (run ``sync`` when that matters).

    With `share_external_data` unchanged external tensors keep pointing at the input's data
    files (which the output folder must contain) and the new data file holds only the changed
    tensors. The model object is left as it was. Returns the data file written, or None when
    no tensor needed one. `staged_model` does the same in two steps, with a check in between.
    """
    path = Path(path)
    with _staged(model, path, force, share_external_data) as (_, has_data):
        pass
    return path.resolve().parent / f"{path.name}.data" if has_data else None


__all__ = [
    "ConcatenatedTensor",
    "all_tensors",
    "concatenate",
    "external_files",
    "needs_external_data",
    "open_checked_source",
    "staged_model",
    "remove_temporary_files",
    "settle_temporary_file",
    "temporary_file",
    "write_model",
]
