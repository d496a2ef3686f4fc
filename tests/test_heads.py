"""Adding attention heads (`widen --heads`) on the real transformer exports in tests/fixtures."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, run_surgery

import surgery
from surgery.analysis import WidenPlan
from surgery.attention import find_blocks, survey
from surgery.errors import SurgeryError
from surgery.graph import as_ir
from surgery.heads import plan_heads
from surgery.metadata import WIDEN_HISTORY_KEY, WIDENED_TENSORS_KEY

FIXTURES = Path(__file__).parent / "fixtures"
#: Every PyTorch transformer export, with its blocks' (heads, kv_heads, head_dim).
TRANSFORMERS = {
    "gpt2_sdpa": (4, 4, 16),
    "gpt2_eager": (4, 4, 16),
    "gpt2_dynamo": (4, 4, 16),
    "bert": (4, 4, 16),
    "llama": (4, 4, 16),
    "llama_gqa": (4, 2, 16),
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
    expected = (heads + 2 * heads // kv_heads, kv_heads + 2)
    assert {(b["heads"], b["kv_heads"]) for b in blocks(grown).values()} == {expected}
    assert len(metadata(grown, WIDEN_HISTORY_KEY)) == 2


def test_heads_and_layers_grow_together():
    original = fixture("llama")
    grown = surgery.widen(original, {"model.layers.*.mlp.gate_proj": 8}, heads={"model.layers.1.self_attn": 1})
    assert surgery.verify(original, grown, dims=SEQUENCE).equivalent
    history = metadata(grown, WIDEN_HISTORY_KEY)
    grown_layers = {r["layer"] for r in history if "layer" in r}
    assert grown_layers >= {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"}
    assert [r["block"] for r in history if "block" in r] == ["model.layers.1.self_attn"]


def test_an_input_changed_by_both_layers_and_heads_is_refused_naming_the_parameter():
    model = as_ir(fixture("gpt2_sdpa"))
    head_plan = plan_heads(model, {"transformer.h.0.attn": 1}, init="output-zero")
    layers_plan = WidenPlan((), head_plan.edits[:1], ())
    with pytest.raises(SurgeryError) as refused:
        head_plan.joined(layers_plan)
    assert refused.value.param == "heads"
    assert str(refused.value).startswith("heads and the widened layers both change input")
    assert refused.value.render("--heads").startswith("--heads and the widened layers")


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


@pytest.mark.parametrize(
    "heads,says",
    [
        ({"transformer.h.0.attn": 0}, "at least 1"),
        ({"transformer.h.0.attn": -2}, "at least 1"),
        ({"transformer.h.0.attn": 1.5}, "must be an integer"),
        ({"transformer.h.0.atn": 1}, "did you mean transformer.h.0.attn"),
        ({"transformer.h.*.mlp": 1}, "no attention block matches"),
        ({"transformer.h.0.attn": 1, "transformer.h.*.attn": 1}, "requested twice"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(heads, says):
    with pytest.raises(SurgeryError, match=says.replace(".", r"\.").replace("*", r"\*")):
        surgery.widen(fixture("gpt2_sdpa"), heads=heads)


def test_net2net_does_not_apply_to_heads():
    with pytest.raises(SurgeryError, match="net2net"):
        surgery.widen(fixture("bert"), heads={"*": 1}, init="net2net")


#: The Keras fixture's symbolic sequence length (tf2onnx names its dims ``unk__N``), for the verifier.
KERAS_SEQUENCE = {fixture("keras_transformer").graph.input[0].type.tensor_type.shape.dim[1].dim_param: 7}


def test_keras_multi_head_attention_blocks_are_found():
    """tf2onnx's einsum form of Keras's MultiHeadAttention: Gemm projections, head counts read
    from the kernels' 5-D copies, heads merged into the batch axis for the products."""
    found = blocks(fixture("keras_transformer"))
    assert sorted(found) == ["block0_mha", "block1_mha"]
    for name, block in found.items():
        assert (block["heads"], block["kv_heads"], block["head_dim"]) == (4, 4, 16)
        assert [block[p] for p in "qkvo"] == [f"{name}.{s}" for s in ("query", "key", "value", "attention_output")]


