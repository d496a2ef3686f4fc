"""Keras 3 → ONNX through tf2onnx, with the provenance a conversion back needs.

tf2onnx's `from_keras` fails on Keras 3 Sequential models, so the model is traced through a
`tf.function` (a fresh one per input signature) and converted with `from_function`.

The written model carries three metadata entries:

- ``surgery.keras_config``: the Keras architecture (`model.to_json()`), so that `to-keras` can
  restore layer types, names and training-only layers (Dropout, BatchNormalization, ...).
- ``surgery.layer_map``: Keras layer name → the ONNX node names that layer became.
- ``surgery.keras_inputs``: the ONNX input names, in the order of the Keras model's inputs.

TensorFlow and tf2onnx are imported inside the functions: the ONNX-only commands never pay
for them.
"""

from __future__ import annotations

import json
import re
import zipfile
from typing import TYPE_CHECKING

import numpy as np
import onnx

from surgery.errors import SurgeryError, first_line
from surgery.metadata import KERAS_CONFIG_KEY, KERAS_INPUTS_KEY, LAYER_MAP_KEY
from surgery.tensorflow_runtime import import_tensorflow

if TYPE_CHECKING:
    import keras

DEFAULT_OPSET = 17
#: tf2onnx 1.17 converts to opsets 13 … 18.
SUPPORTED_OPSETS = range(13, 19)


def load_keras(path: str, *, unsafe: bool = False) -> keras.Model:
    """Load a `.keras` (or `.h5`) file with Keras's safe mode unless `unsafe`.

    Safe mode refuses to deserialise Lambda layers' Python code; `unsafe=True` allows it and
    so runs whatever code the file carries.
    """
    from pathlib import Path

    file = Path(path)
    if not file.exists():
        raise SurgeryError(f"{file}: no such file")
    if file.is_dir():
        raise SurgeryError(f"{file}: is a directory, not a Keras model file")
    if file.suffix not in (".keras", ".h5"):
        raise SurgeryError(f"{file}: expected a .keras or .h5 Keras model file")
    if file.stat().st_size == 0:
        raise SurgeryError(f"{file}: empty file, not a Keras model")
    # Keras reports a damaged .keras archive as "File not found"; say what is wrong instead.
    if file.suffix == ".keras" and not zipfile.is_zipfile(file):
        raise SurgeryError(
            f"{file}: not a .keras file (a .keras file is a zip archive; this one is damaged or something else)"
        )
    import_tensorflow()
    import keras

    try:
        return keras.models.load_model(file, safe_mode=not unsafe, compile=False)
    except Exception as error:
        first = first_line(error)
        if "safe_mode" in first:
            raise SurgeryError(
                f"{file}: refused by Keras safe mode: the file carries Python code (a Lambda layer) that loading would run; "
                "if you trust the file, load it with {param}",
                param="unsafe",
            ) from None
        raise SurgeryError(f"{file}: cannot be loaded as a Keras model: {first}") from None


def layer_for_scope(scope: str, layer_names: set[str]) -> str | None:
    """The Keras layer a tf2onnx name-scope component belongs to.

    TensorFlow suffixes scopes with ``_<k>`` to keep them unique (``dense_1`` → ``dense_1_1``),
    so a scope names layer L when it is L itself or L followed by ``_<digits>``. When both
    readings exist (layers ``dense`` and ``dense_1``, scope ``dense_1``), the suffixed one wins:
    TensorFlow suffixes every scope that tf2onnx traces.
    """
    candidates = []
    for name in layer_names:
        if scope == name:
            candidates.append((1, name))
        elif scope.startswith(name + "_") and scope[len(name) + 1 :].isdigit():
            candidates.append((0, name))
    return min(candidates)[1] if candidates else None


def layer_map(proto: onnx.ModelProto, model: keras.Model) -> dict[str, list[str]]:
    """Keras layer name → ONNX node names made from it (by tf2onnx's name scopes)."""
    names = {layer.name for layer in model.layers}
    mapping: dict[str, list[str]] = {}
    for node in proto.graph.node:
        parts = node.name.split("/")
        for scope in parts[1:-1]:  # parts[0] is the model's own scope, the last the op's name
            layer = layer_for_scope(scope, names)
            if layer is not None:
                mapping.setdefault(layer, []).append(node.name)
                break
    return mapping


def _input_name(tensor, index: int, count: int) -> str:
    name = getattr(tensor, "name", "") or ""
    name = re.sub(r"[^A-Za-z0-9_]", "_", name.split(":")[0])
    if not name or name.startswith("keras_tensor"):
        return "input" if count == 1 else f"input_{index}"
    return name


