"""Write first, verify by path, then rename: `surgery.modelio.staged_save` and `surgery widen`.

The staged model is a complete model under temporary names in the destination folder: its
tensors name the temporary data file (so onnxruntime resolves them by path), and only the
committed ``.onnx`` names the final ``OUT.onnx.data``.
"""

from __future__ import annotations

import shutil

import forms
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error
from test_external_data import build_external_mlp, external_entries, run

from surgery.errors import NotEquivalentError
from surgery.modelio import load_model, staged_save
from surgery.rewrite import widen_in_place
from surgery.verification import verify


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return build_external_mlp(tmp_path_factory.mktemp("staged") / "model")


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 384), dtype=np.float32)


def _widened(source):
    model = load_model(source)
    widen_in_place(model, {"layer1/MatMul": 16}, seed=2)
    return model


def test_staged_model_runs_by_path_before_it_is_committed(source, tmp_path, x):
    out = tmp_path / "wide.onnx"
    with staged_save(_widened(source), out) as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".wide.onnx.") and not out.exists()
        locations = {e["location"] for e in external_entries(staged).values()}
        assert len(locations) == 1 and locations != {"wide.onnx.data"}
        assert (tmp_path / locations.pop()).is_file()  # the temporary data file, beside it
        assert verify(source, staged, samples=4, batch=2).equivalent
        staged_output = run(staged, x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.onnx", "wide.onnx.data"]
    assert {e["location"] for e in external_entries(out).values()} == {"wide.onnx.data"}
    np.testing.assert_array_equal(run(out, x), staged_output)
    np.testing.assert_array_equal(run(out, x), run(source, x))


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_inside_the_block_leaves_nothing_new(source, tmp_path, existing):
    out = tmp_path / "wide.onnx"
    if existing:
        out.write_bytes(b"previous")
    with pytest.raises(NotEquivalentError):
        with staged_save(_widened(source), out, force=existing):
            assert len(list(tmp_path.iterdir())) == 2 + existing  # the staged .onnx and data file
            raise NotEquivalentError("rejected")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["wide.onnx"] if existing else [])
    if existing:
        assert out.read_bytes() == b"previous"


def test_widen_cli_verifies_a_shared_external_data_output_before_naming_it(source, cli, tmp_path, x):
    folder = tmp_path / "side_by_side"
    shutil.copytree(source.parent, folder)
    before = sorted(p.name for p in folder.iterdir())
    done = cli(
        "widen",
        folder / "model.onnx",
        "-o",
        folder / "wide.onnx",
        "--layer",
        "layer2/MatMul=8",
        "--share-external-data",
    )
    assert done.returncode == 0, done.stderr
    assert "verified: outputs bitwise equal" in done.stdout
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, "wide.onnx", "wide.onnx.data"])
    np.testing.assert_array_equal(run(folder / "wide.onnx", x), run(folder / "model.onnx", x))


def _single_channel_conv_with_external_data(folder):
    """One output channel: widening it changes onnxruntime's kernel, so outputs are not bitwise equal."""
    folder.mkdir()
    onnx.save(
        forms.single_channel_conv(),
        folder / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return folder / "model.onnx"


@pytest.mark.parametrize("existing", [False, True])
def test_widen_cli_rejected_external_output_leaves_nothing(cli, tmp_path, existing):
    model = _single_channel_conv_with_external_data(tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    args = ["widen", model, "-o", out / "wide.onnx", "--layer", "/conv/Conv=2"]
    if existing:
        (out / "wide.onnx").write_bytes(b"previous")
        args.append("--force")
    assert_one_line_error(cli(*args), code=1, says=("not bitwise equal",))
    assert sorted(p.name for p in out.iterdir()) == (["wide.onnx"] if existing else [])
    if existing:
        assert (out / "wide.onnx").read_bytes() == b"previous"
