"""Rebuild a model that came from `surgery export` from the Keras architecture it carries.

The ONNX metadata ``surgery.keras_config`` holds the original `model.to_json()`; the model is
rebuilt from it (layer types, names, Dropout, regularizers, constraints, initializers), with
the widths the ONNX weights now have (what `surgery widen` grew), and its weights are read
from the ONNX initializers. Rules, case by case:

- ``Dense``: the ``MatMul``/``Gemm`` node of the layer (found through ``surgery.layer_map``, or
  through the layer's name scope in an initializer's name: tf2onnx's fused nodes such as
  ``Conv__34`` lose the scope in their own name) gives the kernel; ``Gemm``'s C or the constant
  ``Add`` right after the MatMul gives the bias; none means tf2onnx dropped an all-zero bias.
  ``units`` becomes the kernel's output width.
- ``Conv2D``: the ``Conv`` node's weight ``[out, in, kh, kw]`` transposed to ``[kh, kw, in,
  out]``, and its bias; ``filters`` becomes ``out``.
- ``BatchNormalization``: tf2onnx folds it into ``x * mul + add`` (the Add is gone when it is
  all zero). Keras computes ``gamma * (x - mean) / sqrt(var + eps) + beta``. With ``scale``:
  gamma = mul and var = the float32 value for which ``var + eps`` rounds to exactly 1; without
  ``scale``: var = 1/mul² − eps. With ``center``: beta = add and mean = 0; without: mean =
  −add/mul. When tf2onnx folded the whole BatchNormalization into the preceding Conv (no Mul
  left) the Conv already computes it: the layer is restored as the identity (gamma 1, beta 0,
  mean 0, var 1 − eps) and a bias the Conv gained moves to beta when the Conv has none.
- Layers without weights come back exactly as configured. Any other layer with weights
  (Embedding, MultiHeadAttention, LayerNormalization, ...) raises `UnlocatedWeights`: the model
  is then rebuilt from its ops instead (`surgery.onnx_to_keras.convert`), with a note.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from surgery.errors import SurgeryError, first_line
from surgery.export import layer_for_scope
from surgery.graph import attribute, constant_array, consumers
from surgery.metadata import KERAS_CONFIG_KEY, LAYER_MAP_KEY
from surgery.onnx_to_keras.foreign import Conversion
from surgery.onnx_to_keras.transfer import inbound_layers
from surgery.tensorflow_runtime import import_tensorflow

#: Layer classes whose weights this module knows how to find in a tf2onnx graph.
_WEIGHTED = ("Dense", "Conv2D", "BatchNormalization")


class UnlocatedWeights(SurgeryError):
    """A layer of the recorded architecture whose weights this module cannot find in the graph."""


def _unit_variance(epsilon: float) -> np.float32:
    """The float32 variance v for which float32(v + epsilon) is exactly 1."""
    eps = np.float32(epsilon)
    v = np.float32(1) - eps
    while v + eps > np.float32(1):
        v = np.nextafter(v, np.float32(0))
    while v + eps < np.float32(1):
        v = np.nextafter(v, np.float32(2))
    return v


class _Graph:
    """The ONNX graph seen per Keras layer: which nodes each layer became."""

    def __init__(self, model: ir.Model, layer_names: set[str], layer_map: dict[str, list[str]]):
        self.nodes = {node.name: node for node in model.graph if node.name}
        self.owner: dict[str, str] = {n: layer for layer, names in layer_map.items() for n in names}
        self.by_layer: dict[str, list[ir.Node]] = {}
        for node in model.graph:
            layer = self.owner.get(node.name or "") or self._scope_owner(node, layer_names)
            if layer is not None:
                self.by_layer.setdefault(layer, []).append(node)

    @staticmethod
    def _scope_owner(node: ir.Node, layer_names: set[str]) -> str | None:
        """The layer whose name scope appears in the names of the node's weight initializers."""
        for value in node.inputs[1:]:
            if value is None or value.const_value is None or not value.name:
                continue
            for scope in value.name.split("/")[1:-1]:
                layer = layer_for_scope(scope, layer_names)
                if layer is not None:
                    return layer
        return None

    def owned_by_other(self, node: ir.Node, layer: str) -> bool:
        owner = self.owner.get(node.name or "")
        return owner is not None and owner != layer

    def constant_after(self, value: ir.Value, op: str, layer: str, size: int) -> np.ndarray | None:
        """The per-unit constant of the `op` node that alone reads `value` (a bias Add, a BN Add)."""
        users = consumers(value)
        if len(users) != 1 or users[0].op_type != op or value.is_graph_output() or self.owned_by_other(users[0], layer):
            return None
        node = users[0]
        other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
        array = constant_array(other)
        if array is None or array.size not in (1, size):
            return None
        return np.broadcast_to(array.reshape(-1), (size,)).astype(np.float32)


