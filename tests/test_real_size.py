"""The real-size benchmark's generators (benchmarks/real_size.py) at a small size, and the peak
memory of `inspect` on a few-hundred-MB inline model (SURGERY_RSS_TEST=1; builds it, ~1 minute)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from surgery.layers import find_layers
from surgery.modelio import load_model, save_model
from surgery.rewrite import widen_in_place
from surgery.verification import verify

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import real_size  # noqa: E402

SMALL = {
    "gpt2": (lambda: real_size.gpt2_model(layers=3, d=32, heads=4, vocab=50, context=16), real_size.GPT2_FFN, 4),
    "llama": (lambda: real_size.llama_model(layers=3, d=32, heads=4, ffn=48, vocab=50), real_size.LLAMA_FFN, 7),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_generators_are_valid_exports_with_every_layer_found(name):
    make, _, per_block = SMALL[name]
    model = make()
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input_ids": np.arange(14, dtype=np.int64).reshape(2, 7) % 50})[0]
    assert logits.shape == (2, 7, 50) and np.isfinite(logits).all()
    layers = find_layers(ir.serde.deserialize_model(model))
    assert len(layers) == 3 * per_block + 1  # every projection of every block, and lm_head


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_feed_forward_of_the_small_generators_widens_bitwise(name, tmp_path):
    make, ffn, _ = SMALL[name]
    onnx.save(make(), tmp_path / "model.onnx")
    model = load_model(tmp_path / "model.onnx")
    result = widen_in_place(model, {ffn: 5})
    assert len(result.plan.groups) == 3
    save_model(model, tmp_path / "wide.onnx")
    report = verify(tmp_path / "model.onnx", tmp_path / "wide.onnx", dims={"sequence": 7})
    assert report.equivalent


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SURGERY_RSS_TEST") != "1", reason="builds a 400 MB model; set SURGERY_RSS_TEST=1")
def test_inspect_of_a_few_hundred_mb_inline_model_never_holds_its_weights(tmp_path):
    path = tmp_path / "gpt2_6.onnx"
    onnx.save(real_size.gpt2_model(layers=6), path)
    size_mb = path.stat().st_size / 2**20
    assert size_mb > 300
    ours = real_size._measure(real_size._surgery("inspect", "--json", str(path)))
    baseline = real_size._measure(real_size._python(real_size._LOAD, str(path)))
    assert ours["rss"] < size_mb / 2, (ours, size_mb)  # the weights are never read into memory
    assert ours["rss"] <= 1.5 * baseline["rss"], (ours, baseline)
