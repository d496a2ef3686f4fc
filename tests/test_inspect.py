"""`surgery inspect` on graphs from tf2onnx (real), PyTorch's and skl2onnx's exporters (built)."""

from __future__ import annotations

import json

import forms
import onnx
import pytest
from conftest import assert_one_line_error

from surgery.graph import as_ir
from surgery.layers import find_layers


def layers_of(model: onnx.ModelProto) -> list[tuple[str, str, int, str | None]]:
    return [(lay.node, lay.op, lay.width, lay.activation) for lay in find_layers(as_ir(model))]


def test_pytorch_mlp_gemm_trans_b():
    assert layers_of(forms.pytorch_mlp(inputs=20, hidden=16, outputs=5)) == [
        ("/fc1/Gemm", "Gemm", 16, "Relu"),
        ("/fc2/Gemm", "Gemm", 5, None),
    ]


def test_pytorch_batchnorm_is_looked_through_for_the_activation():
    assert layers_of(forms.pytorch_mlp_bn(hidden=10)) == [
        ("/fc1/Gemm", "Gemm", 10, "Relu"),
        ("/fc2/Gemm", "Gemm", 4, None),
    ]


def test_pytorch_cnn_conv_width_is_output_channels():
    assert layers_of(forms.pytorch_cnn(channels=6)) == [
        ("/conv1/Conv", "Conv", 6, "Relu"),
        ("/fc/Gemm", "Gemm", 10, None),
    ]


def test_sklearn_matmul_with_2d_bias():
    layers = find_layers(as_ir(forms.sklearn_mlp(hidden=8, classes=3)))
    assert [(lay.node, lay.op, lay.width, lay.activation) for lay in layers] == [
        ("MatMul", "MatMul+Add", 8, "Relu"),
        ("MatMul1", "MatMul+Add", 3, "Softmax"),
    ]
    assert layers[0].consumers == ["Relu"]


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_width_honours_trans_b(trans_a, trans_b):
    import numpy as np
    from onnx import TensorProto, helper

    weight = np.zeros((7, 3) if trans_b else (3, 7), np.float32)
    x_shape = [3, "batch"] if trans_a else ["batch", 3]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="g", transA=trans_a, transB=trans_b)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7])],
        [forms.tensor("w", weight)],
    )
    assert layers_of(forms.finish(graph)) == [("g", "Gemm", 7, None)]


def test_bias_first_operand_is_matmul_add():
    """PyTorch's Linear on a 3-D input: MatMul then Add whose first input is the bias."""
    import numpy as np
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "onnx::MatMul_9"], ["h"], name="/lin/MatMul"),
            helper.make_node("Add", ["lin.bias", "h"], ["y"], name="/lin/Add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 6])],
        [forms.tensor("onnx::MatMul_9", np.ones((4, 6), np.float32)), forms.tensor("lin.bias", np.ones(6, np.float32))],
    )
    assert layers_of(forms.finish(graph)) == [("/lin/MatMul", "MatMul+Add", 6, None)]


@pytest.fixture(scope="module")
def keras_models():
    import keras

    keras.utils.set_random_seed(0)
    mlp = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu", name="dense_1", bias_initializer="ones"),
            keras.layers.Dense(3, activation="softmax", name="dense_2", bias_initializer="ones"),
        ],
        name="mlp",
    )
    cnn = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv", bias_initializer="ones"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(3, name="head"),
        ],
        name="cnn",
    )
    return mlp, cnn


def test_tf2onnx_dynamic_batch_dense_is_matmul_add_with_keras_names(keras_models):
    from surgery.export import export_keras

    mlp, _ = keras_models
    layers = find_layers(as_ir(export_keras(mlp)))
    assert [(lay.name, lay.op, lay.width, lay.activation) for lay in layers] == [
        ("dense_1", "MatMul+Add", 5, "Relu"),
        ("dense_2", "MatMul+Add", 3, "Softmax"),
    ]
    assert all("/dense_" in lay.node for lay in layers)


def test_tf2onnx_fixed_batch_dense_is_gemm(keras_models):
    from surgery.export import export_keras

    mlp, _ = keras_models
    layers = find_layers(as_ir(export_keras(mlp, batch=4)))
    assert [(lay.name, lay.op, lay.width) for lay in layers] == [("dense_1", "Gemm", 5), ("dense_2", "Gemm", 3)]


def test_tf2onnx_conv_and_dense(keras_models):
    from surgery.export import export_keras

    _, cnn = keras_models
    layers = find_layers(as_ir(export_keras(cnn)))
    # head's bias is all zero, so tf2onnx drops its Add: a bare MatMul.
    assert [(lay.name, lay.op, lay.width) for lay in layers] == [("conv", "Conv", 4), ("head", "MatMul", 3)]
    assert layers[0].activation == "Relu"


def test_cli_json_schema(tmp_path, cli):
    path = tmp_path / "mlp.onnx"
    onnx.save(forms.pytorch_mlp(), path)
    result = cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == str(path)
    fields = {"node", "name", "op", "width", "activation", "consumers", "widenable", "blocked_by"}
    assert [set(layer) for layer in report["layers"]] == [fields] * 2
    assert report["attention"] == []  # an MLP has no attention block
    assert report["layers"][0]["name"] == "fc1"  # no Keras provenance: the PyTorch module path


def test_cli_table(tmp_path, cli):
    path = tmp_path / "cnn.onnx"
    onnx.save(forms.pytorch_cnn(), path)
    result = cli("inspect", path)
    assert result.returncode == 0, result.stderr
    assert "/conv1/Conv" in result.stdout and "Conv" in result.stdout


@pytest.mark.parametrize("content", [b"", b"not a model at all\n", b"\x08\x07\x12\x03abc\xff\xff"])
def test_cli_not_onnx_is_one_line_error(tmp_path, cli, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert_one_line_error(cli("inspect", path), names=str(path))


def test_activation_is_found_behind_tf2onnx_folded_batchnorm():
    """Dense → BatchNormalization → ELU exported by tf2onnx: MatMul+Add → Mul → Add → Elu."""
    import keras

    from surgery.export import export_keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="hidden", bias_initializer="ones"),
            keras.layers.BatchNormalization(name="bn", beta_initializer="ones"),
            keras.layers.ELU(name="elu"),
            keras.layers.Dense(2, name="out"),
        ],
        name="bnnet",
    )
    layers = find_layers(as_ir(export_keras(model)))
    assert [(lay.name, lay.activation) for lay in layers] == [("hidden", "Elu"), ("out", None)]
