"""Widening graphs in the exact forms PyTorch's exporter and skl2onnx write (tests/forms.py):
transformer feed-forward blocks, SwiGLU, BatchNormalization, Conv → Flatten, skl2onnx's MLP;
plus metadata, determinism, composition of two widenings, and the input never changing."""

from __future__ import annotations

import json

import forms
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from surgery.errors import SurgeryError
from surgery.rewrite import widen
from surgery.testing import assert_equivalent
from surgery.verification import verify


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _meta(model: onnx.ModelProto, key: str):
    return json.loads(next(p.value for p in model.metadata_props if p.key == key))


@pytest.mark.parametrize("gelu", ["erf", "op"])
@pytest.mark.parametrize("init", ["output-zero", "all-zero"])
def test_transformer_ffn_inner_width_widens_exactly(gelu, init):
    model = forms.pytorch_transformer_ffn(gelu=gelu)
    wide = widen(model, {"/fc1/MatMul": 6}, init=init, seed=3)
    assert_equivalent(model, wide)
    old, new = _weights(model), _weights(wide)
    assert new["onnx::MatMul_91"].shape == (8, 22) and new["fc1.bias"].shape == (22,)
    assert new["onnx::MatMul_92"].shape == (22, 8)
    np.testing.assert_array_equal(new["onnx::MatMul_91"][:, :16], old["onnx::MatMul_91"])
    assert not new["onnx::MatMul_92"][16:].any(), "fan-out of the new units must be exactly zero"
    assert new["onnx::MatMul_91"][:, 16:].any() == (init == "output-zero")
    assert wide.opset_import == model.opset_import


def test_output_zero_fan_in_is_he_uniform_after_gelu():
    wide = widen(forms.pytorch_transformer_ffn(d_model=8, hidden=16), {"/fc1/MatMul": 400}, seed=0)
    fan_in = _weights(wide)["onnx::MatMul_91"][:, 16:]
    limit = np.sqrt(6 / 8)  # He-uniform with the layer's fan-in (8), as Keras computes it
    assert np.abs(fan_in).max() <= limit and np.abs(fan_in).max() > 0.95 * limit
    glorot = widen(forms.pytorch_transformer_ffn(), {"/fc1/MatMul": 400}, fan_in="glorot")
    assert np.abs(_weights(glorot)["onnx::MatMul_91"][:, 16:]).max() <= np.sqrt(6 / (8 + 416))
    normal = _weights(widen(forms.pytorch_transformer_ffn(), {"/fc1/MatMul": 400}, fan_in="normal"))["onnx::MatMul_91"][
        :, 16:
    ]
    assert abs(normal.std() - np.sqrt(1 / 8)) < 0.02  # LeCun normal: N(0, 1/fan_in)


@pytest.mark.parametrize("embed", [False, True])
def test_widening_the_residual_stream_is_refused(embed):
    model = forms.pytorch_transformer_ffn(embed=embed)
    blocker = (
        r"LayerNormalization node '/norm/LayerNormalization'"
        if embed
        else r"Add node '/Add' joins the widened tensor with graph input 'input'"
    )
    with pytest.raises(SurgeryError, match=blocker):
        widen(model, {"/fc2/MatMul": 2})
    if embed:
        with pytest.raises(
            SurgeryError, match=r"LayerNormalization node '/norm/LayerNormalization' normalises over the widened axis"
        ):
            widen(model, {"/embed/MatMul": 2})


