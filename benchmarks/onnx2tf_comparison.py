"""Trainable weights after conversion: `surgery to-keras` against onnx2tf, on the committed fixtures.

onnx2tf lives in its own environment (it pins its own TensorFlow stack; never the project's):

    python3.11 -m venv /work/onnx2tf-env
    /work/onnx2tf-env/bin/pip install onnx2tf tensorflow tf_keras onnx onnx-graphsurgeon sng4onnx psutil \
        onnxruntime ai-edge-litert

Run with the project's interpreter (it calls the other one for onnx2tf's side):

    .venv/bin/python benchmarks/onnx2tf_comparison.py [FIXTURE ...] [--onnx2tf-python PATH]

For each fixture it prints the ONNX float parameter count, the trainable parameters of the Keras
model `to_keras` builds, and the trainable parameters of the model onnx2tf returns
(`onnx2tf.convert(...)`, its Keras model), with the Keras model's total weights for reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

ONNX2TF_SIDE = r"""
import json, sys
import onnx2tf
model = onnx2tf.convert(input_onnx_file_path=sys.argv[1], output_folder_path=sys.argv[2], non_verbose=True)
count = lambda ws: int(sum(int(w.shape.num_elements()) for w in ws))
print(json.dumps({"trainable": count(model.trainable_weights), "all": count(model.weights)}))
"""


def onnx_parameters(path: Path) -> int:
    model = onnx.load(path)
    return int(
        sum(a.size for a in map(numpy_helper.to_array, model.graph.initializer) if a.dtype.kind == "f" and a.size > 1)
    )


def surgery_side(path: Path) -> dict:
    from surgery.onnx_to_keras import to_keras

    model = to_keras(onnx.load(path))
    count = lambda ws: int(sum(int(np.prod(w.shape)) for w in ws))  # noqa: E731
    return {"trainable": count(model.trainable_weights), "all": count(model.weights)}


def onnx2tf_side(path: Path, python: str) -> dict | str:
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([python, "-c", ONNX2TF_SIDE, str(path), folder], capture_output=True, text=True)
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:160]
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="*", default=["resnet", "gpt2_sdpa"])
    parser.add_argument("--onnx2tf-python", default="/work/onnx2tf-env/bin/python")
    args = parser.parse_args()
    print("| fixture | ONNX float parameters | to-keras trainable | onnx2tf trainable (all weights) |")
    print("|---|---|---|---|")
    for name in args.fixtures:
        path = FIXTURES / f"{name}.onnx"
        ours = surgery_side(path)
        theirs = onnx2tf_side(path, args.onnx2tf_python)
        other = theirs if isinstance(theirs, str) else f"{theirs['trainable']:,} ({theirs['all']:,})"
        print(f"| {name} | {onnx_parameters(path):,} | {ours['trainable']:,} | {other} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
