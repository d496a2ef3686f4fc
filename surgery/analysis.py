"""Width analysis: everything a widening must change, worked out before anything is changed.

Growing a layer by K units adds K positions along one axis of its output tensor. The analysis
follows that tensor forward through `value.uses()` and classifies every node it meets, the way
Torch-Pruning's dependency graph groups coupled channels, applied to growth:

- **producers** — the requested layers (``Gemm`` with any transA/transB, ``MatMul`` with a
  constant rank-2 weight, ``Conv`` with group 1): new weight columns/filters ("fan-in") and new
  bias entries. The bias ``Add`` after a ``MatMul`` is an ordinary per-unit constant (below).
- **channel-wise pass-through** — the new positions flow through unchanged in kind:
  elementwise activations (Relu, LeakyRelu, Elu, Selu, Celu, Tanh, Sigmoid, HardSigmoid,
  HardSwish, Softplus, Softsign, Gelu, Erf, Clip, Mish, Neg, Abs, Sign), Identity, Dropout,
  Cast; ``BatchNormalization`` (new scale 1, bias 0, mean 0, var 1) and
  ``InstanceNormalization`` on the channel axis (scale 1, bias 0); elementwise
  ``Add/Sub/Mul/Div/Max/Min/Sum/Mean/PRelu`` with constants: a constant that broadcasts along
  the axis is left alone, one with a per-unit entry gets new entries (0 for Add/Sub/Max/Min/
  Sum/Mean, 1 for Mul/Div, 0.25 for a PRelu slope) — this covers the bias Add of MatMul layers,
  tf2onnx's folded BatchNormalization (Mul + Add) and PyTorch's Erf-GELU (Div/Erf/Add/Mul with
  scalar Constants); ``MaxPool``, ``AveragePool``, ``LpPool`` and the global pools on the
  channel axis; ``Transpose`` (the axis moves to ``perm.index(axis)``); ``Squeeze``/``Unsqueeze``;
  reductions, ``ArgMax``/``ArgMin``, ``Softmax`` and ``LayerNormalization`` over *other* axes;
  ``Flatten``/``Reshape`` that merge the widened axis with static neighbours (the new positions
  follow the flatten order: channel-major after an NCHW Conv, interleaved ``p·C' + c`` after
  tf2onnx's NHWC Transpose), including tf2onnx's dynamic-batch chain
  ``Shape → Gather/Slice → Cast → Concat → Reshape`` whose constant flattened size is updated;
  ``Concat`` along the axis (new positions land at each input's offset).
- **consumers** — ``MatMul`` (rows of its constant weight), ``Gemm`` (rows or columns of B
  depending on transA/transB), ``Conv`` with group 1 (input channels of its weight) receive new
  fan-out entries for the new positions; the widening stops there.
- **coupled joins** — an elementwise node joining the widened tensor with a non-constant tensor
  that does not broadcast along the axis: the other side must grow with it. Its producer is
  found by walking back through pass-through nodes; when that reaches a growable layer the layer
  joins the group (same number of new units, e.g. residual branches or SwiGLU's gate and up);
  a graph input, a constant of the wrong shape or anything else is refused.
- **blockers** — refused with one line naming the node, its op and why: normalisations over the
  widened axis (LayerNormalization, GroupNormalization, InstanceNormalization,
  MeanVarianceNormalization, LpNormalization), Softmax/LogSoftmax/Hardmax, Reduce* and
  ArgMax/ArgMin over it, division by the widened tensor, the widened tensor reaching a graph
  output (unless `allow_output_change`), a shape that reads the new size, and any op the analysis
  does not know — it never guesses.

Nothing here changes the model: `analyse` returns an immutable `WidenPlan` that
`surgery.rewrite` applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.graph import attribute, constant_array, constant_shape, is_constant
from surgery.layers import LayerSite, layer_sites, resolve_layer
from surgery.shapes import infer_missing_shapes  # the one shape inference (weight-less view); re-exported

#: Activations after which the default fan-in initializer is He (Keras: he_uniform) instead of Glorot.
RELU_LIKE = frozenset({"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "HardSwish", "Mish", "Silu"})

#: Elementwise single-input ops that keep every position where it is (input 0 carries the data;
#: Clip's min/max and Dropout's ratio are scalars). Log, Sqrt, Reciprocal, Exp and Pow are left
#: out on purpose: on a new unit they can give inf or NaN, and 0·inf in the next layer is NaN.
UNARY_PASS_THROUGH = frozenset(
    {
        "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish",
        "Softplus", "Softsign", "Gelu", "Erf", "Clip", "Mish", "Neg", "Abs", "Sign", "Identity",
        "Dropout", "Cast",
    }
)

#: Elementwise multi-input ops, and the value a per-unit constant operand gets for new units.
ELEMENTWISE_NEUTRAL = {
    "Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0, "Max": 0.0, "Min": 0.0, "Sum": 0.0,
    "Mean": 0.0, "PRelu": 0.25,
}

#: Ops that join tensors elementwise: a non-constant operand must grow along with the others.
COUPLING_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"})

POOLS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})

REDUCTIONS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    }
)

#: onnxruntime's CPU matrix multiply (MLAS SGEMM) sums the contracted dimension in blocks of
#: this many terms and adds the blocks' partial sums (measured on onnxruntime 1.31, x86-64; see
#: benchmarks/conv_alignment.py). Zero rows inserted *between* existing ones can move an
#: existing term into another block, which changes the rounding of the existing outputs.
SGEMM_K_BLOCK = 256

#: Above this many positions in one tracked tensor the analysis refuses (the new model would not
#: fit anywhere anyway); checked before the position arrays are allocated.
MAX_POSITIONS = 1 << 31


# --------------------------------------------------------------------------------------------
# Where the units sit along the widened axis of one tensor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Layout:
    """The positions along the widened axis of one tensor, old and new.

    Attributes:
        axis: the widened axis (non-negative) of a tensor of rank `rank`.
        original: for each position, its index in the unwidened tensor, or -1 for a new one.
        group: the widening group whose layer's unit the position holds (-1 for positions of
            an unwidened tensor, e.g. another Concat input).
        unit: the unit of that layer (0 … U+K-1; new units are U … U+K-1), else -1.
        base, stride: where old unit ``u`` of the group sits in the unwidened tensor at the same
            place: ``base + u * stride`` (stride 1 and the concat offset on a channel axis;
            ``H·W`` after a channel-major flatten; 1 with base ``p·C`` after an NHWC flatten).
            Net2Net uses it to find the position a new unit copies.
    """

    axis: int
    rank: int
    original: np.ndarray
    group: np.ndarray
    unit: np.ndarray
    base: np.ndarray
    stride: np.ndarray

    @staticmethod
    def seed(group: int, old: int, added: int, axis: int, rank: int) -> Layout:
        """A producer's output: `old` units, then `added` new ones of `group`."""
        size = old + added
        original = np.where(np.arange(size) < old, np.arange(size), -1)
        return Layout(
            axis, rank, original,
            np.full(size, group, dtype=np.int64),
            np.arange(size, dtype=np.int64),
            np.zeros(size, dtype=np.int64),
            np.ones(size, dtype=np.int64),
        )._frozen()

    def _frozen(self) -> Layout:
        for array in (self.original, self.group, self.unit, self.base, self.stride):
            array.flags.writeable = False
        return self

    @property
    def size(self) -> int:
        return int(self.original.shape[0])

    @property
    def original_size(self) -> int:
        return int(np.count_nonzero(self.original >= 0))

    @property
    def new_mask(self) -> np.ndarray:
        return self.original < 0

    def same_positions(self, other: Layout) -> bool:
        return all(
            np.array_equal(a, b)
            for a, b in zip(
                (self.original, self.group, self.unit, self.base, self.stride),
                (other.original, other.group, other.unit, other.base, other.stride),
            )
        )

    def groups(self) -> set[int]:
        return {int(g) for g in np.unique(self.group) if g >= 0}

    def moved(self, axis: int, rank: int) -> Layout:
        """The same positions on another axis (Transpose, Squeeze, broadcasting)."""
        return Layout(axis, rank, self.original, self.group, self.unit, self.base, self.stride)

    def ranges(self) -> list[list[int]]:
        """Half-open [start, stop) runs of new positions."""
        return mask_ranges(self.new_mask)

    def copy_of(self, sources: Mapping[int, np.ndarray]) -> np.ndarray:
        """For each position, the unwidened position it replicates (Net2Net): old positions
        replicate themselves, unit u of group g replicates old unit ``sources[g][u]`` (the
        identity on old units)."""
        result = self.original.copy()
        for g in self.groups():
            mask = (self.group == g) & self.new_mask
            result[mask] = self.base[mask] + sources[g][self.unit[mask]] * self.stride[mask]
        return result

    @staticmethod
    def concat(parts: Sequence[Layout | int], axis: int, rank: int) -> Layout:
        """Positions of a Concat along the widened axis; an int part is an unwidened input of that size."""
        arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("original", "group", "unit", "base", "stride")}
        offset = 0
        for part in parts:
            if isinstance(part, Layout):
                shifted = np.where(part.original >= 0, part.original + offset, -1)
                arrays["original"].append(shifted)
                arrays["group"].append(part.group)
                arrays["unit"].append(part.unit)
                arrays["base"].append(part.base + offset)
                arrays["stride"].append(part.stride)
                offset += part.original_size
            else:
                arrays["original"].append(np.arange(part) + offset)
                arrays["group"].append(np.full(part, -1))
                arrays["unit"].append(np.full(part, -1))
                arrays["base"].append(np.zeros(part, dtype=np.int64))
                arrays["stride"].append(np.ones(part, dtype=np.int64))
                offset += part
        return Layout(axis, rank, *(np.concatenate(arrays[k]).astype(np.int64) for k in arrays))._frozen()

    def ravel(self, before: int, after: int, axis: int, rank: int) -> Layout:
        """Positions after merging this axis with `before` leading and `after` trailing positions
        (row-major, as Flatten and Reshape do): the widened element ``e`` at leading index ``o``
        and trailing index ``i`` lands at ``(o·S' + e)·after + i``."""
        size = before * self.size * after
        if size > MAX_POSITIONS:
            raise SurgeryError(f"the widened tensor would have {size} positions after flattening; too large")
        old = self.original_size
        o = np.arange(before, dtype=np.int64)[:, None, None]
        e = np.arange(self.size)[None, :, None]
        i = np.arange(after, dtype=np.int64)[None, None, :]
        rest = o * old * after + i
        original = np.where(self.original[e] >= 0, rest + self.original[e] * after, -1)
        base = rest + self.base[e] * after
        stride = np.broadcast_to(self.stride[e] * after, original.shape)
        group = np.broadcast_to(self.group[e], original.shape)
        unit = np.broadcast_to(self.unit[e], original.shape)
        return Layout(
            axis, rank, *(np.ascontiguousarray(a).reshape(-1).astype(np.int64) for a in (original, group, unit, base, stride))
        )._frozen()


