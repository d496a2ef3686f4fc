"""Every blocker of the width analysis refuses with one line naming the node and its op, and
bad requests are refused before anything changes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from forms import pytorch_mlp, tensor
from onnx import TensorProto, helper

from surgery.errors import SurgeryError
from surgery.rewrite import widen

F = TensorProto.FLOAT


def _model(
    nodes: list, inits: list, opset: int = 18, extra_inputs: tuple = (), rank: int = 2, dtype: int = F
) -> onnx.ModelProto:
    """input [batch, 6] → /fc1/MatMul (4 units, the layer to widen) → `nodes` → output y."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="/fc1/MatMul"), *nodes],
        "blocked",
        [helper.make_tensor_value_info("x", F, ["batch", 6]), *extra_inputs],
        [helper.make_tensor_value_info("y", dtype, [None] * rank)],
        [tensor("fc1.weight", rng.normal(size=(6, 4)).astype(np.float32)), *inits],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 10 if opset >= 21 else 8
    return model


def _i64(name, values):
    return tensor(name, np.array(values, dtype=np.int64))


def _f32(name, values):
    return tensor(name, np.array(values, dtype=np.float32))


BLOCKERS = {
    "LayerNormalization": (
        [helper.make_node("LayerNormalization", ["h", "s", "b"], ["y"], name="/blk/LayerNorm", axis=-1)],
        [_f32("s", [1.0] * 4), _f32("b", [0.0] * 4)],
    ),
    "GroupNormalization": (
        [
            helper.make_node("Unsqueeze", ["h", "ax"], ["h3"], name="/blk/Unsqueeze"),
            helper.make_node("GroupNormalization", ["h3", "s", "b"], ["y"], name="/blk/GroupNorm", num_groups=2),
        ],
        [_i64("ax", [2]), _f32("s", [1.0] * 4), _f32("b", [0.0] * 4)],
    ),
    "InstanceNormalization": (
        [
            helper.make_node("Unsqueeze", ["h", "ax"], ["h3"], name="/blk/Unsqueeze"),
            helper.make_node("InstanceNormalization", ["h3", "s", "b"], ["y"], name="/blk/InstanceNorm"),
        ],
        [_i64("ax", [1]), _f32("s", [1.0]), _f32("b", [0.0])],
    ),
    "MeanVarianceNormalization": (
        [helper.make_node("MeanVarianceNormalization", ["h"], ["y"], name="/blk/MVN", axes=[0, 1])],
        [],
    ),
    "LpNormalization": ([helper.make_node("LpNormalization", ["h"], ["y"], name="/blk/LpNorm", axis=1)], []),
    "Softmax": ([helper.make_node("Softmax", ["h"], ["y"], name="/blk/Softmax", axis=1)], []),
    "LogSoftmax": ([helper.make_node("LogSoftmax", ["h"], ["y"], name="/blk/LogSoftmax", axis=-1)], []),
    "ReduceMean": ([helper.make_node("ReduceMean", ["h", "ax"], ["y"], name="/blk/ReduceMean")], [_i64("ax", [1])]),
    "ReduceSum": (
        [helper.make_node("ReduceSum", ["h", "ax"], ["y"], name="/blk/ReduceSum", keepdims=0)],
        [_i64("ax", [-1])],
    ),
    "ReduceMax": ([helper.make_node("ReduceMax", ["h"], ["y"], name="/blk/ReduceMax")], []),  # no axes: all of them
    "ArgMax": ([helper.make_node("ArgMax", ["h"], ["y"], name="/blk/ArgMax", axis=1)], []),
    "Div": ([helper.make_node("Div", ["one", "h"], ["y"], name="/blk/Div")], [_f32("one", 1.0)]),
    "Exp": ([helper.make_node("Exp", ["h"], ["y"], name="/blk/Exp")], []),
    "Custom": ([helper.make_node("Fused", ["h"], ["y"], name="/blk/Fused", domain="com.example")], []),
    "Shape": (
        [
            helper.make_node("Shape", ["h"], ["shape"], name="/blk/Shape"),
            helper.make_node("Gather", ["shape", "one"], ["width"], name="/blk/GatherWidth"),
            helper.make_node("Cast", ["width"], ["y"], name="/blk/Cast", to=F),
        ],
        [_i64("one", 1)],
    ),
    "MaxPool-indices": (
        [
            helper.make_node("Unsqueeze", ["h", "ax"], ["h3"], name="/blk/Unsqueeze"),
            helper.make_node("MaxPool", ["h3"], ["pooled", "idx"], name="/blk/MaxPool", kernel_shape=[1]),
            helper.make_node("Cast", ["idx"], ["y"], name="/blk/Cast", to=F),
        ],
        [_i64("ax", [2])],
    ),
}

EXPECTED_NODE = {
    "LayerNormalization": "/blk/LayerNorm",
    "GroupNormalization": "/blk/GroupNorm",
    "InstanceNormalization": "/blk/InstanceNorm",
    "MeanVarianceNormalization": "/blk/MVN",
    "LpNormalization": "/blk/LpNorm",
    "Softmax": "/blk/Softmax",
    "LogSoftmax": "/blk/LogSoftmax",
    "ReduceMean": "/blk/ReduceMean",
    "ReduceSum": "/blk/ReduceSum",
    "ReduceMax": "/blk/ReduceMax",
    "ArgMax": "/blk/ArgMax",
    "Div": "/blk/Div",
    "Exp": "/blk/Exp",
    "Custom": "/blk/Fused",
    "Shape": "/blk/GatherWidth",
    "MaxPool-indices": "/blk/MaxPool",
}


