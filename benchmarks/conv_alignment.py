"""Which widenings keep onnxruntime's outputs bitwise equal, with graph optimizations off and on.

Measures, on this machine's CPU provider:

1. Conv layers widened by a few channels, with and without `--align` (8 and 16), under
   optimizations "disable" (the verifier's exact mode) and "all" (onnxruntime's default, whose
   NCHWc layout transformer picks Conv kernels by channel count).
2. A Conv with a single output channel widened (onnxruntime computes it with another kernel).
3. A MatMul consumer whose existing rows move across SGEMM's K-blocks of 256 (tf2onnx's NHWC
   flatten interleaves the new channels' rows between the existing ones).

Run: .venv/bin/python benchmarks/conv_alignment.py   (about 10 s)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from surgery.rewrite import widen
from surgery.verification import verify


def conv_net(channels: int, inputs: int = 8, size: int = 12, seed: int = 0) -> onnx.ModelProto:
    """input → Conv(3x3, `channels`) → Relu → Conv(3x3, 16) → Relu → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (channels, inputs, 3, 3)).astype(f32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(f32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (16, channels, 3, 3)).astype(f32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(f32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (5, 16)).astype(f32), "w3"),
        numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(f32), "b3"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def flatten_net(channels: int, size: int = 6) -> onnx.ModelProto:
    """NHWC flatten as tf2onnx writes it: Conv → Transpose(0,2,3,1) → Reshape([-1, H·W·C]) → MatMul."""
    rng = np.random.default_rng(1)
    flat = channels * size * size
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["c1"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w2"], ["y"], name="dense"),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (channels, 2, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.array([-1, flat], np.int64), "shape"),
        numpy_helper.from_array(rng.normal(0, 0.1, (flat, 3)).astype(np.float32), "w2"),
    ]
    graph = helper.make_graph(
        nodes,
        "flatten_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def compare(model: onnx.ModelProto, wide: onnx.ModelProto) -> tuple[str, str]:
    cells = []
    for optimization in ("disable", "all"):
        report = verify(model, wide, optimization=optimization, samples=32, batch=8)
        ulp = max((o.max_ulp or 0) for o in report.outputs)
        cells.append("bitwise" if report.equivalent else f"{ulp} ULP")
    return tuple(cells)


def main() -> None:
    print("1. Conv 'conv1' widened by 3 units (its consumer conv2 gets zero input channels)")
    print(f"{'old':>4} {'align':>5} {'new':>4}  {'optimizations off':>18}  {'optimizations all':>18}")
    for channels in (4, 6, 8, 12, 16, 24, 30, 32):
        model = conv_net(channels)
        for align in (None, 8, 16):
            wide = widen(model, {"conv1": 3}, align=align)
            new = next(i for i in wide.graph.initializer if i.name == "w1").dims[0]
            off, on = compare(model, wide)
            print(f"{channels:>4} {align or '-':>5} {new:>4}  {off:>18}  {on:>18}")
    print("\n2. A Conv with one output channel widened")
    for added in (1, 3, 7):
        model = conv_net(1)
        off, on = compare(model, widen(model, {"conv1": added}))
        print(f"   1 -> {1 + added}: optimizations off: {off}; all: {on}")
    print("\n3. NHWC flatten (tf2onnx): the consumer MatMul's rows interleave; SGEMM sums K in blocks of 256")
    for channels, added in ((4, 3), (4, 4), (6, 1), (8, 8)):
        model = flatten_net(channels)
        wide = widen(model, {"conv1": added})
        off, on = compare(model, wide)
        print(
            f"   {channels} -> {channels + added} channels, K {channels * 36} -> {(channels + added) * 36}: optimizations off: {off}; all: {on}"
        )


if __name__ == "__main__":
    main()
