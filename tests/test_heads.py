"""Adding attention heads (`widen --heads`) on the real transformer exports in tests/fixtures."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest

import surgery
from conftest import assert_one_line_error, run_surgery
from surgery.attention import find_blocks
from surgery.errors import SurgeryError
from surgery.graph import as_ir
from surgery.metadata import WIDEN_HISTORY_KEY, WIDENED_TENSORS_KEY

FIXTURES = Path(__file__).parent / "fixtures"
#: Every PyTorch transformer export, with its blocks' (heads, kv_heads, head_dim).
TRANSFORMERS = {
    "gpt2_sdpa": (4, 4, 16), "gpt2_eager": (4, 4, 16), "gpt2_dynamo": (4, 4, 16),
    "bert": (4, 4, 16), "llama": (4, 4, 16), "llama_gqa": (4, 2, 16),
}
SEQUENCE = {"sequence": 7}  # the exports' symbolic sequence length, for the verifier


@cache
def fixture(name: str) -> onnx.ModelProto:
    return onnx.load(FIXTURES / f"{name}.onnx")


def blocks(model: onnx.ModelProto) -> dict[str, dict]:
    return {block.name: block.to_json() for block in find_blocks(as_ir(model))}


def metadata(model: onnx.ModelProto, key: str):
    return json.loads({p.key: p.value for p in model.metadata_props}[key])


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_every_block_is_found_with_its_projections(name):
    found = blocks(fixture(name))
    assert len(found) == 2  # two layers in every fixture config
    for block in found.values():
        assert (block["heads"], block["kv_heads"], block["head_dim"]) == TRANSFORMERS[name]
        layer_names = {layer.name for layer in surgery.find_layers(as_ir(fixture(name)))}
        assert {block["q"], block["k"], block["v"], block["o"]} <= layer_names
        assert block["o"] not in (block["q"], block["k"], block["v"])
        assert all(p.startswith(block["name"]) for p in (block["q"], block["o"]))


@pytest.mark.parametrize("name,index", [(name, i) for name in sorted(TRANSFORMERS) for i in (0, 1)])
def test_one_more_head_in_each_block_is_bitwise_equal(name, index):
    original = fixture(name)
    target = sorted(blocks(original))[index]
    grown = surgery.widen(original, heads={target: 1})
    onnx.checker.check_model(grown)
    report = surgery.verify(original, grown, dims=SEQUENCE)
    assert report.equivalent, [o.max_abs_diff for o in report.outputs]
    heads, kv_heads, head_dim = TRANSFORMERS[name]
    after = blocks(grown)
    assert (after[target]["heads"], after[target]["kv_heads"]) == (heads + heads // kv_heads, kv_heads + 1)
    assert after[target]["head_dim"] == head_dim
    other = next(b for b in after if b != target)
    assert (after[other]["heads"], after[other]["kv_heads"]) == (heads, kv_heads)  # untouched
    history = metadata(grown, WIDEN_HISTORY_KEY)
    assert [(r["block"], r["old_heads"], r["new_heads"]) for r in history] == [(target, heads, after[target]["heads"])]


def test_grown_heads_are_live_and_located():
    """New Q/K/V columns are random (the new heads compute something), the output projection's
    new rows are zero, and `widened_tensors` lets `verify --locate` compare old heads."""
    original = fixture("llama")
    grown = surgery.widen(original, heads={"model.layers.0.self_attn": 1}, seed=3)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in grown.graph.initializer}
    before = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer}
    q_proj = next(n for n in grown.graph.node if n.name.endswith("layers.0/self_attn/q_proj/MatMul"))
    o_proj = next(n for n in grown.graph.node if n.name.endswith("layers.0/self_attn/o_proj/MatMul"))
    q_new, q_old = weights[q_proj.input[1]], before[q_proj.input[1].removesuffix("_widened")]
    assert q_new.shape == (64, 80) and np.array_equal(q_new[:, :64], q_old) and np.all(q_new[:, 64:] != 0)
    o_new = weights[o_proj.input[1]]
    assert o_new.shape == (80, 64) and np.all(o_new[64:] == 0)
    tensors = metadata(grown, WIDENED_TENSORS_KEY)
    assert any(entry["new"] == [[4, 5]] for entry in tensors.values())  # a [B, H, S, dh] tensor, heads axis
    report = surgery.verify(original, grown, dims=SEQUENCE, locate=True)
    assert report.equivalent


@pytest.mark.parametrize("name", ["gpt2_dynamo", "llama_gqa", "bert"])
def test_glob_grows_every_block_in_one_run(name):
    original = fixture(name)
    grown = surgery.widen(original, heads={"*": 2}, seed=1)
    assert surgery.verify(original, grown, dims=SEQUENCE).equivalent
    heads, kv_heads, _ = TRANSFORMERS[name]
    assert {(b["heads"], b["kv_heads"]) for b in blocks(grown).values()} == {(heads + 2 * heads // kv_heads, kv_heads + 2)}
    assert len(metadata(grown, WIDEN_HISTORY_KEY)) == 2


def test_heads_and_layers_grow_together():
    original = fixture("llama")
    grown = surgery.widen(original, {"model.layers.*.mlp.gate_proj": 8}, heads={"model.layers.1.self_attn": 1})
    assert surgery.verify(original, grown, dims=SEQUENCE).equivalent
    history = metadata(grown, WIDEN_HISTORY_KEY)
    assert {r.get("layer") for r in history if "layer" in r} >= {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"}
    assert [r["block"] for r in history if "block" in r] == ["model.layers.1.self_attn"]


def test_same_seed_same_bytes_other_seed_other_bytes():
    original = fixture("gpt2_sdpa")
    first = surgery.widen(original, heads={"*": 1}, seed=7).SerializeToString()
    assert surgery.widen(original, heads={"*": 1}, seed=7).SerializeToString() == first
    assert surgery.widen(original, heads={"*": 1}, seed=8).SerializeToString() != first


def test_the_input_model_is_not_modified():
    original = fixture("gpt2_eager")
    before = original.SerializeToString()
    surgery.widen(original, heads={"transformer.h.0.attn": 1})
    assert original.SerializeToString() == before


@pytest.mark.parametrize("heads,says", [
    ({"transformer.h.0.attn": 0}, "at least 1"),
    ({"transformer.h.0.attn": -2}, "at least 1"),
    ({"transformer.h.0.attn": 1.5}, "must be an integer"),
    ({"transformer.h.0.atn": 1}, "did you mean transformer.h.0.attn"),
    ({"transformer.h.*.mlp": 1}, "no attention block matches"),
    ({"transformer.h.0.attn": 1, "transformer.h.*.attn": 1}, "requested twice"),
])
def test_bad_requests_are_refused_with_the_reason(heads, says):
    with pytest.raises(SurgeryError, match=says.replace(".", r"\.").replace("*", r"\*")):
        surgery.widen(fixture("gpt2_sdpa"), heads=heads)


def test_net2net_does_not_apply_to_heads():
    with pytest.raises(SurgeryError, match="net2net"):
        surgery.widen(fixture("bert"), heads={"*": 1}, init="net2net")


def test_keras_multi_head_attention_is_not_listed_and_refused_clearly():
    """tf2onnx writes Keras's MultiHeadAttention einsums with weights reshaped at run time: the
    blocks are not recognised, so they are not listed, and --heads says so."""
    model = onnx.load(FIXTURES / "keras_transformer.onnx")
    assert find_blocks(as_ir(model)) == []
    with pytest.raises(SurgeryError, match="no attention block"):
        surgery.widen(model, heads={"block0_mha": 1})


def test_cli_heads_glob_writes_the_grown_model(capfd, tmp_path):
    out = tmp_path / "wide.onnx"
    done = run_surgery(capfd, "widen", FIXTURES / "bert.onnx", "-o", out, "--heads", "encoder.layer.*.attention=1", "--no-verify")
    assert done.returncode == 0, done.stderr
    assert "encoder.layer.0.attention: 4 -> 5 heads (head_dim 16)" in done.stdout
    assert "encoder.layer.1.attention: 4 -> 5 heads" in done.stdout
    assert surgery.verify(fixture("bert"), onnx.load(out), dims=SEQUENCE).equivalent
    listed = run_surgery(capfd, "inspect", out, "--json")
    assert [b["heads"] for b in json.loads(listed.stdout)["attention"]] == [5, 5]


def test_cli_gqa_reports_key_value_heads(capfd, tmp_path):
    done = run_surgery(capfd, "widen", FIXTURES / "llama_gqa.onnx", "-o", tmp_path / "w.onnx",
                       "--heads", "model.layers.0.self_attn=1", "--no-verify")
    assert done.returncode == 0, done.stderr
    assert "model.layers.0.self_attn: 4 -> 6 heads (key/value heads 2 -> 3, head_dim 16)" in done.stdout


@pytest.mark.parametrize("args,says", [
    (["--heads", "transformer.h.0.attn=0"], "at least 1"),
    (["--heads", "transformer.h.0.attn"], "expected NAME=K"),
    (["--heads", "nothing.*=1"], "no attention block matches"),
    ([], "give --layer NAME=K or --heads NAME=K"),
])
def test_cli_refusals_are_one_line(capfd, tmp_path, args, says):
    out = tmp_path / "w.onnx"
    result = run_surgery(capfd, "widen", FIXTURES / "gpt2_sdpa.onnx", "-o", out, *args)
    assert_one_line_error(result, says=(says,))
    assert not out.exists()
