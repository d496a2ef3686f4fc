"""Graphs in the exact forms that other exporters write (see shared exporter-forms.md).

PyTorch and scikit-learn are not dependencies, so tests build their exporters' output with
`onnx.helper`. Every builder returns a checked `onnx.ModelProto` with seeded random weights.
Append new builders at the end of this file.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tensor(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def finish(graph: onnx.GraphProto, opset: int = 17, extra_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    """Wrap `graph` in a model of the given opset, check it and return it."""
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(domain, version) for domain, version in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="forms")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def linear(module: str, x: str, y: str) -> onnx.NodeProto:
    """`nn.Linear` called `module` on a 2-D input, as PyTorch writes it: Gemm, transB=1."""
    return helper.make_node(
        "Gemm", [x, f"{module}.weight", f"{module}.bias"], [y], name=f"/{module}/Gemm", alpha=1.0, beta=1.0, transB=1
    )


def main_graph(nodes: list, inits: list, input_dims: list, output_dims: list) -> onnx.GraphProto:
    """PyTorch's graph: one float input `input`, one float output `output`."""
    return helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_dims)],
        inits,
    )


def pytorch_mlp(inputs: int = 20, hidden: int = 16, outputs: int = 5, seed: int = 0) -> onnx.ModelProto:
    """`nn.Sequential(Linear, ReLU, Linear)` as torch.onnx.export writes it (classic exporter).

    Gemm with transB=1 and weights [out, in] named `<module>.weight`; nodes `/fc1/Gemm`.
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes = [
        linear("fc1", "input", "/fc1/Gemm_output_0"),
        helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        linear("fc2", "/relu/Relu_output_0", "output"),
    ]
    inits = [
        tensor("fc1.weight", rng.normal(0, 0.3, (hidden, inputs)).astype(f32)),
        tensor("fc1.bias", rng.normal(0, 0.1, hidden).astype(f32)),
        tensor("fc2.weight", rng.normal(0, 0.3, (outputs, hidden)).astype(f32)),
        tensor("fc2.bias", rng.normal(0, 0.1, outputs).astype(f32)),
    ]
    graph = main_graph(nodes, inits, ["batch", inputs], ["batch", outputs])
    return finish(graph)


def pytorch_mlp_bn(inputs: int = 12, hidden: int = 10, outputs: int = 4, seed: int = 1) -> onnx.ModelProto:
    """`Linear → BatchNorm1d → ReLU → Linear` in eval mode: a BatchNormalization node."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes = [
        linear("fc1", "input", "/fc1/Gemm_output_0"),
        helper.make_node(
            "BatchNormalization",
            ["/fc1/Gemm_output_0", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
            ["/bn1/BatchNormalization_output_0"],
            name="/bn1/BatchNormalization",
            epsilon=1e-5,
            momentum=0.9,
        ),
        helper.make_node("Relu", ["/bn1/BatchNormalization_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        linear("fc2", "/relu/Relu_output_0", "output"),
    ]
    inits = [
        tensor("fc1.weight", rng.normal(0, 0.3, (hidden, inputs)).astype(f32)),
        tensor("fc1.bias", rng.normal(0, 0.1, hidden).astype(f32)),
        tensor("bn1.weight", rng.uniform(0.5, 1.5, hidden).astype(f32)),
        tensor("bn1.bias", rng.normal(0, 0.1, hidden).astype(f32)),
        tensor("bn1.running_mean", rng.normal(0, 0.2, hidden).astype(f32)),
        tensor("bn1.running_var", rng.uniform(0.5, 2.0, hidden).astype(f32)),
        tensor("fc2.weight", rng.normal(0, 0.3, (outputs, hidden)).astype(f32)),
        tensor("fc2.bias", rng.normal(0, 0.1, outputs).astype(f32)),
    ]
    graph = main_graph(nodes, inits, ["batch", inputs], ["batch", outputs])
    return finish(graph)


def pytorch_cnn(channels: int = 4, size: int = 8, outputs: int = 10, seed: int = 2) -> onnx.ModelProto:
    """`Conv2d(1, C, 3, padding=1) → ReLU → MaxPool2d(2) → Flatten → Linear` in NCHW.

    Flatten is channel-major (the feature index is c·H·W + h·W + w).
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    pooled = size // 2
    features = channels * pooled * pooled
    nodes = [
        helper.make_node(
            "Conv",
            ["input", "conv1.weight", "conv1.bias"],
            ["/conv1/Conv_output_0"],
            name="/conv1/Conv",
            dilations=[1, 1],
            group=1,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[1, 1],
        ),
        helper.make_node("Relu", ["/conv1/Conv_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node(
            "MaxPool",
            ["/relu/Relu_output_0"],
            ["/pool/MaxPool_output_0"],
            name="/pool/MaxPool",
            ceil_mode=0,
            kernel_shape=[2, 2],
            pads=[0, 0, 0, 0],
            strides=[2, 2],
        ),
        helper.make_node(
            "Flatten", ["/pool/MaxPool_output_0"], ["/flatten/Flatten_output_0"], name="/flatten/Flatten", axis=1
        ),
        linear("fc", "/flatten/Flatten_output_0", "output"),
    ]
    inits = [
        tensor("conv1.weight", rng.normal(0, 0.3, (channels, 1, 3, 3)).astype(f32)),
        tensor("conv1.bias", rng.normal(0, 0.1, channels).astype(f32)),
        tensor("fc.weight", rng.normal(0, 0.1, (outputs, features)).astype(f32)),
        tensor("fc.bias", rng.normal(0, 0.1, outputs).astype(f32)),
    ]
    graph = main_graph(nodes, inits, ["batch", 1, size, size], ["batch", outputs])
    return finish(graph)


def sklearn_mlp(inputs: int = 4, hidden: int = 8, classes: int = 3, seed: int = 3) -> onnx.ModelProto:
    """`MLPClassifier(hidden_layer_sizes=(H,))` as skl2onnx writes it with `zipmap=False`.

    Input Cast; MatMul [in, out]; Add with a 2-D bias [1, units]; two outputs: `label` (int64,
    ArgMax → ArrayFeatureExtractor (ai.onnx.ml) → Reshape → Cast) and `probabilities`. The batch
    dimension has no name, and the trained weights include subnormal values.
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    coefficient = rng.normal(0, 0.5, (inputs, hidden)).astype(f32)
    coefficient[0, :2] = np.float32(1e-40)  # subnormal, as trained sklearn weights can be
    nodes = [
        helper.make_node("Cast", ["input"], ["cast_input"], name="Cast", to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["cast_input", "coefficient"], ["mul_result"], name="MatMul"),
        helper.make_node("Add", ["mul_result", "intercepts"], ["add_result"], name="Add"),
        helper.make_node("Relu", ["add_result"], ["next_activations"], name="Relu"),
        helper.make_node("MatMul", ["next_activations", "coefficient1"], ["mul_result1"], name="MatMul1"),
        helper.make_node("Add", ["mul_result1", "intercepts1"], ["add_result1"], name="Add1"),
        helper.make_node("Softmax", ["add_result1"], ["probabilities"], name="Softmax", axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["argmax_output"], name="ArgMax", axis=1, keepdims=0),
        helper.make_node(
            "ArrayFeatureExtractor",
            ["classes", "argmax_output"],
            ["array_feature_extractor_result"],
            name="ArrayFeatureExtractor",
            domain="ai.onnx.ml",
        ),
        helper.make_node(
            "Reshape", ["array_feature_extractor_result", "shape_tensor"], ["reshaped_result"], name="Reshape"
        ),
        helper.make_node("Cast", ["reshaped_result"], ["label"], name="Cast1", to=TensorProto.INT64),
    ]
    inits = [
        tensor("coefficient", coefficient),
        tensor("intercepts", rng.normal(0, 0.1, (1, hidden)).astype(f32)),
        tensor("coefficient1", rng.normal(0, 0.5, (hidden, classes)).astype(f32)),
        tensor("intercepts1", rng.normal(0, 0.1, (1, classes)).astype(f32)),
        tensor("classes", np.arange(classes, dtype=np.int64)),
        tensor("shape_tensor", np.array([-1], dtype=np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, inputs])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes]),
        ],
        inits,
    )
    return finish(graph, opset=13, extra_opsets={"ai.onnx.ml": 1})


