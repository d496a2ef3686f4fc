"""ONNX graphs without Keras provenance (PyTorch, skl2onnx, hand-built) → a functional Keras model.

The conversion is analyse-first, build-second: `plan_outputs` walks back from the graph outputs
and checks every op it would need (an unsupported op is a `SurgeryError` naming the op and the
node before any Keras layer exists); `GraphBuilder` then walks the graph in order and creates
one ordinary Keras layer per ONNX op or fused pattern.

Rules, case by case:

- ``Gemm`` (constant B, transA=0) and ``MatMul`` with a constant rank-2 right operand, followed
  by an ``Add`` of a constant per-unit bias (either operand order, shape ``[U]`` or ``[1, U]``)
  → ``Dense``. An elementwise activation that is the only reader of the layer's output becomes
  the ``activation`` argument.
- ``Conv`` (2-D kernel, group 1) → ``Conv2D`` with the weight ``[out, in, kh, kw]`` transposed to
  ``[kh, kw, in, out]``; explicit pads become ``padding="same"`` when they equal TensorFlow's
  SAME padding, else a ``ZeroPadding2D`` in front.
- ``BatchNormalization`` → ``BatchNormalization`` (same epsilon and momentum, moving statistics
  from the graph). ``MaxPool``/``AveragePool``/``GlobalAveragePool``/``GlobalMaxPool`` → the
  Keras pooling layers. ``Flatten``/``Reshape`` → ``Flatten``/``Reshape``; ``Transpose`` costs
  no layer (see layouts below). ``Concat`` → ``Concatenate``; ``Add``/``Sub``/``Mul``/``Max``/
  ``Min``/``Sum``/``Mean`` of two computed tensors → the Keras merge layers. ``Dropout`` →
  ``Dropout`` with its ratio; ``Identity`` and a float→float ``Cast`` cost nothing.
- Activations: ``Relu`` (``ReLU``), ``Clip(0, m)`` (``ReLU(max_value=m)``), ``LeakyRelu``,
  ``Elu``, ``PRelu`` (trainable slopes), ``Softmax`` and the parameter-free ones as
  ``Activation``.

Layouts. Keras convolutions are channels-last while ONNX is NCHW. Every converted tensor is
kept as a Keras tensor together with a permutation ``perm`` such that
``keras_tensor == onnx_value.transpose(perm)``; a ``Conv`` asks for NHWC, a ``Flatten`` for
the ONNX order, and a ``Permute`` layer is inserted only where a consumer needs another order.
The model's inputs and outputs are in the ONNX graph's own layout, so the two models are
drop-in interchangeable.

Outputs that carry integer class labels computed through ``ArgMax`` (skl2onnx's ``label``) are
left out: Keras has no argmax layer short of a Lambda. `Conversion.notes` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.graph import attribute, constant_array, consumers, is_constant
from surgery.layers import bias_add
from surgery.tensorflow_runtime import import_tensorflow

if TYPE_CHECKING:
    import keras

#: Activations that become a Dense/Conv2D `activation` argument when they directly follow it.
_FUSABLE = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softplus": "softplus", "Softsign": "softsign"}
#: Parameter-free activations → the name Keras's `Activation` layer takes.
_ACTIVATION_NAMES = {
    **_FUSABLE,
    "Mish": "mish",
    "HardSwish": "hard_silu",
}
_MERGE_OPS = {"Add": "Add", "Sum": "Add", "Sub": "Subtract", "Mul": "Multiply", "Max": "Maximum", "Min": "Minimum", "Mean": "Average"}
#: Ops whose only data input is input 0; the others must be constants.
_FIRST_INPUT_ONLY = {
    "Gemm", "MatMul", "Conv", "BatchNormalization", "PRelu", "Reshape", "Dropout", "Clip",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Transpose",
    "Identity", "Cast", "Softmax", "LogSoftmax", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "Gelu",
    *_ACTIVATION_NAMES,
}
SUPPORTED_OPS = frozenset(_FIRST_INPUT_ONLY | set(_MERGE_OPS) | {"Concat"})
#: ONNX's default Selu constants, which are Keras's.
_SELU = (1.67326319217681884765625, 1.05070102214813232421875)


@dataclass
class Conversion:
    """What `to_keras` built, and what a user should know about it.

    Attributes:
        model: the Keras model.
        source: ``"keras-config"`` (rebuilt from export provenance) or ``"graph"`` (from the ops).
        node_layers: ONNX node name → the Keras layer that now computes it (for name lookup).
        kept_outputs: names of the ONNX outputs the Keras model reproduces, in its output order.
        notes: one-line remarks (dropped outputs, folded layers restored as identity, ...).
    """

    model: "keras.Model"
    source: str
    node_layers: dict[str, str] = field(default_factory=dict)
    kept_outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Tensor:
    """A converted ONNX value: ``keras == onnx_value.transpose(perm)``."""

    keras: Any
    perm: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.perm)


def _identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def _channels_last(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


def _where(node: ir.Node) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"


def _is_label_output(value: ir.Value) -> bool:
    """An integer output computed through ArgMax: skl2onnx's class-label path."""
    if value.dtype is None or not value.dtype.is_integer():
        return False
    stack, seen = [value], set()
    while stack:
        current = stack.pop()
        node = current.producer()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "ArgMax":
            return True
        stack.extend(v for v in node.inputs if v is not None and not is_constant(v))
    return False


