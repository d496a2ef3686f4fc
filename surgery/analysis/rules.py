"""One rule object per op kind: how a widening passes through a node, forwards and backwards.

`rule_for(node)` looks the node's op up in the catalogue (`surgery.ops`) and returns the rule of
its kind. A rule's `forward` gets the layouts of the node's widened inputs and returns those of
its outputs (an empty dict ends the widening there), recording the parameter edits in the
`Step`; `backward` says which inputs a growth of the node's output would come from (used when a
join needs the other side to grow). Adding an op of a known kind is one catalogue entry; a new
kind is one rule class here (or in `surgery.analysis.reshape`) and one line in `RULES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from surgery.analysis.common import MergeGroups, NeedsMember, block, int_list, opset_of, rank_of, static_dims
from surgery.analysis.plan import SGEMM_K_BLOCK, AttributeEdit, ChannelChange, Edit, RowShift
from surgery.graph import attribute, constant_shape, is_constant
from surgery.layout import Layout, ShapeVector
from surgery.ops import CATALOGUE, activation_after, default_softmax_axis, pow_exponent

#: input index → layout of a node's widened inputs; output index → layout of its widened outputs.
Widened = dict[int, Layout]
Outputs = dict[int, Layout | ShapeVector]


@dataclass
class Step:
    """What one rule application records, kept apart until the rule returns (a rule that raises
    leaves nothing behind). `layouts` is the walk's view of every tensor reached so far."""

    layouts: dict[ir.Value, Layout | ShapeVector]
    edits: list[Edit] = field(default_factory=list)
    channel_changes: list[ChannelChange] = field(default_factory=list)
    row_shifts: list[RowShift] = field(default_factory=list)
    attributes: list[AttributeEdit] = field(default_factory=list)


class Rule:
    """How one kind of op treats a widening; subclasses override what their kind allows.

    This base is the rule of an op the analysis does not know: it blocks, carries no shape
    tensor and passes no growth back.
    """

    def forward(self, node: ir.Node, widened: Widened, step: Step) -> Outputs:
        """The layouts of the node's outputs given its widened inputs (none: the widening stops
        here), with the parameter edits recorded in `step`; raises `Blocked` when unsafe."""
        raise block(node, "is not an op the width analysis knows; refusing to guess")

    def follow_shape(self, node: ir.Node, widened: dict, shapes: dict[int, ShapeVector], step: Step) -> Outputs:
        """A shape tensor holding the widened size reaches the node (see `ShapeVector`)."""
        raise block(node, "computes with the widened tensor's shape")

    def backward(self, node: ir.Node, axis: int) -> list[tuple[ir.Value, int]] | None:
        """(input, axis) pairs a growth of the output along `axis` would come from, or None."""
        return None


