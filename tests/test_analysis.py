"""The width analysis on its own: graphs built with onnx.helper (one rule each), `analyse()` called
directly, assertions on the `WidenPlan` (groups, edits, ranges); widened depthwise networks are
also run through onnxruntime."""

from __future__ import annotations

import forms
import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from forms import finish, tensor
from onnx import helper

from surgery.analysis import RULES, analyse, infer_missing_shapes, rule_for
from surgery.errors import SurgeryError
from surgery.graph import as_ir
from surgery.ops import CATALOGUE, activation_after, init_family, keras_activation
from surgery.rewrite import widen
from surgery.testing import assert_equivalent

F32 = np.float32


def _plan(model: onnx.ModelProto, request: dict[str, int], **kwargs):
    working = as_ir(model)
    infer_missing_shapes(working)
    return analyse(working, request, **kwargs)


def _edits(plan) -> list[tuple[str, int, str, list]]:
    """(node, input, role, new ranges) of every edit, in the plan's order."""
    return [
        (e.node.name, e.input_index, e.role, e.layout.ranges() if e.layout is not None else None) for e in plan.edits
    ]


def test_every_catalogue_kind_has_a_rule():
    assert {entry.kind for entry in CATALOGUE.values()} <= set(RULES)


def test_mlp_plan_lists_fan_in_bias_and_fan_out():
    plan = _plan(forms.pytorch_mlp(inputs=6, hidden=5, outputs=3), {"/fc1/Gemm": 2})
    (group,) = plan.groups
    assert (group.old_width, group.added, group.new_width, group.requested) == (5, 2, 7, ("/fc1/Gemm",))
    assert [m.node.name for m in group.members] == ["/fc1/Gemm"]
    assert _edits(plan) == [
        ("/fc1/Gemm", 1, "fan-in", [[5, 7]]),
        ("/fc1/Gemm", 2, "bias", [[5, 7]]),
        ("/fc2/Gemm", 1, "fan-out", [[5, 7]]),
    ]
    assert plan.edits[0].axis == 0 and plan.edits[2].axis == 1  # transB=1: [out, in]
    assert [(v.name, layout.size) for v, layout in plan.tensors][0] == ("/fc1/Gemm_output_0", 7)


def test_residual_join_brings_the_other_branch_into_the_group():
    model = forms.pytorch_transformer_ffn(embed=True)
    with pytest.raises(SurgeryError, match="LayerNormalization node '/norm/LayerNormalization'"):
        _plan(model, {"/fc2/MatMul": 2})
    plan = _plan(model, {"/fc1/MatMul": 3})
    assert [(g.old_width, g.added) for g in plan.groups] == [(16, 3)]
    assert plan.groups[0].members[0].activation == "Gelu"


def test_swiglu_gate_and_up_grow_together_as_one_group():
    plan = _plan(forms.pytorch_swiglu(hidden=12), {"/gate/MatMul": 4})
    (group,) = plan.groups
    assert [m.node.name for m in group.members] == ["/gate/MatMul", "/up/MatMul"]
    assert [m.activation for m in group.members] == ["SwiGLU", "SwiGLU"]
    assert init_family("SwiGLU") == "he"
    roles = {(name, role) for name, _, role, _ in _edits(plan)}
    assert {("/gate/MatMul", "fan-in"), ("/up/MatMul", "fan-in"), ("/down/MatMul", "fan-out")} <= roles


def test_two_requests_that_are_coupled_merge_and_must_agree():
    model = forms.pytorch_swiglu()
    plan = _plan(model, {"/gate/MatMul": 2, "/up/MatMul": 2})
    assert [g.requested for g in plan.groups] == [("/gate/MatMul", "/up/MatMul")]
    assert [g.id for g in plan.groups] == [0]
    assert all(e.layout.groups() == {0} for e in plan.edits if e.layout is not None)
    with pytest.raises(SurgeryError, match="must grow together by the same number of units"):
        _plan(model, {"/gate/MatMul": 2, "/up/MatMul": 3})


