"""ONNX graphs without Keras provenance (PyTorch, tf2onnx, skl2onnx, hand-built) → a functional Keras model.

Analyse first (`surgery.onnx_to_keras.plan`: kept outputs, needed nodes, parameters, folded
constants, static shapes — an op nobody knows is refused there, naming the node), build second:
`GraphBuilder` walks the needed nodes in graph order and gives each one

- a **friendly layer** where a pattern is recognised (`surgery.onnx_to_keras.friendly`: Dense,
  Conv2D, DepthwiseConv2D, BatchNormalization, pooling, merges, activations;
  `surgery.onnx_to_keras.patterns`: LayerNormalization, Embedding, GELU, RMSNormalization) —
  its parameters become that layer's weights;
- otherwise the **generic path**: an `OnnxOp` layer computing the node with `keras.ops`
  (`surgery.onnx_to_keras.generic`), its parameters read from `OnnxParameter` layers (one per
  parameter, so a parameter read by several nodes stays one weight).

Layouts. Keras convolutions are channels-last while ONNX is NCHW. Every converted tensor is
kept as a Keras tensor together with a permutation ``perm`` such that
``keras_tensor == onnx_value.transpose(perm)``; a ``Conv`` asks for NHWC, generic ops and
Dense for the ONNX order, and a ``Permute`` layer is inserted only where a consumer needs
another order (a generic ``Transpose`` where the batch axis moves). The model's inputs and
outputs are in the ONNX graph's own layout and carry its names: each output's last layer is
named after the ONNX output.

Outputs that carry integer class labels computed through ``ArgMax`` (skl2onnx's ``label``) are
left out (`plan.dropped_outputs` names them; `Conversion.notes` says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.onnx_to_keras.friendly import FRIENDLY, FRIENDLY_LAYERS, Decline, Tensor, identity
from surgery.onnx_to_keras.generic import OPS
from surgery.onnx_to_keras.patterns import TransformerPatterns
from surgery.onnx_to_keras.plan import analyse, where
from surgery.tensorflow_runtime import import_tensorflow

if TYPE_CHECKING:
    import keras

SUPPORTED_OPS = frozenset(OPS) | frozenset(FRIENDLY)


@dataclass
class Conversion:
    """What `to_keras` built, and what a user should know about it.

    Attributes:
        model: the Keras model.
        source: ``"keras-config"`` (rebuilt from export provenance) or ``"graph"`` (from the ops).
        node_layers: ONNX node name → the Keras layer that now computes it (for name lookup).
        kept_outputs: names of the ONNX outputs the Keras model reproduces, in its output order.
        dropped_outputs: names of the ONNX outputs it leaves out (class labels).
        notes: one-line remarks (dropped outputs, folded layers restored as identity, ...).
    """

    model: keras.Model
    source: str
    node_layers: dict[str, str] = field(default_factory=dict)
    kept_outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped_outputs: list[str] = field(default_factory=list)


def sanitise(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", text)).strip("_")


def _attributes(node: ir.Node) -> dict[str, Any]:
    """The node's attributes as JSON values (tensors encoded for the layer config)."""
    from surgery.onnx_to_keras.layers import encode_array

    values: dict[str, Any] = {}
    for name, attr in node.attributes.items():
        if attr.type == ir.AttributeType.TENSOR:
            values[name] = encode_array(attr.as_tensor().numpy())
        elif attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            raise SurgeryError(f"{where(node)}: ops with subgraphs (If, Loop, Scan) are not supported")
        elif isinstance(attr.value, (list, tuple)):
            values[name] = list(attr.value)
        else:
            values[name] = attr.value
    return values


