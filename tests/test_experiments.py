"""The experiments end to end, smoke-sized (``python -m training X --quick``), as users run them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ROOT, run_module


def expected_replicas() -> int:
    """MirroredStrategy over every GPU when there are several, else the default strategy's one replica."""
    import tensorflow as tf

    gpus = len(tf.config.list_logical_devices("GPU"))
    return gpus if gpus > 1 else 1


def run_experiment(name: str, out: Path, *extra: str) -> tuple[dict, str]:
    done = run_module("training", name, "--quick", "--out", out, *extra, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == name and results["quick"] is True
    assert results["command"].startswith("python -m training " + name)
    assert "tensorflow" in results["versions"] and "onnxruntime" in "".join(results["versions"])
    assert results["data"]["kind"] == "bundled" and results["data"]["test"] == 1000 and results["seeds"] == [0]
    assert results["replicas"] == expected_replicas()
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert [str(p) for p in sorted(pngs)] == sorted(results["plots"])
    return results, done.stdout


def test_demo(tmp_path):
    results, stdout = run_experiment("demo", tmp_path)
    assert results["bitwise_equal_after_widen"] is True
    before, widened, after = results["stages"]
    assert widened["dense_1"] == before["dense_1"] + results["config"]["added"]
    assert widened["test_accuracy"] == before["test_accuracy"] and results["accuracy_identical_after_widen"]
    assert widened["parameters"] - before["parameters"] == results["config"]["added"] * (784 + 1 + 10)
    assert results["verify"]["mode"] == "exact" and results["verify"]["equivalent"]
    for name in results["files"]:
        assert Path(name).is_file()
    assert "test accuracy" in stdout and str(tmp_path / "demo.png") in stdout


def test_grow(tmp_path):
    results, stdout = run_experiment("grow", tmp_path)
    assert results["bitwise_equal_after_widen"] is True
    assert results["bitwise_equal_after_widen_by_strategy"]["all-zero"] is True
    assert results["keras_accuracy_identical_after_widen"] is True
    # TensorFlow rounds the wider product differently: recorded, whichever way it goes.
    assert isinstance(results["keras_bitwise_equal_after_widen"], bool)
    assert results["keras_max_abs_diff_after_widen"] < 1e-5
    variants = results["single_neuron"][0]["variants"]
    assert set(variants) == {"output-zero", "all-zero", "net2net", "1-unit further", "2-unit scratch"}
    config = results["config"]
    assert variants["2-unit scratch"]["curve"]["epochs"][-1] == config["first_epochs"] + config["more_epochs"]
    runs = results["staged"][0]["runs"]
    assert results["staged_bitwise_equal_after_widen"] is True
    assert len(runs["staged"]["widenings"]) == len(config["stage_widths"]) - 1
    widest = f"{config['stage_widths'][-1]} scratch"
    assert runs["staged"]["epochs"] == runs[widest]["epochs"]
    assert runs["staged"]["param_epochs"] < runs[widest]["param_epochs"]
    for name in runs:
        assert 0.0 <= results["staged_final_accuracy"][name]["mean"] <= 1.0
        assert results["staged_wall_s"][name]["mean"] > 0
    assert "ORT bitwise" in stdout


def test_transfer(tmp_path):
    results, stdout = run_experiment("transfer", tmp_path)
    config = results["config"]
    assert set(results["final_test_accuracy"]) == {
        "scratch", "reuse hidden1", "reuse hidden1-2", "reuse hidden1-4", "scratch, seed's BN", "reuse hidden1, seed's BN"
    }
    assert results["variants"]["reuse hidden1"]["frozen"] == ["hidden1", "bn1"]
    assert results["variants"]["scratch, seed's BN"]["batchnorm_momentum"] == 1.0
    run = next(r for r in results["runs"] if r["variant"] == "reuse hidden1")
    assert run["train_samples"] == 5 * config["samples_per_digit"][0]
    assert run["curve"]["epochs"] == list(range(0, config["epochs"] + 1, config["every"]))
    # Freezing through to_keras shrinks what trains: more reuse, fewer trainable parameters.
    trainable = {r["variant"]: r["trainable_parameters"] for r in results["runs"]}
    assert trainable["scratch"] == trainable["scratch, seed's BN"]
    assert trainable["scratch"] > trainable["reuse hidden1"] > trainable["reuse hidden1-2"] > trainable["reuse hidden1-4"]
    assert results["test_samples_5_to_9"] == 500
    assert results["pretrained"][0]["test_accuracy"] > 0.25  # five classes: chance is 0.2
    assert "reuse hidden1" in stdout


def test_symmetry(tmp_path):
    results, stdout = run_experiment("symmetry", tmp_path)
    units = results["config"]["units"]
    rows = {(r["activation"], r["layers"], tuple(r["zero"])): r for r in results["summary"]}
    # Nothing zero: the toolkit finds no symmetric units, and the model learns above chance.
    assert rows[("relu", 2, ())]["distinct_units"]["hidden1"] == [units]
    assert rows[("relu", 2, ())]["mean_test_accuracy"] > 0.2
    # Both kernels zero with ReLU: relu(0) = 0 with zero gradient, so every hidden unit stays
    # the same dead unit and the model cannot beat guessing one class.
    both = rows[("relu", 2, ("hidden1", "output"))]
    assert both["distinct_units"]["hidden1"] == [1] and both["mean_test_accuracy"] <= 0.2
    assert "zero kernels" in stdout
