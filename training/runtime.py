"""What every experiment shares: the distribution strategy, training with periodic test
accuracy, the toolkit pipeline, results.json, tables and plots.

The toolkit is used only through its public API, as a user would: ``surgery.export_keras``
→ ``surgery.widen`` → ``surgery.verify`` → ``surgery.to_keras``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import onnx
    import tensorflow as tf

#: Libraries whose versions go into results.json and MANIFEST.json.
RECORDED_PACKAGES = (
    "tensorflow",
    "keras",
    "tf2onnx",
    "onnx",
    "onnx-ir",
    "onnxruntime-gpu",
    "onnxruntime",
    "numpy",
    "mlxtend",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries the results depend on (and Python's)."""
    versions = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def command_line() -> str:
    """The command that is running, as a user would type it."""
    program = "python -m training" if sys.argv and sys.argv[0].endswith("__main__.py") else sys.argv[0]
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def strategy() -> tf.distribute.Strategy:
    """MirroredStrategy when several GPUs are visible, else TensorFlow's default strategy.

    Models must be built and compiled inside ``strategy().scope()`` so that their variables
    are mirrored; `fit` then splits every batch across the replicas.
    """
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()


def compile_classifier(model: keras.Model, *, learning_rate: float) -> keras.Model:
    """Adam + sparse categorical cross-entropy + accuracy. Call inside the strategy's scope."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@dataclass
class Curve:
    """Test accuracy (and loss) measured at given epoch counts of one training run."""

    epochs: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def add(self, epoch: int, loss: float, accuracy: float) -> None:
        self.epochs.append(int(epoch))
        self.loss.append(float(loss))
        self.accuracy.append(float(accuracy))

    def extend(self, other: Curve, *, offset: int) -> None:
        """Append `other`, whose epochs count from `offset` (a later stage of the same run)."""
        for epoch, loss, accuracy in zip(other.epochs, other.loss, other.accuracy):
            self.add(epoch + offset, loss, accuracy)
        self.wall_s += other.wall_s

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "test_accuracy": self.accuracy, "test_loss": self.loss, "wall_s": self.wall_s}


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1000) -> tuple[float, float]:
    """(sparse categorical cross-entropy, accuracy) of a softmax classifier on (x, y).

    An eager forward pass in inference mode, not `model.evaluate`: evaluate traces a new
    function for every model, which costs seconds per model in experiments that build hundreds.
    Probabilities are clipped to [1e-7, 1] as Keras's loss does.
    """
    probabilities = np.concatenate(
        [np.asarray(model(x[start : start + batch_size], training=False)) for start in range(0, len(x), batch_size)]
    ).astype(np.float64)
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    return float(-np.log(picked).mean()), float((probabilities.argmax(1) == y).mean())


def train(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    test: tuple[np.ndarray, np.ndarray],
    every: int = 1,
    seed: int = 0,
    from_start: bool = False,
) -> Curve:
    """Fit a compiled model for `epochs`, measuring test loss/accuracy every `every` epochs
    (and after the last), and before training as epoch 0 when `from_start`. Shuffling is
    seeded by `seed`.
    """
    import keras

    curve = Curve()
    if from_start:
        curve.add(0, *evaluate(model, *test))
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    done = 0
    while done < epochs:
        step = min(every, epochs - done)
        model.fit(x, y, epochs=done + step, initial_epoch=done, batch_size=batch_size, shuffle=True, verbose=0)
        done += step
        curve.wall_s += time.perf_counter() - start
        curve.add(done, *evaluate(model, *test))
        start = time.perf_counter()
    return curve


@dataclass
class Surgery:
    """What one pass through the toolkit did: the ONNX before and after, and the checks."""

    before: onnx.ModelProto
    after: onnx.ModelProto
    report: Any  # surgery.Report
    wall_s: float

    @property
    def bitwise_equal(self) -> bool:
        return bitwise_equal(self.report)

    def to_json(self) -> dict[str, Any]:
        return {
            "bitwise_equal": self.bitwise_equal,
            "equivalent": bool(self.report.equivalent),
            "mode": self.report.mode,
            "max_abs_diff": max(float(o["max_abs_diff"]) for o in report_outputs(self.report)),
            "wall_s": self.wall_s,
        }


def report_outputs(report: Any) -> list[Mapping[str, Any]]:
    """A `surgery.Report`'s per-output comparisons in their JSON form."""
    return report.to_json()["outputs"]


def bitwise_equal(report: Any) -> bool:
    """Whether a `surgery.Report` compared at least one output and found every one bitwise equal."""
    outputs = report_outputs(report)
    return bool(outputs) and all(o["bitwise_equal"] for o in outputs)


