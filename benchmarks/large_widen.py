"""How close `surgery widen` gets to copying the model folder, on a model with external data.

Builds an MLP of 10 × (MatMul n×n float32 + Add + Relu) whose weights live in one external
``weights.bin`` (n chosen so the weights total ``--gib``; 8192 for the default 2.5 GiB), generated
in chunks so building it needs little memory. Then measures, median of ``--repeats`` runs,
interleaved so that the page cache and the disk treat every approach alike:

- ``cp -r`` of the model folder (the physical limit: every byte read and written once);
- ``onnx.load`` + a numpy edit + ``onnx.save`` with external data (the common approach);
- ``surgery widen --layer layer3/MatMul=256 --no-verify`` (the CLI, in a subprocess);
- the same with ``--share-external-data`` (output beside the input, only changed tensors written);
- with ``--verify``, also ``surgery widen`` with its verification (written, then both models run
  by onnxruntime from disk, then renamed into place).

Each measurement runs in a fresh wrapper process that reports wall time, wall time including a
final ``sync`` (the bytes on disk, not only in the page cache) and the child's peak RSS from
``resource.getrusage(RUSAGE_CHILDREN)``. Finally the widened models' outputs are compared with
the original's for 2 random inputs with onnxruntime (optimizations disabled): bitwise equality.

Usage::

    python benchmarks/large_widen.py --gib 0.25            # quick
    python benchmarks/large_widen.py --gib 2.5             # the issue's model (writes ~5 × 2.5 GiB)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LAYERS = 10
WIDENED = 3
ADDED = 256
ROOT = Path(__file__).resolve().parent.parent

# Runs argv[1:], then `sync`; prints wall times and the child's peak RSS (KiB on Linux) as JSON.
_MEASURE = """
import json, os, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
os.sync()
synced = time.perf_counter() - start
if done.returncode:
    sys.exit(f"{sys.argv[1:]} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
print(json.dumps({"wall": wall, "sync": synced, "rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def layer_size(gib: float) -> int:
    """Units per layer so that the 10 weight matrices hold about `gib` GiB (a multiple of 64)."""
    return max(64, int(math.sqrt(gib * (1 << 30) / (LAYERS * 4))) // 64 * 64)


def build_model(folder: Path, n: int, seed: int = 0) -> Path:
    """Write ``model.onnx`` + ``weights.bin`` into `folder`, weights generated in 64 MiB chunks."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    rows = max(1, (64 << 20) // (n * 4))
    initializers, nodes, offset = [], [], 0
    with open(folder / "weights.bin", "wb") as data:

        def external(name: str, dims: list[int], write) -> None:
            nonlocal offset
            length = write()
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(tensor)
            offset += length

        def weight() -> int:
            for first in range(0, n, rows):
                block = rng.standard_normal((min(rows, n - first), n), dtype=np.float32)
                block *= np.float32(math.sqrt(2.0 / n))  # He scaling keeps activations in range
                data.write(block.tobytes())
            return n * n * 4

        def bias() -> int:
            data.write((rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)).tobytes())
            return n * 4

        source = "x"
        for i in range(LAYERS):
            external(f"layer{i}.weight", [n, n], weight)
            external(f"layer{i}.bias", [n], bias)
            nodes += [
                helper.make_node("MatMul", [source, f"layer{i}.weight"], [f"layer{i}/mm"], name=f"layer{i}/MatMul"),
                helper.make_node("Add", [f"layer{i}/mm", f"layer{i}.bias"], [f"layer{i}/add"], name=f"layer{i}/Add"),
                helper.make_node("Relu", [f"layer{i}/add"], [f"layer{i}/out"], name=f"layer{i}/Relu"),
            ]
            source = f"layer{i}/out"
    graph = helper.make_graph(
        nodes,
        "large_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["batch", n])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path


def onnx_approach(source: Path, target: Path) -> None:
    """The common way: load everything, edit with numpy, save everything with external data."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(source)
    tensors = {t.name: t for t in model.graph.initializer}
    weight = numpy_helper.to_array(tensors[f"layer{WIDENED}.weight"])
    bias = numpy_helper.to_array(tensors[f"layer{WIDENED}.bias"])
    after = numpy_helper.to_array(tensors[f"layer{WIDENED + 1}.weight"])
    rng = np.random.default_rng(0)
    limit = math.sqrt(6.0 / weight.shape[0])
    new = {
        f"layer{WIDENED}.weight": np.concatenate(
            [weight, rng.uniform(-limit, limit, (weight.shape[0], ADDED)).astype(np.float32)], axis=1
        ),
        f"layer{WIDENED}.bias": np.concatenate([bias, np.zeros(ADDED, np.float32)]),
        f"layer{WIDENED + 1}.weight": np.concatenate([after, np.zeros((ADDED, after.shape[1]), np.float32)], axis=0),
    }
    for name, array in new.items():
        tensors[name].CopyFrom(numpy_helper.from_array(array, name))
    onnx.save_model(
        model, target, save_as_external_data=True, all_tensors_to_one_file=True, location=f"{target.name}.data"
    )


def measure(argv: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(result.stderr.strip())
    return json.loads(result.stdout)


def outputs_equal(reference: Path, candidates: list[Path], n: int) -> dict[str, bool]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((2, n), dtype=np.float32) for _ in range(2)]
    session = ort.InferenceSession(str(reference), options, providers=["CPUExecutionProvider"])
    expected = [session.run(None, {"x": x})[0] for x in inputs]
    del session
    equal = {}
    for candidate in candidates:
        session = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"])
        equal[str(candidate)] = all(np.array_equal(session.run(None, {"x": x})[0], y) for x, y in zip(inputs, expected))
        del session
    return equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=2.5, help="total weight size in GiB (default 2.5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch folder (default: a temp dir, removed at the end)"
    )
    parser.add_argument("--skip-onnx", action="store_true", help="leave out the slow onnx.load/onnx.save approach")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also measure surgery widen with its verification (onnxruntime runs both models from disk)",
    )
    parser.add_argument("--onnx-approach", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.onnx_approach:
        onnx_approach(*args.onnx_approach)
        return

    scratch = Path(tempfile.mkdtemp(prefix="large_widen.", dir=args.dir))
    try:
        n = layer_size(args.gib)
        source = scratch / "model"
        source.mkdir()
        model = build_model(source, n)
        size = sum(f.stat().st_size for f in source.iterdir())
        print(f"model: {LAYERS} x MatMul {n}x{n} float32 + Add + Relu, {size / (1 << 30):.2f} GiB in {source}")
        out = scratch / "out"
        approaches = {
            "cp -r": (["cp", "-r", str(source), str(out)], out),
            "onnx.load + numpy + onnx.save": (
                [sys.executable, __file__, "--onnx-approach", str(model), str(out / "model.onnx")],
                out,
            ),
            "surgery widen": (
                [
                    sys.executable,
                    "-m",
                    "surgery",
                    "widen",
                    str(model),
                    "-o",
                    str(out / "model.onnx"),
                    "--layer",
                    f"layer{WIDENED}/MatMul={ADDED}",
                    "--no-verify",
                ],
                out,
            ),
            "surgery widen --share-external-data": (
                [
                    sys.executable,
                    "-m",
                    "surgery",
                    "widen",
                    str(model),
                    "-o",
                    str(source / "shared.onnx"),
                    "--layer",
                    f"layer{WIDENED}/MatMul={ADDED}",
                    "--no-verify",
                    "--share-external-data",
                ],
                None,
            ),
        }
        if args.verify:  # before the shared run, whose output is kept from the last repeat
            shared = approaches.pop("surgery widen --share-external-data")
            approaches["surgery widen, verified"] = (
                [
                    sys.executable,
                    "-m",
                    "surgery",
                    "widen",
                    str(model),
                    "-o",
                    str(out / "model.onnx"),
                    "--layer",
                    f"layer{WIDENED}/MatMul={ADDED}",
                ],
                out,
            )
            approaches["surgery widen --share-external-data"] = shared
        if args.skip_onnx:
            del approaches["onnx.load + numpy + onnx.save"]
        results: dict[str, list[dict]] = {name: [] for name in approaches}
        kept: list[Path] = []
        for repeat in range(args.repeats):
            for name, (argv, output) in approaches.items():
                shutil.rmtree(out, ignore_errors=True)
                for leftover in source.glob("shared.onnx*"):
                    leftover.unlink()
                if output is out and name != "cp -r":
                    out.mkdir()
                os.sync()
                results[name].append(measure(argv))
                print(f"  run {repeat + 1} {name}: {results[name][-1]['wall']:.2f} s", flush=True)
                if repeat == args.repeats - 1 and name == "surgery widen":
                    kept_dir = scratch / "widened"
                    out.rename(kept_dir)
                    kept.append(kept_dir / "model.onnx")
        kept.append(source / "shared.onnx")
        shutil.rmtree(out, ignore_errors=True)

        cp_wall = statistics.median(r["wall"] for r in results["cp -r"])
        print("\n| approach | wall s | wall + sync s | wall / cp | peak RSS MiB |\n|---|---|---|---|---|")
        for name, runs in results.items():
            wall = statistics.median(r["wall"] for r in runs)
            synced = statistics.median(r["sync"] for r in runs)
            rss = statistics.median(r["rss_kib"] for r in runs) / 1024
            print(f"| {name} | {wall:.2f} | {synced:.2f} | {wall / cp_wall:.2f} | {rss:.0f} |")
        equal = outputs_equal(model, [k for k in kept if k.exists()], n)
        for candidate, same in equal.items():
            print(
                f"outputs bitwise equal to the original for 2 random inputs: {same} ({Path(candidate).relative_to(scratch)})"
            )
        if not all(equal.values()) or len(equal) != len(kept):
            raise SystemExit("widened outputs differ from the original (or a widened model is missing)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