def test_swiglu_gate_and_up_grow_together():
    model = forms.pytorch_swiglu(hidden=12)
    wide = widen(model, {"/gate/MatMul": 4}, seed=1)
    assert_equivalent(model, wide)
    new = _weights(wide)
    assert new["onnx::MatMul_70"].shape == (8, 16) and new["onnx::MatMul_71"].shape == (8, 16)
    assert new["onnx::MatMul_72"].shape == (16, 8) and not new["onnx::MatMul_72"][12:].any()
    # Both members of the multiplicative group get random fan-in: a zero `up` would leave the
    # new units' product (and every gradient through it) at zero forever.
    assert new["onnx::MatMul_70"][:, 12:].all() and new["onnx::MatMul_71"][:, 12:].all()
    history = _meta(wide, "surgery.widen_history")
    assert {(r["node"], r["old_width"], r["new_width"]) for r in history} == {
        ("/gate/MatMul", 12, 16),
        ("/up/MatMul", 12, 16),
    }
    with pytest.raises(SurgeryError, match=r"Add node '/Add'"):
        widen(model, {"/down/MatMul": 2})


def test_batchnorm_gets_neutral_parameters_and_net2net_copies_them():
    model = forms.pytorch_mlp_bn(hidden=10)
    wide = widen(model, {"/fc1/Gemm": 3})
    assert_equivalent(model, wide)
    new = _weights(wide)
    np.testing.assert_array_equal(new["bn1.weight"][10:], 1)
    np.testing.assert_array_equal(new["bn1.running_var"][10:], 1)
    assert not new["bn1.bias"][10:].any() and not new["bn1.running_mean"][10:].any()
    copied = _weights(widen(model, {"/fc1/Gemm": 3}, init="net2net", seed=4))
    for name in ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "fc1.bias"):
        assert set(copied[name][10:]) <= set(copied[name][:10]), name
    report = verify(model, widen(model, {"/fc1/Gemm": 3}, init="net2net", seed=4))
    assert max(o.max_abs_diff for o in report.outputs) < 1e-5


def test_pytorch_cnn_flatten_is_channel_major():
    model = forms.pytorch_cnn(channels=4, size=8)
    wide = widen(model, {"/conv1/Conv": 3})
    assert_equivalent(model, wide)
    tensors = _meta(wide, "surgery.widened_tensors")
    flat = tensors["/flatten/Flatten_output_0"]
    spatial = flat["original"] // 4
    assert flat["new"] == [[4 * spatial, 7 * spatial]]
    assert _weights(wide)["fc.weight"].shape[1] == 7 * spatial


def test_sklearn_mlp_keeps_labels_and_probabilities():
    model = forms.sklearn_mlp(hidden=8)
    wide = widen(model, {"MatMul": 5}, init="all-zero")
    report = assert_equivalent(model, wide)
    assert {o.name for o in report.outputs} == {"label", "probabilities"}
    assert _weights(wide)["intercepts"].shape == (1, 13)  # skl2onnx's 2-D bias grows on its last axis
    with pytest.raises(SurgeryError, match=r"Softmax node 'Softmax'"):
        widen(model, {"MatMul1": 1})


def test_convnet_refuses_a_widening_that_reaches_a_second_output():
    model = forms.pytorch_convnet()
    assert_equivalent(model, widen(model, {"/fc1/Gemm": 5}))
    with pytest.raises(SurgeryError, match=r"graph output 'pooled'"):
        widen(model, {"/conv1/Conv": 2})


def test_same_seed_gives_identical_bytes_and_another_seed_does_not():
    model = forms.pytorch_cnn()
    plan = {"/conv1/Conv": 3}
    for init in ("output-zero", "net2net", "all-random"):
        first = widen(model, plan, init=init, seed=7).SerializeToString()
        assert widen(model, dict(plan), init=init, seed=7).SerializeToString() == first
        assert widen(model, plan, init=init, seed=8).SerializeToString() != first


