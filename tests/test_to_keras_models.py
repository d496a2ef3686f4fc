"""to-keras on the real-export fixtures: PyTorch classic and dynamo transformers, torchvision CNNs,
a Keras transformer through tf2onnx — faithful at other lengths, every parameter trainable and
training, safe-mode load, round trip through `export`, widened versions.

Every model is converted once per module; the checks share the conversions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import surgery
from surgery.onnx_to_keras import FAITHFUL_TOLERANCE, check_faithful, convert, sample_inputs
from surgery.tensorflow_runtime import import_tensorflow

import_tensorflow()
import keras  # noqa: E402

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
TRANSFORMERS = ["gpt2_sdpa", "gpt2_eager", "gpt2_dynamo", "bert", "llama", "llama_gqa", "keras_transformer"]
CNNS = ["resnet", "mobilenetv2"]
#: Not the traced batch and sequence length (MANIFEST: traced_input_shape [2, 8]).
BATCH, SEQUENCE = 3, 5


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(FIXTURES / f"{name}.onnx")


@pytest.fixture(scope="module")
def converted():
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            proto = _load(name)
            cache[name] = (proto, convert(proto))
        return cache[name]

    return get


def _float_parameters(proto: onnx.ModelProto) -> int:
    """Elements of the float initializers and Constant tensors with more than one element, except
    those only a Shape reads (tf2onnx keeps such folded constants for their shape)."""
    shape_only = {
        t.name
        for t in proto.graph.initializer
        if all(n.op_type == "Shape" for n in proto.graph.node if t.name in n.input)
    }
    arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name not in shape_only]
    constants = [n for n in proto.graph.node if n.op_type == "Constant"]
    arrays += [numpy_helper.to_array(a.t) for n in constants for a in n.attribute if a.name == "value"]
    return sum(a.size for a in arrays if a.dtype.kind == "f" and a.size > 1)


def _inputs(proto: onnx.ModelProto):
    arrays = list(sample_inputs(proto, batch=BATCH, sequence=SEQUENCE, seed=1).values())
    return arrays[0] if len(arrays) == 1 else arrays


@pytest.mark.parametrize("name", TRANSFORMERS + CNNS)
def test_fixture_matches_onnxruntime_at_another_batch_and_length(name, converted):
    proto, conversion = converted(name)
    assert conversion.source == "graph"
    assert conversion.kept_outputs == [o.name for o in proto.graph.output]
    assert list(conversion.model.output_names) == conversion.kept_outputs
    assert check_faithful(conversion.model, proto, batch=BATCH, sequence=SEQUENCE) <= FAITHFUL_TOLERANCE
    assert not any(type(layer).__name__ == "Lambda" for layer in conversion.model.layers)


@pytest.mark.parametrize("name", TRANSFORMERS + CNNS)
def test_every_float_parameter_is_one_trainable_weight(name, converted):
    proto, conversion = converted(name)
    trainable = sum(int(np.prod(w.shape)) for w in conversion.model.trainable_weights)
    assert trainable == _float_parameters(proto) > 0
    assert sum(int(np.prod(w.shape)) for w in conversion.model.non_trainable_weights) == 0


@pytest.mark.parametrize(
    "name, layers",
    [
        ("resnet", {"Conv2D", "ZeroPadding2D", "Add", "GlobalAveragePooling2D", "Dense"}),
        ("mobilenetv2", {"Conv2D", "DepthwiseConv2D", "ReLU"}),
        ("bert", {"Embedding", "LayerNormalization", "Dense", "Softmax"}),
        ("gpt2_dynamo", {"Embedding", "LayerNormalization", "Dense"}),
        ("llama", {"Embedding", "Dense", "Softmax", "RMSNormalization", "Activation"}),
    ],
)
def test_recognised_patterns_become_friendly_layers(name, layers, converted):
    _, conversion = converted(name)
    assert layers <= {type(layer).__name__ for layer in conversion.model.layers}


@pytest.mark.parametrize(
    "name", ["gpt2_sdpa", "gpt2_dynamo", "bert", "llama_gqa", "keras_transformer", "resnet", "mobilenetv2"]
)
def test_one_fit_step_changes_every_trainable_weight(name, converted):
    proto, conversion = converted(name)
    model = conversion.model
    x = _inputs(proto)
    outputs = model(x)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    rng = np.random.default_rng(2)
    targets = [rng.standard_normal(np.asarray(o).shape).astype("float32") for o in outputs]
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=True)
    history = model.fit(x, targets[0] if len(targets) == 1 else targets, batch_size=BATCH, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    unchanged = [w.path for w, b in zip(model.trainable_weights, before) if np.array_equal(np.asarray(w), b)]
    # Attention's key bias adds q·b to every score of a row and softmax ignores a shift of the whole
    # row: its gradient is zero (BERT, Keras MultiHeadAttention). Every other weight moves.
    assert all("key" in path for path in unchanged), unchanged


@pytest.mark.parametrize("name", ["gpt2_dynamo", "mobilenetv2"])
def test_saved_file_loads_in_safe_mode_after_import_surgery(name, tmp_path):
    proto = _load(name)
    path = tmp_path / "model.keras"
    convert(proto).model.save(path)  # a fresh conversion: the fit test trains the shared one
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    assert check_faithful(loaded, proto, batch=BATCH, sequence=SEQUENCE) <= FAITHFUL_TOLERANCE


@pytest.mark.parametrize("name", ["resnet"])
def test_round_trip_through_export_verifies_against_the_original(name):
    from surgery.export import export_keras

    proto = _load(name)
    back = export_keras(convert(proto).model)
    assert [o.name for o in back.graph.output] == [o.name for o in proto.graph.output]
    report = surgery.verify(proto, back, samples=4, batch=BATCH, atol=FAITHFUL_TOLERANCE, rtol=FAITHFUL_TOLERANCE)
    assert report.equivalent, report


@pytest.mark.parametrize(
    "name, layers",
    [
        ("bert", {"/model/encoder/layer.0/intermediate/dense/MatMul": 8}),
        ("llama", {"/model/model/layers.0/mlp/gate_proj/MatMul": 8, "/model/model/layers.0/mlp/up_proj/MatMul": 8}),
        ("resnet", {"/layer1/layer1.0/conv1/Conv": 4}),
    ],
)
def test_widened_fixture_converts_faithfully(name, layers):
    widened = surgery.widen(_load(name), layers, init="output-zero", seed=0)
    conversion = convert(widened)
    assert check_faithful(conversion.model, widened, batch=BATCH, sequence=SEQUENCE) <= FAITHFUL_TOLERANCE
    assert sum(int(np.prod(w.shape)) for w in conversion.model.trainable_weights) == _float_parameters(widened)


def test_mixed_precision_and_mirrored_strategy_scopes_train():
    """Built under a `mixed_float16` policy inside a (CPU: one-replica) MirroredStrategy, one step trains."""
    import tensorflow as tf

    proto = _load("gpt2_sdpa")
    x = _inputs(proto)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with tf.distribute.MirroredStrategy().scope():
            model = convert(proto).model
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=True)
        assert {w.dtype for w in model.trainable_weights} == {"float32"}
        logits = np.asarray(model(x), np.float32)
        assert np.isfinite(logits).all()
        history = model.fit(x, np.zeros_like(logits), batch_size=BATCH, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_seed_pipeline_on_a_keras_transformer_keeps_the_loss_and_trains_on():
    """Keras transformer → export (the fixture) → wider feed-forwards and one more head per block →
    to-keras: the loss right after conversion equals the original's, and fit continues."""
    original = keras.models.load_model(FIXTURES / "keras_transformer.keras", safe_mode=True, compile=False)
    grown = surgery.widen(
        _load("keras_transformer"), {"block*_ffn_up": 16}, heads={"block0_mha": 1, "block1_mha": 1}, seed=0
    )
    model = convert(grown).model
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 128, (8, 12)).astype("int64")
    targets = rng.integers(0, 128, (8, 12)).astype("int64")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = float(loss(targets, original(tokens)))
    after = float(loss(targets, model(tokens)))
    assert abs(after - before) <= FAITHFUL_TOLERANCE * max(1.0, abs(before))
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) > original.count_params()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, run_eagerly=True)
    history = model.fit(tokens, targets, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and history.history["loss"][-1] < before


@pytest.mark.parametrize("name, block", [("gpt2_sdpa", "transformer.h.1"), ("resnet", "layer1.0")])
def test_deepened_fixture_converts_faithfully(name, block):
    deeper = surgery.deepen(_load(name), after=block, init="random", seed=1)
    conversion = convert(deeper)
    assert check_faithful(conversion.model, deeper, batch=BATCH, sequence=SEQUENCE) <= FAITHFUL_TOLERANCE
    assert sum(int(np.prod(w.shape)) for w in conversion.model.trainable_weights) == _float_parameters(deeper)
