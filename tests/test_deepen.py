"""`surgery.deepen` on graphs in PyTorch's form: exactness, the copy's parameters, forks, names,
metadata, determinism, Net2DeeperNet identity layers, and every refusal with its reason."""

from __future__ import annotations

import json

import deepen_graphs as graphs
import forms
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from surgery.blocks import find_blocks
from surgery.deepening import deepen
from surgery.errors import SurgeryError
from surgery.graph import as_ir
from surgery.metadata import DEEPEN_HISTORY_KEY
from surgery.testing import assert_equivalent

MODELS = {
    "mlp": lambda: graphs.residual_mlp(blocks=2),
    "mlp-output": lambda: graphs.residual_mlp(blocks=2, head=False),
    "resnet": lambda: graphs.residual_cnn(blocks=2),
    "resnet-bn": lambda: graphs.residual_cnn(blocks=2, batchnorm=True),
    "transformer": lambda: graphs.transformer(blocks=2),
}


def float_parameters(model: onnx.ModelProto) -> int:
    """Elements of every float initializer and Constant node (what a block copy adds)."""
    count = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
            count += int(np.prod(node.attribute[0].t.dims))
    return count


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def history(model: onnx.ModelProto) -> list[dict]:
    return json.loads(next(p.value for p in model.metadata_props if p.key == DEEPEN_HISTORY_KEY))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("init", ["copy", "random"])
def test_deepen_after_each_block_is_bitwise_equal(name, init):
    model = MODELS[name]()
    before = find_blocks(as_ir(model))
    for index, block in enumerate(before):
        deeper = deepen(model, after=block.name, count=2, init=init, seed=3)
        onnx.checker.check_model(deeper, full_check=True)
        assert_equivalent(model, deeper)
        after = find_blocks(as_ir(deeper))
        names = [b.name for b in after]
        assert names == [*names[: index + 1], f"{block.name}.grown.0", f"{block.name}.grown.1", *names[index + 3 :]]
        assert names[: index + 1] + names[index + 3 :] == [b.name for b in before]
        grown = [(b.kind, b.nodes, b.parameters) for b in after[index + 1 : index + 3]]
        assert grown == [(block.kind, block.nodes, block.parameters)] * 2
        assert float_parameters(deeper) == float_parameters(model) + 2 * block.parameters
        node_names = [n.name for n in deeper.graph.node]
        assert len(set(node_names)) == len(node_names)


def test_the_copy_zeroes_only_output_projections():
    model = graphs.transformer(blocks=2)
    deeper = deepen(model, after="layers.0", init="copy")
    old, new = initializers(model), initializers(deeper)
    grown = {name: array for name, array in new.items() if name not in old}
    assert all(name.startswith("layers.0.grown.0") for name in grown)
    zero = {name for name, array in grown.items() if not array.any() and array.dtype == np.float32}
    # o_proj and down_proj: weights and biases (the weights are onnx::MatMul_<n>)
    assert len(zero) == 4 and sum(".bias" in name for name in zero) == 2
    for name, array in grown.items():
        if name not in zero:
            source = name.replace("layers.0.grown.0/", "").replace("layers.0.grown.0", "layers.0")
            assert np.array_equal(array, old[source]), name
    (record,) = history(deeper)
    assert record["zeroed"] == ["/layers.0/self_attn/o_proj/MatMul", "/layers.0/mlp/down_proj/MatMul"]


def test_random_init_draws_weights_zeroes_biases_and_keeps_norms():
    model = graphs.transformer(blocks=2)
    first = deepen(model, after="layers.1", init="random", seed=7)
    old, new = initializers(model), initializers(first)
    grown = {name: array for name, array in new.items() if name not in old}
    norms = {name: array for name, array in grown.items() if "layernorm" in name}
    assert len(norms) == 4
    assert all(np.array_equal(a, old[n.replace("layers.1.grown.0", "layers.1")]) for n, a in norms.items())
    weights = {name: array for name, array in grown.items() if "MatMul" in name}
    drawn = {name for name, array in weights.items() if array.any()}
    assert len(drawn) == 4, "q, k, v and up are drawn; o and down start at zero"
    for name in drawn:
        assert not np.array_equal(weights[name], old[name.split("/", 1)[1]])
    assert not any(array.any() for name, array in grown.items() if name.endswith(".bias") and name not in norms)
    assert_equivalent(model, first)
    again = deepen(model, after="layers.1", init="random", seed=7)
    other = deepen(model, after="layers.1", init="random", seed=8)
    assert first.SerializeToString() == again.SerializeToString()
    assert first.SerializeToString() != other.SerializeToString()


