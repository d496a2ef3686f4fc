"""`grow`: growing a network during training against training it at full width, at equal compute.

The model is ``Flatten → Dense(W, relu, 'dense_1') → Dense(10, softmax)``; the full width is
the last of `GrowConfig.widths` (128). Every widening goes through the toolkit (export →
`surgery.widen` with ``output-zero`` → `surgery.verify` on onnxruntime → `surgery.to_keras`)
and is checked bitwise equal on validation images.

Protocol, per seed (≥ 10 seeds for a full run):

1. Data: a validation split (`validation_per_class` per class) is carved from the training
   images; every choice (the learning rate, the growth trigger) reads validation numbers only.
   The test set is only reported.
2. Learning rate: each method's Adam peak rate is chosen from `learning_rates` by mean
   validation accuracy at one of its settings (`lr_settings`, each about 4 full-width epochs of
   compute or less) on separate seeds (`lr_seeds`), so that growth is not run at a rate tuned
   for scratch; every run uses a cosine-to-zero schedule fitted to its own length (`CosineToZero`).
3. Methods, each swept over budgets:
   - ``scratch``: full width from the start, `budgets` epochs each (the schedule fitted to each);
   - ``fixed, reset`` / ``fixed, carried``: widths grown in equal stages of `stage_epochs`
     epochs; at every widening Adam's state is either reset (a fresh optimizer, as before) or
     carried across it with `surgery.carry_optimizer_state` (moments widened with zeros for the
     new units, step counter kept);
   - ``fixed, restarted``: as ``fixed, carried``, but the cosine schedule restarts at every
     widening (peak to zero over each stage), so the new units arrive at the peak rate rather
     than in the schedule's tail;
   - ``trigger, carried``: `trigger_epochs` epochs in all; the width doubles when the validation
     loss's relative decrease per epoch, over the last `trigger_window` epochs of a stage, falls
     below `trigger_slope`.
4. Compute is counted in parameter-epochs (trainable parameters × epochs trained at that
   size); training FLOPs are estimated as 6 × parameters × training samples seen (forward and
   backward of the dense layers; evaluation excluded) and recorded beside them.
5. Reported: final test accuracy per method and budget (mean, sample sd with ddof=1, bootstrap
   95 % interval over seeds), and compute-to-target: for each target accuracy, the compute at
   which a method's seed-mean final test accuracy first reaches it along its budgets
   (interpolated in log-compute between neighbouring budgets), with a bootstrap 95 % interval
   (seeds resampled, the same resample for every method) and the ratio to scratch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import Mnist, limited, validation_split
from training.runtime import (
    ModelPool,
    evaluate,
    header,
    publish,
    pyplot,
    save_figure,
    strategy,
    summarise,
    table,
    test_inputs,
    widen_keras,
)

SCRATCH, FIXED_RESET, FIXED_CARRIED, TRIGGER = "scratch", "fixed, reset", "fixed, carried", "trigger, carried"
FIXED_RESTARTED = "fixed, restarted"
METHODS = (SCRATCH, FIXED_RESET, FIXED_CARRIED, FIXED_RESTARTED, TRIGGER)


@dataclass(frozen=True)
class GrowConfig:
    widths: tuple[int, ...] = (32, 64, 128)
    #: Scratch budgets in full-width epochs: a fine grid up to past the plateau (the first round
    #: saw scratch level off by epoch 10–12), so compute-to-target interpolates between neighbours.
    budgets: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24)
    stage_epochs: tuple[int, ...] = (1, 2, 4, 8)
    trigger_epochs: tuple[int, ...] = (4, 8, 16, 24)
    trigger_window: int = 2
    trigger_slope: float = 0.05
    learning_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    #: The setting each method's rate is tuned at, in `METHODS` order: scratch 4 epochs, fixed
    #: growth 2 epochs per stage (3.5 full-width epochs), the trigger 8 epochs.
    lr_settings: tuple[int, ...] = (4, 2, 2, 2, 8)
    lr_seeds: tuple[int, ...] = (1000, 1001)
    batch_size: int = 100
    validation_per_class: int = 50
    targets: tuple[float, ...] = (0.85, 0.87, 0.89, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95)
    train_limit: int | None = None


FULL = GrowConfig()
QUICK = GrowConfig(
    widths=(8, 16),
    budgets=(1, 2),
    stage_epochs=(1,),
    trigger_epochs=(2,),
    trigger_window=1,
    learning_rates=(1e-3,),
    lr_seeds=(1000,),
    lr_settings=(1, 1, 1, 1, 2),
    validation_per_class=10,
    targets=(0.1, 0.5),
    train_limit=600,
)


class _Trainer:
    """Runs one schedule: the pooled models per width, their schedules, the data."""

    def __init__(
        self,
        train,
        validation,
        test,
        config: GrowConfig,
        learning_rate: float,
        pool: ModelPool,
        schedules: dict[int, Any],
    ):
        self.x, self.y = train
        self.validation, self.test, self.config = validation, test, config
        self.learning_rate, self.pool = learning_rate, pool
        self.steps_per_epoch = math.ceil(len(self.y) / config.batch_size)
        #: The pooled model's schedule per width (shared like the pool).
        self.schedules = schedules

    def _compile(self, width: int):
        import keras

        from training.schedules import CosineToZero

        def compile_model(model):
            schedule = self.schedules.setdefault(width, CosineToZero())
            model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
            return model

        return compile_model

    def _load(self, width: int, model, *, total_steps: int, offset: int):
        with strategy().scope():
            pooled = self.pool.load(("mlp", width), model, self._compile(width))
        self.schedules[width].set(peak=self.learning_rate, total=total_steps, offset=offset)
        return pooled

    def run(
        self,
        seed: int,
        *,
        epochs: int,
        widths: tuple[int, ...],
        stage_epochs: int | None = None,
        carry: bool = False,
        trigger: bool = False,
        restart: bool = False,
    ) -> dict[str, Any]:
        """Train for `epochs`, growing through `widths` every `stage_epochs` epochs or on the trigger.

        The cosine schedule spans the whole run, or with `restart` each stage (peak to zero again
        after every widening; the optimizer's step counter must then be carried)."""
        import keras

        import surgery
        from training.models import mlp, parameter_count

        started = time.perf_counter()
        total_steps = epochs * self.steps_per_epoch
        if restart:
            total_steps = stage_epochs * self.steps_per_epoch
        keras.utils.set_random_seed(seed)
        model = self._load(widths[0], mlp(widths[0]), total_steps=total_steps, offset=0)
        stage, since_growth, steps = 0, 0, 0
        record: dict[str, Any] = {"compute": [0], "width": [widths[0]], "widenings": []}
        for name, value in zip(("val_loss", "val_accuracy"), evaluate(model, *self.validation)):
            record[name] = [value]
        record["test_accuracy"] = [evaluate(model, *self.test)[1]]
        for epoch in range(epochs):
            if stage + 1 < len(widths) and self._grow_now(
                record["val_loss"], epoch, since_growth, stage_epochs, trigger
            ):
                grown, surgery_record = widen_keras(
                    model,
                    {"dense_1": widths[stage + 1] - widths[stage]},
                    init="output-zero",
                    seed=seed * 100 + stage,
                    verify_inputs=test_inputs(self.validation[0]),
                )
                # The schedule reads the optimizer's step counter: a reset one restarts at 0, a carried one
                # does not; a restarted schedule starts again at this widening.
                offset = -steps if restart else 0 if carry else steps
                new = self._load(widths[stage + 1], grown, total_steps=total_steps, offset=offset)
                if carry:
                    surgery.carry_optimizer_state(model, new)
                model, stage, since_growth = new, stage + 1, 0
                rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))  # the next step's
                record["widenings"].append(
                    {"epoch": epoch, "to": widths[stage], "learning_rate": rate, **surgery_record.to_json()}
                )
            model.fit(self.x, self.y, epochs=1, batch_size=self.config.batch_size, shuffle=True, verbose=0)
            steps += self.steps_per_epoch
            since_growth += 1
            record["compute"].append(record["compute"][-1] + parameter_count(model))
            record["width"].append(widths[stage])
            loss, accuracy = evaluate(model, *self.validation)
            record["val_loss"].append(loss)
            record["val_accuracy"].append(accuracy)
            record["test_accuracy"].append(evaluate(model, *self.test)[1])
        record.update(
            {
                "epochs": epochs,
                "param_epochs": record["compute"][-1],
                "flops": 6 * record["compute"][-1] * len(self.y),
                "final_test_accuracy": record["test_accuracy"][-1],
                "final_val_accuracy": record["val_accuracy"][-1],
                "final_width": widths[stage],
                "wall_s": time.perf_counter() - started,
            }
        )
        return record

    def _grow_now(
        self, val_loss: list[float], epoch: int, since_growth: int, stage_epochs: int | None, trigger: bool
    ) -> bool:
        """Fixed: at every multiple of `stage_epochs`. Trigger: the validation loss's relative
        decrease per epoch over the last `trigger_window` epochs of this stage is below `trigger_slope`."""
        if not trigger:
            return epoch > 0 and epoch % stage_epochs == 0
        window = self.config.trigger_window
        if since_growth < window:
            return False
        decrease = (val_loss[-1 - window] - val_loss[-1]) / (window * val_loss[-1])
        return decrease < self.config.trigger_slope


