"""`verify` with a Keras model on one side (real TensorFlow/Keras and tf2onnx)."""

from __future__ import annotations

import onnx
import pytest

from surgery.errors import SurgeryError
from surgery.verification import verify


@pytest.fixture(scope="module")
def keras_and_onnx(tmp_path_factory):
    import keras

    from surgery.export import export_keras

    folder = tmp_path_factory.mktemp("verify_keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(6, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )
    model.save(folder / "model.keras")
    proto = export_keras(model)
    onnx.save(proto, folder / "model.onnx")
    model.get_layer("hidden").kernel.assign(model.get_layer("hidden").kernel.numpy() * 1.5)
    onnx.save(export_keras(model), folder / "changed.onnx")
    return folder


def test_keras_against_its_export_passes_in_tolerance_mode(keras_and_onnx):
    report = verify(keras_and_onnx / "model.keras", keras_and_onnx / "model.onnx", samples=32)
    assert report.equivalent, report.summary()
    assert report.mode == "tolerance" and report.atol_scaled and report.atol == 1e-5
    assert [o.name for o in report.outputs] == ["output"] and report.outputs[0].elements == 32 * 3
    assert "keras" in report.versions and "tensorflow" in report.versions


def test_onnx_against_keras_detects_a_change(keras_and_onnx):
    report = verify(keras_and_onnx / "changed.onnx", keras_and_onnx / "model.keras", samples=32)
    assert not report.equivalent and report.outputs[0].mismatches > 0
    assert report.outputs[0].max_abs_diff > 1e-3


def test_keras_side_cannot_locate_or_deploy(keras_and_onnx):
    with pytest.raises(SurgeryError, match="locate .* needs ONNX models on both sides"):
        verify(keras_and_onnx / "model.keras", keras_and_onnx / "model.onnx", locate=True)
    with pytest.raises(SurgeryError, match="deployed .* needs ONNX models on both sides"):
        verify(keras_and_onnx / "model.onnx", keras_and_onnx / "model.keras", deployed=True)


def test_keras_side_with_explicit_tolerance(keras_and_onnx):
    report = verify(keras_and_onnx / "model.onnx", keras_and_onnx / "model.keras", atol=0.0, rtol=0.0, samples=8)
    assert report.mode == "tolerance" and not report.atol_scaled
    # atol = rtol = 0: only elements with a nonzero difference fail; TensorFlow and onnxruntime
    # rarely agree to the bit on a softmax, so the report must be consistent either way.
    assert report.equivalent == (report.outputs[0].max_abs_diff == 0.0)


def test_an_output_the_keras_model_dropped_is_reported_not_failed(tmp_path, capfd):
    """skl2onnx's classifier form has `label` and `probabilities`; a Keras rebuild that keeps the
    output's name and leaves the label out is matched by name, the label reported as dropped."""
    import json

    import forms
    import keras
    from conftest import run_surgery

    proto = forms.sklearn_mlp()
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    logits = keras.layers.Dense(3)(hidden)
    model = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits))
    model.layers[1].set_weights([weights["coefficient"], weights["intercepts"][0]])
    model.layers[2].set_weights([weights["coefficient1"], weights["intercepts1"][0]])
    onnx.save(proto, tmp_path / "sk.onnx")
    model.save(tmp_path / "sk.keras")

    report = verify(tmp_path / "sk.onnx", tmp_path / "sk.keras", samples=16)
    by_name = {o.name: o for o in report.outputs}
    assert report.equivalent, report.summary()
    assert by_name["probabilities"].passed and by_name["probabilities"].elements == 16 * 3
    assert by_name["label"].dropped and by_name["label"].present_in == "reference"
    done = run_surgery(capfd, "verify", tmp_path / "sk.onnx", tmp_path / "sk.keras", "--json", "-")
    assert done.returncode == 0, done.stderr
    assert [o["dropped"] for o in json.loads(done.stdout)["outputs"]] == [True, False]
