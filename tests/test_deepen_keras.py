"""Deepening real tf2onnx exports of Keras models: the copied blocks' Keras layers join the export
metadata, so `to-keras` rebuilds the deeper model (new layers named ``block0.grown.0_up``)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import ROOT

from surgery.deepening import deepen
from surgery.graph import as_ir
from surgery.metadata import KERAS_CONFIG_KEY, LAYER_MAP_KEY
from surgery.rewrite import widen
from surgery.testing import assert_equivalent


def metadata(model: onnx.ModelProto, key: str):
    return json.loads(next(p.value for p in model.metadata_props if p.key == key))


@pytest.fixture(scope="module")
def residual_mlp():
    """Dense stem, two blocks ``x + down(relu(up(x)))`` (Keras Add layers), Dense head; perturbed."""
    keras = pytest.importorskip("keras")
    from surgery.export import export_keras

    inputs = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="stem")(inputs)
    for i in range(2):
        up = keras.layers.Dense(32, activation="relu", name=f"block{i}_up")(h)
        h = keras.layers.Add(name=f"block{i}_add")([h, keras.layers.Dense(16, name=f"block{i}_down")(up)])
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h), name="resmlp")
    rng = np.random.default_rng(1)
    for weight in model.weights:
        weight.assign(weight.numpy() + rng.normal(0, 0.1, weight.shape).astype("float32"))
    return export_keras(model)


def test_residual_mlp_blocks_come_from_keras_names(residual_mlp):
    from surgery.blocks import find_blocks

    blocks = [(b.name, b.kind) for b in find_blocks(as_ir(residual_mlp))]
    assert blocks == [("block0", "residual"), ("block1", "residual")]


def test_deepened_export_converts_to_keras_with_the_new_layers(residual_mlp):
    from surgery.onnx_to_keras import check_faithful, to_keras

    deeper = deepen(residual_mlp, after="block0", count=2)
    assert_equivalent(residual_mlp, deeper)
    keras_model = to_keras(deeper)
    names = [layer.name for layer in keras_model.layers]
    assert names == [
        "x",
        "stem",
        "block0_up",
        "block0_down",
        "block0_add",
        "block0.grown.0_up",
        "block0.grown.0_down",
        "block0.grown.0_add",
        "block0.grown.1_up",
        "block0.grown.1_down",
        "block0.grown.1_add",
        "block1_up",
        "block1_down",
        "block1_add",
        "head",
    ]
    for k in (0, 1):
        kernel, bias = keras_model.get_layer(f"block0.grown.{k}_down").get_weights()
        assert not kernel.any() and not bias.any(), "the copy's output projection starts at zero"
        up = keras_model.get_layer(f"block0.grown.{k}_up").get_weights()[0]
        assert np.array_equal(up, keras_model.get_layer("block0_up").get_weights()[0])
    assert check_faithful(keras_model, as_ir(deeper)) < 1e-5
    layer_map = metadata(deeper, LAYER_MAP_KEY)
    nodes = {n.name for n in deeper.graph.node}
    assert all(set(layer_map[f"block0.grown.{k}_{part}"]) <= nodes for k in (0, 1) for part in ("up", "down", "add"))


def test_widened_then_deepened_export_converts_to_keras(residual_mlp):
    from surgery.onnx_to_keras import to_keras

    deeper = deepen(widen(residual_mlp, {"block1_up": 8}), after="block1")
    assert_equivalent(residual_mlp, deeper)
    keras_model = to_keras(deeper)
    assert keras_model.get_layer("block1.grown.0_up").get_weights()[0].shape == (16, 40)
    assert keras_model.get_layer("head").input.shape[-1] == 16


def test_keras_transformer_metadata_gains_the_copied_layers():
    keras = pytest.importorskip("keras")
    model = onnx.load(ROOT / "tests" / "fixtures" / "keras_transformer.onnx")
    deeper = deepen(model, after="block1")
    config = metadata(deeper, KERAS_CONFIG_KEY)
    names = [entry["name"] for entry in config["config"]["layers"]]
    copied = [name for name in names if name.startswith("block1.grown.0")]
    assert copied == [
        "block1.grown.0_ln1",
        "block1.grown.0_mha",
        "block1.grown.0_attn_add",
        "block1.grown.0_ln2",
        "block1.grown.0_ffn_up",
        "block1.grown.0_ffn_down",
        "block1.grown.0_ffn_add",
    ]
    rebuilt = keras.Model.from_config(config["config"])
    assert rebuilt.get_layer("final_ln").input._keras_history.operation.name == "block1.grown.0_ffn_add"
    assert rebuilt.get_layer("block1.grown.0_ln1").input._keras_history.operation.name == "block1_ffn_add"


def test_identity_layers_become_keras_layers(residual_mlp):
    from surgery.onnx_to_keras import to_keras

    deeper = deepen(residual_mlp, after="stem", kind="identity", count=2)
    assert_equivalent(residual_mlp, deeper)
    keras_model = to_keras(deeper)
    assert [layer.name for layer in keras_model.layers][:5] == [
        "x",
        "stem",
        "stem.grown.0",
        "stem.grown.1",
        "block0_up",
    ]
    kernel, bias = keras_model.get_layer("stem.grown.1").get_weights()
    assert np.array_equal(kernel, np.eye(16)) and not bias.any()
    assert keras_model.get_layer("stem.grown.1").get_config()["activation"] == "relu"
    assert keras_model.get_layer("block0_up").input._keras_history.operation.name == "stem.grown.1"


def test_identity_conv_layer_becomes_a_keras_conv2d():
    keras = pytest.importorskip("keras")
    from surgery.export import export_keras
    from surgery.onnx_to_keras import to_keras

    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="cnn",
    )
    rng = np.random.default_rng(2)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.3, weight.shape).astype("float32"))
    exported = export_keras(model)
    deeper = deepen(exported, after="conv", kind="identity")
    assert_equivalent(exported, deeper)
    rebuilt = to_keras(deeper)
    grown = rebuilt.get_layer("conv.grown.0")
    assert grown.get_config()["kernel_size"] == (3, 3) and grown.get_config()["padding"] == "same"
    kernel = grown.get_weights()[0]
    assert np.array_equal(kernel[1, 1], np.eye(4)) and kernel.sum() == 4
