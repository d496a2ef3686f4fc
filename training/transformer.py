"""Grow a character-level GPT during training through the toolkit, against scratch at equal compute.

Every seed trains the small GPT (`TransformerConfig.base`) for `grow_at` steps, then grows a copy
of it with each operation in `OPERATIONS` through the public API only — ``surgery.export_keras``,
``surgery.widen`` (feed-forward width via the plan, heads via ``heads=``), ``surgery.deepen``,
``surgery.verify`` on the validation windows, ``surgery.to_keras`` — checks that the grown ONNX
model's outputs are bitwise equal and that the converted Keras model's validation loss equals the
loss before growth (to `LOSS_RTOL`), and trains it on with a fresh Adam to `steps`. Scratch
trains each grown architecture from a random start for `steps`; the small model trains on too.
Every arm sees the same batch at the same step.

Compute is training FLOPs ≈ 6 × parameters × tokens (Kaplan et al. 2020; the attention
score term, ~6 % here, is left out), summed over the stages. The target is the worst final
validation bpc of the scratch seeds of that architecture (every scratch seed reaches it);
compute to target is the first evaluation at or below it. An operation the toolkit refuses, or a
grown model to-keras cannot convert, is recorded with the toolkit's message and not continued:
nothing is rebuilt by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.charlm import GptConfig, bits_per_character, compile_lm, gpt, load_corpus, parameter_count, split, windows
from training.runtime import header, publish, pyplot, save_figure, table

LOSS_RTOL = 1e-5
BOOTSTRAP = 10_000


@dataclass(frozen=True)
class TransformerConfig:
    base: GptConfig
    steps: int
    grow_at: int
    batch: int
    every: int
    validation_windows: int
    learning_rate: float
    corpus_limit: int


FULL = TransformerConfig(
    GptConfig(),
    steps=240,
    grow_at=80,
    batch=16,
    every=20,
    validation_windows=128,
    learning_rate=3e-3,
    corpus_limit=2_000_000,
)
QUICK = TransformerConfig(
    GptConfig(model_dim=32, blocks=1, heads=2, key_dim=8, ffn=32, context=32),
    steps=12,
    grow_at=6,
    batch=8,
    every=3,
    validation_windows=16,
    learning_rate=3e-3,
    corpus_limit=200_000,
)


def _operations(base: GptConfig) -> dict[str, tuple[GptConfig, Callable[[Any], Any]]]:
    """Growth name → (architecture it reaches, the toolkit call that grows an exported `base` model)."""
    import surgery

    return {
        "ffn": (base.grown(ffn=2 * base.ffn), lambda m: surgery.widen(m, {"block*_ffn_up": base.ffn})),
        "heads": (base.grown(heads=2 * base.heads), lambda m: surgery.widen(m, heads={"*": base.heads})),
        "depth": (
            base.grown(blocks=2 * base.blocks),
            lambda m: surgery.deepen(m, after=f"block{base.blocks - 1}", count=base.blocks),
        ),
    }


def _flops(parameters: int, tokens: int) -> float:
    return 6.0 * parameters * tokens


class _Stream:
    """Training and validation windows: batch `step` is the same for every arm of a seed."""

    def __init__(self, train: np.ndarray, valid: np.ndarray, config: TransformerConfig, seed: int):
        self.train, self.config, self.seed = train, config, seed
        self.x_valid, self.y_valid = windows(
            valid, config.validation_windows, config.base.context, np.random.default_rng(12345)
        )

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return windows(
            self.train, self.config.batch, self.config.base.context, np.random.default_rng([self.seed, step])
        )


def _train(model, stream: _Stream, first: int, last: int, flops0: float, curve: list[list[float]]) -> float:
    """Train steps first..last-1, appending [step, flops, bpc] every `every` steps; the FLOPs reached."""
    tokens = stream.config.batch * stream.config.base.context
    parameters = parameter_count(model)
    flops = flops0
    for step in range(first, last):
        model.train_on_batch(*stream.batch(step))
        flops += _flops(parameters, tokens)
        if (step + 1) % stream.config.every == 0 or step + 1 == last:
            curve.append([step + 1, flops, bits_per_character(model, stream.x_valid, stream.y_valid)])
    return flops


def _grow(
    small,
    onnx_small,
    name: str,
    grow: Callable[[Any], Any],
    stream: _Stream,
    config: TransformerConfig,
    flops0: float,
    prefix: list[list[float]],
) -> dict[str, Any]:
    """One growth of the trained small model: exactness checks, then training on if it converted."""
    import surgery

    record: dict[str, Any] = {"operation": name}
    start = time.perf_counter()
    try:
        grown = grow(onnx_small)
    except surgery.SurgeryError as error:
        return {**record, "grown": False, "error": str(error)}
    report = surgery.verify(onnx_small, grown, inputs={"input_ids": stream.x_valid[:32]})
    outputs = report.to_json()["outputs"]
    record.update(
        grown=True,
        bitwise_equal=bool(outputs) and all(o["bitwise_equal"] for o in outputs),
        max_abs_diff=max(float(o["max_abs_diff"]) for o in outputs),
    )
    try:
        keras_grown = surgery.to_keras(grown)
    except surgery.SurgeryError as error:
        return {**record, "to_keras": False, "error": str(error), "seconds": time.perf_counter() - start}
    before = bits_per_character(small, stream.x_valid, stream.y_valid)
    after = bits_per_character(keras_grown, stream.x_valid, stream.y_valid)
    record.update(
        to_keras=True,
        bpc_before=before,
        bpc_after=after,
        loss_rel_diff=abs(after - before) / before,
        seconds=time.perf_counter() - start,
    )
    compile_lm(keras_grown, learning_rate=config.learning_rate)  # fresh Adam state
    curve = [list(p) for p in prefix]
    _train(keras_grown, stream, config.grow_at, config.steps, flops0, curve)
    return {**record, "parameters": parameter_count(keras_grown), "curve": curve}


def one_seed(seed: int, text: tuple[np.ndarray, np.ndarray], config: TransformerConfig) -> dict[str, Any]:
    import keras

    import surgery

    stream = _Stream(*text, config, seed)
    keras.utils.set_random_seed(seed)
    small = compile_lm(gpt(config.base), learning_rate=config.learning_rate)
    curve: list[list[float]] = []
    flops = _train(small, stream, 0, config.grow_at, 0.0, curve)
    prefix = [list(p) for p in curve]
    onnx_small = surgery.export_keras(small)
    operations = _operations(config.base)
    grown = {
        name: _grow(small, onnx_small, name, op, stream, config, flops, prefix) for name, (_, op) in operations.items()
    }
    _train(small, stream, config.grow_at, config.steps, flops, curve)
    scratch = {}
    for name, (target, _) in operations.items():
        keras.utils.set_random_seed(seed)
        model = compile_lm(gpt(target), learning_rate=config.learning_rate)
        scratch[name] = {"config": asdict(target), "parameters": parameter_count(model), "curve": []}
        _train(model, stream, 0, config.steps, 0.0, scratch[name]["curve"])
    return {
        "seed": seed,
        "small": {"parameters": parameter_count(small), "curve": curve},
        "grown": grown,
        "scratch": scratch,
    }


def to_target(curve: list[list[float]], target: float) -> float | None:
    """FLOPs at the first evaluation with bpc ≤ target (None: never)."""
    return next((flops for _, flops, bpc in curve if bpc <= target), None)


def interval(values: list[float], seed: int = 0) -> dict[str, Any]:
    """Mean, sample sd (ddof=1) and a bootstrap 95 % interval of the mean."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"n": 0}
    means = np.random.default_rng(seed).choice(array, (BOOTSTRAP, array.size)).mean(axis=1)
    return {
        "n": int(array.size),
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if array.size > 1 else None,
        "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
    }


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per operation: the target, compute to it (scratch, grown, their ratio) and the exactness checks."""
    summary = {}
    for name in per_seed[0]["scratch"]:
        finals = [s["scratch"][name]["curve"][-1][2] for s in per_seed]
        target = max(finals)
        records = [s["grown"][name] for s in per_seed]
        entry: dict[str, Any] = {
            "target_bpc": target,
            "scratch_final_bpc": interval(finals),
            "scratch_flops_to_target": interval([to_target(s["scratch"][name]["curve"], target) for s in per_seed]),
            "grown": sum(r["grown"] for r in records),
            "bitwise_equal": sum(r.get("bitwise_equal", False) for r in records),
            "max_abs_diff": max((r["max_abs_diff"] for r in records if r["grown"]), default=None),
            "converted": sum(r.get("to_keras", False) for r in records),
            "errors": sorted({r["error"] for r in records if "error" in r}),
        }
        if entry["converted"] == len(records):
            reached = [
                (to_target(r["curve"], target), to_target(s["scratch"][name]["curve"], target))
                for r, s in zip(records, per_seed)
            ]
            entry["grown_final_bpc"] = interval([r["curve"][-1][2] for r in records])
            entry["grown_flops_to_target"] = interval([g for g, _ in reached if g is not None])
            entry["grown_reached_target"] = sum(g is not None for g, _ in reached)
            entry["compute_ratio_grown_over_scratch"] = interval([g / s for g, s in reached if g is not None])
            entry["max_loss_rel_diff_after_to_keras"] = max(r["loss_rel_diff"] for r in records)
        summary[name] = entry
    return summary


def _plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    names = list(results["summary"])
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names):
        arms = {
            "small (start)": [s["small"]["curve"] for s in results["per_seed"]],
            f"scratch ({name} grown size)": [s["scratch"][name]["curve"] for s in results["per_seed"]],
        }
        if all("curve" in s["grown"][name] for s in results["per_seed"]):
            arms[f"grown ({name})"] = [s["grown"][name]["curve"] for s in results["per_seed"]]
        for label, curves in arms.items():
            flops = np.asarray([c[1] for c in curves[0]])
            bpc = np.asarray([[p[2] for p in c] for c in curves])
            spread = bpc.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(bpc.shape[1])
            axis.errorbar(flops, bpc.mean(axis=0), yerr=spread, label=label, capsize=2)
        axis.axhline(results["summary"][name]["target_bpc"], color="grey", linestyle=":", label="target")
        axis.set(title=f"grow {name}", xlabel="training FLOPs (6 × parameters × tokens)", ylabel="validation bpc")
    figure.suptitle(f"mean over {len(results['per_seed'])} seeds, error bars: sample sd (ddof=1)", fontsize=9)
    save_figure(figure, path, dpi=110, fontsize=7)


def report(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results["summary"].items():
        ratio = entry.get("compute_ratio_grown_over_scratch", {})
        rows.append(
            [
                name,
                f"{entry['grown']}/{len(results['seeds'])}",
                entry["bitwise_equal"],
                entry["max_abs_diff"],
                entry["converted"],
                f"{entry['target_bpc']:.3f}",
                f"{ratio['mean']:.3f}" if ratio.get("n") else "-",
                "; ".join(entry["errors"])[:90] or "-",
            ]
        )
    return table(
        ["growth", "grown", "bitwise", "max|diff|", "to-keras", "target bpc", "FLOPs grown/scratch", "toolkit message"],
        rows,
    )


def run(data: str | None, *, seeds: list[int], out: Path, quick: bool) -> dict[str, Any]:
    """The experiment; `data` names the corpus (``stdlib``; None: stdlib)."""
    config = QUICK if quick else FULL
    text, described = load_corpus(data, limit=config.corpus_limit)
    results = header("transformer", data=described, seeds=seeds, quick=quick)
    results["config"] = asdict(config)
    results["compute"] = "training FLOPs = 6 x parameters x tokens, summed over stages (attention scores left out)"
    results["optimizer"] = "Adam, constant learning rate; a fresh Adam state after growth"
    results["per_seed"] = []
    for seed in seeds:
        results["per_seed"].append(one_seed(seed, split(text), config))
        results["summary"] = summarise(results["per_seed"])
        publish(out, "transformer", results, lambda path: _plot(results, path), report)
    return results
