"""Rules for the ops that move positions between axes or read shapes: Squeeze/Unsqueeze, Concat,
Split, Flatten, Reshape, Shape and what computes with a shape (Gather, Slice, Concat...).

A shape tensor computed from a widened tensor's `Shape` is followed as a `ShapeVector` (which
entries hold the widened size) until the size drops out of it, or until it reaches a Reshape
that reads it as the size of the axis it keeps (GPT-2's runtime-shape flatten); anything else
that computes with it is refused.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from surgery.analysis.common import block, int_list, rank_of, static_dims
from surgery.analysis.plan import Edit
from surgery.analysis.rules import Rule, Step, Widened
from surgery.graph import attribute, constant_array
from surgery.layout import Layout, ShapeVector
from surgery.ops import SHAPE_CARRIERS


class SqueezeRule(Rule):
    """Squeeze/Unsqueeze renumber the widened axis (squeezing it blocks); a shape vector passes
    between its 1-element and scalar forms."""

    def forward(self, node, widened, step):
        if set(widened) != {0}:
            raise block(node, "reads the widened tensor as its axes")
        layout = widened[0]
        listed = int_list(node, "axes", 1)
        if node.op_type == "Squeeze":
            if listed is None:
                dims = static_dims(node.inputs[0])
                if dims is None or any(d is None for d in dims):
                    raise block(node, "squeezes unknown axes")
                listed = [i for i, d in enumerate(dims) if d == 1]
            axes = sorted(a % layout.rank for a in listed)
            if layout.axis in axes:
                raise block(node, "squeezes the widened axis")
            return {0: layout.moved(layout.axis - sum(a < layout.axis for a in axes), layout.rank - len(axes))}
        out_rank = layout.rank + len(listed)
        inserted = sorted(a % out_rank for a in listed)
        kept = [i for i in range(out_rank) if i not in inserted]
        return {0: layout.moved(kept[layout.axis], out_rank)}

    def follow_shape(self, node, widened, shapes, step):
        if set(widened) == {0} and 0 in shapes and shapes[0].changed == frozenset({0}):
            return {0: shapes[0]}  # [n] <-> n: the one entry still holds the widened size
        return super().follow_shape(node, widened, shapes, step)


class ConcatRule(Rule):
    """Along the widened axis, new positions land at each input's offset; along another axis the
    inputs are joined position by position and must all be widened the same way. Shape vectors
    concatenate with constant entries (a Reshape's target built at run time)."""

    def forward(self, node, widened, step):
        reference = next(iter(widened.values()))
        rank = reference.rank
        axis = attribute(node, "axis", 0) % rank
        if axis != reference.axis:
            return self._position_by_position(node, widened)
        parts: list[Layout | int] = []
        for i, value in enumerate(node.inputs):
            if i in widened:
                if widened[i].axis != axis:
                    raise block(node, "concatenates tensors widened along different axes")
                parts.append(widened[i])
                continue
            dims = static_dims(value)
            if dims is None or dims[axis] is None:
                raise block(node, f"concatenates {value.name!r}, whose size along axis {axis} is unknown")
            parts.append(int(dims[axis]))
        return {0: Layout.concat(parts, axis, rank)}

    @staticmethod
    def _position_by_position(node: ir.Node, widened: Widened) -> dict:
        reference = next(iter(widened.values()))
        for i, value in enumerate(node.inputs):
            layout = widened.get(i)
            if layout is None:
                dims = static_dims(value)
                if dims is not None and dims[reference.axis] == 1 and reference.original_size != 1:
                    raise block(node, f"concatenates {value.name!r}, which does not grow along the widened axis")
                raise block(node, f"concatenates the widened tensor with {value.name!r}, which does not grow")
            if not layout.same_positions(reference) or layout.axis != reference.axis:
                raise block(node, "concatenates tensors whose new units sit at different positions")
        return {0: reference}

    def follow_shape(self, node, widened, shapes, step):
        if set(widened) != set(shapes):
            return super().follow_shape(node, widened, shapes, step)
        changed, offset = set(), 0
        for i, value in enumerate(node.inputs):
            dims = static_dims(value)
            if dims is None or len(dims) != 1 or dims[0] is None:
                raise block(node, "concatenates a shape of unknown length")
            changed |= {offset + j for j in shapes[i].changed} if i in shapes else set()
            offset += dims[0]
        return {0: ShapeVector(frozenset(changed))}


class SplitRule(Rule):
    """Split along another axis than the widened one: every output keeps the positions.

    Along the widened axis with constant sizes (input 1): each part keeps its old positions and
    the new ones that follow them (`Layout.part`; new units appended to a layer's output go to
    the last part), and the sizes constant is updated; a part that gets no new position does
    not change. Equal parts (no sizes, or ``num_outputs``) and sizes in an attribute are
    refused: the new units would move positions between parts.
    """

    def forward(self, node, widened, step):
        if set(widened) != {0}:
            raise block(node, "reads the widened tensor as its split sizes")
        layout = widened[0]
        if attribute(node, "axis", 0) % layout.rank != layout.axis:
            return {i: layout for i, out in enumerate(node.outputs) if out is not None}
        sizes = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if sizes is None:
            raise block(node, "splits the widened axis into parts of sizes the analysis cannot update")
        outputs, starts = {}, np.concatenate([[0], np.cumsum(sizes)])
        new_sizes = np.asarray(sizes).copy()
        for i, (start, stop) in enumerate(zip(starts[:-1], starts[1:])):
            part = layout.part(int(start), int(stop))
            if part.size != part.original_size:
                outputs[i] = part
                new_sizes.reshape(-1)[i] = part.size
        step.edits.append(Edit(node, 1, "literal", literal=new_sizes))
        return outputs


class FlattenRule(Rule):
    """Flatten merges the widened axis with its static neighbours (`Layout.ravel`)."""

    def forward(self, node, widened, step):
        layout = widened[0]
        rank = layout.rank
        split = attribute(node, "axis", 1) % (rank + 1) if rank else 0
        dims = static_dims(node.inputs[0])
        if dims is None:
            raise block(node, "flattens a tensor of unknown shape")
        first, last = (0, split) if layout.axis < split else (split, rank)
        before, after = dims[first : layout.axis], dims[layout.axis + 1 : last]
        if any(d is None for d in before + after):
            raise block(node, "flattens the widened axis together with dimensions of unknown size")
        out_axis = 0 if layout.axis < split else 1
        return {0: layout.ravel(math.prod(before), math.prod(after), out_axis, 2)}


def _entry_matches(entry: tuple, in_dims: list, j: int, i: int) -> bool:
    """Whether target entry `j` keeps input dim `i` as it is."""
    kind, value = entry[0], entry[1]
    if kind == "const":
        # -1 may stand for one unmerged dim: the merged entry's size is checked by the caller,
        # so the inferred size is that dim's.
        return (value in (0, -1) and j == i) or (in_dims[i] is not None and value == in_dims[i])
    source, index = value
    if index == 0 and i == 0 and j == 0:
        return True  # the batch dim, preserved by everything between Shape and Reshape
    source_dims = static_dims(source)
    return (
        source_dims is not None
        and index < len(source_dims)
        and source_dims[index] is not None
        and source_dims[index] == in_dims[i]
    )


class ReshapeRule(Rule):
    """Reshape that merges the widened axis with static neighbours (`Layout.ravel`; the constant
    merged size is updated), or keeps it last (``[B, S, D] <-> [B·S, D]``: a trailing constant
    equal to the old width is updated; a trailing entry that reads the widened size at run time,
    through `Shape` (GPT-2's Conv1D flatten), needs nothing). Splitting the widened axis is refused."""

    def forward(self, node, widened, step):
        if set(widened) != {0}:
            raise block(node, "reads the widened tensor's size as its target shape")
        return self._reshape(node, widened[0], step)

    def follow_shape(self, node, widened, shapes, step):
        layout, entries = widened.get(0), shape_entries(node, 1)
        if set(shapes) != {1} or not isinstance(layout, Layout) or entries is None:
            return super().follow_shape(node, widened, shapes, step)
        source, index = entries[-1][1] if entries[-1][0] == "dim" else (None, None)
        read = step.layouts.get(source) if source is not None else None
        if (
            shapes[1].changed != frozenset({len(entries) - 1})
            or layout.axis != layout.rank - 1
            or not isinstance(read, Layout)
            or read.axis != index
            or read.size != layout.size
        ):
            raise block(node, "reads the widened tensor's size as its target shape")
        return {0: layout.moved(len(entries) - 1, len(entries))}  # the last axis stays whole

    def backward(self, node, axis):
        """A last axis kept whole (same static size) grows with the input's last axis."""
        dims_in, dims_out = static_dims(node.inputs[0]), static_dims(node.outputs[0])
        if (
            not dims_in
            or not dims_out
            or axis != len(dims_out) - 1
            or dims_in[-1] is None
            or dims_in[-1] != dims_out[-1]
        ):
            return None
        return [(node.inputs[0], len(dims_in) - 1)]

    def _reshape(self, node: ir.Node, layout: Layout, step: Step) -> dict:
        in_dims = static_dims(node.inputs[0])
        entries = shape_entries(node, 1)
        if in_dims is None or entries is None:
            raise block(node, "has a target shape the analysis cannot read")
        if attribute(node, "allowzero", 0) and any(e[0] == "const" and e[1] == 0 for e in entries):
            raise block(node, "uses allowzero")
        a, old, out_rank = layout.axis, layout.original_size, len(entries)
        last = entries[-1]
        edits: list[tuple[int, int]] = []  # (entry, new value)
        if a == len(in_dims) - 1 and last[0] == "const" and last[1] == old:
            result = layout.moved(out_rank - 1, out_rank)
            edits.append((out_rank - 1, layout.size))
        else:
            p = 0
            while p < a and p < out_rank and _entry_matches(entries[p], in_dims, p, p):
                p += 1
            s = 0
            while (
                s < len(in_dims) - 1 - a
                and s < out_rank - p - 1
                and _entry_matches(entries[out_rank - 1 - s], in_dims, out_rank - 1 - s, len(in_dims) - 1 - s)
            ):
                s += 1
            middle_in = in_dims[p : len(in_dims) - s]
            if out_rank - s - p != 1:
                raise block(node, "splits or rearranges the widened axis in a way the analysis cannot follow")
            before, after = middle_in[: a - p], middle_in[a - p + 1 :]
            if any(d is None for d in before + after):
                raise block(node, "merges the widened axis with dimensions of unknown size")
            result = layout.ravel(math.prod(before), math.prod(after), p, out_rank)
            kind, value = entries[p][0], entries[p][1]
            if kind != "const":
                raise block(node, "takes the merged size from a shape the analysis cannot update")
            if value != -1:
                if value != math.prod(before) * old * math.prod(after):
                    raise block(node, f"has target size {value}, which does not match the merged dimensions")
                edits.append((p, result.size))
        for entry_index, new_size in edits:
            target_node, input_index, position = entries[entry_index][2]
            literal = constant_array(target_node.inputs[input_index]).copy()
            literal.reshape(-1)[position] = new_size
            step.edits.append(Edit(target_node, input_index, "literal", literal=literal, reader=node))
        return {0: result}


def shape_dims(node: ir.Node, rank: int) -> range:
    """The dims of its input's `rank` dims that a Shape node outputs (its start/end, clamped as ONNX does)."""
    start, end = attribute(node, "start", 0), attribute(node, "end", rank)
    start = max(start + rank, 0) if start < 0 else min(start, rank)
    end = max(end + rank, 0) if end < 0 else min(end, rank)
    return range(start, end)


class ShapeRule(Rule):
    """Shape of a widened tensor: a `ShapeVector` whose entry for the widened axis changes."""

    def forward(self, node, widened, step):
        layout = widened[0]
        dims = shape_dims(node, layout.rank)
        return {0: ShapeVector(frozenset({dims.index(layout.axis)}))} if layout.axis in dims else {}


class PickRule(Rule):
    """Gather/Slice with constant indices on a shape vector: follows the entries they pick; a
    scalar Gather of the widened size blocks (the analysis cannot update what it feeds)."""

    def follow_shape(self, node, widened, shapes, step):
        if set(widened) != {0} or 0 not in shapes:
            return super().follow_shape(node, widened, shapes, step)
        picked = picked_indices(node)
        if picked is None:
            raise block(node, "reads the widened tensor's shape with non-constant indices")
        changed = shapes[0].changed
        if node.op_type == "Gather" and picked.ndim == 0:
            if int(picked) in changed:
                raise block(node, "reads the widened size from the shape; the analysis cannot update it")
            return {}
        now = frozenset(j for j, k in enumerate(picked.reshape(-1)) if int(k) in changed)
        return {0: ShapeVector(now)} if now else {}


def _ints(node: ir.Node, attr: str, index: int) -> list[int] | None:
    return int_list(node, attr, index)


def picked_indices(node: ir.Node) -> np.ndarray | None:
    """Which entries of a 1-D shape tensor a Gather or Slice node picks (None when not constant)."""
    length = static_dims(node.inputs[0])
    if length is None or length[0] is None:
        return None
    if node.op_type == "Gather":
        indices = constant_array(node.inputs[1])
        return None if indices is None else np.asarray(indices) % length[0]
    starts, ends = _ints(node, "starts", 1), _ints(node, "ends", 2)
    steps = _ints(node, "steps", 4) if len(node.inputs) > 4 else None
    if starts is None or ends is None:
        return None
    return np.arange(length[0])[slice(starts[0], ends[0], steps[0] if steps else 1)]


def _concatenated(node: ir.Node) -> list[tuple] | None:
    parts = [shape_entries(node, i) for i in range(len(node.inputs))]
    return None if any(part is None for part in parts) else [entry for part in parts for entry in part]


def _read_from_shape(node: ir.Node) -> list[tuple] | None:
    rank = rank_of(node.inputs[0])
    return None if rank is None else [("dim", (node.inputs[0], i)) for i in shape_dims(node, rank)]


def _picked(node: ir.Node) -> list[tuple] | None:
    inner, picked = shape_entries(node, 0), picked_indices(node)
    return None if inner is None or picked is None else [inner[int(k)] for k in np.asarray(picked).reshape(-1)]


#: How each op that computes a shape tensor (`SHAPE_CARRIERS` and Shape) maps its entries.
_ENTRIES = {
    **dict.fromkeys(SHAPE_CARRIERS, lambda node: shape_entries(node, 0)),
    "Concat": _concatenated,
    "Gather": _picked,
    "Slice": _picked,
    "Shape": _read_from_shape,
}


def shape_entries(node: ir.Node, index: int) -> list[tuple] | None:
    """The target shape fed to `node.inputs[index]`, entry by entry: ("const", v, (node, input,
    position)) for entries taken from a constant (where an edit would go), ("dim", (tensor, i))
    for entries read from Shape(tensor). None when it is computed some other way."""
    value = node.inputs[index]
    array = constant_array(value)
    if array is not None:
        return [("const", int(v), (node, index, k)) for k, v in enumerate(np.asarray(array).reshape(-1))]
    producer = value.producer()
    reader = _ENTRIES.get(producer.op_type) if producer is not None else None
    return None if reader is None else reader(producer)
