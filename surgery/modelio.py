"""Reading and writing model files: the only place the toolkit touches the file system for models.

`load_model` validates a file before anything else sees it (so that a bad file is one clear
error, not a traceback from deep inside a pass). Weights are never parsed: large inline
initializers stay in the memory-mapped file (`surgery.inline`), external data is memory-mapped
by onnx-ir, and the checks run on the graph without them (`surgery.shapes`), so loading costs
about what parsing the graph alone costs, whatever the weights weigh.
`save_model` writes next to the destination and renames into place, so an interrupted write
never leaves a partial file behind; `staged_save` does the same in two steps, so that the
written model can be checked (verified by path) before it takes its name.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError, first_line
from surgery.external import all_tensors, needs_external_data, settle_temporary_file, staged_model, temporary_file
from surgery.inline import MappedFile, Weight, attach_weights, split_weights, write_inline
from surgery.shapes import check
from surgery.validation import validate


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SurgeryError(f"{path}: no such file")
    if path.is_dir():
        raise SurgeryError(f"{path}: is a directory, not a model file")
    if path.stat().st_size == 0:
        raise SurgeryError(f"{path}: empty file, not an ONNX model")


def _check_external_locations(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that would be read from outside the model's folder.

    Uses only `lstat`/`stat` and path arithmetic: no file named by the model is opened here, so
    a location pointing at a FIFO, a device or another user's file is refused without touching it.
    """
    folder = path.resolve().parent
    for tensor in all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = Path(location)
        if not location or where.is_absolute() or ".." in where.parts:
            raise SurgeryError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder"
            )
        target = folder / where
        if target.is_symlink():
            raise SurgeryError(
                f"{path}: external data {location!r} of tensor {tensor.name!r} is a symbolic link; refusing to follow it"
            )
        if not target.resolve().is_relative_to(folder):
            raise SurgeryError(
                f"{path}: external data {location!r} of tensor {tensor.name!r} is a link out of the model's folder"
            )
        try:
            info = target.lstat()
        except OSError:
            raise SurgeryError(
                f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing"
            ) from None
        if info.st_nlink > 1:
            raise SurgeryError(
                f"{path}: external data {location!r} of tensor {tensor.name!r} is a hard link; refusing to read it"
            )
        if not stat.S_ISREG(info.st_mode):
            raise SurgeryError(f"{path}: external data {location!r} of tensor {tensor.name!r} is not a regular file")
        entries = {e.key: e.value for e in tensor.external_data}
        offset, length = entries.get("offset", "0"), entries.get("length")
        if offset.isdigit() and length is not None and length.isdigit() and int(offset) + int(length) > info.st_size:
            raise SurgeryError(
                f"{path}: external data {location!r} holds {info.st_size} bytes, but tensor {tensor.name!r} "
                f"needs bytes {offset} to {int(offset) + int(length)}"
            )


@dataclass
class _Parsed:
    """A checked model file: its graph, and the weights left in the mapped file (`surgery.inline`)."""

    proto: onnx.ModelProto  # without the data of `weights`
    weights: dict[str, Weight]
    source: MappedFile | None


def _parse(path: Path) -> _Parsed:
    """Map the file and parse it without its large inline weights (parse it whole if that fails)."""
    try:
        source = MappedFile(path)
    except OSError as error:
        raise SurgeryError(f"{path}: cannot read it ({error.strerror})") from None
    split = split_weights(source.map)
    try:
        if split is not None:
            return _Parsed(onnx.ModelProto.FromString(split[0]), split[1], source)
        return _Parsed(onnx.load(path, load_external_data=False), {}, None)
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning-like and OSError variants
        raise SurgeryError(f"{path}: not an ONNX model ({first_line(error)})") from None


def _parse_and_check(path: Path) -> _Parsed:
    """Parse and validate `path`: structure, types and shapes, external locations, onnx's checker.

    Everything runs on the graph without its weights: `validate` is told the length of each
    left-out raw_data, and the checker sees weights as typed inputs (`surgery.shapes`).
    """
    _check_path(path)
    parsed = _parse(path)
    proto = parsed.proto
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise SurgeryError(f"{path}: not an ONNX model (no graph or IR version)")
    validate(proto, path, left_out={name: weight.length for name, weight in parsed.weights.items()})
    _check_external_locations(proto, path)
    try:
        check(proto)
    except Exception as error:
        raise SurgeryError(f"{path}: invalid ONNX model: {first_line(error)}") from None
    return parsed


def check_file(path: str | os.PathLike) -> onnx.ModelProto:
    """Validate an ONNX file as `load_proto` does; returns its graph without the data of large
    inline initializers (cheap on a model of any size: for checks, shapes and sizes)."""
    return _parse_and_check(Path(path)).proto


