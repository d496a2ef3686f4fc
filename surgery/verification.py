"""Prove that two models compute the same function, bit for bit, and say where they part.

`verify(reference, candidate)` runs both models on the same inputs with the same onnxruntime
session options and compares every output that has the same name in both:

- **exact mode** (the default): the models are equivalent only when every output element has
  the same bits in both (a NaN matches any NaN in the same position);
- **tolerance mode** (`atol` and/or `rtol` given, or a Keras model on either side): an element
  fails when it is beyond both tolerances, ``|a - b| > atol`` and ``|a - b| / |a| > rtol``, as
  Polygraphy does; a missing tolerance counts as 0.

Execution is part of the claim. onnxruntime's graph optimizations pick CPU kernels by tensor
shape (its NCHWc transformer blocks Conv channels by 8 or 16), so two functionally identical
graphs with different channel counts can differ by a few ULP once optimized. Exact mode
therefore runs with graph optimizations disabled unless told otherwise; ``deployed=True``
additionally runs both at the default level (``all``) and reports the ULP distance there.

ULP distance is measured on the ordered-integer representation of float16/32/64, in which
``-0.0`` sits one step below ``+0.0``: every difference of bits between two non-NaN floats is
at least 1 ULP, so ``max_ulp == 0`` exactly when the compared outputs are bitwise equal.

Memory stays bounded: inputs are generated batch by batch from a seeded generator and each
batch's outputs are folded into running statistics, then dropped.

Example:
    >>> report = verify("models/mlp.onnx", "runs/mlp-wide.onnx", samples=1000, batch=100)
    >>> report.equivalent
    True
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError, first_line
from surgery.external import all_tensors
from surgery.metadata import WIDENED_TENSORS_KEY

if TYPE_CHECKING:
    import onnxruntime as ort

#: `optimization` argument → onnxruntime's GraphOptimizationLevel member.
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
#: `provider` argument → onnxruntime execution provider.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: Tells onnxruntime where external data lives for a model handed over as bytes (used by
#: `locate`, which rewrites the graph without reading its weights).
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
#: Above this many bytes of weights in both models together, the two sessions never coexist
#: (see `_compare_one_at_a_time`): memory stays at one session plus one round of batches.
ONE_SESSION_BYTES = 1 << 30
#: Inputs and reference outputs held per round in that mode.
ROUND_BYTES = 256 << 20
SPINNING_KEY = "session.intra_op.allow_spinning"
#: Default tolerance when Keras runs one side: |a - b| <= 1e-5 * max(1, max |reference|).
KERAS_DEFAULT_ATOL = 1e-5
#: Random integer inputs are drawn from [0, 10): valid as indices and class ids in most models.
INTEGER_INPUT_RANGE = (0, 10)
#: Random inputs are windows of a pool of this many fresh values per input (see _random_feeds).
RANDOM_POOL_VALUES = 1 << 18
_OFFSET_BLOCK = 4096

_ORT_TYPES = {
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
#: Outputs up to this size are compared as bytes objects (cheaper than numpy calls when small).
_SMALL_BYTES = 1 << 16
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

#: What `verify` accepts on either side.
ModelSource: TypeAlias = "onnx.ModelProto | ir.Model | str | os.PathLike[str]"


# --------------------------------------------------------------------------------------------
# The report


@dataclass
class OutputComparison:
    """How one output compares between the two models, accumulated over every batch.

    `mismatches` counts failing elements under the report's mode (differing bits in exact
    mode, elements beyond both tolerances in tolerance mode). `max_abs_diff`, `max_rel_diff`
    (relative to |reference|) and `max_ulp` are taken over elements that are NaN in neither
    model; `nan_mismatches` counts NaN-against-number elements. `max_ulp` is None for integer
    and bool outputs. `present_in` is "both", "reference" or "candidate".
    """

    name: str
    shape: list[int] | None = None
    dtype: str | None = None
    candidate_shape: list[int] | None = None
    candidate_dtype: str | None = None
    present_in: str = "both"
    bitwise_equal: bool = True
    elements: int = 0
    mismatches: int = 0
    nan_mismatches: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    max_ulp: int | None = 0

    @property
    def comparable(self) -> bool:
        return self.present_in == "both" and self.shape == self.candidate_shape and self.dtype == self.candidate_dtype

    @property
    def passed(self) -> bool:
        return self.comparable and self.mismatches == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": self.shape,
            "dtype": self.dtype,
            "candidate_shape": self.candidate_shape,
            "candidate_dtype": self.candidate_dtype,
            "present_in": self.present_in,
            "bitwise_equal": self.bitwise_equal if self.comparable else False,
            "equal": self.passed,
            "elements": self.elements,
            "mismatches": self.mismatches,
            "mismatch_fraction": self.mismatches / self.elements if self.elements else 0.0,
            "nan_mismatches": self.nan_mismatches,
            "max_abs_diff": _json_float(self.max_abs_diff),
            "max_rel_diff": _json_float(self.max_rel_diff),
            "max_ulp": self.max_ulp,
        }


@dataclass
class Located:
    """The first node, in the candidate's topological order, whose output differs."""

    node: str | None
    op: str | None
    output: str | None
    comparison: OutputComparison | None
    compared: int
    skipped: int
    unmatched: int

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op": self.op,
            "output": self.output,
            "diff": None if self.comparison is None else self.comparison.to_json(),
            "tensors_compared": self.compared,
            "tensors_skipped": self.skipped,
            "tensors_only_in_candidate": self.unmatched,
        }