def pytorch_convnet(channels: int = 4, size: int = 9, outputs: int = 6, seed: int = 4) -> onnx.ModelProto:
    """A small PyTorch-style CNN mixing the ops a converter must place in the right layout.

    `Conv2d(2, C, 3, stride=2, padding=1)` (pads that are not TensorFlow's SAME) →
    `BatchNorm2d` → `PReLU(C)` (slope `[C, 1, 1]`) → residual `x + Conv2d(C, C, 3, padding=1)(x)`
    → `cat([x, conv1x1(x)], dim=1)` → `AvgPool2d(3, stride=1, padding=1)` (counting the
    padding, PyTorch's default) → `MaxPool2d(2)` → `Flatten` (channel-major) → `Linear` →
    `LeakyReLU(0.1)` → `Linear` → `Softmax(dim=1)`; one more output taps the pooled map through
    `AdaptiveAvgPool2d(1)` → `Flatten` → `Sigmoid`.
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    c = channels
    half = (size + 1) // 2  # stride-2 conv with padding 1
    pooled = half // 2
    features = 2 * c * pooled * pooled

    def conv(name: str, x: str, out: str, weight_shape, pads, strides=(1, 1)):
        return helper.make_node(
            "Conv",
            [x, f"{name}.weight", f"{name}.bias"],
            [out],
            name=f"/{name}/Conv",
            dilations=[1, 1],
            group=1,
            kernel_shape=list(weight_shape[2:]),
            pads=list(pads),
            strides=list(strides),
        )

    nodes = [
        conv("conv1", "input", "/conv1/Conv_output_0", (c, 2, 3, 3), (1, 1, 1, 1), (2, 2)),
        helper.make_node(
            "BatchNormalization",
            ["/conv1/Conv_output_0", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
            ["/bn1/BatchNormalization_output_0"],
            name="/bn1/BatchNormalization",
            epsilon=1e-5,
            momentum=0.9,
        ),
        helper.make_node(
            "PRelu", ["/bn1/BatchNormalization_output_0", "act1.weight"], ["/act1/PRelu_output_0"], name="/act1/PRelu"
        ),
        conv("conv2", "/act1/PRelu_output_0", "/conv2/Conv_output_0", (c, c, 3, 3), (1, 1, 1, 1)),
        helper.make_node("Add", ["/act1/PRelu_output_0", "/conv2/Conv_output_0"], ["/Add_output_0"], name="/Add"),
        conv("side", "/Add_output_0", "/side/Conv_output_0", (c, c, 1, 1), (0, 0, 0, 0)),
        helper.make_node(
            "Concat", ["/Add_output_0", "/side/Conv_output_0"], ["/Concat_output_0"], name="/Concat", axis=1
        ),
        helper.make_node(
            "AveragePool",
            ["/Concat_output_0"],
            ["/avg/AveragePool_output_0"],
            name="/avg/AveragePool",
            ceil_mode=0,
            count_include_pad=1,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[1, 1],
        ),
        helper.make_node(
            "MaxPool",
            ["/avg/AveragePool_output_0"],
            ["/pool/MaxPool_output_0"],
            name="/pool/MaxPool",
            ceil_mode=0,
            kernel_shape=[2, 2],
            pads=[0, 0, 0, 0],
            strides=[2, 2],
        ),
        helper.make_node(
            "Flatten", ["/pool/MaxPool_output_0"], ["/flatten/Flatten_output_0"], name="/flatten/Flatten", axis=1
        ),
        linear("fc1", "/flatten/Flatten_output_0", "/fc1/Gemm_output_0"),
        helper.make_node(
            "LeakyRelu", ["/fc1/Gemm_output_0"], ["/act2/LeakyRelu_output_0"], name="/act2/LeakyRelu", alpha=0.1
        ),
        linear("fc2", "/act2/LeakyRelu_output_0", "/fc2/Gemm_output_0"),
        helper.make_node("Softmax", ["/fc2/Gemm_output_0"], ["output"], name="/softmax/Softmax", axis=1),
        helper.make_node(
            "GlobalAveragePool",
            ["/avg/AveragePool_output_0"],
            ["/gap/GlobalAveragePool_output_0"],
            name="/gap/GlobalAveragePool",
        ),
        helper.make_node(
            "Flatten", ["/gap/GlobalAveragePool_output_0"], ["/gap/Flatten_output_0"], name="/gap/Flatten", axis=1
        ),
        helper.make_node("Sigmoid", ["/gap/Flatten_output_0"], ["pooled"], name="/gap/Sigmoid"),
    ]
    inits = [
        tensor("conv1.weight", rng.normal(0, 0.4, (c, 2, 3, 3)).astype(f32)),
        tensor("conv1.bias", rng.normal(0, 0.1, c).astype(f32)),
        tensor("bn1.weight", rng.uniform(0.5, 1.5, c).astype(f32)),
        tensor("bn1.bias", rng.normal(0, 0.1, c).astype(f32)),
        tensor("bn1.running_mean", rng.normal(0, 0.2, c).astype(f32)),
        tensor("bn1.running_var", rng.uniform(0.5, 2.0, c).astype(f32)),
        tensor("act1.weight", rng.uniform(0.05, 0.4, (c, 1, 1)).astype(f32)),
        tensor("conv2.weight", rng.normal(0, 0.3, (c, c, 3, 3)).astype(f32)),
        tensor("conv2.bias", rng.normal(0, 0.1, c).astype(f32)),
        tensor("side.weight", rng.normal(0, 0.3, (c, c, 1, 1)).astype(f32)),
        tensor("side.bias", rng.normal(0, 0.1, c).astype(f32)),
        tensor("fc1.weight", rng.normal(0, 0.2, (8, features)).astype(f32)),
        tensor("fc1.bias", rng.normal(0, 0.1, 8).astype(f32)),
        tensor("fc2.weight", rng.normal(0, 0.3, (outputs, 8)).astype(f32)),
        tensor("fc2.bias", rng.normal(0, 0.1, outputs).astype(f32)),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, size, size])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs]),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 2 * c]),
        ],
        inits,
    )
    return finish(graph)


def pytorch_transformer_ffn(
    d_model: int = 8, hidden: int = 16, seq: int = 5, gelu: str = "erf", embed: bool = False, seed: int = 5
) -> onnx.ModelProto:
    """A pre-norm transformer feed-forward block, `x + fc2(gelu(fc1(layer_norm(x))))`, as
    torch.onnx.export writes it for a 3-D input: LayerNormalization, MatMul with `onnx::MatMul_N`
    weights [in, out] and an Add with the bias FIRST.

    gelu="erf": opset 17, GELU as Div/Erf/Add/Mul/Mul with scalar Constant nodes.
    gelu="op": opset 20, the Gelu op.
    embed=True: the residual stream comes from a Linear `/embed/MatMul` on the input instead of
    the graph input itself.
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes, inits = [], []
    x = "input"
    if embed:
        nodes += [
            helper.make_node("MatMul", ["input", "onnx::MatMul_90"], ["/embed/MatMul_output_0"], name="/embed/MatMul"),
            helper.make_node(
                "Add", ["embed.bias", "/embed/MatMul_output_0"], ["/embed/Add_output_0"], name="/embed/Add"
            ),
        ]
        inits += [
            tensor("onnx::MatMul_90", rng.normal(0, 0.4, (d_model, d_model)).astype(f32)),
            tensor("embed.bias", rng.normal(0, 0.1, d_model).astype(f32)),
        ]
        x = "/embed/Add_output_0"
    nodes += [
        helper.make_node(
            "LayerNormalization",
            [x, "norm.weight", "norm.bias"],
            ["/norm/LayerNormalization_output_0"],
            name="/norm/LayerNormalization",
            axis=-1,
            epsilon=1e-5,
        ),
        helper.make_node(
            "MatMul",
            ["/norm/LayerNormalization_output_0", "onnx::MatMul_91"],
            ["/fc1/MatMul_output_0"],
            name="/fc1/MatMul",
        ),
        helper.make_node("Add", ["fc1.bias", "/fc1/MatMul_output_0"], ["/fc1/Add_output_0"], name="/fc1/Add"),
    ]
    h = "/fc1/Add_output_0"
    if gelu == "erf":

        def scalar(name: str, value: float):
            return helper.make_node(
                "Constant",
                [],
                [name],
                name=name.replace("_output_0", ""),
                value=helper.make_tensor("value", TensorProto.FLOAT, [], [value]),
            )

        nodes += [
            scalar("/act/Constant_output_0", 1.4142135381698608),
            helper.make_node("Div", [h, "/act/Constant_output_0"], ["/act/Div_output_0"], name="/act/Div"),
            helper.make_node("Erf", ["/act/Div_output_0"], ["/act/Erf_output_0"], name="/act/Erf"),
            scalar("/act/Constant_1_output_0", 1.0),
            helper.make_node(
                "Add", ["/act/Erf_output_0", "/act/Constant_1_output_0"], ["/act/Add_output_0"], name="/act/Add"
            ),
            helper.make_node("Mul", [h, "/act/Add_output_0"], ["/act/Mul_output_0"], name="/act/Mul"),
            scalar("/act/Constant_2_output_0", 0.5),
            helper.make_node(
                "Mul", ["/act/Mul_output_0", "/act/Constant_2_output_0"], ["/act/Mul_1_output_0"], name="/act/Mul_1"
            ),
        ]
        a, opset = "/act/Mul_1_output_0", 17
    else:
        nodes.append(helper.make_node("Gelu", [h], ["/act/Gelu_output_0"], name="/act/Gelu"))
        a, opset = "/act/Gelu_output_0", 20
    nodes += [
        helper.make_node("MatMul", [a, "onnx::MatMul_92"], ["/fc2/MatMul_output_0"], name="/fc2/MatMul"),
        helper.make_node("Add", ["fc2.bias", "/fc2/MatMul_output_0"], ["/fc2/Add_output_0"], name="/fc2/Add"),
        helper.make_node("Add", [x, "/fc2/Add_output_0"], ["output"], name="/Add"),
    ]
    inits += [
        tensor("norm.weight", rng.uniform(0.5, 1.5, d_model).astype(f32)),
        tensor("norm.bias", rng.normal(0, 0.1, d_model).astype(f32)),
        tensor("onnx::MatMul_91", rng.normal(0, 0.3, (d_model, hidden)).astype(f32)),
        tensor("fc1.bias", rng.normal(0, 0.1, hidden).astype(f32)),
        tensor("onnx::MatMul_92", rng.normal(0, 0.3, (hidden, d_model)).astype(f32)),
        tensor("fc2.bias", rng.normal(0, 0.1, d_model).astype(f32)),
    ]
    graph = main_graph(nodes, inits, ["batch", seq, d_model], ["batch", seq, d_model])
    model = finish(graph, opset=opset) if opset < 20 else _finish_ir9(graph, opset)
    return model


