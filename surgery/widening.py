"""Widen a model file into another, proven before it takes its name: stage → verify → commit.

`widen_verified(model, output, plan, ...)` is what `surgery widen` does, as one library call:

1. load `model` (validated) and check `output` against the output-path rules
   (`surgery.modelio.check_output`: never the input or its data files, never a device);
2. widen it in memory (`surgery.rewrite.widen_in_place`);
3. write it as hidden temporary files beside `output` (`surgery.modelio.staged_save`);
4. verify the staged file against `model` with onnxruntime (`surgery.verify`, path against
   path, so a model of any size is checked from disk), unless `verify=False`;
5. rename it into place only if accepted: an exact strategy (`EXACT_STRATEGIES`) whose outputs
   are not bitwise equal raises NotEquivalentError and writes nothing.

The outcome says what happened in words (`WidenOutcome.lines`), so that every front end
reports the same facts: the groups that grew, the Conv and MatMul kernels whose onnxruntime
arithmetic may change under its default optimizations, and the verdict with what ran.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.analysis import ChannelChange, RowShift
from surgery.errors import NotEquivalentError
from surgery.initializers import EXACT_STRATEGIES
from surgery.modelio import check_output, input_files, load_model, staged_save
from surgery.rewrite import WidenResult, widen_in_place
from surgery.verification import Report

#: onnxruntime's NCHWc layout (default optimizations) picks Conv kernels by whether channel counts
#: are multiples of its block: 8 on AVX2, 16 on AVX-512 (docs: "Exactness on onnxruntime").
NCHWC_BLOCKS = (8, 16)


def channel_note(change: ChannelChange) -> str:
    """One line on a Conv whose channel count changes: does it cross an NCHWc block boundary?"""
    crossed = [block for block in NCHWC_BLOCKS if (change.old % block == 0) != (change.new % block == 0)]
    note = (
        (
            f"crosses an NCHWc block boundary ({', '.join(map(str, crossed))}): with onnxruntime's default "
            "optimizations its outputs may differ by a few ULP (see the align option)"
        )
        if crossed
        else "same NCHWc blocking"
    )
    return f"conv {change.node!r} {change.side} channels {change.old} -> {change.new}: {note}"


def row_shift_note(shift: RowShift) -> str:
    """One line on a MatMul/Gemm whose existing rows move to another block of onnxruntime's SGEMM."""
    return (
        f"{shift.node!r}: {shift.moved} of its {shift.old} input rows move to another block of "
        f"onnxruntime's CPU matrix multiply ({shift.old} -> {shift.new} rows); its outputs may differ by a few ULP"
    )


def describe_run(report: Report) -> str:
    """What a verification ran: samples, batch, symbolic dimensions, provider and optimization."""
    dims = "".join(f", {name}={value}" for name, value in report.dims.items())
    optimization = "optimizations off" if report.optimization == "disable" else f"optimization {report.optimization}"
    return (
        f"{report.samples} samples in batches of {report.batch}{dims}, "
        f"onnxruntime {report.provider.upper()}, {optimization}"
    )


@dataclass(frozen=True)
class WidenOutcome:
    """What `widen_verified` did: the applied plan, the verification (None when skipped) and its lines."""

    output: Path
    result: WidenResult
    init: str
    report: Report | None
    verdict: str | None
    notes: tuple[str, ...] = field(default=())

    @property
    def lines(self) -> list[str]:
        """The outcome in words, in order: groups grown, kernel notes, the verdict, the file written."""
        lines = []
        for group in self.result.plan.groups:
            names = [member.site.layer.name for member in group.members]
            coupled = (
                f" (coupled: {', '.join(names[1:])} {'grows' if len(names) == 2 else 'grow'} with it)"
                if len(names) > 1
                else ""
            )
            lines.append(f"{names[0]}: {group.old_width} -> {group.new_width} units{coupled}")
        for record in (r for r in self.result.history if "block" in r):
            kv = (
                f"key/value heads {record['old_kv_heads']} -> {record['new_kv_heads']}, "
                if record["old_kv_heads"] != record["old_heads"]
                else ""
            )
            lines.append(
                f"{record['block']}: {record['old_heads']} -> {record['new_heads']} heads "
                f"({kv}head_dim {record['head_dim']})"
            )
        lines += self.notes
        if self.verdict is not None:
            lines.append(self.verdict)
        lines.append(f"wrote {self.output}")
        return lines


def widen_verified(
    model: str | os.PathLike,
    output: str | os.PathLike,
    plan: Mapping[str, int],
    *,
    heads: Mapping[str, int] | None = None,
    init: str = "output-zero",
    fan_in: str | None = None,
    seed: int = 0,
    allow_output_change: bool = False,
    align: int | None = None,
    verify: bool = True,
    force: bool = False,
    share_external_data: bool = False,
    dims: Mapping[str, int] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    samples: int = 16,
) -> WidenOutcome:
    """Widen the model file `model` into `output`, verified before it is written (see the module docstring).

    `plan`, `heads`, `init`, `fan_in`, `seed`, `allow_output_change` and `align` are `surgery.widen`'s;
    `force` and `share_external_data` are `surgery.save_model`'s; `dims`, `inputs` and
    `samples` are `surgery.verify`'s (a symbolic dimension nobody gives takes the default of
    `surgery.verification.feeds.SYMBOLIC_DEFAULT`). A widened graph output
    (`allow_output_change`) is compared on its original units.

    Raises:
        SurgeryError: bad input (the message names the parameter it is about).
        NotEquivalentError: an exact strategy gave different outputs; nothing was written.

    Example:
        >>> outcome = widen_verified("models/mlp.onnx", "wide.onnx", {"dense_1": 8})
        >>> print("\\n".join(outcome.lines))
    """
    from surgery.verification import verify as verify_models

    source = Path(model)
    ir_model = load_model(source)
    target = check_output(output, inputs=input_files(source, ir_model), suffix=".onnx", force=force)
    result = widen_in_place(
        ir_model,
        plan,
        init=init,
        fan_in=fan_in,
        seed=seed,
        allow_output_change=allow_output_change,
        align=align,
        heads=heads,
    )
    notes = tuple(
        [channel_note(c) for c in result.plan.channel_changes] + [row_shift_note(s) for s in result.plan.row_shifts]
    )
    report = verdict = None
    with staged_save(ir_model, target, force=force, share_external_data=share_external_data) as staged:
        if verify:
            report = verify_models(source, staged, dims=dims, inputs=inputs, samples=samples)
            diff = max((o.max_abs_diff for o in report.outputs), default=0.0)
            if init in EXACT_STRATEGIES:
                if not report.equivalent:
                    raise NotEquivalentError(
                        f"outputs are not bitwise equal after widening (max |diff| {diff:.3g}); {target} not written"
                    )
                verdict = f"verified: outputs bitwise equal ({describe_run(report)})"
            elif init == "net2net":
                verdict = f"verified: max |diff| {diff:.3g} (net2net is exact up to rounding; {describe_run(report)})"
            else:
                verdict = f"outputs changed, as {init} does (max |diff| {diff:.3g}; {describe_run(report)})"
    return WidenOutcome(target, result, init, report, verdict, notes)


__all__ = ["EXACT_STRATEGIES", "WidenOutcome", "channel_note", "describe_run", "row_shift_note", "widen_verified"]
