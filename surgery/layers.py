"""Layer discovery: which nodes of a graph produce a layer's units (what `surgery inspect` lists).

A *layer* is a node whose output channels are parameters we can grow:

- ``Gemm`` with a constant B (any transA/transB): width is N, read from B's shape and transB.
- ``MatMul`` with a constant rank-2 right operand: width is the operand's last dimension. When
  its only consumer is an ``Add`` with a constant per-unit bias (shape ``[U]`` or ``[1, U]``, in
  either operand position — PyTorch puts the bias first, skl2onnx second and 2-D) the layer is
  reported as ``MatMul+Add`` and its output is the Add's output.
- ``Conv`` with a constant weight: width is the number of output channels (``W.shape[0]``).

Friendly names come from the ``surgery.layer_map`` metadata written by `surgery export`
(Keras layer name → node names); for PyTorch exports from the module path (`surgery.naming`);
otherwise the node name is used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from difflib import get_close_matches

import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.graph import ModelLike, as_ir, attribute, constant_shape, consumers
from surgery.metadata import LAYER_MAP_KEY
from surgery.naming import module_names
from surgery.ops import activation_after


@dataclass(frozen=True)
class Layer:
    """One growable layer of a graph.

    Attributes:
        node: the producing node's name (the MatMul/Gemm/Conv node).
        name: the friendly name: the Keras layer name for exported models, else `node`.
        op: ``"Gemm"``, ``"MatMul+Add"``, ``"MatMul"`` or ``"Conv"``.
        width: number of units (output features or output channels).
        activation: the activation that follows, if any (`surgery.ops.activation_after`): an op
            type, or "Gelu", "Silu" or "SwiGLU" for the forms exporters write as several nodes.
        consumers: names of the nodes that read the layer's output.
    """

    node: str
    name: str
    op: str
    width: int
    activation: str | None
    consumers: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerSite:
    """A layer together with the graph objects it is made of (for analysis code)."""

    layer: Layer
    node: ir.Node
    bias_node: ir.Node | None
    output: ir.Value


def friendly_names(model: ir.Model) -> dict[str, str]:
    """Node name → Keras layer name, from the metadata `surgery export` writes."""
    raw = model.metadata_props.get(LAYER_MAP_KEY)
    if not raw:
        return {}
    try:
        layer_map = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return {node: layer for layer, nodes in layer_map.items() for node in nodes}


def bias_add(output: ir.Value, width: int) -> ir.Node | None:
    """The Add that adds a constant per-unit bias (shape ``[U]`` or ``[1, U]``, either operand)
    to a MatMul's `output`, if that is its only use. Reads no tensor data."""
    users = consumers(output)
    if len(users) != 1 or users[0].op_type != "Add" or output.is_graph_output():
        return None
    add = users[0]
    other = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
    bias = constant_shape(other)
    if bias is None or len(bias) not in (1, 2) or bias[-1] != width or any(d != 1 for d in bias[:-1]):
        return None
    return add


def _width(node: ir.Node) -> int | None:
    """Number of units `node` produces, or None when it is not a growable layer."""
    if node.op_type == "Gemm" and len(node.inputs) >= 2:
        weight = constant_shape(node.inputs[1])
        if weight is None or len(weight) != 2:
            return None
        return int(weight[0] if attribute(node, "transB", 0) else weight[1])
    if node.op_type == "MatMul" and len(node.inputs) == 2:
        if constant_shape(node.inputs[0]) is not None:
            return None
        weight = constant_shape(node.inputs[1])
        return int(weight[1]) if weight is not None and len(weight) == 2 else None
    if node.op_type == "Conv" and len(node.inputs) >= 2:
        weight = constant_shape(node.inputs[1])
        return int(weight[0]) if weight is not None and len(weight) >= 3 else None
    return None


def layer_sites(model: ir.Model) -> list[LayerSite]:
    """Every growable layer of the main graph, in topological order."""
    names = module_names(model) | friendly_names(model)
    sites = []
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        width = _width(node)
        if width is None:
            continue
        op, bias_node, output = node.op_type, None, node.outputs[0]
        if node.op_type == "MatMul":
            bias_node = bias_add(output, width)
            if bias_node is not None:
                op, output = "MatMul+Add", bias_node.outputs[0]
        layer = Layer(
            node=node.name or "",
            name=names.get(node.name or "", node.name or ""),
            op=op,
            width=width,
            activation=activation_after(output),
            consumers=[user.name or user.op_type for user in consumers(output)],
        )
        sites.append(LayerSite(layer, node, bias_node, output))
    return sites


def find_layers(model: ModelLike) -> list[Layer]:
    """The growable layers of `model`, an `onnx.ModelProto` or `ir.Model` (see the module docstring)."""
    return [site.layer for site in layer_sites(as_ir(model))]


def resolve_layer(model: ir.Model, name: str, sites: list[LayerSite] | None = None) -> LayerSite:
    """The layer called `name` (node name or friendly name), or a SurgeryError suggesting names.

    `sites`: `layer_sites(model)` when the caller has it (resolving many names is then linear).
    """
    sites = layer_sites(model) if sites is None else sites
    for site in sites:
        if name in (site.layer.node, site.layer.name):
            return site
    known = sorted({s.layer.name for s in sites} | {s.layer.node for s in sites})
    close = get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; layers are: {', '.join(known[:8])}"
    raise SurgeryError(f"no layer named {name!r}{hint}")


__all__ = ["Layer", "LayerSite", "bias_add", "find_layers", "layer_sites", "resolve_layer", "friendly_names"]
