"""`grow`: add units to a trained network without losing what it knows, through the toolkit.

Part 1 (the seed notebook that adds a neuron). Train ``Flatten → Dense(1, relu, 'dense_1')
→ Dense(10, softmax, 'dense_2')``; widen ``dense_1`` to 2 units through the toolkit (export
→ `surgery.widen` → `surgery.verify` → `surgery.to_keras`) with ``output-zero``, ``all-zero``
and ``net2net``; check that onnxruntime's outputs are bitwise equal after the widening and
that Keras's test loss and accuracy are unchanged before further training; then train every
variant further and compare with training the 1-unit model further and with a 2-unit model
trained from scratch for the same total epochs.

Part 2 (the general case). Grow ``dense_1`` 16 → 32 → 64 → 128 in stages during training
(output-zero, through the toolkit at every stage) versus 128 units from scratch for the same
total epochs, and versus 128 from scratch for the same compute (epochs × parameters).

Inside TensorFlow the widened model is not bitwise equal to the original (a 784×1 and a 784×2
matrix product round differently); onnxruntime's CPU kernels with graph optimizations disabled
are. Both are measured and reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import Mnist
from training.runtime import (
    Curve,
    compile_classifier,
    evaluate,
    header,
    mean_spread,
    pyplot,
    strategy,
    table,
    publish,
    test_inputs,
    train,
    widen_keras,
)

#: Widening strategies compared in part 1 (all function preserving, up to rounding for net2net).
STRATEGIES = ("output-zero", "all-zero", "net2net")


@dataclass(frozen=True)
class GrowConfig:
    first_epochs: int = 10
    more_epochs: int = 20
    learning_rate: float = 0.01
    batch_size: int = 100
    stage_widths: tuple[int, ...] = (16, 32, 64, 128)
    stage_epochs: int = 5
    staged_learning_rate: float = 0.001
    train_limit: int | None = None


FULL = GrowConfig()
QUICK = GrowConfig(first_epochs=1, more_epochs=1, stage_widths=(4, 8), stage_epochs=1, train_limit=500)


def _build(units: int, learning_rate: float):
    from training.models import mlp

    with strategy().scope():
        return compile_classifier(mlp(units), learning_rate=learning_rate)


def _grow(model, units: int, *, init: str, seed: int, learning_rate: float, x_check: np.ndarray):
    """Widen `dense_1` by `units` through the toolkit; the Keras result compiled and the surgery record."""
    with strategy().scope():
        grown, surgery_record = widen_keras(model, {"dense_1": units}, init=init, seed=seed, verify_inputs=test_inputs(x_check))
        compile_classifier(grown, learning_rate=learning_rate)
    return grown, surgery_record


def _continue(model, learning_rate: float):
    """A copy of `model` with its weights and a fresh optimizer (as the widened models get)."""
    from training.models import mlp

    with strategy().scope():
        copy = compile_classifier(mlp(model.get_layer("dense_1").units), learning_rate=learning_rate)
    copy.set_weights(model.get_weights())
    return copy


def _keras_difference(before, after, x: np.ndarray) -> dict[str, Any]:
    """How far Keras's own predictions moved across the widening (TensorFlow kernels)."""
    p_before = np.asarray(before.predict(x, batch_size=1000, verbose=0))
    p_after = np.asarray(after.predict(x, batch_size=1000, verbose=0))
    return {
        "keras_bitwise_equal": bool(np.array_equal(p_before, p_after)),
        "keras_max_abs_diff": float(np.max(np.abs(p_before.astype(np.float64) - p_after))),
        "keras_predictions_changed": int(np.sum(p_before.argmax(1) != p_after.argmax(1))),
    }


