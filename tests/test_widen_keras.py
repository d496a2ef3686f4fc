"""Widening real tf2onnx exports of tiny Keras models (surgery.export.export_keras): a Dense MLP
(MatMul + Add, dynamic batch) and a CNN (Transpose/Conv/Transpose, folded BatchNormalization,
the dynamic-batch Flatten chain Shape → Gather → Cast → Slice → Concat → Cast → Reshape)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import numpy_helper

from surgery.rewrite import widen
from surgery.testing import assert_equivalent


def _nonzero_weights(model, seed: int) -> None:
    """Fresh Keras biases are zero and tf2onnx drops zero-bias Adds; real models have biases."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights(
            [
                rng.normal(0, 0.3, w.shape).astype(np.float32) + (1.0 if "variance" in v.name else 0.0)
                for w, v in zip(layer.get_weights(), layer.weights)
            ]
        )


@pytest.fixture(scope="module")
def keras_exports():
    keras = pytest.importorskip("keras")
    from surgery.export import export_keras

    mlp = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="relu", name="hidden"),
            keras.layers.Dense(4, activation="tanh", name="hidden2"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ],
        name="mlp",
    )
    cnn = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="cnn",
    )
    _nonzero_weights(mlp, 0)
    _nonzero_weights(cnn, 1)
    return export_keras(mlp), export_keras(cnn)


@pytest.mark.parametrize("init", ["output-zero", "all-zero"])
def test_keras_mlp_widens_exactly_by_keras_names(keras_exports, init):
    mlp, _ = keras_exports
    wide = widen(mlp, {"hidden": 3, "hidden2": 2}, init=init)
    assert_equivalent(mlp, wide)
    history = json.loads(next(p.value for p in wide.metadata_props if p.key == "surgery.widen_history"))
    assert [(r["layer"], r["new_width"]) for r in history] == [("hidden", 9), ("hidden2", 6)]


def test_keras_cnn_flatten_chain_interleaves_new_channels(keras_exports):
    _, cnn = keras_exports
    wide = widen(cnn, {"conv": 3})
    assert_equivalent(cnn, wide)
    tensors = json.loads(next(p.value for p in wide.metadata_props if p.key == "surgery.widened_tensors"))
    flat = next(entry for name, entry in tensors.items() if name.endswith("flat_1/Reshape:0"))
    positions = 4 * 4  # 6x6 input, 3x3 valid conv
    assert flat["original"] == positions * 4
    assert flat["new"] == [[p * 7 + 4, p * 7 + 7] for p in range(positions)]  # NHWC: p·C' + c
    sizes = {i.name: numpy_helper.to_array(i) for i in wide.graph.initializer}
    assert any(a.shape == (1,) and a[0] == positions * 7 for a in sizes.values()), "the Reshape's flat size must grow"
