"""Keras 3 builders for the reference models and the experiments' models.

Every layer has a name the toolkit's users will type (``surgery widen --layer dense_1``,
``to_keras(freeze=['hidden1'])``), inputs are 28×28 MNIST images named ``image``, and none of
the builders compiles: training code picks the optimizer (under its `tf.distribute` strategy).

Seed the weights with ``keras.utils.set_random_seed(seed)`` before calling a builder.

Example:
    >>> keras.utils.set_random_seed(0)
    >>> model = mlp()                       # Flatten → dense_1 (128, relu) → dense_2 (10, softmax)
    >>> [layer.name for layer in model.layers]
    ['image', 'flatten', 'dense_1', 'dense_2']
"""

from __future__ import annotations

import math
from collections.abc import Collection

import keras

#: MNIST image shape and the Keras input name (it becomes the ONNX input name on export).
IMAGE_SHAPE = (28, 28)
INPUT_NAME = "image"
#: The deep transfer net's hidden widths (the seed notebook's 200-50-50-50).
TRANSFER_WIDTHS = (200, 50, 50, 50)


def _image_input() -> keras.KerasTensor:
    return keras.Input(shape=IMAGE_SHAPE, name=INPUT_NAME)


def mlp(units: int = 128, *, classes: int = 10, activation: str = "relu", name: str = "mlp") -> keras.Model:
    """``Flatten → Dense(units, activation, 'dense_1') → Dense(classes, softmax, 'dense_2')`` (ReLU unless told).

    The reference MLP (``units=128``) and the grow experiment's model (``units=1`` grown to 2,
    or 16 grown to 128) are this one builder: widening ``dense_1`` through the toolkit turns
    one into the other.

    Example:
        >>> mlp(1).get_layer("dense_1").units
        1
    """
    if units < 1:
        raise ValueError(f"units must be at least 1, got {units}")
    image = _image_input()
    x = keras.layers.Flatten(name="flatten")(image)
    x = keras.layers.Dense(units, activation=activation, name="dense_1")(x)
    probabilities = keras.layers.Dense(classes, activation="softmax", name="dense_2")(x)
    return keras.Model(image, probabilities, name=name)


def transfer_net(
    *,
    classes: int = 5,
    widths: tuple[int, ...] = TRANSFER_WIDTHS,
    dropout: float = 0.5,
    momentum: float = 0.9,
    name: str = "transfer",
) -> keras.Model:
    """The seed notebook's deep net for the digits 0–4 → 5–9 transfer study.

    ``momentum=1.0`` keeps BatchNormalization's moving statistics at their initial values
    (mean 0, variance 1) for ever — what the seed's TF1 code did by never running the update
    ops — so the transfer study can measure that effect.

    ``Flatten → Dropout(0.5, 'input_dropout')``, then for each width ``w`` (200, 50, 50, 50) and
    ``i = 1..4``: ``Dense(w, He normal, 'hidden<i>') → BatchNormalization(momentum 0.9, 'bn<i>')
    → ELU ('elu<i>') → Dropout(0.5, 'dropout<i>')``, then ``Dense(classes, softmax, 'output')``.

    Example:
        >>> net = transfer_net()
        >>> [net.get_layer(f"hidden{i}").units for i in range(1, 5)], net.output.shape
        ([200, 50, 50, 50], (None, 5))
    """
    image = _image_input()
    x = keras.layers.Flatten(name="flatten")(image)
    x = keras.layers.Dropout(dropout, name="input_dropout")(x)
    for index, width in enumerate(widths, start=1):
        x = keras.layers.Dense(width, kernel_initializer="he_normal", name=f"hidden{index}")(x)
        x = keras.layers.BatchNormalization(momentum=momentum, name=f"bn{index}")(x)
        x = keras.layers.Activation("elu", name=f"elu{index}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{index}")(x)
    probabilities = keras.layers.Dense(classes, activation="softmax", name="output")(x)
    return keras.Model(image, probabilities, name=name)


def symmetry_net(
    hidden: int,
    zero: Collection[str] = (),
    *,
    units: int = 64,
    activation: str = "relu",
    classes: int = 10,
    name: str | None = None,
) -> keras.Model:
    """The weight-symmetry study's MLP: `hidden` hidden Dense layers, then the softmax output.

    Layers are ``hidden1``, ``hidden2``, … and ``output``; the ones named in `zero` get
    ``Constant(0)`` kernels (biases are zero in every layer, as Keras does by default), the
    others Glorot-uniform kernels. ``hidden=1`` is the study's 2-layer model, ``hidden=2``
    its 3-layer model.

    Example:
        >>> net = symmetry_net(1, zero={"hidden1"})      # 2-layer model, first kernel all zero
        >>> float(abs(net.get_layer("hidden1").kernel.numpy()).max())
        0.0
    """
    names = [f"hidden{i}" for i in range(1, hidden + 1)] + ["output"]
    unknown = set(zero) - set(names)
    if unknown:
        raise ValueError(f"zero names unknown layers {sorted(unknown)}; layers are {names}")
    image = _image_input()
    x = keras.layers.Flatten(name="flatten")(image)
    for layer in names:
        last = layer == "output"
        x = keras.layers.Dense(
            classes if last else units,
            activation="softmax" if last else activation,
            kernel_initializer=keras.initializers.Constant(0.0) if layer in zero else "glorot_uniform",
            name=layer,
        )(x)
    label = "-".join(sorted(zero)) or "none"
    return keras.Model(image, x, name=name or f"sym{hidden + 1}_{label}")


def parameter_count(model: keras.Model) -> int:
    """Trainable parameters (the 'parameters' in the compute measure epochs × parameters)."""
    return int(sum(math.prod(weight.shape) for weight in model.trainable_weights))
