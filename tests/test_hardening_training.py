"""`python -m training`: bad data files and bad options are one line on stderr with exit code 2.

Every case fails before any training starts (the data is checked when loaded), so the table
runs in-process in well under a second per row.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error


def _mnist_like(path: Path, **override) -> None:
    arrays = {
        "x_train": np.zeros((20, 28, 28), np.uint8),
        "y_train": np.arange(20, dtype=np.uint8) % 10,
        "x_test": np.zeros((10, 28, 28), np.uint8),
        "y_test": np.arange(10, dtype=np.uint8),
    }
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("training_inputs")
    paths = {
        name: folder / f"{name}.npz"
        for name in (
            "missing",
            "text",
            "empty",
            "wrong-keys",
            "wrong-shape",
            "pickled",
            "labels-out-of-range",
            "float-labels",
            "nan-pixels",
            "no-samples",
        )
    }
    paths["text"].write_text("not an archive\n")
    paths["empty"].write_bytes(b"")
    _mnist_like(paths["wrong-keys"], x_train=None)
    _mnist_like(paths["wrong-shape"], x_train=np.zeros((20, 28, 27), np.uint8))
    _mnist_like(paths["pickled"], x_train=np.array([{"run": "me"}], dtype=object))
    _mnist_like(paths["labels-out-of-range"], y_train=np.array([0, 99, -1] + [1] * 17))
    _mnist_like(paths["float-labels"], y_test=np.linspace(0, 9, 10) + 0.5)
    _mnist_like(paths["nan-pixels"], x_test=np.full((10, 28, 28), np.nan, np.float32))
    _mnist_like(paths["no-samples"], x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8))
    paths["directory"] = folder / "folder.npz"
    paths["directory"].mkdir()
    paths["out-is-a-file"] = folder / "results"
    paths["out-is-a-file"].write_text("a file, not a folder")
    return paths


def run_training(capfd, monkeypatch, *args) -> subprocess.CompletedProcess:
    """`python -m training ARGS...` in this process, its output captured."""
    from training.__main__ import run

    monkeypatch.setattr(sys, "argv", ["python -m training", *map(str, args)])
    capfd.readouterr()
    try:
        run()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(sys.argv, code, out, err)


DATA_ROWS = {
    "missing": "no such file",
    "directory": "is a directory",
    "text": "cannot be read as an .npz archive",
    "empty": "cannot be read as an .npz archive",
    "wrong-keys": "missing arrays x_train",
    "wrong-shape": "must be (N, 28, 28)",
    "pickled": "cannot be read as an .npz archive",
    "labels-out-of-range": "digits 0-9",
    "float-labels": "digits 0-9",
    "nan-pixels": "finite pixel values",
    "no-samples": "at least one digit label",
}


@pytest.mark.parametrize("row", list(DATA_ROWS))
def test_bad_data_file(data_files, row, tmp_path, capfd, monkeypatch):
    result = run_training(capfd, monkeypatch, "grow", "--quick", "--data", data_files[row], "--out", tmp_path / "run")
    assert_one_line_error(result, prefix="error: ", says=(data_files[row].name, DATA_ROWS[row]))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["grow", "--seeds", "0"], "--seeds"),
        (["bogus"], "bogus"),
        (["grow", "--data"], "--data"),
        (["grow", "--frobnicate"], "--frobnicate"),
    ],
    ids=["seeds-zero", "unknown-experiment", "option-without-value", "unknown-option"],
)
def test_bad_options(args, says, capfd, monkeypatch):
    assert_one_line_error(run_training(capfd, monkeypatch, *args), prefix="error: ", says=(says,))


def test_out_is_a_file(data_files, capfd, monkeypatch):
    result = run_training(capfd, monkeypatch, "grow", "--quick", "--out", data_files["out-is-a-file"])
    assert_one_line_error(result, prefix="error: ", says=(data_files["out-is-a-file"].name,))
    assert data_files["out-is-a-file"].read_text() == "a file, not a folder"
