"""to-keras: ONNX (exported, widened, PyTorch, skl2onnx) back to a trainable Keras 3 model.

Real TensorFlow, tf2onnx and onnxruntime throughout; models are tiny and built once per module.
"""

from __future__ import annotations

import json

import forms
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from surgery.errors import SurgeryError
from surgery.export import export_keras
from surgery.onnx_to_keras import FAITHFUL_TOLERANCE, check_faithful, convert, to_keras
from surgery.tensorflow_runtime import import_tensorflow

import_tensorflow()
import keras  # noqa: E402

HIDDEN1 = 16


@pytest.fixture(scope="module")
def mnist():
    from training.data import load_mnist

    data = load_mnist()
    rng = np.random.default_rng(0)  # the split is grouped by digit: sample across all ten
    train, test = rng.permutation(len(data.x_train))[:2000], rng.permutation(len(data.x_test))[:200]
    x_train = data.x_train.reshape(len(data.x_train), -1)[train]
    x_test = data.x_test.reshape(len(data.x_test), -1)[test]
    return x_train, data.y_train[train], x_test, data.y_test[test]


def _fit_briefly(model, x, y):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[:500], y[:500], epochs=1, batch_size=100, verbose=0)


@pytest.fixture(scope="module")
def keras_mlp(mnist):
    """784 → hidden1 → hidden2 → out, briefly trained so that every bias is non-zero."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((784,), name="pixels"),
            keras.layers.Dense(
                HIDDEN1, activation="relu", name="hidden1", kernel_regularizer=keras.regularizers.L2(1e-4)
            ),
            keras.layers.Dense(12, activation="relu", name="hidden2"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ],
        name="mlp",
    )
    _fit_briefly(model, *mnist[:2])
    return model


@pytest.fixture(scope="module")
def keras_bn_mlp(mnist):
    """A functional MLP with BatchNormalization (trained statistics) and Dropout."""
    keras.utils.set_random_seed(1)
    pixels = keras.Input((784,), name="pixels")
    h = keras.layers.Dense(HIDDEN1, activation="relu", name="hidden1")(pixels)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.Dropout(0.25, name="drop1")(h)
    h = keras.layers.Dense(12, activation="tanh", name="hidden2", kernel_constraint=keras.constraints.MaxNorm(3.0))(h)
    out = keras.layers.Dense(10, activation="softmax", name="out")(h)
    model = keras.Model(pixels, out, name="bn_mlp")
    _fit_briefly(model, *mnist[:2])
    return model


@pytest.fixture(scope="module")
def exported(keras_mlp, keras_bn_mlp):
    return {"mlp": export_keras(keras_mlp), "bn_mlp": export_keras(keras_bn_mlp)}


def _trainable_parameters(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _widen_by_hand(proto: onnx.ModelProto, layer: str, added: int, seed: int = 0) -> onnx.ModelProto:
    """Grow a tf2onnx Dense (MatMul [+ Add]) by `added` units with zero outgoing weights.

    Works on the exported MLPs: fan-in columns are random, biases zero, the next MatMul gets
    zero rows, and a BatchNormalization's folded Mul/Add constants in between grow by ones/zeros.
    """
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    layer_map = json.loads(next(p.value for p in model.metadata_props if p.key == "surgery.layer_map"))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}

    def grow(name: str, axis: int, fill) -> None:
        array = numpy_helper.to_array(inits[name])
        shape = list(array.shape)
        shape[axis] = added
        grown = np.concatenate([array, fill(shape).astype(array.dtype)], axis=axis)
        inits[name].CopyFrom(numpy_helper.from_array(grown, name))

    matmul = next(nodes[n] for n in layer_map[layer] if nodes[n].op_type == "MatMul")
    grow(matmul.input[1], 1, lambda s: rng.normal(0, 0.05, s))
    value = matmul.output[0]
    while True:  # walk to the next MatMul, growing per-unit constants on the way
        reader = next(n for n in model.graph.node if value in n.input)
        if reader.op_type == "MatMul":
            grow(reader.input[1], 0, np.zeros)
            break
        for name in reader.input:
            if name in inits and numpy_helper.to_array(inits[name]).ndim >= 1:
                grow(name, -1, np.ones if reader.op_type == "Mul" else np.zeros)
        value = reader.output[0]
    onnx.checker.check_model(model)
    return model


# -- round trip ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "bn_mlp"])
def test_round_trip_gives_the_original_layers_and_predictions(name, exported, keras_mlp, keras_bn_mlp, mnist):
    original = {"mlp": keras_mlp, "bn_mlp": keras_bn_mlp}[name]
    rebuilt = to_keras(exported[name])
    assert [(type(lay).__name__, lay.name) for lay in rebuilt.layers] == [
        (type(lay).__name__, lay.name) for lay in original.layers
    ]
    for layer in original.layers:
        config, back = layer.get_config(), rebuilt.get_layer(layer.name).get_config()
        for key in ("kernel_regularizer", "kernel_constraint", "kernel_initializer", "activation", "rate", "epsilon"):
            assert back.get(key) == config.get(key), (layer.name, key)
    x_test = mnist[2]
    np.testing.assert_allclose(
        rebuilt.predict(x_test, verbose=0), original.predict(x_test, verbose=0), atol=1e-5, rtol=0
    )
    assert check_faithful(rebuilt, exported[name]) <= FAITHFUL_TOLERANCE


def test_folded_batch_norm_keeps_inference_and_documented_statistics(exported, keras_bn_mlp):
    bn = to_keras(exported["bn_mlp"]).get_layer("bn1")
    original = keras_bn_mlp.get_layer("bn1")
    gamma, beta, mean, variance = (np.asarray(w) for w in bn.weights)
    assert np.all(mean == 0)
    assert np.all(np.float32(variance) + np.float32(bn.epsilon) == np.float32(1))
    g, b, m, v = (np.asarray(w, np.float64) for w in original.weights)
    np.testing.assert_allclose(gamma, g / np.sqrt(v + original.epsilon), rtol=1e-5)
    np.testing.assert_allclose(beta, b - m * g / np.sqrt(v + original.epsilon), rtol=1e-4, atol=1e-6)
    assert [w.name for w in bn.trainable_weights] == ["gamma", "beta"]


@pytest.mark.parametrize("name", ["mlp", "bn_mlp"])
def test_hand_widened_round_trip_grows_exactly_and_keeps_predictions(name, exported, keras_mlp, keras_bn_mlp, mnist):
    original = {"mlp": keras_mlp, "bn_mlp": keras_bn_mlp}[name]
    added = 5
    widened = to_keras(_widen_by_hand(exported[name], "hidden1", added))
    assert widened.get_layer("hidden1").units == HIDDEN1 + added
    # fan-in kernel + bias, the next kernel's rows, and BatchNormalization's gamma and beta
    expected = added * (784 + 1) + added * original.get_layer("hidden2").units + (2 * added if name == "bn_mlp" else 0)
    assert _trainable_parameters(widened) - _trainable_parameters(original) == expected
    x_test = mnist[2]
    np.testing.assert_allclose(
        widened.predict(x_test, verbose=0), original.predict(x_test, verbose=0), atol=1e-5, rtol=0
    )


@pytest.fixture(scope="module")
def widened_by_surgery(exported):
    rewrite = pytest.importorskip("surgery.rewrite", reason="surgery.widen has not landed yet")
    return rewrite.widen(exported["bn_mlp"], {"hidden1": 6, "hidden2": 3}, init="output-zero", seed=0)


def test_widen_then_to_keras_matches_the_original(widened_by_surgery, keras_bn_mlp, mnist):
    rebuilt = to_keras(widened_by_surgery)
    assert rebuilt.get_layer("hidden1").units == HIDDEN1 + 6
    assert rebuilt.get_layer("hidden2").units == 12 + 3
    expected = 6 * (784 + 1) + 2 * 6 + 6 * 12 + 3 * (HIDDEN1 + 6 + 1) + 3 * 10
    assert _trainable_parameters(rebuilt) - _trainable_parameters(keras_bn_mlp) == expected
    x_test = mnist[2]
    np.testing.assert_allclose(
        rebuilt.predict(x_test, verbose=0), keras_bn_mlp.predict(x_test, verbose=0), atol=1e-5, rtol=0
    )


def test_widened_model_trains_on_mnist(exported, mnist):
    x_train, y_train, _, _ = mnist
    model = to_keras(_widen_by_hand(exported["bn_mlp"], "hidden1", 4))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    before = model.evaluate(x_train, y_train, verbose=0, batch_size=500)
    history = model.fit(x_train, y_train, epochs=1, batch_size=50, verbose=0)
    after = model.evaluate(x_train, y_train, verbose=0, batch_size=500)
    assert np.isfinite(history.history["loss"][0])
    assert after < before
    new_units = np.asarray(model.get_layer("hidden2").kernel)[HIDDEN1:]
    assert np.any(new_units != 0)  # the zero outgoing weights of the new units learned something


@pytest.fixture(scope="module")
def keras_cnn():
    """Conv → BN → pool → Conv (no bias) → BN → Flatten → Dense; tf2onnx folds the second BN."""
    keras.utils.set_random_seed(2)
    image = keras.Input((8, 8, 2), name="image")
    h = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv1")(image)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Conv2D(4, 3, use_bias=False, name="conv2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    original = keras.Model(image, out, name="cnn")
    rng = np.random.default_rng(0)
    for layer in original.layers:  # non-trivial statistics, so folding changes the weights
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.weights])
    return original, export_keras(original), rng.standard_normal((4, 8, 8, 2)).astype("float32")


def test_conv_round_trip_with_batch_norm_folded_into_the_conv(keras_cnn):
    original, proto, x = keras_cnn
    assert "bn2" not in json.loads(next(p.value for p in proto.metadata_props if p.key == "surgery.layer_map"))
    conversion = convert(proto)
    assert any("bn2" in note for note in conversion.notes)
    np.testing.assert_allclose(np.asarray(conversion.model(x)), np.asarray(original(x)), atol=1e-5, rtol=0)
    assert check_faithful(conversion.model, proto) <= FAITHFUL_TOLERANCE


def test_widened_conv_round_trip_follows_the_interleaved_flatten(keras_cnn):
    rewrite = pytest.importorskip("surgery.rewrite", reason="surgery.widen has not landed yet")
    from surgery.graph import as_ir
    from surgery.layers import find_layers

    original, proto, x = keras_cnn
    # tf2onnx fused conv2 with bn2 into a node without the layer's scope: widen it by node name
    conv2 = next(layer.node for layer in find_layers(as_ir(proto)) if layer.op == "Conv" and layer.name != "conv1")
    widened = to_keras(rewrite.widen(proto, {"conv1": 2, conv2: 3}, init="output-zero"))
    assert widened.get_layer("conv1").filters == 5 and widened.get_layer("conv2").filters == 7
    np.testing.assert_allclose(np.asarray(widened(x)), np.asarray(original(x)), atol=1e-5, rtol=0)


# -- foreign graphs -----------------------------------------------------------------------
FORMS = {
    "pytorch_mlp": forms.pytorch_mlp,
    "pytorch_cnn": forms.pytorch_cnn,
    "pytorch_mlp_bn": forms.pytorch_mlp_bn,
    "sklearn_mlp": forms.sklearn_mlp,
    "pytorch_convnet": forms.pytorch_convnet,
}
#: (op, input index) of the initializers that are trainable parameters in each exporter's form.
PARAMETER_INPUTS = {
    ("Gemm", 1),
    ("Gemm", 2),
    ("MatMul", 1),
    ("Conv", 1),
    ("Conv", 2),
    ("BatchNormalization", 1),
    ("BatchNormalization", 2),
    ("PRelu", 1),
}


@pytest.fixture(scope="module")
def foreign():
    return {name: (build(), convert(build())) for name, build in FORMS.items()}


@pytest.mark.parametrize("name", list(FORMS))
def test_foreign_graph_matches_onnxruntime(name, foreign):
    proto, conversion = foreign[name]
    assert check_faithful(conversion.model, proto, outputs=conversion.kept_outputs) <= FAITHFUL_TOLERANCE
    assert not any(type(layer).__name__ == "Lambda" for layer in conversion.model.layers)


@pytest.mark.parametrize("name", list(FORMS))
def test_foreign_graph_keeps_every_kernel_and_bias_trainable(name, foreign):
    proto, conversion = foreign[name]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    parameters = [
        inits[node.input[i]]
        for node in proto.graph.node
        for op, i in PARAMETER_INPUTS
        if node.op_type == op and len(node.input) > i
    ]
    parameters += [  # MatMul + Add biases (skl2onnx's [1, U] and PyTorch's bias-first Add)
        inits[name] for node in proto.graph.node if node.op_type == "Add" for name in node.input if name in inits
    ]
    trainable = [np.sort(np.asarray(w).reshape(-1)) for w in conversion.model.trainable_weights]
    assert len(trainable) == len(parameters) > 0
    for parameter in parameters:
        flat = np.sort(parameter.astype(np.float32).reshape(-1))
        assert any(t.shape == flat.shape and np.array_equal(t, flat) for t in trainable), parameter.shape


def test_foreign_model_takes_the_onnx_layout_and_names_layers_after_nodes(foreign):
    proto, conversion = foreign["pytorch_cnn"]
    model = conversion.model
    assert tuple(model.inputs[0].shape[1:]) == (1, 8, 8)  # NCHW, as the ONNX graph
    assert {"conv1", "fc"} <= {layer.name for layer in model.layers}
    assert model.get_layer("conv1").get_config()["activation"] == "relu"
    assert conversion.node_layers["/conv1/Conv"] == "conv1"


def test_sklearn_label_output_is_left_out_with_a_note(foreign):
    _, conversion = foreign["sklearn_mlp"]
    assert conversion.kept_outputs == ["probabilities"]
    assert len(conversion.model.outputs) == 1 and tuple(conversion.model.outputs[0].shape) == (None, 3)
    assert any("label" in note and "argmax" in note for note in conversion.notes)


def test_check_faithful_sees_a_changed_weight(foreign):
    proto = forms.pytorch_mlp()
    model = to_keras(proto)
    kernel = model.get_layer("fc2").kernel
    kernel.assign(np.asarray(kernel) + 0.01)
    assert check_faithful(model, proto) > FAITHFUL_TOLERANCE


def test_unsupported_op_names_the_op_and_node():
    proto = forms.pytorch_mlp()
    proto.graph.node[1].op_type = "Acos"
    with pytest.raises(SurgeryError, match=r"unsupported op Acos at node '/relu/Relu'"):
        to_keras(proto)


# -- transfer: freeze, reinit, head ---------------------------------------------------------
@pytest.fixture(scope="module")
def transfer(exported, keras_bn_mlp, mnist):
    """The seed's set-up: keep hidden1 frozen, redraw hidden2, a new 5-unit head, trained once."""
    model = to_keras(exported["bn_mlp"], freeze=["hidden1"], reinit=["hidden2"], head=5, seed=3)
    before = {w.path: np.asarray(w).copy() for w in model.weights}
    x_train, y_train = mnist[:2]
    upper = y_train >= 5
    assert upper.sum() > 500
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x_train[upper], y_train[upper] - 5, epochs=1, batch_size=100, verbose=0)
    return model, before