def _config_layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def _readers(config: dict) -> dict[str, list[str]]:
    """Layer name → names of the layers that take its output (Sequential: the next one)."""
    layers = _config_layers(config)
    if config["class_name"] == "Sequential":
        names = [entry["config"]["name"] for entry in layers]
        return {a: [b] for a, b in zip(names, names[1:])}
    readers: dict[str, list[str]] = {}
    for entry in layers:
        for source in inbound_layers(entry):
            readers.setdefault(source, []).append(entry["config"]["name"])
    return readers


class _Weights:
    """Weights for each Keras layer, read from the graph before the model is built."""

    def __init__(self, graph: _Graph, config: dict):
        self.graph = graph
        self.config = config
        self.readers = _readers(config)
        self.classes = {e["config"]["name"]: e["class_name"] for e in _config_layers(config)}
        self.kernels: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        #: BatchNormalization layer → (mul, add) of its folded form; (None, None) when folded away.
        self.batch_norms: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        self.moved_bias: dict[str, np.ndarray] = {}
        self.notes: list[str] = []

    def _node(self, layer: str, ops: tuple[str, ...]) -> ir.Node | None:
        for node in self.graph.by_layer.get(layer, []):
            if node.op_type in ops and len(node.inputs) > 1 and constant_array(node.inputs[1]) is not None:
                return node
        return None

    def read(self) -> None:
        """Find every Dense/Conv2D/BatchNormalization's arrays and fix the config's widths."""
        for entry in _config_layers(self.config):
            cls, layer = entry["class_name"], entry["config"]["name"]
            if cls == "Dense":
                self._dense(entry, layer)
            elif cls == "Conv2D":
                self._conv(entry, layer)
            elif cls == "BatchNormalization":
                self._batch_norm(layer)
        for entry in _config_layers(self.config):  # a Conv's folded-in bias with nowhere to go
            layer, cfg = entry["config"]["name"], entry["config"]
            kernel_bias = self.kernels.get(layer)
            if kernel_bias is None or kernel_bias[1] is None or cfg.get("use_bias", True):
                continue
            target = self._identity_bn_after(layer)
            if target is not None:
                self.moved_bias[target] = kernel_bias[1]
            elif np.any(kernel_bias[1]):
                cfg["use_bias"] = True
                self.notes.append(f"layer {layer!r} gains a bias: tf2onnx folded a following affine into it")
            if target is not None or not np.any(kernel_bias[1]):
                self.kernels[layer] = (kernel_bias[0], None)

    def _identity_bn_after(self, layer: str) -> str | None:
        readers = self.readers.get(layer, [])
        if len(readers) == 1 and self.classes.get(readers[0]) == "BatchNormalization":
            if self.batch_norms[readers[0]][0] is None and self._bn_config(readers[0]).get("center", True):
                return readers[0]
        return None

    def _bn_config(self, layer: str) -> dict:
        return next(e["config"] for e in _config_layers(self.config) if e["config"]["name"] == layer)

    def _dense(self, entry: dict, layer: str) -> None:
        node = self._node(layer, ("MatMul", "Gemm"))
        if node is None:
            raise SurgeryError(f"Dense layer {layer!r}: no MatMul or Gemm for it in the ONNX graph")
        kernel = constant_array(node.inputs[1]).astype(np.float32)
        if kernel.ndim != 2:
            raise SurgeryError(f"Dense layer {layer!r}: node {node.name!r} has a rank-{kernel.ndim} weight")
        bias = None
        if node.op_type == "Gemm":
            if attribute(node, "transA", 0):
                raise SurgeryError(f"Dense layer {layer!r}: node {node.name!r} is a Gemm with transA=1")
            kernel = (kernel.T if attribute(node, "transB", 0) else kernel) * np.float32(attribute(node, "alpha", 1.0))
            c = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
            if c is not None:
                bias = np.broadcast_to(c.reshape(-1), (kernel.shape[1],)).astype(np.float32) * np.float32(
                    attribute(node, "beta", 1.0)
                )
        else:
            bias = self.graph.constant_after(node.outputs[0], "Add", layer, kernel.shape[1])
        entry["config"]["units"] = int(kernel.shape[1])
        self.kernels[layer] = (kernel, bias)

    def _conv(self, entry: dict, layer: str) -> None:
        node = self._node(layer, ("Conv",))
        if node is None:
            raise SurgeryError(f"Conv2D layer {layer!r}: no Conv for it in the ONNX graph")
        weight = constant_array(node.inputs[1]).astype(np.float32)
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        entry["config"]["filters"] = int(weight.shape[0])
        self.kernels[layer] = (weight.transpose(2, 3, 1, 0), None if bias is None else bias.astype(np.float32))

    def _batch_norm(self, layer: str) -> None:
        """Record (mul, add) of the folded BatchNormalization `layer`; (None, None) when tf2onnx
        folded it into the layer before it."""
        for node in self.graph.by_layer.get(layer, []):
            if node.op_type not in ("Mul", "Add"):
                continue
            operands = [constant_array(v) for v in node.inputs]
            constant = next((a for a in operands if a is not None), None)
            data = next((v for v, a in zip(node.inputs, operands) if a is None), None)
            if constant is None or data is None:
                continue
            if node.op_type == "Mul":
                add = self.graph.constant_after(node.outputs[0], "Add", layer, constant.size)
                self.batch_norms[layer] = (constant.reshape(-1).astype(np.float32), add)
            else:
                self.batch_norms[layer] = (np.ones(constant.size, np.float32), constant.reshape(-1).astype(np.float32))
            return
        self.batch_norms[layer] = (None, None)
        self.notes.append(f"BatchNormalization {layer!r} was folded into the layer before it; restored as the identity")

    def batch_norm_weights(self, layer, channels: int) -> list[np.ndarray]:
        """gamma/beta/moving mean/moving variance reproducing ``x * mul + add`` (module docstring)."""
        eps = float(layer.epsilon)
        mul, add = self.batch_norms[layer.name]
        mul = np.ones(channels, np.float32) if mul is None else np.broadcast_to(mul, (channels,))
        add = (
            self.moved_bias.get(layer.name, np.zeros(channels, np.float32))
            if add is None
            else np.broadcast_to(add, (channels,))
        )
        if layer.scale:
            gamma, variance = mul, np.full(channels, _unit_variance(eps), np.float32)
        else:
            if np.any(mul <= 0):
                raise SurgeryError(f"BatchNormalization {layer.name!r} has scale=False but a non-positive folded scale")
            gamma, variance = None, (1.0 / mul.astype(np.float64) ** 2 - eps).astype(np.float32)
        if layer.center:
            beta, mean = add, np.zeros(channels, np.float32)
        else:
            if np.any(mul == 0) and np.any(add):
                raise SurgeryError(f"BatchNormalization {layer.name!r} has center=False but a shift it cannot express")
            beta, mean = None, np.where(mul == 0, 0, -add / np.where(mul == 0, 1, mul)).astype(np.float32)
        return [w.astype(np.float32) for w in (gamma, beta, mean, variance) if w is not None]