def single_neuron(data: Mnist, x_train, y_train, seed: int, config: GrowConfig) -> dict[str, Any]:
    """Part 1 for one seed: every variant's curve and the widening checks."""
    import keras

    test = (data.x_test, data.y_test)
    keras.utils.set_random_seed(seed)
    one = _build(1, config.learning_rate)
    start_curve = train(one, x_train, y_train, epochs=config.first_epochs, batch_size=config.batch_size, test=test, seed=seed, from_start=True)
    loss_before, accuracy_before = evaluate(one, *test)

    variants: dict[str, Any] = {}
    for init in STRATEGIES:
        grown, record = _grow(one, 1, init=init, seed=seed, learning_rate=config.learning_rate, x_check=data.x_test)
        loss_after, accuracy_after = evaluate(grown, *test)
        keras_difference = _keras_difference(one, grown, data.x_test)
        more = train(grown, x_train, y_train, epochs=config.more_epochs, batch_size=config.batch_size, test=test, seed=seed)
        variants[init] = {
            "onnx": record.to_json(),
            "keras_test_loss_before": loss_before,
            "keras_test_loss_after": loss_after,
            "keras_test_accuracy_before": accuracy_before,
            "keras_test_accuracy_after": accuracy_after,
            "keras_loss_identical": loss_after == loss_before,
            "keras_accuracy_identical": accuracy_after == accuracy_before,
            **keras_difference,
            "curve": _joined(start_curve, more, config.first_epochs).to_json(),
            "final_test_accuracy": more.accuracy[-1],
        }

    further = train(_continue(one, config.learning_rate), x_train, y_train, epochs=config.more_epochs, batch_size=config.batch_size, test=test, seed=seed)
    variants["1-unit further"] = {"curve": _joined(start_curve, further, config.first_epochs).to_json(), "final_test_accuracy": further.accuracy[-1]}

    keras.utils.set_random_seed(seed)
    two = _build(2, config.learning_rate)
    scratch = train(
        two, x_train, y_train, epochs=config.first_epochs + config.more_epochs, batch_size=config.batch_size, test=test, seed=seed,
        from_start=True,
    )
    variants["2-unit scratch"] = {"curve": scratch.to_json(), "final_test_accuracy": scratch.accuracy[-1]}
    return {"seed": seed, "test_accuracy_1_unit": accuracy_before, "test_loss_1_unit": loss_before, "variants": variants}


def _joined(first: Curve, second: Curve, offset: int) -> Curve:
    curve = Curve()
    curve.extend(first, offset=0)
    curve.extend(second, offset=offset)
    return curve


def staged(data: Mnist, x_train, y_train, seed: int, config: GrowConfig) -> dict[str, Any]:
    """Part 2 for one seed: staged growth vs the widest model from scratch."""
    import keras

    from training.models import parameter_count

    test = (data.x_test, data.y_test)
    widths = config.stage_widths
    total_epochs = config.stage_epochs * len(widths)
    keras.utils.set_random_seed(seed)
    model = _build(widths[0], config.staged_learning_rate)
    curve, compute, stages = Curve(), 0, []
    curve.add(0, *evaluate(model, *test))
    for index, width in enumerate(widths):
        if index:
            model, record = _grow(model, width - widths[index - 1], init="output-zero", seed=seed + index,
                                  learning_rate=config.staged_learning_rate, x_check=data.x_test)
            curve.wall_s += record.wall_s
            stages.append({"from": widths[index - 1], "to": width, **record.to_json()})
        part = train(model, x_train, y_train, epochs=config.stage_epochs, batch_size=config.batch_size, test=test, seed=seed + index)
        curve.extend(part, offset=index * config.stage_epochs)
        compute += config.stage_epochs * parameter_count(model)

    runs = {"staged": {"curve": curve.to_json(), "param_epochs": compute, "widenings": stages}}
    full_params = parameter_count(_build(widths[-1], config.staged_learning_rate))
    matched_epochs = max(1, round(compute / full_params))
    for name, epochs in ((f"{widths[-1]} scratch", total_epochs), (f"{widths[-1]} scratch, same compute", matched_epochs)):
        keras.utils.set_random_seed(seed)
        wide = _build(widths[-1], config.staged_learning_rate)
        scratch = train(wide, x_train, y_train, epochs=epochs, batch_size=config.batch_size, test=test, seed=seed, from_start=True)
        runs[name] = {"curve": scratch.to_json(), "param_epochs": epochs * full_params}
    for run in runs.values():
        run["epochs"] = run["curve"]["epochs"][-1]
        run["final_test_accuracy"] = run["curve"]["test_accuracy"][-1]
        run["wall_s"] = run["curve"]["wall_s"]
    return {"seed": seed, "runs": runs}


