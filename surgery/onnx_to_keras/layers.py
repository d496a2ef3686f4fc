"""The two Keras layers of the generic path, registered so a `.keras` file loads in safe mode.

``import surgery`` (or ``import surgery.onnx_to_keras``) registers them under the package name
``surgery``; ``keras.models.load_model(path, safe_mode=True)`` then rebuilds them without any
Lambda or Python code in the file:

- `OnnxOp`: one ONNX node computed by its function in `surgery.onnx_to_keras.generic`. Computed
  inputs arrive as the layer's inputs; constant inputs that are not parameters (shape targets,
  axes, scalars such as GELU's ½ and √2) live in the layer's config. ``shape_hints`` carries the
  static dimensions ONNX shape inference knows, so layers downstream build with known widths
  even where the computation goes through a run-time shape.
- `OnnxParameter`: one ONNX parameter (a float initializer read by more than one node, or by a
  node without a friendly Keras layer) as a trainable weight; it outputs the weight, whatever
  tensor it is called on.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from surgery.onnx_to_keras.generic import OPS, Attrs


def encode_array(array: np.ndarray) -> dict:
    """A JSON-safe form of a small constant (dtype, shape, flat values)."""
    array = np.asarray(array)
    return {"dtype": array.dtype.name, "shape": list(array.shape), "values": array.reshape(-1).tolist()}


def decode_array(data: dict) -> np.ndarray:
    return np.asarray(data["values"], dtype=data["dtype"]).reshape(data["shape"])


@keras.saving.register_keras_serializable(package="surgery")
class OnnxOp(keras.layers.Layer):
    """One ONNX node over `keras.ops` (see the module docstring).

    Args:
        op_type: the ONNX op, a key of `surgery.onnx_to_keras.generic.OPS`.
        attributes: the node's attributes as JSON values (tensors encoded by `encode_array`).
        constants: input position (as a string) → encoded constant array.
        arity: the node's number of inputs (omitted optional inputs included).
        outputs: how many outputs the node has.
        shape_hints: per output, the static shape ONNX shape inference gives (None: unknown).
        output_dtypes: per output, the ONNX element type (a float one means the compute dtype).
            With every output's shape and type known, Keras takes them as the output spec
            instead of tracing the op (tracing every op would make a conversion slow).
        opset: the default-domain opset of the graph.
    """

    def __init__(
        self,
        op_type: str,
        attributes: dict,
        constants: dict,
        arity: int,
        outputs: int = 1,
        shape_hints: list | None = None,
        output_dtypes: list | None = None,
        opset: int = 17,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.op_type = op_type
        self.attributes = attributes
        self.constants = constants
        self.arity = arity
        self.outputs = outputs
        self.shape_hints = shape_hints
        self.output_dtypes = output_dtypes
        self.opset = opset
        self._arrays = {int(i): decode_array(c) for i, c in constants.items()}
        self._attrs = {k: decode_array(v) if isinstance(v, dict) else v for k, v in attributes.items()}

    def call(self, inputs):
        tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        values: list[Any] = []
        for position in range(self.arity):
            if position in self._arrays:
                array = self._arrays[position]
                values.append(array.astype(self.compute_dtype) if array.dtype.kind == "f" else array)
            else:
                values.append(tensors.pop(0) if tensors else None)
        extra = {"__op__": self.op_type, "__opset__": self.opset, "__outputs__": self.outputs}
        result = OPS[self.op_type](values, Attrs({**self._attrs, **extra}, self.compute_dtype))
        if self.outputs == 1:
            return result[0] if isinstance(result, tuple) else result
        return list(result)

    def compute_output_spec(self, inputs):
        hints, dtypes = self.shape_hints, self.output_dtypes
        if hints and dtypes and all(h is not None for h in hints):
            specs = [
                keras.KerasTensor(tuple(h), dtype=self.compute_dtype if np.dtype(d).kind == "f" else d)
                for h, d in zip(hints, dtypes)
            ]
            return specs if self.outputs > 1 else specs[0]
        spec = super().compute_output_spec(inputs)
        if not self.shape_hints:
            return spec
        specs = spec if isinstance(spec, (list, tuple)) else [spec]
        merged = [_merge(s, hint) for s, hint in zip(specs, self.shape_hints)]
        return merged if isinstance(spec, (list, tuple)) else merged[0]

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "op_type": self.op_type,
            "attributes": self.attributes,
            "constants": self.constants,
            "arity": self.arity,
            "outputs": self.outputs,
            "shape_hints": self.shape_hints,
            "output_dtypes": self.output_dtypes,
            "opset": self.opset,
        }


def _merge(spec, hint: list | None):
    """The traced spec with the dimensions it left unknown filled from ONNX shape inference."""
    if hint is None or len(hint) != len(spec.shape):
        return spec
    shape = tuple(s if s is not None else h for s, h in zip(spec.shape, hint))
    return keras.KerasTensor(shape, dtype=spec.dtype)


@keras.saving.register_keras_serializable(package="surgery")
class OnnxParameter(keras.layers.Layer):
    """A trainable ONNX parameter of shape `shape`; calling it on any tensor gives the weight."""

    def __init__(self, shape: list[int], **kwargs):
        super().__init__(**kwargs)
        self.shape = list(shape)
        self.value = self.add_weight(name="value", shape=tuple(self.shape), initializer="zeros", trainable=True)

    def call(self, inputs):
        return keras.ops.cast(self.value, self.compute_dtype)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(tuple(self.shape), dtype=self.compute_dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": self.shape}
