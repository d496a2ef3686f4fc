"""Random graphs for the widening property tests, built from hypothesis draws.

`dense_graph` and `conv_graph` compose blocks in the forms exporters write (PyTorch Gemm with
transB=1, MatMul + Add with the bias in either position and 1-D or 2-D, BatchNormalization and
tf2onnx's folded Mul + Add, Erf-GELU, SiLU, residual Adds, Concat branches, SwiGLU, tf2onnx's
NHWC Transposes and its dynamic-batch Flatten chain). Each returns a checked model and the
layers that may be widened (every layer but the last, which feeds the graph output).
"""

from __future__ import annotations

import numpy as np
import onnx
from forms import finish, tensor
from hypothesis import strategies as st
from onnx import TensorProto, helper

ACTIVATIONS = ("none", "Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu", "Softplus", "gelu-erf", "silu", "Clip")


class _Builder:
    """Collects nodes and initializers; names every node like PyTorch's exporter does."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.layers: list[str] = []

    def name(self, stem: str) -> str:
        self.count += 1
        return f"/{stem}_{self.count}"

    def const(self, stem: str, array) -> str:
        name = f"{stem}_{self.count}.c{len(self.inits)}"
        self.inits.append(tensor(name, np.asarray(array)))
        return name

    def node(self, op: str, inputs: list[str], stem: str | None = None, **attrs) -> str:
        name = self.name(stem or op.lower())
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def weights(self, *shape) -> np.ndarray:
        return self.rng.normal(0, 0.5, shape).astype(np.float32)

    def activation(self, x: str, kind: str, channels: int, channel_axis_rank: int | None = None) -> str:
        """Apply `kind`; PRelu gets a per-channel slope shaped for NCHW when `channel_axis_rank`."""
        if kind == "none":
            return x
        if kind == "gelu-erf":  # torch.onnx at opset 17: Div, Erf, Add, Mul, Mul with scalar Constants
            sqrt2 = self.node(
                "Constant", [], value=helper.make_tensor("v", TensorProto.FLOAT, [], [1.4142135381698608])
            )
            one = self.node("Constant", [], value=helper.make_tensor("v", TensorProto.FLOAT, [], [1.0]))
            half = self.node("Constant", [], value=helper.make_tensor("v", TensorProto.FLOAT, [], [0.5]))
            erf = self.node("Erf", [self.node("Div", [x, sqrt2])])
            return self.node("Mul", [self.node("Mul", [x, self.node("Add", [erf, one])]), half])
        if kind == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        if kind == "PRelu":
            shape = (channels, 1, 1) if channel_axis_rank == 4 else (channels,)
            return self.node("PRelu", [x, self.const("slope", self.rng.uniform(0.05, 0.4, shape).astype(np.float32))])
        if kind == "LeakyRelu":
            return self.node("LeakyRelu", [x], alpha=0.1)
        if kind == "Clip":
            return self.node("Clip", [x, self.const("lo", np.float32(-1.5)), self.const("hi", np.float32(1.5))])
        return self.node(kind, [x])

    def norm(self, x: str, kind: str, channels: int, shape_tail: tuple[int, ...] = ()) -> str:
        """BatchNormalization node, or tf2onnx's folded form Mul + Add with per-channel constants."""
        if kind == "bn":
            params = [
                self.rng.uniform(0.5, 1.5, channels),
                self.rng.normal(0, 0.2, channels),
                self.rng.normal(0, 0.2, channels),
                self.rng.uniform(0.5, 1.5, channels),
            ]
            names = [self.const(p, a.astype(np.float32)) for p, a in zip(("scale", "B", "mean", "var"), params)]
            return self.node("BatchNormalization", [x, *names], epsilon=1e-5)
        if kind == "mul-add":
            shape = (1, channels, *shape_tail)
            mul = self.node("Mul", [x, self.const("mul", self.rng.uniform(0.5, 1.5, shape).astype(np.float32))])
            return self.node("Add", [mul, self.const("add", self.rng.normal(0, 0.2, shape).astype(np.float32))])
        return x

    def dense(self, draw, x: str, width: int, units: int) -> str:
        """A Gemm (any transA/transB, optional 1-D or 2-D bias) or MatMul (+ Add, bias first or second)."""
        kind = draw(st.sampled_from(["gemm", "matmul", "matmul-add"]))
        if kind == "gemm":
            trans_a, trans_b = draw(st.booleans()), draw(st.booleans())
            a = self.node("Transpose", [x], perm=[1, 0]) if trans_a else x
            weight = self.weights(units, width) if trans_b else self.weights(width, units)
            inputs = [a, self.const("weight", weight)]
            bias = draw(st.sampled_from(["none", "1d", "2d"]))
            if bias != "none":
                inputs.append(self.const("bias", self.weights(*((units,) if bias == "1d" else (1, units)))))
            out = self.node(
                "Gemm",
                inputs,
                "gemm",
                transA=int(trans_a),
                transB=int(trans_b),
                alpha=draw(st.sampled_from([1.0, 0.5])),
            )
            self.layers.append(self.nodes[-1].name)
            return out
        out = self.node("MatMul", [x, self.const("weight", self.weights(width, units))], "matmul")
        self.layers.append(self.nodes[-1].name)
        if kind == "matmul-add":
            bias = self.const("bias", self.weights(*draw(st.sampled_from([(units,), (1, units)]))))
            out = self.node("Add", [bias, out] if draw(st.booleans()) else [out, bias])
        return out

    def model(self, inputs: list, output: str, outputs: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "main_graph",
            inputs,
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", outputs])],
            self.inits,
        )
        model = finish(graph)
        model.ir_version = 8
        return model


