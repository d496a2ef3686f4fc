"""What the verifier costs over bare inference, on the reference MLP and its widened version.

In one process, interleaved, median of ``--repeats`` runs (wall time; the median of the
per-run ratios and the CPU-time ratio are printed too, as they suffer less from a busy machine):

- **verifier**: `surgery.verify(reference, widened, samples=N, batch=B)`, everything included
  (sessions, random inputs, comparison, report);
- **bare**: two `InferenceSession.run` calls per batch over the same batches, with the same
  session options, sessions built beforehand and inputs generated beforehand (no comparison).

The reference is ``models/mlp.onnx`` (Keras Flatten → Dense(128, relu) → Dense(10, softmax) on
28×28 images) or, when absent, the same graph built with onnx.helper. The widened version comes
from `surgery.widen` when it exists, else from adding zero-fan-out units by hand.

Usage::

    python benchmarks/verify_speed.py                      # 10,000 samples, verify's default batch (8)
    python benchmarks/verify_speed.py --batch 100          # fewer, larger batches: the fixed cost shows
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
HIDDEN, CLASSES, ADDED = 128, 10, 32


def reference_mlp() -> onnx.ModelProto:
    """models/mlp.onnx, or the same function built by hand (Flatten → Dense → Dense)."""
    path = ROOT / "models" / "mlp.onnx"
    if path.exists():
        return onnx.load(path)
    rng = np.random.default_rng(0)
    f32 = np.float32
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "W1"], ["h"], name="dense_1/MatMul"),
        helper.make_node("Add", ["h", "B1"], ["hb"], name="dense_1/BiasAdd"),
        helper.make_node("Relu", ["hb"], ["act"], name="dense_1/Relu"),
        helper.make_node("MatMul", ["act", "W2"], ["o"], name="dense_2/MatMul"),
        helper.make_node("Add", ["o", "B2"], ["logits"], name="dense_2/BiasAdd"),
        helper.make_node("Softmax", ["logits"], ["output"], name="dense_2/Softmax", axis=-1),
    ]
    weights = {
        "W1": rng.normal(0, 0.05, (784, HIDDEN)).astype(f32),
        "B1": rng.normal(0, 0.05, HIDDEN).astype(f32),
        "W2": rng.normal(0, 0.1, (HIDDEN, CLASSES)).astype(f32),
        "B2": rng.normal(0, 0.05, CLASSES).astype(f32),
    }
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def widened_mlp(reference: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The reference with ADDED more hidden units; returns the model and how it was made."""
    from surgery.graph import as_ir
    from surgery.layers import find_layers

    first = find_layers(as_ir(reference))[0]
    try:
        from surgery.rewrite import widen
    except ImportError:
        return _widen_by_hand(reference, first.node), "by hand (surgery.widen not available)"
    try:
        return widen(reference, {first.node: ADDED}), "surgery.widen"
    except Exception as error:  # the benchmark measures verify; a widen bug must not stop it
        return _widen_by_hand(reference, first.node), f"by hand (surgery.widen failed: {type(error).__name__}: {error})"


def _widen_by_hand(reference: onnx.ModelProto, matmul_name: str) -> onnx.ModelProto:
    """Zero-fan-out widening of the first Dense: new W1 columns random, new W2 rows zero."""
    model = onnx.ModelProto()
    model.CopyFrom(reference)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    matmul = next(node for node in model.graph.node if node.name == matmul_name)
    (bias_add,) = readers[matmul.output[0]]
    (relu,) = readers[bias_add.output[0]]
    (consumer,) = readers[relu.output[0]]
    assert producers[relu.output[0]] is relu
    rng = np.random.default_rng(1)

    def replace(name: str, array: np.ndarray) -> None:
        initializers[name].CopyFrom(numpy_helper.from_array(array, name))

    w1_name = matmul.input[1]
    b1_name = next(name for name in bias_add.input if name in initializers)
    w2_name = consumer.input[1]
    w1 = numpy_helper.to_array(initializers[w1_name])
    replace(w1_name, np.concatenate([w1, rng.normal(0, 0.05, (w1.shape[0], ADDED)).astype(w1.dtype)], axis=1))
    b1 = numpy_helper.to_array(initializers[b1_name])
    replace(b1_name, np.concatenate([b1, np.zeros(ADDED, b1.dtype)]))
    w2 = numpy_helper.to_array(initializers[w2_name])
    replace(w2_name, np.concatenate([w2, np.zeros((ADDED, w2.shape[1]), w2.dtype)], axis=0))
    for value in list(model.graph.value_info):  # stale intermediate shapes would mislead onnxruntime
        model.graph.value_info.remove(value)
    return model


def main() -> None:
    import onnxruntime as ort

    from surgery.verification import InputSpec, session_options, verify
    from surgery.verification.feeds import random_feeds, rows_per_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    # The verifier's own default, i.e. what `surgery verify --samples 10000` does.
    parser.add_argument("--batch", type=int, default=inspect.signature(verify).parameters["batch"].default)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    reference = reference_mlp()
    widened, how = widened_mlp(reference)
    reference_bytes, widened_bytes = reference.SerializeToString(), widened.SerializeToString()
    sessions = [
        ort.InferenceSession(model, session_options("disable"), providers=["CPUExecutionProvider"])
        for model in (reference_bytes, widened_bytes)
    ]
    specs = [InputSpec(i.name, tuple(i.shape), np.dtype(np.float32)) for i in sessions[0].get_inputs()]
    batches = list(random_feeds(specs, {}, args.samples, rows_per_run(specs, args.batch, {}), seed=0))

    def bare() -> None:
        for feeds in batches:
            sessions[0].run(None, feeds)
            sessions[1].run(None, feeds)

    def verifier() -> None:
        report = verify(reference, widened, samples=args.samples, batch=args.batch)
        assert report.equivalent, report.summary()

    bare()
    verifier()  # warm-up: first-run allocations and lazy imports
    wall: dict[str, list[float]] = {"bare": [], "verifier": []}
    cpu: dict[str, list[float]] = {"bare": [], "verifier": []}
    for _ in range(args.repeats):
        for name, work in (("bare", bare), ("verifier", verifier)):
            start, start_cpu = time.perf_counter(), time.process_time()
            work()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    bare_s, verifier_s = statistics.median(wall["bare"]), statistics.median(wall["verifier"])
    pair_ratio = statistics.median(v / b for v, b in zip(wall["verifier"], wall["bare"]))
    cpu_ratio = statistics.median(cpu["verifier"]) / statistics.median(cpu["bare"])
    print(
        f"model: {'models/mlp.onnx' if (ROOT / 'models' / 'mlp.onnx').exists() else 'built MLP'}; widened {how} (+{ADDED} units)"
    )
    print(
        f"{args.samples} samples, batch {args.batch}, median of {args.repeats} interleaved runs (optimizations disabled, CPU)"
    )
    print(f"bare inference (2 runs per batch): {bare_s * 1000:.1f} ms wall")
    print(f"verifier (surgery.verify):         {verifier_s * 1000:.1f} ms wall")
    print(f"median of per-run ratios: {pair_ratio:.3f}; CPU-time ratio: {cpu_ratio:.3f}")
    print(f"ratio verifier / bare: {verifier_s / bare_s:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