def test_shared_constants_are_forked():
    model = graphs.transformer(blocks=2)
    deeper = deepen(model, after="layers.0", count=2)
    graph = deeper.graph
    original = {t.name for t in model.graph.initializer}
    new_nodes = [n for n in graph.node if ".grown." in n.name]
    read = {name for n in new_nodes for name in n.input}
    # merge_shape is shared by every block's Reshape: each copy reads its own
    assert {"layers.0.grown.0/merge_shape", "layers.0.grown.1/merge_shape"} <= read
    assert not read & (original - {"/start", "/delta", "/axes"}), "no parameter of the original block is aliased"
    assert "/Unsqueeze_output_0" in read, "the position table computed once is read, not copied"
    constants = [n for n in new_nodes if n.op_type == "Constant"]
    assert len(constants) == 2 and len({n.output[0] for n in constants}) == 2


def test_graph_output_keeps_its_name():
    model = graphs.residual_mlp(blocks=2, head=False)
    output = model.graph.output[0].name
    deeper = deepen(model, after="blocks.1")
    assert [o.name for o in deeper.graph.output] == [output]
    producer = next(n for n in deeper.graph.node if output in n.output)
    assert producer.name.startswith("/blocks.1.grown.0/")


def test_input_model_is_never_modified():
    model = graphs.transformer(blocks=2)
    before = model.SerializeToString()
    deepen(model, after="layers.0", count=2, init="random")
    assert model.SerializeToString() == before
    ir_model = as_ir(model)
    deeper = deepen(ir_model, after="layers.0")
    assert len(list(ir_model.graph)) == len(model.graph.node) and len(list(deeper.graph)) > len(model.graph.node)


def test_deepening_twice_composes():
    model = graphs.residual_mlp(blocks=2)
    once = deepen(model, after="blocks.0")
    twice = deepen(once, after="blocks.0")
    thrice = deepen(twice, after="blocks.0.grown.0")
    assert [b.name for b in find_blocks(as_ir(thrice))] == [
        "blocks.0",
        "blocks.0.grown.1",
        "blocks.0.grown.0",
        "blocks.0.grown.0.grown.0",
        "blocks.1",
    ]
    added = [r["added"] for r in history(thrice)]
    assert added == [["blocks.0.grown.0"], ["blocks.0.grown.1"], ["blocks.0.grown.0.grown.0"]]
    assert_equivalent(model, thrice)


@pytest.mark.parametrize(
    ("build", "node", "layer", "op"),
    [
        (lambda: forms.pytorch_mlp(), "/fc1/Gemm", "fc1", "Gemm"),
        (lambda: forms.pytorch_cnn(), "/conv1/Conv", "conv1", "Conv"),
        (lambda: forms.sklearn_mlp(), "MatMul", "MatMul", "MatMul"),
        (lambda: graphs.residual_mlp(), "/blocks.0/fc1/Gemm", "blocks.0.fc1", "Gemm"),
    ],
)
def test_identity_layers_after_a_relu_are_exact(build, node, layer, op):
    model = build()
    deeper = deepen(model, after=node, kind="identity", count=2)
    onnx.checker.check_model(deeper, full_check=True)
    assert_equivalent(model, deeper)
    new = [n for n in deeper.graph.node if n.name.startswith(f"{layer}.grown.")]
    assert [n.op_type for n in new].count(op) == 2 and [n.op_type for n in new].count("Relu") == 2
    weights = [
        a for name, a in initializers(deeper).items() if name.startswith(f"{layer}.grown.") and name.endswith("weight")
    ]
    for weight in weights:
        if op == "Conv":
            assert weight.shape[2:] == (3, 3) and weight[:, :, 1, 1].tolist() == np.eye(weight.shape[0]).tolist()
            assert weight.sum() == weight.shape[0]
        else:
            assert np.array_equal(weight, np.eye(weight.shape[0]))
    (record,) = history(deeper)
    assert record["kind"] == "identity" and record["added"] == [f"{layer}.grown.0", f"{layer}.grown.1"]
    assert record["after"] == node


