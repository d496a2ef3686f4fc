"""`init`: how the new units of a widening are initialised, and what that does to training.

A trained ``Flatten → Dense(W, tanh, 'dense_1') → Dense(10, softmax)`` is widened by K units
through the toolkit with each initialisation, then trained further with a fresh Adam (the same
for every variant: net2net rewrites old fan-out, which `surgery.carry_optimizer_state` refuses to
guess about). tanh is used because GradMax needs f(0) = 0 and f'(0) ≠ 0 (tanh'(0) = 1); ReLU as
TensorFlow differentiates it has f'(0) = 0, so zero-fan-in units would get no gradient at all.

Initialisations (all but the noisy Net2Net keep the outputs; checked bitwise on onnxruntime):

- ``output-zero``: random fan-in (Glorot, as `surgery.widen` draws it for tanh), zero fan-out;
- ``all-zero``: zero fan-in and fan-out;
- ``net2net``: new units copy random old units, the fan-out divided among the copies;
- ``net2net + noise``: the same, then Gaussian noise (sd `noise` × the sd of the layer's
  kernel) added to the new units' fan-in on the Keras side, as Net2Net does when there is no
  dropout to break the copies' symmetry (the outputs change slightly);
- ``gradmax``: zero fan-in and a fan-out that maximises the new fan-in's gradient norm (Evci et
  al. 2022): with zero fan-in the gradient of the loss with respect to the new units' fan-in is
  f'(0) · G · F^T, where G = mean over a batch of x δ^T (x: the layer's input, δ: the gradient
  at the next layer's pre-activation, p − onehot(y) for softmax cross-entropy) and F the new
  fan-out (K × 10); its Frobenius norm under a norm bound on F is largest when F's rows are the
  top-K right singular vectors of G. The rows are scaled to the mean norm of the layer's old
  fan-out rows. G is computed on the Keras side and F written with `surgery.widen(unit_values=)`.
  K must not exceed the number of classes (G has rank ≤ 10).
- ``random fan-out``: GradMax's control — zero fan-in and a fan-out of K random orthonormal rows
  at the same scale, so that GradMax's gain can be told apart from merely starting the new
  units with a non-zero fan-out of that size.
- ``unwidened``: the control, trained on without growing.

Measured: the gradient norm of the new units' parameters (fan-in, bias, fan-out) right after the
widening on `grad_samples` training images; validation loss every `every_steps` steps over the
following `more_epochs` epochs; final test accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import Mnist, limited, validation_split
from training.runtime import (
    ModelPool,
    compile_classifier,
    evaluate,
    header,
    publish,
    pyplot,
    reset_optimizer,
    save_figure,
    strategy,
    summarise,
    table,
    test_inputs,
)

INITS = ("output-zero", "all-zero", "net2net", "net2net + noise", "gradmax", "random fan-out", "unwidened")


@dataclass(frozen=True)
class InitConfig:
    units: int = 16
    added: int = 8
    first_epochs: int = 3
    more_epochs: int = 2
    every_steps: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 100
    noise: float = 0.01
    grad_samples: int = 1000
    validation_per_class: int = 50
    train_limit: int | None = None


FULL = InitConfig()
QUICK = InitConfig(
    units=4,
    added=2,
    first_epochs=1,
    more_epochs=1,
    every_steps=2,
    grad_samples=200,
    validation_per_class=10,
    train_limit=600,
)


def gradmax_fan_out(model, x: np.ndarray, y: np.ndarray, added: int) -> np.ndarray:
    """GradMax's fan-out for `added` zero-fan-in units of ``dense_1`` (see the module docstring)."""
    probabilities = np.asarray(model(x, training=False), dtype=np.float64)
    delta = probabilities.copy()
    delta[np.arange(len(y)), y] -= 1.0  # d(cross-entropy)/d(logits) for softmax
    inputs = x.reshape(len(x), -1).astype(np.float64)
    g = inputs.T @ delta / len(x)  # (fan-in, classes)
    if added > g.shape[1]:
        raise ValueError(f"GradMax gives at most {g.shape[1]} useful units here, asked for {added}")
    _, _, vt = np.linalg.svd(g, full_matrices=False)
    return (vt[:added] * _fan_out_scale(model)).astype(np.float32)


def random_fan_out(model, added: int, seed: int) -> np.ndarray:
    """`added` random orthonormal fan-out rows at GradMax's scale: its control."""
    classes = model.get_layer("dense_2").kernel.shape[1]
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(classes, added)))
    return (q.T * _fan_out_scale(model)).astype(np.float32)


def _fan_out_scale(model) -> float:
    """The mean norm of ``dense_1``'s old fan-out rows: the norm given to each new row."""
    return float(np.linalg.norm(model.get_layer("dense_2").kernel.numpy(), axis=1).mean())