@pytest.mark.parametrize("target", ["block0_mha", "block1_mha"])
def test_keras_one_more_head_is_bitwise_equal(target):
    original = fixture("keras_transformer")
    grown = surgery.widen(original, heads={target: 1}, seed=5)
    onnx.checker.check_model(grown)
    report = surgery.verify(original, grown, dims=KERAS_SEQUENCE)
    assert report.equivalent, [o.max_abs_diff for o in report.outputs]
    after = blocks(grown)
    assert (after[target]["heads"], after[target]["head_dim"]) == (5, 16)
    assert next(b["heads"] for name, b in after.items() if name != target) == 4
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in grown.graph.initializer}
    kernels = [w for w in weights.values() if w.shape == (1, 1, 64, 5, 16)]  # attention_output's [., ., D, H, dh]
    assert len(kernels) == 1 and np.all(kernels[0][:, :, :, 4] == 0) and np.any(kernels[0][:, :, :, :4] != 0)
    columns = [w for w in weights.values() if w.shape == (80, 64)]  # query, key, value Gemm weights (transB)
    assert len(columns) == 3 and all(np.all(w[64:] != 0) for w in columns)


def test_keras_heads_of_every_block_grow_in_one_run_and_the_new_heads_are_live():
    original = fixture("keras_transformer")
    grown = surgery.widen(original, heads={"*": 2}, seed=1)
    assert surgery.verify(original, grown, dims=KERAS_SEQUENCE).equivalent
    assert {b["heads"] for b in blocks(grown).values()} == {6}
    assert surgery.verify(original, grown, dims=KERAS_SEQUENCE, locate=True).equivalent
    # With random output rows the new heads change the outputs: they are wired in.
    noisy = surgery.widen(original, heads={"*": 2}, seed=1, init="all-random")
    assert not surgery.verify(original, noisy, dims=KERAS_SEQUENCE).equivalent


def test_keras_same_seed_same_bytes():
    original = fixture("keras_transformer")
    first = surgery.widen(original, heads={"block0_mha": 1}, seed=7).SerializeToString()
    assert surgery.widen(original, heads={"block0_mha": 1}, seed=7).SerializeToString() == first
    assert surgery.widen(original, heads={"block0_mha": 1}, seed=8).SerializeToString() != first


