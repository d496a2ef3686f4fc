"""`transfer`: reuse layers of a digits 0–4 network for digits 5–9, through the toolkit.

The seed TF1 notebook's study, on the deep net of `training.models.transfer_net` (input
dropout 0.5; hidden 200-50-50-50, He init, BatchNorm momentum 0.9, ELU, dropout 0.5;
Adam 0.01; batch 100):

1. Pretrain on digits 0–4 for 25 epochs (one pretrained net per seed).
2. Export it with `surgery.export_keras`, and rebuild trainable Keras models from the ONNX with
   `surgery.to_keras(freeze=..., reinit=..., head=5)`:
   - ``reuse hidden1``: the seed's set-up — hidden1 (and its BatchNormalization) frozen,
     hidden2–4 re-initialised, a new 5-unit head;
   - ``reuse hidden1-2`` and ``reuse hidden1-4``: more pretrained layers frozen;
   - ``scratch``: the same net freshly initialised.
3. Train each on digits 5–9 (labels shifted to 0–4) with few samples per digit (swept, e.g.
   10, 25, 50, 100) for 100 epochs, measuring held-out 5–9 test accuracy every 10 epochs.

BatchNormalization layers are frozen and re-initialised together with the Dense layer they
follow: a frozen Keras BatchNormalization runs in inference mode (its moving statistics), which
is what the pretrained features were computed with.

Two more variants replay the seed's BatchNormalization bug: its TF1 code never ran the update
ops, so the moving statistics stayed at mean 0, variance 1 and every test-time evaluation
normalised with them. Here that is BatchNormalization momentum 1.0 (statistics never move), in
the pretrained net and in the 5–9 net: ``scratch, seed's BN`` and ``reuse hidden1, seed's BN``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import Mnist, digit_subset, per_class_sample
from training.runtime import compile_classifier, evaluate, header, mean_spread, publish, pyplot, strategy, table, train

HIDDEN = ("hidden1", "hidden2", "hidden3", "hidden4")
SEED_BN = "seed's BN"


@dataclass(frozen=True)
class Variant:
    #: How many bottom hidden layers are reused (frozen) from the pretrained net; 0 is scratch.
    reused: int
    #: BatchNormalization statistics stuck at mean 0 / variance 1, as in the seed's TF1 code.
    stuck_statistics: bool = False


VARIANTS = {
    "scratch": Variant(0),
    "reuse hidden1": Variant(1),
    "reuse hidden1-2": Variant(2),
    "reuse hidden1-4": Variant(4),
    f"scratch, {SEED_BN}": Variant(0, stuck_statistics=True),
    f"reuse hidden1, {SEED_BN}": Variant(1, stuck_statistics=True),
}


@dataclass(frozen=True)
class TransferConfig:
    pretrain_epochs: int = 25
    epochs: int = 100
    every: int = 10
    samples_per_digit: tuple[int, ...] = (10, 25, 50, 100)
    learning_rate: float = 0.01
    batch_size: int = 100
    pretrain_limit: int | None = None


FULL = TransferConfig()
QUICK = TransferConfig(pretrain_epochs=3, epochs=2, every=1, samples_per_digit=(10,), pretrain_limit=500)


def _layers(reused: int) -> tuple[list[str], list[str]]:
    """(frozen, reinitialised) layer names when the bottom `reused` hidden layers are kept."""
    frozen = [name for i, h in enumerate(HIDDEN, start=1) if i <= reused for name in (h, f"bn{i}")]
    reinit = [name for i, h in enumerate(HIDDEN, start=1) if i > reused for name in (h, f"bn{i}")]
    return frozen, reinit


def _momentum(stuck_statistics: bool) -> float:
    return 1.0 if stuck_statistics else 0.9


def pretrain(x, y, seed: int, config: TransferConfig, test, *, stuck_statistics: bool = False) -> tuple[Any, dict[str, float]]:
    """The digits 0–4 net for one seed, and its test loss/accuracy on digits 0–4."""
    import keras

    from training.models import transfer_net

    keras.utils.set_random_seed(seed)
    with strategy().scope():
        model = compile_classifier(transfer_net(classes=5, momentum=_momentum(stuck_statistics)), learning_rate=config.learning_rate)
    model.fit(x, y, epochs=config.pretrain_epochs, batch_size=config.batch_size, shuffle=True, verbose=0)
    loss, accuracy = evaluate(model, *test)
    return model, {"test_loss": loss, "test_accuracy": accuracy}


def student(variant: str, pretrained_onnx, seed: int, config: TransferConfig):
    """The model trained on digits 5–9 for `variant`, compiled; built through the toolkit when reusing."""
    import keras

    import surgery
    from training.models import transfer_net

    reused = VARIANTS[variant].reused
    keras.utils.set_random_seed(seed)
    with strategy().scope():
        if reused == 0:
            model = transfer_net(classes=5, momentum=_momentum(VARIANTS[variant].stuck_statistics))
        else:
            frozen, reinit = _layers(reused)
            model = surgery.to_keras(pretrained_onnx, freeze=frozen, reinit=reinit, head=5, seed=seed)
        return compile_classifier(model, learning_rate=config.learning_rate)


def run(data: Mnist, *, seeds: list[int], out: Path, quick: bool) -> dict[str, Any]:
    import surgery

    config = QUICK if quick else FULL
    started = time.perf_counter()
    x04, y04 = digit_subset(data.x_train, data.y_train, range(5))
    if config.pretrain_limit:
        x04, y04 = x04[: config.pretrain_limit], y04[: config.pretrain_limit]
    test04 = digit_subset(data.x_test, data.y_test, range(5))
    x59, y59 = digit_subset(data.x_train, data.y_train, range(5, 10))
    test59 = digit_subset(data.x_test, data.y_test, range(5, 10))

    runs: list[dict[str, Any]] = []
    pretrained_scores = []
    for seed in seeds:
        exported = {}
        for stuck in (False, True):
            pretrained, scores = pretrain(x04, y04, seed, config, test04, stuck_statistics=stuck)
            pretrained_scores.append({"seed": seed, "stuck_statistics": stuck, **scores})
            exported[stuck] = surgery.export_keras(pretrained)
        for samples in config.samples_per_digit:
            x, y = per_class_sample(x59, y59, samples, seed=seed)
            for variant, spec in VARIANTS.items():
                model = student(variant, exported[spec.stuck_statistics], seed, config)
                trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
                curve = train(
                    model, x, y, epochs=config.epochs, batch_size=config.batch_size, test=test59, every=config.every, seed=seed,
                    from_start=True,
                )
                runs.append(
                    {
                        "variant": variant,
                        "samples_per_digit": samples,
                        "train_samples": int(len(y)),
                        "seed": seed,
                        "trainable_parameters": trainable,
                        "curve": curve.to_json(),
                        "final_test_accuracy": curve.accuracy[-1],
                        "best_test_accuracy": max(curve.accuracy),
                    }
                )
                print(f"  seed {seed}, {samples:>3}/digit, {variant:<16} test accuracy {curve.accuracy[-1]:.4f}", flush=True)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for variant in VARIANTS:
        summary[variant] = {}
        for samples in config.samples_per_digit:
            finals = [r["final_test_accuracy"] for r in runs if r["variant"] == variant and r["samples_per_digit"] == samples]
            mean, std = mean_spread(finals)
            summary[variant][str(samples)] = {"mean": mean, "std": std, "min": min(finals), "max": max(finals), "n": len(finals)}

    results = header("transfer", data=data.describe(), seeds=seeds, quick=quick)
    results.update(
        {
            "config": vars(config) | {"samples_per_digit": list(config.samples_per_digit)},
            "variants": {
                name: {
                    "frozen": _layers(spec.reused)[0],
                    "reinit": _layers(spec.reused)[1] if spec.reused else [],
                    "through_toolkit": spec.reused > 0,
                    "batchnorm_momentum": _momentum(spec.stuck_statistics),
                }
                for name, spec in VARIANTS.items()
            },
            "pretrain_samples": int(len(y04)),
            "test_samples_5_to_9": int(len(test59[1])),
            "pretrained": pretrained_scores,
            "final_test_accuracy": summary,
            "runs": runs,
            "wall_s": time.perf_counter() - started,
        }
    )
    return publish(out, "transfer", results, lambda plot: _plot(results, plot), report)


def _plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    config = results["config"]
    sizes = config["samples_per_digit"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for variant in VARIANTS:
        stats = [results["final_test_accuracy"][variant][str(n)] for n in sizes]
        style = "--" if VARIANTS[variant].stuck_statistics else "-"
        axes[0].errorbar(sizes, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o", capsize=3, linestyle=style, label=variant)
        curves = [r["curve"] for r in results["runs"] if r["variant"] == variant and r["samples_per_digit"] == sizes[-1]]
        accuracy = np.array([c["test_accuracy"] for c in curves])
        axes[1].plot(curves[0]["epochs"], accuracy.mean(0), marker=".", linestyle=style, label=variant)
        axes[1].fill_between(curves[0]["epochs"], accuracy.mean(0) - accuracy.std(0), accuracy.mean(0) + accuracy.std(0), alpha=0.15)
    seeds = len(results["seeds"])
    axes[0].set(xscale="log", xticks=sizes, xticklabels=[str(n) for n in sizes], xlabel="training samples per digit (5–9)",
                ylabel=f"test accuracy after {config['epochs']} epochs", title=f"digits 5–9: mean ± std over {seeds} seed(s)")
    axes[1].set(xlabel="epoch", ylabel="held-out test accuracy", title=f"{sizes[-1]} samples per digit")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].legend(fontsize=7, loc="lower right")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def report(results: dict[str, Any]) -> str:
    sizes = results["config"]["samples_per_digit"]
    rows = []
    for variant in VARIANTS:
        cells = results["final_test_accuracy"][variant]
        rows.append([variant, *(f"{cells[str(n)]['mean']:.4f} ± {cells[str(n)]['std']:.4f}" for n in sizes)])
    pre = mean_spread([p["test_accuracy"] for p in results["pretrained"] if not p["stuck_statistics"]])
    stuck = mean_spread([p["test_accuracy"] for p in results["pretrained"] if p["stuck_statistics"]])
    return "\n".join(
        [
            f"transfer: pretrained on digits 0–4 ({results['pretrain_samples']} samples, {results['config']['pretrain_epochs']} epochs): "
            f"test accuracy {pre[0]:.4f} ± {pre[1]:.4f} ({stuck[0]:.4f} ± {stuck[1]:.4f} with the seed's stuck BN statistics)",
            f"digits 5–9 test accuracy after {results['config']['epochs']} epochs ({results['test_samples_5_to_9']} test samples), "
            f"mean ± std over {len(results['seeds'])} seed(s)",
            table(["variant", *(f"{n}/digit" for n in sizes)], rows),
        ]
    )