def _new_unit_gradient(model, x: np.ndarray, y: np.ndarray, units: int) -> dict[str, float]:
    """Norms of the loss gradient on (x, y) for the new units' fan-in, bias and fan-out."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    dense_1, dense_2 = model.get_layer("dense_1"), model.get_layer("dense_2")
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    kernel, bias, fan_out = tape.gradient(loss, [dense_1.kernel, dense_1.bias, dense_2.kernel])
    return {
        "fan_in": float(np.linalg.norm(np.asarray(kernel)[:, units:])),
        "bias": float(np.linalg.norm(np.asarray(bias)[units:])),
        "fan_out": float(np.linalg.norm(np.asarray(fan_out)[units:])),
        "old_fan_in": float(np.linalg.norm(np.asarray(kernel)[:, :units])),
    }


def _widened(model, exported, init: str, seed: int, config: InitConfig, train, validation):
    """The Keras model for `init`, through the toolkit, and the onnxruntime check."""
    import surgery

    plan = {"dense_1": config.added}
    if init in ("gradmax", "random fan-out"):
        x, y = train[0][: config.grad_samples], train[1][: config.grad_samples]
        fan_out = (
            gradmax_fan_out(model, x, y, config.added)
            if init == "gradmax"
            else random_fan_out(model, config.added, seed)
        )
        after = surgery.widen(exported, plan, init="all-zero", seed=seed, unit_values={"dense_1": {"fan-out": fan_out}})
    else:
        after = surgery.widen(exported, plan, init="net2net" if init.startswith("net2net") else init, seed=seed)
    report = surgery.verify(exported, after, inputs=test_inputs(validation[0]), seed=seed)
    grown = surgery.to_keras(after, seed=seed)
    if init == "net2net + noise":
        kernel = grown.get_layer("dense_1").kernel
        values = kernel.numpy()
        rng = np.random.default_rng(seed)
        values[:, config.units :] += rng.normal(0.0, config.noise * values.std(), size=values[:, config.units :].shape)
        kernel.assign(values)
    outputs = report.to_json()["outputs"]
    return grown, {
        "bitwise_equal": bool(outputs) and all(o["bitwise_equal"] for o in outputs),
        "max_abs_diff": max(float(o["max_abs_diff"]) for o in outputs),
    }


class _Every:
    """A Keras callback recording validation loss every `every` training steps."""

    def __init__(self, model, validation, every: int):
        import keras

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                outer.step += 1
                if outer.step % every == 0:
                    outer.steps.append(outer.step)
                    outer.loss.append(evaluate(model, *validation)[0])

        self.callback, self.step, self.steps, self.loss = Callback(), 0, [], []


def run_seed(data: Mnist, train, validation, seed: int, config: InitConfig, pool: ModelPool) -> dict[str, Any]:
    import keras

    import surgery
    from training.models import mlp

    keras.utils.set_random_seed(seed)
    compile_model = lambda m: compile_classifier(m, learning_rate=config.learning_rate)  # noqa: E731
    with strategy().scope():
        base = pool.load("base", mlp(config.units, activation="tanh"), compile_model)
    base.fit(*train, epochs=config.first_epochs, batch_size=config.batch_size, shuffle=True, verbose=0)
    exported = surgery.export_keras(base)
    before_loss, before_accuracy = evaluate(base, *validation)
    base_weights = base.get_weights()
    out: dict[str, Any] = {
        "seed": seed,
        "validation_loss_before": before_loss,
        "validation_accuracy_before": before_accuracy,
    }
    for init in INITS:
        if init == "unwidened":
            keras.utils.set_random_seed(seed)
            with strategy().scope():
                model = pool.load("base-control", mlp(config.units, activation="tanh"), compile_model)
            model.set_weights(base_weights)
            check, gradient = None, None
        else:
            grown, check = _widened(base, exported, init, seed, config, train, validation)
            with strategy().scope():
                model = pool.load("wide", grown, compile_model)
            reset_optimizer(model)
            gradient = _new_unit_gradient(
                model, train[0][: config.grad_samples], train[1][: config.grad_samples], config.units
            )
        loss_after = evaluate(model, *validation)[0]
        every = _Every(model, validation, config.every_steps)
        keras.utils.set_random_seed(seed + 1)
        model.fit(
            *train,
            epochs=config.more_epochs,
            batch_size=config.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[every.callback],
        )
        out[init] = {
            "onnx": check,
            "validation_loss_after_widening": loss_after,
            "new_unit_gradient": gradient,
            "steps": every.steps,
            "validation_loss": every.loss,
            "final_test_accuracy": evaluate(model, data.x_test, data.y_test)[1],
        }
    base.set_weights(base_weights)
    return out


def run(data: Mnist, *, seeds: list[int], out: Path, quick: bool) -> dict[str, Any]:
    config = QUICK if quick else FULL
    started = time.perf_counter()
    train, validation = validation_split(
        *limited(data.x_train, data.y_train, config.train_limit), config.validation_per_class
    )
    pool = ModelPool()
    split = {"train": int(len(train[1])), "validation": int(len(validation[1])), "test": int(len(data.y_test))}
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        per_seed.append(run_seed(data, train, validation, seed, config, pool))
        print(f"  seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
        # Published after every seed: a run cut short still leaves the seeds it finished.
        results = _publish(out, data, quick, config, per_seed, split, started)
    return results


def _publish(
    out: Path,
    data: Mnist,
    quick: bool,
    config: InitConfig,
    per_seed: list[dict[str, Any]],
    split: dict[str, int],
    started: float,
) -> dict[str, Any]:
    """Summarise the seeds done so far; write results.json and the plot; print the table."""
    summary = {}
    for init in INITS:
        runs = [p[init] for p in per_seed]
        summary[init] = {
            "final_test_accuracy": summarise([r["final_test_accuracy"] for r in runs]),
            "validation_loss_after_widening": summarise([r["validation_loss_after_widening"] for r in runs]),
            "validation_loss_first_reading": summarise([r["validation_loss"][0] for r in runs]),
            "validation_loss_last_reading": summarise([r["validation_loss"][-1] for r in runs]),
        }
        if init != "unwidened":
            for part in ("fan_in", "bias", "fan_out"):
                summary[init][f"new_unit_gradient_{part}"] = summarise([r["new_unit_gradient"][part] for r in runs])
            summary[init]["bitwise_equal"] = all(r["onnx"]["bitwise_equal"] for r in runs)
    results = header("init", data=data.describe(), seeds=[p["seed"] for p in per_seed], quick=quick)
    results.update(
        {
            "config": vars(config),
            "activation": "tanh (f(0) = 0, f'(0) = 1)",
            "split": split,
            "summary": summary,
            "per_seed": per_seed,
            "wall_s": time.perf_counter() - started,
        }
    )
    return publish(out, "init", results, lambda plot: _plot(results, plot), report)


def _plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for init in INITS:
        runs = [p[init] for p in results["per_seed"]]
        losses = np.array([r["validation_loss"] for r in runs])
        spread = losses.std(0, ddof=1) if len(losses) > 1 else np.zeros(losses.shape[1])
        axes[0].plot(runs[0]["steps"], losses.mean(0), label=init)
        axes[0].fill_between(runs[0]["steps"], losses.mean(0) - spread, losses.mean(0) + spread, alpha=0.1)
    axes[0].set(
        xlabel="training steps after the widening",
        ylabel="validation loss",
        title=f"mean ± sample sd over {len(results['seeds'])} seed(s)",
    )
    names = [i for i in INITS if i != "unwidened"]
    for offset, part in enumerate(("fan_in", "fan_out")):
        means = [results["summary"][i][f"new_unit_gradient_{part}"]["mean"] for i in names]
        cis = np.array([results["summary"][i][f"new_unit_gradient_{part}"]["ci95"] for i in names]).T
        positions = np.arange(len(names)) + offset * 0.4
        axes[1].bar(
            positions, means, width=0.4, yerr=np.abs(cis - np.array(means)), capsize=3, label=part.replace("_", "-")
        )
    axes[1].set_xticks(np.arange(len(names)) + 0.2, names, fontsize=8)
    axes[1].set(ylabel="gradient norm of the new units' weights", title="right after the widening (bootstrap 95 % CI)")
    save_figure(figure, path)


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    rows = []
    for init in INITS:
        cell = results["summary"][init]
        gradient = (
            f"{cell['new_unit_gradient_fan_in']['mean']:.2e} / {cell['new_unit_gradient_fan_out']['mean']:.2e}"
            if init != "unwidened"
            else "-"
        )
        acc = cell["final_test_accuracy"]
        rows.append(
            [
                init,
                "-" if init == "unwidened" else ("yes" if cell["bitwise_equal"] else "no"),
                gradient,
                f"{cell['validation_loss_first_reading']['mean']:.4f}",
                f"{cell['validation_loss_last_reading']['mean']:.4f}",
                f"{acc['mean']:.4f} ± {acc['sd']:.4f} [{acc['ci95'][0]:.4f}, {acc['ci95'][1]:.4f}]",
            ]
        )
    return "\n".join(
        [
            f"init: dense_1 (tanh) {config['units']} → {config['units'] + config['added']} units "
            f"after {config['first_epochs']} epochs, "
            f"then {config['more_epochs']} epochs with a fresh Adam; {len(results['seeds'])} seed(s)",
            table(
                [
                    "init",
                    "ORT bitwise",
                    "grad norm fan-in / fan-out",
                    f"val loss @{config['every_steps']} steps",
                    "val loss at end",
                    "test acc mean ± sd [95 % CI]",
                ],
                rows,
            ),
        ]
    )
