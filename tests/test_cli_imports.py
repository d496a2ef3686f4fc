"""The ONNX-only commands never import TensorFlow or tf2onnx (seconds and hundreds of MB)."""

from __future__ import annotations

import subprocess
import sys

import forms
import onnx
import pytest

PROBE = """
import sys
from surgery.cli import main
sys.argv = ["surgery", *{args!r}]
try:
    main()
except SystemExit as done:
    code = done.code
heavy = sorted(m for m in ("tensorflow", "tf2onnx", "keras") if m in sys.modules)
print("exit", code, "heavy", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "{model}"],
        ["inspect", "{model}", "--symmetry", "/fc1/Gemm"],
        ["widen", "{model}", "-o", "{out}", "--layer", "/fc1/Gemm=4"],
        ["verify", "{model}", "{model}", "--locate"],
        ["deepen", "{model}", "-o", "{out}", "--after", "/fc1/Gemm", "--kind", "identity"],
    ],
    ids=["inspect", "symmetry", "widen", "verify", "deepen"],
)
def test_onnx_only_commands_do_not_import_tensorflow(tmp_path, command):
    model = tmp_path / "mlp.onnx"
    onnx.save(forms.pytorch_mlp(), model)
    args = [part.format(model=model, out=tmp_path / "wide.onnx") for part in command]
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "exit 0 heavy -"
