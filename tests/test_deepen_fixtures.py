"""`surgery deepen` on the real exports in tests/fixtures/ (PyTorch classic and dynamo, tf2onnx):
after every block the outputs stay bitwise equal, the parameters grow by the copied block's,
inspect lists one more block; BERT's post-norm blocks are refused with the reason; deepening
composes with widening in both orders; the same seed writes the same bytes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import ROOT, assert_one_line_error, run_surgery

from surgery.blocks import find_blocks
from surgery.deepening import deepen
from surgery.errors import SurgeryError
from surgery.graph import as_ir
from surgery.layers import find_layers, resolve_layer
from surgery.rewrite import widen
from surgery.testing import assert_equivalent

FIXTURES = ROOT / "tests" / "fixtures"
PRE_NORM = [
    "gpt2_sdpa",
    "gpt2_eager",
    "gpt2_dynamo",
    "llama",
    "llama_gqa",
    "keras_transformer",
    "resnet",
    "mobilenetv2",
]
#: What inspect calls the blocks (module paths for PyTorch, Keras layer prefixes for tf2onnx).
BLOCKS = {
    "gpt2_sdpa": ["transformer.h.0", "transformer.h.1"],
    "gpt2_eager": ["transformer.h.0", "transformer.h.1"],
    "gpt2_dynamo": ["transformer.h.0", "transformer.h.1"],
    "llama": ["model.layers.0", "model.layers.1"],
    "llama_gqa": ["model.layers.0", "model.layers.1"],
    "keras_transformer": ["block0", "block1"],
    "bert": ["encoder.layer.0", "encoder.layer.1"],
    "resnet": ["layer1.0", "layer3.0"],
}


def load(name: str) -> onnx.ModelProto:
    return onnx.load(FIXTURES / f"{name}.onnx")


def dims_of(model: onnx.ModelProto) -> dict[str, int]:
    """A length for every symbolic dimension after the batch (the sequence)."""
    return {d.dim_param: 5 for i in model.graph.input for d in i.type.tensor_type.shape.dim[1:] if d.dim_param}


def float_parameters(model: onnx.ModelProto) -> int:
    count = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
            count += int(np.prod(node.attribute[0].t.dims))
    return count


def check(model: onnx.ModelProto, deeper: onnx.ModelProto) -> None:
    onnx.checker.check_model(deeper, full_check=True)
    names = [n.name for n in deeper.graph.node]
    assert len(set(names)) == len(names), "node names stay unique"
    original = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    grown = [n for n in deeper.graph.node if ".grown." in n.name and n.name not in {m.name for m in model.graph.node}]
    assert grown and not {i for n in grown for i in n.input} & original, "the copies own every constant they read"
    assert_equivalent(model, deeper, dims=dims_of(model), samples=4, batch=2)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_blocks_are_named_by_module_path(name):
    blocks = find_blocks(as_ir(load(name)))
    assert [b.name for b in blocks] == BLOCKS[name]
    assert {b.kind for b in blocks} == ({"residual"} if name == "resnet" else {"transformer"})
    alike = len({(b.nodes, b.parameters) for b in blocks}) == 1
    assert alike or name == "resnet", "a model's transformer blocks are alike"


@pytest.mark.parametrize("name", PRE_NORM)
def test_deepen_after_every_block_is_bitwise_equal(name):
    model = load(name)
    blocks = find_blocks(as_ir(model))
    assert blocks
    for index, block in enumerate(blocks):
        deeper = deepen(model, after=block.name)
        check(model, deeper)
        after = find_blocks(as_ir(deeper))
        assert len(after) == len(blocks) + 1
        grown = after[index + 1]
        assert (grown.name, grown.kind, grown.nodes, grown.parameters) == (
            f"{block.name}.grown.0",
            block.kind,
            block.nodes,
            block.parameters,
        )
        assert float_parameters(deeper) == float_parameters(model) + block.parameters


def test_gpt2_from_two_to_four_blocks_with_random_init():
    model = load("gpt2_sdpa")
    deeper = deepen(model, after="transformer.h.1", count=2, init="random", seed=1)
    check(model, deeper)
    assert [b.name for b in find_blocks(as_ir(deeper))] == [
        "transformer.h.0",
        "transformer.h.1",
        "transformer.h.1.grown.0",
        "transformer.h.1.grown.1",
    ]


def test_bert_post_norm_blocks_are_refused_with_the_reason():
    model = load("bert")
    for block in find_blocks(as_ir(model)):
        with pytest.raises(SurgeryError, match="post-norm .* computes LayerNormalization\\(x \\+ 0\\), which is not x"):
            deepen(model, after=block.name)


@pytest.mark.parametrize(
    ("name", "block", "layer"),
    [
        ("gpt2_sdpa", "transformer.h.0", "transformer.h.0.mlp.c_fc"),
        ("llama", "model.layers.0", "/model/model/layers.0/mlp/gate_proj/MatMul"),
        ("keras_transformer", "block1", "block1_ffn_up"),
        ("resnet", "layer1.0", "/layer1/layer1.0/conv1/Conv"),
    ],
)
def test_widening_and_deepening_compose_in_both_orders(name, block, layer):
    model = load(name)
    widened = widen(model, {layer: 4})
    widened_then_deepened = deepen(widened, after=block)
    check(model, widened_then_deepened)
    tensors = widened_tensors(widened_then_deepened)
    before = widened_tensors(widened)
    assert len(tensors) == 2 * len(before), "the copy's widened tensors are recorded as the original's"
    deepened = deepen(model, after=block)
    deepened_then_widened = widen(deepened, {layer: 4})
    check(model, deepened_then_widened)
    check(model, widen(deepened, {grown_twin(model, deepened, layer, block): 4}))


def widened_tensors(model: onnx.ModelProto) -> dict:
    return json.loads(next(p.value for p in model.metadata_props if p.key == "surgery.widened_tensors"))


def grown_twin(model: onnx.ModelProto, deepened: onnx.ModelProto, layer: str, block: str) -> str:
    """The node name of `layer`'s copy in block ``<block>.grown.0``."""
    node = resolve_layer(as_ir(model), layer).layer.node
    (twin,) = [
        lay.node
        for lay in find_layers(as_ir(deepened))
        if node in (lay.node.replace(f"{block}.grown.0/", ""), lay.node.replace(".grown.0", "")) and lay.node != node
    ]
    return twin


