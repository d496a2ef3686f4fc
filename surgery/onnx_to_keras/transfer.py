"""Transfer-learning edits on a converted model: a new head, fresh weights, frozen layers.

Applied in that order, after every name was resolved (a wrong name changes nothing):

- ``head``: the final Dense (the last Dense on the path to the single output) is replaced by a
  new one with ``units`` outputs and the same configuration (activation, initializers,
  regularizers, name); the layers after it (an Activation, a Dropout) stay. Its weights are
  fresh, drawn from its own initializers with a seed derived from ``seed``.
- ``reinit``: every weight of each named layer is redrawn from the layer's own initializer
  (``kernel_initializer``, ``bias_initializer``, ``gamma_initializer``, ...) with a seed
  derived from ``seed`` and the layer's position, so the same call gives the same weights.
- ``freeze``: the named layers get ``trainable = False``.

Names are Keras layer names or the ONNX node names the layers came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches
from typing import TYPE_CHECKING

import numpy as np

from surgery.errors import SurgeryError, first_line

if TYPE_CHECKING:
    import keras


def resolve(model: keras.Model, names: Sequence[str], node_layers: dict[str, str], flag: str) -> list[str]:
    """Keras layer names for `names` (layer or ONNX node names); SurgeryError suggests close ones."""
    layer_names = [layer.name for layer in model.layers]
    resolved = []
    for name in names:
        if name in layer_names:
            resolved.append(name)
        elif name in node_layers:
            resolved.append(node_layers[name])
        else:
            candidates = [layer.name for layer in model.layers if layer.weights] or layer_names
            close = get_close_matches(name, list(dict.fromkeys(candidates + list(node_layers))), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"layers with weights: {', '.join(candidates)}"
            raise SurgeryError(f"{flag} {name}: no such layer; {hint}")
    return resolved


#: Seed-stream tag of the new head's weights (the others use the layer's position).
_HEAD = 0xFFFF


def _derived_seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0] & 0x7FFFFFFF)


def _seeded(initializer, seed: int):
    """The same initializer with a fixed seed (initializers without randomness are returned as is)."""
    import keras

    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if "seed" not in config:
        return initializer
    return type(initializer).from_config({**config, "seed": seed})


def final_dense(config: dict) -> str:
    """Name of the last Dense before the output (from `get_config()`).

    With several outputs, the one output whose path back (through single-input layers) reaches a
    Dense decides; an output that reaches none (a pooled feature tap) is not a head.
    """
    layers = {entry["config"]["name"]: entry for entry in config["layers"]}
    if "output_layers" not in config:  # Sequential
        for entry in reversed(config["layers"]):
            if entry["class_name"] == "Dense":
                return entry["config"]["name"]
        raise SurgeryError("--head: the model has no Dense layer to replace")
    outputs = config["output_layers"]
    outputs = [outputs] if outputs and isinstance(outputs[0], str) else outputs
    heads = []
    for output in outputs:
        name = output[0]
        while layers[name]["class_name"] != "Dense":
            sources = inbound_layers(layers[name])
            if len(sources) != 1:
                break
            name = sources[0]
        else:
            heads.append(name)
    if len(set(heads)) != 1:
        found = f"Dense layers {', '.join(heads)} end" if heads else "no Dense layer ends"
        raise SurgeryError(f"--head: {found} the model's outputs; a new head needs exactly one")
    return heads[0]


def inbound_layers(entry: dict) -> list[str]:
    """Names of the layers whose outputs a functional model's layer `entry` (from its config)
    reads, in order, each once."""
    found: list[str] = []

    def walk(item) -> None:
        if isinstance(item, dict):
            history = (
                item.get("config", {}).get("keras_history") if item.get("class_name") == "__keras_tensor__" else None
            )
            if history:
                found.append(history[0])
            for sub in item.values():
                walk(sub)
        elif isinstance(item, (list, tuple)):  # get_config() keeps call arguments as tuples
            for sub in item:
                walk(sub)

    walk(entry.get("inbound_nodes", []))
    return list(dict.fromkeys(found))


def replace_head(model: keras.Model, units: int, seed: int) -> keras.Model:
    """A copy of `model` whose final Dense has `units` outputs and fresh weights (others copied)."""
    if units < 1:
        raise SurgeryError(f"--head must be at least 1, got {units}")
    config = model.get_config()
    head = final_dense(config)
    for entry in config["layers"]:
        entry.pop("build_config", None)  # layers after the head build for its new width
        if entry["config"]["name"] == head:
            cfg = entry["config"]
            cfg["units"] = units
            for index, key in enumerate(("kernel_initializer", "bias_initializer")):
                init = cfg.get(key)
                if isinstance(init, dict) and "seed" in init.get("config", {}):
                    init["config"]["seed"] = _derived_seed(seed, _HEAD, index)
    try:
        rebuilt = type(model).from_config(config)
    except Exception as error:
        raise SurgeryError(
            f"--head {units}: the layers after {head!r} do not accept a new width: {first_line(error)}"
        ) from None
    for layer in rebuilt.layers:
        if layer.name != head and layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt


def reinitialise(model: keras.Model, names: Sequence[str], seed: int) -> None:
    """Redraw every weight of the named layers from the layer's own initializers."""
    positions = {layer.name: i for i, layer in enumerate(model.layers)}
    for name in names:
        layer = model.get_layer(name)
        if not layer.weights:
            raise SurgeryError(f"--reinit {name}: layer has no weights")
        for index, variable in enumerate(layer.weights):
            initializer = getattr(layer, f"{variable.name}_initializer", None)
            if initializer is None:
                raise SurgeryError(f"--reinit {name}: weight {variable.name!r} has no initializer to draw from")
            fresh = _seeded(initializer, _derived_seed(seed, positions[name], index))
            variable.assign(fresh(tuple(variable.shape), dtype=variable.dtype))


def freeze(model: keras.Model, names: Sequence[str]) -> None:
    for name in names:
        model.get_layer(name).trainable = False
