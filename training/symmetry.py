"""`symmetry`: which all-zero initialisations still learn (the seed's weight-symmetry study).

The 2-layer model (one hidden Dense layer, then the softmax output) and the 3-layer model (two
hidden layers) are trained for 10 epochs with ``Constant(0)`` kernels in every combination of
layers (biases start at zero everywhere, Keras's default), for ReLU and sigmoid hidden units.
After training each model is exported and the toolkit's neuron-symmetry check
(`surgery.symmetry.symmetric_groups`) counts, per hidden layer, the units that still compute
the same function as another unit (same fan-in, bias and fan-out) — the units that never
differentiated.

A run "learns" when its test accuracy reaches 0.8; it learns "partly" above 0.2 (chance is
0.1). Thresholds, not verdicts: the accuracies are in the table.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import Mnist, limited
from training.runtime import compile_classifier, evaluate, header, publish, pyplot, save_figure, strategy, table, train

LEARNS, PARTLY = 0.8, 0.2


@dataclass(frozen=True)
class SymmetryConfig:
    epochs: int = 10
    units: int = 64
    learning_rate: float = 0.001
    batch_size: int = 100
    activations: tuple[str, ...] = ("relu", "sigmoid")
    depths: tuple[int, ...] = (1, 2)  # hidden layers: the 2- and 3-layer models
    train_limit: int | None = None


FULL = SymmetryConfig()
QUICK = SymmetryConfig(epochs=2, units=8, learning_rate=0.01, depths=(1,), train_limit=1000)


def zero_sets(hidden: int) -> list[tuple[str, ...]]:
    """Every subset of the model's Dense layers, smallest first."""
    layers = [f"hidden{i}" for i in range(1, hidden + 1)] + ["output"]
    return [combo for size in range(len(layers) + 1) for combo in itertools.combinations(layers, size)]


def symmetric_units(exported, layer: str, width: int) -> dict[str, Any]:
    """The toolkit's symmetry groups of `layer` and what they mean: distinct units left."""
    from surgery.symmetry import symmetric_groups

    groups = [sorted(group) for group in symmetric_groups(exported, layer)]
    shared = [group for group in groups if len(group) > 1]
    return {
        "groups": shared,
        "symmetric_units": sum(len(group) for group in shared),
        "distinct_units": width - sum(len(group) - 1 for group in shared),
        "largest_group": max((len(group) for group in shared), default=1),
    }


def run_one(
    data: Mnist, x, y, *, hidden: int, zero: tuple[str, ...], activation: str, seed: int, config: SymmetryConfig
) -> dict[str, Any]:
    import keras

    import surgery
    from training.models import symmetry_net

    keras.utils.set_random_seed(seed)
    with strategy().scope():
        model = compile_classifier(
            symmetry_net(hidden, zero, units=config.units, activation=activation), learning_rate=config.learning_rate
        )
    test = (data.x_test, data.y_test)
    before = evaluate(model, *test)
    curve = train(model, x, y, epochs=config.epochs, batch_size=config.batch_size, test=test, seed=seed)
    exported = surgery.export_keras(model)
    layers = {f"hidden{i}": symmetric_units(exported, f"hidden{i}", config.units) for i in range(1, hidden + 1)}
    for name, layer in layers.items():
        # Units whose incoming weights are still all zero: with ReLU they output relu(bias) and,
        # at a zero bias, get no gradient at all (dead), whatever their outgoing weights.
        layer["zero_fan_in_units"] = int(np.sum(~np.any(model.get_layer(name).kernel.numpy() != 0, axis=0)))
    accuracy = curve.accuracy[-1]
    return {
        "layers": hidden + 1,
        "zero": list(zero),
        "activation": activation,
        "seed": seed,
        "test_accuracy_before": before[1],
        "curve": curve.to_json(),
        "final_test_accuracy": accuracy,
        "learns": "yes" if accuracy >= LEARNS else "partly" if accuracy > PARTLY else "no",
        "symmetry": layers,
        "weights_changed": {
            w.path: bool(np.any(w.numpy() != 0))
            for w in model.trainable_weights
            if "kernel" in w.path and w.path.split("/")[0] in zero
        },
    }