def test_keras_head_count_constant_read_as_data_is_refused():
    """The 5-D kernel copy whose shape gives a projection's head count may only be read by Shape
    (it grows with zeros): one that is also read as data is refused with its name."""
    model = onnx.ModelProto()
    model.CopyFrom(fixture("keras_transformer"))
    copy = next(t.name for t in model.graph.initializer if list(t.dims) == [1, 1, 4, 16, 64])
    model.graph.node.append(onnx.helper.make_node("Identity", [copy], ["kernel_copy"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("kernel_copy", onnx.TensorProto.FLOAT, None))
    says = f"reads the head count from the shape of '{copy}', which is also used as data"
    with pytest.raises(SurgeryError, match=says):
        surgery.widen(model, heads={"*": 1})


def test_cli_heads_glob_writes_the_grown_model(capfd, tmp_path):
    out = tmp_path / "wide.onnx"
    done = run_surgery(
        capfd, "widen", FIXTURES / "bert.onnx", "-o", out, "--heads", "encoder.layer.*.attention=1", "--no-verify"
    )
    assert done.returncode == 0, done.stderr
    assert "encoder.layer.0.attention: 4 -> 5 heads (head_dim 16)" in done.stdout
    assert "encoder.layer.1.attention: 4 -> 5 heads" in done.stdout
    assert surgery.verify(fixture("bert"), onnx.load(out), dims=SEQUENCE).equivalent
    listed = run_surgery(capfd, "inspect", out, "--json")
    assert [b["heads"] for b in json.loads(listed.stdout)["attention"]] == [5, 5]


def test_cli_gqa_reports_key_value_heads(capfd, tmp_path):
    done = run_surgery(
        capfd,
        "widen",
        FIXTURES / "llama_gqa.onnx",
        "-o",
        tmp_path / "w.onnx",
        "--heads",
        "model.layers.0.self_attn=1",
        "--no-verify",
    )
    assert done.returncode == 0, done.stderr
    assert "model.layers.0.self_attn: 4 -> 6 heads (key/value heads 2 -> 3, head_dim 16)" in done.stdout


@pytest.mark.parametrize(
    "args,says",
    [
        (["--heads", "transformer.h.0.attn=0"], "at least 1"),
        (["--heads", "transformer.h.0.attn"], "expected NAME=K"),
        (["--heads", "nothing.*=1"], "no attention block matches"),
        ([], "give --layer NAME=K or --heads NAME=K"),
    ],
)
def test_cli_refusals_are_one_line(capfd, tmp_path, args, says):
    out = tmp_path / "w.onnx"
    result = run_surgery(capfd, "widen", FIXTURES / "gpt2_sdpa.onnx", "-o", out, *args)
    assert_one_line_error(result, says=(says,))
    assert not out.exists()


def _attention_graph(q_target: str) -> onnx.ModelProto:
    """One attention block in the classic exporter's MatMul form (D=8, 2 heads of 4); the query's
    head-splitting Reshape reads its target from `q_target`'s node."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"onnx::MatMul_{i}") for i in range(4)
    ]
    split = numpy_helper.from_array(np.array([0, 0, 2, 4], np.int64), "split_shape")
    merge = numpy_helper.from_array(np.array([0, 0, 8], np.int64), "merge_shape")
    node = helper.make_node
    nodes = [
        node("MatMul", ["x", "onnx::MatMul_0"], ["q"], name="/attn/q_proj/MatMul"),
        node("MatMul", ["x", "onnx::MatMul_1"], ["k"], name="/attn/k_proj/MatMul"),
        node("MatMul", ["x", "onnx::MatMul_2"], ["v"], name="/attn/v_proj/MatMul"),
        node(q_target, ["split_shape"], ["q_shape"], name="/attn/QShape"),
        node("Reshape", ["q", "q_shape"], ["q4"], name="/attn/Reshape"),
        node("Reshape", ["k", "split_shape"], ["k4"], name="/attn/Reshape_1"),
        node("Reshape", ["v", "split_shape"], ["v4"], name="/attn/Reshape_2"),
        node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3], name="/attn/Transpose"),
        node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1], name="/attn/Transpose_1"),
        node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3], name="/attn/Transpose_2"),
        node("MatMul", ["qt", "kt"], ["scores"], name="/attn/MatMul"),
        node("Softmax", ["scores"], ["p"], axis=-1, name="/attn/Softmax"),
        node("MatMul", ["p", "vt"], ["context"], name="/attn/MatMul_1"),
        node("Transpose", ["context"], ["ct"], perm=[0, 2, 1, 3], name="/attn/Transpose_3"),
        node("Reshape", ["ct", "merge_shape"], ["merged"], name="/attn/Reshape_3"),
        node("MatMul", ["merged", "onnx::MatMul_3"], ["y"], name="/attn/o_proj/MatMul"),
    ]
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 5, 8]) for name in ("x", "y")]
    graph = helper.make_graph(nodes, "attention", io[:1], io[1:], [*weights, split, merge])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_head_count_targets_are_rewritten():
    """`[0, 0, H, dh]` and `[0, 0, H·dh]` targets: H and H·dh get the new values; the shared
    split target is forked for the query, key and value reshapes alike."""
    original = _attention_graph("Identity")
    assert [b["heads"] for b in blocks(original).values()] == [2]
    grown = surgery.widen(original, heads={"attn": 1})
    assert surgery.verify(original, grown).equivalent
    targets = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in grown.graph.initializer if "shape" in t.name}
    assert targets == {"split_shape": [0, 0, 3, 4], "merge_shape": [0, 0, 12]}
    assert blocks(grown)["attn"]["heads"] == 3


def test_a_block_the_tracking_cannot_follow_is_refused_with_the_reason():
    model = _attention_graph("Abs")  # a target computed by an op the head tracking does not read
    assert blocks(model) == {}
    with pytest.raises(SurgeryError, match=r"attn: cannot add heads: Reshape node '/attn/Reshape' has a target shape"):
        surgery.widen(model, heads={"attn": 1})


def test_heads_grow_again_and_the_metadata_composes():
    """A second growth of a grown model stays bitwise equal to the original; the fused QKV
    output's new ranges stay relative to the never-grown model (three ranges per growth merged)."""
    original = fixture("gpt2_dynamo")
    once = surgery.widen(original, heads={"*": 1}, seed=1)
    twice = surgery.widen(once, heads={"transformer.h.0.attn": 2}, seed=2)
    assert surgery.verify(original, twice, dims=SEQUENCE).equivalent
    assert [(b["heads"], b["kv_heads"]) for b in blocks(twice).values()] == [(7, 7), (5, 5)]
    fused = [entry["new"] for entry in metadata(twice, WIDENED_TENSORS_KEY).values() if entry["original"] == 192]
    assert [[64, 112], [176, 224], [288, 336]] in fused  # block 0: 3 new heads of 16 after Q, K and V
    assert [[64, 80], [144, 160], [224, 240]] in fused  # block 1: 1 new head


@pytest.fixture(scope="module")
def keras_attention_variants() -> onnx.ModelProto:
    """A real export (`surgery.export_keras`) of MultiHeadAttention with ``value_dim`` ≠ ``key_dim``
    and of cross-attention (keys and values from a second input), weights perturbed."""
    keras = pytest.importorskip("keras")
    from surgery.export import export_keras

    x, y = keras.Input((None, 32), name="x"), keras.Input((None, 32), name="y")
    h = keras.layers.MultiHeadAttention(2, 8, value_dim=12, name="wide_values")(x, x)
    h = keras.layers.MultiHeadAttention(4, 8, name="cross")(h, y)
    model = keras.Model([x, y], h, name="variants")
    rng = np.random.default_rng(2)
    for weight in model.weights:
        weight.assign(weight.numpy() + rng.normal(0, 0.05, weight.shape).astype("float32"))
    return export_keras(model)


@pytest.mark.slow
def test_keras_value_dim_and_cross_attention_grow_bitwise(keras_attention_variants):
    original = keras_attention_variants
    found = find_blocks(as_ir(original))
    assert [(b.name, b.heads, b.dims) for b in found] == [("wide_values", 2, (8, 8, 12)), ("cross", 4, (8, 8, 8))]
    grown = surgery.widen(original, heads={"*": 1}, seed=4)
    dims = {d.dim_param: 5 for i in original.graph.input for d in i.type.tensor_type.shape.dim[1:] if d.dim_param}
    assert surgery.verify(original, grown, dims=dims).equivalent
    assert [(b.name, b.heads, b.dims) for b in find_blocks(as_ir(grown))] == [
        ("wide_values", 3, (8, 8, 12)),
        ("cross", 5, (8, 8, 8)),
    ]


@pytest.mark.slow
def test_keras_grouped_query_attention_is_refused_with_the_reason():
    """Keras's GroupQueryAttention repeats key/value heads with ``Tile``, which the head tracking
    does not follow: the block is not listed and --heads names the node."""
    keras = pytest.importorskip("keras")
    from surgery.export import export_keras

    x = keras.Input((None, 32), name="x")
    model = keras.Model(x, keras.layers.GroupQueryAttention(8, 4, 2, name="gqa")(x, x))
    exported = export_keras(model)
    found, refused = survey(as_ir(exported))
    assert found == [] and len(refused) == 1
    name = next(iter(refused))
    with pytest.raises(SurgeryError, match=r"cannot add heads: Tile node '.*gqa.*' is not an op the head tracking"):
        surgery.widen(exported, heads={name: 1})
