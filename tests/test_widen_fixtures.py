"""Widening the real exports in tests/fixtures (MANIFEST.json lists each file's layer families):
every feed-forward of every transformer, alone and all in one plan, and every MobileNetV2 conv
that feeds a depthwise conv, bitwise equal in the verifier's exact mode with the default init;
what stays unsafe is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from surgery.analysis import analyse, infer_missing_shapes
from surgery.analysis.rules import is_depthwise
from surgery.errors import SurgeryError
from surgery.graph import as_ir, consumers
from surgery.layers import find_layers
from surgery.rewrite import widen
from surgery.testing import assert_equivalent

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
TRANSFORMERS = sorted(name for name, entry in MANIFEST.items() if "ffn_up" in entry.get("families", {}))
#: the activation `inspect` reports after each fixture's feed-forward up-projection (and gate)
ACTIVATIONS = {
    "bert.onnx": "Gelu",
    "gpt2_sdpa.onnx": "Gelu",
    "gpt2_eager.onnx": "Gelu",
    "gpt2_dynamo.onnx": "Gelu",
    "llama.onnx": "SwiGLU",
    "llama_gqa.onnx": "SwiGLU",
    "keras_transformer.onnx": "Relu",
}


def _family(name: str, family: str) -> list[str]:
    return [item["node"] for item in MANIFEST[name]["families"].get(family, [])]


def _dims(name: str) -> dict[str, int]:
    """A value for every symbolic dim after the leading (batch) one: the sequence length."""
    return {d: 5 for spec in MANIFEST[name]["inputs"] for d in spec["shape"][1:] if isinstance(d, str)}


def _check(name: str, model: onnx.ModelProto, wide: onnx.ModelProto) -> None:
    assert_equivalent(model, wide, dims=_dims(name), samples=2, batch=2)


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    return {name: onnx.load(FIXTURES / name) for name in MANIFEST}


def test_every_transformer_fixture_is_covered():
    assert set(TRANSFORMERS) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_each_feed_forward_widens_bitwise(name, models):
    for node in _family(name, "ffn_up") + _family(name, "ffn_gate"):
        _check(name, models[name], widen(models[name], {node: 4}))


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_every_feed_forward_at_once_is_one_plan(name, models):
    model = models[name]
    working = as_ir(model)
    infer_missing_shapes(working)
    ups = _family(name, "ffn_up")
    plan = analyse(working, {node: 3 for node in ups})
    assert len(plan.groups) == len(ups) and all(g.added == 3 for g in plan.groups)
    gates = _family(name, "ffn_gate")
    if gates:  # SwiGLU: gate and up are one group
        assert sorted(m.node.name for g in plan.groups for m in g.members) == sorted(ups + gates)
    _check(name, model, widen(model, {node: 3 for node in ups}))


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_inspect_reports_the_feed_forward_activation(name, models):
    layers = {layer.node: layer for layer in find_layers(as_ir(models[name]))}
    for node in _family(name, "ffn_up") + _family(name, "ffn_gate"):
        assert layers[node].activation == ACTIVATIONS[name]


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_the_residual_stream_is_refused_with_the_reason(name, models):
    """The down-projection writes the residual stream: every block, the embeddings and the
    norms would have to grow with it. The refusal names where it stops: the token embedding
    (BERT: the post-norm LayerNormalization of the previous sub-layer)."""
    stop = "LayerNormalization" if name == "bert.onnx" else "Gather"
    with pytest.raises(
        SurgeryError,
        match=rf"^cannot widen: Add node '[^']+' joins the widened tensor with "
        rf"'[^']+' from {stop} node '[^']+', which cannot grow with it$",
    ):
        widen(models[name], {_family(name, "ffn_down")[0]: 2})


@pytest.mark.parametrize(
    ("name", "where"),
    [
        (
            "gpt2_sdpa.onnx",
            "Reshape node '/model/transformer/h.0/attn/Reshape_1' splits or rearranges the widened axis",
        ),
        ("gpt2_dynamo.onnx", "Split node 'node_Split_228' splits the widened axis into parts of sizes"),
    ],
)
def test_gpt2_fused_qkv_is_refused_at_the_head_split(name, where, models):
    """New units of the fused projection go to V (the last Split part) and would change its
    head count: refused at V's head Reshape, or at dynamo's equal-parts Split."""
    with pytest.raises(SurgeryError, match=where):
        widen(models[name], {_family(name, "attn_qkv")[0]: 2})


def test_dynamo_reshape_target_shared_by_blocks_is_copied_not_edited(models):
    model = models["gpt2_dynamo.onnx"]
    first, second = _family("gpt2_dynamo.onnx", "ffn_up")
    wide = widen(model, {first: 4})
    _check("gpt2_dynamo.onnx", model, wide)

    def targets(m: onnx.ModelProto) -> tuple[str, str]:
        """The target shapes of the Reshapes right after the two blocks' up-projections."""
        nodes = {n.name: n for n in as_ir(m).graph}
        return tuple(consumers(nodes[up].outputs[0])[0].inputs[1].name for up in (first, second))

    before, after = targets(model), targets(wide)
    assert before[0] == before[1] and after[1] == before[1] and after[0] != before[0]
    assert len(wide.graph.node) == len(model.graph.node) + 1  # one Concat copied


def _feeds_depthwise(node) -> bool:
    """A conv whose output reaches a depthwise conv through single-reader nodes (BN, Clip)."""
    value = node.outputs[0]
    for _ in range(4):
        readers = consumers(value)
        if any(r.op_type == "Conv" and is_depthwise(r) for r in readers):
            return True
        if len(readers) != 1 or readers[0].op_type == "Conv":
            return False
        value = readers[0].outputs[0]
    return False


def test_mobilenet_every_conv_feeding_a_depthwise_conv_widens_bitwise(models):
    model = models["mobilenetv2.onnx"]
    working = as_ir(model)
    infer_missing_shapes(working)
    feeding = [n.name for n in working.graph if n.op_type == "Conv" and _feeds_depthwise(n)]
    assert len(feeding) == 17
    for name in feeding:
        analyse(working, {name: 3})
    wide = widen(model, {name: 3 for name in feeding})
    assert_equivalent(model, wide, samples=2, batch=2)


def test_mobilenet_layers_that_widen(models):
    """The count docs/widen-analysis.md gives: every layer but the classifier, which writes the
    graph output."""
    working = as_ir(models["mobilenetv2.onnx"])
    infer_missing_shapes(working)
    widened, refused = 0, []
    layers = find_layers(working)
    for layer in layers:
        try:
            analyse(working, {layer.node: 2})
            widened += 1
        except SurgeryError as error:
            refused.append(str(error))
    assert (widened, len(layers)) == (52, 53)
    assert refused == [
        "cannot widen: graph output 'logits' (from Gemm node '/classifier/classifier.1/Gemm') "
        "would change shape; pass allow_output_change to allow it"
    ]


def test_asking_for_a_mobilenet_depthwise_conv_widens_its_producer(models):
    model = models["mobilenetv2.onnx"]
    working = as_ir(model)
    infer_missing_shapes(working)
    depthwise = next(n for n in working.graph if n.op_type == "Conv" and is_depthwise(n))
    (group,) = analyse(working, {depthwise.name: 2}).groups
    assert group.requested == (depthwise.name,) and group.members[0].node is not depthwise
    assert_equivalent(model, widen(model, {depthwise.name: 2}), samples=2, batch=2)
