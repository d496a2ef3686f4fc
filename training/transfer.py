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

How the reused layer is frozen is itself a variable (``freeze``):

- ``keras`` (``reuse hidden1``): `surgery.to_keras(freeze=["hidden1", "bn1"])`. A frozen
  Keras BatchNormalization runs in inference mode (its moving statistics), which is what the
  pretrained features were computed with.
- ``tf1`` (``reuse hidden1, TF1 freeze``): what a TF1 program does when it freezes a layer by
  leaving it out of the optimizer's ``var_list``: hidden1's kernel and bias and bn1's scale
  and offset are not trained, but bn1 still normalises with each batch's statistics in training
  and its moving statistics keep updating (momentum 0.9) on the new digits. Built as
  `surgery.to_keras(freeze=["hidden1"])` with bn1's gamma and beta made non-trainable.
- ``none`` (``reuse hidden1, fine-tune all``): the pretrained hidden1 and bn1 as a starting
  point, everything trained.

Two more variants replay the seed's BatchNormalization bug: its TF1 code never ran the update
ops, so the moving statistics stayed at mean 0, variance 1 and every test-time evaluation
normalised with them. Here that is BatchNormalization momentum 1.0 (statistics never move), in
the pretrained net and in the 5–9 net: ``scratch, seed's BN`` and ``reuse hidden1, seed's BN``.

``reuse hidden1, small pretraining`` is the seed's set-up starting from a net pretrained on a
per-class sample of 2,000 images for 25 epochs (as the bundled run pretrains) instead of on all
the 0–4 images: on Fashion-MNIST it measures the pretraining-size confound on the same data.

A run's score is the mean of its last `last_k` test readings (every `every` epochs), not the
final reading alone: the stuck-BN curves swing by several points between readings.

``--data fashion-mnist`` runs the same study at full size on Fashion-MNIST (classes 0–4 of the
60,000 training images to pretrain, 10/25/50/100 per class of 5–9 to transfer), with the
variants in `FASHION_VARIANTS` and `FASHION` settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import FASHION as FASHION_KIND
from training.data import Mnist, digit_subset, limited, per_class_sample
from training.runtime import (
    ModelPool,
    compile_classifier,
    evaluate,
    header,
    mean_spread,
    publish,
    pyplot,
    save_figure,
    strategy,
    summarise,
    table,
    train,
)

HIDDEN = ("hidden1", "hidden2", "hidden3", "hidden4")
SEED_BN = "seed's BN"


@dataclass(frozen=True)
class Variant:
    #: How many bottom hidden layers are reused from the pretrained net; 0 is scratch.
    reused: int
    #: BatchNormalization statistics stuck at mean 0 / variance 1, as in the seed's TF1 code.
    stuck_statistics: bool = False
    #: How the reused layers are frozen: "keras", "tf1" or "none" (see the module docstring).
    freeze: str = "keras"
    #: Pretrained on a per-class sample of `TransferConfig.small_pretrain_images` images of classes
    #: 0–4 rather than all of them: the pretraining-size confound, measured on the same data.
    small_pretraining: bool = False

    def pretraining(self) -> tuple[bool, bool]:
        """Which pretrained net the variant starts from: (stuck statistics, small pretraining)."""
        return self.stuck_statistics, self.small_pretraining


VARIANTS = {
    "scratch": Variant(0),
    "reuse hidden1": Variant(1),
    "reuse hidden1, TF1 freeze": Variant(1, freeze="tf1"),
    "reuse hidden1, fine-tune all": Variant(1, freeze="none"),
    "reuse hidden1-2": Variant(2),
    "reuse hidden1-4": Variant(4),
    f"scratch, {SEED_BN}": Variant(0, stuck_statistics=True),
    f"reuse hidden1, {SEED_BN}": Variant(1, stuck_statistics=True),
    "reuse hidden1, small pretraining": Variant(1, small_pretraining=True),
}
#: The full-size Fashion-MNIST run: the freeze comparison (BatchNormalization as Keras has it), and
#: the seed's set-up pretrained on 2,000 images as the bundled run is, against all 30,000.
FASHION_VARIANTS = (
    "scratch",
    "reuse hidden1",
    "reuse hidden1, TF1 freeze",
    "reuse hidden1, fine-tune all",
    "reuse hidden1, small pretraining",
)