def _mobile_block(multiplier: int = 1, channels: int = 4, size: int = 6, seed: int = 0) -> onnx.ModelProto:
    """A MobileNetV2-style block as torchvision exports it (BatchNorm folded into the Convs):
    1×1 Conv → Clip(0, 6) → depthwise 3×3 Conv (group = channels) → Clip(0, 6) → 1×1 Conv →
    GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(seed)
    c, d = channels, channels * multiplier

    def clip(x: str, y: str, name: str):
        return helper.make_node("Clip", [x, "zero", "six"], [y], name=name)

    nodes = [
        helper.make_node(
            "Conv", ["input", "expand.weight", "expand.bias"], ["e"], name="/expand/Conv", kernel_shape=[1, 1]
        ),
        clip("e", "e6", "/expand/Clip"),
        helper.make_node(
            "Conv",
            ["e6", "dw.weight", "dw.bias"],
            ["w"],
            name="/dw/Conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            group=c,
        ),
        clip("w", "w6", "/dw/Clip"),
        helper.make_node(
            "Conv", ["w6", "project.weight", "project.bias"], ["p"], name="/project/Conv", kernel_shape=[1, 1]
        ),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/flatten/Flatten", axis=1),
        forms.linear("fc", "f", "output"),
    ]
    inits = [
        tensor("zero", F32(0)),
        tensor("six", F32(6)),
        tensor("expand.weight", rng.normal(0, 0.5, (c, 3, 1, 1)).astype(F32)),
        tensor("expand.bias", rng.normal(0, 0.1, c).astype(F32)),
        tensor("dw.weight", rng.normal(0, 0.5, (d, 1, 3, 3)).astype(F32)),
        tensor("dw.bias", rng.normal(0, 0.1, d).astype(F32)),
        tensor("project.weight", rng.normal(0, 0.5, (5, d, 1, 1)).astype(F32)),
        tensor("project.bias", rng.normal(0, 0.1, 5).astype(F32)),
        tensor("fc.weight", rng.normal(0, 0.5, (2, 5)).astype(F32)),
        tensor("fc.bias", rng.normal(0, 0.1, 2).astype(F32)),
    ]
    return finish(forms.main_graph(nodes, inits, ["batch", 3, size, size], ["batch", 2]))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_a_conv_feeding_a_depthwise_conv_grows_through_it(multiplier):
    model = _mobile_block(multiplier)
    plan = _plan(model, {"/expand/Conv": 3})
    assert plan.groups[0].members[0].activation == "Relu6" and init_family("Relu6") == "he"
    (change,) = plan.attributes
    assert (change.node.name, change.name, change.value) == ("/dw/Conv", "group", 7)
    edits = _edits(plan)
    assert ("/dw/Conv", 1, "fan-in", [[4 * multiplier, 7 * multiplier]]) in edits
    assert ("/dw/Conv", 2, "bias", [[4 * multiplier, 7 * multiplier]]) in edits
    assert ("/project/Conv", 1, "fan-out", [[4 * multiplier, 7 * multiplier]]) in edits
    for init in ("output-zero", "all-zero", "net2net"):
        wide = widen(model, {"/expand/Conv": 3}, init=init, seed=1)
        dw = next(n for n in wide.graph.node if n.name == "/dw/Conv")
        assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 7
        if init == "net2net":
            assert_equivalent(model, wide, atol=1e-5, rtol=1e-5)
        else:
            assert_equivalent(model, wide)


def test_asking_for_the_depthwise_conv_widens_its_producer():
    model = _mobile_block()
    plan = _plan(model, {"/dw/Conv": 2})
    (group,) = plan.groups
    assert [m.node.name for m in group.members] == ["/expand/Conv"] and group.requested == ("/dw/Conv",)
    assert_equivalent(model, widen(model, {"/dw/Conv": 2}))


def test_depthwise_conv_passes_growth_back_and_other_grouped_convs_block():
    model = _mobile_block()
    dw = next(n for n in as_ir(model).graph if n.name == "/dw/Conv")
    assert rule_for(dw).backward(dw, 1) == [(dw.inputs[0], 1)]
    grouped = onnx.ModelProto()
    grouped.CopyFrom(model)
    for init in grouped.graph.initializer:
        if init.name == "dw.weight":
            init.CopyFrom(tensor("dw.weight", np.ones((4, 2, 3, 3), F32)))
    for node in grouped.graph.node:
        if node.name == "/dw/Conv":
            node.attribute[-1].i = 2
    with pytest.raises(SurgeryError, match="Conv node '/dw/Conv' is a grouped convolution"):
        _plan(grouped, {"/expand/Conv": 1})


def _pow_graph(exponent: float) -> onnx.ModelProto:
    nodes = [
        forms.linear("fc1", "input", "h"),
        helper.make_node("Pow", ["h", "p"], ["c"], name="/act/Pow"),
        forms.linear("fc2", "c", "output"),
    ]
    rng = np.random.default_rng(0)
    inits = [
        tensor("p", F32(exponent)),
        tensor("fc1.weight", rng.normal(size=(4, 3)).astype(F32)),
        tensor("fc1.bias", np.zeros(4, F32)),
        tensor("fc2.weight", rng.normal(size=(2, 4)).astype(F32)),
        tensor("fc2.bias", np.zeros(2, F32)),
    ]
    return finish(forms.main_graph(nodes, inits, ["batch", 3], ["batch", 2]))


def test_pow_passes_integer_exponents_and_refuses_others():
    plan = _plan(_pow_graph(3.0), {"/fc1/Gemm": 2})
    assert ("/fc2/Gemm", 1, "fan-out", [[4, 6]]) in _edits(plan)
    with pytest.raises(SurgeryError, match="Pow node '/act/Pow' raises the new units to a power"):
        _plan(_pow_graph(0.5), {"/fc1/Gemm": 2})


def test_activation_after_reads_composite_forms():
    def first_layer(model):
        return next(iter(as_ir(model).graph)).outputs[0]

    assert activation_after(first_layer(forms.pytorch_mlp())) == "Relu"
    ffn = as_ir(forms.pytorch_transformer_ffn())
    fc1 = next(n for n in ffn.graph if n.name == "/fc1/MatMul")
    assert activation_after(fc1.outputs[0]) == "Gelu"
    swiglu = as_ir(forms.pytorch_swiglu())
    assert {activation_after(n.outputs[0]) for n in swiglu.graph if n.name in ("/gate/MatMul", "/up/MatMul")} == {
        "SwiGLU"
    }
    down = next(n for n in swiglu.graph if n.name == "/down/MatMul")
    assert activation_after(down.outputs[0]) is None
    assert init_family("Tanh") == "glorot" and init_family(None) == "glorot" and init_family("Relu") == "he"
    assert keras_activation("Relu", fused=True) == "relu" and keras_activation("Mish") == "mish"
    assert keras_activation("Mish", fused=True) is None and keras_activation("Erf") is None


def _split_graph(axis: int, opset: int = 17) -> onnx.ModelProto:
    """fc1 (4 units) → Split into two parts → Concat back → fc2."""
    sizes = [2, 2] if axis == 1 else [1, 1]
    split = helper.make_node("Split", ["h", "sizes"], ["a", "b"], name="/split/Split", axis=axis)
    if opset >= 18:
        split = helper.make_node("Split", ["h"], ["a", "b"], name="/split/Split", axis=axis, num_outputs=2)
    nodes = [
        forms.linear("fc1", "input", "h"),
        split,
        helper.make_node("Concat", ["a", "b"], ["c"], name="/cat/Concat", axis=axis),
        forms.linear("fc2", "c", "output"),
    ]
    rng = np.random.default_rng(0)
    inits = [
        tensor("fc1.weight", rng.normal(size=(4, 3)).astype(F32)),
        tensor("fc1.bias", np.zeros(4, F32)),
        tensor("fc2.weight", rng.normal(size=(2, 4)).astype(F32)),
        tensor("fc2.bias", np.zeros(2, F32)),
    ]
    if opset < 18:
        inits.append(tensor("sizes", np.array(sizes, np.int64)))
    graph = forms.main_graph(nodes, inits, [2, 3], [2, 2])
    return finish(graph, opset=opset) if opset < 18 else forms._finish_ir9(graph, opset)


def test_split_across_the_axis_keeps_positions_and_along_it_updates_its_sizes():
    plan = _plan(_split_graph(0), {"/fc1/Gemm": 1})
    assert ("/fc2/Gemm", 1, "fan-out", [[4, 5]]) in _edits(plan)
    model = _split_graph(1)
    plan = _plan(model, {"/fc1/Gemm": 1})
    literals = [(e.node.name, e.literal.tolist()) for e in plan.edits if e.role == "literal"]
    assert literals == [("/split/Split", [2, 3])]  # the new unit follows the last old one: second part
    assert {v.name: layout.ranges() for v, layout in plan.tensors} == {"h": [[4, 5]], "b": [[2, 3]], "c": [[4, 5]]}
    assert_equivalent(model, widen(model, {"/fc1/Gemm": 1}))
    with pytest.raises(SurgeryError, match="Split node '/split/Split' splits the widened axis into parts of sizes"):
        _plan(_split_graph(1, opset=18), {"/fc1/Gemm": 1})


def test_unknown_ops_and_domains_are_refused_by_name():
    nodes = [
        forms.linear("fc1", "input", "h"),
        helper.make_node("Sqrt", ["h"], ["s"], name="/s/Sqrt"),
        forms.linear("fc2", "s", "output"),
    ]
    rng = np.random.default_rng(0)
    inits = [
        tensor("fc1.weight", rng.normal(size=(4, 3)).astype(F32)),
        tensor("fc1.bias", np.zeros(4, F32)),
        tensor("fc2.weight", rng.normal(size=(2, 4)).astype(F32)),
        tensor("fc2.bias", np.zeros(2, F32)),
    ]
    model = finish(forms.main_graph(nodes, inits, ["batch", 3], ["batch", 2]))
    with pytest.raises(SurgeryError, match="Sqrt node '/s/Sqrt' is not an op the width analysis knows"):
        _plan(model, {"/fc1/Gemm": 1})


def test_docs_rule_table_matches_the_catalogue():
    """docs/widen-analysis.md's rule table lists exactly the catalogue's ops, kind by kind."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "widen-analysis.md").read_text()
    table = {}
    for line in text.split("## The rules, case by case")[1].split("\n\n")[1].splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = sorted(op.strip() for op in cells[1].split(","))
    kinds: dict[str, list[str]] = {}
    for op, entry in CATALOGUE.items():
        kinds.setdefault(entry.kind, []).append(op)
    assert table == {kind: sorted(ops) for kind, ops in kinds.items()}


