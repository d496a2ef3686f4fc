"""Residual block detection (`surgery.blocks`), one rule per test, on graphs in PyTorch's form."""

from __future__ import annotations

import json

import deepen_graphs as graphs
import forms
import numpy as np
import onnx
from conftest import run_surgery
from onnx import TensorProto, helper

from surgery.blocks import block_sites, find_blocks
from surgery.graph import as_ir


def blocks_of(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    return [(b.name, b.kind, b.nodes) for b in find_blocks(as_ir(model))]


def test_residual_mlp_blocks_are_named_by_module_path():
    model = graphs.residual_mlp(blocks=3)
    found = find_blocks(as_ir(model))
    # norm, fc1, relu, fc2, Add
    assert [(b.name, b.kind, b.nodes) for b in found] == [(f"blocks.{i}", "residual", 5) for i in range(3)]
    assert found[0].input == "/stem/Gemm_output_0"
    assert [b.input for b in found[1:]] == [b.output for b in found[:-1]], "blocks follow each other on the stream"
    # LayerNormalization 2·6, fc1 6·10 + 10, fc2 10·6 + 6
    assert found[0].parameters == 12 + 70 + 66


def test_transformer_block_joins_attention_and_feed_forward():
    sites = block_sites(as_ir(graphs.transformer(blocks=2)))
    assert [(s.block.name, s.block.kind, len(s.residuals)) for s in sites] == [
        ("layers.0", "transformer", 2),
        ("layers.1", "transformer", 2),
    ]
    site = sites[0]
    ops = [n.op_type for n in site.nodes]
    assert ops.count("Softmax") == 1 and ops.count("LayerNormalization") == 2
    assert "Constant" in ops, "the scale Constant the attention reads belongs to the block"
    assert not {"Shape", "Range", "Cast"} & set(ops), "the position table computed once is read, not part of the block"


def test_a_table_read_by_every_block_is_not_a_skip():
    # the table is an ancestor of block 1's scores (through block 0 and the stream), yet the
    # scores + table Add is no residual Add: only the two per block are
    sites = block_sites(as_ir(graphs.transformer(blocks=3)))
    adds = [r.add.name for s in sites for r in s.residuals]
    assert adds == [f"/layers.{i}/{a}" for i in range(3) for a in ("Add", "Add_1")]


def test_resnet_blocks_end_after_their_relu():
    sites = block_sites(as_ir(graphs.residual_cnn(blocks=2)))
    assert [s.block.name for s in sites] == ["layer1.0", "layer1.1"]
    assert [s.residuals[0].tail.op_type for s in sites] == ["Relu", "Relu"]
    assert sites[1].entry is sites[0].exit, "the stream runs through the ReLU"


def test_post_norm_blocks_are_listed_with_their_layer_norm():
    sites = block_sites(as_ir(graphs.residual_mlp(post_norm=True)))
    assert [s.block.name for s in sites] == ["blocks.0", "blocks.1"]
    assert sites[0].residuals[0].tail.op_type == "LayerNormalization"
    assert sites[1].entry is sites[0].exit


def test_plain_networks_have_no_blocks():
    assert blocks_of(forms.pytorch_mlp()) == []
    assert blocks_of(forms.pytorch_cnn()) == []


def test_gelu_tanh_polynomial_is_not_a_residual_add():
    # x + 0.044715·x³ adds a tensor to something computed from it, but through no layer
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [
        helper.make_node("Pow", ["x", "three"], ["cube"], name="/act/Pow"),
        helper.make_node("Mul", ["cube", "c"], ["scaled"], name="/act/Mul"),
        helper.make_node("Add", ["x", "scaled"], ["y"], name="/act/Add"),
    ]
    inits = [forms.tensor("three", np.float32(3.0)), forms.tensor("c", np.float32(0.044715))]
    model = forms.finish(helper.make_graph(nodes, "g", [x], [y], inits))
    assert blocks_of(model) == []


def test_a_downsample_block_has_no_identity_skip():
    # relu(conv_b(x) + conv_a(x)): neither operand is an ancestor of the other
    rng = np.random.default_rng(0)
    conv = dict(kernel_shape=[1, 1])
    nodes = [
        helper.make_node("Conv", ["input", "a.weight"], ["a"], name="/a/Conv", **conv),
        helper.make_node("Conv", ["input", "b.weight"], ["b"], name="/b/Conv", **conv),
        helper.make_node("Add", ["a", "b"], ["sum"], name="/Add"),
        helper.make_node("Relu", ["sum"], ["output"], name="/Relu"),
    ]
    inits = [forms.tensor(n, rng.normal(size=(4, 3, 1, 1)).astype(np.float32)) for n in ("a.weight", "b.weight")]
    model = forms.finish(forms.main_graph(nodes, inits, ["batch", 3, 5, 5], ["batch", 4, 5, 5]))
    assert blocks_of(model) == []


def test_inspect_lists_blocks(capfd, tmp_path):
    path = tmp_path / "t.onnx"
    onnx.save(graphs.transformer(blocks=2), path)
    done = run_surgery(capfd, "inspect", path, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    listed = [(b["name"], b["kind"]) for b in document["blocks"]]
    assert listed == [("layers.0", "transformer"), ("layers.1", "transformer")]
    assert set(document["blocks"][0]) == {"name", "kind", "input", "output", "nodes", "parameters"}
    table = run_surgery(capfd, "inspect", path)
    assert "2 residual blocks" in table.stdout and "layers.1" in table.stdout