def _finish_ir9(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    """Like `finish`, for opsets that need IR version 9 or later."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="forms")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def pytorch_swiglu(d_model: int = 8, hidden: int = 12, seq: int = 5, seed: int = 6) -> onnx.ModelProto:
    """A LLaMA-style SwiGLU feed-forward block, `x + down(silu(gate(n)) * up(n))` with
    `n = layer_norm(x)`, bias-free Linears on a 3-D input (MatMul, weights [in, out]) and SiLU as
    PyTorch exports it (Sigmoid then Mul), at opset 17."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    n = "/norm/LayerNormalization_output_0"
    nodes = [
        helper.make_node(
            "LayerNormalization",
            ["input", "norm.weight", "norm.bias"],
            [n],
            name="/norm/LayerNormalization",
            axis=-1,
            epsilon=1e-5,
        ),
        helper.make_node("MatMul", [n, "onnx::MatMul_70"], ["/gate/MatMul_output_0"], name="/gate/MatMul"),
        helper.make_node("Sigmoid", ["/gate/MatMul_output_0"], ["/act/Sigmoid_output_0"], name="/act/Sigmoid"),
        helper.make_node(
            "Mul", ["/gate/MatMul_output_0", "/act/Sigmoid_output_0"], ["/act/Mul_output_0"], name="/act/Mul"
        ),
        helper.make_node("MatMul", [n, "onnx::MatMul_71"], ["/up/MatMul_output_0"], name="/up/MatMul"),
        helper.make_node("Mul", ["/act/Mul_output_0", "/up/MatMul_output_0"], ["/Mul_output_0"], name="/Mul"),
        helper.make_node(
            "MatMul", ["/Mul_output_0", "onnx::MatMul_72"], ["/down/MatMul_output_0"], name="/down/MatMul"
        ),
        helper.make_node("Add", ["input", "/down/MatMul_output_0"], ["output"], name="/Add"),
    ]
    inits = [
        tensor("norm.weight", rng.uniform(0.5, 1.5, d_model).astype(f32)),
        tensor("norm.bias", rng.normal(0, 0.1, d_model).astype(f32)),
        tensor("onnx::MatMul_70", rng.normal(0, 0.3, (d_model, hidden)).astype(f32)),
        tensor("onnx::MatMul_71", rng.normal(0, 0.3, (d_model, hidden)).astype(f32)),
        tensor("onnx::MatMul_72", rng.normal(0, 0.3, (hidden, d_model)).astype(f32)),
    ]
    graph = main_graph(nodes, inits, ["batch", seq, d_model], ["batch", seq, d_model])
    return finish(graph)


def single_channel_conv(seed: int = 0) -> onnx.ModelProto:
    """`Conv2d(3, 1, 3, padding=1, bias=False) → Flatten → Linear(25, 2, bias=False)` on 5×5 inputs.

    One output channel: onnxruntime computes such a Conv with another kernel than a Conv with
    several, so widening it changes the old channel's rounding (benchmarks/conv_alignment.py).
    """
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node(
                "Conv", ["input", "conv.weight"], ["c"], name="/conv/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Flatten", ["c"], ["f"], name="/flatten/Flatten", axis=1),
            helper.make_node("Gemm", ["f", "fc.weight"], ["output"], name="/fc/Gemm", transB=1),
        ],
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 5, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [
            tensor("conv.weight", rng.normal(size=(1, 3, 3, 3)).astype(np.float32)),
            tensor("fc.weight", rng.normal(size=(2, 25)).astype(np.float32)),
        ],
    )
    return finish(graph)