def _strip_build_configs(config: dict) -> None:
    """Drop recorded input shapes: widened layers must build for their new input widths."""
    for entry in _config_layers(config):
        entry.pop("build_config", None)


def convert_exported(model: ir.Model) -> Conversion:
    """Rebuild the Keras model recorded in the export metadata, at the graph's widths."""
    import_tensorflow()
    from keras import saving

    config = json.loads(model.metadata_props[KERAS_CONFIG_KEY])
    layer_map = json.loads(model.metadata_props.get(LAYER_MAP_KEY, "{}"))
    names = {entry["config"]["name"] for entry in _config_layers(config)}
    graph = _Graph(model, names, layer_map)
    weights = _Weights(graph, config)
    weights.read()
    _strip_build_configs(config)
    try:
        keras_model = saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:
        raise SurgeryError(
            f"the Keras architecture in the ONNX metadata cannot be rebuilt: {first_line(error)}"
        ) from None
    for layer in keras_model.layers:
        cls = type(layer).__name__
        if not layer.weights:
            continue
        if cls in ("Dense", "Conv2D"):
            kernel, bias = weights.kernels[layer.name]
            layer.set_weights(
                [kernel]
                + ([bias if bias is not None else np.zeros(kernel.shape[-1], np.float32)] if layer.use_bias else [])
            )
        elif cls == "BatchNormalization":
            layer.set_weights(weights.batch_norm_weights(layer, int(layer.moving_mean.shape[0])))
        else:
            raise UnlocatedWeights(
                f"layer {layer.name!r} ({cls}): to-keras can only locate the weights of {', '.join(_WEIGHTED)} in an exported graph"
            )
    node_layers = {node.name: layer for layer, nodes in graph.by_layer.items() for node in nodes if node.name}
    return Conversion(keras_model, "keras-config", node_layers, [v.name for v in model.graph.outputs], weights.notes)
