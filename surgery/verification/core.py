"""`verify`: run two models on the same inputs and fold every output into a `Report`.

Above ONE_SESSION_BYTES of weights the two sessions never coexist (`_compare_one_at_a_time`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeAlias

import numpy as np
import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.verification.comparison import KERAS_TOLERANCE, Tally, Tolerance
from surgery.verification.feeds import (
    InputSpec,
    check_dims,
    check_user_inputs,
    declared,
    random_feeds,
    rows_per_run,
    sliceable,
    used_dims,
    user_feeds,
)
from surgery.verification.locate import first_difference
from surgery.verification.report import OutputComparison, Report
from surgery.verification.runtime import OPTIMIZATION_LEVELS, PROVIDERS, check_choice, describe_session_options
from surgery.verification.sides import OnnxSide, label_of, match_keras, open_side

#: Above this many bytes of weights in both models together, the two sessions never coexist
#: (see `_compare_one_at_a_time`): memory stays at one session plus one round of batches.
ONE_SESSION_BYTES = 1 << 30
#: Inputs and reference outputs held per round in that mode.
ROUND_BYTES = 256 << 20

#: What `verify` accepts on either side.
ModelSource: TypeAlias = "onnx.ModelProto | ir.Model | str | os.PathLike[str]"


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
    _check_arguments(samples=samples, batch=batch, atol=atol, rtol=rtol, provider=provider, optimization=optimization)
    dims = dict(dims or {})
    reference_side = open_side(reference, label_of(reference, "reference"), provider, optimization)
    candidate_side = open_side(candidate, label_of(candidate, "candidate"), provider, optimization)
    uses_keras = "keras" in (reference_side.kind, candidate_side.kind)
    if locate and uses_keras:
        raise SurgeryError("locate compares intermediate tensors and needs ONNX models on both sides, not Keras")
    if deployed and uses_keras:
        raise SurgeryError(
            "deployed reruns both models in onnxruntime at level 'all' and needs ONNX models on both sides, not Keras"
        )
    match_keras(reference_side, candidate_side)

    tolerance: Tolerance | None = None
    if atol is not None or rtol is not None:
        tolerance = Tolerance(float(atol or 0.0), float(rtol or 0.0), False)
    elif uses_keras:
        tolerance = Tolerance(KERAS_TOLERANCE, 0.0, True)

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
    dims = check_dims(specs, dims)
    if inputs is not None:
        total = check_user_inputs(specs, inputs, dims)
        rows = min(batch, total) if sliceable(specs) else total

        def feeds() -> Iterator[dict[str, np.ndarray]]:
            return user_feeds(specs, inputs, total, batch)
    else:
        rows = rows_per_run(specs, batch, dims)
        if _leading_fixed(specs, dims):  # every run has that many rows: the last one is not cut short
            total = -(-samples // rows) * rows
        else:
            rows, total = min(rows, samples), samples

        def feeds() -> Iterator[dict[str, np.ndarray]]:
            return random_feeds(specs, dims, total, rows, seed)

    shared = [name for name in reference_outputs if name in candidate_outputs]
    widened = candidate_side.widened if candidate_side.kind == "onnx" else {}

    def compare(level: str, tolerance: Tolerance | None, progress) -> tuple[dict[str, OutputComparison], Any]:
        if one_at_a_time:
            tally = Tally(shared, tolerance, total, progress, widened)
            return _compare_one_at_a_time(reference_side, candidate_side, level, feeds(), tally)
        tally = Tally(shared, tolerance, total, progress, widened)
        run_reference, run_candidate = reference_side.runner(level), candidate_side.runner(level)
        for batch_feeds in feeds():
            tally.add(batch_feeds, run_reference(batch_feeds), run_candidate(batch_feeds))
        return tally.stats, tally.first_failing

    outputs, first_failing = compare(optimization, tolerance, progress)
    dropped = set(reference_side.dropped) | set(candidate_side.dropped)
    comparisons = [
        outputs[name] if name in outputs else OutputComparison(name, present_in="reference", dropped=name in dropped)
        for name in reference_outputs
    ]
    comparisons += [
        OutputComparison(name, present_in="candidate", dropped=name in dropped)
        for name in candidate_outputs
        if name not in reference_outputs
    ]
    if not any(comparison.elements for comparison in comparisons if comparison.comparable):
        raise SurgeryError(
            f"the run compared no output element ({total} samples; a dimension or the inputs are empty): "
            "nothing is proven",
            param="inputs" if inputs is not None else "dims",
        )
    equivalent = all(comparison.passed or comparison.dropped for comparison in comparisons)

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
        located = first_difference(reference_side, candidate_side, first_failing, optimization, tolerance)

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
        batch=rows,
        seed=seed,
        inputs="random" if inputs is None else "given",
        atol=None if tolerance is None else tolerance.atol,
        rtol=None if tolerance is None else tolerance.rtol,
        atol_scaled=tolerance is not None and tolerance.scaled,
        versions=versions,
        located=located,
        deployed=deployed_report,
        dims=dict(dims) if inputs is not None else used_dims(specs, rows, dims),
    )


def _check_arguments(
    *, samples: int, batch: int, atol: float | None, rtol: float | None, provider: str, optimization: str
) -> None:
    """Each of verify's scalar arguments, checked once: counts >= 1, tolerances finite and >= 0."""
    for name, count in (("samples", samples), ("batch", batch)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise SurgeryError(f"{{param}} must be an integer of at least 1, got {count!r}", param=name)
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.floating))
            or not math.isfinite(value)
            or value < 0
        ):
            raise SurgeryError(f"{{param}} must be a finite non-negative number, got {value!r}", param=name)
    check_choice(provider, PROVIDERS, "provider")
    check_choice(optimization, OPTIMIZATION_LEVELS, "optimization")


def _check_same_inputs(
    reference: list[InputSpec], candidate: list[InputSpec], reference_label: str, candidate_label: str
) -> None:
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
            raise SurgeryError(
                f"input {spec.name!r} is {spec.dtype} in {reference_label} but {other.dtype} in {candidate_label}"
            )
        fixed = [
            axis
            for axis, (a, b) in enumerate(zip(spec.shape, other.shape))
            if isinstance(a, int) and isinstance(b, int) and a >= 0 and b >= 0 and a != b
        ]
        if len(spec.shape) != len(other.shape) or fixed:
            raise SurgeryError(
                f"input {spec.name!r} has shape {declared(spec.shape)} in {reference_label} "
                f"but {declared(other.shape)} in {candidate_label}"
            )


def _leading_fixed(specs: list[InputSpec], dims: Mapping[str, int]) -> bool:
    """Whether the graph or `dims` fixes the inputs' leading dimension (every run has that many rows)."""
    return any(
        spec.shape and ((isinstance(spec.shape[0], int) and spec.shape[0] >= 0) or spec.shape[0] in dims)
        for spec in specs
    )


def _compare_one_at_a_time(
    reference: OnnxSide,
    candidate: OnnxSide,
    optimization: str,
    batches: Iterator[dict[str, np.ndarray]],
    tally: Tally,
) -> tuple[dict[str, OutputComparison], dict[str, np.ndarray] | None]:
    """Fold both models' outputs into `tally`, for models too large to hold two sessions: one at a time.

    The reference runs over a round of batches whose inputs and outputs fit in ROUND_BYTES; its
    session is dropped, the candidate's is opened and compared on the same round, and dropped in
    turn. Peak memory is one session plus one round, at the price of reopening the sessions
    once per round (a single round unless the outputs are very large).
    """
    names = tally.names
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
