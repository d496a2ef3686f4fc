"""ONNX → a trainable Keras 3 model: real layers whose weights are variables, never constants.

Two routes, picked by the model's metadata:

- a model written by `surgery export` carries its Keras architecture (``surgery.keras_config``):
  it is rebuilt from it at the widths the graph now has (`provenance`);
- any other graph (PyTorch's exporter, skl2onnx, hand-built) is rebuilt op by op (`foreign`).

`transfer` then applies ``head``, ``reinit`` and ``freeze``. `check_faithful` compares the Keras
model with onnxruntime. TensorFlow and Keras are imported only when a function runs.

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

__all__ = ["FAITHFUL_TOLERANCE", "SUPPORTED_OPS", "Conversion", "check_faithful", "convert", "to_keras"]


def convert(
    model: ModelLike, *, freeze: Sequence[str] = (), reinit: Sequence[str] = (), head: int | None = None, seed: int = 0
) -> Conversion:
    """`to_keras` with what a caller may want to report: the route taken, notes, kept outputs."""
    from surgery.onnx_to_keras import transfer

    ir_model = as_ir(model)
    if KERAS_CONFIG_KEY in ir_model.metadata_props:
        from surgery.onnx_to_keras.provenance import convert_exported

        conversion = convert_exported(ir_model)
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
) -> "keras.Model":
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


def check_faithful(
    keras_model: "keras.Model",
    onnx_model: ModelLike,
    *,
    outputs: Sequence[str] | None = None,
    batch: int = 4,
    seed: int = 0,
) -> float:
    """Max |keras − onnxruntime| over the outputs on random normal inputs, scaled by the output.

    The difference of each output is divided by max(1, max |onnxruntime output|); the worst is
    returned. `outputs` names the ONNX outputs the Keras model reproduces, in its order
    (default: every floating-point output). Both models read the same arrays: the Keras model
    takes its inputs in the ONNX graph's layout.
    """
    from surgery.verification import session as runtime_session

    proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else ir.serde.serialize_model(onnx_model)
    graph_inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(graph_inputs) != len(keras_model.inputs):
        raise SurgeryError(f"the Keras model has {len(keras_model.inputs)} inputs, the ONNX graph {len(graph_inputs)}")
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in keras_model.inputs:
        if any(d is None for d in tensor.shape[1:]):
            raise SurgeryError(f"input {tensor.name!r} has unknown dimensions {tuple(tensor.shape)}; cannot draw test inputs")
        arrays.append(rng.standard_normal((batch, *tensor.shape[1:])).astype(np.float32))
    if outputs is None:
        float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
        outputs = [o.name for o in proto.graph.output if o.type.tensor_type.elem_type in float_types]
    # The toolkit's one session factory: an ir.Model's external data is read from its own folder.
    session = runtime_session(onnx_model, label="the ONNX model")
    try:
        expected = session.run(list(outputs), {i.name: a for i, a in zip(graph_inputs, arrays)})
    except Exception as error:  # inputs drawn for the Keras model that the ONNX graph does not take
        raise SurgeryError(f"the ONNX model cannot run on the Keras model's inputs: {first_line(error)}") from None
    got = keras_model(arrays if len(arrays) > 1 else arrays[0], training=False)
    got = [np.asarray(g) for g in (got if isinstance(got, (list, tuple)) else [got])]
    if len(got) != len(expected):
        raise SurgeryError(f"the Keras model has {len(got)} outputs, {len(expected)} expected ({', '.join(outputs)})")
    worst = 0.0
    for name, e, g in zip(outputs, expected, got):
        if e.shape != g.shape:
            raise SurgeryError(f"output {name!r}: Keras gives shape {g.shape}, onnxruntime {e.shape}")
        if e.size:
            scale = max(1.0, float(np.max(np.abs(e))))
            worst = max(worst, float(np.max(np.abs(e.astype(np.float64) - g))) / scale)
    return worst