def _data_inputs(node: ir.Node) -> list[ir.Value]:
    if node.op_type in _FIRST_INPUT_ONLY:
        return [node.inputs[0]]
    return [v for v in node.inputs if v is not None and not is_constant(v)]


def plan_outputs(model: ir.Model) -> tuple[list[ir.Value], list[ir.Value], set[int]]:
    """Kept outputs, dropped (label) outputs and the ids of the nodes the kept ones need.

    Raises SurgeryError naming the first unsupported op on the way, before anything is built.
    """
    kept = [v for v in model.graph.outputs if not _is_label_output(v)]
    dropped = [v for v in model.graph.outputs if _is_label_output(v)]
    if not kept:
        raise SurgeryError("the graph has no float output to rebuild in Keras")
    needed: set[int] = set()
    stack = list(kept)
    while stack:
        node = stack.pop().producer()
        if node is None or id(node) in needed:
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            domain = f" (domain {node.domain})" if node.domain not in ("", "ai.onnx") else ""
            raise SurgeryError(f"unsupported op {node.op_type}{domain} at node {node.name!r}: to-keras converts {', '.join(sorted(SUPPORTED_OPS))}")
        needed.add(id(node))
        for value in _data_inputs(node):
            if value is None:
                continue
            if is_constant(value):
                raise SurgeryError(f"{_where(node)}: a constant where to-keras needs a computed tensor")
            stack.append(value)
    return kept, dropped, needed


