"""Friendly names from PyTorch module paths and glob patterns over layer names (`surgery.naming`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import assert_one_line_error, run_surgery
from onnx import TensorProto, helper, numpy_helper

import surgery
from surgery.errors import SurgeryError
from surgery.graph import as_ir
from surgery.naming import expand, module_path, parameter_path

FIXTURES = Path(__file__).parent / "fixtures"


def names(fixture: str) -> dict[str, str]:
    """Friendly name -> node name of a fixture's layers."""
    return {layer.name: layer.node for layer in surgery.find_layers(as_ir(onnx.load(FIXTURES / f"{fixture}.onnx")))}


@pytest.mark.parametrize(
    "node,path",
    [
        ("/model/transformer/h.0/mlp/c_fc/Gemm", "model.transformer.h.0.mlp.c_fc"),
        ("/fc1/Gemm", "fc1"),
        ("/Gemm", None),  # no module segment
        ("node_addmm_2", None),
        ("dense/MatMul", None),  # tf2onnx-style, not a PyTorch path
        ("//x/Gemm", None),
    ],
)
def test_module_path(node, path):
    assert module_path(node) == path


@pytest.mark.parametrize(
    "name,path",
    [
        ("transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc"),
        ("onnx::MatMul_123", None),  # the classic exporter's transposed copy
        ("val_231", None),
        (".weight", None),
    ],
)
def test_parameter_path_only_for_state_dict_keys(name, path):
    assert parameter_path(ir.Value(name=name)) == path


@pytest.mark.parametrize(
    "fixture,friendly,node",
    [
        ("gpt2_sdpa", "transformer.h.0.mlp.c_fc", "/model/transformer/h.0/mlp/c_fc/Gemm"),  # wrapper's "model." dropped
        ("gpt2_sdpa", "lm_head", "/model/lm_head/MatMul"),  # tied weight: the node path, not the embedding's name
        ("gpt2_dynamo", "transformer.h.1.mlp.c_fc", "node_addmm_6"),  # generic node name: the weight's state_dict key
        ("bert", "encoder.layer.0.attention.self.query", "/model/encoder/layer.0/attention/self/query/MatMul"),
        ("llama", "model.layers.1.mlp.down_proj", "/model/model/layers.1/mlp/down_proj/MatMul"),
        ("keras_transformer", "block0_ffn_up", "keras_transformer_1/block0_ffn_up_1/Tensordot/MatMul"),  # Keras name
    ],
)
def test_friendly_names_of_real_exports(fixture, friendly, node):
    assert names(fixture)[friendly] == node


def test_tf2onnx_generated_projections_are_named_after_their_keras_sublayer():
    """MultiHeadAttention's einsums become Gemm nodes tf2onnx names `Gemm__N` (new numbers on every
    conversion); each is named after the Keras path its output reaches."""
    found = names("keras_transformer")
    for block in ("block0_mha", "block1_mha"):
        for projection in ("query", "key", "value"):
            node = found[f"{block}.{projection}"]
            assert node.startswith("Gemm__") and "/" not in node


def test_every_pytorch_layer_gets_a_unique_friendly_name():
    for fixture in ("gpt2_sdpa", "gpt2_eager", "bert", "llama", "llama_gqa"):
        layers = surgery.find_layers(as_ir(onnx.load(FIXTURES / f"{fixture}.onnx")))
        assert len({layer.name for layer in layers}) == len(layers)
        assert all(not layer.name.startswith("/") for layer in layers), fixture


def test_a_name_two_layers_would_share_is_not_used():
    """A module holding two Gemms (`/block/Gemm`, `/block/Gemm_1`): both keep their node names."""
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight2 = numpy_helper.from_array(np.ones((4, 4), np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w"], ["h"], name="/block/Gemm"),
            helper.make_node("Gemm", ["h", "w2"], ["y"], name="/block/Gemm_1"),
            helper.make_node("Gemm", ["y", "w2"], ["z"], name="/head/Gemm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        [weight, weight2],
    )
    layers = surgery.find_layers(as_ir(helper.make_model(graph)))
    assert [layer.name for layer in layers] == ["/block/Gemm", "/block/Gemm_1", "head"]


def test_expand_globs_and_plain_names():
    candidates = [("a.0.fc", "/a/0/fc/Gemm"), ("a.1.fc", "/a/1/fc/Gemm"), ("a.0.out", "/a/0/out/Gemm")]
    assert expand({"a.*.fc": 3}, candidates, "layer") == {"a.0.fc": 3, "a.1.fc": 3}
    assert expand({"a.0.out": 1, "a.1.*": 2}, candidates, "layer") == {"a.0.out": 1, "a.1.fc": 2}
    assert expand({"/a/0/fc/Gemm": 1}, candidates, "layer") == {"/a/0/fc/Gemm": 1}  # plain names stay as given
    assert expand({"/a/?/fc/*": 1}, candidates, "layer") == {"a.0.fc": 1, "a.1.fc": 1}  # node names match too
    with pytest.raises(SurgeryError, match=r"no layer matches 'a\.\*\.fcc'; close names: .*a\.0\.fc"):
        expand({"a.*.fcc": 1}, candidates, "layer")
    with pytest.raises(SurgeryError, match="requested twice"):
        expand({"a.0.fc": 1, "a.*.fc": 2}, candidates, "layer")


def test_layer_glob_widens_every_match_in_one_run():
    original = onnx.load(FIXTURES / "llama.onnx")
    wide = surgery.widen(original, {"model.layers.*.mlp.up_proj": 8})
    history = json.loads({p.key: p.value for p in wide.metadata_props}["surgery.widen_history"])
    # gate_proj is coupled to up_proj (SwiGLU) and grows with it, in both layers
    assert sorted(r["layer"] for r in history) == [
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
    ]
    assert surgery.verify(original, wide, dims={"sequence": 5}).equivalent


def test_cli_layer_glob_matching_nothing_is_a_one_line_error(capfd, tmp_path):
    out = tmp_path / "w.onnx"
    result = run_surgery(
        capfd, "widen", FIXTURES / "bert.onnx", "-o", out, "--layer", "encoder.layer.*.intermediate.dens=4"
    )
    assert_one_line_error(result, says=("no layer matches", "encoder.layer.0.intermediate.dense"))
    assert not out.exists()