def load_proto(path: str | os.PathLike, *, load_external_data: bool = False) -> onnx.ModelProto:
    """Parse and validate an ONNX file. External data is checked, and loaded only when asked."""
    path = Path(path)
    parsed = _parse_and_check(path)
    proto = parsed.proto
    if parsed.weights:
        for tensor in proto.graph.initializer:
            weight = parsed.weights.get(tensor.name)
            if weight is not None and not tensor.HasField("raw_data"):
                tensor.raw_data = parsed.source.map[weight.offset : weight.offset + weight.length]
    if load_external_data:
        onnx.load_external_data_for_model(proto, str(path.resolve().parent))
    return proto


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load `path` as an `ir.Model`; weights stay on disk, memory-mapped on first use.

    The file is parsed once, without the data of its large inline initializers, and validated
    (`load_proto`'s checks) before onnx-ir sees it. Those initializers are `surgery.inline.InlineTensor`s
    (views of the mapped file); every external tensor gets the model's absolute folder as its
    base, so onnx-ir's own containment checks apply whenever data is mapped, whatever the current
    directory is later. Reading a tensor's shape reads no data.
    """
    path = Path(path)
    parsed = _parse_and_check(path)
    try:
        model = ir.serde.deserialize_model(parsed.proto)
    except Exception as error:
        raise SurgeryError(f"{path}: cannot be loaded: {first_line(error)}") from None
    if parsed.source is not None:
        attach_weights(model, parsed.weights, parsed.source)
    ir.external_data.set_base_dir(model.graph, str(path.resolve().parent))
    return model


#: What each output suffix holds, for the message that refuses a mismatching one.
OUTPUT_KINDS = {".onnx": "an ONNX model", ".keras": "a Keras model", ".json": "a JSON report"}


def input_files(path: str | os.PathLike, model: ir.Model | None = None) -> list[Path]:
    """The files a command reads for the model at `path`: the file and its external data files.

    `model` is the loaded model (its memory-mapped tensors name their data files); without it
    only `path` is listed.
    """
    files = [Path(path)]
    if model is not None:
        from surgery.external import external_files

        files += external_files(model)
    return files


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file: the same path after resolving links, or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _check_target(path: Path, *, force: bool, inputs: Sequence[Path], what: str = "") -> None:
    """The rules for one file about to be (over)written; see `check_output`."""
    for source in inputs:
        if _same_file(path, source):
            also = f" ({source})" if str(source) != str(path) else ""
            raise SurgeryError(
                f"{path}: {what}is a file this command reads{also}; inputs are never modified, choose another name",
                param="output",
            )
    if path.is_dir():
        raise SurgeryError(f"{path}: {what}is a directory", param="output")
    if os.path.lexists(path):
        try:
            mode = path.stat().st_mode
        except OSError:  # a dangling link: replaced like a file
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise SurgeryError(
                f"{path}: {what}exists and is not a regular file (a device, FIFO or socket); refusing to replace it",
                param="output",
            )
        if not force:
            raise SurgeryError(f"{path}: {what}already exists (use {{param}} to overwrite)", param="force")


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    suffix: str | None = None,
    force: bool = False,
) -> Path:
    """Refuse an output path that writing could make a mess of; returns it as a Path.

    The rules, for every command that writes a file:

    - its suffix is `suffix` (".onnx", ".keras", ".json"), when given: the name says what it holds;
    - its folder exists; it is not a directory;
    - it is not one of `inputs` (the input model and its external data files, see `input_files`),
      after resolving links, nor a hard link to one: the input is never modified, `force` or not;
    - if it exists it is a regular file (a device, FIFO or socket is never replaced), and it is
      replaced only with `force`;
    - an ONNX output's data file (``path + ".data"``, written when the model needs external data)
      is not a directory, a special file or one of `inputs` either.

    Errors name the parameter they are about (`output` or `force`).
    """
    path = Path(path)
    protected = [Path(p) for p in inputs]
    if suffix is not None and path.suffix.lower() != suffix:
        kind = OUTPUT_KINDS.get(suffix, f"a {suffix} file")
        raise SurgeryError(f"{path}: the output is {kind}; give it a name ending in {suffix}", param="output")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SurgeryError(f"{path}: the output folder {folder} does not exist", param="output")
    _check_target(path, force=force, inputs=protected)
    if suffix == ".onnx":
        data = path.with_name(path.name + ".data")
        # Existence is the writer's business (a data file is written only when needed).
        _check_target(data, force=True, inputs=protected, what="the output's data file ")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, else remove it.

    `path` must pass `check_output` (an existing file is replaced only with `force`).
    """
    path = check_output(path, force=force)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp_path = temporary_file(folder, path.name)
    try:
        os.close(fd)
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
        settle_temporary_file(tmp_path)


@contextlib.contextmanager
def staged_save(
    model: ir.Model | onnx.ModelProto,
    path: str | os.PathLike,
    *,
    force: bool = False,
    share_external_data: bool = False,
) -> Iterator[Path]:
    """`save_model` in two steps, for checking the written model before it takes its name.

    Writes the model as hidden temporary files in `path`'s folder and yields the temporary
    ``.onnx``, a complete model that can be loaded and run by path (its external data, if any,
    is a temporary file of the same folder that it names). When the ``with`` block ends without
    an error the files are moved into place (see `save_model`); when it raises, they are removed
    and an existing output is left as it was.

    Example:
        >>> with staged_save(wider, "wide.onnx") as staged:
        ...     if not surgery.verify("model.onnx", staged).equivalent:
        ...         raise NotEquivalentError("wide.onnx not written")
    """
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    if share_external_data or needs_external_data(model):
        with staged_model(model, path, force=force, share_external_data=share_external_data) as staged:
            yield staged
        return
    with atomic_output(path, force=force) as tmp:
        write_inline(model, tmp)
        yield tmp


def save_model(
    model: ir.Model | onnx.ModelProto,
    path: str | os.PathLike,
    *,
    force: bool = False,
    share_external_data: bool = False,
) -> None:
    """Write `model` to `path` atomically; an existing `path` is replaced only with `force`.

    A model that fits in one protobuf message and has no external data is written inline (one
    file, see `atomic_output`). Otherwise `path` gets a data file ``path + ".data"`` written by
    the streaming writer `surgery.external.write_model` (unchanged external tensors copied
    file-to-file; both files appear together or not at all). `share_external_data` makes the
    output reference the input's unchanged data files in place instead of copying them.
    """
    with staged_save(model, path, force=force, share_external_data=share_external_data):
        pass
