"""Train and write the reference models in `models/`.

Run ``python -m training.make_reference_models`` (or ``make models``). It trains, on the
bundled MNIST subset (or ``--data mnist.npz``):

- ``mlp``: ``Flatten → Dense(128, relu, 'dense_1') → Dense(10, softmax, 'dense_2')``,
  all ten digits;
- ``transfer``: the deep transfer net (input dropout 0.5; hidden 200-50-50-50, He init,
  BatchNorm momentum 0.9, ELU, dropout 0.5; ``Dense(5, softmax, 'output')``) on digits 0–4,
  Adam 0.01, batch 100, 25 epochs — the pretraining step of the transfer study;

and writes each as ``.keras`` (no optimizer state) and ``.onnx`` (through
``surgery.export_keras``, checked against Keras with the export's self-check), plus
``MANIFEST.json`` with test accuracy, sha256 of each file and how it was made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

from training.runtime import quiet

quiet()

REFERENCE_SEED = 1234
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
#: name -> digits it is trained on, epochs, learning rate, batch size (the builder is `build(name)`)
RECIPES = {
    "mlp": dict(digits=tuple(range(10)), epochs=10, learning_rate=1e-3, batch_size=100),
    "transfer": dict(digits=tuple(range(5)), epochs=25, learning_rate=1e-2, batch_size=100),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(name: str):
    from training import models

    return models.mlp(128) if name == "mlp" else models.transfer_net(classes=5)


def make(name: str, data, out: Path, *, seed: int) -> dict:
    """Train one reference model, write NAME.keras and NAME.onnx, return its manifest entry."""
    import keras

    import surgery
    from surgery.export import self_check
    from training.data import digit_subset
    from training.runtime import compile_classifier, evaluate, strategy

    recipe = RECIPES[name]
    x_train, y_train = digit_subset(data.x_train, data.y_train, recipe["digits"])
    x_test, y_test = digit_subset(data.x_test, data.y_test, recipe["digits"])
    keras.utils.set_random_seed(seed)
    with strategy().scope():
        model = compile_classifier(build(name), learning_rate=recipe["learning_rate"])
    model.fit(x_train, y_train, epochs=recipe["epochs"], batch_size=recipe["batch_size"], shuffle=True, verbose=0)
    loss, accuracy = evaluate(model, x_test, y_test)

    # Saved uncompiled: the optimizer's slots would triple the file and users recompile anyway.
    plain = build(name)
    plain.set_weights(model.get_weights())
    keras_path, onnx_path = out / f"{name}.keras", out / f"{name}.onnx"
    plain.save(keras_path)
    proto = surgery.export_keras(plain)
    export_diff = self_check(plain, proto)
    surgery.save_model(proto, onnx_path, force=True)
    return {
        "description": plain.name,
        "task": f"digits {recipe['digits'][0]}-{recipe['digits'][-1]}"
        + (
            f" (labels {recipe['digits'][0]}-{recipe['digits'][-1]} -> 0-{len(recipe['digits']) - 1})"
            if recipe["digits"][0]
            else ""
        ),
        "test_accuracy": round(accuracy, 4),
        "test_loss": round(loss, 4),
        "test_samples": int(len(y_test)),
        "train_samples": int(len(y_train)),
        "parameters": int(plain.count_params()),
        "export_self_check_max_diff": export_diff,
        "files": {
            path.name: {"sha256": sha256(path), "bytes": path.stat().st_size} for path in (keras_path, onnx_path)
        },
        "training": {
            "epochs": recipe["epochs"],
            "optimizer": f"Adam(learning_rate={recipe['learning_rate']})",
            "batch_size": recipe["batch_size"],
            "loss": "sparse_categorical_crossentropy",
            "seed": seed,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.make_reference_models", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", help="a Keras-format mnist.npz (default: the bundled 5k subset)")
    parser.add_argument("--out", default=str(MODELS_DIR), help="output folder (default: models/)")
    parser.add_argument("--seed", type=int, default=REFERENCE_SEED)
    parser.add_argument("--only", choices=sorted(RECIPES), action="append", help="make only these models")
    args = parser.parse_args(argv)

    from surgery import SurgeryError
    from training.data import load_mnist
    from training.runtime import library_versions

    try:
        data = load_mnist(args.data)
    except SurgeryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    for name in args.only or sorted(RECIPES):
        entry = make(name, data, out, seed=args.seed)
        manifest["models"][name] = entry
        print(
            f"{name}: test accuracy {entry['test_accuracy']:.4f}, export self-check {entry['export_self_check_max_diff']:.2g}"
        )
    manifest.update(
        {
            "command": " ".join(
                ["python -m training.make_reference_models", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
            ),
            "data": data.describe(),
            "versions": library_versions(),
        }
    )
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
