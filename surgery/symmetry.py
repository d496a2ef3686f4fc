"""Neuron symmetry: which units of a layer compute exactly the same function.

Two units are symmetric when everything that defines them is bitwise equal: their fan-in (the
weight column or filter, in every layer of a coupled group), their bias, their per-unit
constants on the way (BatchNormalization parameters, folded Mul + Add, PRelu slopes) and their
fan-out (the rows of every weight that reads them, position by position — after a flatten, one
row per spatial position). Symmetric units receive identical gradients, so training can never
tell them apart: `all-zero` widening creates such a group; `output-zero` does not (its fan-in
is random).

Where the units meet a node the width analysis cannot follow (a softmax, a graph output...)
only fan-in, bias and per-unit constants up to that node are compared.
"""

from __future__ import annotations

import numpy as np

from surgery.analysis import infer_missing_shapes, trace_units
from surgery.errors import SurgeryError
from surgery.graph import ModelLike, as_ir, attribute, constant_array
from surgery.layers import resolve_layer
from surgery.layout import Layout


def _take(array: np.ndarray, axis: int, positions: np.ndarray) -> bytes:
    return np.ascontiguousarray(np.take(array, positions, axis=axis)).tobytes()


def _unit_positions(layout: Layout, group: int, unit: int) -> np.ndarray:
    """The positions holding `unit` of `group`, in the order of where they sit (base)."""
    where = np.flatnonzero((layout.group == group) & (layout.unit == unit))
    return where[np.argsort(layout.base[where], kind="stable")]


def symmetric_groups(model: ModelLike, layer: str) -> list[list[int]]:
    """Groups (each of two or more unit indices, ascending) of units of `layer` that are identical.

    Args:
        model: the model (not modified).
        layer: node name or friendly name, as `surgery inspect` lists it.

    Returns:
        The groups, ordered by their first unit; empty when every unit is distinct.

    Example:
        >>> wide = surgery.widen(model, {"dense_1": 3}, init="all-zero")
        >>> symmetric_groups(surgery.graph.as_ir(wide), "dense_1")
        [[16, 17, 18]]
    """
    working = as_ir(model).clone()
    infer_missing_shapes(working)
    site = resolve_layer(working, layer)
    width = site.layer.width
    signature: list[list[bytes]] = [[] for _ in range(width)]
    try:
        plan = trace_units(working, layer)
    except SurgeryError:
        plan = None
    if plan is None:
        transposed = site.node.op_type == "Gemm" and attribute(site.node, "transB", 0)
        weight_axis = 0 if site.node.op_type == "Conv" or transposed else 1
        parameters = [(site.node.inputs[1], weight_axis)]
        if len(site.node.inputs) > 2 and site.node.inputs[2] is not None:
            parameters.append((site.node.inputs[2], -1 if site.node.op_type == "Gemm" else 0))
        if site.bias_node is not None:
            bias = next(v for v in site.bias_node.inputs if v is not site.node.outputs[0])
            parameters.append((bias, -1))
        for value, axis in parameters:
            array = constant_array(value)
            if array is None or array.ndim == 0 or array.shape[axis] != width:
                continue
            for unit in range(width):
                signature[unit].append(_take(array, axis % array.ndim, np.array([unit])))
    else:
        group = next(g for g in plan.groups if any(m.node is site.node for m in g.members))
        for edit in plan.edits:
            if edit.role == "literal":
                continue
            array = constant_array(edit.value)
            for unit in range(width):
                positions = _unit_positions(edit.layout, group.id, unit)
                signature[unit].append(_take(array, edit.axis, positions))
    buckets: dict[tuple[bytes, ...], list[int]] = {}
    for unit, parts in enumerate(signature):
        buckets.setdefault(tuple(parts), []).append(unit)
    return sorted((units for units in buckets.values() if len(units) >= 2), key=lambda units: units[0])


__all__ = ["symmetric_groups"]
