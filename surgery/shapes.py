"""The ONNX checker and shape inference, run on a weight-less view of a model: the one place both run.

onnx's C++ checker and shape inference take a serialized model. Handed a 650 MB export they
serialize and parse all of its weights, twice, although neither reads a weight (on GPT-2 small
that was 5 s of `inspect`'s 9). `weightless` is a copy of the model in which every initializer
that is external or holds more than `WEIGHT_BYTES` is a graph input of the same type and shape
instead; small initializers stay, since shape computations read them (Reshape targets, Slice
bounds, Split sizes). Its cost is that of copying the nodes.

- `check(proto)`: `onnx.checker.check_model` on the view.
- `infer(proto, strict=..., data_prop=...)`: `onnx.shape_inference.infer_shapes` (types checked)
  on the view; strict raises on the first inconsistency, as onnxruntime would at load.
- `infer_missing_shapes(model)`: for an `ir.Model` (the width analysis needs ranks and static
  sizes): when some node output has no shape, runs `infer` (not strict, with data propagation)
  and copies every inferred shape and type onto the model's values, as onnx-ir's
  `ShapeInferencePass` does. Weights are neither read nor copied.
"""

from __future__ import annotations

import math

import onnx
import onnx_ir as ir

from surgery.inline import WEIGHT_BYTES, headers_only

_T = onnx.TensorProto


def _copy_fields(source, target, skip: str) -> None:
    """Copy every set field of protobuf message `source` into `target`, except field `skip`."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _is_weight(tensor: onnx.TensorProto) -> bool:
    """External, declared larger than WEIGHT_BYTES, or without data (left out by the loader).

    Decided from dims, type and field presence: the data itself is never read.
    """
    if tensor.data_location == _T.EXTERNAL:
        return True
    if tensor.data_type in (_T.STRING, _T.UNDEFINED) or tensor.data_type not in _T.DataType.values():
        return False
    count = math.prod(tensor.dims)
    if count * ir.DataType(tensor.data_type).bitwidth > 8 * WEIGHT_BYTES:
        return True
    typed = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
    return count > 0 and not tensor.HasField("raw_data") and not any(len(getattr(tensor, f)) for f in typed)


def weightless(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` whose main-graph weights (see `_is_weight`) are typed graph inputs."""
    view = onnx.ModelProto()
    _copy_fields(proto, view, skip="graph")
    graph = view.graph
    _copy_fields(proto.graph, graph, skip="initializer")
    inputs = {value.name for value in graph.input}
    for tensor in proto.graph.initializer:
        if not _is_weight(tensor):
            graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return view


def check(proto: onnx.ModelProto) -> None:
    """`onnx.checker.check_model` on the weight-less view; raises its errors."""
    onnx.checker.check_model(weightless(proto))


def infer(proto: onnx.ModelProto, *, strict: bool, data_prop: bool = False) -> onnx.ModelProto:
    """ONNX shape inference (types checked) on the weight-less view; returns the inferred view."""
    return onnx.shape_inference.infer_shapes(
        weightless(proto), check_type=True, strict_mode=strict, data_prop=data_prop
    )


def infer_missing_shapes(model: ir.Model) -> bool:
    """Fill in shapes and types (in place) when some node output has no shape; returns whether it ran.

    A failed inference leaves the model unchanged (the analysis then refuses what it cannot size).
    """
    if all(v.shape is not None for node in model.graph for v in node.outputs if v is not None):
        return False
    with headers_only(model, exact=False):
        proto = ir.serde.serialize_model(model)
    _weights_last(model)
    try:
        inferred = ir.serde.deserialize_model(infer(proto, strict=False, data_prop=True))
    except Exception:  # onnx raises InferenceError and ValidationError variants
        return True
    for original, found in zip(model.graphs(), inferred.graphs()):
        values = ir.convenience.create_value_mapping(found)
        for name, value in ir.convenience.create_value_mapping(original).items():
            other = values.get(name)
            if other is None:
                continue
            if other.shape is not None and value.shape != other.shape:
                value.shape = other.shape
            if other.dtype is not None and value.dtype != other.dtype:
                value.dtype = other.dtype
    return True


def _weights_last(model: ir.Model) -> None:
    """Move the initializers of more than WEIGHT_BYTES after the others, keeping their order.

    onnx-ir's `ShapeInferencePass`, which this module replaces, leaves them so (it takes them out
    for the inference and puts them back); doing the same keeps widened files byte-identical.
    """
    initializers = model.graph.initializers
    for value in [v for v in initializers.values() if v.const_value is None or v.const_value.nbytes > WEIGHT_BYTES]:
        initializers.pop(value.name)
        initializers.add(value)


__all__ = ["check", "infer", "infer_missing_shapes", "weightless"]
