"""Comparing arrays: bitwise, in ULPs, within tolerances — and the one Keras-vs-ONNX rule.

Exact mode compares bits (a NaN matches any NaN in the same position). Tolerance mode fails an
element beyond both tolerances, ``|a - b| > atol`` and ``|a - b| / |a| > rtol``, as Polygraphy
does. ULP distance is measured on the ordered-integer representation of float16/32/64, in
which ``-0.0`` sits one step below ``+0.0``, so ``max_ulp == 0`` exactly when bits are equal.

Wherever Keras runs one side (export's self-check, to-keras's faithfulness check, `verify`
with a `.keras` file) the rule is `keras_difference` ≤ KERAS_TOLERANCE: the largest
``|reference - other|`` divided by ``max(1, max |reference|)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from surgery.errors import SurgeryError
from surgery.metadata import WIDENED_TENSORS_KEY
from surgery.verification.report import OutputComparison

#: Keras against onnxruntime: |a - b| <= KERAS_TOLERANCE * max(1, max |reference|).
KERAS_TOLERANCE = 1e-5
#: Outputs up to this size are compared as bytes objects (cheaper than numpy calls when small).
_SMALL_BYTES = 1 << 16
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class Tolerance:
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


def update(stats: OutputComparison, reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance | None) -> bool:
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
    stats: OutputComparison,
    reference: np.ndarray,
    candidate: np.ndarray,
    differ: np.ndarray,
    tolerance: Tolerance | None,
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


def widened_tensors(proto: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """The widen metadata (`surgery.widened_tensors`): tensor → its axis and new index ranges."""
    for entry in proto.metadata_props:
        if entry.key == WIDENED_TENSORS_KEY:
            try:
                value = json.loads(entry.value)
            except json.JSONDecodeError:
                raise SurgeryError(f"model metadata {WIDENED_TENSORS_KEY} is not valid JSON") from None
            return value if isinstance(value, dict) else {}
    return {}


def original_units(reference: np.ndarray, candidate: np.ndarray, widened: dict[str, Any] | None) -> np.ndarray | None:
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


def compare_arrays(
    name: str, reference: np.ndarray, candidate: np.ndarray, *, atol: float | None = None, rtol: float | None = None
) -> OutputComparison:
    """Compare two arrays as `verify` compares one output (exact unless a tolerance is given)."""
    stats = OutputComparison(name)
    tolerance = None if atol is None and rtol is None else Tolerance(atol or 0.0, rtol or 0.0, False)
    update(stats, np.asarray(reference), np.asarray(candidate), tolerance)
    return stats


class Tally:
    """Running comparison statistics over batches, with the first failing batch and progress."""

    def __init__(
        self,
        names: list[str],
        tolerance: Tolerance | None,
        total: int,
        progress: Callable[[int, int], None] | None,
        widened: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.names, self.tolerance, self.total, self.progress = names, tolerance, total, progress
        #: The candidate's widen metadata: a widened output is compared on its original units.
        self.widened = widened or {}
        self.stats = {name: OutputComparison(name) for name in names}
        self.first_failing: dict[str, np.ndarray] | None = None
        self.done = 0

    def add(
        self, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray], produced: dict[str, np.ndarray]
    ) -> None:
        failed = False
        for name in self.names:
            candidate = produced[name]
            if name in self.widened and np.shape(candidate) != np.shape(expected[name]):
                aligned = original_units(np.asarray(expected[name]), np.asarray(candidate), self.widened[name])
                candidate = candidate if aligned is None else aligned
            failed |= update(self.stats[name], expected[name], candidate, self.tolerance)
        if failed and self.first_failing is None:
            self.first_failing = feeds
        if self.progress is not None:
            self.done += len(next(iter(feeds.values()))) if feeds else 1
            self.progress(min(self.done, self.total), self.total)


def keras_difference(reference: Iterable[np.ndarray], other: Iterable[np.ndarray]) -> float:
    """The Keras-vs-ONNX rule's measure: max over outputs of max |reference - other| / max(1, max |reference|).

    Shapes must agree (the caller names the output when they do not); empty outputs count 0.
    Compare the result with KERAS_TOLERANCE.
    """
    worst = 0.0
    for expected, got in zip(reference, other, strict=True):
        expected, got = np.asarray(expected, dtype=np.float64), np.asarray(got, dtype=np.float64)
        if not expected.size:
            continue
        with np.errstate(invalid="ignore"):
            difference = np.abs(expected - got)
        both_nan = np.isnan(expected) & np.isnan(got)
        difference[both_nan] = 0.0
        difference[np.isnan(difference)] = np.inf  # NaN against a number, or inf against -inf
        finite = np.abs(expected[np.isfinite(expected)])
        scale = max(1.0, float(finite.max()) if finite.size else 1.0)
        worst = max(worst, float(difference.max()) / scale)
    return worst
