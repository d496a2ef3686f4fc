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
# Every traced shape has batch 2 and (for token models) sequence 8: run on other sizes.
SIZES = {"batch": 2, "sequence": 5}
EXPECTED = {
    "gpt2_sdpa.onnx", "gpt2_eager.onnx", "gpt2_dynamo.onnx", "bert.onnx", "llama.onnx", "llama_gqa.onnx",
    "resnet.onnx", "mobilenetv2.onnx", "keras_transformer.onnx",
}


def test_manifest_lists_every_fixture_on_disk() -> None:
    on_disk = {path.name for path in FIXTURES.glob("*.onnx")}
    assert on_disk == set(MANIFEST)
    assert set(MANIFEST) <= EXPECTED


def _feed(value: onnx.ValueInfoProto, rng: np.random.Generator) -> np.ndarray:
    tensor = value.type.tensor_type
    shape = [SIZES[d.dim_param] if d.dim_param else d.dim_value for d in tensor.shape.dim]
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
        want = [SIZES.get(d, d) if isinstance(d, str) else d for d in described["shape"]]
        assert list(got.shape) == want
        assert np.isfinite(got).all()
        assert got.std() > 0
