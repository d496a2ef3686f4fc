"""What the models are fed: seeded random batches, or the user's arrays checked against the inputs.

Memory stays bounded: random inputs are generated batch by batch from a seeded generator.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from surgery.errors import SurgeryError, first_line

#: Random integer inputs are drawn from [0, 10): valid as indices and class ids in most models.
INTEGER_INPUT_RANGE = (0, 10)
#: The value of a symbolic dimension other than the leading one that nobody gave (a sequence
#: length, say): small enough to be quick, large enough that every position is exercised.
SYMBOLIC_DEFAULT = 8
#: One run's random array for one input may hold at most this many bytes (a typo in a dimension
#: is an error, not an attempt to allocate it).
MAX_RUN_BYTES = 4 << 30
#: Random inputs are windows of a pool of this many fresh values per input (see random_feeds).
RANDOM_POOL_VALUES = 1 << 18
_OFFSET_BLOCK = 4096

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """A graph input as declared: dims are ints, symbolic names (str) or None (unnamed)."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype
    #: Integer inputs: values are drawn from [0, high) (default INTEGER_INPUT_RANGE's bound).
    high: int | None = None


def symbolic_dims(specs: list[InputSpec]) -> list[str]:
    """The names of the inputs' symbolic dimensions, in order of first appearance."""
    return list(dict.fromkeys(dim for spec in specs for dim in spec.shape if isinstance(dim, str)))


def check_dims(specs: list[InputSpec], dims: Mapping[str, int]) -> dict[str, int]:
    """`dims` checked against the models: known symbolic names, integer values of at least 1.

    A dimension of 0 would make a run that compares no element, never a proof.
    """
    known = symbolic_dims(specs)
    for name, value in dims.items():
        if name not in known:
            listed = ", ".join(known) if known else "none"
            raise SurgeryError(
                f"{{param}}: the models have no symbolic dimension {name!r} (theirs: {listed})", param="dims"
            )
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SurgeryError(f"{{param}}: {name} must be an integer of at least 1, got {value!r}", param="dims")
    return {name: int(value) for name, value in dims.items()}


def index_bounds(graph: onnx.GraphProto) -> dict[str, int]:
    """Integer graph inputs used as indices into a constant table: input name → the table's length.

    An input that reaches a Gather's indices (directly or through Cast/Identity) whose data is an
    initializer or Constant of shape [V, ...] — a token-id input and its embedding table — only
    takes values in [0, V); the smallest such V over its Gathers is its bound. Reads shapes only.
    """
    tables = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tables[node.output[0]] = list(node.attribute[0].t.dims)
    inputs = {value.name for value in graph.input if value.name not in tables}
    origin = {name: name for name in inputs}  # tensor -> the graph input it passes on unchanged
    bounds: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in ("Cast", "Identity") and node.input and node.input[0] in origin:
            origin[node.output[0]] = origin[node.input[0]]
        elif node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in origin:
            table = tables.get(node.input[0])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if table and axis == 0 and table[0] > 0:
                name = origin[node.input[1]]
                bounds[name] = min(bounds.get(name, table[0]), table[0])
    return bounds


def resolve_shape(spec: InputSpec, rows: int, dims: Mapping[str, int]) -> tuple[int, ...]:
    """The shape of one run's array for `spec`: the leading free dimension is `rows`, a named
    dimension takes its value from `dims`, any other free dimension is SYMBOLIC_DEFAULT."""
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim in dims:
            shape.append(int(dims[dim]))
        elif axis == 0:
            shape.append(rows)
        else:
            shape.append(SYMBOLIC_DEFAULT)
    return tuple(shape)


def used_dims(specs: list[InputSpec], rows: int, dims: Mapping[str, int]) -> dict[str, int]:
    """The value each symbolic dimension takes in a run of `rows` samples (see `resolve_shape`)."""
    used: dict[str, int] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str):
                used.setdefault(dim, resolve_shape(spec, rows, dims)[axis])
    return used


def rows_per_run(specs: list[InputSpec], batch: int, dims: Mapping[str, int]) -> int:
    """Samples per run: `batch` unless the graph fixes the leading dimension."""
    fixed = {spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] >= 0}
    named = {
        dims[spec.shape[0]] for spec in specs if spec.shape and isinstance(spec.shape[0], str) and spec.shape[0] in dims
    }
    leading = fixed | {int(value) for value in named}
    if len(leading) > 1:
        raise SurgeryError(
            f"inputs disagree on the leading dimension ({sorted(leading)}); give the arrays with {{param}}",
            param="inputs",
        )
    return leading.pop() if leading else batch


def _draw(rng: np.random.Generator, dtype: np.dtype, count: int, high: int | None = None) -> np.ndarray:
    """`count` seeded random values: floats uniform in [-1, 1), integers in [0, high or 10), bools fair."""
    if dtype.kind == "f":
        values = rng.random(count, dtype=np.float64 if dtype == np.float64 else np.float32)
        values *= 2
        values -= 1
        return values.astype(dtype, copy=False)
    if dtype.kind == "b":
        return rng.integers(0, 2, count, dtype=np.uint8).astype(np.bool_)
    high = min(high or INTEGER_INPUT_RANGE[1], int(np.iinfo(dtype).max) + 1)
    return rng.integers(INTEGER_INPUT_RANGE[0], high, count).astype(dtype)


