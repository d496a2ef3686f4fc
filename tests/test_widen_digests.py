"""Widened files are byte-identical release to release: a few models widened with fixed seeds
and strategies, written with `surgery.save_model`, compared by sha256 against digests recorded
when these cases were added. A change here is a change of every user's output for the same
command: update a digest only for a deliberate change of the written bytes, saying why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest

import forms
from surgery import save_model
from surgery.rewrite import widen

# The PyTorch-form cases' digests changed once, on purpose: their widen history now names the layer
# by its module path ("conv1") instead of the node path ("/conv1/Conv"); the graphs stayed the same.
# Every digest changed once, on purpose: shape inference (surgery.shapes) no longer reorders the
# initializers, which are now written in the input's order; names, values and nodes are the same.
MODELS = Path(__file__).resolve().parents[1] / "models"

CASES = {
    "mlp-output-zero": (lambda: onnx.load(MODELS / "mlp.onnx"), {"dense_1": 5}, "output-zero", 7,
                        "60d8d51b84010fe7f0b60b6fe74874d42cfa2a9a65e68e1a1cabd56602accdaa"),
    "mlp-net2net": (lambda: onnx.load(MODELS / "mlp.onnx"), {"dense_1": 3}, "net2net", 11,
                            "be4c9038dc14ab8eacc3a071392e79332bebea9716cccdee932cc985a2cb4b6d"),
    "transfer-two-layers": (lambda: onnx.load(MODELS / "transfer.onnx"), {"hidden1": 4, "hidden3": 2},
                            "output-zero", 1, "ea9a76779f9153dbb0ef8e111db64d5f64bbc2d11854f4e0a23f79ebcf8ed6de"),
    "transfer-all-random": (lambda: onnx.load(MODELS / "transfer.onnx"), {"hidden2": 3}, "all-random", 5,
                            "28e47f3cbc721ef87d466ef33372a616ed4980c26134bc5d6dcfdb8d3679da7f"),
    "convnet-output-zero": (forms.pytorch_convnet, {"/side/Conv": 3, "/fc1/Gemm": 2}, "output-zero", 2,
                            "ec1f1f09e828b06b6f20100748850441a14d097c4e153b03ed236afb06c32dcf"),
    "convnet-net2net": (forms.pytorch_convnet, {"/conv1/Conv": 2}, "net2net", 3,
                            "90e26ccfa65e47bfd9b33cfb8652a448ec5178667fcbafe2a14175eabb9872f5"),
    "cnn-flatten": (forms.pytorch_cnn, {"/conv1/Conv": 4}, "output-zero", 0,
                    "9cfbf4d6419a452b858088f02aa331b22bc7287e4b724281fe94c3af6bf3e706"),
    "ffn-erf-gelu": (forms.pytorch_transformer_ffn, {"/fc1/MatMul": 6}, "output-zero", 3,
                            "08635d55bc45762b3e448af97c129a6692ba4b9817b15596a722e2449030bc4a"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_widened_bytes_match_the_recorded_digest(case, tmp_path):
    build, plan, init, seed, digest = CASES[case]
    path = tmp_path / "wide.onnx"
    save_model(widen(build(), plan, init=init, seed=seed, allow_output_change=True), path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