@pytest.mark.parametrize(
    ("build", "arguments", "says"),
    [
        (
            lambda: graphs.residual_mlp(),
            dict(after="blocks.9"),
            "no block named 'blocks.9'; did you mean blocks.1, blocks.0",
        ),
        (lambda: graphs.residual_mlp(), dict(after="/blocks.0/fc1/Gemm"), "is a layer, not a residual block"),
        (lambda: forms.pytorch_mlp(), dict(after="x"), "the model has no residual blocks"),
        (lambda: graphs.residual_mlp(), dict(after="blocks.0", count=0), "count must be an integer of at least 1"),
        (lambda: graphs.residual_mlp(), dict(after="blocks.0", count=-2), "count must be an integer of at least 1"),
        (lambda: graphs.residual_mlp(), dict(after="blocks.0", init="zeros"), "unknown init 'zeros'"),
        (lambda: graphs.residual_mlp(), dict(after="blocks.0", seed=-1), "seed must be a non-negative integer"),
        (lambda: graphs.residual_mlp(post_norm=True), dict(after="blocks.1"), "post-norm"),
        (
            lambda: graphs.residual_cnn(tail="LeakyRelu"),
            dict(after="layer1.0"),
            "LeakyRelu is not the identity on the values it outputs",
        ),
        (lambda: graphs.residual_cnn(tail="Sigmoid"), dict(after="layer1.1"), "Sigmoid is not the identity"),
        (lambda: forms.pytorch_mlp(), dict(after="/fc2/Gemm", kind="identity"), "is not followed directly by a Relu"),
        (
            lambda: forms.pytorch_mlp(),
            dict(after="/fc9/Gemm", kind="identity"),
            "no layer named '/fc9/Gemm'; did you mean",
        ),
        (
            lambda: forms.pytorch_mlp(),
            dict(after="/fc1/Gemm", kind="identity", init="random"),
            "does not apply to kind='identity'",
        ),
        (lambda: forms.pytorch_mlp(), dict(after="/fc1/Gemm", kind="wide"), "unknown kind 'wide'"),
    ],
)
def test_refusals_name_the_reason(build, arguments, says):
    model = build()
    before = model.SerializeToString()
    with pytest.raises(SurgeryError) as error:
        deepen(model, **arguments)
    assert says in str(error.value)
    assert "\n" not in str(error.value)
    assert model.SerializeToString() == before


def test_a_branch_without_output_projection_is_refused():
    # x + softmax(x·W)·x: the branch ends in a MatMul of two computed tensors
    from onnx import helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["scores"], name="/attn/MatMul"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="/attn/Softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "input"], ["mixed"], name="/attn/MatMul_1"),
        helper.make_node("Add", ["input", "mixed"], ["output"], name="/Add"),
    ]
    model = forms.finish(
        forms.main_graph(nodes, [forms.tensor("w", rng.normal(size=(4, 4)).astype(np.float32))], [4, 4], [4, 4])
    )
    (block,) = find_blocks(as_ir(model))
    says = r"ends in '/attn/MatMul_1' \(MatMul\), not a Gemm, MatMul or Conv with a constant weight"
    with pytest.raises(SurgeryError, match=says):
        deepen(model, after=block.name)


def test_public_api_names_the_function_after_the_module_is_imported():
    import surgery
    import surgery.deepening  # noqa: F401 - importing the module must not shadow the function

    assert callable(surgery.deepen) and surgery.deepen is surgery.deepening.deepen
    assert surgery.find_blocks(graphs.residual_mlp())[0].name == "blocks.0"


def test_cli_keeps_an_existing_output_and_skips_verification_on_request(capfd, tmp_path):
    from conftest import assert_one_line_error, run_surgery

    source, out = tmp_path / "mlp.onnx", tmp_path / "deeper.onnx"
    onnx.save(graphs.residual_mlp(), source)
    out.write_bytes(b"keep me")
    refused = run_surgery(capfd, "deepen", source, "-o", out, "--after", "blocks.0")
    assert_one_line_error(refused, says=("already exists (use --force to overwrite)",))
    assert out.read_bytes() == b"keep me"
    done = run_surgery(capfd, "deepen", source, "-o", out, "--after", "blocks.0", "--no-verify", "--force")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("blocks.0: 1 new block after it: blocks.0.grown.0")
    assert not any(line.startswith("verified") for line in done.stdout.splitlines())
    assert_equivalent(source, out)
