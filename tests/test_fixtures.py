"""The real-export fixtures under tests/fixtures/ are what MANIFEST.json says, valid, and run off their traced shape."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
# Symbolic dims by axis: batch, then sequence (PyTorch exports name them; tf2onnx writes unk__N).
# The PyTorch fixtures were traced with sequence 8, so 5 runs them off their traced shape.
SIZES = (2, 5)
EXPECTED = {
    "gpt2_sdpa.onnx",
    "gpt2_eager.onnx",
    "gpt2_dynamo.onnx",
    "bert.onnx",
    "llama.onnx",
    "llama_gqa.onnx",
    "resnet.onnx",
    "mobilenetv2.onnx",
    "keras_transformer.onnx",
}


def test_manifest_lists_every_fixture_on_disk() -> None:
    on_disk = {path.name for path in FIXTURES.glob("*.onnx")}
    assert on_disk == set(MANIFEST)
    assert set(MANIFEST) <= EXPECTED


def _feed(value: onnx.ValueInfoProto, rng: np.random.Generator) -> np.ndarray:
    tensor = value.type.tensor_type
    shape = [SIZES[axis] if d.dim_param else d.dim_value for axis, d in enumerate(tensor.shape.dim)]
    if tensor.elem_type == onnx.TensorProto.INT64:
        return rng.integers(0, 128, size=shape, dtype=np.int64)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_fixture_matches_manifest_and_runs(name: str) -> None:
    entry = MANIFEST[name]
    path = FIXTURES / name
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["size"] < 4_000_000
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert len(model.graph.node) == entry["nodes"]
    assert [v.name for v in model.graph.input] == [v["name"] for v in entry["inputs"]]
    for family, members in entry["families"].items():
        assert members, f"{name}: layer family {family} matched no node"

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {value.name: _feed(value, rng) for value in model.graph.input}
    outputs = session.run(None, feeds)
    for described, got in zip(entry["outputs"], outputs):
        want = [SIZES[axis] if isinstance(d, str) else d for axis, d in enumerate(described["shape"])]
        assert list(got.shape) == want
        assert np.isfinite(got).all()
        assert got.std() > 0


def test_keras_fixture_loads_in_safe_mode_and_matches_its_export() -> None:
    entry = MANIFEST["keras_transformer.onnx"]
    keras_path = FIXTURES / entry["source"]["keras_file"]
    assert hashlib.sha256(keras_path.read_bytes()).hexdigest() == entry["source"]["keras_file_sha256"]
    from surgery.export import load_keras

    model = load_keras(str(keras_path))
    ids = np.random.default_rng(1).integers(0, 128, size=SIZES, dtype=np.int64)
    want = np.asarray(model(ids, training=False))
    session = onnxruntime.InferenceSession(str(FIXTURES / "keras_transformer.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input_ids": ids})
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))
