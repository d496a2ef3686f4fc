"""The outcome of `verify`: per-output statistics, the located node, and their rendering.

`Report.to_json()` is the stable schema documented in docs/verify.md; `Report.summary()` and
`describe_mode` render it as plain text (the CLI's rich table reads the same JSON document).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class OutputComparison:
    """How one output compares between the two models, accumulated over every batch.

    `mismatches` counts failing elements under the report's mode (differing bits in exact
    mode, elements beyond both tolerances in tolerance mode). `max_abs_diff`, `max_rel_diff`
    (relative to |reference|) and `max_ulp` are taken over elements that are NaN in neither
    model; `nan_mismatches` counts NaN-against-number elements. `max_ulp` is None for integer
    and bool outputs. `present_in` is "both", "reference" or "candidate"; `dropped` marks an
    ONNX output that the Keras model on the other side does not produce on purpose (a
    classifier's label output that the conversion left out): reported, not a failure.
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
    dropped: bool = False

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
            "dropped": self.dropped,
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
    #: The value every symbolic input dimension had (given, the batch, or the default).
    dims: dict[str, int] = field(default_factory=dict)

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
            "dims": self.dims,
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
            parts = [
                f"{o['name']}: max ULP {o['max_ulp']}, {o['mismatches']} differing" for o in self.deployed["outputs"]
            ]
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
        where = f"only in {output.present_in}" + (" (dropped by the Keras model)" if output.dropped else "")
        return (output.name, where, "", "-" if output.dropped else "no", "", "", "", "")
    if not output.comparable:
        shape = f"{output.shape} vs {output.candidate_shape}"
        dtype = (
            output.dtype if output.dtype == output.candidate_dtype else f"{output.dtype} vs {output.candidate_dtype}"
        )
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
    detail = (
        "incomparable"
        if diff is None or not diff.comparable
        else (f"{diff.mismatches} differing, max |diff| {diff.max_abs_diff:.3g}, max ULP {diff.max_ulp}")
    )
    return (
        f"located: first differing node {located.node!r} ({located.op}), output {located.output!r}: {detail} ({counts})"
    )


def _json_float(value: float) -> float | str:
    """JSON has no inf/NaN: those are written as the strings "inf" and "nan"."""
    return value if math.isfinite(value) else str(value)
