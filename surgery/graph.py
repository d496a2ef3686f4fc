"""Small navigation helpers over the one graph representation, `onnx_ir.Model`.

Every module works on `ir.Model`; public functions also accept an `onnx.ModelProto` and hand
back the same kind they were given (`as_ir` / `like`).
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import onnx
import onnx_ir as ir

ModelLike: TypeAlias = "onnx.ModelProto | ir.Model"


def as_ir(model: ModelLike) -> ir.Model:
    """A fresh `ir.Model` for `model`: a proto is deserialised, an `ir.Model` is returned as is."""
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    if isinstance(model, ir.Model):
        return model
    raise TypeError(f"expected onnx.ModelProto or onnx_ir.Model, got {type(model).__name__}")


def like(result: ir.Model, original: ModelLike) -> ModelLike:
    """Return `result` in the same representation the caller passed in as `original`."""
    if isinstance(original, onnx.ModelProto):
        return ir.serde.serialize_model(result)
    return result


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents when it is an initializer or a `Constant` node's output, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor().numpy()
    return None


def constant_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of a constant value without reading its data (external data stays on disk)."""
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(value.const_value.shape.numpy())
    array = constant_array(value)
    return None if array is None else array.shape


def is_constant(value: ir.Value | None) -> bool:
    """True for an initializer (that is not also a graph input) or a `Constant` node's output."""
    if value is None:
        return False
    if value.const_value is not None and not value.is_graph_input():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def consumers(value: ir.Value) -> list[ir.Node]:
    """The distinct nodes that read `value`, in graph order of first use."""
    seen: dict[int, ir.Node] = {}
    for use in value.uses():
        seen.setdefault(id(use.node), use.node)
    return list(seen.values())


def attribute(node: ir.Node, name: str, default):
    """An attribute's Python value, or `default` when the node does not set it."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def reachable(seeds: list[ir.Value], stops: frozenset[ir.Node] | set[ir.Node] = frozenset()) -> list[ir.Node]:
    """Nodes reachable from the `seeds` through uses (not past the `stops`, which are included),
    in topological order: reverse depth-first postorder, seeds and uses taken in order."""
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
            if node in stops:
                continue
            for output in reversed(node.outputs):
                for use in reversed(list(output.uses())):
                    if use.node not in visited:
                        stack.append((use.node, False))
    return postorder[::-1]
