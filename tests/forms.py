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


def pytorch_mlp(inputs: int = 20, hidden: int = 16, outputs: int = 5, seed: int = 0) -> onnx.ModelProto:
    """`nn.Sequential(Linear, ReLU, Linear)` as torch.onnx.export writes it (classic exporter).

    Gemm with transB=1 and weights [out, in] named `<module>.weight`; nodes `/fc1/Gemm`.
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["/fc1/Gemm_output_0"], name="/fc1/Gemm", alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node("Gemm", ["/relu/Relu_output_0", "fc2.weight", "fc2.bias"], ["output"], name="/fc2/Gemm", alpha=1.0, beta=1.0, transB=1),
    ]
    inits = [
        tensor("fc1.weight", rng.normal(0, 0.3, (hidden, inputs)).astype(f32)),
        tensor("fc1.bias", rng.normal(0, 0.1, hidden).astype(f32)),
        tensor("fc2.weight", rng.normal(0, 0.3, (outputs, hidden)).astype(f32)),
        tensor("fc2.bias", rng.normal(0, 0.1, outputs).astype(f32)),
    ]
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs])],
        inits,
    )
    return finish(graph)


def pytorch_mlp_bn(inputs: int = 12, hidden: int = 10, outputs: int = 4, seed: int = 1) -> onnx.ModelProto:
    """`Linear → BatchNorm1d → ReLU → Linear` in eval mode: a BatchNormalization node."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["/fc1/Gemm_output_0"], name="/fc1/Gemm", alpha=1.0, beta=1.0, transB=1),
        helper.make_node(
            "BatchNormalization",
            ["/fc1/Gemm_output_0", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
            ["/bn1/BatchNormalization_output_0"], name="/bn1/BatchNormalization", epsilon=1e-5, momentum=0.9,
        ),
        helper.make_node("Relu", ["/bn1/BatchNormalization_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node("Gemm", ["/relu/Relu_output_0", "fc2.weight", "fc2.bias"], ["output"], name="/fc2/Gemm", alpha=1.0, beta=1.0, transB=1),
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
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs])],
        inits,
    )
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
            "Conv", ["input", "conv1.weight", "conv1.bias"], ["/conv1/Conv_output_0"], name="/conv1/Conv",
            dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
        ),
        helper.make_node("Relu", ["/conv1/Conv_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node(
            "MaxPool", ["/relu/Relu_output_0"], ["/pool/MaxPool_output_0"], name="/pool/MaxPool",
            ceil_mode=0, kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2],
        ),
        helper.make_node("Flatten", ["/pool/MaxPool_output_0"], ["/flatten/Flatten_output_0"], name="/flatten/Flatten", axis=1),
        helper.make_node("Gemm", ["/flatten/Flatten_output_0", "fc.weight", "fc.bias"], ["output"], name="/fc/Gemm", alpha=1.0, beta=1.0, transB=1),
    ]
    inits = [
        tensor("conv1.weight", rng.normal(0, 0.3, (channels, 1, 3, 3)).astype(f32)),
        tensor("conv1.bias", rng.normal(0, 0.1, channels).astype(f32)),
        tensor("fc.weight", rng.normal(0, 0.1, (outputs, features)).astype(f32)),
        tensor("fc.bias", rng.normal(0, 0.1, outputs).astype(f32)),
    ]
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs])],
        inits,
    )
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
        helper.make_node("ArrayFeatureExtractor", ["classes", "argmax_output"], ["array_feature_extractor_result"], name="ArrayFeatureExtractor", domain="ai.onnx.ml"),
        helper.make_node("Reshape", ["array_feature_extractor_result", "shape_tensor"], ["reshaped_result"], name="Reshape"),
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
        nodes, "mlp",
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
            "Conv", [x, f"{name}.weight", f"{name}.bias"], [out], name=f"/{name}/Conv",
            dilations=[1, 1], group=1, kernel_shape=list(weight_shape[2:]), pads=list(pads), strides=list(strides),
        )

    nodes = [
        conv("conv1", "input", "/conv1/Conv_output_0", (c, 2, 3, 3), (1, 1, 1, 1), (2, 2)),
        helper.make_node(
            "BatchNormalization", ["/conv1/Conv_output_0", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
            ["/bn1/BatchNormalization_output_0"], name="/bn1/BatchNormalization", epsilon=1e-5, momentum=0.9,
        ),
        helper.make_node("PRelu", ["/bn1/BatchNormalization_output_0", "act1.weight"], ["/act1/PRelu_output_0"], name="/act1/PRelu"),
        conv("conv2", "/act1/PRelu_output_0", "/conv2/Conv_output_0", (c, c, 3, 3), (1, 1, 1, 1)),
        helper.make_node("Add", ["/act1/PRelu_output_0", "/conv2/Conv_output_0"], ["/Add_output_0"], name="/Add"),
        conv("side", "/Add_output_0", "/side/Conv_output_0", (c, c, 1, 1), (0, 0, 0, 0)),
        helper.make_node("Concat", ["/Add_output_0", "/side/Conv_output_0"], ["/Concat_output_0"], name="/Concat", axis=1),
        helper.make_node(
            "AveragePool", ["/Concat_output_0"], ["/avg/AveragePool_output_0"], name="/avg/AveragePool",
            ceil_mode=0, count_include_pad=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
        ),
        helper.make_node(
            "MaxPool", ["/avg/AveragePool_output_0"], ["/pool/MaxPool_output_0"], name="/pool/MaxPool",
            ceil_mode=0, kernel_shape=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2],
        ),
        helper.make_node("Flatten", ["/pool/MaxPool_output_0"], ["/flatten/Flatten_output_0"], name="/flatten/Flatten", axis=1),
        helper.make_node("Gemm", ["/flatten/Flatten_output_0", "fc1.weight", "fc1.bias"], ["/fc1/Gemm_output_0"], name="/fc1/Gemm", alpha=1.0, beta=1.0, transB=1),
        helper.make_node("LeakyRelu", ["/fc1/Gemm_output_0"], ["/act2/LeakyRelu_output_0"], name="/act2/LeakyRelu", alpha=0.1),
        helper.make_node("Gemm", ["/act2/LeakyRelu_output_0", "fc2.weight", "fc2.bias"], ["/fc2/Gemm_output_0"], name="/fc2/Gemm", alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Softmax", ["/fc2/Gemm_output_0"], ["output"], name="/softmax/Softmax", axis=1),
        helper.make_node("GlobalAveragePool", ["/avg/AveragePool_output_0"], ["/gap/GlobalAveragePool_output_0"], name="/gap/GlobalAveragePool"),
        helper.make_node("Flatten", ["/gap/GlobalAveragePool_output_0"], ["/gap/Flatten_output_0"], name="/gap/Flatten", axis=1),
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
        nodes, "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, size, size])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs]),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 2 * c]),
        ],
        inits,
    )
    return finish(graph)