def test_frozen_layer_is_bit_identical_after_fit(transfer, keras_bn_mlp):
    model, before = transfer
    hidden1 = model.get_layer("hidden1")
    assert not hidden1.trainable and hidden1.trainable_weights == []
    for weight in hidden1.weights:
        assert np.array_equal(np.asarray(weight), before[weight.path])
    np.testing.assert_array_equal(np.asarray(hidden1.kernel), np.asarray(keras_bn_mlp.get_layer("hidden1").kernel))
    assert not np.array_equal(
        np.asarray(model.get_layer("hidden2").kernel), before[model.get_layer("hidden2").kernel.path]
    )


def test_reinit_draws_fresh_seeded_weights(exported, keras_bn_mlp):
    first = to_keras(exported["bn_mlp"], reinit=["hidden2"], seed=7)
    again = to_keras(exported["bn_mlp"], reinit=["hidden2"], seed=7)
    other = to_keras(exported["bn_mlp"], reinit=["hidden2"], seed=8)
    kernel = np.asarray(first.get_layer("hidden2").kernel)
    assert not np.allclose(kernel, np.asarray(keras_bn_mlp.get_layer("hidden2").kernel))
    np.testing.assert_array_equal(kernel, np.asarray(again.get_layer("hidden2").kernel))
    assert not np.array_equal(kernel, np.asarray(other.get_layer("hidden2").kernel))
    assert np.all(np.asarray(first.get_layer("hidden2").bias) == 0)  # bias_initializer is zeros
    np.testing.assert_array_equal(
        np.asarray(first.get_layer("hidden1").kernel), np.asarray(keras_bn_mlp.get_layer("hidden1").kernel)
    )