def _choose_learning_rates(trainer_for, config: GrowConfig) -> dict[str, Any]:
    """Per method: the mean validation accuracy of each candidate rate at its tuning setting; the best."""
    per_method = {}
    for method, setting in zip(METHODS, config.lr_settings, strict=True):
        scores = {
            str(rate): float(
                np.mean(
                    [
                        _run_method(trainer_for(rate), seed, config, method, setting)["final_val_accuracy"]
                        for seed in config.lr_seeds
                    ]
                )
            )
            for rate in config.learning_rates
        }
        best = max(config.learning_rates, key=lambda rate: scores[str(rate)])
        per_method[method] = {"setting": setting, "validation_accuracy": scores, "chosen": best}
    return {"per_method": per_method, "seeds": list(config.lr_seeds)}


def _settings(config: GrowConfig) -> dict[str, tuple[int, ...]]:
    return {
        SCRATCH: config.budgets,
        FIXED_RESET: config.stage_epochs,
        FIXED_CARRIED: config.stage_epochs,
        FIXED_RESTARTED: config.stage_epochs,
        TRIGGER: config.trigger_epochs,
    }


def _run_method(trainer: _Trainer, seed: int, config: GrowConfig, method: str, setting: int) -> dict[str, Any]:
    """One run of `method` at `setting` (scratch: epochs; fixed: epochs per stage; trigger: epochs)."""
    widths = config.widths
    if method == SCRATCH:
        return trainer.run(seed, epochs=setting, widths=widths[-1:])
    if method == TRIGGER:
        return trainer.run(seed, epochs=setting, widths=widths, carry=True, trigger=True)
    return trainer.run(
        seed,
        epochs=setting * len(widths),
        widths=widths,
        stage_epochs=setting,
        carry=method in (FIXED_CARRIED, FIXED_RESTARTED),
        restart=method == FIXED_RESTARTED,
    )