@dataclass
class Report:
    """The outcome of `verify`; `to_json()` is the stable schema documented in the README."""

    equivalent: bool
    mode: str
    outputs: list[OutputComparison]
    reference: str
    candidate: str
    provider: str
    optimization: str
    session_options: dict[str, Any]
    samples: int
    batch: int
    seed: int
    inputs: str
    atol: float | None
    rtol: float | None
    atol_scaled: bool
    versions: dict[str, str]
    located: Located | None = None
    deployed: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "equivalent": self.equivalent,
            "mode": self.mode,
            "reference": self.reference,
            "candidate": self.candidate,
            "provider": self.provider,
            "optimization": self.optimization,
            "session_options": self.session_options,
            "samples": self.samples,
            "batch": self.batch,
            "seed": self.seed,
            "inputs": self.inputs,
            "atol": self.atol,
            "rtol": self.rtol,
            "atol_scaled": self.atol_scaled,
            "versions": self.versions,
            "outputs": [output.to_json() for output in self.outputs],
            "located": None if self.located is None else self.located.to_json(),
            "deployed": self.deployed,
        }

    def summary(self) -> str:
        """A multi-line plain-text table for terminals and assertion messages."""
        mode = describe_mode(self.mode, self.atol, self.rtol, self.atol_scaled)
        lines = [
            f"reference: {self.reference}",
            f"candidate: {self.candidate}",
            f"mode: {mode}; provider: {self.provider}; optimization: {self.optimization}; "
            f"samples: {self.samples} ({self.inputs}, batch {self.batch}, seed {self.seed})",
        ]
        header = ("output", "shape", "dtype", "bitwise", "mismatches", "max |diff|", "max rel", "max ULP")
        rows = [header] + [_summary_row(output) for output in self.outputs]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if self.deployed is not None:
            parts = [f"{o['name']}: max ULP {o['max_ulp']}, {o['mismatches']} differing" for o in self.deployed["outputs"]]
            lines.append(f"deployed (optimization {self.deployed['optimization']}): " + "; ".join(parts))
        if self.located is not None:
            lines.append(_located_line(self.located))
        lines.append("EQUIVALENT" if self.equivalent else "NOT EQUIVALENT")
        return "\n".join(lines)


def describe_mode(mode: str, atol: float | None, rtol: float | None, atol_scaled: bool) -> str:
    """A report's comparison mode in words: "exact (bitwise)", or the tolerances it used."""
    if mode == "exact":
        return "exact (bitwise)"
    scaled = " x max(1, max|reference|)" if atol_scaled else ""
    return f"tolerance (atol {atol:g}{scaled}, rtol {rtol:g})"


def _summary_row(output: OutputComparison) -> tuple[str, ...]:
    if output.present_in != "both":
        return (output.name, f"only in {output.present_in}", "", "no", "", "", "", "")
    if not output.comparable:
        shape = f"{output.shape} vs {output.candidate_shape}"
        dtype = output.dtype if output.dtype == output.candidate_dtype else f"{output.dtype} vs {output.candidate_dtype}"
        return (output.name, shape, dtype, "no", "incomparable", "", "", "")
    fraction = output.mismatches / output.elements if output.elements else 0.0
    nan = f", {output.nan_mismatches} NaN" if output.nan_mismatches else ""
    return (
        output.name,
        str(output.shape),
        str(output.dtype),
        "yes" if output.bitwise_equal else "no",
        f"{output.mismatches} ({fraction:.3%}){nan}",
        f"{output.max_abs_diff:.3g}",
        f"{output.max_rel_diff:.3g}",
        "-" if output.max_ulp is None else str(output.max_ulp),
    )


def _located_line(located: Located) -> str:
    counts = (
        f"{located.compared} tensors compared, {located.skipped} skipped as not alignable, "
        f"{located.unmatched} only in the candidate"
    )
    if located.node is None:
        return f"located: no intermediate tensor differs ({counts})"
    diff = located.comparison
    detail = "incomparable" if diff is None or not diff.comparable else (
        f"{diff.mismatches} differing, max |diff| {diff.max_abs_diff:.3g}, max ULP {diff.max_ulp}"
    )
    return f"located: first differing node {located.node!r} ({located.op}), output {located.output!r}: {detail} ({counts})"


def _json_float(value: float) -> float | str:
    """JSON has no inf/NaN: those are written as the strings "inf" and "nan"."""
    return value if math.isfinite(value) else str(value)


# --------------------------------------------------------------------------------------------
# Comparison


@dataclass(frozen=True)
class _Tolerance:
    """None for exact mode."""

    atol: float
    rtol: float
    scaled: bool


def _float_ordered(bits: np.ndarray, itemsize: int) -> np.ndarray:
    """Map float bits (as unsigned ints) to uint64 keys whose order is the floats' order.

    Negative floats map below positive ones, and -0.0 one step below +0.0, so the difference of
    two keys is the number of representable floats between them (the ULP distance).
    """
    sign_bit = np.uint64(1 << (8 * itemsize - 1))
    wide = bits.astype(np.uint64)
    magnitude = (wide & (sign_bit - np.uint64(1))).astype(np.int64)
    ordered = np.where(wide & sign_bit, -magnitude - 1, magnitude)
    return ordered.astype(np.uint64) ^ np.uint64(1 << 63)


def _as_array(value: Any) -> np.ndarray:
    """onnxruntime returns sequences (e.g. skl2onnx's ZipMap list of dicts) as Python lists."""
    if isinstance(value, np.ndarray):
        return value
    array = np.empty(len(value), dtype=object)
    array[:] = list(value)
    return array