def test_swiglu_up_gets_live_new_units_by_default():
    """output-zero: gate's and up's new columns are random (He), only down's new rows are zero,
    so the new units' silu(gate)·up is not zero and down's new rows get gradient."""
    model = forms.pytorch_swiglu(hidden=12)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in widen(model, {"/up/MatMul": 4}).graph.initializer}
    gate, up, down = weights["onnx::MatMul_70"], weights["onnx::MatMul_71"], weights["onnx::MatMul_72"]
    assert np.all(gate[:, 12:] != 0) and np.all(up[:, 12:] != 0) and not down[12:].any()
    assert np.abs(up[:, 12:]).max() <= np.sqrt(6 / 8)  # He-uniform with fan-in 8


def test_a_join_found_after_a_concat_read_the_other_branch_settles():
    """fc_a and fc_b meet first in a Concat (fc_b not growing: fine), then in an Add that makes
    fc_b grow too: the Concat is worked out again with both branches grown."""
    rng = np.random.default_rng(0)
    nodes = [
        forms.linear("a", "input", "ha"),
        forms.linear("b", "input", "hb"),
        helper.make_node("Concat", ["ha", "hb"], ["cat"], name="/cat/Concat", axis=1),
        forms.linear("c", "cat", "yc"),
        helper.make_node("Add", ["ha", "hb"], ["sum"], name="/sum/Add"),
        forms.linear("d", "sum", "yd"),
        helper.make_node("Add", ["yc", "yd"], ["output"], name="/out/Add"),
    ]
    inits = [
        tensor("a.weight", rng.normal(size=(4, 3)).astype(F32)),
        tensor("a.bias", rng.normal(size=4).astype(F32)),
        tensor("b.weight", rng.normal(size=(4, 3)).astype(F32)),
        tensor("b.bias", rng.normal(size=4).astype(F32)),
        tensor("c.weight", rng.normal(size=(2, 8)).astype(F32)),
        tensor("c.bias", np.zeros(2, F32)),
        tensor("d.weight", rng.normal(size=(2, 4)).astype(F32)),
        tensor("d.bias", np.zeros(2, F32)),
    ]
    model = finish(forms.main_graph(nodes, inits, ["batch", 3], ["batch", 2]))
    (group,) = _plan(model, {"/a/Gemm": 2}).groups
    assert [m.node.name for m in group.members] == ["/a/Gemm", "/b/Gemm"]
    assert ("/c/Gemm", 1, "fan-out", [[4, 6], [10, 12]]) in _edits(_plan(model, {"/a/Gemm": 2}))
    assert_equivalent(model, widen(model, {"/a/Gemm": 2}))


def test_symmetry_of_a_depthwise_conv_compares_its_own_filters():
    from surgery.symmetry import symmetric_groups

    model = _mobile_block()
    assert symmetric_groups(model, "/dw/Conv") == []
    wide = widen(model, {"/dw/Conv": 3}, init="all-zero")
    assert symmetric_groups(wide, "/dw/Conv") == [[4, 5, 6]]
    assert symmetric_groups(wide, "/expand/Conv") == [[4, 5, 6]]
