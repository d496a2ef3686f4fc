"""`demo` (what `make demo` runs): the whole pipeline on the bundled MNIST digits, in about a minute.

1. Train the small MLP (``Flatten → Dense(128, relu, 'dense_1') → Dense(10, softmax)``).
2. Export it to ONNX (`surgery.export_keras`).
3. Widen ``dense_1`` by a few units with exactly-zero outgoing weights (`surgery.widen`).
4. Verify with onnxruntime on the whole test set that the outputs are bitwise equal (`surgery.verify`).
5. Convert the widened ONNX back to a trainable Keras model (`surgery.to_keras`).
6. Train further and report test accuracy before widening, right after (identical), and after.
7. The control: the unwidened model trained for the same extra epochs with the same seed and a
   fresh optimizer (as the widened one gets), so the plot separates what the extra units did
   from what the extra epochs did.

The ONNX and Keras files it makes are kept in the output folder for ``surgery inspect``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import Mnist
from training.runtime import (
    Curve,
    bitwise_equal,
    compile_classifier,
    evaluate,
    header,
    pyplot,
    save_figure,
    strategy,
    table,
    test_inputs,
    train,
    write_results,
)


@dataclass(frozen=True)
class DemoConfig:
    units: int = 128
    added: int = 8
    epochs: int = 5
    more_epochs: int = 5
    learning_rate: float = 0.001
    batch_size: int = 100


FULL = DemoConfig()
QUICK = DemoConfig(units=16, added=4, epochs=1, more_epochs=1)


def _step(text: str) -> None:
    print(f"• {text}", flush=True)


def run(data: Mnist, *, seeds: list[int], out: Path, quick: bool) -> dict[str, Any]:
    import keras

    import surgery
    from training.models import mlp, parameter_count

    config = QUICK if quick else FULL
    seed = seeds[0]
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    test = (data.x_test, data.y_test)

    _step(
        f"training the MLP (dense_1: {config.units} units) on {len(data.y_train)} MNIST digits "
        f"for {config.epochs} epochs"
    )
    keras.utils.set_random_seed(seed)
    with strategy().scope():
        model = compile_classifier(mlp(config.units), learning_rate=config.learning_rate)
    curve = train(
        model,
        data.x_train,
        data.y_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        test=test,
        seed=seed,
        from_start=True,
    )
    loss_trained, accuracy_trained = evaluate(model, *test)

    _step("exporting to ONNX")
    exported = surgery.export_keras(model)
    surgery.save_model(exported, out / "mlp.onnx", force=True)

    _step(f"widening dense_1 by {config.added} units (output-zero)")
    widened = surgery.widen(exported, {"dense_1": config.added}, init="output-zero", seed=seed)
    surgery.save_model(widened, out / "mlp_widened.onnx", force=True)

    _step(f"verifying with onnxruntime on all {len(data.y_test)} test images")
    report = surgery.verify(exported, widened, inputs=test_inputs(data.x_test, len(data.x_test)), seed=seed)
    bitwise = bitwise_equal(report)

    _step("converting the widened model back to Keras")
    with strategy().scope():
        grown = compile_classifier(surgery.to_keras(widened, seed=seed), learning_rate=config.learning_rate)
    grown.save(out / "mlp_widened.keras")
    loss_widened, accuracy_widened = evaluate(grown, *test)

    _step(f"training the widened model for {config.more_epochs} more epochs")
    more = train(
        grown,
        data.x_train,
        data.y_train,
        epochs=config.more_epochs,
        batch_size=config.batch_size,
        test=test,
        seed=seed + 1,
    )
    curve.extend(more, offset=config.epochs)
    loss_final, accuracy_final = evaluate(grown, *test)

    _step(f"control: the unwidened model trained for the same {config.more_epochs} more epochs")
    with strategy().scope():
        unwidened = compile_classifier(mlp(config.units), learning_rate=config.learning_rate)
    unwidened.set_weights(model.get_weights())
    control = train(
        unwidened,
        data.x_train,
        data.y_train,
        epochs=config.more_epochs,
        batch_size=config.batch_size,
        test=test,
        seed=seed + 1,
    )
    control_curve = Curve()
    control_curve.add(config.epochs, loss_trained, accuracy_trained)
    control_curve.extend(control, offset=config.epochs)

    width = config.units + config.added
    stages = [
        {
            "stage": "trained (Keras)",
            "dense_1": config.units,
            "parameters": parameter_count(model),
            "test_loss": loss_trained,
            "test_accuracy": accuracy_trained,
        },
        {
            "stage": "widened, back in Keras",
            "dense_1": width,
            "parameters": parameter_count(grown),
            "test_loss": loss_widened,
            "test_accuracy": accuracy_widened,
        },
        {
            "stage": f"after {config.more_epochs} more epochs",
            "dense_1": width,
            "parameters": parameter_count(grown),
            "test_loss": loss_final,
            "test_accuracy": accuracy_final,
        },
    ]
    plot = out / "demo.png"
    _plot(curve, control_curve, config, plot)
    results = header("demo", data=data.describe(), seeds=[seed], quick=quick)
    results.update(
        {
            "config": vars(config),
            "stages": stages,
            "bitwise_equal_after_widen": bitwise,
            "verify": report.to_json(),
            "accuracy_identical_after_widen": accuracy_widened == accuracy_trained,
            "loss_difference_after_widen": abs(loss_widened - loss_trained),
            "curve": curve.to_json(),
            "control": {
                "stage": f"unwidened, {config.more_epochs} more epochs",
                "dense_1": config.units,
                "test_loss": control.loss[-1],
                "test_accuracy": control.accuracy[-1],
                "curve": control_curve.to_json(),
            },
            "files": [str(out / name) for name in ("mlp.onnx", "mlp_widened.onnx", "mlp_widened.keras")],
            "plots": [str(plot)],
            "wall_s": time.perf_counter() - started,
        }
    )
    write_results(out, results)
    print()
    control_row = [
        results["control"]["stage"],
        config.units,
        parameter_count(model),
        control.loss[-1],
        control.accuracy[-1],
    ]
    print(
        table(
            ["stage", "dense_1", "parameters", "test loss", "test accuracy"],
            [list(s.values()) for s in stages] + [control_row],
        )
    )
    print(
        f"\nonnxruntime outputs bitwise equal after widening: {'yes' if bitwise else 'NO'} "
        f"({len(data.y_test)} test images); Keras accuracy right after widening identical: "
        f"{'yes' if accuracy_widened == accuracy_trained else 'NO'}, test loss "
        + (
            "identical"
            if loss_widened == loss_trained
            else f"differs by {abs(loss_widened - loss_trained):.1e} "
            "(TensorFlow's matrix products round differently at the new width)"
        )
    )
    print(f"plot: {plot}\nresults: {out / 'results.json'}\nmodels: {', '.join(results['files'])}")
    print(f"done in {results['wall_s']:.0f} s")
    if not bitwise:
        # The demo's claim is exact preservation: a difference is a failure, not a footnote.
        raise surgery.NotEquivalentError("the widened model's onnxruntime outputs differ from the original's")
    return results


def _plot(curve: Curve, control: Curve, config: DemoConfig, path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    axis.plot(
        curve.epochs,
        curve.accuracy,
        marker="o",
        label=f"widened to {config.units + config.added} after epoch {config.epochs}",
    )
    axis.plot(
        control.epochs, control.accuracy, marker="s", linestyle="--", label=f"control: kept at {config.units} units"
    )
    axis.axvline(
        config.epochs,
        color="grey",
        linestyle=":",
        label=f"dense_1 widened {config.units} → {config.units + config.added} (outputs bitwise equal)",
    )
    axis.set(
        xlabel="epoch", ylabel="test accuracy (one seed)", title="train → export → widen → verify → to Keras → train"
    )
    save_figure(figure, path, loc="lower right")