def mask_ranges(mask: np.ndarray) -> list[list[int]]:
    """Half-open [start, stop) runs where `mask` is True."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [[int(a), int(b)] for a, b in zip(edges[0::2], edges[1::2])]


@dataclass(frozen=True)
class _ShapeVector:
    """A shape tensor (output of Shape and what is computed from it) whose `changed` entries
    hold the widened size."""

    changed: frozenset[int]


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


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

    @property
    def value(self) -> ir.Value:
        return self.node.inputs[self.input_index]


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
    """

    groups: tuple[Group, ...]
    edits: tuple[Edit, ...]
    tensors: tuple[tuple[ir.Value, Layout], ...]
    channel_changes: tuple[ChannelChange, ...] = field(default=())
    row_shifts: tuple[RowShift, ...] = field(default=())

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


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------


class _Blocked(SurgeryError):
    pass


class _NeedsMember(Exception):
    """A join needs `value` to grow with group `group` (raised inside the walk, handled by `analyse`)."""

    def __init__(self, node: ir.Node, value: ir.Value, axis: int, group: int):
        super().__init__(node.name)
        self.node, self.value, self.axis, self.group = node, value, axis, group


class _MergeGroups(Exception):
    def __init__(self, node: ir.Node, groups: tuple[int, int]):
        super().__init__(node.name)
        self.node, self.groups = node, groups


