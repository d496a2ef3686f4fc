"""`surgery widen` as users run it: success, one-line errors (exit 2), refusal to write a model
whose outputs are not bitwise equal (exit 1), and the non-preserving strategies."""

from __future__ import annotations

from pathlib import Path

import forms
import onnx
import pytest
from conftest import assert_one_line_error, run_surgery

from surgery.verification import verify


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("widen") / "cnn.onnx"
    onnx.save(forms.pytorch_cnn(channels=4), path)
    return path


def test_widen_writes_a_verified_model_deterministically(cli, cnn_file, tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    done = cli("widen", cnn_file, "-o", first, "--layer", "/conv1/Conv=3", "--seed", "5")
    assert done.returncode == 0, done.stderr
    assert "conv1: 4 -> 7 units" in done.stdout  # the module path names the layer
    assert "outputs bitwise equal" in done.stdout
    assert "conv '/conv1/Conv' output channels 4 -> 7: same NCHWc blocking" in done.stdout
    assert cli("widen", cnn_file, "-o", second, "--layer", "/conv1/Conv=3", "--seed", "5").returncode == 0
    assert first.read_bytes() == second.read_bytes()
    assert cli("widen", cnn_file, "-o", second, "--layer", "/conv1/Conv=3", "--seed", "6", "--force").returncode == 0
    assert first.read_bytes() != second.read_bytes()
    wide = onnx.load(first)
    assert next(i for i in wide.graph.initializer if i.name == "conv1.weight").dims[0] == 7


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("/conv9/Conv=2", "no layer named '/conv9/Conv'; did you mean /conv1/Conv"),
        ("/conv1/Conv", "expected NAME=K"),
        ("/conv1/Conv=x", "K must be an integer"),
        ("/conv1/Conv=0", "the number of new units must be at least 1"),
        ("/fc/Gemm=2", "graph output 'output'"),
    ],
)
def test_bad_requests_are_one_line_errors(cli, cnn_file, tmp_path, layer, message):
    out = tmp_path / "out.onnx"
    done = cli("widen", cnn_file, "-o", out, "--layer", layer)
    assert_one_line_error(done, says=(message,))
    assert done.stderr.startswith("surgery: ")
    assert not out.exists()


def test_same_layer_twice_and_existing_output_are_refused(cli, cnn_file, tmp_path):
    out = tmp_path / "out.onnx"
    assert_one_line_error(
        cli("widen", cnn_file, "-o", out, "--layer", "/conv1/Conv=1", "--layer", "/conv1/Conv=2"), says=("given twice",)
    )
    assert not out.exists()
    out.write_bytes(b"keep me")
    assert_one_line_error(cli("widen", cnn_file, "-o", out, "--layer", "/conv1/Conv=1"), says=("--force",))
    assert out.read_bytes() == b"keep me"


def test_outputs_that_are_not_bitwise_equal_are_not_written(cli, tmp_path):
    model, out = tmp_path / "one.onnx", tmp_path / "wide.onnx"
    onnx.save(forms.single_channel_conv(), model)
    assert_one_line_error(
        cli("widen", model, "-o", out, "--layer", "/conv/Conv=2"), code=1, says=("not bitwise equal",)
    )
    assert not out.exists()
    done = cli("widen", model, "-o", out, "--layer", "/conv/Conv=2", "--no-verify")
    assert done.returncode == 0 and out.exists() and "verified" not in done.stdout


def test_non_preserving_strategies_report_what_they_measure(cli, cnn_file, tmp_path):
    done = cli("widen", cnn_file, "-o", tmp_path / "r.onnx", "--layer", "/conv1/Conv=2", "--init", "all-random")
    assert done.returncode == 0 and "outputs changed" in done.stdout and (tmp_path / "r.onnx").exists()
    done = cli("widen", cnn_file, "-o", tmp_path / "n.onnx", "--layer", "/conv1/Conv=2", "--init", "net2net")
    assert done.returncode == 0 and "max |diff|" in done.stdout


def test_inspect_symmetry_sees_all_zero_units(cli, cnn_file, tmp_path):
    out = tmp_path / "z.onnx"
    assert cli("widen", cnn_file, "-o", out, "--layer", "/conv1/Conv=3", "--init", "all-zero").returncode == 0
    done = cli("inspect", out, "--symmetry", "/conv1/Conv")
    assert done.returncode == 0 and "units 4, 5, 6 are identical" in done.stdout


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("fixture", "layer"),
    [
        ("bert", "/model/encoder/layer.0/intermediate/dense/MatMul"),
        ("llama", "/model/model/layers.0/mlp/up_proj/MatMul"),
        ("llama_gqa", "/model/model/layers.1/mlp/gate_proj/MatMul"),
    ],
)
def test_transformer_exports_are_verified_with_no_extra_flags(fixture, layer, tmp_path, capfd):
    """input_ids [batch, sequence]: the sequence takes its default and token ids stay below the
    vocabulary, so widen's own check runs on real PyTorch exports without --dim (issue 13, item 2)."""
    out = tmp_path / "wide.onnx"
    done = run_surgery(capfd, "widen", FIXTURES / f"{fixture}.onnx", "-o", out, "--layer", f"{layer}=16")
    assert done.returncode == 0, done.stderr
    assert "verified: outputs bitwise equal (16 samples in batches of 8, batch=8, sequence=8" in done.stdout
    report = verify(FIXTURES / f"{fixture}.onnx", out, dims={"sequence": 5}, samples=4)
    assert report.equivalent and report.dims == {"batch": 4, "sequence": 5}