def _summary(per_seed: list[dict], pick) -> dict[str, dict[str, float]]:
    names = per_seed[0]["variants" if "variants" in per_seed[0] else "runs"]
    out = {}
    for name in names:
        values = [pick(seed_result, name) for seed_result in per_seed]
        out[name] = dict(zip(("mean", "std"), mean_spread(values)))
    return out


def _plot(single: list[dict], stages: list[dict], config: GrowConfig, path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in single[0]["variants"]:
        curves = [s["variants"][name]["curve"] for s in single]
        epochs = curves[0]["epochs"]
        accuracy = np.array([c["test_accuracy"] for c in curves])
        axes[0].plot(epochs, accuracy.mean(0), label=name)
        axes[0].fill_between(epochs, accuracy.mean(0) - accuracy.std(0), accuracy.mean(0) + accuracy.std(0), alpha=0.08)
    axes[0].axvline(config.first_epochs, color="grey", linestyle=":", label="widened 1 → 2")
    axes[0].set(title="grow dense_1 from 1 to 2 units (mean ± std over seeds)", xlabel="epoch", ylabel="test accuracy")
    axes[0].legend(fontsize=8)
    for name in stages[0]["runs"]:
        curves = [s["runs"][name]["curve"] for s in stages]
        accuracy = np.array([c["test_accuracy"] for c in curves])
        epochs = curves[0]["epochs"]
        axes[1].plot(epochs, accuracy.mean(0), label=name)
        axes[1].fill_between(epochs, accuracy.mean(0) - accuracy.std(0), accuracy.mean(0) + accuracy.std(0), alpha=0.15)
        wall = np.mean([s["runs"][name]["wall_s"] for s in stages])
        axes[2].bar(name, np.mean([s["runs"][name]["param_epochs"] for s in stages]) / 1e6)
        axes[2].annotate(f"{wall:.1f} s", (name, 0), ha="center", va="bottom", fontsize=8)
    for index in range(1, len(config.stage_widths)):
        axes[1].axvline(index * config.stage_epochs, color="grey", linestyle=":")
    widths = " → ".join(map(str, config.stage_widths))
    axes[1].set(title=f"staged growth {widths} vs scratch", xlabel="epoch", ylabel="test accuracy")
    # Epoch 0 (untrained) would squash the curves worth comparing.
    axes[1].set_ylim(bottom=min(min(s["runs"][n]["curve"]["test_accuracy"][1:]) for s in stages for n in s["runs"]) - 0.02)
    axes[1].legend(fontsize=8)
    axes[2].set(title="training compute (wall time on bars)", ylabel="epochs × parameters (millions)")
    axes[2].tick_params(axis="x", labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def run(data: Mnist, *, seeds: list[int], out: Path, quick: bool) -> dict[str, Any]:
    config = QUICK if quick else FULL
    x_train, y_train = data.x_train, data.y_train
    if config.train_limit:
        x_train, y_train = x_train[: config.train_limit], y_train[: config.train_limit]
    started = time.perf_counter()
    single = [single_neuron(data, x_train, y_train, seed, config) for seed in seeds]
    stages = [staged(data, x_train, y_train, seed, config) for seed in seeds]

    output_zero = [s["variants"]["output-zero"] for s in single]
    results = header("grow", data=data.describe(), seeds=seeds, quick=quick)
    results.update(
        {
            "config": vars(config) | {"stage_widths": list(config.stage_widths)},
            "train_samples_used": int(len(y_train)),
            "bitwise_equal_after_widen": all(v["onnx"]["bitwise_equal"] for v in output_zero),
            "keras_bitwise_equal_after_widen": all(v["keras_bitwise_equal"] for v in output_zero),
            "keras_max_abs_diff_after_widen": max(v["keras_max_abs_diff"] for v in output_zero),
            "keras_accuracy_identical_after_widen": all(v["keras_accuracy_identical"] for v in output_zero),
            "keras_loss_identical_after_widen": all(v["keras_loss_identical"] for v in output_zero),
            "bitwise_equal_after_widen_by_strategy": {
                init: all(s["variants"][init]["onnx"]["bitwise_equal"] for s in single) for init in STRATEGIES
            },
            "single_neuron": single,
            "single_neuron_final_accuracy": _summary(single, lambda s, n: s["variants"][n]["final_test_accuracy"]),
            "staged": stages,
            "staged_final_accuracy": _summary(stages, lambda s, n: s["runs"][n]["final_test_accuracy"]),
            "staged_param_epochs": _summary(stages, lambda s, n: s["runs"][n]["param_epochs"]),
            "staged_wall_s": _summary(stages, lambda s, n: s["runs"][n]["wall_s"]),
            "staged_bitwise_equal_after_widen": all(w["bitwise_equal"] for s in stages for w in s["runs"]["staged"]["widenings"]),
            "wall_s": time.perf_counter() - started,
        }
    )
    return publish(out, "grow", results, lambda plot: _plot(single, stages, config, plot), report)


def report(results: dict[str, Any]) -> str:
    """The tables the experiment prints (also pasted into the README)."""
    first = results["single_neuron"][0]
    ordered = first["variants"]
    rows = []
    for name in ordered:
        final = results["single_neuron_final_accuracy"][name]
        if name in STRATEGIES:
            onnx_equal = all(s["variants"][name]["onnx"]["bitwise_equal"] for s in results["single_neuron"])
            keras_acc = all(s["variants"][name]["keras_accuracy_identical"] for s in results["single_neuron"])
            keras_diff = max(s["variants"][name]["keras_max_abs_diff"] for s in results["single_neuron"])
            rows.append([name, "yes" if onnx_equal else "no", "yes" if keras_acc else "no", f"{keras_diff:.1e}", f"{final['mean']:.4f} ± {final['std']:.4f}"])
        else:
            rows.append([name, "-", "-", "-", f"{final['mean']:.4f} ± {final['std']:.4f}"])
    accuracy_1 = mean_spread([s["test_accuracy_1_unit"] for s in results["single_neuron"]])
    config = results["config"]
    lines = [
        f"grow, part 1: dense_1 1 → 2 units after {config['first_epochs']} epochs (1-unit test accuracy "
        f"{accuracy_1[0]:.4f} ± {accuracy_1[1]:.4f}), then {config['more_epochs']} more epochs; {len(results['seeds'])} seed(s)",
        table(["variant", "ORT bitwise", "Keras acc same", "Keras max|diff|", "final test acc"], rows),
        "",
        f"grow, part 2: staged {' → '.join(map(str, config['stage_widths']))}, {config['stage_epochs']} epochs per stage",
    ]
    rows = []
    for name in results["staged_final_accuracy"]:
        final = results["staged_final_accuracy"][name]
        epochs = results["staged"][0]["runs"][name]["epochs"]
        rows.append(
            [name, epochs, f"{results['staged_param_epochs'][name]['mean'] / 1e6:.2f}M",
             f"{results['staged_wall_s'][name]['mean']:.1f}", f"{final['mean']:.4f} ± {final['std']:.4f}"]
        )
    lines.append(table(["run", "epochs", "epochs×params", "wall s", "final test acc"], rows))
    lines.append(
        f"\nONNX (onnxruntime CPU, optimizations off) bitwise equal after every output-zero widening: "
        f"{'yes' if results['bitwise_equal_after_widen'] and results['staged_bitwise_equal_after_widen'] else 'NO'}; "
        f"Keras/TensorFlow bitwise equal: {'yes' if results['keras_bitwise_equal_after_widen'] else 'no'} "
        f"(max |diff| {results['keras_max_abs_diff_after_widen']:.1e})"
    )
    return "\n".join(lines)
