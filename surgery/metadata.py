"""The `metadata_props` entries the toolkit writes and reads back; each holds JSON.

- ``surgery.keras_config``: the Keras architecture (`model.to_json()`), written by `surgery export`
  and read by `to-keras`.
- ``surgery.layer_map``: Keras layer name → the ONNX node names it became (export; read by
  `inspect` for friendly names and by `to-keras`).
- ``surgery.keras_inputs``: the ONNX input names, in the order of the Keras model's inputs (export).
- ``surgery.widen_history``: one record per widened layer per `widen` call.
- ``surgery.deepen_history``: one record per `deepen` call: the block or layer it followed, the
  names of the new ones, their kind, init, seed, node and parameter counts, and the output
  projections that start at zero.
- ``surgery.widened_tensors``: the new positions of every tensor a widening grew (written by
  `widen`, read by `verify --locate`).
"""

from __future__ import annotations

from collections.abc import Mapping

KERAS_CONFIG_KEY = "surgery.keras_config"
LAYER_MAP_KEY = "surgery.layer_map"
KERAS_INPUTS_KEY = "surgery.keras_inputs"
WIDEN_HISTORY_KEY = "surgery.widen_history"
WIDENED_TENSORS_KEY = "surgery.widened_tensors"
DEEPEN_HISTORY_KEY = "surgery.deepen_history"

#: Each entry and the JSON kind its readers expect (`surgery.validation` checks loaded files).
JSON_KINDS: Mapping[str, type] = {
    KERAS_CONFIG_KEY: dict,
    LAYER_MAP_KEY: dict,
    KERAS_INPUTS_KEY: list,
    WIDEN_HISTORY_KEY: list,
    WIDENED_TENSORS_KEY: dict,
    DEEPEN_HISTORY_KEY: list,
}