@dataclass(frozen=True)
class TransferConfig:
    pretrain_epochs: int = 25
    #: The seed's 100 epochs and sample sizes.
    epochs: int = 100
    every: int = 10
    samples_per_digit: tuple[int, ...] = (10, 25, 50, 100)
    learning_rate: float = 0.01
    batch_size: int = 100
    pretrain_limit: int | None = None
    #: ``small pretraining``: as the bundled run pretrains (~2,000 digits of 0–4, 25 epochs).
    small_pretrain_images: int = 2000
    small_pretrain_epochs: int = 25
    #: A run's score: the mean of its last `last_k` test readings (epochs 80, 90 and 100).
    last_k: int = 3
    variants: tuple[str, ...] = tuple(
        name for name in VARIANTS if not name.startswith("reuse hidden1-") and not VARIANTS[name].small_pretraining
    )


FULL = TransferConfig()
#: Full-size Fashion-MNIST: 30,000 pretraining images, so 5 epochs (1,500 steps) are three times
#: the seed's 25 epochs over ~2,000 digits (500 steps).
FASHION = TransferConfig(pretrain_epochs=5, variants=FASHION_VARIANTS)
QUICK = TransferConfig(
    pretrain_epochs=3,
    epochs=2,
    every=1,
    samples_per_digit=(10,),
    pretrain_limit=500,
    last_k=2,
    small_pretrain_images=100,
    small_pretrain_epochs=3,
    variants=(*FULL.variants, "reuse hidden1, small pretraining"),
)


def _layers(variant: Variant) -> tuple[list[str], list[str]]:
    """(layers frozen through `to_keras`, layers reinitialised) for a reusing variant."""
    kept = [(h, f"bn{i}") for i, h in enumerate(HIDDEN, start=1) if i <= variant.reused]
    reinit = [name for i, h in enumerate(HIDDEN, start=1) if i > variant.reused for name in (h, f"bn{i}")]
    frozen = {"keras": [n for pair in kept for n in pair], "tf1": [h for h, _ in kept], "none": []}[variant.freeze]
    return frozen, reinit


def _tf1_freeze(model, variant: Variant) -> None:
    """Stop training the kept BatchNormalizations' scale and offset, leaving the layers trainable
    (so they normalise with batch statistics in training and update their moving statistics)."""
    for index in range(1, variant.reused + 1):
        layer = model.get_layer(f"bn{index}")
        layer.gamma.trainable = False
        layer.beta.trainable = False


def _momentum(stuck_statistics: bool) -> float:
    return 1.0 if stuck_statistics else 0.9


def pretrain(
    x,
    y,
    seed: int,
    config: TransferConfig,
    test,
    pool: ModelPool,
    *,
    stuck_statistics: bool = False,
    epochs: int | None = None,
) -> tuple[Any, dict[str, float]]:
    """The classes 0–4 net for one seed, and its test loss/accuracy on classes 0–4."""
    import keras

    from training.models import transfer_net

    keras.utils.set_random_seed(seed)
    with strategy().scope():
        model = pool.load(
            ("pretrain", stuck_statistics),
            transfer_net(classes=5, momentum=_momentum(stuck_statistics)),
            lambda m: compile_classifier(m, learning_rate=config.learning_rate),
        )
    model.fit(x, y, epochs=epochs or config.pretrain_epochs, batch_size=config.batch_size, shuffle=True, verbose=0)
    loss, accuracy = evaluate(model, *test)
    return model, {"test_loss": loss, "test_accuracy": accuracy}