@pytest.mark.parametrize("case", sorted(BLOCKERS))
def test_blocker_is_refused_naming_the_node(case):
    nodes, inits = BLOCKERS[case]
    rank = {"GroupNormalization": 3, "InstanceNormalization": 3, "MaxPool-indices": 3, "ReduceSum": 1, "Shape": 0}.get(
        case, 2
    )
    opset = 21 if case == "GroupNormalization" else 18  # GroupNormalization-18 is deprecated
    model = _model(nodes, inits, opset=opset, rank=rank, dtype=TensorProto.INT64 if case == "ArgMax" else F)
    onnx.checker.check_model(model)
    before = model.SerializeToString()
    with pytest.raises(SurgeryError) as refused:
        widen(model, {"/fc1/MatMul": 2})
    message = str(refused.value)
    node = next(n for n in model.graph.node if n.name == EXPECTED_NODE[case])
    assert node.name in message and node.op_type in message, message
    assert "\n" not in message
    assert model.SerializeToString() == before


def test_graph_output_is_refused_unless_allowed():
    model = _model([helper.make_node("Relu", ["h"], ["y"], name="/act/Relu")], [])
    with pytest.raises(SurgeryError, match=r"graph output 'y' \(from Relu node '/act/Relu'\).*allow_output_change"):
        widen(model, {"/fc1/MatMul": 2})
    wide = widen(model, {"/fc1/MatMul": 2}, allow_output_change=True)
    assert onnx.numpy_helper.to_array(wide.graph.initializer[0]).shape == (6, 6)


def test_join_with_a_graph_input_is_refused():
    extra = (helper.make_tensor_value_info("skip", F, ["batch", 4]),)
    nodes = [helper.make_node("Add", ["h", "skip"], ["y"], name="/residual/Add")]
    with pytest.raises(
        SurgeryError, match=r"Add node '/residual/Add' joins the widened tensor with graph input 'skip'"
    ):
        widen(_model(nodes, [], extra_inputs=extra), {"/fc1/MatMul": 1})


def test_grouped_convolution_consumer_is_refused():
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["h"], name="/conv1/Conv", kernel_shape=[1, 1]),
            helper.make_node("Conv", ["h", "w2"], ["y"], name="/dw/Conv", kernel_shape=[1, 1], group=2),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, None)],
        [
            tensor("w1", rng.normal(size=(4, 3, 1, 1)).astype(np.float32)),
            tensor("w2", rng.normal(size=(4, 2, 1, 1)).astype(np.float32)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(SurgeryError, match=r"Conv node '/dw/Conv' is a grouped convolution"):
        widen(model, {"/conv1/Conv": 2})


def test_coupled_layers_must_grow_by_the_same_amount():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w2"], ["g"], name="/fc2/MatMul"),
        helper.make_node("Add", ["h", "g"], ["s"], name="/join/Add"),
        helper.make_node("MatMul", ["s", "w3"], ["y"], name="/out/MatMul"),
    ]
    inits = [
        tensor("w2", rng.normal(size=(6, 4)).astype(np.float32)),
        tensor("w3", rng.normal(size=(4, 2)).astype(np.float32)),
    ]
    model = _model(nodes, inits)
    with pytest.raises(SurgeryError, match=r"Add node '/join/Add' couples layers .*same number of units"):
        widen(model, {"/fc1/MatMul": 2, "/fc2/MatMul": 3})
    wide = widen(model, {"/fc1/MatMul": 2})  # the other branch joins the group by itself
    shapes = {i.name: tuple(i.dims) for i in wide.graph.initializer}
    assert shapes["fc1.weight"] == (6, 6) and shapes["w2"] == (6, 6) and shapes["w3"] == (6, 2)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"/fc9/Gemm": 1}, r"no layer named '/fc9/Gemm'; did you mean .*/fc1/Gemm"),
        ({"/fc1/Gemm": 0}, r"at least 1"),
        ({"/fc1/Gemm": -3}, r"at least 1"),
        ({"/fc1/Gemm": 2.5}, r"must be an integer"),
        ({}, r"nothing to widen"),
        ({"/fc1/Gemm": 10**15}, r"memory"),
    ],
)
def test_bad_requests_are_refused(plan, message):
    with pytest.raises(SurgeryError, match=message):
        widen(pytorch_mlp(), plan)


def test_same_layer_twice_by_two_names_is_refused():
    model = pytorch_mlp()
    model.metadata_props.add(key="surgery.layer_map", value='{"hidden": ["/fc1/Gemm", "/relu/Relu"]}')
    with pytest.raises(SurgeryError, match=r"requested twice"):
        widen(model, {"hidden": 1, "/fc1/Gemm": 2})


def test_unknown_strategy_is_refused():
    with pytest.raises(SurgeryError, match=r"unknown init strategy 'zeros'"):
        widen(pytorch_mlp(), {"/fc1/Gemm": 1}, init="zeros")
    with pytest.raises(SurgeryError, match=r"unknown fan-in initializer"):
        widen(pytorch_mlp(), {"/fc1/Gemm": 1}, fan_in="lecun")