def _update(stats: OutputComparison, reference: np.ndarray, candidate: np.ndarray, tolerance: _Tolerance | None) -> bool:
    """Fold one batch of one output into `stats`; returns True when the batch has a failure."""
    reference, candidate = _as_array(reference), _as_array(candidate)
    if stats.shape is None:
        stats.shape, stats.dtype = list(reference.shape), str(reference.dtype)
        stats.candidate_shape, stats.candidate_dtype = list(candidate.shape), str(candidate.dtype)
        if reference.dtype.kind != "f":
            stats.max_ulp = None  # ULPs are defined for floats only
    if reference.shape != candidate.shape or reference.dtype != candidate.dtype:
        stats.shape, stats.dtype = list(reference.shape), str(reference.dtype)
        stats.candidate_shape, stats.candidate_dtype = list(candidate.shape), str(candidate.dtype)
        return True
    stats.elements += reference.size
    if reference.dtype.kind not in "fiub":
        equal = bool(np.array_equal(reference, candidate))
        stats.bitwise_equal &= equal
        stats.mismatches += 0 if equal else int(np.count_nonzero(reference != candidate))
        return not equal
    reference = np.ascontiguousarray(reference)
    candidate = np.ascontiguousarray(candidate)
    if reference.nbytes <= _SMALL_BYTES:  # one memcmp of two small copies beats numpy's dispatch
        if reference.tobytes() == candidate.tobytes():
            return False
    unsigned = _UNSIGNED[reference.dtype.itemsize]
    reference_bits, candidate_bits = reference.view(unsigned), candidate.view(unsigned)
    if reference.nbytes > _SMALL_BYTES and np.array_equal(reference_bits, candidate_bits):
        return False  # the common case: bits compared in place, no float arithmetic at all
    return _update_differing(stats, reference, candidate, reference_bits != candidate_bits, tolerance)


def _update_differing(
    stats: OutputComparison, reference: np.ndarray, candidate: np.ndarray, differ: np.ndarray, tolerance: _Tolerance | None
) -> bool:
    is_float = reference.dtype.kind == "f"
    if is_float:
        reference_nan, candidate_nan = np.isnan(reference), np.isnan(candidate)
        either_nan = reference_nan | candidate_nan
        differ &= ~(reference_nan & candidate_nan)  # NaN against NaN is equal, whatever the payload
        nan_mismatches = reference_nan ^ candidate_nan
    else:
        either_nan = nan_mismatches = np.zeros(reference.shape, dtype=bool)
    exact_mismatches = int(np.count_nonzero(differ))
    stats.bitwise_equal &= exact_mismatches == 0
    stats.nan_mismatches += int(np.count_nonzero(nan_mismatches))
    a = reference.astype(np.float64)
    b = candidate.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        absolute = np.abs(a - b)
        absolute[~differ | either_nan] = 0.0  # equal bits (also inf == inf) and NaNs: no distance
        relative = absolute / np.abs(a)
        relative[absolute == 0.0] = 0.0
    if absolute.size:
        stats.max_abs_diff = max(stats.max_abs_diff, float(absolute.max()))
        stats.max_rel_diff = max(stats.max_rel_diff, float(relative.max()))
    if is_float:
        itemsize = reference.dtype.itemsize
        keys_a = _float_ordered(reference.view(_UNSIGNED[itemsize]), itemsize)
        keys_b = _float_ordered(candidate.view(_UNSIGNED[itemsize]), itemsize)
        ulp = np.maximum(keys_a, keys_b) - np.minimum(keys_a, keys_b)
        ulp[either_nan] = 0
        if ulp.size:
            stats.max_ulp = max(stats.max_ulp or 0, int(ulp.max()))
    else:
        stats.max_ulp = None
    if tolerance is None:
        stats.mismatches += exact_mismatches
        return exact_mismatches > 0
    atol = tolerance.atol
    if tolerance.scaled:
        finite = np.abs(a[np.isfinite(a)])
        atol *= max(1.0, float(finite.max()) if finite.size else 1.0)
    failed = nan_mismatches | ((absolute > atol) & (relative > tolerance.rtol))
    failures = int(np.count_nonzero(failed))
    stats.mismatches += failures
    return failures > 0


def compare_arrays(
    name: str, reference: np.ndarray, candidate: np.ndarray, *, atol: float | None = None, rtol: float | None = None
) -> OutputComparison:
    """Compare two arrays as `verify` compares one output (exact unless a tolerance is given)."""
    stats = OutputComparison(name)
    tolerance = None if atol is None and rtol is None else _Tolerance(atol or 0.0, rtol or 0.0, False)
    _update(stats, np.asarray(reference), np.asarray(candidate), tolerance)
    return stats


# --------------------------------------------------------------------------------------------
# Running models