def test_cli_deepens_gpt2_deterministically(capfd, tmp_path):
    source = FIXTURES / "gpt2_sdpa.onnx"
    first, second, third = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    arguments = ["--after", "transformer.h.1", "--count", "2", "--init", "random"]
    done = run_surgery(capfd, "deepen", source, "-o", first, *arguments, "--seed", "4")
    assert done.returncode == 0, done.stderr
    assert "transformer.h.1.grown.0, transformer.h.1.grown.1" in done.stdout
    assert "verified: outputs bitwise equal" in done.stdout
    assert run_surgery(capfd, "deepen", source, "-o", second, *arguments, "--seed", "4").returncode == 0
    assert run_surgery(capfd, "deepen", source, "-o", third, *arguments, "--seed", "5").returncode == 0
    assert first.read_bytes() == second.read_bytes() != third.read_bytes()
    listed = json.loads(run_surgery(capfd, "inspect", first, "--json").stdout)["blocks"]
    assert len(listed) == 4
    history = json.loads(next(p.value for p in onnx.load(first).metadata_props if p.key == "surgery.deepen_history"))
    assert history == [
        {
            "after": "transformer.h.1",
            "kind": "block",
            "added": ["transformer.h.1.grown.0", "transformer.h.1.grown.1"],
            "count": 2,
            "init": "random",
            "seed": 4,
            "nodes": listed[2]["nodes"],
            "parameters": listed[2]["parameters"],
            "zeroed": ["/model/transformer/h.1/attn/c_proj/Gemm", "/model/transformer/h.1/mlp/c_proj/Gemm"],
        }
    ]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--after", "transformer.h.7"], "no block named 'transformer.h.7'; did you mean"),
        (["--after", "/model/transformer/h.0/mlp/c_fc/Gemm"], "is a layer, not a residual block"),
        (["--after", "transformer.h.0", "--count", "0"], "--count must be at least 1"),
    ],
)
def test_cli_refusals_are_one_line_errors(capfd, tmp_path, arguments, says):
    out = tmp_path / "out.onnx"
    done = run_surgery(capfd, "deepen", FIXTURES / "gpt2_sdpa.onnx", "-o", out, *arguments)
    assert_one_line_error(done, says=(says,))
    assert not out.exists()


def test_cli_refuses_bert_and_writes_nothing(capfd, tmp_path):
    out = tmp_path / "out.onnx"
    done = run_surgery(capfd, "deepen", FIXTURES / "bert.onnx", "-o", out, "--after", "encoder.layer.0")
    assert_one_line_error(done, says=("post-norm",))
    assert list(tmp_path.iterdir()) == []
