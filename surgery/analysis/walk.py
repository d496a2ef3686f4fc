"""The walk: one forward pass from the groups' layers over the nodes they reach, in graph order,
applying each node's rule (`RULES`, looked up through the op catalogue).

Couplings found on the way are settled in place: when a join needs its other side to grow, the
layers that side comes from (`backtrace`) join the group and are seeded, their region is walked
(it comes earlier in graph order, so the queue takes it first) and the join is applied again;
when a join meets two groups they merge (the other group's ids are relabelled). Only when a
node already applied would read a newly widened tensor (a Concat whose other input turns out to
grow) is the pass started over with the groups found so far.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import onnx_ir as ir

from surgery.analysis.common import Blocked, MergeGroups, NeedsMember, block, describe, rank_of
from surgery.analysis.plan import ChannelChange, Edit, Group, Member, WidenPlan
from surgery.analysis.reshape import (
    ConcatRule,
    FlattenRule,
    PickRule,
    ReshapeRule,
    ShapeRule,
    SplitRule,
    SqueezeRule,
)
from surgery.analysis.rules import (
    BlockerRule,
    ChannelNormRule,
    ConvRule,
    ElementwiseRule,
    GemmRule,
    MatMulRule,
    OverAxesRule,
    PoolRule,
    PowRule,
    Rule,
    Step,
    TransposeRule,
    UnaryRule,
)
from surgery.errors import SurgeryError
from surgery.graph import attribute, constant_shape, is_constant, reachable
from surgery.layers import LayerSite
from surgery.layout import Layout, ShapeVector
from surgery.ops import CATALOGUE, activation_after

#: The rule of each op kind of the catalogue (`surgery.ops`).
RULES: dict[str, Rule] = {
    "matmul": MatMulRule(),
    "gemm": GemmRule(),
    "conv": ConvRule(),
    "unary": UnaryRule(),
    "elementwise": ElementwiseRule(),
    "channel-norm": ChannelNormRule(),
    "pool": PoolRule(),
    "over-axes": OverAxesRule(),
    "blocker": BlockerRule(),
    "pow": PowRule(),
    "transpose": TransposeRule(),
    "squeeze": SqueezeRule(),
    "concat": ConcatRule(),
    "split": SplitRule(),
    "flatten": FlattenRule(),
    "reshape": ReshapeRule(),
    "shape": ShapeRule(),
    "pick": PickRule(),
}
_UNKNOWN = Rule()


def rule_for(node: ir.Node) -> Rule:
    """The rule of `node`'s op (an unknown op's rule refuses to guess)."""
    entry = CATALOGUE.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    return _UNKNOWN if entry is None else RULES[entry.kind]


def make_member(site: LayerSite) -> Member:
    """A layer as a group member: which weight axes hold its units, its bias, its activation."""
    node = site.node
    bias = 2 if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if node.op_type == "Gemm":
        axes = (1, 0) if attribute(node, "transB", 0) else (0, 1)
    elif node.op_type == "Conv":
        if attribute(node, "group", 1) != 1:
            raise block(node, "is a grouped convolution; only group=1 convolutions can grow")
        axes = (1, 0)
    else:
        axes, bias = (0, 1), None
    for index in (1, bias):
        if index is not None and not is_constant(node.inputs[index]):
            raise block(node, f"has a non-constant input {node.inputs[index].name!r}; only constant weights can grow")
    return Member(site, axes, bias, activation_after(node.outputs[0]))


def output_axis_rank(member: Member) -> tuple[int, int]:
    """The axis of the member's output that holds its units, and the output's rank."""
    node = member.node
    if node.op_type == "Gemm":
        return 1, 2
    if node.op_type == "Conv":
        return 1, len(constant_shape(node.inputs[1]))
    rank = rank_of(node.inputs[0])
    if rank is None:
        raise block(node, "has an input of unknown rank; run shape inference first")
    rank = max(rank, 2)
    return rank - 1, rank


def backtrace(value: ir.Value, axis: int, sites: dict[ir.Node, LayerSite], join: ir.Node) -> list[LayerSite]:
    """The growable layers that `value` comes from through nodes whose rule passes growth back
    (`Rule.backward`), or a refusal naming the join and what stands in the way."""
    producer = value.producer()
    if producer is None:
        what = f"graph input {value.name!r}" if value.is_graph_input() else f"{value.name!r}"
        raise block(join, f"joins the widened tensor with {what}, which cannot grow")
    if is_constant(value):
        raise block(join, f"joins the widened tensor with constant {value.name!r}, which cannot grow")
    site = sites.get(producer)
    if site is not None and producer.outputs[0] is value and output_axis_rank(make_member(site))[0] == axis:
        return [site]
    paths = rule_for(producer).backward(producer, axis)
    found = [s for v, a in paths or () for s in backtrace(v, a, sites, join)]
    if found:
        return found
    raise block(
        join, f"joins the widened tensor with {value.name!r} from {describe(producer)}, which cannot grow with it"
    )


@dataclass
class GroupBuilder:
    """A group while the walk runs (frozen into a `Group` at the end)."""

    members: list[Member]
    old: int
    added: int
    requested: list[str]
    merged: bool = False


class _Restart(Exception):
    """A node already applied reads a newly widened tensor (see the module docstring)."""


@dataclass
class Walk:
    """One pass; `groups` grow and merge in place while it runs."""

    graph: ir.Graph
    groups: list[GroupBuilder]
    sites: dict[ir.Node, LayerSite]
    allow_output_change: bool
    layouts: dict[ir.Value, Layout | ShapeVector] = field(default_factory=dict)
    steps: dict[ir.Node, Step] = field(default_factory=dict)  # what each node's rule recorded
    seeds: dict[ir.Node, Step] = field(default_factory=dict)  # each member's own edits

    def run(self) -> None:
        self.order = {node: i for i, node in enumerate(self.graph)}
        self.queue: list[tuple[int, ir.Node]] = []
        for gid, group in enumerate(self.groups):
            for member in group.members:
                self._seed(gid, member)
        while self.queue:
            _, node = heapq.heappop(self.queue)
            if node in self.steps:
                continue
            widened = {i: self.layouts[v] for i, v in enumerate(node.inputs) if v is not None and v in self.layouts}
            try:
                outputs, step = self._apply(node, widened)
            except NeedsMember as need:
                self._grow(need)
                self._push(node)
                continue
            except MergeGroups as merge:
                self._merge(merge.keep, merge.other, merge.node)
                self._push(node)
                continue
            self.steps[node] = step
            for index, layout in outputs.items():
                value = node.outputs[index]
                if value in self.layouts:  # a producer's seed: its own widening wins
                    continue
                self._set(node, value, layout)

    def _apply(self, node: ir.Node, widened: dict) -> tuple[dict, Step]:
        if node.domain not in ("", "ai.onnx"):
            raise block(
                node, f"is from domain {node.domain!r}, which the width analysis does not know; refusing to guess"
            )
        step = Step(self.layouts)
        shapes = {i: v for i, v in widened.items() if isinstance(v, ShapeVector)}
        rule = rule_for(node)
        outputs = rule.follow_shape(node, widened, shapes, step) if shapes else rule.forward(node, widened, step)
        return outputs, step

    def _push(self, node: ir.Node) -> None:
        if node not in self.order:
            raise block(node, "reads the widened tensor inside a subgraph; the width analysis does not follow it there")
        heapq.heappush(self.queue, (self.order[node], node))

    def _set(self, node: ir.Node, value: ir.Value, layout: Layout | ShapeVector) -> None:
        self.layouts[value] = layout
        self._check_output(node, value)  # a shape tensor's contents would change too
        for use in value.uses():
            if use.node in self.steps:
                raise _Restart
            self._push(use.node)

    def _check_output(self, node: ir.Node, value: ir.Value) -> None:
        if value.is_graph_output() and not self.allow_output_change:
            raise Blocked(
                f"cannot widen: graph output {value.name!r} (from {describe(node)}) would change shape; "
                "pass {param} to allow it",
                param="allow_output_change",
            )

    def _seed(self, gid: int, member: Member) -> None:
        """A member's output gets its group's layout; its weight and bias get new units."""
        group, node = self.groups[gid], member.node
        axis, rank = output_axis_rank(member)
        output = node.outputs[0]
        if output in self.layouts:
            raise _Restart
        layout = Layout.seed(gid, group.old, group.added, axis, rank)
        step = Step(self.layouts)
        step.edits.append(
            Edit(
                node,
                1,
                "fan-in",
                member.weight_axes[1],
                layout,
                weight_axes=member.weight_axes,
                activation=member.activation,
            )
        )
        if member.bias_input is not None:
            bias_shape = constant_shape(node.inputs[member.bias_input])
            if node.op_type == "Conv":
                step.edits.append(Edit(node, member.bias_input, "bias", 0, layout))
            elif bias_shape and bias_shape[-1] == group.old and not (group.old == 1 and len(bias_shape) == 0):
                # Gemm's C broadcasts to [M, N]: only a last dim of N holds per-unit entries.
                step.edits.append(Edit(node, member.bias_input, "bias", len(bias_shape) - 1, layout))
        if node.op_type == "Conv":
            step.channel_changes.append(ChannelChange(node.name or "", "output", layout.original_size, layout.size))
        self.seeds[node] = step
        self._set(node, output, layout)

    def _owner(self, node: ir.Node) -> int | None:
        return next(
            (gid for gid, g in enumerate(self.groups) if not g.merged and any(m.node is node for m in g.members)), None
        )

    def _grow(self, need: NeedsMember) -> None:
        """The join's other side comes from these layers: they join the group (or their group merges)."""
        group = self.groups[need.group]
        for site in backtrace(need.value, need.axis, self.sites, need.node):
            owner = self._owner(site.node)
            if owner == need.group:
                continue
            if owner is not None:
                self._merge(need.group, owner, need.node)
                continue
            if site.layer.width != group.old:
                raise block(need.node, f"joins layers of different widths ({group.old} and {site.layer.width})")
            member = make_member(site)
            group.members.append(member)
            self._seed(need.group, member)

    def _merge(self, keep: int, other: int, node: ir.Node) -> None:
        a, b = self.groups[keep], self.groups[other]
        if a.added != b.added or a.old != b.old:
            names = ", ".join(a.requested + b.requested)
            raise block(node, f"couples layers {names}; they must grow together by the same number of units")
        a.members.extend(b.members)
        a.requested.extend(b.requested)
        b.merged = True
        self._relabel({other: keep})

    def _relabel(self, mapping: dict[int, int]) -> None:
        for value, layout in self.layouts.items():
            if isinstance(layout, Layout):
                self.layouts[value] = layout.relabeled(mapping)
        for step in [*self.seeds.values(), *self.steps.values()]:
            step.edits[:] = [edit.relabeled(mapping) for edit in step.edits]

    def plan(self) -> WidenPlan:
        """The plan, in a deterministic order: the groups as requested, the members' own edits,
        then every node's in the order a depth-first walk from the members reaches them."""
        alive = [gid for gid, g in enumerate(self.groups) if not g.merged]
        mapping = {gid: new for new, gid in enumerate(alive) if gid != new}
        if mapping:
            self._relabel(mapping)
        groups = tuple(
            Group(
                i,
                self.groups[gid].old,
                self.groups[gid].added,
                tuple(self.groups[gid].members),
                tuple(self.groups[gid].requested),
            )
            for i, gid in enumerate(alive)
        )
        members = [m.node for g in groups for m in g.members]
        region = [n for n in reachable([n.outputs[0] for n in members]) if n in self.steps]
        steps = [self.seeds[n] for n in members] + [self.steps[n] for n in region]
        tensors = {n.outputs[0]: self.layouts[n.outputs[0]] for n in members}
        for node in region:
            for out in node.outputs:
                if isinstance(self.layouts.get(out), Layout):
                    tensors.setdefault(out, self.layouts[out])
        return WidenPlan(
            groups,
            tuple(e for s in steps for e in s.edits),
            tuple(tensors.items()),
            tuple(c for s in steps for c in s.channel_changes),
            tuple(r for s in steps for r in s.row_shifts),
            tuple(a for s in steps for a in s.attributes),
        )


def find_plan(
    graph: ir.Graph, groups: list[GroupBuilder], sites: dict[ir.Node, LayerSite], allow_output_change: bool
) -> WidenPlan:
    """Run the walk (see the module docstring) and return the plan."""
    for _ in range(len(sites) + len(groups) + 1):
        state = Walk(graph, groups, sites, allow_output_change)
        try:
            state.run()
        except _Restart:
            groups = [g for g in groups if not g.merged]
            continue
        return state.plan()
    raise SurgeryError("the width analysis did not settle; the graph's joins are too tangled")
