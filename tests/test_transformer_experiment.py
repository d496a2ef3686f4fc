"""`python -m training transformer --quick`: a character GPT grown during training through the toolkit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.charlm import load_corpus, split, windows
from training.transformer import interval, to_target

ROOT = Path(__file__).resolve().parents[1]


def test_stdlib_corpus_is_ascii_text_and_windows_shift_by_one():
    text, described = load_corpus(None, limit=50_000)
    assert described["source"] == "stdlib" and text.size == 50_000 and text.max() < 128
    assert b"def " in text.tobytes()
    train, valid = split(text)
    assert train.size == 45_000 and valid.size == 5_000
    x, y = windows(train, 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_unknown_corpus_is_refused_by_name():
    from surgery import SurgeryError

    with pytest.raises(SurgeryError, match="--data must be one of stdlib"):
        load_corpus("shakespeare", limit=10)


def test_compute_to_target_and_interval():
    curve = [[1, 10.0, 3.0], [2, 20.0, 2.5], [3, 30.0, 2.4]]
    assert to_target(curve, 2.5) == 20.0 and to_target(curve, 2.0) is None
    summary = interval([1.0, 2.0, 3.0])
    assert summary["mean"] == 2.0 and summary["sd"] == pytest.approx(1.0)  # ddof=1
    assert 1.0 <= summary["ci95"][0] <= 2.0 <= summary["ci95"][1] <= 3.0


@pytest.mark.slow
def test_quick_run_grows_exactly_and_records_every_operation(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "training", "transformer", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "transformer.png").stat().st_size > 0
    assert results["experiment"] == "transformer" and results["seeds"] == [0] and results["data"]["source"] == "stdlib"
    seed = results["per_seed"][0]
    steps = results["config"]["steps"]
    assert seed["small"]["curve"][-1][0] == steps
    assert set(seed["grown"]) == set(seed["scratch"]) == {"ffn", "heads", "depth"}
    for name, record in seed["grown"].items():
        assert seed["scratch"][name]["curve"][-1][0] == steps
        if not record["grown"]:  # refused by the toolkit: its message is recorded, nothing continued
            assert record["error"] and "curve" not in record
            continue
        assert record["bitwise_equal"] and record["max_abs_diff"] == 0.0  # surgery.verify ran on validation windows
        if record["to_keras"]:
            assert record["loss_rel_diff"] <= 1e-5 and record["curve"][-1][0] == steps
        else:
            assert record["error"] and "curve" not in record
    # every growth works on the Keras export and converts back: the loop closes
    assert all(record["grown"] and record["to_keras"] for record in seed["grown"].values())
    assert results["summary"]["ffn"]["max_abs_diff"] == 0.0