def _sanitise(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", text)).strip("_")


def _tf_same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) for one spatial axis."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class GraphBuilder:
    """Builds the Keras model for one ONNX graph (see the module docstring for the rules)."""

    def __init__(self, model: ir.Model):
        import_tensorflow()
        import keras

        self.keras = keras
        self.model = model
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
        self.values: dict[int, _Tensor] = {}
        self.absorbed: set[int] = set()
        #: Nodes folded into the layer being built (bias Add, activation): they answer to its name.
        self.pending: list[ir.Node] = []
        self.names: set[str] = set()
        self.node_layers: dict[str, str] = {}
        self.weights: list[tuple[Any, list[np.ndarray]]] = []
        self.shapes = self._inferred_shapes()

    # -- helpers -------------------------------------------------------------------------
    def _inferred_shapes(self) -> dict[str, tuple]:
        """Static shapes from ONNX shape inference (only dynamic Reshapes need them)."""
        proto = ir.serde.serialize_model(self.model)
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception:  # a graph shape inference cannot follow still converts without it
            return {}
        shapes = {}
        for info in [*inferred.graph.value_info, *inferred.graph.output]:
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        return shapes

    def _name(self, node: ir.Node, suffix: str = "") -> str:
        parts = [p for p in (node.name or "").split("/") if p]
        if len(parts) > 1 and parts[-1].lower().startswith(node.op_type.lower()):
            parts = parts[:-1]  # PyTorch's "/fc1/Gemm" names the module fc1
        base = _sanitise("_".join(parts)) or node.op_type.lower()
        base = f"{base}_{suffix}" if suffix else base
        if base in self.names and not suffix:  # "/gap/Flatten" after "/gap/GlobalAveragePool"
            base = f"{base}_{node.op_type.lower()}"
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def _layer(self, node: ir.Node, layer, inputs, *, weights: list[np.ndarray] | None = None):
        output = layer(inputs)
        for part in (node, *self.pending):
            if part.name:
                self.node_layers.setdefault(part.name, layer.name)
        self.pending.clear()
        if weights is not None:
            self.weights.append((layer, weights))
        return output

    def _constant(self, node: ir.Node, index: int, what: str) -> np.ndarray:
        value = node.inputs[index] if index < len(node.inputs) else None
        array = constant_array(value)
        if array is None:
            raise SurgeryError(f"{_where(node)}: its {what} must be a constant to become a trainable weight")
        return array.astype(np.float32) if array.dtype.kind == "f" else array

    def _in_layout(self, tensor: _Tensor, perm: tuple[int, ...], node: ir.Node) -> _Tensor:
        """`tensor` permuted to `perm` (a Permute layer when the order differs)."""
        if tensor.perm == perm:
            return tensor
        order = [tensor.perm.index(axis) for axis in perm]
        if order[0] != 0:
            raise SurgeryError(f"{_where(node)}: moving the batch axis is not supported")
        layer = self.keras.layers.Permute(tuple(order[1:]), name=self._name(node, "permute"))
        return _Tensor(layer(tensor.keras), perm)

    def _input(self, node: ir.Node, index: int = 0) -> _Tensor:
        return self.values[id(node.inputs[index])]

    def _absorb(self, node: ir.Node) -> None:
        self.absorbed.add(id(node))
        self.pending.append(node)

    def _single_reader(self, value: ir.Value) -> ir.Node | None:
        users = consumers(value)
        if len(users) != 1 or value.is_graph_output():
            return None
        return users[0]

    def _fuse_activation(self, value: ir.Value, rank: int, *, softmax: bool) -> tuple[str | None, ir.Value]:
        """The activation to fold into the layer producing `value`, and the value it yields.

        Softmax folds only into a layer whose output is in the ONNX order (a Dense): a Conv2D's
        last axis is the channels, not the ONNX last axis.
        """
        reader = self._single_reader(value)
        if reader is None:
            return None, value
        if reader.op_type in _FUSABLE:
            self._absorb(reader)
            return _FUSABLE[reader.op_type], reader.outputs[0]
        if reader.op_type == "Softmax" and softmax and self._softmax_axis(reader, rank) == -1:
            self._absorb(reader)
            return "softmax", reader.outputs[0]
        return None, value

    def _softmax_axis(self, node: ir.Node, rank: int) -> int:
        axis = attribute(node, "axis", -1 if self.opset >= 13 else 1)
        axis = axis + rank if axis < 0 else axis
        if self.opset < 13 and axis != rank - 1:
            raise SurgeryError(f"{_where(node)}: opset {self.opset} Softmax flattens from axis {axis}; only the last axis converts")
        return -1 if axis == rank - 1 else axis

    # -- the walk ------------------------------------------------------------------------
    def build(self) -> Conversion:
        kept, dropped, needed = plan_outputs(self.model)
        inputs = self._inputs()
        for node in self.model.graph:
            if id(node) in needed and id(node) not in self.absorbed:
                self._convert(node)
        outputs = [self._in_layout(self.values[id(v)], _identity(self.values[id(v)].rank), v.producer()).keras for v in kept]
        model_name = _sanitise(self.model.graph.name or "") or "onnx_model"
        keras_model = self.keras.Model(
            inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0], name=model_name
        )
        for layer, weights in self.weights:
            layer.set_weights(weights)
        notes = [
            f"output {v.name!r} ({v.dtype}, class labels through ArgMax) is not rebuilt: Keras has no argmax layer "
            f"without a Lambda; compute it as argmax of {kept[0].name!r} over the last axis"
            + self._label_classes(v)
            for v in dropped
        ]
        return Conversion(keras_model, "graph", self.node_layers, [v.name for v in kept], notes)

    def _label_classes(self, value: ir.Value) -> str:
        """The class list an ArrayFeatureExtractor maps argmax indices to, when there is one."""
        stack, seen = [value], set()
        while stack:
            node = stack.pop().producer()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "ArrayFeatureExtractor":
                classes = constant_array(node.inputs[0])
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
            dims = [d if isinstance(d, int) else None for d in shape]
            if value.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16):
                raise SurgeryError(f"input {value.name!r}: {value.dtype} inputs are not supported (floating point only)")
            tensor = self.keras.Input(shape=tuple(dims[1:]), name=_sanitise(value.name) or "input", dtype=value.dtype.numpy().name)
            self.values[id(value)] = _Tensor(tensor, _identity(len(dims)))
            keras_inputs.append(tensor)
        return keras_inputs

    def _convert(self, node: ir.Node) -> None:
        op = node.op_type
        if op in ("Gemm", "MatMul"):
            self._dense(node)
        elif op == "Conv":
            self._conv(node)
        elif op == "BatchNormalization":
            self._batch_norm(node)
        elif op in ("MaxPool", "AveragePool"):
            self._pool(node)
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            source = self._in_layout(self._input(node), _channels_last(self._input(node).rank), node)
            cls = self.keras.layers.GlobalAveragePooling2D if op == "GlobalAveragePool" else self.keras.layers.GlobalMaxPooling2D
            if source.rank != 4:
                raise SurgeryError(f"{_where(node)}: only 2-D (NCHW) global pooling converts")
            out = self._layer(node, cls(keepdims=True, name=self._name(node)), source.keras)
            self._set(node, _Tensor(out, source.perm))
        elif op in ("Flatten", "Reshape"):
            self._reshape(node)
        elif op == "Transpose":
            source = self._input(node)
            perm = tuple(attribute(node, "perm", list(reversed(range(source.rank)))))
            # keras == v.transpose(p_src) and out = v.transpose(perm): keras == out.transpose(q)
            self._set(node, _Tensor(source.keras, tuple(perm.index(a) for a in source.perm)))
        elif op == "Concat":
            self._concat(node)
        elif op in _MERGE_OPS:
            self._merge(node)
        elif op in ("Identity", "Cast"):
            if op == "Cast" and not ir.DataType(attribute(node, "to", 1)).is_floating_point():
                raise SurgeryError(f"{_where(node)}: a Cast to {ir.DataType(attribute(node, 'to', 1))} has no Keras layer")
            self._set(node, self._input(node))
        elif op == "Dropout":
            rate = attribute(node, "ratio", None)
            if rate is None:
                given = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
                rate = float(given) if given is not None else 0.5
            out = self._layer(node, self.keras.layers.Dropout(rate, name=self._name(node)), self._input(node).keras)
            self._set(node, _Tensor(out, self._input(node).perm))
        else:
            self._activation(node)

    def _set(self, node: ir.Node, tensor: _Tensor, output: ir.Value | None = None) -> None:
        self.values[id(output if output is not None else node.outputs[0])] = tensor

    # -- layers with weights -------------------------------------------------------------
    def _dense(self, node: ir.Node) -> None:
        source = self._input(node)
        if node.op_type == "Gemm":
            if attribute(node, "transA", 0):
                raise SurgeryError(f"{_where(node)}: Gemm with transA=1 has no Dense equivalent")
            kernel = self._constant(node, 1, "weight B")
            kernel = kernel.T if attribute(node, "transB", 0) else kernel
            kernel = kernel * np.float32(attribute(node, "alpha", 1.0))
            bias = None
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                bias = np.broadcast_to(self._constant(node, 2, "bias C"), (1, kernel.shape[1])).reshape(-1)
                bias = bias * np.float32(attribute(node, "beta", 1.0))
            output = node.outputs[0]
        else:
            kernel = self._constant(node, 1, "weight")
            if kernel.ndim != 2:
                raise SurgeryError(f"{_where(node)}: MatMul with a rank-{kernel.ndim} weight has no Dense equivalent")
            bias, output = self._bias_after(node.outputs[0], kernel.shape[1])
        source = self._in_layout(source, _identity(source.rank), node)
        activation, output = self._fuse_activation(output, source.rank, softmax=True)
        layer = self.keras.layers.Dense(
            kernel.shape[1], activation=activation, use_bias=bias is not None, name=self._name(node)
        )
        weights = [kernel] + ([bias.astype(np.float32)] if bias is not None else [])
        out = self._layer(node, layer, source.keras, weights=weights)
        self._set(node, _Tensor(out, source.perm), output)

    def _bias_after(self, value: ir.Value, units: int) -> tuple[np.ndarray | None, ir.Value]:
        """A constant per-unit bias added right after a MatMul (PyTorch: bias first; skl2onnx: [1, U]),
        as `surgery inspect` finds it (`surgery.layers.bias_add`)."""
        add = bias_add(value, units)
        if add is None:
            return None, value
        other = add.inputs[1] if add.inputs[0] is value else add.inputs[0]
        bias = constant_array(other)
        self._absorb(add)
        return bias.reshape(-1).astype(np.float32), add.outputs[0]

    def _conv(self, node: ir.Node) -> None:
        keras = self.keras
        weight = self._constant(node, 1, "weight")
        if weight.ndim != 4:
            raise SurgeryError(f"{_where(node)}: only 2-D convolutions convert (weight rank {weight.ndim})")
        if attribute(node, "group", 1) != 1:
            raise SurgeryError(f"{_where(node)}: grouped convolution (group={attribute(node, 'group', 1)}) is not supported")
        source = self._in_layout(self._input(node), _channels_last(4), node)
        kernel = tuple(weight.shape[2:])
        strides = tuple(attribute(node, "strides", [1, 1]))
        dilations = tuple(attribute(node, "dilations", [1, 1]))
        padding, source_keras = self._padding(node, source, kernel, strides, dilations, padded_value="zero")
        bias = None
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = self._constant(node, 2, "bias")
        activation, output = self._fuse_activation(node.outputs[0], 4, softmax=False)
        layer = keras.layers.Conv2D(
            weight.shape[0], kernel, strides=strides, padding=padding, dilation_rate=dilations,
            activation=activation, use_bias=bias is not None, name=self._name(node),
        )
        weights = [weight.transpose(2, 3, 1, 0)] + ([bias] if bias is not None else [])
        out = self._layer(node, layer, source_keras, weights=weights)
        self._set(node, _Tensor(out, source.perm), output)

    def _padding(self, node, source: _Tensor, kernel, strides, dilations, *, padded_value: str):
        """Keras padding for the node's pads: "valid", "same", or a ZeroPadding2D in front.

        `padded_value` says what the op reads in the padding: "zero" (Conv, AveragePool counting
        the padding: a ZeroPadding2D is exact, and TF's SAME equals it for a Conv) or "ignored"
        (MaxPool, AveragePool without count_include_pad: only TF's SAME reproduces it).
        """
        height, width = source.keras.shape[1], source.keras.shape[2]
        auto_pad = attribute(node, "auto_pad", "NOTSET")
        if auto_pad == "VALID":
            return "valid", source.keras
        if auto_pad == "SAME_UPPER" and not (node.op_type == "AveragePool" and padded_value == "zero"):
            return "same", source.keras
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            raise SurgeryError(f"{_where(node)}: auto_pad={auto_pad} has no Keras equivalent here")
        pads = tuple(attribute(node, "pads", [0, 0, 0, 0]))
        if not any(pads):
            return "valid", source.keras
        if padded_value == "ignored" or node.op_type == "Conv":
            if height is not None and width is not None:
                same_h = _tf_same_pads(height, kernel[0], strides[0], dilations[0])
                same_w = _tf_same_pads(width, kernel[1], strides[1], dilations[1])
                if (pads[0], pads[2]) == same_h and (pads[1], pads[3]) == same_w:
                    return "same", source.keras
        if padded_value != "zero":
            raise SurgeryError(f"{_where(node)}: pads {list(pads)} differ from Keras's 'same' padding")
        layer = self.keras.layers.ZeroPadding2D(((pads[0], pads[2]), (pads[1], pads[3])), name=self._name(node, "pad"))
        return "valid", layer(source.keras)

    def _batch_norm(self, node: ir.Node) -> None:
        if attribute(node, "training_mode", 0):
            raise SurgeryError(f"{_where(node)}: training_mode=1 BatchNormalization is not an inference graph")
        source = self._input(node)
        if source.rank == 4:
            source = self._in_layout(source, _channels_last(4), node)
        weights = [self._constant(node, i, what).reshape(-1) for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
        layer = self.keras.layers.BatchNormalization(
            axis=source.perm.index(1),
            epsilon=float(attribute(node, "epsilon", 1e-5)),
            momentum=float(attribute(node, "momentum", 0.9)),
            name=self._name(node),
        )
        out = self._layer(node, layer, source.keras, weights=weights)
        self._set(node, _Tensor(out, source.perm))

    def _pool(self, node: ir.Node) -> None:
        keras = self.keras
        source = self._in_layout(self._input(node), _channels_last(4), node)
        if source.rank != 4:
            raise SurgeryError(f"{_where(node)}: only 2-D (NCHW) pooling converts")
        kernel = tuple(attribute(node, "kernel_shape", None))
        strides = tuple(attribute(node, "strides", [1, 1]))
        if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
            raise SurgeryError(f"{_where(node)}: dilated pooling has no Keras equivalent")
        average = node.op_type == "AveragePool"
        padded_value = "zero" if average and attribute(node, "count_include_pad", 0) else "ignored"
        padding, source_keras = self._padding(node, source, kernel, strides, (1, 1), padded_value=padded_value)
        if attribute(node, "ceil_mode", 0):
            pads = attribute(node, "pads", [0, 0, 0, 0])
            for axis, size in enumerate(source.keras.shape[1:3]):
                if padding == "same" or size is None or (size + pads[axis] + pads[axis + 2] - kernel[axis]) % strides[axis]:
                    raise SurgeryError(f"{_where(node)}: ceil_mode=1 changes the output size; Keras pools floor")
        cls = keras.layers.AveragePooling2D if average else keras.layers.MaxPooling2D
        out = self._layer(node, cls(kernel, strides=strides, padding=padding, name=self._name(node)), source_keras)
        self._set(node, _Tensor(out, source.perm))

    def _reshape(self, node: ir.Node) -> None:
        source = self._input(node)
        if node.op_type == "Flatten":
            axis = attribute(node, "axis", 1)
            if axis != 1:
                raise SurgeryError(f"{_where(node)}: Flatten with axis={axis} (only axis 1 keeps the batch)")
            target = None
        else:
            target = self._reshape_target(node, source)
        spatial_ones = source.rank == 4 and tuple(source.keras.shape[1:3]) == (1, 1)
        if not (spatial_ones and target is None):  # a 1x1 map flattens the same in either order
            source = self._in_layout(source, _identity(source.rank), node)
        if target is None:
            out = self._layer(node, self.keras.layers.Flatten(name=self._name(node)), source.keras)
        else:
            out = self._layer(node, self.keras.layers.Reshape(target, name=self._name(node)), source.keras)
        self._set(node, _Tensor(out, _identity(len(out.shape))))

    def _reshape_target(self, node: ir.Node, source: _Tensor) -> tuple[int, ...] | None:
        """The Keras Reshape target (without batch), or None for a flatten to [batch, -1]."""
        shape = constant_array(node.inputs[1])
        onnx_shape = [source.keras.shape[source.perm.index(a)] for a in range(source.rank)]
        if shape is not None:
            shape = [int(s) for s in shape.reshape(-1)]
            if attribute(node, "allowzero", 0) and 0 in shape:
                raise SurgeryError(f"{_where(node)}: allowzero=1 Reshape to an empty tensor")
            shape = [onnx_shape[i] if s == 0 else s for i, s in enumerate(shape)]
            if shape[0] not in (-1, None) and -1 not in shape[1:]:
                shape[0] = -1 if onnx_shape[0] is None else shape[0]
            if shape[0] not in (-1, None) and onnx_shape[0] is not None and shape[0] != onnx_shape[0]:
                raise SurgeryError(f"{_where(node)}: Reshape that changes the batch size")
            if shape[0] == -1 and -1 in shape[1:]:
                raise SurgeryError(f"{_where(node)}: Reshape with two inferred dimensions")
            rest = shape[1:]
        else:
            inferred = self.shapes.get(node.outputs[0].name or "")
            if inferred is None or any(d is None for d in inferred[1:]):
                raise SurgeryError(f"{_where(node)}: Reshape to a computed shape that shape inference cannot resolve")
            rest = list(inferred[1:])
        return None if len(rest) == 1 else tuple(rest)

    # -- merges and activations ----------------------------------------------------------
    def _concat(self, node: ir.Node) -> None:
        tensors = [self.values[id(v)] for v in node.inputs]
        perm = tensors[0].perm
        tensors = [self._in_layout(t, perm, node) for t in tensors]
        axis = attribute(node, "axis", 1)
        axis = axis + len(perm) if axis < 0 else axis
        layer = self.keras.layers.Concatenate(axis=perm.index(axis), name=self._name(node))
        self._set(node, _Tensor(self._layer(node, layer, [t.keras for t in tensors]), perm))

    def _merge(self, node: ir.Node) -> None:
        if any(is_constant(v) for v in node.inputs):
            raise SurgeryError(f"{_where(node)}: {node.op_type} with a constant operand that is not a layer's bias has no trainable Keras layer")
        tensors = [self.values[id(v)] for v in node.inputs]
        if len(tensors) == 1:
            self._set(node, tensors[0])
            return
        perm = tensors[0].perm
        tensors = [self._in_layout(t, perm, node) for t in tensors]
        shapes = {tuple(t.keras.shape[1:]) for t in tensors}
        if len(shapes) != 1:
            raise SurgeryError(f"{_where(node)}: broadcasting {node.op_type} of shapes {sorted(shapes)} is not supported")
        if node.op_type == "Sub" and len(tensors) != 2:
            raise SurgeryError(f"{_where(node)}: Sub needs two operands")
        layer = getattr(self.keras.layers, _MERGE_OPS[node.op_type])(name=self._name(node))
        self._set(node, _Tensor(self._layer(node, layer, [t.keras for t in tensors]), perm))

    def _activation(self, node: ir.Node) -> None:
        keras = self.keras
        op = node.op_type
        source = self._input(node)
        name = self._name(node)
        weights = None
        if op == "Relu":
            layer = keras.layers.ReLU(name=name)
        elif op in _ACTIVATION_NAMES:
            layer = keras.layers.Activation(_ACTIVATION_NAMES[op], name=name)
        elif op == "LeakyRelu":
            layer = keras.layers.LeakyReLU(negative_slope=float(attribute(node, "alpha", 0.01)), name=name)
        elif op == "Elu":
            layer = keras.layers.ELU(alpha=float(attribute(node, "alpha", 1.0)), name=name)
        elif op == "Selu":
            if not np.allclose((attribute(node, "alpha", _SELU[0]), attribute(node, "gamma", _SELU[1])), _SELU, rtol=1e-6):
                raise SurgeryError(f"{_where(node)}: Selu with non-default alpha/gamma has no Keras layer")
            layer = keras.layers.Activation("selu", name=name)
        elif op == "HardSigmoid":
            if not np.allclose((attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5)), (1 / 6, 0.5), rtol=1e-6):
                raise SurgeryError(f"{_where(node)}: HardSigmoid alpha/beta differ from Keras's hard_sigmoid (1/6, 0.5)")
            layer = keras.layers.Activation("hard_sigmoid", name=name)
        elif op == "Gelu":
            if attribute(node, "approximate", "none") != "none":
                raise SurgeryError(f"{_where(node)}: tanh-approximated Gelu has no parameter-free Keras activation")
            layer = keras.layers.Activation("gelu", name=name)
        elif op == "Clip":
            low = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else attribute(node, "min", None)
            high = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else attribute(node, "max", None)
            if low is None or float(low) != 0.0:
                raise SurgeryError(f"{_where(node)}: only Clip(min=0, max=m) converts (as ReLU(max_value=m))")
            layer = keras.layers.ReLU(max_value=None if high is None else float(high), name=name)
        elif op in ("Softmax", "LogSoftmax"):
            axis = self._softmax_axis(node, source.rank)
            keras_axis = -1 if axis == -1 else source.perm.index(axis)
            if keras_axis == source.rank - 1:
                keras_axis = -1
            if op == "LogSoftmax":
                if keras_axis != -1:
                    raise SurgeryError(f"{_where(node)}: LogSoftmax over a non-last axis has no Keras layer")
                layer = keras.layers.Activation("log_softmax", name=name)
            else:
                layer = keras.layers.Softmax(axis=keras_axis, name=name)
        elif op == "PRelu":
            slope = self._constant(node, 1, "slope")
            layer, weights = self._prelu(node, source, slope, name)
        else:  # plan_outputs admits only the ops handled above
            raise SurgeryError(f"unsupported op {op} at node {node.name!r}")
        out = self._layer(node, layer, source.keras, weights=weights)
        self._set(node, _Tensor(out, source.perm))

    def _prelu(self, node: ir.Node, source: _Tensor, slope: np.ndarray, name: str):
        """PRelu → PReLU with its slopes as a trainable weight, shared over broadcast axes."""
        shape = [source.keras.shape[source.perm.index(a)] for a in range(source.rank)]
        full = np.broadcast_to(slope, [1] * (len(shape) - slope.ndim) + list(slope.shape))
        full = full.reshape([1] * (len(shape) - full.ndim) + list(full.shape))
        alpha = full.transpose(source.perm)[0]  # Keras alpha has no batch axis
        shared = [i + 1 for i, d in enumerate(alpha.shape) if d == 1 and source.keras.shape[i + 1] != 1]
        layer = self.keras.layers.PReLU(shared_axes=shared or None, name=name)
        return layer, [alpha.astype(np.float32)]


def convert_graph(model: ir.Model) -> Conversion:
    """Build the Keras model for a graph without Keras provenance (see the module docstring)."""
    return GraphBuilder(model).build()