@st.composite
def dense_graph(draw) -> tuple[onnx.ModelProto, list[str]]:
    """Chains of dense blocks with activations, norms, residual Adds, Concat branches and SwiGLU."""
    b = _Builder(draw(st.integers(0, 2**16)))
    width = draw(st.integers(2, 5))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])]
    x = b.dense(draw, "input", width, units := draw(st.integers(2, 6)))
    width = units
    growable = True  # x comes from layers through pass-through nodes (a residual Add can couple them)
    for _ in range(draw(st.integers(1, 3))):
        block = draw(
            st.sampled_from(["plain", "residual", "concat", "swiglu"] if growable else ["plain", "concat", "swiglu"])
        )
        growable = block != "concat"
        if block == "plain":
            units = draw(st.integers(2, 6))
            x = b.dense(draw, x, width, units)
            width = units
        elif block == "residual":
            y = b.dense(draw, x, width, width)
            x = b.node("Add", [x, b.activation(y, draw(st.sampled_from(ACTIVATIONS)), width)])
        elif block == "concat":
            left, right = draw(st.integers(2, 4)), draw(st.integers(2, 4))
            parts = [b.dense(draw, x, width, left), b.dense(draw, x, width, right)]
            x = b.node("Concat", parts, axis=draw(st.sampled_from([1, -1])))
            width = left + right
        else:
            hidden = draw(st.integers(2, 6))
            gate = b.dense(draw, x, width, hidden)
            up = b.dense(draw, x, width, hidden)
            x = b.node("Mul", [b.activation(gate, "silu", hidden), up])
            width = hidden
        x = b.activation(x, draw(st.sampled_from(ACTIVATIONS)), width)
        x = b.norm(x, draw(st.sampled_from(["none", "bn", "mul-add"])), width)
    outputs = draw(st.integers(1, 4))
    out = b.dense(draw, x, width, outputs)
    last = b.layers.pop()
    b.nodes.append(helper.make_node("Identity", [out], ["output"], name="/output/Identity"))
    assert last
    return b.model(inputs, "output", outputs), b.layers