def export_keras(model: keras.Model, *, opset: int = DEFAULT_OPSET, batch: int | None = None) -> onnx.ModelProto:
    """Convert a Keras 3 model to ONNX with provenance metadata (see the module docstring).

    Args:
        model: a built Keras 3 model (Sequential or functional).
        opset: ONNX opset, 13 to 18 (tf2onnx 1.17's range).
        batch: a fixed batch size; None keeps the batch dimension symbolic. tf2onnx writes a
            Dense as MatMul + Add for a symbolic batch and as Gemm for a fixed one.

    Example:
        >>> onnx_model = export_keras(keras.models.load_model("models/mlp.keras"))
    """
    tf = import_tensorflow()
    import tf2onnx

    if opset not in SUPPORTED_OPSETS:
        raise SurgeryError(
            f"{{param}} {opset} is not supported by tf2onnx (use {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1})",
            param="opset",
        )
    if batch is not None and batch < 1:
        raise SurgeryError(f"{{param}} must be at least 1, got {batch}", param="batch")
    inputs = list(model.inputs)
    names = [_input_name(t, i, len(inputs)) for i, t in enumerate(inputs)]
    signature = [
        tf.TensorSpec((batch, *t.shape[1:]), tf.as_dtype(t.dtype), name=name) for t, name in zip(inputs, names)
    ]
    if len(inputs) == 1:
        function = tf.function(lambda x: model(x, training=False))
    else:
        function = tf.function(lambda *xs: model(list(xs), training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    _rename_outputs(proto, len(model.outputs), list(getattr(model, "output_names", None) or []))
    meta = {
        KERAS_CONFIG_KEY: model.to_json(),
        LAYER_MAP_KEY: json.dumps(layer_map(proto, model), sort_keys=True),
        KERAS_INPUTS_KEY: json.dumps(names),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "surgery"
    onnx.checker.check_model(proto)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto


def _rename_outputs(proto: onnx.ModelProto, count: int, keras_names: list[str]) -> None:
    """tf2onnx calls outputs 'Identity:0'; name them after a functional model's outputs (so a model
    from `to-keras` keeps the ONNX output names it reproduces), or 'output' / 'output_<i>' (a
    Sequential model, or names that are not distinct or clash with a tensor of the graph)."""
    taken = {name for node in proto.graph.node for name in (*node.input, *node.output)}
    taken |= {i.name for i in proto.graph.input}
    own = len(keras_names) == len(set(keras_names)) == count and not taken & set(keras_names)
    for index, output in enumerate(proto.graph.output[:count]):
        new = keras_names[index] if own else "output" if count == 1 else f"output_{index}"
        old = output.name
        for node in proto.graph.node:
            node.output[:] = [new if o == old else o for o in node.output]
            node.input[:] = [new if i == old else i for i in node.input]
        output.name = new


def self_check(model: keras.Model, proto: onnx.ModelProto, *, batch: int = 4, seed: int = 0) -> float:
    """The Keras-vs-ONNX rule (`surgery.verification.keras_difference`) on one batch of random inputs.

    The batch has `batch` rows, or the ONNX model's fixed batch size when it has one.

    Returns max |keras − onnxruntime| / max(1, max |keras output|) over the outputs; raises
    SurgeryError when it exceeds KERAS_TOLERANCE. onnxruntime runs through the toolkit's one
    session factory (`surgery.verification.runtime.session`).
    """
    from surgery.verification import KERAS_TOLERANCE, keras_difference, session

    rng = np.random.default_rng(seed)
    feeds = {}
    keras_inputs = []
    for tensor, onnx_input in zip(model.inputs, proto.graph.input):
        shape = [batch if d is None else d for d in tensor.shape]
        leading = onnx_input.type.tensor_type.shape.dim[:1]
        if leading and leading[0].HasField("dim_value"):  # exported with --batch N: run N rows
            shape[0] = leading[0].dim_value
        x = rng.random(shape, dtype=np.float32) if "float" in str(tensor.dtype) else rng.integers(0, 2, shape)
        x = x.astype(np.dtype(str(tensor.dtype)))
        feeds[onnx_input.name] = x
        keras_inputs.append(x)
    expected = model(keras_inputs if len(keras_inputs) > 1 else keras_inputs[0], training=False)
    expected = [np.asarray(e) for e in (expected if isinstance(expected, (list, tuple)) else [expected])]
    got = session(proto, label="the exported model").run(None, feeds)
    worst = keras_difference(expected, got)
    if worst > KERAS_TOLERANCE:
        raise SurgeryError(f"export self-check failed: ONNX differs from Keras by {worst:.3g} (> {KERAS_TOLERANCE:g})")
    return worst