def student(variant: str, pretrained_onnx, seed: int, config: TransferConfig, pool: ModelPool):
    """The model trained on classes 5–9 for `variant`, compiled; built through the toolkit when reusing.

    Its weights are loaded into the pool's compiled model for the variant (see `ModelPool`).
    """
    import keras

    import surgery
    from training.models import transfer_net

    spec = VARIANTS[variant]
    keras.utils.set_random_seed(seed)
    with strategy().scope():
        if spec.reused == 0:
            model = transfer_net(classes=5, momentum=_momentum(spec.stuck_statistics))
        else:
            frozen, reinit = _layers(spec)
            model = surgery.to_keras(pretrained_onnx, freeze=frozen, reinit=reinit, head=5, seed=seed)
            if spec.freeze == "tf1":
                _tf1_freeze(model, spec)
        return pool.load(variant, model, lambda m: compile_classifier(m, learning_rate=config.learning_rate))


def run(data: Mnist, *, seeds: list[int], out: Path, quick: bool) -> dict[str, Any]:
    import surgery

    config = QUICK if quick else FASHION if data.kind == FASHION_KIND else FULL
    started = time.perf_counter()
    x04, y04 = limited(*digit_subset(data.x_train, data.y_train, range(5)), config.pretrain_limit)
    test04 = digit_subset(data.x_test, data.y_test, range(5))
    x59, y59 = digit_subset(data.x_train, data.y_train, range(5, 10))
    test59 = digit_subset(data.x_test, data.y_test, range(5, 10))

    runs: list[dict[str, Any]] = []
    pool = ModelPool()
    pretrained_scores = []
    for seed in seeds:
        exported = {}
        for stuck, small in sorted({VARIANTS[v].pretraining() for v in config.variants}):
            xs, ys = per_class_sample(x04, y04, config.small_pretrain_images // 5, seed=seed) if small else (x04, y04)
            epochs = config.small_pretrain_epochs if small else None
            pretrained, scores = pretrain(xs, ys, seed, config, test04, pool, stuck_statistics=stuck, epochs=epochs)
            pretrained_scores.append(
                {
                    "seed": seed,
                    "stuck_statistics": stuck,
                    "images": int(len(ys)),
                    "epochs": epochs or config.pretrain_epochs,
                    **scores,
                }
            )
            exported[stuck, small] = surgery.export_keras(pretrained)
        for samples in config.samples_per_digit:
            x, y = per_class_sample(x59, y59, samples, seed=seed)
            for variant in config.variants:
                spec = VARIANTS[variant]
                model = student(variant, exported[spec.pretraining()], seed, config, pool)
                trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
                curve = train(
                    model,
                    x,
                    y,
                    epochs=config.epochs,
                    batch_size=config.batch_size,
                    test=test59,
                    every=config.every,
                    seed=seed,
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
                        "last_k_test_accuracy": float(np.mean(curve.accuracy[-config.last_k :])),
                        "best_test_accuracy": max(curve.accuracy),
                    }
                )
                print(
                    f"  seed {seed}, {samples:>3}/digit, {variant:<28} test accuracy {curve.accuracy[-1]:.4f}",
                    flush=True,
                )
        # Published after every seed: a run cut short still leaves the seeds it finished.
        results = _publish(
            out, data, quick, config, runs, pretrained_scores, int(len(y04)), int(len(test59[1])), started
        )
    return results