def run(data: Mnist, *, seeds: list[int], out: Path, quick: bool) -> dict[str, Any]:
    config = QUICK if quick else FULL
    started = time.perf_counter()
    x, y = limited(data.x_train, data.y_train, config.train_limit)
    runs = []
    for activation in config.activations:
        for hidden in config.depths:
            for zero in zero_sets(hidden):
                for seed in seeds:
                    runs.append(
                        run_one(data, x, y, hidden=hidden, zero=zero, activation=activation, seed=seed, config=config)
                    )
    results = header("symmetry", data=data.describe(), seeds=seeds, quick=quick)
    results.update(
        {
            "config": vars(config) | {"activations": list(config.activations), "depths": list(config.depths)},
            "thresholds": {"learns": LEARNS, "partly": PARTLY},
            "train_samples_used": int(len(y)),
            "runs": runs,
            "summary": _summary(runs),
            "wall_s": time.perf_counter() - started,
        }
    )
    return publish(out, "symmetry", results, lambda plot: _plot(results, plot), report)


def _key(run: dict[str, Any]) -> tuple:
    return (run["activation"], run["layers"], tuple(run["zero"]))


def _summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (activation, depth, zero set): accuracy over seeds and distinct units left."""
    rows = []
    for key, group in itertools.groupby(runs, key=_key):
        group = list(group)
        accuracy = [r["final_test_accuracy"] for r in group]
        distinct = {
            layer: sorted({r["symmetry"][layer]["distinct_units"] for r in group}) for layer in group[0]["symmetry"]
        }
        zero_fan_in = {
            layer: sorted({r["symmetry"][layer]["zero_fan_in_units"] for r in group}) for layer in group[0]["symmetry"]
        }
        mean = float(np.mean(accuracy))
        rows.append(
            {
                "activation": key[0],
                "layers": key[1],
                "zero": list(key[2]),
                "mean_test_accuracy": mean,
                "min_test_accuracy": float(min(accuracy)),
                "max_test_accuracy": float(max(accuracy)),
                "learns": "yes" if mean >= LEARNS else "partly" if mean > PARTLY else "no",
                "distinct_units": distinct,
                "zero_fan_in_units": zero_fan_in,
            }
        )
    return rows


def report(results: dict[str, Any]) -> str:
    units = results["config"]["units"]
    rows = []
    for row in results["summary"]:
        distinct = ", ".join(f"{layer} {'/'.join(map(str, values))}" for layer, values in row["distinct_units"].items())
        dead = ", ".join(f"{layer} {'/'.join(map(str, values))}" for layer, values in row["zero_fan_in_units"].items())
        rows.append(
            [
                row["activation"],
                row["layers"],
                "+".join(row["zero"]) or "none",
                f"{row['mean_test_accuracy']:.4f}",
                row["learns"],
                distinct,
                dead,
            ]
        )
    return "\n".join(
        [
            f"symmetry: Constant(0) kernels, {results['config']['epochs']} epochs, {units} units per hidden layer, "
            f"{len(results['seeds'])} seed(s); 'distinct units' = {units} minus the units the toolkit finds symmetric "
            "(same fan-in, bias and fan-out as another unit)",
            table(
                [
                    "activation",
                    "layers",
                    "zero kernels",
                    "test acc",
                    "learns",
                    f"distinct units (of {units})",
                    "units with all-zero fan-in",
                ],
                rows,
            ),
        ]
    )


def _plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    summary = results["summary"]
    activations = results["config"]["activations"]
    figure, axes = plt.subplots(1, len(activations), figsize=(6.5 * len(activations), 4.6), squeeze=False)
    for axis, activation in zip(axes[0], activations):
        rows = [row for row in summary if row["activation"] == activation]
        labels = [f"{row['layers']}L: {'+'.join(row['zero']) or 'none'}" for row in rows]
        means = [row["mean_test_accuracy"] for row in rows]
        spread = [
            [m - row["min_test_accuracy"] for m, row in zip(means, rows)],
            [row["max_test_accuracy"] - m for m, row in zip(means, rows)],
        ]
        colors = [
            "tab:green" if row["learns"] == "yes" else "tab:orange" if row["learns"] == "partly" else "tab:red"
            for row in rows
        ]
        axis.barh(labels, means, xerr=spread, color=colors)
        axis.axvline(0.1, color="grey", linestyle=":", label="chance")
        axis.set(
            xlim=(0, 1),
            xlabel=f"test accuracy after {results['config']['epochs']} epochs",
            title=f"{activation} hidden units; zero kernels in",
        )
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=8)
    save_figure(figure, path)