def test_input_model_is_never_modified():
    proto = forms.pytorch_mlp_bn()
    before = proto.SerializeToString()
    widen(proto, {"/fc1/Gemm": 2})
    assert proto.SerializeToString() == before
    model = ir.serde.deserialize_model(forms.pytorch_mlp_bn())
    before = ir.serde.serialize_model(model).SerializeToString()
    result = widen(model, {"/fc1/Gemm": 2})
    assert isinstance(result, ir.Model) and result is not model
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_widening_twice_composes_metadata_relative_to_the_original():
    model = forms.pytorch_mlp(hidden=16)
    once = widen(model, {"/fc1/Gemm": 2}, seed=1)
    twice = widen(once, {"/fc1/Gemm": 3}, init="all-zero", seed=2)
    assert_equivalent(model, twice)
    history = _meta(twice, "surgery.widen_history")
    assert [(r["old_width"], r["new_width"], r["strategy"], r["seed"]) for r in history] == [
        (16, 18, "output-zero", 1),
        (18, 21, "all-zero", 2),
    ]
    assert _meta(twice, "surgery.widened_tensors")["/fc1/Gemm_output_0"] == {
        "axis": 1,
        "original": 16,
        "new": [[16, 21]],
    }


def test_align_rounds_new_widths_up():
    wide = widen(forms.pytorch_mlp(hidden=16), {"/fc1/Gemm": 3}, align=8)
    assert _weights(wide)["fc1.weight"].shape == (24, 20)


MODELS = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "models").glob("*.onnx"))


@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_reference_models_widen_exactly(path):
    from surgery.layers import find_layers
    from surgery.modelio import load_model

    model = load_model(path)
    hidden = [layer.name for layer in find_layers(model)][:-1]  # the last layer feeds the output
    assert hidden
    wide = widen(model, {name: 3 + i for i, name in enumerate(hidden)}, seed=2)
    assert isinstance(wide, ir.Model)
    assert_equivalent(path, wide)


def test_convnet_concat_offsets_and_residual_coupling_keep_the_other_output_exact():
    """PyTorch convnet: conv1 → BN → PReLU, residual Add with conv2 (coupled), Concat with a
    side branch (new channels land at an offset), padded pools, Flatten → Gemm; the second
    output 'pooled' grows (allowed), its old positions and 'output' stay bitwise equal."""
    import onnxruntime as ort

    from surgery.verification import session_options

    model = forms.pytorch_convnet(channels=4)
    wide = widen(model, {"/conv1/Conv": 3}, allow_output_change=True, seed=5)
    history = _meta(wide, "surgery.widen_history")
    assert {r["node"] for r in history} == {"/conv1/Conv", "/conv2/Conv"}
    concat = _meta(wide, "surgery.widened_tensors")["/Concat_output_0"]
    assert concat == {"axis": 1, "original": 8, "new": [[4, 7]]}
    feed = {"input": np.random.default_rng(0).normal(size=(4, 2, 9, 9)).astype(np.float32)}
    runs = [
        ort.InferenceSession(m.SerializeToString(), session_options("disable"), providers=["CPUExecutionProvider"]).run(
            None, feed
        )
        for m in (model, wide)
    ]
    names = [o.name for o in model.graph.output]
    before, after = dict(zip(names, runs[0])), dict(zip(names, runs[1]))
    np.testing.assert_array_equal(before["output"], after["output"])
    kept = np.r_[0:4, 7:11]
    np.testing.assert_array_equal(before["pooled"], after["pooled"][:, kept])


def test_width_one_layer_bias_gets_zero_entries_for_new_units():
    """A [1]-shaped bias of a one-unit layer is a bias, not a broadcast scalar (grow's 1 → 2)."""
    import forms
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    import surgery

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
            helper.make_node("Relu", ["hb"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
        [
            forms.tensor("w1", np.ones((4, 1), np.float32)),
            forms.tensor("b1", np.array([0.7], np.float32)),
            forms.tensor("w2", np.ones((1, 3), np.float32)),
        ],
    )
    model = forms.finish(graph)
    for init in ("output-zero", "all-zero"):
        wide = surgery.widen(model, {"mm1": 2}, init=init)
        bias = {t.name: onnx.numpy_helper.to_array(t) for t in wide.graph.initializer}["b1"]
        assert bias.tolist() == [np.float32(0.7), 0.0, 0.0]
        assert surgery.verify(model, wide).equivalent