def random_feeds(
    specs: list[InputSpec], dims: Mapping[str, int], samples: int, rows: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """Seeded random batches of `rows` samples (the last one may be smaller), `samples` in all.

    Drawing random numbers costs about as much as running a small model, so the values come
    from a pool per input: when all batches together need at most RANDOM_POOL_VALUES values
    every value is fresh; beyond that, each batch is a window of the pool at a random offset
    (fresh windows, reused values). The pool bounds memory, and each batch is a view of it.
    """
    rng = np.random.default_rng(seed)
    runs = -(-samples // rows)
    pools = {}
    for spec in specs:
        per_run = math.prod(resolve_shape(spec, rows, dims))
        if per_run * spec.dtype.itemsize > MAX_RUN_BYTES:
            raise SurgeryError(
                f"{{param}}: one run's input {spec.name!r} of shape {list(resolve_shape(spec, rows, dims))} would need "
                f"{per_run * spec.dtype.itemsize / 2**30:.3g} GiB; give smaller dimensions",
                param="dims",
            )
        needed = per_run * runs
        pool_size = needed if needed <= RANDOM_POOL_VALUES + per_run else RANDOM_POOL_VALUES + per_run
        pools[spec.name] = (_draw(rng, spec.dtype, pool_size, spec.high), needed <= pool_size)
    offsets = np.empty(0, dtype=np.int64)  # window starts for pools smaller than the need, in blocks
    full = {spec.name: resolve_shape(spec, rows, dims) for spec in specs}
    used = dict.fromkeys(pools, 0)
    for run in range(runs):
        if run % _OFFSET_BLOCK == 0:
            offsets = rng.integers(0, RANDOM_POOL_VALUES + 1, min(_OFFSET_BLOCK, runs - run))
        count = min(rows, samples - run * rows)
        feeds = {}
        for spec in specs:
            shape = full[spec.name] if count == rows else resolve_shape(spec, count, dims)
            size = math.prod(shape)
            pool, fresh = pools[spec.name]
            if fresh:
                start = used[spec.name]
                used[spec.name] += size
            else:
                start = int(offsets[run % _OFFSET_BLOCK])
            feeds[spec.name] = pool[start : start + size].reshape(shape)
        yield feeds


def declared(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def check_user_inputs(specs: list[InputSpec], inputs: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> int:
    """Validate the user's arrays against the declared inputs; returns the number of rows."""
    expected = {spec.name for spec in specs}
    given = set(inputs)
    missing, extra = sorted(expected - given), sorted(given - expected)
    if missing:
        raise SurgeryError(
            f"inputs file lacks model input(s) {', '.join(missing)} (the model expects {', '.join(sorted(expected))})"
        )
    if extra:
        raise SurgeryError(
            f"inputs file has array(s) {', '.join(extra)} that are not model inputs "
            f"(the model expects {', '.join(sorted(expected))})"
        )
    bound: dict[str, int] = dict(dims)
    for spec in specs:
        array = np.asarray(inputs[spec.name])
        wanted = declared(spec.shape)
        if array.ndim != len(spec.shape):
            raise SurgeryError(f"input {spec.name!r} has shape {list(array.shape)}, the model expects {wanted}")
        for axis, (size, dim) in enumerate(zip(array.shape, spec.shape)):
            if isinstance(dim, int) and dim >= 0 and size != dim:
                raise SurgeryError(
                    f"input {spec.name!r} has shape {list(array.shape)}, the model expects {wanted} (axis {axis})"
                )
            if isinstance(dim, str):
                if bound.setdefault(dim, size) != size:
                    raise SurgeryError(
                        f"input {spec.name!r} has {dim}={size} at axis {axis}, but {dim}={bound[dim]} elsewhere"
                    )
        if array.dtype != spec.dtype:
            raise SurgeryError(f"input {spec.name!r} is {array.dtype}, the model expects {spec.dtype}")
    leading = {np.asarray(inputs[spec.name]).shape[0] for spec in specs if spec.shape}
    return leading.pop() if len(leading) == 1 else 1


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive by name (no pickled objects); anything else is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise SurgeryError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}", param="inputs")
    if not zipfile.is_zipfile(path):
        raise SurgeryError(
            f"{path}: not an .npz file (an archive of named arrays, as numpy.savez writes)", param="inputs"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as error:
        raise SurgeryError(f"{path}: not an .npz file of arrays ({first_line(error)})", param="inputs") from None


def sliceable(specs: list[InputSpec]) -> bool:
    """Whether every input's leading dimension is free, so the user's arrays can run in slices."""
    return bool(specs) and all(spec.shape and not isinstance(spec.shape[0], int) for spec in specs)


def user_feeds(
    specs: list[InputSpec], inputs: Mapping[str, np.ndarray], rows: int, batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """The user's arrays, in slices of `batch` along axis 0 when every input's axis 0 is free."""
    arrays = {spec.name: np.asarray(inputs[spec.name]) for spec in specs}
    if not sliceable(specs):
        yield arrays
        return
    for start in range(0, rows, batch):
        yield {name: array[start : start + batch] for name, array in arrays.items()}
