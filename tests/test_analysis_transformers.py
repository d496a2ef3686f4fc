"""Rules for transformer feed-forward forms, one hand-built graph each (the exporters' exact node
patterns from exporter-forms.md): GPT-2's Conv1D with its runtime-shape flatten and tanh-GELU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from forms import finish, tensor
from onnx import TensorProto, helper

from surgery.analysis import analyse, infer_missing_shapes
from surgery.errors import SurgeryError
from surgery.graph import as_ir
from surgery.rewrite import widen
from surgery.testing import assert_equivalent

F32 = np.float32
INT64_MAX = np.iinfo(np.int64).max


class _Graph:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array) -> str:
        self.inits.append(tensor(name, np.asarray(array)))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _conv1d(g: _Graph, module: str, x: str, weight: np.ndarray, bias: np.ndarray, runtime_last: bool) -> str:
    """GPT-2's Conv1D as the classic exporter writes it: flatten to 2-D with the last dim read
    at run time (Shape → Slice[-1:] → Squeeze → Unsqueeze → Concat(-1, D) → Reshape), Gemm with
    weight [in, out], Reshape back to the leading dims of x plus the constant width."""
    p = f"/{module}"
    shape = g.node("Shape", [x], f"{p}/Shape")
    if runtime_last:
        last = g.node("Slice", [shape, g.const(f"{p}.s", [-1]), g.const(f"{p}.e", [INT64_MAX])], f"{p}/Slice")
        scalar = g.node("Squeeze", [last, g.const(f"{p}.ax", [0])], f"{p}/Squeeze")
        again = g.node("Unsqueeze", [scalar, g.const(f"{p}.ax2", [0])], f"{p}/Unsqueeze")
        target = g.node("Concat", [g.const(f"{p}.m1", [-1]), again], f"{p}/Concat", axis=0)
    else:
        target = g.const(f"{p}.flat", [-1, weight.shape[0]])
    flat = g.node("Reshape", [x, target], f"{p}/Reshape")
    y = g.node("Gemm", [flat, g.const(f"{module}.weight", weight), g.const(f"{module}.bias", bias)], f"{p}/Gemm")
    lead = g.node("Slice", [shape, g.const(f"{p}.s0", [0]), g.const(f"{p}.e0", [-1])], f"{p}/Slice_1")
    back = g.node("Concat", [lead, g.const(f"{p}.n", [weight.shape[1]])], f"{p}/Concat_1", axis=0)
    return g.node("Reshape", [y, back], f"{p}/Reshape_1")


def _gelu_new(g: _Graph, x: str) -> str:
    """GPT-2's ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``."""
    half = g.node("Mul", [g.const("half", F32(0.5)), x], "/act/Mul")
    cube = g.node("Pow", [x, g.const("three", F32(3.0))], "/act/Pow")
    inner = g.node("Add", [x, g.node("Mul", [g.const("c", F32(0.044715)), cube], "/act/Mul_1")], "/act/Add")
    scaled = g.node("Mul", [g.const("k", F32(np.sqrt(2 / np.pi))), inner], "/act/Mul_2")
    one_plus = g.node("Add", [g.const("one", F32(1.0)), g.node("Tanh", [scaled], "/act/Tanh")], "/act/Add_1")
    return g.node("Mul", [half, one_plus], "/act/Mul_3")


def gpt2_mlp(d: int = 8, hidden: int = 32, seq: int = 5, runtime_last: bool = True, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    g = _Graph()
    h = _conv1d(
        g,
        "h.0.mlp.c_fc",
        "input",
        rng.normal(0, 0.3, (d, hidden)).astype(F32),
        rng.normal(0, 0.1, hidden).astype(F32),
        runtime_last,
    )
    a = _gelu_new(g, h)
    y = _conv1d(
        g,
        "h.0.mlp.c_proj",
        a,
        rng.normal(0, 0.3, (hidden, d)).astype(F32),
        rng.normal(0, 0.1, d).astype(F32),
        runtime_last,
    )
    g.nodes.append(helper.make_node("Add", ["input", y], ["output"], name="/h.0/Add"))
    graph = helper.make_graph(
        g.nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "sequence", d])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "sequence", d])],
        g.inits,
    )
    return finish(graph)


@pytest.mark.parametrize("runtime_last", [True, False])
def test_gpt2_conv1d_mlp_widens_exactly(runtime_last):
    model = gpt2_mlp(runtime_last=runtime_last)
    working = as_ir(model)
    infer_missing_shapes(working)
    plan = analyse(working, {"/h.0.mlp.c_fc/Gemm": 6})
    (group,) = plan.groups
    assert group.members[0].activation == "Gelu"
    literals = {e.node.name: e.literal.tolist() for e in plan.edits if e.role == "literal"}
    expected = {"/h.0.mlp.c_fc/Concat_1": [38]}
    if not runtime_last:
        expected["/h.0.mlp.c_proj/Reshape"] = [-1, 38]
    assert literals == expected
    wide = widen(model, {"/h.0.mlp.c_fc/Gemm": 6})
    assert_equivalent(model, wide, dims={"sequence": 5})


def test_a_shape_read_at_run_time_elsewhere_is_still_refused():
    model = gpt2_mlp()
    for node in model.graph.node:
        if node.name == "/h.0.mlp.c_proj/Concat":  # target [D, -1]: the widened size moves first
            node.input.reverse()
    working = as_ir(model)
    infer_missing_shapes(working)
    with pytest.raises(SurgeryError, match="Reshape node '/h.0.mlp.c_proj/Reshape' reads the widened tensor's size"):
        analyse(working, {"/h.0.mlp.c_fc/Gemm": 2})