def _publish(
    out: Path,
    data: Mnist,
    quick: bool,
    config: TransferConfig,
    runs: list[dict[str, Any]],
    pretrained_scores: list[dict[str, Any]],
    pretrain_samples: int,
    test_samples: int,
    started: float,
) -> dict[str, Any]:
    """Summarise the seeds done so far; write results.json and the plot; print the table."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in config.variants:
        summary[variant] = {}
        for samples in config.samples_per_digit:
            scores = [
                r["last_k_test_accuracy"] for r in runs if r["variant"] == variant and r["samples_per_digit"] == samples
            ]
            summary[variant][str(samples)] = summarise(scores)

    results = header("transfer", data=data.describe(), seeds=sorted({r["seed"] for r in runs}), quick=quick)
    results.update(
        {
            "config": vars(config)
            | {"samples_per_digit": list(config.samples_per_digit), "variants": list(config.variants)},
            "score": f"mean of the last {config.last_k} test readings (every {config.every} epochs) per run",
            "variants": {
                name: {
                    "frozen": _layers(VARIANTS[name])[0] if VARIANTS[name].reused else [],
                    "reinit": _layers(VARIANTS[name])[1] if VARIANTS[name].reused else [],
                    "freeze": VARIANTS[name].freeze if VARIANTS[name].reused else None,
                    "through_toolkit": VARIANTS[name].reused > 0,
                    "batchnorm_momentum": _momentum(VARIANTS[name].stuck_statistics),
                }
                for name in config.variants
            },
            "pretrain_samples": pretrain_samples,
            "test_samples_5_to_9": test_samples,
            "pretrained": pretrained_scores,
            "test_accuracy": summary,
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
    for variant in config["variants"]:
        stats = [results["test_accuracy"][variant][str(n)] for n in sizes]
        style = "--" if VARIANTS[variant].stuck_statistics else "-"
        means = np.array([s["mean"] for s in stats])
        errors = np.abs(np.array([s["ci95"] for s in stats]).T - means)
        axes[0].errorbar(sizes, means, yerr=errors, marker="o", capsize=3, linestyle=style, label=variant)
        curves = [
            r["curve"] for r in results["runs"] if r["variant"] == variant and r["samples_per_digit"] == sizes[-1]
        ]
        accuracy = np.array([c["test_accuracy"] for c in curves])
        axes[1].plot(curves[0]["epochs"], accuracy.mean(0), marker=".", linestyle=style, label=variant)
        spread = accuracy.std(0, ddof=1) if len(accuracy) > 1 else np.zeros(accuracy.shape[1])
        axes[1].fill_between(curves[0]["epochs"], accuracy.mean(0) - spread, accuracy.mean(0) + spread, alpha=0.15)
    seeds = len(results["seeds"])
    classes = "classes" if results["data"]["kind"] == FASHION_KIND else "digits"
    axes[0].set(
        xscale="log",
        xticks=sizes,
        xticklabels=[str(n) for n in sizes],
        xlabel=f"training samples per class ({classes} 5–9)",
        ylabel=f"test accuracy, mean of last {config['last_k']} readings",
        title=f"{classes} 5–9: mean and bootstrap 95 % CI over {seeds} seed(s)",
    )
    axes[1].set(xlabel="epoch", ylabel="held-out test accuracy", title=f"{sizes[-1]} per class: mean ± sample sd")
    save_figure(figure, path, fontsize=7, loc="lower right")


def report(results: dict[str, Any]) -> str:
    sizes = results["config"]["samples_per_digit"]
    rows = []
    for variant in results["config"]["variants"]:
        cells = results["test_accuracy"][variant]
        rows.append(
            [
                variant,
                *(
                    f"{cells[str(n)]['mean']:.4f} ± {cells[str(n)]['sd']:.4f} "
                    f"[{cells[str(n)]['ci95'][0]:.3f}, {cells[str(n)]['ci95'][1]:.3f}]"
                    for n in sizes
                ),
            ]
        )
    full = results["pretrain_samples"]
    pre = mean_spread(
        [
            p["test_accuracy"]
            for p in results["pretrained"]
            if not p["stuck_statistics"] and p.get("images", full) == full
        ]
    )
    others = [
        (label, [p["test_accuracy"] for p in results["pretrained"] if test(p)])
        for label, test in (
            ("with the seed's stuck BN statistics", lambda p: p["stuck_statistics"]),
            ("small pretraining", lambda p: p.get("images", full) != full),
        )
    ]
    stuck_text = "".join(
        f" ({mean_spread(scores)[0]:.4f} ± {mean_spread(scores)[1]:.4f} {label})" for label, scores in others if scores
    )
    return "\n".join(
        [
            f"transfer: pretrained on classes 0–4 ({results['pretrain_samples']} samples, "
            f"{results['config']['pretrain_epochs']} epochs): "
            f"test accuracy {pre[0]:.4f} ± {pre[1]:.4f}{stuck_text}",
            f"classes 5–9 test accuracy, {results['score']} of {results['config']['epochs']} epochs "
            f"({results['test_samples_5_to_9']} test samples): mean ± sample sd [bootstrap 95 % CI] "
            f"over {len(results['seeds'])} seed(s)",
            table(["variant", *(f"{n}/class" for n in sizes)], rows),
        ]
    )
