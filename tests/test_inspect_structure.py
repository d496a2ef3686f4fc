"""`surgery inspect` reports the structure: which layers can grow (or what blocks them) and the
attention blocks, on the real exports in tests/fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import run_surgery

import surgery
from surgery.cli import flag_for
from surgery.errors import SurgeryError

FIXTURES = Path(__file__).parent / "fixtures"


def document(capfd, path: Path) -> dict:
    done = run_surgery(capfd, "inspect", path, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("fixture", ["gpt2_sdpa", "llama_gqa", "bert"])
def test_blocked_by_is_what_widen_refuses_with(capfd, fixture):
    report = document(capfd, FIXTURES / f"{fixture}.onnx")
    model = onnx.load(FIXTURES / f"{fixture}.onnx")
    assert report["layers"] and all(set(layer) >= {"widenable", "blocked_by"} for layer in report["layers"])
    for layer in report["layers"]:
        assert layer["widenable"] == (layer["blocked_by"] is None)
        if layer["widenable"]:
            surgery.widen(model, {layer["node"]: 1})
        else:
            with pytest.raises(SurgeryError) as refused:
                surgery.widen(model, {layer["node"]: 1})
            assert refused.value.render(flag_for(refused.value.param)) == layer["blocked_by"]
            assert "\n" not in layer["blocked_by"]


def test_graph_output_layer_is_blocked_and_feed_forward_grows(capfd):
    layers = {layer["name"]: layer for layer in document(capfd, FIXTURES / "llama.onnx")["layers"]}
    assert not layers["lm_head"]["widenable"] and "--allow-output-change" in layers["lm_head"]["blocked_by"]
    assert layers["model.layers.0.mlp.gate_proj"]["widenable"]
    assert layers["model.layers.0.mlp.up_proj"]["blocked_by"] is None


@pytest.mark.parametrize(
    "fixture,first",
    [
        (
            "gpt2_sdpa",
            {
                "name": "transformer.h.0.attn",
                "heads": 4,
                "kv_heads": 4,
                "head_dim": 16,
                "q": "transformer.h.0.attn.c_attn",
                "k": "transformer.h.0.attn.c_attn",
                "v": "transformer.h.0.attn.c_attn",
                "o": "transformer.h.0.attn.c_proj",
            },
        ),
        (
            "gpt2_dynamo",
            {
                "name": "transformer.h.0.attn",
                "heads": 4,
                "kv_heads": 4,
                "head_dim": 16,
                "q": "transformer.h.0.attn.c_attn",
                "k": "transformer.h.0.attn.c_attn",
                "v": "transformer.h.0.attn.c_attn",
                "o": "transformer.h.0.attn.c_proj",
            },
        ),
        (
            "bert",
            {
                "name": "encoder.layer.0.attention",
                "heads": 4,
                "kv_heads": 4,
                "head_dim": 16,
                "q": "encoder.layer.0.attention.self.query",
                "k": "encoder.layer.0.attention.self.key",
                "v": "encoder.layer.0.attention.self.value",
                "o": "encoder.layer.0.attention.output.dense",
            },
        ),
        (
            "llama_gqa",
            {
                "name": "model.layers.0.self_attn",
                "heads": 4,
                "kv_heads": 2,
                "head_dim": 16,
                "q": "model.layers.0.self_attn.q_proj",
                "k": "model.layers.0.self_attn.k_proj",
                "v": "model.layers.0.self_attn.v_proj",
                "o": "model.layers.0.self_attn.o_proj",
            },
        ),
    ],
)
def test_attention_section(capfd, fixture, first):
    attention = document(capfd, FIXTURES / f"{fixture}.onnx")["attention"]
    assert len(attention) == 2 and attention[0] == first
    assert attention[1]["name"] == first["name"].replace(".0.", ".1.")


def test_models_without_attention_list_none(capfd):
    for path in (Path("models/mlp.onnx"), FIXTURES / "resnet.onnx"):
        report = document(capfd, Path(__file__).parents[1] / path)
        assert report["attention"] == []


def test_human_table_has_an_attention_section_and_the_reasons(capfd):
    done = run_surgery(capfd, "inspect", FIXTURES / "gpt2_eager.onnx")
    assert done.returncode == 0, done.stderr
    assert "attention blocks (widen --heads NAME=K)" in done.stdout
    assert "transformer.h.1.attn" in done.stdout
    reasons = [line for line in done.stdout.splitlines() if line.startswith("lm_head: ")]
    assert reasons and "graph output 'logits'" in reasons[0]