def run_seed(trainers: dict[str, _Trainer], seed: int, config: GrowConfig) -> dict[str, dict[str, Any]]:
    """Every method at every setting for one seed, each at its own rate: method → setting → run record."""
    return {
        method: {str(s): _run_method(trainers[method], seed, config, method, s) for s in settings}
        for method, settings in _settings(config).items()
    }


def _mean_curve(per_seed: list[dict], method: str, setting: str, indices: np.ndarray) -> tuple[float, float]:
    """(mean compute, mean final test accuracy) of one method and setting over the seeds picked."""
    chosen = [per_seed[i]["runs"][method][setting] for i in indices]
    return float(np.mean([r["param_epochs"] for r in chosen])), float(
        np.mean([r["final_test_accuracy"] for r in chosen])
    )


def _compute_to(
    per_seed: list[dict], method: str, settings: tuple[int, ...], target: float, indices: np.ndarray
) -> float:
    """The compute at which a method's seed-mean final test accuracy first reaches `target`.

    Along the method's settings in order of compute: interpolated linearly in log-compute between
    the last setting below the target and the first at or above it; the first setting's compute
    when that already reaches it (an upper bound, see `_reached_at_first`); NaN when none does.
    """
    previous = None
    for compute, accuracy in sorted(_mean_curve(per_seed, method, str(s), indices) for s in settings):
        if accuracy >= target:
            if previous is None:
                return compute
            low_compute, low_accuracy = previous
            share = (target - low_accuracy) / (accuracy - low_accuracy)
            return float(math.exp(math.log(low_compute) + share * math.log(compute / low_compute)))
        previous = (compute, accuracy)
    return math.nan


def _reached_at_first(per_seed: list[dict], method: str, settings: tuple[int, ...], target: float) -> bool:
    """Whether the method's cheapest setting already reaches `target` (its compute-to-target is then only a bound)."""
    everyone = np.arange(len(per_seed))
    return min(_mean_curve(per_seed, method, str(s), everyone) for s in settings)[1] >= target


