"""The result of the width analysis: typed, immutable, read by `surgery.rewrite` and `surgery.symmetry`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from surgery.graph import constant_shape
from surgery.layers import LayerSite
from surgery.layout import Layout

#: onnxruntime's CPU matrix multiply (MLAS SGEMM) sums the contracted dimension in blocks of
#: this many terms and adds the blocks' partial sums (measured on onnxruntime 1.31, x86-64; see
#: benchmarks/conv_alignment.py). Zero rows inserted *between* existing ones can move an
#: existing term into another block, which changes the rounding of the existing outputs.
SGEMM_K_BLOCK = 256


@dataclass(frozen=True)
class Member:
    """One layer whose units grow.

    Attributes:
        site: the layer (node, friendly name, output).
        weight_axes: (input axis, unit axis) of its weight (input 1).
        bias_input: index of its bias input (Conv 2, Gemm 2), or None.
        activation: the activation that follows (chooses He vs Glorot), or None.
    """

    site: LayerSite
    weight_axes: tuple[int, int]
    bias_input: int | None
    activation: str | None

    @property
    def node(self) -> ir.Node:
        return self.site.node


@dataclass(frozen=True)
class Group:
    """Layers that grow together by the same number of units (coupled by joins)."""

    id: int
    old_width: int
    added: int
    members: tuple[Member, ...]
    requested: tuple[str, ...]

    @property
    def new_width(self) -> int:
        return self.old_width + self.added


@dataclass(frozen=True, eq=False)
class Edit:
    """One change to one constant input of one node.

    `role` says what the edit does to the new positions of the parameter along `axis`:
    "fan-in": a producer's new units (weights), "bias": a producer's new bias entries,
    "fan-out": a consumer's weights that read new positions, "neutral": a per-unit constant of a
    pass-through node, "literal": a shape constant replaced by `literal`.
    """

    node: ir.Node
    input_index: int
    role: str
    axis: int = 0
    layout: Layout | None = None
    neutral: float = 0.0
    literal: np.ndarray | None = None
    #: (input axis, unit axis) of the weight this edit touches, for the fan-in/fan-out of random draws.
    weight_axes: tuple[int, int] | None = None
    activation: str | None = None
    #: for a "literal" edit of a shape computed at run time: the Reshape that reads it.
    reader: ir.Node | None = None

    @property
    def value(self) -> ir.Value:
        return self.node.inputs[self.input_index]

    def relabeled(self, mapping: Mapping[int, int]) -> Edit:
        """The same edit with the layout's group ids renamed (see `Layout.relabeled`)."""
        return self if self.layout is None else replace(self, layout=self.layout.relabeled(mapping))


@dataclass(frozen=True)
class AttributeEdit:
    """One node attribute set to a new value (a depthwise Conv's ``group`` count)."""

    node: ir.Node
    name: str
    value: int


@dataclass(frozen=True)
class ChannelChange:
    """A Conv whose channel count changes (onnxruntime picks its NCHWc kernels by channel count)."""

    node: str
    side: str  # "output" or "input"
    old: int
    new: int


@dataclass(frozen=True)
class RowShift:
    """A MatMul/Gemm whose existing fan-out rows move into another SGEMM K-block (see
    `SGEMM_K_BLOCK`): onnxruntime then rounds its existing outputs differently."""

    node: str
    old: int
    new: int
    moved: int  # how many existing rows changed block


@dataclass(frozen=True)
class WidenPlan:
    """The complete, immutable result of the analysis.

    Attributes:
        groups: the coupled layer groups, each with its number of new units.
        edits: every parameter change, in a deterministic order.
        tensors: every tensor whose shape grows, with where its new positions are.
        channel_changes: Conv channel counts that change (for the NCHWc report).
        row_shifts: MatMul/Gemm consumers whose existing rows change SGEMM K-block.
        attributes: node attributes that change (applied after the parameters).
    """

    groups: tuple[Group, ...]
    edits: tuple[Edit, ...]
    tensors: tuple[tuple[ir.Value, Layout], ...]
    channel_changes: tuple[ChannelChange, ...] = field(default=())
    row_shifts: tuple[RowShift, ...] = field(default=())
    attributes: tuple[AttributeEdit, ...] = field(default=())

    def new_shapes(self) -> dict[tuple[int, int], tuple[int, ...]]:
        """(id of node, input index) → the parameter's shape after the widening."""
        shapes: dict[tuple[int, int], list[int]] = {}
        for edit in self.edits:
            key = (id(edit.node), edit.input_index)
            if key not in shapes:
                shapes[key] = list(constant_shape(edit.value) or ())
            if edit.role == "literal":
                shapes[key] = list(edit.literal.shape)
            elif edit.layout is not None:
                shapes[key][edit.axis] = edit.layout.size
        return {key: tuple(shape) for key, shape in shapes.items()}


__all__ = ["Member", "Group", "Edit", "AttributeEdit", "ChannelChange", "RowShift", "WidenPlan", "SGEMM_K_BLOCK"]