@st.composite
def conv_graph(draw) -> tuple[onnx.ModelProto, list[str]]:
    """Conv chains in NCHW or in tf2onnx's NHWC-with-Transposes form, ending in a flatten
    (PyTorch Flatten, NHWC Transpose + constant Reshape, or tf2onnx's dynamic-batch chain) or a
    global pool, then Gemm or MatMul."""
    b = _Builder(draw(st.integers(0, 2**16)))
    nhwc = draw(st.booleans())
    size, channels = 5, draw(st.integers(1, 3))
    shape = ["batch", size, size, channels] if nhwc else ["batch", channels, size, size]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)]
    x = b.node("Transpose", ["input"], perm=[0, 3, 1, 2]) if nhwc else "input"
    for _ in range(draw(st.integers(1, 3))):
        # At least 2: onnxruntime computes a single-output-channel Conv with another kernel, so
        # widening one from 1 channel changes its rounding (README, benchmarks/conv_alignment.py).
        units = draw(st.integers(2, 6))
        kernel = draw(st.sampled_from([1, 3]))
        inputs_conv = [x, b.const("weight", b.weights(units, channels, kernel, kernel))]
        if draw(st.booleans()):
            inputs_conv.append(b.const("bias", b.weights(units)))
        x = b.node("Conv", inputs_conv, "conv", kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4)
        b.layers.append(b.nodes[-1].name)
        channels = units
        x = b.activation(x, draw(st.sampled_from(["none", "Relu", "PRelu", "LeakyRelu", "Tanh"])), channels, 4)
        if nhwc:  # tf2onnx: back to NHWC for the folded BatchNormalization, then to NCHW again
            x = b.node("Transpose", [x], perm=[0, 2, 3, 1])
            if draw(st.booleans()):
                x = b.node("Mul", [x, b.const("mul", b.rng.uniform(0.5, 1.5, channels).astype(np.float32))])
                x = b.node("Add", [x, b.const("add", b.rng.normal(0, 0.2, channels).astype(np.float32))])
            x = b.node("Transpose", [x], perm=[0, 3, 1, 2])
        else:
            x = b.norm(x, draw(st.sampled_from(["none", "bn", "mul-add"])), channels, (1, 1))
        if draw(st.booleans()):  # a residual Conv of the same width
            y = b.node("Conv", [x, b.const("weight", b.weights(channels, channels, 1, 1))], "conv", kernel_shape=[1, 1])
            b.layers.append(b.nodes[-1].name)
            x = b.node("Add", [x, y])
    if draw(st.booleans()):
        x = b.node(draw(st.sampled_from(["MaxPool", "AveragePool"])), [x], kernel_shape=[2, 2], strides=[1, 1])
        size -= 1
    head = draw(st.sampled_from(["flatten", "nhwc-reshape", "tf2onnx-flatten", "global-pool"]))
    flat = channels * size * size
    if head == "flatten":
        x = b.node("Flatten", [x], axis=1)
    elif head == "nhwc-reshape":
        x = b.node(
            "Reshape", [b.node("Transpose", [x], perm=[0, 2, 3, 1]), b.const("shape", np.array([-1, flat], np.int64))]
        )
    elif head == "tf2onnx-flatten":
        shape_nchw = b.node("Shape", [x])
        nhwc_shape = b.node("Gather", [shape_nchw, b.const("perm", np.array([0, 2, 3, 1], np.int64))])
        batch = b.node(
            "Slice",
            [
                b.node("Cast", [nhwc_shape], to=TensorProto.INT32),
                b.const("starts", np.array([0], np.int32)),
                b.const("ends", np.array([1], np.int32)),
                b.const("axes", np.array([0], np.int32)),
            ],
        )
        target = b.node(
            "Cast",
            [b.node("Concat", [batch, b.const("flat", np.array([flat], np.int32))], axis=0)],
            to=TensorProto.INT64,
        )
        x = b.node("Reshape", [b.node("Transpose", [x], perm=[0, 2, 3, 1]), target])
    else:
        x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
        flat = channels
    outputs = draw(st.integers(1, 3))
    out = b.dense(draw, x, flat, outputs)
    b.layers.pop()
    b.nodes.append(helper.make_node("Identity", [out], ["output"], name="/output/Identity"))
    return b.model(inputs, "output", outputs), b.layers


@st.composite
def widen_plan(draw, layers: list[str]) -> dict[str, int]:
    """A non-empty random subset of `layers`, each with 1–4 new units."""
    chosen = draw(st.lists(st.sampled_from(layers), min_size=1, max_size=min(3, len(layers)), unique=True))
    return {name: draw(st.integers(1, 4)) for name in chosen}