def widen_keras(
    model: keras.Model,
    plan: Mapping[str, int],
    *,
    init: str = "output-zero",
    seed: int = 0,
    verify_inputs: Mapping[str, np.ndarray] | None = None,
) -> tuple[keras.Model, Surgery]:
    """Grow a trained Keras model through the toolkit: export → widen → verify → to_keras.

    The ONNX models are compared with onnxruntime (CPU, graph optimizations disabled) on
    `verify_inputs` (random inputs when None). The returned Keras model is uncompiled; build
    it inside the strategy's scope by calling this there.
    """
    import surgery

    start = time.perf_counter()
    before = surgery.export_keras(model)
    after = surgery.widen(before, dict(plan), init=init, seed=seed, allow_output_change=init == "all-random")
    report = surgery.verify(before, after, inputs=verify_inputs, seed=seed)
    grown = surgery.to_keras(after, seed=seed)
    return grown, Surgery(before, after, report, time.perf_counter() - start)


def test_inputs(x: np.ndarray, count: int = 256) -> dict[str, np.ndarray]:
    """The first `count` test images as the exported models' input feed."""
    from training.models import INPUT_NAME

    return {INPUT_NAME: np.ascontiguousarray(x[:count], dtype=np.float32)}


def write_results(out: Path, results: Mapping[str, Any]) -> Path:
    """Write `results` as ``out/results.json`` (pretty, keys in insertion order)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return path


def publish(
    out: Path, name: str, results: dict[str, Any], draw: Callable[[Path], None], report: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Draw ``out/NAME.png``, write ``out/results.json`` (naming the plot), print the tables."""
    out.mkdir(parents=True, exist_ok=True)
    plot = out / f"{name}.png"
    draw(plot)
    results["plots"] = [str(plot)]
    write_results(out, results)
    print(report(results))
    print(f"\nplot: {plot}\nresults: {out / 'results.json'}")
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def header(experiment: str, *, data: Mapping[str, Any], seeds: Sequence[int], quick: bool) -> dict[str, Any]:
    """The provenance every results.json starts with."""
    return {
        "experiment": experiment,
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d"),
        "quick": quick,
        "seeds": list(seeds),
        "data": dict(data),
        "versions": library_versions(),
        "replicas": strategy().num_replicas_in_sync,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain monospace table (pasteable into Markdown as a code block)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, *, dpi: int = 80, **legend: Any) -> None:
    """Grid and a legend (matplotlib's legend keywords; fontsize 8 unless given) on every axis that
    has labelled artists, then lay the figure out, write it to `path` and close it."""
    legend = {"fontsize": 8} | legend
    for axis in figure.axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[1]:
            axis.legend(**legend)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)


def quiet() -> None:
    """Keep TensorFlow's C++ start-up chatter off the terminal (set before it is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def bootstrap_ci(
    values: Sequence[float], *, statistic: Callable[[np.ndarray], float] = np.mean, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of `statistic` over `values` (resampled with replacement)."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return float(array.mean()), float(array.mean())
    picks = np.random.default_rng(seed).integers(0, len(array), size=(resamples, len(array)))
    estimates = np.array([statistic(array[row]) for row in picks])
    low, high = np.percentile(estimates, [2.5, 97.5])
    return float(low), float(high)


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation (ddof=1), bootstrap 95 % interval of the mean, min, max."""
    mean, sd = mean_spread(values)
    return {
        "n": len(values),
        "mean": mean,
        "sd": sd,
        "ci95": list(bootstrap_ci(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


class ModelPool:
    """One compiled model per architecture, reused across runs.

    Building and compiling a Keras model and tracing its training step costs seconds per model
    (tens of seconds on a busy CPU), which dominates experiments that train hundreds of small
    models. `load` builds a model's compiled copy once per `key` and afterwards only copies a
    new model's weights into it and zeroes its optimizer's state (step counter and moments,
    exactly a fresh optimizer's), so every run still starts from the model it was given.
    """

    def __init__(self) -> None:
        self._models: dict[Any, keras.Model] = {}

    def load(self, key: Any, model: keras.Model, compile_model: Callable[[keras.Model], keras.Model]) -> keras.Model:
        """`model`'s weights in the pool's compiled model for `key` (`model` itself, compiled, the first time)."""
        pooled = self._models.get(key)
        if pooled is None:
            self._models[key] = pooled = compile_model(model)
            return pooled
        pooled.set_weights(model.get_weights())
        reset_optimizer(pooled)
        return pooled


def reset_optimizer(model: keras.Model) -> None:
    """Zero the optimizer's step counter and per-variable state (its learning rate is kept)."""
    for variable in model.optimizer.variables:
        if variable.name != "learning_rate":
            variable.assign(np.zeros(tuple(variable.shape), dtype=variable.dtype))