@dataclass(frozen=True)
class InputSpec:
    """A graph input as declared: dims are ints, symbolic names (str) or None (unnamed)."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype


def session_options(optimization: str = "disable") -> "ort.SessionOptions":
    """The onnxruntime session options `verify` gives both models (and the benchmark's bare runs)."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise SurgeryError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    # Deterministic kernels where a provider has a choice (CUDA reductions); a no-op on CPU.
    options.use_deterministic_compute = True
    # Two sessions run in turn: threads that spin after a run would steal the cores the other
    # session needs (3x slower on 2 cores). Changes scheduling only, never the arithmetic.
    options.add_session_config_entry(SPINNING_KEY, "0")
    # Fatal only: a failed run is raised and reported as one line; onnxruntime's own error and
    # warning log lines would add lines to stderr around it.
    options.log_severity_level = 4
    return options


def describe_session_options(optimization: str, provider: str) -> dict[str, Any]:
    """The session options both models ran with, as named in the report."""
    options = session_options(optimization)
    return {
        "graph_optimization_level": OPTIMIZATION_LEVELS[optimization],
        "execution_mode": str(options.execution_mode).split(".")[-1],
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "use_deterministic_compute": options.use_deterministic_compute,
        "config": {SPINNING_KEY: options.get_session_config_entry(SPINNING_KEY)},
        "providers": [PROVIDERS[provider]] if provider == "cpu" else [PROVIDERS[provider], PROVIDERS["cpu"]],
    }


class _OnnxSide:
    """One ONNX model: a path handed to onnxruntime as is, or an in-memory model serialised once."""

    kind = "onnx"

    def __init__(self, source: Any, label: str, provider: str, optimization: str):
        from surgery.modelio import check_file

        self.label = label
        self.provider = provider
        self.optimization = optimization  # the level whose session also answers input/output queries
        self.path: Path | None = None
        self.model_bytes: bytes | None = None
        self.external_folder: str | None = None
        #: Bytes of weights onnxruntime will hold for the model: its file or bytes plus external data.
        self.footprint: int
        if isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            proto = check_file(self.path)  # one clear error for a bad file; no weight is read
            self.footprint = self.path.stat().st_size + _external_bytes(proto)
        elif isinstance(source, onnx.ModelProto):
            self.model_bytes = source.SerializeToString()
            self.footprint = len(self.model_bytes)
        elif isinstance(source, ir.Model):
            self.external_folder = _external_folder(source)
            self.model_bytes = ir.serde.serialize_model(source).SerializeToString()
            self.footprint = len(self.model_bytes) + sum(
                value.const_value.nbytes for value in source.graph.initializers.values()
                if isinstance(value.const_value, ir.ExternalTensor)
            )
        else:
            raise SurgeryError(f"{label}: expected an ONNX model, an onnx_ir model or a path, got {type(source).__name__}")
        self._sessions: dict[str, ort.InferenceSession] = {}

    def release(self) -> None:
        """Drop this side's sessions (and the weights onnxruntime holds for them)."""
        self._sessions.clear()

    def session(self, optimization: str) -> "ort.InferenceSession":
        if optimization not in self._sessions:
            if self.path is not None:
                model: str | bytes = str(self.path)
                options = session_options(optimization)
            else:
                model = self.model_bytes
                options = self._options_for_bytes(optimization)
            self._sessions[optimization] = _create_session(model, options, self.provider, self.label)
        return self._sessions[optimization]

    def _options_for_bytes(self, optimization: str) -> "ort.SessionOptions":
        options = session_options(optimization)
        if self.external_folder is not None:
            options.add_session_config_entry(EXTERNAL_FOLDER_KEY, self.external_folder)
        return options

    def inputs(self) -> list[InputSpec]:
        specs = []
        for node_arg in self.session(self.optimization).get_inputs():
            if node_arg.type not in _ORT_TYPES:
                raise SurgeryError(f"{self.label}: input {node_arg.name!r} has type {node_arg.type}, which verify cannot generate")
            specs.append(InputSpec(node_arg.name, tuple(node_arg.shape), np.dtype(_ORT_TYPES[node_arg.type])))
        return specs

    def output_names(self) -> list[str]:
        return [node_arg.name for node_arg in self.session(self.optimization).get_outputs()]

    def runner(self, optimization: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        return _runner(self.session(optimization), self.label)

    def graph_proto(self) -> onnx.ModelProto:
        """The model as a proto for rewriting; weights kept on disk stay there."""
        if self.path is not None:
            from surgery.modelio import load_proto

            return load_proto(self.path)
        return onnx.ModelProto.FromString(self.model_bytes)

    def exposed_runner(self, optimization: str) -> tuple[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], onnx.ModelProto]:
        """A runner over a copy of the graph whose every node output is also a graph output.

        A model read from a path is rewritten without its external data: the copy is handed to
        onnxruntime as bytes, and the session config entry EXTERNAL_FOLDER_KEY points it at the
        original file's folder, so nothing is written to disk and no weight is read by us.
        """
        proto = self.graph_proto()
        existing = {output.name for output in proto.graph.output}
        for node in proto.graph.node:
            for name in node.output:
                if name and name not in existing:
                    proto.graph.output.append(onnx.ValueInfoProto(name=name))
                    existing.add(name)
        options = session_options(optimization)
        folder = str(self.path.resolve().parent) if self.path is not None else self.external_folder
        if folder is not None:
            options.add_session_config_entry(EXTERNAL_FOLDER_KEY, folder)
        session = _create_session(proto.SerializeToString(), options, self.provider, self.label)
        return _runner(session, self.label), proto

    def versions(self) -> dict[str, str]:
        return {}


def _external_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of external data a parsed model declares (the lengths in its external-data entries)."""
    external = 0
    for tensor in all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            external += int(entries.get("length", 0) or 0)
    return external


def _runner(session: "ort.InferenceSession", label: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Feeds → every output of `session` by name; a failed run is a one-line SurgeryError."""
    names = [node_arg.name for node_arg in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = session.run(names, feeds)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types
            raise SurgeryError(f"{label}: onnxruntime failed to run the model: {first_line(error)}") from None
        return dict(zip(names, values))

    return run


def _external_folder(model: ir.Model) -> str | None:
    """The folder an in-memory model's external (memory-mapped) tensors are read from."""
    folders = {
        str(Path(value.const_value.base_dir).resolve())
        for value in model.graph.initializers.values()
        if isinstance(value.const_value, ir.ExternalTensor)
    }
    if len(folders) > 1:
        raise SurgeryError(f"model keeps external data in several folders ({', '.join(sorted(folders))}); save it first")
    return folders.pop() if folders else None


def _create_session(model: str | bytes, options: "ort.SessionOptions", provider: str, label: str) -> "ort.InferenceSession":
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise SurgeryError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise SurgeryError(f"{wanted} is not available in this onnxruntime build (install onnxruntime-gpu)")
    providers = [wanted] if provider == "cpu" else [wanted, PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as error:
        raise SurgeryError(f"{label}: onnxruntime cannot load the model: {first_line(error)}") from None
    if wanted not in session.get_providers():
        # onnxruntime-gpu without a usable CUDA silently runs on the CPU: never report those
        # results as CUDA results.
        raise SurgeryError(
            f"{wanted} could not be started (no usable GPU, CUDA or cuDNN); onnxruntime fell back to "
            f"{', '.join(session.get_providers())}. Use --provider cpu or fix the CUDA installation"
        )
    return session


class _KerasSide:
    """A `.keras` file, run with Keras; inputs and outputs are matched to the other side by position."""

    kind = "keras"

    def __init__(self, path: Path, label: str):
        from surgery.export import load_keras  # quiets TensorFlow's start-up (tensorflow_runtime)

        self.label = label
        self.model = load_keras(str(path))
        self.input_names: list[str] = [f"input_{i}" for i in range(len(self.model.inputs))]
        self.output_name_list: list[str] = [f"output_{i}" for i in range(len(self.model.outputs))]
        if len(self.output_name_list) == 1:
            self.output_name_list = ["output"]

    def inputs(self) -> list[InputSpec]:
        return [
            InputSpec(name, tuple(tensor.shape), np.dtype(str(tensor.dtype)))
            for name, tensor in zip(self.input_names, self.model.inputs)
        ]

    def output_names(self) -> list[str]:
        return self.output_name_list

    def runner(self, optimization: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            arrays = [feeds[name] for name in self.input_names]
            result = self.model(arrays if len(arrays) > 1 else arrays[0], training=False)
            result = result if isinstance(result, (list, tuple)) else [result]
            return {name: np.asarray(value) for name, value in zip(self.output_name_list, result)}

        return run

    def versions(self) -> dict[str, str]:
        import keras
        import tensorflow as tf

        return {"keras": keras.__version__, "tensorflow": tf.__version__}


def _open(source: Any, label: str, provider: str, optimization: str) -> _OnnxSide | _KerasSide:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix in (".keras", ".h5"):
            return _KerasSide(path, label)
    return _OnnxSide(source, label, provider, optimization)


def _label(source: Any, default: str) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else default


def _match_keras(reference: _OnnxSide | _KerasSide, candidate: _OnnxSide | _KerasSide) -> None:
    """Give a Keras side the other side's input and output names, position by position."""
    for keras_side, other in ((reference, candidate), (candidate, reference)):
        if keras_side.kind != "keras" or other.kind != "onnx":
            continue
        onnx_inputs = [spec.name for spec in other.inputs()]
        if len(onnx_inputs) != len(keras_side.input_names):
            raise SurgeryError(
                f"{keras_side.label} has {len(keras_side.input_names)} inputs but {other.label} has {len(onnx_inputs)}"
            )
        keras_side.input_names = onnx_inputs
        onnx_outputs = other.output_names()
        if len(onnx_outputs) == len(keras_side.output_name_list):
            keras_side.output_name_list = onnx_outputs


# --------------------------------------------------------------------------------------------
# Inputs


def _resolve_shape(spec: InputSpec, rows: int, dims: Mapping[str, int]) -> tuple[int, ...]:
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim in dims:
            shape.append(int(dims[dim]))
        elif axis == 0:
            shape.append(rows)
        else:
            what = f"symbolic dimension {dim!r}" if isinstance(dim, str) else "an unnamed dimension"
            hint = f"give --dim {dim}=N" if isinstance(dim, str) else "give the inputs with --inputs"
            raise SurgeryError(f"input {spec.name!r} has {what} at axis {axis}: {hint}")
    return tuple(shape)


def _rows_per_run(specs: list[InputSpec], batch: int, dims: Mapping[str, int]) -> int:
    """Samples per run: `batch` unless the graph fixes the leading dimension."""
    fixed = {spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] >= 0}
    named = {dims[spec.shape[0]] for spec in specs if spec.shape and isinstance(spec.shape[0], str) and spec.shape[0] in dims}
    leading = fixed | {int(value) for value in named}
    if len(leading) > 1:
        raise SurgeryError(f"inputs disagree on the leading dimension ({sorted(leading)}); give the inputs with --inputs")
    return leading.pop() if leading else batch


def _draw(rng: np.random.Generator, dtype: np.dtype, count: int) -> np.ndarray:
    """`count` seeded random values: floats uniform in [-1, 1), integers in [0, 10), bools fair."""
    if dtype.kind == "f":
        values = rng.random(count, dtype=np.float64 if dtype == np.float64 else np.float32)
        values *= 2
        values -= 1
        return values.astype(dtype, copy=False)
    if dtype.kind == "b":
        return rng.integers(0, 2, count, dtype=np.uint8).astype(np.bool_)
    return rng.integers(*INTEGER_INPUT_RANGE, count).astype(dtype)


def _random_feeds(specs: list[InputSpec], dims: Mapping[str, int], samples: int, rows: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
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
        per_run = math.prod(_resolve_shape(spec, rows, dims))
        needed = per_run * runs
        pool_size = needed if needed <= RANDOM_POOL_VALUES + per_run else RANDOM_POOL_VALUES + per_run
        pools[spec.name] = (_draw(rng, spec.dtype, pool_size), needed <= pool_size)
    offsets = np.empty(0, dtype=np.int64)  # window starts for pools smaller than the need, in blocks
    full = {spec.name: _resolve_shape(spec, rows, dims) for spec in specs}
    used = dict.fromkeys(pools, 0)
    for run in range(runs):
        if run % _OFFSET_BLOCK == 0:
            offsets = rng.integers(0, RANDOM_POOL_VALUES + 1, min(_OFFSET_BLOCK, runs - run))
        count = min(rows, samples - run * rows)
        feeds = {}
        for spec in specs:
            shape = full[spec.name] if count == rows else _resolve_shape(spec, count, dims)
            size = math.prod(shape)
            pool, fresh = pools[spec.name]
            if fresh:
                start = used[spec.name]
                used[spec.name] += size
            else:
                start = int(offsets[run % _OFFSET_BLOCK])
            feeds[spec.name] = pool[start : start + size].reshape(shape)
        yield feeds


def _declared(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _check_user_inputs(specs: list[InputSpec], inputs: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> int:
    """Validate the user's arrays against the declared inputs; returns the number of rows."""
    expected = {spec.name for spec in specs}
    given = set(inputs)
    missing, extra = sorted(expected - given), sorted(given - expected)
    if missing:
        raise SurgeryError(f"inputs file lacks model input(s) {', '.join(missing)} (the model expects {', '.join(sorted(expected))})")
    if extra:
        raise SurgeryError(f"inputs file has array(s) {', '.join(extra)} that are not model inputs (the model expects {', '.join(sorted(expected))})")
    bound: dict[str, int] = dict(dims)
    for spec in specs:
        array = np.asarray(inputs[spec.name])
        declared = _declared(spec.shape)
        if array.ndim != len(spec.shape):
            raise SurgeryError(f"input {spec.name!r} has shape {list(array.shape)}, the model expects {declared}")
        for axis, (size, dim) in enumerate(zip(array.shape, spec.shape)):
            if isinstance(dim, int) and dim >= 0 and size != dim:
                raise SurgeryError(f"input {spec.name!r} has shape {list(array.shape)}, the model expects {declared} (axis {axis})")
            if isinstance(dim, str):
                if bound.setdefault(dim, size) != size:
                    raise SurgeryError(f"input {spec.name!r} has {dim}={size} at axis {axis}, but {dim}={bound[dim]} elsewhere")
        if array.dtype != spec.dtype:
            raise SurgeryError(f"input {spec.name!r} is {array.dtype}, the model expects {spec.dtype}")
    leading = {np.asarray(inputs[spec.name]).shape[0] for spec in specs if spec.shape}
    return leading.pop() if len(leading) == 1 else 1


def _user_feeds(specs: list[InputSpec], inputs: Mapping[str, np.ndarray], rows: int, batch: int) -> Iterator[dict[str, np.ndarray]]:
    """The user's arrays, in slices of `batch` along axis 0 when every input's axis 0 is free."""
    arrays = {spec.name: np.asarray(inputs[spec.name]) for spec in specs}
    sliceable = specs and all(spec.shape and not isinstance(spec.shape[0], int) for spec in specs)
    if not sliceable:
        yield arrays
        return
    for start in range(0, rows, batch):
        yield {name: array[start : start + batch] for name, array in arrays.items()}


# --------------------------------------------------------------------------------------------
# verify


def verify(
    reference: ModelSource,
    candidate: ModelSource,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    samples: int = 16,
    batch: int = 8,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    provider: str = "cpu",
    optimization: str = "disable",
    deployed: bool = False,
    locate: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Run `reference` and `candidate` on the same inputs and compare every output.

    Args:
        reference, candidate: `onnx.ModelProto`, `onnx_ir.Model`, or a path to an `.onnx` file
            (external data is read by onnxruntime from the file's folder) or a `.keras` file
            (run with Keras; tolerance mode, default atol 1e-5 x max(1, max |reference|)).
        inputs: the user's arrays by input name (replaces random inputs; `samples` is ignored).
        samples, batch: random samples in all, and per run (for a symbolic leading dimension).
        dims: values for symbolic dimensions by name (the leading one defaults to `batch`).
        seed: seed of the random inputs.
        atol, rtol: tolerance mode; an element fails when beyond both. None for both: exact.
        provider: "cpu" or "cuda" (never silently replaced by the CPU).
        optimization: onnxruntime graph optimization level for both models:
            "disable" (default), "basic", "extended" or "all".
        deployed: also run both at level "all" and report the ULP distance there.
        locate: when outputs differ, find the first node of the candidate whose output differs.
        progress: called as progress(samples_done, samples_total) after each batch.

    Returns:
        A `Report`; `report.equivalent` is the verdict. Raises SurgeryError for bad input.

    Example:
        >>> verify(onnx.load("a.onnx"), "b.onnx", atol=1e-6).equivalent
        True
    """
    if samples < 1 or batch < 1:
        raise SurgeryError(f"samples and batch must be at least 1 (got samples={samples}, batch={batch})")
    if optimization not in OPTIMIZATION_LEVELS:
        raise SurgeryError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    if provider not in PROVIDERS:
        raise SurgeryError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not (value >= 0):
            raise SurgeryError(f"{name} must be a non-negative number, got {value}")
    dims = dict(dims or {})
    reference_side = _open(reference, _label(reference, "reference"), provider, optimization)
    candidate_side = _open(candidate, _label(candidate, "candidate"), provider, optimization)
    uses_keras = "keras" in (reference_side.kind, candidate_side.kind)
    if locate and uses_keras:
        raise SurgeryError("locate compares intermediate tensors and needs ONNX models on both sides, not Keras")
    if deployed and uses_keras:
        raise SurgeryError("deployed reruns both models in onnxruntime at level 'all' and needs ONNX models on both sides, not Keras")
    _match_keras(reference_side, candidate_side)

    tolerance: _Tolerance | None = None
    if atol is not None or rtol is not None:
        tolerance = _Tolerance(float(atol or 0.0), float(rtol or 0.0), False)
    elif uses_keras:
        tolerance = _Tolerance(KERAS_DEFAULT_ATOL, 0.0, True)

    one_at_a_time = (
        reference_side.kind == candidate_side.kind == "onnx"
        and reference_side.footprint + candidate_side.footprint > ONE_SESSION_BYTES
    )
    if one_at_a_time:  # the candidate answers first, so that the reference's session stays open for its runs
        candidate_specs, candidate_outputs = candidate_side.inputs(), candidate_side.output_names()
        candidate_side.release()
    specs = reference_side.inputs()
    reference_outputs = reference_side.output_names()
    if not one_at_a_time:
        candidate_specs, candidate_outputs = candidate_side.inputs(), candidate_side.output_names()
    _check_same_inputs(specs, candidate_specs, reference_side.label, candidate_side.label)
    if inputs is not None:
        total = _check_user_inputs(specs, inputs, dims)

        def feeds() -> Iterator[dict[str, np.ndarray]]:
            return _user_feeds(specs, inputs, total, batch)
    else:
        rows = _rows_per_run(specs, batch, dims)
        total = samples

        def feeds() -> Iterator[dict[str, np.ndarray]]:
            return _random_feeds(specs, dims, samples, rows, seed)

    shared = [name for name in reference_outputs if name in candidate_outputs]

    def compare(level: str, tolerance: _Tolerance | None, progress) -> tuple[dict[str, OutputComparison], Any]:
        if one_at_a_time:
            return _compare_one_at_a_time(reference_side, candidate_side, level, shared, feeds(), tolerance, total, progress)
        return _compare_runs(reference_side.runner(level), candidate_side.runner(level), shared, feeds(), tolerance, total, progress)

    outputs, first_failing = compare(optimization, tolerance, progress)
    comparisons = [outputs[name] if name in outputs else OutputComparison(name, present_in="reference") for name in reference_outputs]
    comparisons += [OutputComparison(name, present_in="candidate") for name in candidate_outputs if name not in reference_outputs]
    equivalent = all(comparison.passed for comparison in comparisons)

    deployed_report = None
    if deployed:
        if optimization == "all":
            deployed_outputs = outputs
        else:
            deployed_outputs, _ = compare("all", None, None)
        deployed_report = {
            "optimization": "all",
            "session_options": describe_session_options("all", provider),
            "bitwise_equal": all(o.passed for o in deployed_outputs.values()),
            "outputs": [deployed_outputs[name].to_json() for name in shared],
        }

    located = None
    if locate and not equivalent:
        if first_failing is None:  # only structural differences (a missing output): use the first batch
            first_failing = next(feeds())
        located = _locate(reference_side, candidate_side, first_failing, optimization, tolerance)

    import onnxruntime as ort

    versions = {"onnx": onnx.__version__, "onnxruntime": ort.__version__}
    for side in (reference_side, candidate_side):
        versions.update(side.versions())
    return Report(
        equivalent=equivalent,
        mode="exact" if tolerance is None else "tolerance",
        outputs=comparisons,
        reference=reference_side.label,
        candidate=candidate_side.label,
        provider=provider,
        optimization=optimization,
        session_options=describe_session_options(optimization, provider),
        samples=total,
        batch=batch,
        seed=seed,
        inputs="random" if inputs is None else "given",
        atol=None if tolerance is None else tolerance.atol,
        rtol=None if tolerance is None else tolerance.rtol,
        atol_scaled=tolerance is not None and tolerance.scaled,
        versions=versions,
        located=located,
        deployed=deployed_report,
    )


def _check_same_inputs(reference: list[InputSpec], candidate: list[InputSpec], reference_label: str, candidate_label: str) -> None:
    by_name = {spec.name: spec for spec in candidate}
    missing = [spec.name for spec in reference if spec.name not in by_name]
    extra = sorted(set(by_name) - {spec.name for spec in reference})
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{candidate_label} lacks input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"{candidate_label} has extra input(s) {', '.join(extra)}")
        raise SurgeryError(f"the models take different inputs: {'; '.join(parts)}")
    for spec in reference:
        other = by_name[spec.name]
        if spec.dtype != other.dtype:
            raise SurgeryError(f"input {spec.name!r} is {spec.dtype} in {reference_label} but {other.dtype} in {candidate_label}")
        fixed = [
            axis for axis, (a, b) in enumerate(zip(spec.shape, other.shape))
            if isinstance(a, int) and isinstance(b, int) and a >= 0 and b >= 0 and a != b
        ]
        if len(spec.shape) != len(other.shape) or fixed:
            raise SurgeryError(
                f"input {spec.name!r} has shape {_declared(spec.shape)} in {reference_label} but {_declared(other.shape)} in {candidate_label}"
            )


def _compare_runs(
    run_reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    run_candidate: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    names: list[str],
    batches: Iterator[dict[str, np.ndarray]],
    tolerance: _Tolerance | None,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, OutputComparison], dict[str, np.ndarray] | None]:
    """Run both models batch by batch and fold each output into running statistics.

    Returns the statistics and the feeds of the first batch that had a failure (for `locate`).
    """
    tally = _Tally(names, tolerance, total, progress)
    for feeds in batches:
        tally.add(feeds, run_reference(feeds), run_candidate(feeds))
    return tally.stats, tally.first_failing


class _Tally:
    """Running comparison statistics over batches, with the first failing batch and progress."""

    def __init__(self, names: list[str], tolerance: _Tolerance | None, total: int,
                 progress: Callable[[int, int], None] | None) -> None:
        self.names, self.tolerance, self.total, self.progress = names, tolerance, total, progress
        self.stats = {name: OutputComparison(name) for name in names}
        self.first_failing: dict[str, np.ndarray] | None = None
        self.done = 0

    def add(self, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray], produced: dict[str, np.ndarray]) -> None:
        failed = False
        for name in self.names:
            failed |= _update(self.stats[name], expected[name], produced[name], self.tolerance)
        if failed and self.first_failing is None:
            self.first_failing = feeds
        if self.progress is not None:
            self.done += len(next(iter(feeds.values()))) if feeds else 1
            self.progress(min(self.done, self.total), self.total)


def _compare_one_at_a_time(
    reference: "_OnnxSide",
    candidate: "_OnnxSide",
    optimization: str,
    names: list[str],
    batches: Iterator[dict[str, np.ndarray]],
    tolerance: _Tolerance | None,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, OutputComparison], dict[str, np.ndarray] | None]:
    """`_compare_runs` for models too large to hold two sessions: one session at a time.

    The reference runs over a round of batches whose inputs and outputs fit in ROUND_BYTES; its
    session is dropped, the candidate's is opened and compared on the same round, and dropped in
    turn. Peak memory is one session plus one round, at the price of reopening the sessions
    once per round (a single round unless the outputs are very large).
    """
    tally = _Tally(names, tolerance, total, progress)
    batches = iter(batches)
    exhausted = False
    while not exhausted:
        held, round_ = 0, []
        run_reference = reference.runner(optimization)
        for feeds in batches:
            produced = run_reference(feeds)
            kept = {name: produced[name] for name in names}
            round_.append((feeds, kept))
            held += sum(np.asarray(a).nbytes for a in (*feeds.values(), *kept.values()))
            if held >= ROUND_BYTES:
                break
        else:
            exhausted = True
        del run_reference  # the closure holds the session: drop both before the candidate loads
        reference.release()
        if not round_:
            break
        run_candidate = candidate.runner(optimization)
        for feeds, expected in round_:
            tally.add(feeds, expected, run_candidate(feeds))
        del run_candidate
        candidate.release()
    return tally.stats, tally.first_failing


# --------------------------------------------------------------------------------------------
# locate


def _widened_tensors(proto: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    for entry in proto.metadata_props:
        if entry.key == WIDENED_TENSORS_KEY:
            try:
                value = json.loads(entry.value)
            except json.JSONDecodeError:
                raise SurgeryError(f"model metadata {WIDENED_TENSORS_KEY} is not valid JSON") from None
            return value if isinstance(value, dict) else {}
    return {}


def _original_units(reference: np.ndarray, candidate: np.ndarray, widened: dict[str, Any] | None) -> np.ndarray | None:
    """The candidate tensor restricted to the reference's units, or None when it cannot be aligned.

    With widen metadata the new index ranges are removed along the recorded axis; without it,
    a tensor whose shape differs from the reference on exactly one axis keeps the first U
    entries along that axis.
    """
    if reference.dtype != candidate.dtype or reference.ndim != candidate.ndim:
        return None
    if reference.shape == candidate.shape:
        return candidate
    if widened is not None:
        axis = int(widened["axis"]) % candidate.ndim
        keep = np.ones(candidate.shape[axis], dtype=bool)
        for start, stop in widened["new"]:
            keep[int(start) : int(stop)] = False
        aligned = np.compress(keep, candidate, axis=axis)
        return aligned if aligned.shape == reference.shape else None
    differing = [axis for axis in range(reference.ndim) if reference.shape[axis] != candidate.shape[axis]]
    if len(differing) != 1 or candidate.shape[differing[0]] < reference.shape[differing[0]]:
        return None
    axis = differing[0]
    return np.take(candidate, np.arange(reference.shape[axis]), axis=axis)


def _shape_computations(proto: onnx.ModelProto, widened: dict) -> set[str]:
    """Tensors computed from the shape of a widened tensor (tf2onnx's dynamic Flatten chain).

    `Shape`/`Size` of a widened tensor, and every node whose inputs are all such tensors or
    constants, differ by design after a widening; their consumers are compared instead.
    """
    constants = {t.name for t in proto.graph.initializer}
    derived: set[str] = set()
    for node in proto.graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
        elif node.op_type in ("Shape", "Size") and node.input and node.input[0] in widened:
            derived.update(node.output)
        elif node.input and any(i in derived for i in node.input) and all(
            not i or i in derived or i in constants for i in node.input
        ):
            derived.update(node.output)
    return derived


def _locate(
    reference: _OnnxSide, candidate: _OnnxSide, feeds: dict[str, np.ndarray], optimization: str, tolerance: _Tolerance | None
) -> Located:
    """Run both with every intermediate tensor exposed; the first candidate node that differs.

    Tensors are matched by name and visited in the candidate's topological (node) order.
    """
    run_reference, _ = reference.exposed_runner(optimization)
    run_candidate, candidate_proto = candidate.exposed_runner(optimization)
    reference_values = run_reference(feeds)
    candidate_values = run_candidate(feeds)
    widened = _widened_tensors(candidate_proto)
    shape_of_widened = _shape_computations(candidate_proto, widened)
    compared = skipped = unmatched = 0
    for node in candidate_proto.graph.node:
        for name in node.output:
            if not name:
                continue
            if name in shape_of_widened:
                skipped += 1  # the widening changed this shape on purpose
                continue
            if name not in reference_values:
                unmatched += 1
                continue
            aligned = _original_units(reference_values[name], candidate_values[name], widened.get(name))
            if aligned is None:
                skipped += 1
                continue
            compared += 1
            stats = OutputComparison(name)
            if _update(stats, reference_values[name], aligned, tolerance):
                return Located(node.name or None, node.op_type, name, stats, compared, skipped, unmatched)
    return Located(None, None, None, None, compared, skipped, unmatched)