def compute_to_target(per_seed: list[dict], config: GrowConfig, *, resamples: int = 1000) -> dict[str, Any]:
    """Per target and method: compute to reach it (point, bootstrap 95 % CI, share of resamples that
    reach it) and its ratio to scratch's (paired: the same seed resample for every method)."""
    settings = _settings(config)
    everyone = np.arange(len(per_seed))
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(per_seed), size=len(per_seed)) for _ in range(resamples)]
    out: dict[str, Any] = {}
    for target in config.targets:
        row: dict[str, Any] = {}
        scratch = np.array([_compute_to(per_seed, SCRATCH, settings[SCRATCH], target, p) for p in picks])
        for method in METHODS:
            point = _compute_to(per_seed, method, settings[method], target, everyone)
            samples = np.array([_compute_to(per_seed, method, settings[method], target, p) for p in picks])
            ratios = samples / scratch
            finite, finite_ratio = samples[np.isfinite(samples)], ratios[np.isfinite(ratios)]
            row[method] = {
                "param_epochs": None if math.isnan(point) else point,
                "upper_bound": _reached_at_first(per_seed, method, settings[method], target),
                "ci95": np.percentile(finite, [2.5, 97.5]).tolist() if finite.size else None,
                "reached_share": float(np.isfinite(samples).mean()),
                "ratio_to_scratch": None
                if math.isnan(point) or math.isnan(row.get(SCRATCH, {}).get("param_epochs") or math.nan)
                else point / row[SCRATCH]["param_epochs"],
                "ratio_ci95": np.percentile(finite_ratio, [2.5, 97.5]).tolist() if finite_ratio.size else None,
            }
        out[str(target)] = row
    return out


