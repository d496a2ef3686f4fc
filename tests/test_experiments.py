"""The experiments end to end, smoke-sized (``python -m training X --quick``), as users run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


@pytest.mark.slow
def test_demo(tmp_path):
    results, stdout = run_experiment("demo", tmp_path)
    assert results["bitwise_equal_after_widen"] is True
    before, widened, after = results["stages"]
    assert widened["dense_1"] == before["dense_1"] + results["config"]["added"]
    assert widened["test_accuracy"] == before["test_accuracy"] and results["accuracy_identical_after_widen"]
    assert widened["parameters"] - before["parameters"] == results["config"]["added"] * (784 + 1 + 10)
    assert results["verify"]["mode"] == "exact" and results["verify"]["equivalent"]
    # The control starts where the widened run starts and trains as long, at the old width.
    control = results["control"]
    assert control["dense_1"] == before["dense_1"]
    assert control["curve"]["epochs"] == results["curve"]["epochs"][-len(control["curve"]["epochs"]) :]
    assert control["curve"]["test_accuracy"][0] == before["test_accuracy"]
    for name in results["files"]:
        assert Path(name).is_file()
    assert "test accuracy" in stdout and "unwidened" in stdout and str(tmp_path / "demo.png") in stdout


@pytest.mark.slow
def test_grow(tmp_path):
    results, stdout = run_experiment("grow", tmp_path)
    config = results["config"]
    assert results["bitwise_equal_after_every_widening"] is True and results["widenings"] > 0
    split = results["split"]
    assert split["validation"] == 10 * config["validation_per_class"] and split["test"] == 1000
    assert {c["chosen"] for c in results["learning_rate"]["per_method"].values()} <= set(config["learning_rates"])
    runs = results["per_seed"][0]["runs"]
    full = results["full_width_parameters"]
    for budget in config["budgets"]:
        run = runs["scratch"][str(budget)]
        assert run["param_epochs"] == budget * full and run["flops"] == 6 * budget * full * split["train"]
    for method in ("fixed, reset", "fixed, carried", "fixed, restarted"):
        for per_stage in config["stage_epochs"]:
            run = runs[method][str(per_stage)]
            assert [w["to"] for w in run["widenings"]] == config["widths"][1:]
            assert [w["epoch"] for w in run["widenings"]] == [per_stage * i for i in range(1, len(config["widths"]))]
            # Growing costs less than training the full width as long.
            assert run["param_epochs"] < run["epochs"] * full
    # Reset and carried start from the same weights, so they agree until the first widening.
    reset, carried = (
        runs["fixed, reset"][str(config["stage_epochs"][0])],
        runs["fixed, carried"][str(config["stage_epochs"][0])],
    )
    first = config["stage_epochs"][0]
    assert reset["val_loss"][: first + 1] == carried["val_loss"][: first + 1]
    # A restarted schedule gives the new units the peak rate; the whole-run one, less.
    per_method = results["learning_rate"]["per_method"]
    for method, at_peak in (("fixed, restarted", True), ("fixed, carried", False)):
        rates = [w["learning_rate"] for w in runs[method][str(first)]["widenings"]]
        assert all((rate == pytest.approx(per_method[method]["chosen"])) is at_peak for rate in rates), rates
    for row in results["compute_to_target"].values():
        assert set(row) == {"scratch", "fixed, reset", "fixed, carried", "fixed, restarted", "trigger, carried"}
    summary = results["summary"]["scratch"][str(config["budgets"][0])]["test_accuracy"]
    assert summary["n"] == 1 and summary["sd"] == 0.0 and summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    assert "compute to target" in stdout


@pytest.mark.slow
def test_init(tmp_path):
    results, stdout = run_experiment("init", tmp_path)
    summary, run = results["summary"], results["per_seed"][0]
    for init in ("output-zero", "all-zero", "gradmax"):
        assert summary[init]["bitwise_equal"] is True
    # Zero fan-out: the new units' fan-in gets no gradient at first; GradMax's is what it maximises.
    assert run["output-zero"]["new_unit_gradient"]["fan_in"] == 0.0
    assert (
        run["all-zero"]["new_unit_gradient"]["fan_in"] == 0.0 and run["all-zero"]["new_unit_gradient"]["fan_out"] == 0.0
    )
    assert run["gradmax"]["new_unit_gradient"]["fan_in"] > 0.0
    # All-zero and the control compute the same function, so their validation losses start equal.
    assert run["all-zero"]["validation_loss_after_widening"] == pytest.approx(
        run["unwidened"]["validation_loss_after_widening"]
    )
    assert len(run["gradmax"]["validation_loss"]) == len(run["gradmax"]["steps"]) > 0
    assert "gradmax" in stdout


@pytest.mark.slow
def test_transfer(tmp_path):
    results, stdout = run_experiment("transfer", tmp_path)
    config = results["config"]
    assert set(results["test_accuracy"]) == {
        "scratch",
        "reuse hidden1",
        "reuse hidden1, TF1 freeze",
        "reuse hidden1, fine-tune all",
        "scratch, seed's BN",
        "reuse hidden1, seed's BN",
        "reuse hidden1, small pretraining",
    }
    # The small-pretraining variant starts from its own net, pretrained on a per-class sample.
    sizes = {(p["stuck_statistics"], p["images"], p["epochs"]) for p in results["pretrained"]}
    assert sizes == {
        (False, results["pretrain_samples"], config["pretrain_epochs"]),
        (True, results["pretrain_samples"], config["pretrain_epochs"]),
        (False, config["small_pretrain_images"], config["small_pretrain_epochs"]),
    }
    variants = results["variants"]
    assert variants["reuse hidden1"]["frozen"] == ["hidden1", "bn1"]
    assert (
        variants["reuse hidden1, TF1 freeze"]["frozen"] == ["hidden1"]
        and variants["reuse hidden1, fine-tune all"]["frozen"] == []
    )
    assert variants["scratch, seed's BN"]["batchnorm_momentum"] == 1.0
    run = next(r for r in results["runs"] if r["variant"] == "reuse hidden1")
    assert run["train_samples"] == 5 * config["samples_per_digit"][0]
    assert run["curve"]["epochs"] == list(range(0, config["epochs"] + 1, config["every"]))
    assert run["last_k_test_accuracy"] == pytest.approx(
        sum(run["curve"]["test_accuracy"][-config["last_k"] :]) / config["last_k"]
    )
    # What trains: everything > TF1 freeze (bn1's statistics are not parameters) > Keras freeze (gamma, beta too).
    trainable = {r["variant"]: r["trainable_parameters"] for r in results["runs"]}
    assert trainable["scratch"] == trainable["scratch, seed's BN"] == trainable["reuse hidden1, fine-tune all"]
    assert (
        trainable["reuse hidden1, fine-tune all"] - trainable["reuse hidden1, TF1 freeze"] == 784 * 200 + 200 + 2 * 200
    )
    assert trainable["reuse hidden1, TF1 freeze"] - trainable["reuse hidden1"] == 0
    assert results["test_samples_5_to_9"] == 500
    assert results["pretrained"][0]["test_accuracy"] > 0.25  # five classes: chance is 0.2
    assert "reuse hidden1" in stdout


def test_symmetry(tmp_path):
    results, stdout = run_experiment("symmetry", tmp_path)
    units = results["config"]["units"]
    rows = {(r["activation"], r["layers"], tuple(r["zero"])): r for r in results["summary"]}
    # Nothing zero: the toolkit finds no symmetric units, and the model learns above chance.
    assert rows[("relu", 2, ())]["distinct_units"]["hidden1"] == [units]
    # Trained on all ten digits (the files are sorted by class: the first images are 0s and 1s only).
    assert rows[("relu", 2, ())]["mean_test_accuracy"] > 0.5
    # Both kernels zero with ReLU: relu(0) = 0 with zero gradient, so every hidden unit stays
    # the same dead unit and the model cannot beat guessing one class.
    both = rows[("relu", 2, ("hidden1", "output"))]
    assert both["distinct_units"]["hidden1"] == [1] and both["mean_test_accuracy"] <= 0.2
    assert "zero kernels" in stdout


@pytest.mark.slow
def test_runs_split_by_seed_merge_into_one(tmp_path):
    first, _ = run_experiment("init", tmp_path / "a")
    done = run_module(
        "training", "init", "--quick", "--first-seed", "1", "--out", tmp_path / "b", cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert second["seeds"] == [1]
    merged_run = run_module(
        "training.merge", "init", tmp_path / "all", tmp_path / "a", tmp_path / "b", cwd=ROOT, timeout=300
    )
    assert merged_run.returncode == 0, merged_run.stderr[-3000:]
    merged = json.loads((tmp_path / "all" / "results.json").read_text())
    assert merged["seeds"] == [0, 1] and [p["seed"] for p in merged["per_seed"]] == [0, 1]
    assert [m["seeds"] for m in merged["merged_from"]] == [[0], [1]]
    accuracy = merged["summary"]["gradmax"]["final_test_accuracy"]
    values = [
        first["per_seed"][0]["gradmax"]["final_test_accuracy"],
        second["per_seed"][0]["gradmax"]["final_test_accuracy"],
    ]
    assert accuracy["n"] == 2 and accuracy["mean"] == pytest.approx(sum(values) / 2)
    assert (tmp_path / "all" / "init.png").is_file()
    # Parts of different set-ups are refused with one line.
    grow = run_module("training", "grow", "--quick", "--out", tmp_path / "g", cwd=ROOT, timeout=300)
    assert grow.returncode == 0
    refused = run_module(
        "training.merge", "init", tmp_path / "x", tmp_path / "a", tmp_path / "g", cwd=ROOT, timeout=300
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "differs" in refused.stderr


def test_compute_to_target_interpolates_in_log_compute_between_budgets():
    """Two seeds whose mean accuracy is 0.81, 0.89, 0.95 at 1, 2 and 4 units of compute: 0.85 is
    crossed half-way between 1 and 2 in log-compute (√2), 0.80 at the cheapest budget (a bound),
    0.99 never."""
    from training.grow import METHODS, SCRATCH, GrowConfig, compute_to_target

    config = GrowConfig(budgets=(1, 2, 4), stage_epochs=(1,), trigger_epochs=(4,), targets=(0.80, 0.85, 0.99))
    accuracy = {"1": (0.80, 0.82), "2": (0.88, 0.90), "4": (0.95, 0.95)}

    def seed(index: int) -> dict:
        runs = {m: {"1": {"param_epochs": 1.0, "final_test_accuracy": 0.5}} for m in METHODS}
        runs[SCRATCH] = {s: {"param_epochs": float(s), "final_test_accuracy": a[index]} for s, a in accuracy.items()}
        runs["trigger, carried"] = {"4": {"param_epochs": 4.0, "final_test_accuracy": 0.5}}
        return {"runs": runs}

    table = compute_to_target([seed(0), seed(1)], config, resamples=50)
    assert table["0.85"][SCRATCH]["param_epochs"] == pytest.approx(2**0.5)
    assert not table["0.85"][SCRATCH]["upper_bound"]
    assert table["0.8"][SCRATCH]["param_epochs"] == 1.0 and table["0.8"][SCRATCH]["upper_bound"]
    assert table["0.99"][SCRATCH]["param_epochs"] is None and table["0.99"][SCRATCH]["reached_share"] == 0.0
    assert table["0.85"]["fixed, reset"]["param_epochs"] is None  # 0.5 everywhere
