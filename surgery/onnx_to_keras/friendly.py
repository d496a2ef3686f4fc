"""Friendly layers: ONNX nodes that become an ordinary Keras layer, case by case.

Size: one short rule per Keras layer kind (Dense, Conv2D, DepthwiseConv2D, pooling, norms,
Embedding, activations); split further, each rule would sit apart from the `Decline` protocol they share.

Each rule either builds its layer or raises `Decline` before building anything; the node then
takes the generic path (`OnnxOp`). A parameter becomes a friendly layer's weight only when this
node alone reads it (a shared one stays one `OnnxParameter`).

- ``Gemm`` (transA=0, rank-2 input) and ``MatMul`` with a rank-2 parameter as right operand,
  with a following ``Add`` of a per-unit parameter bias (either operand order, ``[U]`` or
  ``[1, U]``) → ``Dense`` (on any input rank: the last axis). An elementwise activation that
  alone reads the result becomes its ``activation``.
- ``Conv`` with a 2-D kernel → ``Conv2D`` (``groups`` for grouped convolutions) or
  ``DepthwiseConv2D`` (one input channel per group), weight ``[out, in/g, kh, kw]`` transposed
  to ``[kh, kw, in/g, out]``; explicit pads become ``padding="same"`` when they equal
  TensorFlow's SAME padding, else a ``ZeroPadding2D`` in front.
- ``BatchNormalization`` → ``BatchNormalization`` (epsilon, momentum, running statistics).
  The transformer patterns (LayerNormalization, Embedding, exact GELU, RMSNorm) are in
  `surgery.onnx_to_keras.patterns`.
- ``MaxPool``/``AveragePool`` → the Keras pooling layers when the pads are none, TensorFlow's
  SAME, or zeros counted in the average (a ``ZeroPadding2D``); other pads and ``ceil_mode``
  take the generic path (padding with -inf, or dividing by the count of real values).
  ``GlobalAveragePool``/``GlobalMaxPool`` → the global pooling layers.
- ``Flatten`` (axis 1) → ``Flatten``; ``Reshape`` to a constant target that keeps the batch
  → ``Reshape``; ``Transpose`` keeping the batch axis first costs no layer.
- ``Concat`` and ``Add``/``Sub``/``Mul``/``Max``/``Min``/``Sum``/``Mean`` of computed tensors
  of one shape → ``Concatenate`` and the merge layers. ``Dropout`` → ``Dropout``;
  ``Identity`` and a float → float ``Cast`` cost nothing.
- Activations: ``Relu``, ``Clip(0, m)``, ``LeakyRelu``, ``Elu``, ``PRelu`` (trainable slopes),
  ``Softmax``, ``Gelu`` and the parameter-free ones as ``Activation``; PyTorch's SiLU
  (``x · Sigmoid(x)``) as ``Activation("silu")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from surgery.graph import attribute, consumers
from surgery.layers import bias_add
from surgery.onnx_to_keras.plan import GraphPlan
from surgery.ops import default_softmax_axis, keras_activation

MERGE_OPS = {
    "Add": "Add",
    "Sum": "Add",
    "Sub": "Subtract",
    "Mul": "Multiply",
    "Max": "Maximum",
    "Min": "Minimum",
    "Mean": "Average",
}
#: ONNX's default Selu constants, which are Keras's.
_SELU = (1.67326319217681884765625, 1.05070102214813232421875)

#: op_type → the rule building its friendly layer.
FRIENDLY: dict[str, Callable[[Any, ir.Node], None]] = {}
#: op_type → the Keras layers its rule builds, and when (the docs' ops table).
FRIENDLY_LAYERS: dict[str, str] = {}


class Decline(Exception):
    """A friendly rule does not apply; the node takes the generic path."""


@dataclass
class Tensor:
    """A converted ONNX value: ``keras == onnx_value.transpose(perm)``."""

    keras: Any
    perm: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.perm)


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def onnx_shape(tensor: Tensor) -> list[int | None]:
    """The static shape of the ONNX value `tensor` stands for."""
    return [tensor.keras.shape[tensor.perm.index(a)] for a in range(tensor.rank)]


def channels_last(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


def _tf_same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) for one spatial axis."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def rule(*ops: str, layer: str):
    def register(fn):
        for op in ops:
            FRIENDLY[op] = fn
            FRIENDLY_LAYERS[op] = layer
        return fn

    return register


class FriendlyLayers:
    """The rules above, as methods of the graph builder (which provides the attributes below)."""

    keras: Any
    plan: GraphPlan
    opset: int
    values: dict[int, Tensor]
    absorbed: set[int]
    pending: list[ir.Node]
    weights: list

    # -- what a rule may read ------------------------------------------------------------
    def _computed(self, node: ir.Node, index: int = 0) -> Tensor:
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None or id(value) not in self.values:
            raise Decline
        return self.values[id(value)]

    def _own_parameter(self, node: ir.Node, index: int) -> np.ndarray:
        """A parameter that only `node` reads (it can become this layer's weight)."""
        value = node.inputs[index] if index < len(node.inputs) else None
        if not self.plan.is_parameter(value) or len(consumers(value)) != 1 or value.is_graph_output():
            raise Decline
        return self.plan.constant(value).astype(np.float32)

    def _fixed(self, node: ir.Node, index: int) -> np.ndarray:
        """A constant that is not a parameter (a shape, a statistic, a clip bound)."""
        value = node.inputs[index] if index < len(node.inputs) else None
        array = self.plan.constant(value)
        if array is None or self.plan.is_parameter(value):
            raise Decline
        return array

    def _absorb(self, node: ir.Node) -> None:
        self.absorbed.add(id(node))
        self.pending.append(node)

    def _set(self, node: ir.Node, tensor: Tensor, output: ir.Value | None = None) -> None:
        self.values[id(output if output is not None else node.outputs[0])] = tensor

    def _single_reader(self, value: ir.Value) -> ir.Node | None:
        users = consumers(value)
        if len(users) != 1 or value.is_graph_output():
            return None
        return users[0]

    def _fuse_activation(self, value: ir.Value, *, softmax: bool) -> tuple[str | None, ir.Value]:
        """The activation to fold into the layer producing `value`, and the value it yields.

        Softmax folds only into a layer whose output is in the ONNX order (a Dense): a Conv2D's
        last axis is the channels, not the ONNX last axis.
        """
        reader = self._single_reader(value)
        if reader is None or id(reader) not in self.plan.node_ids:
            return None, value
        fused = keras_activation(reader.op_type, fused=True)
        if fused is not None:
            self._absorb(reader)
            return fused, reader.outputs[0]
        rank = len(self.plan.shapes.get(value.name) or [])
        if reader.op_type == "Softmax" and softmax and rank and self._softmax_axis(reader, rank) == -1:
            self._absorb(reader)
            return "softmax", reader.outputs[0]
        return None, value

    def _softmax_axis(self, node: ir.Node, rank: int) -> int:
        axis = default_softmax_axis(node, self.opset)
        axis = axis + rank if axis < 0 else axis
        if self.opset < 13 and axis != rank - 1:
            raise Decline
        return -1 if axis == rank - 1 else axis

    # -- layers with weights -------------------------------------------------------------
    @rule("Gemm", "MatMul", layer="Dense (weight a rank-2 parameter; bias Add and activation folded in)")
    def _dense(self, node: ir.Node) -> None:
        source = self._computed(node)
        bias_node = None
        if node.op_type == "Gemm":
            if attribute(node, "transA", 0) or source.rank != 2:
                raise Decline
            kernel = self._own_parameter(node, 1)
            kernel = (kernel.T if attribute(node, "transB", 0) else kernel) * np.float32(attribute(node, "alpha", 1.0))
            bias = None
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                bias = self._own_parameter(node, 2)
                if bias.size != kernel.shape[1] or bias.ndim > 2:
                    raise Decline
                bias = bias.reshape(-1) * np.float32(attribute(node, "beta", 1.0))
            output = node.outputs[0]
        else:
            kernel = self._own_parameter(node, 1)
            if kernel.ndim != 2:
                raise Decline
            bias, output, bias_node = None, node.outputs[0], bias_add(node.outputs[0], kernel.shape[1])
            if bias_node is not None:
                other = 1 if bias_node.inputs[0] is node.outputs[0] else 0
                try:
                    bias = self._own_parameter(bias_node, other).reshape(-1)
                except Decline:
                    bias_node = None
        source = self._in_layout(source, identity(source.rank), node)
        if source.keras.shape[-1] != kernel.shape[0]:
            raise Decline
        if bias_node is not None:
            self._absorb(bias_node)
            output = bias_node.outputs[0]
        activation, output = self._fuse_activation(output, softmax=True)
        layer = self.keras.layers.Dense(
            kernel.shape[1], activation=activation, use_bias=bias is not None, name=self._name(node)
        )
        weights = [kernel] + ([bias.astype(np.float32)] if bias is not None else [])
        self._set(node, Tensor(self._layer(node, layer, source.keras, weights=weights), source.perm), output)

    @rule("Conv", layer="Conv2D, DepthwiseConv2D (2-D kernel; any group count), ZeroPadding2D for pads")
    def _conv(self, node: ir.Node) -> None:
        source = self._computed(node)
        weight = self._own_parameter(node, 1)
        bias = self._own_parameter(node, 2) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if weight.ndim != 4 or source.rank != 4:
            raise Decline
        groups = attribute(node, "group", 1)
        source = self._in_layout(source, channels_last(4), node)
        channels = source.keras.shape[-1]
        if channels != weight.shape[1] * groups:
            raise Decline
        kernel = tuple(weight.shape[2:])
        strides = tuple(attribute(node, "strides", [1, 1]))
        dilations = tuple(attribute(node, "dilations", [1, 1]))
        padding, source_keras = self._padding(node, source, kernel, strides, dilations, padded_value="zero")
        activation, output = self._fuse_activation(node.outputs[0], softmax=False)
        common = dict(
            strides=strides,
            padding=padding,
            dilation_rate=dilations,
            activation=activation,
            use_bias=bias is not None,
            name=self._name(node),
        )
        if groups > 1 and groups == channels and weight.shape[1] == 1:
            multiplier = weight.shape[0] // channels
            layer = self.keras.layers.DepthwiseConv2D(kernel, depth_multiplier=multiplier, **common)
            kernel_weight = weight.reshape(channels, multiplier, *kernel).transpose(2, 3, 0, 1)
        else:
            layer = self.keras.layers.Conv2D(weight.shape[0], kernel, groups=groups, **common)
            kernel_weight = weight.transpose(2, 3, 1, 0)
        weights = [kernel_weight] + ([bias] if bias is not None else [])
        self._set(node, Tensor(self._layer(node, layer, source_keras, weights=weights), source.perm), output)

    def _padding(self, node, source: Tensor, kernel, strides, dilations, *, padded_value: str):
        """Keras padding for the node's pads: "valid", "same", or a ZeroPadding2D in front.

        `padded_value` says what the op reads in the padding: "zero" (Conv, AveragePool counting
        the padding: a ZeroPadding2D is exact, and TF's SAME equals it for a Conv) or "ignored"
        (MaxPool, AveragePool without count_include_pad: only TF's SAME reproduces it; other
        pads decline to the generic path).
        """
        height, width = source.keras.shape[1], source.keras.shape[2]
        auto_pad = attribute(node, "auto_pad", "NOTSET")
        if auto_pad == "VALID":
            return "valid", source.keras
        if auto_pad == "SAME_UPPER" and not (node.op_type == "AveragePool" and padded_value == "zero"):
            return "same", source.keras
        if auto_pad != "NOTSET":
            raise Decline
        pads = tuple(attribute(node, "pads", [0, 0, 0, 0]))
        if not any(pads):
            return "valid", source.keras
        if (padded_value == "ignored" or node.op_type == "Conv") and height is not None and width is not None:
            same_h = _tf_same_pads(height, kernel[0], strides[0], dilations[0])
            same_w = _tf_same_pads(width, kernel[1], strides[1], dilations[1])
            if (pads[0], pads[2]) == same_h and (pads[1], pads[3]) == same_w:
                return "same", source.keras
        if padded_value != "zero":
            raise Decline
        layer = self.keras.layers.ZeroPadding2D(((pads[0], pads[2]), (pads[1], pads[3])), name=self._name(node, "pad"))
        return "valid", layer(source.keras)

    @rule("BatchNormalization", layer="BatchNormalization (inference form)")
    def _batch_norm(self, node: ir.Node) -> None:
        source = self._computed(node)
        if attribute(node, "training_mode", 0) or len(node.outputs) > 1:
            raise Decline
        scale, offset = self._own_parameter(node, 1), self._own_parameter(node, 2)
        mean, var = self._fixed(node, 3), self._fixed(node, 4)
        if source.rank == 4:
            source = self._in_layout(source, channels_last(4), node)
        layer = self.keras.layers.BatchNormalization(
            axis=source.perm.index(1),
            epsilon=float(attribute(node, "epsilon", 1e-5)),
            momentum=float(attribute(node, "momentum", 0.9)),
            name=self._name(node),
        )
        weights = [w.reshape(-1).astype(np.float32) for w in (scale, offset, mean, var)]
        self._set(node, Tensor(self._layer(node, layer, source.keras, weights=weights), source.perm))

    @rule("MaxPool", "AveragePool", layer="MaxPooling2D, AveragePooling2D (no pads, SAME pads, or zeros counted)")
    def _pool(self, node: ir.Node) -> None:
        source = self._computed(node)
        dilated = any(d != 1 for d in attribute(node, "dilations", [1, 1]))
        if source.rank != 4 or attribute(node, "ceil_mode", 0) or dilated:
            raise Decline
        if len([v for v in node.outputs if v is not None and v.uses()]) > 1:
            raise Decline  # MaxPool's Indices
        source = self._in_layout(source, channels_last(4), node)
        kernel = tuple(attribute(node, "kernel_shape", None))
        strides = tuple(attribute(node, "strides", [1, 1]))
        average = node.op_type == "AveragePool"
        padded_value = "zero" if average and attribute(node, "count_include_pad", 0) else "ignored"
        padding, source_keras = self._padding(node, source, kernel, strides, (1, 1), padded_value=padded_value)
        cls = self.keras.layers.AveragePooling2D if average else self.keras.layers.MaxPooling2D
        out = self._layer(node, cls(kernel, strides=strides, padding=padding, name=self._name(node)), source_keras)
        self._set(node, Tensor(out, source.perm))

    @rule("GlobalAveragePool", "GlobalMaxPool", layer="GlobalAveragePooling2D, GlobalMaxPooling2D (NCHW)")
    def _global_pool(self, node: ir.Node) -> None:
        source = self._computed(node)
        if source.rank != 4:
            raise Decline
        source = self._in_layout(source, channels_last(4), node)
        average = node.op_type == "GlobalAveragePool"
        cls = self.keras.layers.GlobalAveragePooling2D if average else self.keras.layers.GlobalMaxPooling2D
        self._set(node, Tensor(self._layer(node, cls(keepdims=True, name=self._name(node)), source.keras), source.perm))

    @rule("Flatten", "Reshape", layer="Flatten, Reshape (constant target keeping the batch)")
    def _reshape(self, node: ir.Node) -> None:
        source = self._computed(node)
        if node.op_type == "Flatten":
            if attribute(node, "axis", 1) != 1:
                raise Decline
            target = None
        else:
            target = self._reshape_target(node, source)
        spatial_ones = source.rank == 4 and tuple(source.keras.shape[1:3]) == (1, 1)
        if not (spatial_ones and target is None):  # a 1x1 map flattens the same in either order
            source = self._in_layout(source, identity(source.rank), node)
        if target is None:
            out = self._layer(node, self.keras.layers.Flatten(name=self._name(node)), source.keras)
        else:
            out = self._layer(node, self.keras.layers.Reshape(target, name=self._name(node)), source.keras)
        self._set(node, Tensor(out, identity(len(out.shape))))

    def _reshape_target(self, node: ir.Node, source: Tensor) -> tuple[int, ...] | None:
        """The Keras Reshape target (without batch), or None for a flatten to [batch, -1].

        Declines unless the target provably keeps the batch axis: the first entry is 0 (copy)
        or -1 with every other entry fixed and the same number of elements per sample.
        """
        shape = [int(s) for s in self._fixed(node, 1).reshape(-1)]
        if attribute(node, "allowzero", 0) and 0 in shape:
            raise Decline
        if len(shape) < 2 or any(s == 0 for s in shape[1:]):
            raise Decline
        rest = shape[1:]
        if shape[0] == -1:
            per_sample = onnx_shape(source)[1:]
            if -1 in rest or any(d is None for d in per_sample) or int(np.prod(rest)) != int(np.prod(per_sample)):
                raise Decline
        elif shape[0] != 0 or rest.count(-1) > 1:
            raise Decline
        return None if len(rest) == 1 and rest[0] == -1 else tuple(rest)

    @rule("Transpose", layer="none: a layout change (batch axis kept)")
    def _transpose(self, node: ir.Node) -> None:
        source = self._computed(node)
        perm = tuple(attribute(node, "perm", list(reversed(range(source.rank)))))
        if perm[0] != 0:
            raise Decline
        # keras == v.transpose(p_src) and out = v.transpose(perm): keras == out.transpose(q)
        self._set(node, Tensor(source.keras, tuple(perm.index(a) for a in source.perm)))

    @rule("Concat", layer="Concatenate (computed inputs, not on the batch axis)")
    def _concat(self, node: ir.Node) -> None:
        tensors = [self._computed(node, i) for i in range(len(node.inputs))]
        if len({t.rank for t in tensors}) != 1:
            raise Decline
        perm = tensors[0].perm
        axis = attribute(node, "axis", 1)
        axis = axis + len(perm) if axis < 0 else axis
        if perm.index(axis) == 0:
            raise Decline
        tensors = [self._in_layout(t, perm, node) for t in tensors]
        layer = self.keras.layers.Concatenate(axis=perm.index(axis), name=self._name(node))
        self._set(node, Tensor(self._layer(node, layer, [t.keras for t in tensors]), perm))

    @rule(*MERGE_OPS, layer="Add, Subtract, Multiply, Maximum, Minimum, Average (computed operands of one shape)")
    def _merge(self, node: ir.Node) -> None:
        tensors = [self._computed(node, i) for i in range(len(node.inputs))]
        if len(tensors) == 1:
            self._set(node, tensors[0])
            return
        perm = tensors[0].perm
        if len({t.rank for t in tensors}) != 1:
            raise Decline
        shapes = {tuple(onnx_shape(t)[1:]) for t in tensors}
        if len(shapes) != 1 or (node.op_type == "Sub" and len(tensors) != 2):
            raise Decline
        tensors = [self._in_layout(t, perm, node) for t in tensors]
        layer = getattr(self.keras.layers, MERGE_OPS[node.op_type])(name=self._name(node))
        self._set(node, Tensor(self._layer(node, layer, [t.keras for t in tensors]), perm))

    @rule("Identity", "Cast", layer="none (Identity; a float to float Cast)")
    def _pass(self, node: ir.Node) -> None:
        source = self._computed(node)
        if node.op_type == "Cast":
            target = ir.DataType(attribute(node, "to", 1))
            given = node.inputs[0].dtype
            if not (target.is_floating_point() and given is not None and given.is_floating_point()):
                raise Decline
        self._set(node, source)

    @rule("Dropout", layer="Dropout")
    def _dropout(self, node: ir.Node) -> None:
        source = self._computed(node)
        rate = attribute(node, "ratio", None)
        if rate is None:
            given = self.plan.constant(node.inputs[1]) if len(node.inputs) > 1 else None
            rate = float(given) if given is not None else 0.5
        out = self._layer(node, self.keras.layers.Dropout(rate, name=self._name(node)), source.keras)
        self._set(node, Tensor(out, source.perm))

    @rule(
        "Relu",
        "Tanh",
        "Sigmoid",
        "Softplus",
        "Softsign",
        "Mish",
        "HardSwish",
        "LeakyRelu",
        "Elu",
        "Selu",
        "HardSigmoid",
        "Gelu",
        "Clip",
        "Softmax",
        "LogSoftmax",
        "PRelu",
        layer="ReLU, LeakyReLU, ELU, PReLU, Softmax, Activation (Keras's parameters: Clip(0, m), exact Gelu, ...)",
    )
    def _activation(self, node: ir.Node) -> None:
        keras = self.keras
        op = node.op_type
        source = self._computed(node)
        weights = None
        silu = self._silu_mul(node) if op == "Sigmoid" else None
        if silu is not None:
            self._absorb(silu)
            out = self._layer(node, keras.layers.Activation("silu", name=self._name(node)), source.keras)
            self._set(node, Tensor(out, source.perm), silu.outputs[0])
            return
        if op == "Relu":
            layer = keras.layers.ReLU
            args: dict = {}
        elif op not in ("Softmax", "LogSoftmax") and keras_activation(op) is not None:
            layer, args = keras.layers.Activation, {"activation": keras_activation(op)}
        elif op == "LeakyRelu":
            layer, args = keras.layers.LeakyReLU, {"negative_slope": float(attribute(node, "alpha", 0.01))}
        elif op == "Elu":
            layer, args = keras.layers.ELU, {"alpha": float(attribute(node, "alpha", 1.0))}
        elif op == "Selu":
            given = (attribute(node, "alpha", _SELU[0]), attribute(node, "gamma", _SELU[1]))
            if not np.allclose(given, _SELU, rtol=1e-6):
                raise Decline
            layer, args = keras.layers.Activation, {"activation": "selu"}
        elif op == "HardSigmoid":
            if not np.allclose((attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5)), (1 / 6, 0.5), rtol=1e-6):
                raise Decline
            layer, args = keras.layers.Activation, {"activation": "hard_sigmoid"}
        elif op == "Gelu":
            if attribute(node, "approximate", "none") != "none":
                raise Decline
            layer, args = keras.layers.Activation, {"activation": "gelu"}
        elif op == "Clip":
            present = [len(node.inputs) > i and node.inputs[i] is not None for i in (1, 2)]
            given = [self._fixed(node, i) if there else None for i, there in zip((1, 2), present)]
            low = attribute(node, "min", None) if given[0] is None else given[0]
            high = attribute(node, "max", None) if given[1] is None else given[1]
            if low is None or float(low) != 0.0:
                raise Decline
            layer, args = keras.layers.ReLU, {"max_value": None if high is None else float(high)}
        elif op in ("Softmax", "LogSoftmax"):
            axis = self._softmax_axis(node, source.rank)
            keras_axis = -1 if axis == -1 else source.perm.index(axis)
            keras_axis = -1 if keras_axis == source.rank - 1 else keras_axis
            if op == "LogSoftmax":
                if keras_axis != -1:
                    raise Decline
                layer, args = keras.layers.Activation, {"activation": "log_softmax"}
            else:
                layer, args = keras.layers.Softmax, {"axis": keras_axis}
        else:  # PRelu
            slope = self._own_parameter(node, 1)
            layer, args, weights = self._prelu(source, slope)
        out = self._layer(node, layer(**args, name=self._name(node)), source.keras, weights=weights)
        self._set(node, Tensor(out, source.perm))

    def _silu_mul(self, sigmoid: ir.Node) -> ir.Node | None:
        """The Mul of ``x · Sigmoid(x)`` (SiLU as PyTorch writes it) that alone reads `sigmoid`."""
        mul = self._single_reader(sigmoid.outputs[0])
        if mul is None or mul.op_type != "Mul" or id(mul) not in self.plan.node_ids:
            return None
        return mul if sigmoid.inputs[0] in mul.inputs else None

    def _prelu(self, source: Tensor, slope: np.ndarray):
        """PRelu → PReLU with its slopes as a trainable weight, shared over broadcast axes."""
        shape = onnx_shape(source)
        if slope.ndim > len(shape) or any(d is None for d in source.keras.shape[1:]):
            raise Decline
        full = slope.reshape([1] * (len(shape) - slope.ndim) + list(slope.shape))
        alpha = full.transpose(source.perm)[0]  # Keras alpha has no batch axis
        shared = [i + 1 for i, d in enumerate(alpha.shape) if d == 1 and source.keras.shape[i + 1] != 1]
        alpha = np.broadcast_to(alpha, [1 if i + 1 in shared else d for i, d in enumerate(source.keras.shape[1:])])
        return self.keras.layers.PReLU, {"shared_axes": shared or None}, [alpha.astype(np.float32)]