def run(data: Mnist, *, seeds: list[int], out: Path, quick: bool) -> dict[str, Any]:
    config = QUICK if quick else FULL
    started = time.perf_counter()
    train, validation = validation_split(
        *limited(data.x_train, data.y_train, config.train_limit), config.validation_per_class
    )
    test = (data.x_test, data.y_test)
    pool, schedules = ModelPool(), {}

    def trainer_for(rate: float) -> _Trainer:
        return _Trainer(train, validation, test, config, rate, pool, schedules)

    learning_rate = _choose_learning_rates(trainer_for, config)
    trainers = {method: trainer_for(learning_rate["per_method"][method]["chosen"]) for method in METHODS}
    split = {"train": int(len(train[1])), "validation": int(len(validation[1])), "test": int(len(test[1]))}
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        per_seed.append({"seed": seed, "runs": run_seed(trainers, seed, config)})
        print(f"  seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
        # Published after every seed: a run cut short still leaves the seeds it finished.
        results = _publish(out, data, quick, config, per_seed, split, learning_rate, started)
    return results


def _publish(
    out: Path,
    data: Mnist,
    quick: bool,
    config: GrowConfig,
    per_seed: list[dict[str, Any]],
    split: dict[str, int],
    learning_rate: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Summarise the seeds done so far; write results.json and the plot; print the tables."""
    from training.models import mlp, parameter_count

    settings = _settings(config)
    summary = {
        method: {
            str(s): {
                "param_epochs": float(np.mean([p["runs"][method][str(s)]["param_epochs"] for p in per_seed])),
                "flops": float(np.mean([p["runs"][method][str(s)]["flops"] for p in per_seed])),
                "epochs": per_seed[0]["runs"][method][str(s)]["epochs"],
                "final_width": summarise([p["runs"][method][str(s)]["final_width"] for p in per_seed]),
                "test_accuracy": summarise([p["runs"][method][str(s)]["final_test_accuracy"] for p in per_seed]),
                "val_accuracy": summarise([p["runs"][method][str(s)]["final_val_accuracy"] for p in per_seed]),
            }
            for s in settings[method]
        }
        for method in METHODS
    }
    widenings = [w for p in per_seed for m in METHODS[1:] for r in p["runs"][m].values() for w in r["widenings"]]
    results = header("grow", data=data.describe(), seeds=[p["seed"] for p in per_seed], quick=quick)
    results.update(
        {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
            "split": split,
            "compute_unit": "parameter-epochs: trainable parameters × epochs trained at that size; "
            "flops = 6 × parameters × training samples seen (estimate, evaluation excluded)",
            "full_width_parameters": parameter_count(mlp(config.widths[-1])),
            "learning_rate": learning_rate,
            "widenings": len(widenings),
            "bitwise_equal_after_every_widening": bool(widenings) and all(w["bitwise_equal"] for w in widenings),
            "summary": summary,
            "compute_to_target": compute_to_target(per_seed, config),
            "per_seed": per_seed,
            "wall_s": time.perf_counter() - started,
        }
    )
    return publish(out, "grow", results, lambda plot: _plot(results, plot), report)


def _plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    full = results["full_width_parameters"]
    for method in METHODS:
        cells = results["summary"][method]
        compute = np.array([c["param_epochs"] for c in cells.values()]) / full
        means = np.array([c["test_accuracy"]["mean"] for c in cells.values()])
        errors = np.abs(np.array([c["test_accuracy"]["ci95"] for c in cells.values()]).T - means)
        axes[0].errorbar(compute, means, yerr=errors, marker="o", capsize=3, label=method)
    axes[0].set(
        xscale="log",
        xlabel="compute (full-width epochs = parameter-epochs / full-width parameters)",
        ylabel="final test accuracy",
        title=f"accuracy at each budget: mean, bootstrap 95 % CI ({len(results['seeds'])} seeds)",
    )
    targets = [float(t) for t in results["compute_to_target"]]
    for method in METHODS:
        rows = [results["compute_to_target"][str(t)][method] for t in results["config"]["targets"]]
        point = np.array([r["param_epochs"] if r["param_epochs"] is not None else np.nan for r in rows]) / full
        low = np.array([r["ci95"][0] if r["ci95"] else np.nan for r in rows]) / full
        high = np.array([r["ci95"][1] if r["ci95"] else np.nan for r in rows]) / full
        axes[1].plot(targets, point, marker="o", label=method)
        axes[1].fill_between(targets, low, high, alpha=0.12)
    if any(r[m]["param_epochs"] for r in results["compute_to_target"].values() for m in METHODS):
        axes[1].set_yscale("log")
    axes[1].set(
        xlabel="target test accuracy",
        ylabel="compute to reach it (full-width epochs)",
        title="compute to target (seed-mean; bootstrap 95 % CI)",
    )
    longest = {m: max(results["summary"][m], key=int) for m in METHODS}
    for method in METHODS:
        curves = [p["runs"][method][longest[method]] for p in results["per_seed"]]
        compute = np.mean([c["compute"] for c in curves], axis=0) / full
        axes[2].plot(
            compute,
            np.mean([c["test_accuracy"] for c in curves], axis=0),
            marker=".",
            label=f"{method} ({longest[method]})",
        )
    axes[2].set(
        xlabel="compute so far (full-width epochs)",
        ylabel="test accuracy (seed mean)",
        title="the longest run of each method",
        ylim=(
            max(0.0, min(a["test_accuracy"]["mean"] for c in results["summary"].values() for a in c.values()) - 0.05),
            None,
        ),
    )
    save_figure(figure, path)


def report(results: dict[str, Any]) -> str:
    """The tables the experiment prints."""
    full = results["full_width_parameters"]
    rows = []
    for method in METHODS:
        for setting, cell in results["summary"][method].items():
            acc = cell["test_accuracy"]
            rows.append(
                [
                    method,
                    setting,
                    cell["epochs"],
                    f"{cell['param_epochs'] / full:.2f}",
                    f"{acc['mean']:.4f} ± {acc['sd']:.4f} [{acc['ci95'][0]:.4f}, {acc['ci95'][1]:.4f}]",
                    f"{cell['final_width']['mean']:.0f}",
                ]
            )
    lines = [
        f"grow: widths {' → '.join(map(str, results['config']['widths']))}, {len(results['seeds'])} seed(s), "
        f"train/validation/test {'/'.join(str(results['split'][k]) for k in ('train', 'validation', 'test'))}, "
        "Adam peak rate chosen on validation per method ("
        + ", ".join(f"{m} {c['chosen']}" for m, c in results["learning_rate"]["per_method"].items())
        + "), cosine to zero per budget",
        table(
            [
                "method",
                "setting",
                "epochs",
                "compute (full-width epochs)",
                "test acc mean ± sd [95 % CI]",
                "final width",
            ],
            rows,
        ),
        "",
        "compute to target (full-width epochs; where the seed-mean final test accuracy crosses it, "
        "interpolated in log-compute; ≤: the cheapest setting already reaches it; bootstrap 95 % CI; ratio to scratch)",
    ]
    rows = []
    for target, row in results["compute_to_target"].items():
        cells = []
        for method in METHODS:
            r = row[method]
            if r["param_epochs"] is None:
                cells.append(f"not reached ({r['reached_share']:.0%})")
                continue
            ratio = f" ×{r['ratio_to_scratch']:.2f}" if r["ratio_to_scratch"] is not None else ""
            ci = f" [{r['ci95'][0] / full:.1f}, {r['ci95'][1] / full:.1f}]" if r["ci95"] else ""
            bound = "≤ " if r.get("upper_bound") else ""
            cells.append(f"{bound}{r['param_epochs'] / full:.2f}{ci}{ratio}")
        rows.append([target, *cells])
    lines.append(table(["target", *METHODS], rows))
    lines.append(
        f"\nonnxruntime outputs bitwise equal after all {results['widenings']} widenings: "
        f"{'yes' if results['bitwise_equal_after_every_widening'] else 'NO'}"
    )
    return "\n".join(lines)
