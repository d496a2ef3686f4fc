"""Safe writes and determinism for every command that writes a model (export, widen, to-keras).

- The same inputs, plan and seed give the same output: byte for byte for ``.onnx`` files. A
  ``.keras`` file is a zip whose ``metadata.json`` records the save time (to the minute) and whose
  entries carry zip timestamps, so two saves are byte-identical only within the same minute;
  what must match is the architecture (``config.json``) and every weight array.
- A write that fails midway (a real file-size limit in a child process) or a Ctrl-C before the
  rename leaves no output and no temporary file, and an
  existing output that ``--force`` was about to replace is still whole.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, cli_env, run_surgery
from onnx import TensorProto, helper, numpy_helper

MODELS = Path(__file__).resolve().parents[1] / "models"


def _keras_contents(path: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """(config.json, {weight path: array}) of a .keras file."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json")
        weights = archive.read("model.weights.h5")
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(weights), "r") as store:
        store.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return config, arrays


def _same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def test_export_is_byte_identical_across_runs(tmp_path):
    """Two independent `surgery export` processes on the same .keras file write the same bytes.

    (Within one process tf2onnx numbers generated names from a process-wide counter, so a second
    export there can name a shape constant ``__38`` instead of ``__19``; each CLI run is a process.)
    """
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "surgery", "export", MODELS / "mlp.keras", "-o", tmp_path / f"run{i}.onnx"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )
        for i in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()
    first, second = (tmp_path / "run0.onnx").read_bytes(), (tmp_path / "run1.onnx").read_bytes()
    assert first == second
    assert onnx.load_from_string(first).graph.node  # a real model, not two empty files


@pytest.mark.parametrize("init", ["output-zero", "all-random"])
def test_widen_is_byte_identical_for_the_same_seed(init, tmp_path, capfd):
    outputs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        args = [
            "widen",
            MODELS / "transfer.onnx",
            "-o",
            tmp_path / f"{name}.onnx",
            "--layer",
            "hidden1=3",
            "--layer",
            "hidden3=2",
            "--init",
            init,
            "--seed",
            seed,
            "--no-verify",
        ]
        outcome = run_surgery(capfd, *args)
        assert outcome.returncode == 0, outcome.stderr
        outputs[name] = (tmp_path / f"{name}.onnx").read_bytes()
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]  # the seed matters, so the equality above is not vacuous


def test_to_keras_is_deterministic_in_architecture_and_weights(tmp_path, capfd):
    contents = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        args = [
            "to-keras",
            MODELS / "transfer.onnx",
            "-o",
            tmp_path / f"{name}.keras",
            "--reinit",
            "hidden2",
            "--head",
            "5",
            "--seed",
            seed,
        ]
        outcome = run_surgery(capfd, *args)
        assert outcome.returncode == 0, outcome.stderr
        contents[name] = _keras_contents(tmp_path / f"{name}.keras")
    assert contents["a"][0] == contents["b"][0]
    assert _same_weights(contents["a"][1], contents["b"][1])
    assert not _same_weights(contents["a"][1], contents["c"][1])  # the seed redraws the reinit layer


# ---------------------------------------------------------------------------------------------
# Interrupted and failed writes


def _writer_args(command: str, out: Path) -> list:
    return {
        "export": ["export", MODELS / "mlp.keras", "-o", out.with_suffix(".onnx")],
        "widen": ["widen", MODELS / "mlp.onnx", "-o", out.with_suffix(".onnx"), "--layer", "dense_1=2", "--no-verify"],
        "to-keras": ["to-keras", MODELS / "mlp.onnx", "-o", out.with_suffix(".keras")],
    }[command]