def _describe(node: ir.Node) -> str:
    return f"{node.op_type} node {node.name or '<unnamed>'!r}"


def _block(node: ir.Node, why: str) -> _Blocked:
    return _Blocked(f"cannot widen: {_describe(node)} {why}")


def _static_dims(value: ir.Value) -> list[int | None] | None:
    """The value's dims (None for symbolic ones), or None when its rank is unknown."""
    shape = value.shape if value.const_value is None else value.const_value.shape
    if shape is None:
        const = constant_shape(value)
        return None if const is None else list(const)
    return [d if isinstance(d, int) else None for d in shape.dims]


def _rank(value: ir.Value) -> int | None:
    dims = _static_dims(value)
    return None if dims is None else len(dims)


def _int_list(node: ir.Node, attr: str, input_index: int) -> list[int] | None:
    """Axes-like ints from an attribute (older opsets) or a constant input (newer ones)."""
    if attr in node.attributes:
        return [int(v) for v in attribute(node, attr, [])]
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        array = constant_array(node.inputs[input_index])
        if array is None:
            raise _block(node, f"has a non-constant {attr!r} input; the analysis cannot tell which axes it uses")
        return [int(v) for v in np.asarray(array).reshape(-1)]
    return None


def _activation_after(value: ir.Value) -> str | None:
    """The activation a layer feeds, looking through its bias Add, Transposes and per-unit
    affine constants; Erf-GELU (Div by a constant, then Erf) reads as Gelu, x·Sigmoid(x) as Silu."""
    for _ in range(6):
        users = [use.node for use in value.uses()]
        ops = sorted(node.op_type for node in users)
        if ops == ["Div", "Mul"] or ops == ["Mul", "Sigmoid"]:
            for node in users:
                if node.op_type == "Div" and any(u.node.op_type == "Erf" for u in node.outputs[0].uses()):
                    return "Gelu"
                if node.op_type == "Sigmoid":
                    return "Silu"
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type in RELU_LIKE or node.op_type in {"Tanh", "Sigmoid", "Softmax", "Softplus", "HardSigmoid", "Softsign"}:
            return node.op_type
        others = [v for v in node.inputs if v is not value and v is not None]
        if node.op_type in ("Transpose", "Identity", "Cast", "BatchNormalization") or (
            node.op_type in ("Add", "Mul") and all(is_constant(v) for v in others)
        ):
            value = node.outputs[0]
            continue
        return None
    return None


def _member(site: LayerSite) -> Member:
    node = site.node
    if node.op_type == "Gemm":
        axes = (1, 0) if attribute(node, "transB", 0) else (0, 1)
        bias = 2 if len(node.inputs) > 2 and node.inputs[2] is not None else None
    elif node.op_type == "Conv":
        if attribute(node, "group", 1) != 1:
            raise _block(node, "is a grouped convolution; only group=1 convolutions can grow")
        axes = (1, 0)
        bias = 2 if len(node.inputs) > 2 and node.inputs[2] is not None else None
    else:
        axes, bias = (0, 1), None
    for index in (1, bias):
        if index is not None and not is_constant(node.inputs[index]):
            raise _block(node, f"has a non-constant input {node.inputs[index].name!r}; only constant weights can grow")
    return Member(site, axes, bias, _activation_after(node.outputs[0]))


def _output_axis_rank(member: Member) -> tuple[int, int]:
    node = member.node
    if node.op_type == "Gemm":
        return 1, 2
    if node.op_type == "Conv":
        rank = len(constant_shape(node.inputs[1]))
        return 1, rank
    rank = _rank(node.inputs[0])
    if rank is None:
        raise _block(node, "has an input of unknown rank; run shape inference first")
    rank = max(rank, 2)
    return rank - 1, rank


