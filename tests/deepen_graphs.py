"""Residual graphs in PyTorch's classic-exporter form, for the unit tests of block detection and
deepening (one rule each; the real exports are in tests/fixtures/).

Every parameter is seeded random (no two initializers equal), names follow the exporter:
nodes ``/blocks.0/fc1/Gemm``, parameters ``blocks.0.fc1.weight`` or ``onnx::MatMul_<n>``.
"""

from __future__ import annotations

import numpy as np
import onnx
from forms import finish, linear, main_graph, tensor
from onnx import TensorProto, helper

F32 = np.float32


class _Builder:
    """Nodes and initializers of one graph, with PyTorch's names."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.matmuls = 0

    def param(self, name: str, shape, scale: float = 0.3) -> str:
        self.inits.append(tensor(name, self.rng.normal(0, scale, shape).astype(F32)))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        output = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def gemm(self, scope: str, x: str, fan_in: int, units: int) -> str:
        """`nn.Linear` on a 2-D input at `scope` (``/blocks.0/fc1``): Gemm, transB=1."""
        module = scope[1:].replace("/", ".")
        self.param(f"{module}.weight", (units, fan_in))
        self.param(f"{module}.bias", (units,), 0.1)
        inputs = [x, f"{module}.weight", f"{module}.bias"]
        return self.node("Gemm", inputs, f"{scope}/Gemm", alpha=1.0, beta=1.0, transB=1)

    def linear3d(self, scope: str, x: str, fan_in: int, units: int, bias: bool = True) -> str:
        """`nn.Linear` on a 3-D input: MatMul with `onnx::MatMul_<n>`, then Add with the bias first."""
        self.matmuls += 1
        weight = self.param(f"onnx::MatMul_{100 + self.matmuls}", (fan_in, units))
        out = self.node("MatMul", [x, weight], f"{scope}/MatMul")
        if bias:
            bias = self.param(f"{scope[1:].replace('/', '.')}.bias", (units,), 0.1)
            out = self.node("Add", [bias, out], f"{scope}/Add")
        return out

    def layer_norm(self, scope: str, x: str, width: int) -> str:
        module = scope[1:].replace("/", ".")
        scale = self.param(f"{module}.weight", (width,), 0.2)
        self.inits[-1] = tensor(scale, (1 + self.rng.normal(0, 0.2, width)).astype(F32))
        bias = self.param(f"{module}.bias", (width,), 0.1)
        return self.node("LayerNormalization", [x, scale, bias], f"{scope}/LayerNormalization", axis=-1, epsilon=1e-5)


def residual_mlp(
    blocks: int = 2, width: int = 6, hidden: int = 10, post_norm: bool = False, head: bool = True, seed: int = 0
) -> onnx.ModelProto:
    """Blocks ``x + fc2(relu(fc1(norm(x))))`` on a 2-D input (Gemm, transB=1), a Gemm head.

    `post_norm` puts the LayerNormalization after the residual Add instead (BERT's order);
    without `head` the last block's output is the graph output.
    """
    b = _Builder(seed)
    x = b.gemm("/stem", "input", 4, width)
    for i in range(blocks):
        h = x if post_norm else b.layer_norm(f"/blocks.{i}/norm", x, width)
        h = b.node("Relu", [b.gemm(f"/blocks.{i}/fc1", h, width, hidden)], f"/blocks.{i}/relu/Relu")
        x = b.node("Add", [x, b.gemm(f"/blocks.{i}/fc2", h, hidden, width)], f"/blocks.{i}/Add")
        if post_norm:
            x = b.layer_norm(f"/blocks.{i}/norm", x, width)
    if not head:
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])]
        outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", width])]
        return finish(helper.make_graph(b.nodes, "main_graph", inputs, outputs, b.inits))
    b.nodes.append(linear("head", x, "output"))
    b.param("head.weight", (3, width))
    b.param("head.bias", (3,), 0.1)
    return finish(main_graph(b.nodes, b.inits, ["batch", 4], ["batch", 3]))


def residual_cnn(
    blocks: int = 2, channels: int = 4, tail: str = "Relu", batchnorm: bool = False, seed: int = 1
) -> onnx.ModelProto:
    """A ResNet: Conv stem + ReLU, basic blocks ``tail(x + conv2(relu(conv1(x))))`` (3×3, pad 1),
    GlobalAveragePool, Flatten, a Gemm head. With `batchnorm` each conv2 is followed by an
    (unfolded) BatchNormalization, as an export in training-mode folding off writes it."""
    b = _Builder(seed)
    conv = dict(dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])

    def conv2d(scope: str, x: str, fan_in: int) -> str:
        module = scope.split("/")[-2] + "." + scope.split("/")[-1] if scope.count("/") > 2 else scope[1:]
        weight = b.param(f"{module}.weight", (channels, fan_in, 3, 3))
        return b.node("Conv", [x, weight, b.param(f"{module}.bias", (channels,), 0.1)], f"{scope}/Conv", **conv)

    x = b.node("Relu", [conv2d("/conv1", "input", 3)], "/relu/Relu")
    for i in range(blocks):
        scope = f"/layer1/layer1.{i}"
        h = b.node("Relu", [conv2d(f"{scope}/conv1", x, channels)], f"{scope}/relu/Relu")
        h = conv2d(f"{scope}/conv2", h, channels)
        if batchnorm:
            stats = [b.param(f"layer1.{i}.bn2.{name}", (channels,), 0.2) for name in ("weight", "bias", "running_mean")]
            b.inits.append(tensor(f"layer1.{i}.bn2.running_var", b.rng.uniform(0.5, 1.5, channels).astype(F32)))
            h = b.node(
                "BatchNormalization",
                [h, *stats, f"layer1.{i}.bn2.running_var"],
                f"{scope}/bn2/BatchNormalization",
                epsilon=1e-5,
            )
        x = b.node(tail, [b.node("Add", [h, x], f"{scope}/Add")], f"{scope}/{tail.lower()}_1/{tail}")
    pooled = b.node("GlobalAveragePool", [x], "/avgpool/GlobalAveragePool")
    flat = b.node("Flatten", [pooled], "/Flatten", axis=1)
    b.nodes.append(linear("fc", flat, "output"))
    b.param("fc.weight", (5, channels))
    b.param("fc.bias", (5,), 0.1)
    return finish(main_graph(b.nodes, b.inits, ["batch", 3, 6, 6], ["batch", 5]))


def transformer(blocks: int = 2, width: int = 8, hidden: int = 16, seed: int = 2) -> onnx.ModelProto:
    """Pre-norm transformer blocks on ``[batch, sequence, 4]`` inputs, single-head attention.

    Per block: ``x + o(softmax(q·kᵀ·s + table) · v)`` then ``x + down(relu(up(norm(x))))``, with
    q, k, v, o, up, down as `linear3d`. A position table ``[sequence, 1]`` computed once from
    the input's shape is read by every block (like rotary tables or a mask), and the attention's
    merge Reshape reads one shape constant shared by all blocks (as the dynamo exporter writes).
    """
    b = _Builder(seed)
    x = b.linear3d("/embed", "input", 4, width)
    shape = b.node("Shape", ["input"], "/Shape")
    seq = b.node("Gather", [shape, "/Constant_output_0"], "/Gather", axis=0)
    b.nodes.insert(
        0,
        helper.make_node(
            "Constant",
            [],
            ["/Constant_output_0"],
            name="/Constant",
            value=helper.make_tensor("value", TensorProto.INT64, [1], [1]),
        ),
    )
    steps = b.node("Range", ["/start", seq, "/delta"], "/Range")
    b.inits += [tensor("/start", np.array(0, np.int64)), tensor("/delta", np.array(1, np.int64))]
    table = b.node("Unsqueeze", [b.node("Cast", [steps], "/Cast", to=TensorProto.FLOAT), "/axes"], "/Unsqueeze")
    b.inits += [tensor("/axes", np.array([1], np.int64)), tensor("merge_shape", np.array([0, 0, width], np.int64))]
    for i in range(blocks):
        scope = f"/layers.{i}"
        h = b.layer_norm(f"{scope}/input_layernorm", x, width)
        q = b.linear3d(f"{scope}/self_attn/q_proj", h, width, width, bias=False)
        k = b.linear3d(f"{scope}/self_attn/k_proj", h, width, width, bias=False)
        v = b.linear3d(f"{scope}/self_attn/v_proj", h, width, width, bias=False)
        kt = b.node("Transpose", [k], f"{scope}/self_attn/Transpose", perm=[0, 2, 1])
        scores = b.node("MatMul", [q, kt], f"{scope}/self_attn/MatMul")
        scale = b.node(
            "Constant",
            [],
            f"{scope}/self_attn/Constant",
            value=helper.make_tensor("value", TensorProto.FLOAT, [], [width**-0.5]),
        )
        scaled = b.node("Mul", [scores, scale], f"{scope}/self_attn/Mul")
        scores = b.node("Add", [scaled, table], f"{scope}/self_attn/Add")
        weights = b.node("Softmax", [scores], f"{scope}/self_attn/Softmax", axis=-1)
        attended = b.node("MatMul", [weights, v], f"{scope}/self_attn/MatMul_1")
        merged = b.node("Reshape", [attended, "merge_shape"], f"{scope}/self_attn/Reshape")
        x = b.node("Add", [x, b.linear3d(f"{scope}/self_attn/o_proj", merged, width, width)], f"{scope}/Add")
        h = b.layer_norm(f"{scope}/post_attention_layernorm", x, width)
        up = b.node("Relu", [b.linear3d(f"{scope}/mlp/up_proj", h, width, hidden)], f"{scope}/mlp/act_fn/Relu")
        x = b.node("Add", [x, b.linear3d(f"{scope}/mlp/down_proj", up, hidden, width)], f"{scope}/Add_1")
    out = b.linear3d("/lm_head", b.layer_norm("/norm", x, width), width, 5)
    graph = helper.make_graph(
        b.nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "sequence", 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "sequence", 5])],
        b.inits,
    )
    return finish(graph)
