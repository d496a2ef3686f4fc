"""Helpers every rule of the width analysis uses: refusals and reading shapes and constant ints."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.graph import attribute, constant_array, constant_shape


class Blocked(SurgeryError):
    """A node that stops the widening (the message names it, its op and why)."""


class NeedsMember(Exception):
    """A join needs `value` to grow with group `group` along `axis` (raised by a rule; the walk
    finds the layers it comes from, adds them to the group and runs the join again)."""

    def __init__(self, node: ir.Node, value: ir.Value, axis: int, group: int):
        super().__init__(node.name)
        self.node, self.value, self.axis, self.group = node, value, axis, group


class MergeGroups(Exception):
    """A join meets two groups: they must grow together (the walk merges them and runs it again)."""

    def __init__(self, node: ir.Node, keep: int, other: int):
        super().__init__(node.name)
        self.node, self.keep, self.other = node, keep, other


def describe(node: ir.Node) -> str:
    return f"{node.op_type} node {node.name or '<unnamed>'!r}"


def block(node: ir.Node, why: str) -> Blocked:
    return Blocked(f"cannot widen: {describe(node)} {why}")


def static_dims(value: ir.Value) -> list[int | None] | None:
    """The value's dims (None for symbolic ones), or None when its rank is unknown."""
    shape = value.shape if value.const_value is None else value.const_value.shape
    if shape is None:
        const = constant_shape(value)
        return None if const is None else list(const)
    return [d if isinstance(d, int) else None for d in shape.dims]


def rank_of(value: ir.Value) -> int | None:
    dims = static_dims(value)
    return None if dims is None else len(dims)


def int_list(node: ir.Node, attr: str, input_index: int) -> list[int] | None:
    """Axes-like ints from an attribute (older opsets) or a constant input (newer ones)."""
    if attr in node.attributes:
        return [int(v) for v in attribute(node, attr, [])]
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        array = constant_array(node.inputs[input_index])
        if array is None:
            raise block(node, f"has a non-constant {attr!r} input; the analysis cannot tell which axes it uses")
        return [int(v) for v in np.asarray(array).reshape(-1)]
    return None


def opset_of(node: ir.Node) -> int:
    """The node's opset version (0 when unknown)."""
    return node.version or (node.graph.opset_imports.get("", 0) if node.graph is not None else 0)
