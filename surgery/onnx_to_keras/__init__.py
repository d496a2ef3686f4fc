"""ONNX → a trainable Keras 3 model: real layers whose weights are variables, never constants.

Two routes, picked by the model's metadata:

- a model written by `surgery export` carries its Keras architecture (``surgery.keras_config``):
  it is rebuilt from it at the widths the graph now has (`provenance`); when that architecture
  has layers whose weights cannot be located in the graph, it is rebuilt op by op instead;
- any other graph (PyTorch classic and dynamo exports, tf2onnx, skl2onnx, hand-built) is rebuilt
  op by op (`foreign`: friendly Keras layers where a pattern is recognised, registered generic
  layers for the rest; docs/to-keras-models.md).

`transfer` then applies ``head``, ``reinit`` and ``freeze``. `check_faithful` compares the Keras
model with onnxruntime on `sample_inputs`; `dropped_outputs` names the outputs a conversion
leaves out. TensorFlow and Keras are imported only when a function runs.

Example:
    >>> from surgery.onnx_to_keras import to_keras, check_faithful
    >>> keras_model = to_keras(onnx_model, freeze=["hidden1"], reinit=["hidden2"], head=5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError, first_line
from surgery.graph import ModelLike, as_ir
from surgery.metadata import KERAS_CONFIG_KEY
from surgery.onnx_to_keras.foreign import SUPPORTED_OPS, Conversion, convert_graph

if TYPE_CHECKING:
    import keras

#: Largest accepted max |keras − onnxruntime| divided by max(1, max |onnxruntime output|).
FAITHFUL_TOLERANCE = 1e-5

__all__ = [
    "FAITHFUL_TOLERANCE",
    "SUPPORTED_OPS",
    "Conversion",
    "check_faithful",
    "convert",
    "dropped_outputs",
    "sample_inputs",
    "to_keras",
]


def convert(
    model: ModelLike, *, freeze: Sequence[str] = (), reinit: Sequence[str] = (), head: int | None = None, seed: int = 0
) -> Conversion:
    """`to_keras` with what a caller may want to report: the route taken, notes, kept outputs."""
    from surgery.onnx_to_keras import transfer

    ir_model = as_ir(model)
    if KERAS_CONFIG_KEY in ir_model.metadata_props:
        from surgery.onnx_to_keras.provenance import UnlocatedWeights, convert_exported

        try:
            conversion = convert_exported(ir_model)
        except UnlocatedWeights as error:
            conversion = convert_graph(ir_model)
            conversion.notes.append(f"rebuilt from its ONNX ops, not its recorded Keras architecture: {error}")
    else:
        conversion = convert_graph(ir_model)
    keras_model = conversion.model
    frozen = transfer.resolve(keras_model, freeze, conversion.node_layers, "--freeze")
    fresh = transfer.resolve(keras_model, reinit, conversion.node_layers, "--reinit")
    if head is not None:
        keras_model = transfer.replace_head(keras_model, head, seed)
    transfer.reinitialise(keras_model, fresh, seed)
    transfer.freeze(keras_model, frozen)
    conversion.model = keras_model
    return conversion


def to_keras(
    model: ModelLike, *, freeze: Sequence[str] = (), reinit: Sequence[str] = (), head: int | None = None, seed: int = 0
) -> keras.Model:
    """A trainable Keras 3 model computing what the ONNX `model` computes.

    Args:
        model: an `onnx.ModelProto` or `onnx_ir.Model` (a widened one included).
        freeze: layers (Keras names, or the ONNX node names they came from) to make non-trainable.
        reinit: layers whose weights are redrawn from their initializers.
        head: replace the final Dense with a fresh one of this many units (same activation).
        seed: seeds every redrawn weight (reinit and head).

    Raises:
        SurgeryError: an unsupported op (named with its node), an unknown layer name, or
            weights that cannot be located.

    Example:
        >>> keras_model = to_keras(onnx.load("widened.onnx"))
        >>> keras_model.fit(x, y, epochs=1)
    """
    return convert(model, freeze=freeze, reinit=reinit, head=head, seed=seed).model


def _index_bound(value: ir.Value) -> int:
    """Exclusive upper bound for random values of an integer input: the smallest table a Gather
    indexes with it (looking through Cast, Reshape, Unsqueeze, Squeeze, Flatten, Identity); 2 when
    it indexes none (a mask)."""
    bounds, stack, seen = [], [value], set()
    while stack:
        current = stack.pop()
        for use in current.uses():
            node = use.node
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity") and use.idx == 0:
                stack.extend(node.outputs)
            elif node.op_type == "Gather" and use.idx == 1 and node.inputs[0] is not None:
                shape = node.inputs[0].shape
                axis = node.attributes["axis"].value if "axis" in node.attributes else 0
                if shape is not None and isinstance(shape[axis], int):
                    bounds.append(shape[axis])
    return min(bounds) if bounds else 2


def sample_inputs(
    model: ModelLike, *, batch: int = 3, sequence: int = 7, dims: dict[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for the ONNX graph `model`, by input name.

    A symbolic or unknown dimension takes `dims[name]` when given, else `batch` in position 0 and
    `sequence` elsewhere (equal names share a value), so a check runs at lengths other than the
    traced ones. Floats are standard normal; integers lie in [0, the smallest table a Gather
    indexes with them) — token ids — or {0, 1}; booleans are random.
    """
    ir_model = as_ir(model)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for value in ir_model.graph.inputs:
        if value.const_value is not None:
            continue
        shape = []
        for position, dim in enumerate(value.shape or []):
            default = batch if position == 0 else sequence
            shape.append(dim if isinstance(dim, int) else (dims or {}).get(getattr(dim, "value", None), default))
        dtype = value.dtype.numpy()
        if dtype.kind == "f":
            arrays[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            arrays[value.name] = rng.integers(0, _index_bound(value), shape).astype(dtype)
    return arrays


def check_faithful(
    keras_model: keras.Model,
    onnx_model: ModelLike,
    *,
    outputs: Sequence[str] | None = None,
    batch: int = 3,
    sequence: int = 7,
    dims: dict[str, int] | None = None,
    seed: int = 0,
) -> float:
    """Max |keras − onnxruntime| over the outputs on random inputs (`sample_inputs`), scaled by the output.

    The difference of each output is divided by max(1, max |onnxruntime output|); the worst is
    returned. `outputs` names the ONNX outputs the Keras model reproduces, in its order
    (default: every output but the dropped class labels). Both models read the same arrays:
    the Keras model takes its inputs in the ONNX graph's order and layout.
    """
    import onnxruntime as ort

    proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else ir.serde.serialize_model(onnx_model)
    ir_model = as_ir(onnx_model)
    feeds = sample_inputs(ir_model, batch=batch, sequence=sequence, dims=dims, seed=seed)
    if len(feeds) != len(keras_model.inputs):
        raise SurgeryError(f"the Keras model has {len(keras_model.inputs)} inputs, the ONNX graph {len(feeds)}")
    if outputs is None:
        dropped = set(dropped_outputs(ir_model))
        outputs = [v.name for v in ir_model.graph.outputs if v.name not in dropped]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # onnxruntime's warnings would add lines to the command's stderr
    folder = _external_data_folder(ir_model)
    if folder is not None:  # a model read from bytes finds its external data here, not in the working directory
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    try:
        expected = session.run(list(outputs), feeds)
    except Exception as error:
        raise SurgeryError(f"the ONNX model cannot run on sample inputs: {first_line(error)}") from None
    arrays = list(feeds.values())
    try:
        got = keras_model(arrays if len(arrays) > 1 else arrays[0], training=False)
    except ValueError as error:  # an input the graph declares but its Keras architecture does not accept
        raise SurgeryError(f"the Keras model does not accept the ONNX model's inputs: {first_line(error)}") from None
    got = [np.asarray(g) for g in (got if isinstance(got, (list, tuple)) else [got])]
    if len(got) != len(expected):
        raise SurgeryError(f"the Keras model has {len(got)} outputs, {len(expected)} expected ({', '.join(outputs)})")
    worst = 0.0
    for name, e, g in zip(outputs, expected, got):
        if e.shape != g.shape:
            raise SurgeryError(f"output {name!r}: Keras gives shape {g.shape}, onnxruntime {e.shape}")
        if e.size:
            e64 = e.astype(np.float64)
            scale = max(1.0, float(np.max(np.abs(e64))))
            worst = max(worst, float(np.max(np.abs(e64 - g.astype(np.float64)))) / scale)
    return worst


def _external_data_folder(model: ir.Model) -> str | None:
    """The folder the model's external data lives in, when it has any."""
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            return str(value.const_value.base_dir)
    return None


def dropped_outputs(model: ModelLike) -> list[str]:
    """Names of the ONNX outputs `to_keras` leaves out (integer class labels computed through
    ArgMax, skl2onnx's ``label``); every other output keeps its name as a Keras output name.
    No TensorFlow import: `verify` reads it to report such an output instead of a mismatch."""
    from surgery.onnx_to_keras.plan import dropped_outputs as from_plan

    return from_plan(as_ir(model))
