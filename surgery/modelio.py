"""Reading and writing model files: the only place the toolkit touches the file system for models.

`load_model` validates a file before anything else sees it (so that a bad file is one clear
error, not a traceback from deep inside a pass) and memory-maps external data through onnx-ir.
`save_model` writes next to the destination and renames into place, so an interrupted write
never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError

#: Protobuf cannot hold more than 2 GiB: above this, tensors go to an external data file.
EXTERNAL_DATA_THRESHOLD = 1 << 31


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SurgeryError(f"{path}: no such file")
    if path.is_dir():
        raise SurgeryError(f"{path}: is a directory, not a model file")
    if path.stat().st_size == 0:
        raise SurgeryError(f"{path}: empty file, not an ONNX model")


def _check_external_locations(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that would be read from outside the model's folder."""
    folder = path.resolve().parent
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = Path(location)
        if not location or where.is_absolute() or ".." in where.parts:
            raise SurgeryError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder"
            )
        target = folder / where
        if target.is_symlink() or not target.resolve().is_relative_to(folder):
            raise SurgeryError(f"{path}: external data {location!r} of tensor {tensor.name!r} is a link out of the model's folder")
        if not target.is_file():
            raise SurgeryError(f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing")
        if target.stat().st_nlink > 1:
            raise SurgeryError(f"{path}: external data {location!r} of tensor {tensor.name!r} is a hard link; refusing to read it")


def load_proto(path: str | os.PathLike, *, load_external_data: bool = False) -> onnx.ModelProto:
    """Parse and validate an ONNX file. External data is checked, and loaded only when asked."""
    path = Path(path)
    _check_path(path)
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning-like and OSError variants
        raise SurgeryError(f"{path}: not an ONNX model ({_first_line(error)})") from None
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise SurgeryError(f"{path}: not an ONNX model (no graph or IR version)")
    _check_external_locations(proto, path)
    try:
        onnx.checker.check_model(proto)
    except Exception as error:
        raise SurgeryError(f"{path}: invalid ONNX model: {_first_line(error)}") from None
    if load_external_data:
        onnx.load_external_data_for_model(proto, str(path.resolve().parent))
    return proto


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load `path` as an `ir.Model`; external data stays on disk, memory-mapped on first use."""
    path = Path(path)
    load_proto(path)  # validation only: the graph is small when the weights live outside it
    try:
        return ir.load(path)
    except Exception as error:
        raise SurgeryError(f"{path}: cannot be loaded: {_first_line(error)}") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, else remove it.

    Refuses to replace an existing `path` unless `force`.
    """
    path = Path(path)
    if path.exists() and not force:
        raise SurgeryError(f"{path}: already exists (use --force to overwrite)")
    if path.is_dir():
        raise SurgeryError(f"{path}: is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SurgeryError(f"{folder}: output folder does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def save_model(model: ir.Model | onnx.ModelProto, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write `model` to `path` atomically (see `atomic_output`)."""
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    with atomic_output(path, force=force) as tmp:
        ir.save(model, tmp)
