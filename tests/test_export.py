"""`surgery export`: Keras 3 → ONNX with provenance metadata and a self-check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_one_line_error

from surgery.graph import as_ir
from surgery.layers import find_layers

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def residual_concat(tmp_path_factory):
    """A functional model with a residual Add, a Concatenate, BatchNormalization and Dropout."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((8,), name="features")
    h = keras.layers.Dense(8, activation="relu", name="dense")(inp)
    h2 = keras.layers.Dense(8, name="dense_1", bias_initializer="ones")(h)
    joined = keras.layers.Add(name="residual")([h, h2])
    side = keras.layers.Dense(4, name="side", bias_initializer="ones")(inp)
    cat = keras.layers.Concatenate(name="concat")([joined, side])
    norm = keras.layers.BatchNormalization(name="norm", beta_initializer="ones")(cat)
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.Dropout(0.5, name="drop")(norm))
    model = keras.Model(inp, out, name="resnet")
    path = tmp_path_factory.mktemp("keras") / "resnet.keras"
    model.save(path)
    return model, path


def test_export_cli_self_check_and_metadata(residual_concat, tmp_path, cli):
    model, path = residual_concat
    out = tmp_path / "resnet.onnx"
    result = cli("export", path, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "self-check" in result.stdout
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    config = json.loads(meta["surgery.keras_config"])
    classes = [layer["class_name"] for layer in config["config"]["layers"]]
    assert "Dropout" in classes and "BatchNormalization" in classes  # gone from the graph, kept here
    layer_map = json.loads(meta["surgery.layer_map"])
    assert {"dense", "dense_1", "side", "head", "residual", "concat"} <= set(layer_map)
    assert [lay.name for lay in find_layers(as_ir(proto))] == ["side", "dense", "dense_1", "head"]

    x = np.random.default_rng(0).random((5, 8), dtype=np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"features": x})
    np.testing.assert_allclose(got, model(x, training=False).numpy(), atol=1e-6)


def test_export_fixed_batch_writes_gemm(residual_concat, tmp_path, cli):
    _, path = residual_concat
    out = tmp_path / "fixed.onnx"
    # 3, not the self-check's default batch of 4: the check must run the batch the file fixes.
    result = cli("export", path, "-o", out, "--batch", "3", "--opset", "13")
    assert result.returncode == 0, result.stderr
    proto = onnx.load(out)
    assert proto.opset_import[0].version == 13
    assert any(node.op_type == "Gemm" for node in proto.graph.node)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


@pytest.mark.parametrize("name", ["mlp", "transfer"])
def test_export_reference_models(name, tmp_path, cli):
    source = MODELS / f"{name}.keras"
    if not source.exists():
        pytest.fail(f"reference model {source} is missing (make models)")
    out = tmp_path / f"{name}.onnx"
    result = cli("export", source, "-o", out)
    assert result.returncode == 0, result.stderr
    difference = float(result.stdout.rsplit("=", 1)[1])
    assert difference <= 1e-5


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.keras"], "no such file"),
        (["model.txt"], "expected a .keras or .h5"),
        (["--opset", "19"], "opset 19"),
    ],
)
def test_export_bad_input(residual_concat, tmp_path, cli, args, message):
    _, path = residual_concat
    (tmp_path / "model.txt").write_text("x")
    if args[0].startswith("--"):
        args = [str(path), *args]
    else:
        args = [str(tmp_path / args[0])]
    out = tmp_path / "out.onnx"
    assert_one_line_error(cli("export", *args, "-o", out), says=(message,))
    assert not out.exists()


def test_export_refuses_to_overwrite(residual_concat, tmp_path, cli):
    _, path = residual_concat
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep me")
    assert_one_line_error(cli("export", path, "-o", out), says=("--force",))
    assert out.read_bytes() == b"keep me"