def test_head_has_the_requested_units_and_the_same_activation(transfer, mnist):
    model, _ = transfer
    head = model.get_layer("out")
    assert head.units == 5 and head.get_config()["activation"] == "softmax"
    probabilities = model.predict(mnist[2][:8], verbose=0)
    assert probabilities.shape == (8, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_head_on_a_foreign_graph_keeps_the_layers_after_it():
    model = to_keras(forms.pytorch_mlp_bn(), head=7)
    assert model.get_layer("fc2").units == 7 and tuple(model.outputs[0].shape) == (None, 7)
    np.testing.assert_array_equal(
        np.asarray(model.get_layer("fc1").kernel), numpy_helper.to_array(forms.pytorch_mlp_bn().graph.initializer[0]).T
    )


@pytest.mark.parametrize("flag", ["freeze", "reinit"])
def test_unknown_layer_name_suggests_close_ones(flag, exported):
    with pytest.raises(SurgeryError, match=r"hiden2: no such layer; did you mean hidden2"):
        to_keras(exported["bn_mlp"], **{flag: ["hiden2"]})


def test_onnx_node_names_select_layers_too():
    model = to_keras(forms.pytorch_mlp(), freeze=["/fc1/Gemm"])
    assert not model.get_layer("fc1").trainable and model.get_layer("fc2").trainable


# -- saving ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pytorch_convnet", "sklearn_mlp"])
def test_saved_keras_file_loads_in_safe_mode_without_custom_objects(name, foreign, tmp_path):
    proto, conversion = foreign[name]
    path = tmp_path / "model.keras"
    conversion.model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    assert check_faithful(loaded, proto, outputs=conversion.kept_outputs) <= FAITHFUL_TOLERANCE
    assert len(loaded.trainable_weights) == len(conversion.model.trainable_weights)