def weight_consumer(
    node: ir.Node, widened: Widened, step: Step, contracted: int, weight_axes: tuple[int, int], sgemm: bool
) -> None:
    """A layer that reads the widened tensor as its data input: new fan-out entries along the
    weight's input axis (`weight_axes[0]`); the widening stops there. With `sgemm` (MatMul,
    Gemm) existing rows that move into another SGEMM K-block are recorded."""
    if set(widened) != {0}:
        index = max(widened)
        raise block(node, f"reads the widened tensor as input {index}; only its data input can be widened")
    layout = widened[0]
    if layout.axis != contracted:
        raise block(node, f"contracts axis {contracted}, but the tensor is widened along axis {layout.axis}")
    weight = node.inputs[1]
    if not is_constant(weight):
        raise block(node, f"has a non-constant weight {weight.name!r}; its fan-out cannot be extended")
    step.edits.append(Edit(node, 1, "fan-out", weight_axes[0], layout, weight_axes=weight_axes))
    if sgemm:
        old = np.flatnonzero(layout.original >= 0)
        moved = int(np.count_nonzero(layout.original[old] // SGEMM_K_BLOCK != old // SGEMM_K_BLOCK))
        if moved:
            step.row_shifts.append(RowShift(node.name or "", layout.original_size, layout.size, moved))


class MatMulRule(Rule):
    """Rows of a constant rank-2 right operand read the new positions (fan-out); a tensor widened
    along another axis than the last keeps its positions (rows are independent)."""

    def forward(self, node, widened, step):
        if 1 in widened:
            raise block(node, "multiplies by the widened tensor as its right operand")
        layout = widened[0]
        weight_shape = constant_shape(node.inputs[1]) if is_constant(node.inputs[1]) else None
        if layout.axis != layout.rank - 1:
            if weight_shape is not None and len(weight_shape) == 2 and layout.rank >= 2:
                return {0: layout}
            raise block(node, f"multiplies a tensor widened along a batch axis ({layout.axis})")
        if weight_shape is None or len(weight_shape) != 2:
            raise block(node, "multiplies by a non-constant or batched right operand; its fan-out cannot be extended")
        weight_consumer(node, widened, step, layout.rank - 1, (0, 1), sgemm=True)
        return {}


class GemmRule(Rule):
    """Rows or columns of B (by transA/transB) read the new positions."""

    def forward(self, node, widened, step):
        if 1 in widened or 2 in widened:
            raise block(node, "reads the widened tensor as its B or C operand")
        contracted = 0 if attribute(node, "transA", 0) else 1
        weight_axes = (1, 0) if attribute(node, "transB", 0) else (0, 1)
        weight_consumer(node, widened, step, contracted, weight_axes, sgemm=True)
        return {}


def is_depthwise(node: ir.Node) -> bool:
    """A Conv with one input channel per group (``group`` = input channels, MobileNet's kind)."""
    weight = constant_shape(node.inputs[1]) if len(node.inputs) > 1 else None
    group = attribute(node, "group", 1)
    return group > 1 and weight is not None and len(weight) >= 3 and weight[1] == 1 and weight[0] % group == 0


class ConvRule(Rule):
    """group 1: input channels of the weight read the new positions (fan-out), the widening stops.

    Depthwise (one input channel per group, `is_depthwise`): per-channel pass-through. Each new
    input channel gets its own new filters (role "fan-in": any values would do, since they feed
    only new channels whose fan-out is zero; random, copied or zero by the strategy), a new bias
    entry, and the ``group`` attribute grows with the channels. With a channel multiplier m, the
    m output channels of input channel c sit at ``c·m … c·m+m-1``. Other grouped convolutions
    block: a new channel would join a group of old ones.
    """

    def forward(self, node, widened, step):
        if set(widened) - {0}:
            raise block(node, "reads the widened tensor as a weight or bias")
        layout = widened[0]
        group = attribute(node, "group", 1)
        if group == 1:
            weight_consumer(node, widened, step, 1, (1, 0), sgemm=False)
            step.channel_changes.append(ChannelChange(node.name or "", "input", layout.original_size, layout.size))
            return {}
        if not is_depthwise(node) or layout.original_size != group:
            raise block(node, "is a grouped convolution; its input channels cannot grow")
        if layout.axis != 1:
            raise block(node, f"convolves along the widened axis {layout.axis}")
        for index in range(1, len(node.inputs)):
            if node.inputs[index] is not None and not is_constant(node.inputs[index]):
                raise block(node, f"has a non-constant input {node.inputs[index].name!r}")
        multiplier = constant_shape(node.inputs[1])[0] // group
        out = layout.ravel(1, multiplier, 1, layout.rank)
        activation = activation_after(node.outputs[0])
        step.edits.append(Edit(node, 1, "fan-in", 0, out.moved(0, out.rank), weight_axes=(1, 0), activation=activation))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            step.edits.append(Edit(node, 2, "bias", 0, out.moved(0, 1)))
        step.attributes.append(AttributeEdit(node, "group", layout.size))
        name = node.name or ""
        step.channel_changes += [
            ChannelChange(name, "input", layout.original_size, layout.size),
            ChannelChange(name, "output", out.original_size, out.size),
        ]
        return {0: out}

    def backward(self, node, axis):
        return [(node.inputs[0], axis)] if axis == 1 and is_depthwise(node) else None


class UnaryRule(Rule):
    """Elementwise single-input ops: every position stays where it is; Cast and Identity also
    carry a shape tensor unchanged."""

    def forward(self, node, widened, step):
        if set(widened) != {0}:
            raise block(node, "reads the widened tensor as a parameter")
        return {i: widened[0] for i, out in enumerate(node.outputs) if out is not None}

    def follow_shape(self, node, widened, shapes, step):
        if node.op_type in ("Cast", "Identity") and set(widened) == {0} and 0 in shapes:
            return {0: shapes[0]}
        return super().follow_shape(node, widened, shapes, step)

    def backward(self, node, axis):
        return [(node.inputs[0], axis)]


def _is_layer_bias(node: ir.Node, layouts: Widened) -> bool:
    """True for the per-unit bias Add right after a MatMul layer (its only use).

    With one unit, a bias of shape [1] reads like a broadcast scalar; it is a bias all the same,
    and its new entries must be 0, not copies of the old unit's bias.
    """
    if node.op_type != "Add":
        return False
    for index in layouts:
        producer = node.inputs[index].producer()
        if producer is not None and producer.op_type == "MatMul" and len(node.inputs[index].uses()) == 1:
            return is_constant(producer.inputs[1])
    return False


class ElementwiseRule(Rule):
    """Elementwise n-ary ops: broadcast operands stay, per-unit constants get the catalogue's
    neutral entries, non-constant operands must be widened the same way (a coupled join: two
    groups merge, or the other side's layers join the group)."""

    def forward(self, node, widened, step):
        entry = CATALOGUE[node.op_type]
        ranks = []
        for i, value in enumerate(node.inputs):
            rank = widened[i].rank if i in widened else rank_of(value)
            if rank is None:
                raise block(node, f"joins the widened tensor with {value.name!r} of unknown shape")
            ranks.append(rank)
        out_rank = max(ranks)
        axes = {layout.axis + out_rank - layout.rank for layout in widened.values()}
        if len(axes) != 1:
            raise block(node, "joins tensors widened along different axes")
        axis = axes.pop()
        reference = next(iter(widened.values()))
        for layout in widened.values():
            if not layout.same_positions(reference):
                mine, theirs = layout.groups(), reference.groups()
                if len(mine) == 1 and len(theirs) == 1 and mine != theirs:
                    raise MergeGroups(node, theirs.pop(), mine.pop())
                raise block(node, "joins tensors whose new units sit at different positions")
        if node.op_type == "Div" and 1 in widened:
            raise block(node, "divides by the widened tensor (its new units may be zero)")
        for i, value in enumerate(node.inputs):
            if i in widened or value is None:
                continue
            dims = static_dims(value)
            own_axis = axis - (out_rank - len(dims))
            dim = dims[own_axis] if own_axis >= 0 else 1
            if dim == 1 and reference.original_size != 1 or own_axis < 0:
                continue  # broadcasts along the axis: new units see the same value as old ones
            if is_constant(value):
                if dim != reference.original_size:
                    raise block(
                        node,
                        f"has constant {value.name!r} of size {dim} along the widened axis "
                        f"(expected {reference.original_size} or 1)",
                    )
                if dim == 1 and not _is_layer_bias(node, widened):
                    continue  # a width-1 constant that is not a layer's bias is a broadcast scalar
                step.edits.append(
                    Edit(node, i, "neutral", own_axis, reference.moved(own_axis, len(dims)), neutral=entry.neutral)
                )
                continue
            if not entry.joins:
                raise block(node, f"reads non-constant {value.name!r} alongside the widened tensor")
            if dim is None or dim == reference.original_size:
                groups = reference.groups()
                if len(groups) != 1:
                    raise block(node, "joins a tensor holding several widenings with one that would have to grow")
                raise NeedsMember(node, value, own_axis, groups.pop())
            raise block(node, f"joins the widened tensor with {value.name!r} of size {dim} along the widened axis")
        return {0: reference.moved(axis, out_rank)}

    def backward(self, node, axis):
        out_rank = rank_of(node.outputs[0])
        paths = []
        for operand in node.inputs:
            dims = static_dims(operand) if operand is not None else None
            if dims is None or out_rank is None:
                continue
            own = axis - (out_rank - len(dims))
            if own < 0 or dims[own] == 1 or is_constant(operand):
                continue
            paths.append((operand, own))
        return paths


class ChannelNormRule(Rule):
    """Per-channel normalisation on axis 1: new channels get the catalogue's neutral parameters
    (BatchNormalization: scale 1, bias 0, mean 0, var 1; InstanceNormalization: scale 1, bias 0)."""

    def forward(self, node, widened, step):
        if node.op_type == "BatchNormalization" and attribute(node, "training_mode", 0):
            raise block(node, "runs in training mode")
        layout = widened.get(0)
        if set(widened) != {0} or layout.axis != 1:
            what = (
                "normalises over the widened axis"
                if layout is not None and layout.axis != 1
                else "reads the widened tensor as a parameter"
            )
            raise block(node, what)
        for index, value in CATALOGUE[node.op_type].channel_neutral:
            if not is_constant(node.inputs[index]):
                raise block(node, f"has a non-constant parameter {node.inputs[index].name!r}")
            step.edits.append(Edit(node, index, "neutral", 0, layout.moved(0, 1), neutral=value))
        return {0: layout}

    def backward(self, node, axis):
        return [(node.inputs[0], axis)]


class PoolRule(Rule):
    """Pools per channel (axis 1); MaxPool's Indices depend on the channel count."""

    def forward(self, node, widened, step):
        layout = widened[0]
        if layout.axis != 1:
            raise block(node, f"pools along the widened axis {layout.axis}")
        if (
            node.op_type == "MaxPool"
            and len(node.outputs) > 1
            and node.outputs[1] is not None
            and node.outputs[1].uses()
        ):
            raise block(node, "returns Indices, whose values depend on the channel count")
        return {0: layout}

    def backward(self, node, axis):
        return [(node.inputs[0], axis)]


class TransposeRule(Rule):
    """The widened axis moves to ``perm.index(axis)``."""

    def forward(self, node, widened, step):
        layout = widened[0]
        perm = attribute(node, "perm", list(range(layout.rank))[::-1])
        return {0: layout.moved(list(perm).index(layout.axis), layout.rank)}

    def backward(self, node, axis):
        rank = rank_of(node.inputs[0]) or rank_of(node.outputs[0])
        perm = attribute(node, "perm", list(range(rank or 0))[::-1])
        return [(node.inputs[0], list(perm)[axis])]


def _softmax_axes(node: ir.Node, rank: int) -> tuple[list[int], bool, str]:
    opset = opset_of(node)
    axis = default_softmax_axis(node, opset) % rank
    axes = [axis] if (opset == 0 or opset >= 13) else list(range(axis, rank))
    return axes, True, "is a softmax over the widened axis: new units would take probability mass"


def _reduce_axes(node: ir.Node, rank: int) -> tuple[list[int], bool, str]:
    listed = int_list(node, "axes", 1)
    if not listed:
        listed = [] if attribute(node, "noop_with_empty_axes", 0) else list(range(rank))
    return (
        [a % rank for a in listed],
        bool(attribute(node, "keepdims", 1)),
        "reduces over the widened axis: new units would enter the result",
    )


#: op → (axes it works over, keepdims, why the widened axis cannot be among them).
_AXES = {
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), _softmax_axes),
    "LayerNormalization": lambda node, rank: (
        list(range(attribute(node, "axis", -1) % rank, rank)),
        True,
        "normalises over the widened axis: new units would change the mean and variance",
    ),
    "LpNormalization": lambda node, rank: (
        [attribute(node, "axis", -1) % rank],
        True,
        "normalises over the widened axis",
    ),
    "MeanVarianceNormalization": lambda node, rank: (
        [a % rank for a in attribute(node, "axes", [0, 2, 3])],
        True,
        "normalises over the widened axis",
    ),
    **dict.fromkeys(
        ("ArgMax", "ArgMin"),
        lambda node, rank: (
            [attribute(node, "axis", 0) % rank],
            bool(attribute(node, "keepdims", 1)),
            "takes an arg-extremum over the widened axis: a new unit could win",
        ),
    ),
}


