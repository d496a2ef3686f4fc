"""Widened files are byte-identical release to release: a few models widened with fixed seeds
and strategies, written with `surgery.save_model`, compared by sha256 against digests recorded
when these cases were added. A change here is a change of every user's output for the same
command: update a digest only for a deliberate change of the written bytes, saying why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import forms
import onnx
import pytest

from surgery import save_model
from surgery.rewrite import widen

# The PyTorch-form cases' digests changed once, on purpose: their widen history now names the layer
# by its module path ("conv1") instead of the node path ("/conv1/Conv"); the graphs stayed the same.
MODELS = Path(__file__).resolve().parents[1] / "models"

CASES = {
    "mlp-output-zero": (
        lambda: onnx.load(MODELS / "mlp.onnx"),
        {"dense_1": 5},
        "output-zero",
        7,
        "e7cc8d9309512190d2f7f705cbe1c751a965682b79e3bc170588f8e786c814cc",
    ),
    "mlp-net2net": (
        lambda: onnx.load(MODELS / "mlp.onnx"),
        {"dense_1": 3},
        "net2net",
        11,
        "9419c4da44b1183a1f8b72b5fffc056265daa65ee79f820b49f5d9a1742f9a85",
    ),
    "transfer-two-layers": (
        lambda: onnx.load(MODELS / "transfer.onnx"),
        {"hidden1": 4, "hidden3": 2},
        "output-zero",
        1,
        "5dd6f37cfd789a4cde60ab688d9bcf444ea5d9495e5c16243634927e7b2b2413",
    ),
    "transfer-all-random": (
        lambda: onnx.load(MODELS / "transfer.onnx"),
        {"hidden2": 3},
        "all-random",
        5,
        "137743b762145d12279de6f9af98d5f4e5cd75c038f67f3947877dd9c3659b4f",
    ),
    "convnet-output-zero": (
        forms.pytorch_convnet,
        {"/side/Conv": 3, "/fc1/Gemm": 2},
        "output-zero",
        2,
        "861d7f12e828e131defb0589824dec9d36837565846c427efed3d2cd1125bae5",
    ),
    "convnet-net2net": (
        forms.pytorch_convnet,
        {"/conv1/Conv": 2},
        "net2net",
        3,
        "dfaf7396ca6cba54200640f5374b17a320f4d5f6e7dffa05e820d3eb1a787837",
    ),
    "cnn-flatten": (
        forms.pytorch_cnn,
        {"/conv1/Conv": 4},
        "output-zero",
        0,
        "aab8fdf022affc84ad00bb48a8700e8ece2adeb516f75aff14866406e169620f",
    ),
    "ffn-erf-gelu": (
        forms.pytorch_transformer_ffn,
        {"/fc1/MatMul": 6},
        "output-zero",
        3,
        "08635d55bc45762b3e448af97c129a6692ba4b9817b15596a722e2449030bc4a",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_widened_bytes_match_the_recorded_digest(case, tmp_path):
    build, plan, init, seed, digest = CASES[case]
    path = tmp_path / "wide.onnx"
    save_model(widen(build(), plan, init=init, seed=seed, allow_output_change=True), path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