class GraphBuilder(TransformerPatterns):
    """Builds the Keras model for one ONNX graph (see the module docstring)."""

    def __init__(self, model: ir.Model):
        import_tensorflow()
        import keras

        import surgery.onnx_to_keras.layers  # noqa: F401  (registers OnnxOp and OnnxParameter)

        self.keras = keras
        self.model = model
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
        self.plan = analyse(model, frozenset(FRIENDLY))
        self.values: dict[int, Tensor] = {}
        self.absorbed: set[int] = set()
        #: Nodes folded into the layer being built (bias Add, activation): they answer to its name.
        self.pending: list[ir.Node] = []
        self.names: set[str] = {sanitise(v.name) for v in self.plan.kept}
        self.node_layers: dict[str, str] = {}
        self.weights: list[tuple[Any, list[np.ndarray]]] = []
        self.parameter_tensors: dict[int, Any] = {}
        self.anchor: Any = None

    # -- the walk ------------------------------------------------------------------------
    def build(self) -> Conversion:
        inputs = self._inputs()
        self.anchor = inputs[0]
        for node in self.plan.nodes:
            if id(node) in self.absorbed:
                continue
            handler = FRIENDLY.get(node.op_type)
            try:
                if handler is None:
                    raise Decline
                handler(self, node)
            except Decline:
                self._generic(node)
        outputs = [self._output(v) for v in self.plan.kept]
        name = sanitise(self.model.graph.name or "") or "onnx_model"
        keras_model = self.keras.Model(
            inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0], name=name
        )
        for layer, weights in self.weights:
            layer.set_weights(weights)
        dropped = self.plan.dropped
        notes = [
            f"output {v.name!r} ({v.dtype}, class labels through ArgMax) is not rebuilt: Keras has no argmax layer "
            f"without a Lambda; compute it as argmax of {self.plan.kept[0].name!r} over the last axis"
            + self._label_classes(v)
            for v in dropped
        ]
        kept = [v.name for v in self.plan.kept]
        return Conversion(keras_model, "graph", self.node_layers, kept, notes, [v.name for v in dropped])

    def _output(self, value: ir.Value):
        """The Keras tensor of a kept output, in ONNX layout, from a layer named after the output."""
        if id(value) not in self.values:
            raise SurgeryError(f"output {value.name!r} is a constant; a Keras model cannot output it")
        tensor = self._in_layout(self.values[id(value)], identity(self.values[id(value)].rank), value.producer())
        name = sanitise(value.name) or "output"
        if tensor.keras._keras_history.operation.name == name:
            return tensor.keras
        return self.keras.layers.Identity(name=name)(tensor.keras)

    def _label_classes(self, value: ir.Value) -> str:
        """The class list an ArrayFeatureExtractor maps argmax indices to, when there is one."""
        stack, seen = [value], set()
        while stack:
            node = stack.pop().producer()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "ArrayFeatureExtractor":
                classes = self.plan.constant(node.inputs[0])
                if classes is not None and classes.size <= 20:
                    return f", mapped through classes {classes.reshape(-1).tolist()}"
            stack.extend(v for v in node.inputs if v is not None)
        return ""

    def _inputs(self) -> list:
        keras_inputs = []
        for value in self.model.graph.inputs:
            if value.const_value is not None:
                continue  # an initializer listed as an input (IR version < 4)
            shape = value.shape
            if shape is None or len(shape) < 1:
                raise SurgeryError(f"input {value.name!r}: needs a known rank to become a Keras Input")
            if value.dtype is None or value.dtype.is_string():
                raise SurgeryError(f"input {value.name!r}: {value.dtype} inputs are not supported")
            dims = [d if isinstance(d, int) else None for d in shape]
            name = sanitise(value.name) or "input"
            self.names.add(name)
            tensor = self.keras.Input(shape=tuple(dims[1:]), name=name, dtype=value.dtype.numpy().name)
            self.values[id(value)] = Tensor(tensor, identity(len(dims)))
            keras_inputs.append(tensor)
        if not keras_inputs:
            raise SurgeryError("the graph has no inputs; a Keras model needs one")
        return keras_inputs

    # -- the generic path ----------------------------------------------------------------
    def _generic(self, node: ir.Node) -> None:
        """An `OnnxOp` layer for `node`: computed and parameter inputs as layer inputs, the rest in its config."""
        from surgery.onnx_to_keras.layers import OnnxOp, encode_array

        if node.op_type not in OPS:
            raise SurgeryError(f"{where(node)}: this form of {node.op_type} has no Keras rule")
        tensors, constants = [], {}
        for position, value in enumerate(node.inputs):
            if value is None:
                continue
            if self.plan.is_parameter(value):
                tensors.append(self.parameter(value))
            elif self.plan.constant(value) is not None:
                constants[str(position)] = encode_array(self.plan.constant(value))
            else:
                source = self.values[id(value)]
                tensors.append(self._in_layout(source, identity(source.rank), node).keras)
        hints = [self.plan.shapes.get(v.name) for v in node.outputs]
        dtypes = [self.plan.dtypes.get(v.name) for v in node.outputs]
        layer = OnnxOp(
            node.op_type,
            _attributes(node),
            constants,
            len(node.inputs),
            len(node.outputs),
            shape_hints=hints if any(h is not None for h in hints) else None,
            output_dtypes=dtypes if all(dtypes) else None,
            opset=self.opset,
            name=self._name(node),
        )
        if not tensors:
            raise SurgeryError(f"{where(node)}: all its inputs are constants, yet it was not computed at conversion")
        out = self._layer(node, layer, tensors)
        outs = out if isinstance(out, (list, tuple)) else [out]
        for value, tensor in zip(node.outputs, outs):
            self.values[id(value)] = Tensor(tensor, identity(len(tensor.shape)))

    def parameter(self, value: ir.Value):
        """The Keras tensor of a parameter: one trainable `OnnxParameter` weight per ONNX value."""
        from surgery.onnx_to_keras.layers import OnnxParameter

        if id(value) not in self.parameter_tensors:
            array = self.plan.constant(value).astype(np.float32)
            layer = OnnxParameter(list(array.shape), name=self._unique(sanitise(value.name) or "parameter"))
            self.parameter_tensors[id(value)] = layer(self.anchor)
            self.weights.append((layer, [array]))
        return self.parameter_tensors[id(value)]

    # -- helpers -------------------------------------------------------------------------
    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def _name(self, node: ir.Node, suffix: str = "") -> str:
        """A unique Keras layer name from the node's name (PyTorch's "/fc1/Gemm" → "fc1")."""
        base = node.name or node.op_type
        parts = [p for p in base.split("/") if p]
        if len(parts) > 1 and parts[-1] == node.op_type:
            parts = parts[:-1]
        base = sanitise("_".join(parts)) or sanitise(node.op_type).lower()
        return self._unique(f"{base}_{suffix}" if suffix else base)

    def _layer(self, node: ir.Node, layer, inputs, *, weights: list[np.ndarray] | None = None):
        output = layer(inputs)
        for part in (node, *self.pending):
            if part.name:
                self.node_layers.setdefault(part.name, layer.name)
        self.pending.clear()
        if weights is not None:
            self.weights.append((layer, weights))
        return output

    def _in_layout(self, tensor: Tensor, perm: tuple[int, ...], node: ir.Node | None) -> Tensor:
        """`tensor` permuted to `perm`: a Permute layer, or a generic Transpose where the batch axis moves."""
        if tensor.perm == perm:
            return tensor
        order = [tensor.perm.index(axis) for axis in perm]
        label = node if node is not None else ir.Node("", "Transpose", [])
        if order[0] != 0:
            from surgery.onnx_to_keras.layers import OnnxOp

            layer = OnnxOp("Transpose", {"perm": order}, {}, 1, name=self._name(label, "transpose"))
            return Tensor(layer([tensor.keras]), perm)
        layer = self.keras.layers.Permute(tuple(order[1:]), name=self._name(label, "permute"))
        return Tensor(layer(tensor.keras), perm)


def convert_graph(model: ir.Model) -> Conversion:
    """Build the Keras model for a graph without Keras provenance (see the module docstring)."""
    return GraphBuilder(model).build()


__all__ = ["FRIENDLY_LAYERS", "SUPPORTED_OPS", "Conversion", "GraphBuilder", "convert_graph", "sanitise"]