class OverAxesRule(Rule):
    """Ops that normalise or reduce over some axes: blocked when the widened axis is among them,
    pass-through (with the axis renumbered when reduced axes are dropped) otherwise."""

    def forward(self, node, widened, step):
        layout = widened[0]
        rank = layout.rank
        axes, keepdims, why = _AXES.get(node.op_type, _reduce_axes)(node, rank)
        if layout.axis in axes:
            raise block(node, why)
        if any(o is not None and o.uses() for o in node.outputs[1:]):
            raise block(node, "returns its statistics, which the analysis does not follow")
        if set(widened) != {0}:
            raise block(node, "reads the widened tensor as a parameter")
        if keepdims:
            return {0: layout}
        return {0: layout.moved(layout.axis - sum(a < layout.axis for a in axes), rank - len(axes))}


class BlockerRule(Rule):
    """GroupNormalization: statistics over groups of channels would take in the new units."""

    def forward(self, node, widened, step):
        raise block(node, "normalises over groups of channels and would mix the new units into the statistics")


class PowRule(Rule):
    """``Pow(x, n)`` with a constant integer exponent 1 ≤ n ≤ 4 (tanh-GELU's ``x³``, RMSNorm's
    ``x²`` on its own axis is refused by its ReduceMean): finite wherever the new unit is, so
    elementwise pass-through. Other exponents can give inf or NaN on a new unit (0⁻¹, (-1)^½),
    and 0·inf in the next layer is NaN."""

    def forward(self, node, widened, step):
        if set(widened) != {0}:
            raise block(node, "raises to the power of the widened tensor")
        exponent = pow_exponent(node)
        if exponent not in (1.0, 2.0, 3.0, 4.0):
            raise block(node, "raises the new units to a power other than a constant 1, 2, 3 or 4")
        return {0: widened[0]}

    def backward(self, node, axis):
        return [(node.inputs[0], axis)]