class _Walk:
    """One forward pass from the groups' producers: layouts of every reached tensor and the edits."""

    def __init__(self, groups: list[dict], allow_output_change: bool):
        self.groups = groups
        self.allow_output_change = allow_output_change
        self.layouts: dict[ir.Value, Layout | _ShapeVector] = {}
        self.edits: list[Edit] = []
        self.channel_changes: list[ChannelChange] = []
        self.row_shifts: list[RowShift] = []

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> None:
        seeds: list[ir.Value] = []
        for gid, group in enumerate(self.groups):
            for member in group["members"]:
                axis, rank = _output_axis_rank(member)
                output = member.node.outputs[0]
                self.layouts[output] = Layout.seed(gid, group["old"], group["added"], axis, rank)
                self._producer_edits(gid, member)
                self._check_output(member.node, output)
                seeds.append(output)
        for node in self._region(seeds):
            widened = {
                i: self.layouts[v] for i, v in enumerate(node.inputs) if v is not None and v in self.layouts
            }
            if not widened:
                continue
            outputs = self._rule(node, widened)
            for index, layout in outputs.items():
                value = node.outputs[index]
                if value in self.layouts:  # a producer's seed: its own widening wins
                    continue
                self.layouts[value] = layout
                self._check_output(node, value)  # a shape tensor's contents would change too

    def _region(self, seeds: list[ir.Value]) -> list[ir.Node]:
        """Nodes reachable from the seeds through uses, in topological order (reverse DFS postorder)."""
        visited: set[ir.Node] = set()
        postorder: list[ir.Node] = []
        for seed in seeds:
            stack = [(use.node, False) for use in reversed(list(seed.uses()))]
            while stack:
                node, done = stack.pop()
                if done:
                    postorder.append(node)
                    continue
                if node in visited:
                    continue
                visited.add(node)
                stack.append((node, True))
                for output in reversed(node.outputs):
                    for use in reversed(list(output.uses())):
                        if use.node not in visited:
                            stack.append((use.node, False))
        return postorder[::-1]

    def _check_output(self, node: ir.Node, value: ir.Value) -> None:
        if value.is_graph_output() and not self.allow_output_change:
            raise _Blocked(
                f"cannot widen: graph output {value.name!r} (from {_describe(node)}) would change shape; "
                "pass --allow-output-change to allow it"
            )

    # -- producers and consumers ----------------------------------------------------------
    def _producer_edits(self, gid: int, member: Member) -> None:
        node, layout = member.node, self.layouts[member.node.outputs[0]]
        in_axis, unit_axis = member.weight_axes
        self.edits.append(Edit(node, 1, "fan-in", unit_axis, layout, weight_axes=member.weight_axes, activation=member.activation))
        if member.bias_input is not None:
            bias_shape = constant_shape(node.inputs[member.bias_input])
            group = self.groups[gid]
            if node.op_type == "Conv":
                self.edits.append(Edit(node, member.bias_input, "bias", 0, layout))
            elif bias_shape and bias_shape[-1] == group["old"] and not (group["old"] == 1 and len(bias_shape) == 0):
                # Gemm's C broadcasts to [M, N]: only a last dim of N holds per-unit entries.
                self.edits.append(Edit(node, member.bias_input, "bias", len(bias_shape) - 1, layout))
        if node.op_type == "Conv":
            self.channel_changes.append(ChannelChange(node.name or "", "output", layout.original_size, layout.size))

    def _weight_consumer(self, node: ir.Node, index: int, layout: Layout, in_axis_needed: int, weight_input: int,
                         weight_axis: int, weight_axes: tuple[int, int]) -> dict:
        if index != 0:
            raise _block(node, f"reads the widened tensor as input {index}; only its data input can be widened")
        if layout.axis != in_axis_needed:
            raise _block(node, f"contracts axis {in_axis_needed}, but the tensor is widened along axis {layout.axis}")
        weight = node.inputs[weight_input]
        if not is_constant(weight):
            raise _block(node, f"has a non-constant weight {weight.name!r}; its fan-out cannot be extended")
        self.edits.append(Edit(node, weight_input, "fan-out", weight_axis, layout, weight_axes=weight_axes))
        if node.op_type in ("MatMul", "Gemm"):
            old = np.flatnonzero(layout.original >= 0)
            moved = int(np.count_nonzero(layout.original[old] // SGEMM_K_BLOCK != old // SGEMM_K_BLOCK))
            if moved:
                self.row_shifts.append(RowShift(node.name or "", layout.original_size, layout.size, moved))
        return {}

    def _matmul(self, node: ir.Node, widened: dict) -> dict:
        if 1 in widened:
            raise _block(node, "multiplies by the widened tensor as its right operand")
        layout = widened[0]
        weight_shape = constant_shape(node.inputs[1]) if is_constant(node.inputs[1]) else None
        if layout.axis != layout.rank - 1:
            if weight_shape is not None and len(weight_shape) == 2 and layout.rank >= 2:
                return {0: layout}  # rows are independent: the positions carry over
            raise _block(node, f"multiplies a tensor widened along a batch axis ({layout.axis})")
        if weight_shape is None or len(weight_shape) != 2:
            raise _block(node, "multiplies by a non-constant or batched right operand; its fan-out cannot be extended")
        return self._weight_consumer(node, 0, layout, layout.rank - 1, 1, 0, (0, 1))

    def _gemm(self, node: ir.Node, widened: dict) -> dict:
        if 1 in widened or 2 in widened:
            raise _block(node, "reads the widened tensor as its B or C operand")
        layout = widened[0]
        trans_a, trans_b = attribute(node, "transA", 0), attribute(node, "transB", 0)
        contracted = 0 if trans_a else 1
        weight_axes = (1, 0) if trans_b else (0, 1)
        return self._weight_consumer(node, 0, layout, contracted, 1, weight_axes[0], weight_axes)

    def _conv(self, node: ir.Node, widened: dict) -> dict:
        if attribute(node, "group", 1) != 1:
            raise _block(node, "is a grouped convolution; its input channels cannot grow")
        if set(widened) - {0}:
            raise _block(node, "reads the widened tensor as a weight or bias")
        layout = widened[0]
        self._weight_consumer(node, 0, layout, 1, 1, 1, (1, 0))
        self.channel_changes.append(ChannelChange(node.name or "", "input", layout.original_size, layout.size))
        return {}

    # -- pass-through ----------------------------------------------------------------------
    def _elementwise(self, node: ir.Node, widened: dict) -> dict:
        """Elementwise n-ary ops: broadcast operands stay, per-unit constants get new entries,
        non-constant operands must be widened the same way (a coupled join)."""
        ranks = []
        for i, value in enumerate(node.inputs):
            rank = widened[i].rank if i in widened else _rank(value)
            if rank is None:
                raise _block(node, f"joins the widened tensor with {value.name!r} of unknown shape")
            ranks.append(rank)
        out_rank = max(ranks)
        layouts = dict(widened)  # shape tensors never get here (see _rule)
        axes = {layout.axis + out_rank - layout.rank for layout in layouts.values()}
        if len(axes) != 1:
            raise _block(node, "joins tensors widened along different axes")
        axis = axes.pop()
        reference = next(iter(layouts.values()))
        for i, layout in layouts.items():
            if not layout.same_positions(reference):
                mine, theirs = layout.groups(), reference.groups()
                if len(mine) == 1 and len(theirs) == 1 and mine != theirs:
                    raise _MergeGroups(node, (theirs.pop(), mine.pop()))
                raise _block(node, "joins tensors whose new units sit at different positions")
        if node.op_type == "Div" and 1 in layouts:
            raise _block(node, "divides by the widened tensor (its new units may be zero)")
        for i, value in enumerate(node.inputs):
            if i in layouts or value is None:
                continue
            dims = _static_dims(value)
            offset = out_rank - len(dims)
            own_axis = axis - offset
            dim = dims[own_axis] if own_axis >= 0 else 1
            if dim == 1 and reference.original_size != 1 or own_axis < 0:
                continue  # broadcasts along the axis: new units see the same value as old ones
            if is_constant(value):
                if dim != reference.original_size:
                    raise _block(node, f"has constant {value.name!r} of size {dim} along the widened axis (expected {reference.original_size} or 1)")
                if dim == 1 and not self._is_layer_bias(node, layouts):
                    continue  # a width-1 constant that is not a layer's bias is a broadcast scalar
                self.edits.append(Edit(node, i, "neutral", own_axis, reference.moved(own_axis, len(dims)), neutral=ELEMENTWISE_NEUTRAL[node.op_type]))
                continue
            if node.op_type not in COUPLING_OPS:
                raise _block(node, f"reads non-constant {value.name!r} alongside the widened tensor")
            if dim is None or dim == reference.original_size:
                groups = reference.groups()
                if len(groups) != 1:
                    raise _block(node, "joins a tensor holding several widenings with one that would have to grow")
                raise _NeedsMember(node, value, own_axis, groups.pop())
            raise _block(node, f"joins the widened tensor with {value.name!r} of size {dim} along the widened axis")
        return {0: reference.moved(axis, out_rank)}

    @staticmethod
    def _is_layer_bias(node: ir.Node, layouts: dict) -> bool:
        """True for the per-unit bias Add right after a MatMul layer (its only use).

        With one unit, a bias of shape [1] reads like a broadcast scalar; it is a bias all the
        same, and its new entries must be 0, not copies of the old unit's bias.
        """
        if node.op_type != "Add":
            return False
        for index in layouts:
            producer = node.inputs[index].producer()
            if producer is not None and producer.op_type == "MatMul" and len(node.inputs[index].uses()) == 1:
                return is_constant(producer.inputs[1])
        return False

    def _rule(self, node: ir.Node, widened: dict) -> dict:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise _block(node, f"is from domain {node.domain!r}, which the width analysis does not know; refusing to guess")
        shape_inputs = {i: v for i, v in widened.items() if isinstance(v, _ShapeVector)}
        if shape_inputs:
            return self._shape_vector_rule(node, widened, shape_inputs)
        if op == "MatMul":
            return self._matmul(node, widened)
        if op == "Gemm":
            return self._gemm(node, widened)
        if op == "Conv":
            return self._conv(node, widened)
        if op in UNARY_PASS_THROUGH:
            if set(widened) != {0}:
                raise _block(node, "reads the widened tensor as a parameter")
            return {i: widened[0] for i, out in enumerate(node.outputs) if out is not None}
        if op in ELEMENTWISE_NEUTRAL:
            return self._elementwise(node, widened)
        if op == "BatchNormalization":
            return self._batch_norm(node, widened)
        if op == "InstanceNormalization":
            return self._per_channel_norm(node, widened, {1: 1.0, 2: 0.0})
        if op in POOLS:
            layout = widened[0]
            if layout.axis != 1:
                raise _block(node, f"pools along the widened axis {layout.axis}")
            if op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
                raise _block(node, "returns Indices, whose values depend on the channel count")
            return {0: layout}
        if op == "Transpose":
            layout = widened[0]
            perm = attribute(node, "perm", list(range(layout.rank))[::-1])
            return {0: layout.moved(list(perm).index(layout.axis), layout.rank)}
        if op == "Concat":
            return self._concat(node, widened)
        if op == "Flatten":
            return self._flatten(node, widened)
        if op == "Reshape":
            return self._reshape(node, widened)
        if op in ("Squeeze", "Unsqueeze"):
            return self._squeeze(node, widened)
        if op == "Shape":
            layout = widened[0]
            dims = _shape_dims(node, layout.rank)
            return {0: _ShapeVector(frozenset({dims.index(layout.axis)}))} if layout.axis in dims else {}
        if op in ("LayerNormalization", "LpNormalization", "MeanVarianceNormalization", "Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin") or op in REDUCTIONS:
            return self._over_axes(node, widened)
        if op == "GroupNormalization":
            raise _block(node, "normalises over groups of channels and would mix the new units into the statistics")
        raise _block(node, "is not an op the width analysis knows; refusing to guess")

    def _batch_norm(self, node: ir.Node, widened: dict) -> dict:
        if attribute(node, "training_mode", 0):
            raise _block(node, "runs in training mode")
        return self._per_channel_norm(node, widened, {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0})

    def _per_channel_norm(self, node: ir.Node, widened: dict, neutral: dict[int, float]) -> dict:
        layout = widened.get(0)
        if set(widened) != {0} or layout.axis != 1:
            what = "normalises over the widened axis" if layout is not None and layout.axis != 1 else "reads the widened tensor as a parameter"
            raise _block(node, what)
        for index, value in neutral.items():
            if not is_constant(node.inputs[index]):
                raise _block(node, f"has a non-constant parameter {node.inputs[index].name!r}")
            self.edits.append(Edit(node, index, "neutral", 0, layout.moved(0, 1), neutral=value))
        return {0: layout}

    def _over_axes(self, node: ir.Node, widened: dict) -> dict:
        """Ops that normalise or reduce over some axes: blocked when the widened axis is among them."""
        op, layout = node.op_type, widened[0]
        rank = layout.rank
        opset = node.version or (node.graph.opset_imports.get("", 0) if node.graph is not None else 0)
        keepdims = True
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            default = -1 if (opset == 0 or opset >= 13) else 1
            axis = attribute(node, "axis", default) % rank
            axes = [axis] if (opset == 0 or opset >= 13) else list(range(axis, rank))
            why = "is a softmax over the widened axis: new units would take probability mass"
        elif op == "LayerNormalization":
            axes = list(range(attribute(node, "axis", -1) % rank, rank))
            why = "normalises over the widened axis: new units would change the mean and variance"
        elif op == "LpNormalization":
            axes = [attribute(node, "axis", -1) % rank]
            why = "normalises over the widened axis"
        elif op == "MeanVarianceNormalization":
            axes = [a % rank for a in attribute(node, "axes", [0, 2, 3])]
            why = "normalises over the widened axis"
        elif op in ("ArgMax", "ArgMin"):
            axes = [attribute(node, "axis", 0) % rank]
            keepdims = bool(attribute(node, "keepdims", 1))
            why = "takes an arg-extremum over the widened axis: a new unit could win"
        else:
            listed = _int_list(node, "axes", 1)
            keepdims = bool(attribute(node, "keepdims", 1))
            if not listed:
                listed = [] if attribute(node, "noop_with_empty_axes", 0) else list(range(rank))
            axes = [a % rank for a in listed]
            why = "reduces over the widened axis: new units would enter the result"
        if layout.axis in axes:
            raise _block(node, why)
        if op in ("LayerNormalization",) and any(o is not None and o.uses() for o in node.outputs[1:]):
            raise _block(node, "returns its statistics, which the analysis does not follow")
        if op in ("LayerNormalization", "InstanceNormalization") and set(widened) != {0}:
            raise _block(node, "reads the widened tensor as a parameter")
        if keepdims:
            return {0: layout}
        return {0: layout.moved(layout.axis - sum(a < layout.axis for a in axes), rank - len(axes))}

    def _squeeze(self, node: ir.Node, widened: dict) -> dict:
        if set(widened) != {0}:
            raise _block(node, "reads the widened tensor as its axes")
        layout = widened[0]
        listed = _int_list(node, "axes", 1)
        if node.op_type == "Squeeze":
            if listed is None:
                dims = _static_dims(node.inputs[0])
                if dims is None or any(d is None for d in dims):
                    raise _block(node, "squeezes unknown axes")
                listed = [i for i, d in enumerate(dims) if d == 1]
            axes = sorted(a % layout.rank for a in listed)
            if layout.axis in axes:
                raise _block(node, "squeezes the widened axis")
            return {0: layout.moved(layout.axis - sum(a < layout.axis for a in axes), layout.rank - len(axes))}
        out_rank = layout.rank + len(listed)
        inserted = sorted(a % out_rank for a in listed)
        kept = [i for i in range(out_rank) if i not in inserted]
        return {0: layout.moved(kept[layout.axis], out_rank)}

    def _concat(self, node: ir.Node, widened: dict) -> dict:
        reference = next(iter(widened.values()))
        rank = reference.rank
        axis = attribute(node, "axis", 0) % rank
        if axis != reference.axis:
            # Concatenating along another axis joins the tensors position by position.
            return self._elementwise_concat(node, widened, axis)
        parts: list[Layout | int] = []
        for i, value in enumerate(node.inputs):
            if i in widened:
                if widened[i].axis != axis:
                    raise _block(node, "concatenates tensors widened along different axes")
                parts.append(widened[i])
                continue
            dims = _static_dims(value)
            if dims is None or dims[axis] is None:
                raise _block(node, f"concatenates {value.name!r}, whose size along axis {axis} is unknown")
            parts.append(int(dims[axis]))
        return {0: Layout.concat(parts, axis, rank)}

    def _elementwise_concat(self, node: ir.Node, widened: dict, concat_axis: int) -> dict:
        reference = next(iter(widened.values()))
        for i, value in enumerate(node.inputs):
            layout = widened.get(i)
            if layout is None:
                dims = _static_dims(value)
                if dims is not None and dims[reference.axis] == 1 and reference.original_size != 1:
                    raise _block(node, f"concatenates {value.name!r}, which does not grow along the widened axis")
                raise _block(node, f"concatenates the widened tensor with {value.name!r}, which does not grow")
            if not layout.same_positions(reference) or layout.axis != reference.axis:
                raise _block(node, "concatenates tensors whose new units sit at different positions")
        return {0: reference}

    def _flatten(self, node: ir.Node, widened: dict) -> dict:
        layout = widened[0]
        rank = layout.rank
        split = attribute(node, "axis", 1) % (rank + 1) if rank else 0
        dims = _static_dims(node.inputs[0])
        if dims is None:
            raise _block(node, "flattens a tensor of unknown shape")
        first, last = (0, split) if layout.axis < split else (split, rank)
        before, after = dims[first:layout.axis], dims[layout.axis + 1 : last]
        if any(d is None for d in before + after):
            raise _block(node, "flattens the widened axis together with dimensions of unknown size")
        out_axis = 0 if layout.axis < split else 1
        return {0: layout.ravel(math.prod(before), math.prod(after), out_axis, 2)}

    def _reshape(self, node: ir.Node, widened: dict) -> dict:
        if set(widened) != {0}:
            raise _block(node, "reads the widened tensor's size as its target shape")
        layout = widened[0]
        in_dims = _static_dims(node.inputs[0])
        entries = _shape_entries(node, 1)
        if in_dims is None or entries is None:
            raise _block(node, "has a target shape the analysis cannot read")
        if attribute(node, "allowzero", 0) and any(e[0] == "const" and e[1] == 0 for e in entries):
            raise _block(node, "uses allowzero")
        a, old = layout.axis, layout.original_size

        def matches(j: int, i: int) -> bool:
            kind, value = entries[j][0], entries[j][1]
            if kind == "const":
                # -1 may stand for one unmerged dim: the merged entry's size is checked below,
                # so the inferred size is that dim's.
                return (value in (0, -1) and j == i) or (in_dims[i] is not None and value == in_dims[i])
            source, index = value
            if index == 0 and i == 0 and j == 0:
                return True  # the batch dim, preserved by everything between Shape and Reshape
            source_dims = _static_dims(source)
            return source_dims is not None and index < len(source_dims) and source_dims[index] is not None and source_dims[index] == in_dims[i]

        out_rank = len(entries)
        edits: list[tuple[int, int]] = []  # (entry, new value)
        if a == len(in_dims) - 1 and entries[-1][0] == "const" and entries[-1][1] == old:
            # The widened axis stays last (e.g. [B, S, D] <-> [B·S, D]): a trailing dim equal to
            # the old width keeps the same row-major positions; only that entry changes.
            result = layout.moved(out_rank - 1, out_rank)
            edits.append((out_rank - 1, layout.size))
        else:
            p = 0
            while p < a and p < out_rank and matches(p, p):
                p += 1
            s = 0
            while s < len(in_dims) - 1 - a and s < out_rank - p - 1 and matches(out_rank - 1 - s, len(in_dims) - 1 - s):
                s += 1
            middle_in = in_dims[p : len(in_dims) - s]
            if out_rank - s - p != 1:
                raise _block(node, "splits or rearranges the widened axis in a way the analysis cannot follow")
            before, after = middle_in[: a - p], middle_in[a - p + 1 :]
            if any(d is None for d in before + after):
                raise _block(node, "merges the widened axis with dimensions of unknown size")
            result = layout.ravel(math.prod(before), math.prod(after), p, out_rank)
            kind, value = entries[p][0], entries[p][1]
            if kind != "const":
                raise _block(node, "takes the merged size from a shape the analysis cannot update")
            if value != -1:
                if value != math.prod(before) * old * math.prod(after):
                    raise _block(node, f"has target size {value}, which does not match the merged dimensions")
                edits.append((p, result.size))
        for entry_index, new_size in edits:
            target_node, input_index, position = entries[entry_index][2]
            literal = constant_array(target_node.inputs[input_index]).copy()
            literal.reshape(-1)[position] = new_size
            self.edits.append(Edit(target_node, input_index, "literal", literal=literal))
        return {0: result}

    def _shape_vector_rule(self, node: ir.Node, widened: dict, shape_inputs: dict) -> dict:
        """Follow a shape tensor that holds the widened size until the size drops out of it."""
        op = node.op_type
        if len(widened) != 1 or 0 not in shape_inputs:
            raise _block(node, "computes with the widened tensor's shape")
        changed = shape_inputs[0].changed
        if op in ("Cast", "Identity"):
            return {0: shape_inputs[0]}
        if op in ("Gather", "Slice"):
            picked = _picked_indices(node)
            if picked is None:
                raise _block(node, "reads the widened tensor's shape with non-constant indices")
            if op == "Gather" and picked.ndim == 0:
                if int(picked) in changed:
                    raise _block(node, "reads the widened size from the shape; the analysis cannot update it")
                return {}
            now = frozenset(j for j, k in enumerate(picked.reshape(-1)) if int(k) in changed)
            return {0: _ShapeVector(now)} if now else {}
        raise _block(node, "computes with the widened tensor's shape")


def _shape_dims(node: ir.Node, rank: int) -> range:
    """The dims of its input's `rank` dims that a Shape node outputs (its start/end, clamped as ONNX does)."""
    start, end = attribute(node, "start", 0), attribute(node, "end", rank)
    start = max(start + rank, 0) if start < 0 else min(start, rank)
    end = max(end + rank, 0) if end < 0 else min(end, rank)
    return range(start, end)


def _picked_indices(node: ir.Node) -> np.ndarray | None:
    """Which entries of a 1-D shape tensor a Gather or Slice node picks (None when not constant)."""
    source = node.inputs[0]
    length = _static_dims(source)
    if node.op_type == "Gather":
        indices = constant_array(node.inputs[1])
        if indices is None or length is None or length[0] is None:
            return None
        return np.asarray(indices) % length[0]
    if length is None or length[0] is None:
        return None
    starts = _int_list(node, "starts", 1)
    ends = _int_list(node, "ends", 2)
    steps = _int_list(node, "steps", 4) if len(node.inputs) > 4 else None
    if starts is None or ends is None:
        return None
    step = steps[0] if steps else 1
    return np.arange(length[0])[slice(starts[0], ends[0], step)]


def _shape_entries(node: ir.Node, index: int) -> list[tuple] | None:
    """The target shape fed to `node.inputs[index]`, entry by entry: ("const", v, (node, input,
    position)) for entries taken from a constant (where an edit would go), ("dim", (tensor, i))
    for entries read from Shape(tensor). None when it is computed some other way."""
    value = node.inputs[index]
    array = constant_array(value)
    if array is not None:
        return [("const", int(v), (node, index, k)) for k, v in enumerate(np.asarray(array).reshape(-1))]
    producer = value.producer()
    if producer is None:
        return None
    op = producer.op_type
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
        return _shape_entries(producer, 0)
    if op == "Concat":
        entries: list[tuple] = []
        for i in range(len(producer.inputs)):
            part = _shape_entries(producer, i)
            if part is None:
                return None
            entries.extend(part)
        return entries
    if op == "Shape":
        source = producer.inputs[0]
        rank = _rank(source)
        if rank is None:
            return None
        return [("dim", (source, i)) for i in _shape_dims(producer, rank)]
    if op in ("Gather", "Slice"):
        inner = _shape_entries(producer, 0)
        picked = _picked_indices(producer)
        if inner is None or picked is None:
            return None
        return [inner[int(k)] for k in np.asarray(picked).reshape(-1)]
    return None


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _backtrace(value: ir.Value, axis: int, sites: dict[ir.Node, LayerSite], join: ir.Node) -> list[LayerSite]:
    """The growable layers that `value` comes from through pass-through nodes, or a refusal
    naming the join and what stands in the way."""
    producer = value.producer()
    if producer is None:
        what = f"graph input {value.name!r}" if value.is_graph_input() else f"{value.name!r}"
        raise _block(join, f"joins the widened tensor with {what}, which cannot grow")
    if is_constant(value):
        raise _block(join, f"joins the widened tensor with constant {value.name!r}, which cannot grow")
    site = sites.get(producer)
    if site is not None and producer.outputs[0] is value:
        member = _member(site)
        if _output_axis_rank(member)[0] == axis:
            return [site]
    op = producer.op_type
    if op in UNARY_PASS_THROUGH or op in ("BatchNormalization", "InstanceNormalization") or op in POOLS:
        return _backtrace(producer.inputs[0], axis, sites, join)
    if op == "Transpose":
        rank = _rank(producer.inputs[0]) or _rank(value)
        perm = attribute(producer, "perm", list(range(rank or 0))[::-1])
        return _backtrace(producer.inputs[0], list(perm)[axis], sites, join)
    if op in ELEMENTWISE_NEUTRAL:
        out_rank = _rank(value)
        found: list[LayerSite] = []
        for operand in producer.inputs:
            dims = _static_dims(operand)
            if operand is None or dims is None or out_rank is None:
                continue
            own = axis - (out_rank - len(dims))
            if own < 0 or dims[own] == 1 or is_constant(operand):
                continue
            found.extend(_backtrace(operand, own, sites, join))
        if found:
            return found
    raise _block(
        join, f"joins the widened tensor with {value.name!r} from {_describe(producer)}, which cannot grow with it"
    )


def _parse_plan(model: ir.Model, plan: Mapping[str, int]) -> list[tuple[LayerSite, int, str]]:
    if not plan:
        raise SurgeryError("nothing to widen: give at least one layer and a number of new units")
    requested: list[tuple[LayerSite, int, str]] = []
    seen: dict[ir.Node, str] = {}
    sites = layer_sites(model)  # once: a plan naming every block stays linear in the graph's size
    for name, added in plan.items():
        if isinstance(added, bool) or not isinstance(added, (int, np.integer)):
            raise SurgeryError(f"{name}: the number of new units must be an integer, got {added!r}")
        if added <= 0:
            raise SurgeryError(f"{name}: the number of new units must be at least 1, got {added}")
        site = resolve_layer(model, name, sites)
        if site.node in seen:
            raise SurgeryError(f"layer {name!r} is requested twice (also as {seen[site.node]!r})")
        seen[site.node] = name
        requested.append((site, int(added), name))
    return requested


def analyse(model: ir.Model, plan: Mapping[str, int], *, allow_output_change: bool = False,
            align: int | None = None) -> WidenPlan:
    """Work out everything that `plan` (layer name → new units) changes, without changing it.

    Args:
        model: the model (only read).
        plan: layer node name or friendly name → number of new units (≥ 1).
        allow_output_change: let a widened tensor reach a graph output (its shape changes).
        align: round every new width up to a multiple of `align`.

    Returns:
        The `WidenPlan`: coupled groups, every parameter edit, every tensor that grows.

    Raises:
        SurgeryError: a bad request or a blocker, one line naming the node, its op and why.

    Example:
        >>> plan = analyse(model, {"dense_1": 4})
        >>> [(g.old_width, g.new_width) for g in plan.groups]
        [(16, 20)]
    """
    if align is not None and align < 1:
        raise SurgeryError(f"--align must be at least 1, got {align}")
    return _analyse(model, _parse_plan(model, plan), allow_output_change, align)


def trace_units(model: ir.Model, layer: str) -> WidenPlan:
    """Where each unit of `layer` goes, as a widening by zero units would see it: its coupled
    layers, every weight that reads it and every per-unit constant on the way (graph outputs
    allowed). Used by `surgery.symmetry`; raises SurgeryError at a blocker."""
    return _analyse(model, [(resolve_layer(model, layer), 0, layer)], True, None)


def _analyse(model: ir.Model, requested: list[tuple[LayerSite, int, str]], allow_output_change: bool,
             align: int | None) -> WidenPlan:
    sites = {site.node: site for site in layer_sites(model)}
    groups: list[dict] = []
    for site, added, name in requested:
        member = _member(site)
        old = site.layer.width
        if align:
            added = -(-(old + added) // align) * align - old
        groups.append({"members": [member], "old": old, "added": added, "requested": [name]})
    for _ in range(len(sites) + len(groups) + 1):
        walk = _Walk(groups, allow_output_change)
        try:
            walk.run()
        except _NeedsMember as need:
            new_sites = _backtrace(need.value, need.axis, sites, need.node)
            group = groups[need.group]
            for site in new_sites:
                owner = next((g for g in groups if any(m.node is site.node for m in g["members"])), None)
                if owner is group:
                    continue
                if owner is not None:
                    _merge(groups, group, owner, need.node)
                    continue
                if site.layer.width != group["old"]:
                    raise _block(need.node, f"joins layers of different widths ({group['old']} and {site.layer.width})")
                group["members"].append(_member(site))
            continue
        except _MergeGroups as merge:
            _merge(groups, groups[merge.groups[0]], groups[merge.groups[1]], merge.node)
            continue
        return _finish(groups, walk)
    raise SurgeryError("the width analysis did not settle; the graph's joins are too tangled")


def _merge(groups: list[dict], keep: dict, other: dict, node: ir.Node) -> None:
    if keep["added"] != other["added"] or keep["old"] != other["old"]:
        names = ", ".join(keep["requested"] + other["requested"])
        raise _block(node, f"couples layers {names}; they must grow together by the same number of units")
    keep["members"].extend(other["members"])
    keep["requested"].extend(other["requested"])
    groups.remove(other)


def _finish(groups: list[dict], walk: _Walk) -> WidenPlan:
    frozen = tuple(
        Group(i, g["old"], g["added"], tuple(g["members"]), tuple(g["requested"])) for i, g in enumerate(groups)
    )
    tensors = tuple((v, l) for v, l in walk.layouts.items() if isinstance(l, Layout))
    return WidenPlan(frozen, tuple(walk.edits), tensors, tuple(walk.channel_changes), tuple(walk.row_shifts))


__all__ = ["Layout", "Member", "Group", "Edit", "ChannelChange", "RowShift", "SGEMM_K_BLOCK", "WidenPlan", "analyse", "trace_units", "infer_missing_shapes", "mask_ranges", "RELU_LIKE"]