def _limit_file_size() -> None:
    """In the child, before exec: files may not grow past 4 KiB (writes then fail with EFBIG)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "forced-over-existing"])
@pytest.mark.parametrize("command", ["export", "widen", "to-keras"])
def test_a_write_that_fails_midway_leaves_no_partial_file(command, existing, tmp_path):
    """A real failing write (the file-size limit stands in for a full disk): nothing is left."""
    args = _writer_args(command, tmp_path / "out")
    target = Path(args[3])
    if existing:
        target.write_bytes(b"the previous output")
        args.append("--force")
    result = subprocess.run(
        [sys.executable, "-m", "surgery", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(),
        preexec_fn=_limit_file_size,
        timeout=300,
    )
    assert_one_line_error(result, code=2, says=("File too large",))
    left = sorted(p.name for p in tmp_path.iterdir())
    if existing:
        assert left == [target.name] and target.read_bytes() == b"the previous output"
    else:
        assert left == []


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "forced-over-existing"])
@pytest.mark.parametrize("command", ["export", "widen", "to-keras"])
def test_ctrl_c_before_the_rename_leaves_no_partial_file(command, existing, tmp_path, monkeypatch, capfd):
    """Ctrl-C once the output is written but not yet renamed into place: nothing is left."""
    args = _writer_args(command, tmp_path / "out")
    target = Path(args[3])
    if existing:
        target.write_bytes(b"the previous output")
        args.append("--force")

    def interrupted(source, destination):
        assert Path(source).stat().st_size > 0  # the whole output was written first
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    assert_one_line_error(run_surgery(capfd, *args), code=130, says=("interrupted",))
    left = sorted(p.name for p in tmp_path.iterdir())
    if existing:
        assert left == [target.name] and target.read_bytes() == b"the previous output"
    else:
        assert left == []


def _big_mlp(path: Path, width: int = 1536) -> None:
    """An MLP with a `width` × `width` hidden layer (9 MiB): its write takes measurable time."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2", transB=1),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3", "b3"], ["output"], name="fc3", transB=1),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (width, 64)).astype(f32), "w1"),
        numpy_helper.from_array(np.zeros(width, f32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (width, width)).astype(f32), "w2"),
        numpy_helper.from_array(np.zeros(width, f32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.1, (10, width)).astype(f32), "w3"),
        numpy_helper.from_array(np.zeros(10, f32), "b3"),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_sigint_during_the_write_leaves_nothing_or_a_whole_model(tmp_path):
    """Real Ctrl-C: SIGINT a `surgery widen` subprocess right as it starts writing.

    widen writes through a temporary file beside the output; the signal is sent at several short
    delays after that file appears, so it lands during or after the write. Whatever the moment, the folder
    then holds either nothing (exit 130, one line) or the complete model: never a partial file
    or a temporary file.
    """
    source = tmp_path / "big.onnx"
    _big_mlp(source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def start(name: str) -> subprocess.Popen:
        command = [
            sys.executable,
            "-m",
            "surgery",
            "widen",
            source,
            "-o",
            out_dir / name,
            "--layer",
            "fc2=64",
            "--no-verify",
        ]
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(PYTHONUNBUFFERED="1")
        )

    baseline = start("baseline.onnx")
    assert baseline.wait(timeout=120) == 0, baseline.stderr.read().decode()
    reference = (out_dir / "baseline.onnx").read_bytes()
    (out_dir / "baseline.onnx").unlink()
    outcomes = []
    for index, delay in enumerate((0.0, 0.005, 0.02, 0.05, 0.2)):
        run = start(f"run{index}.onnx")
        while run.poll() is None and not any(out_dir.iterdir()):  # the write begins with a temporary file
            time.sleep(0.001)
        time.sleep(delay)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
        written = out_dir / f"run{index}.onnx"
        if written.exists():  # the rename happened before the signal (which may then end the process at exit)
            assert written.read_bytes() == reference
        else:
            # 130 from the CLI's handler; under load CPython sometimes ends an interrupted run by
            # re-raising SIGINT at exit (-2), after the same message.
            assert run.returncode in (130, -signal.SIGINT), (run.returncode, err.decode())
            assert err.decode().strip() == "surgery: interrupted", err.decode()
            assert not written.exists()
        assert sorted(p.name for p in out_dir.iterdir()) == ([written.name] if written.exists() else [])
        outcomes.append(run.returncode)
        written.unlink(missing_ok=True)
    assert {130, -signal.SIGINT} & set(outcomes), f"no run was interrupted ({outcomes}); the test did not test"
