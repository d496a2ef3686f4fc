"""The generic path: one small function over `keras.ops` per ONNX op (the op catalogue of to-keras).

Size: about 95 ops, a few lines each, kept in one table so that the supported-ops list
(`python -m surgery.onnx_to_keras.catalogue`) is read from one place.

`OPS[op_type](inputs, attrs)` computes an ONNX node's outputs from its inputs (tensors, or None
for an omitted optional input) with ONNX's semantics (opset 13 and later forms; the few ops
whose inputs moved from attributes read both). It runs inside the registered `OnnxOp` layer
(`surgery.onnx_to_keras.layers`), on the actual tensors, so every shape computation an
exporter writes (``Shape → Gather → Concat → Reshape``, ``Range``, ``Trilu``, ...) follows the
actual batch and sequence length.

Rules shared by every op:

- Floating-point values are computed in the layer's compute dtype (`Attrs.float`): a ``Cast``
  to a float type casts to it, so a mixed-precision policy applies to the whole graph.
- Integer division truncates toward zero (ONNX), not floor.
- Spatial ops (Conv, pools) run channels-last inside the function (TensorFlow's CPU kernels
  are NHWC only) and hand back NCHW.

`NO_GRADIENT_INPUTS` names, per op, the inputs no gradient flows through: shapes, sizes,
indices, axes, counts, a tensor whose shape alone is read, comparison operands and conditions. A
constant read only there is never a trainable parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: op_type → function(inputs, attrs) → a tensor or a tuple of tensors.
OPS: dict[str, Callable[[list, Attrs], Any]] = {}

#: op_type → input positions no gradient flows through (see the module docstring).
NO_GRADIENT_INPUTS: dict[str, frozenset[int]] = {
    "Shape": frozenset({0}),
    "Size": frozenset({0}),
    "Where": frozenset({0}),
    "ArgMax": frozenset({0}),
    "ArgMin": frozenset({0}),
    "IsNaN": frozenset({0}),
    "IsInf": frozenset({0}),
    "Sign": frozenset({0}),
    "Floor": frozenset({0}),
    "Ceil": frozenset({0}),
    "Round": frozenset({0}),
    **{op: frozenset({0, 1}) for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")},
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Split": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "Pad": frozenset({1, 3}),
    "Trilu": frozenset({1}),
    "CumSum": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "ReduceSumSquare": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "OneHot": frozenset({1}),
}


class Attrs:
    """A node's attributes (plain Python values) and the dtype floats are computed in."""

    def __init__(self, values: dict[str, Any], float_dtype: str = "float32"):
        self.values = values
        self.float = float_dtype

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


def op(*names: str):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _k():
    import keras

    return keras.ops


def _ints(value) -> list[int]:
    """A constant shape/axes input as Python ints (these are folded or embedded constants)."""
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _is_float(x) -> bool:
    import keras

    return keras.backend.standardize_dtype(x.dtype).startswith(("float", "bfloat"))


def _dtype(x) -> str:
    import keras

    return keras.backend.standardize_dtype(x.dtype)


def _shape(x):
    """The shape of `x` as a 1-D int64 tensor (dynamic dimensions included)."""
    k = _k()
    dims = k.shape(x)
    if not dims:
        return k.zeros((0,), "int64")
    return k.stack([k.cast(d, "int64") for d in dims])


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _rank(x) -> int:
    return len(x.shape)


# -- elementwise ---------------------------------------------------------------------------
def _unary(name: str, fn: Callable) -> None:
    OPS[name] = lambda x, a: fn(x[0], a)


for _name, _fn in {
    "Relu": lambda x, a: _k().relu(x),
    "Sigmoid": lambda x, a: _k().sigmoid(x),
    "Tanh": lambda x, a: _k().tanh(x),
    "Erf": lambda x, a: _k().erf(x),
    "Exp": lambda x, a: _k().exp(x),
    "Log": lambda x, a: _k().log(x),
    "Sqrt": lambda x, a: _k().sqrt(x),
    "Reciprocal": lambda x, a: _k().reciprocal(x),
    "Neg": lambda x, a: _k().negative(x),
    "Abs": lambda x, a: _k().abs(x),
    "Sign": lambda x, a: _k().sign(x),
    "Sin": lambda x, a: _k().sin(x),
    "Cos": lambda x, a: _k().cos(x),
    "Floor": lambda x, a: _k().floor(x),
    "Ceil": lambda x, a: _k().ceil(x),
    "Round": lambda x, a: _k().round(x),
    "Softplus": lambda x, a: _k().softplus(x),
    "Softsign": lambda x, a: _k().soft_sign(x),
    "Mish": lambda x, a: _k().mish(x),
    "HardSwish": lambda x, a: x * _k().relu6(x + 3.0) / 6.0,
    "Not": lambda x, a: _k().logical_not(x),
    "IsNaN": lambda x, a: _k().isnan(x),
    "IsInf": lambda x, a: _k().isinf(x),
    "Identity": lambda x, a: x,
    "Dropout": lambda x, a: x,  # inference graphs: the identity
    "LeakyRelu": lambda x, a: _k().leaky_relu(x, negative_slope=a.get("alpha", 0.01)),
    "Elu": lambda x, a: _k().where(x > 0, x, a.get("alpha", 1.0) * (_k().exp(x) - 1.0)),
    "Celu": lambda x, a: (
        _k().maximum(x, 0.0) + _k().minimum(0.0, a.get("alpha", 1.0) * (_k().exp(x / a.get("alpha", 1.0)) - 1.0))
    ),
    "Selu": lambda x, a: (
        a.get("gamma", 1.05070102214813232421875)
        * _k().where(x > 0, x, a.get("alpha", 1.67326319217681884765625) * (_k().exp(x) - 1.0))
    ),
    "HardSigmoid": lambda x, a: _k().clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
    "ThresholdedRelu": lambda x, a: _k().where(x > a.get("alpha", 1.0), x, _k().zeros_like(x)),
    "Gelu": lambda x, a: _k().gelu(x, approximate=a.get("approximate", "none") == "tanh"),
}.items():
    _unary(_name, _fn)


def _binary(name: str, fn: Callable) -> None:
    OPS[name] = lambda x, a: fn(x[0], x[1])


def _divide(x, y):
    k = _k()
    if _is_float(x):
        return k.divide(x, y)
    quotient = k.floor_divide(k.abs(x), k.abs(y))  # ONNX: integer division truncates toward zero
    return k.where((x < 0) != (y < 0), -quotient, quotient)


for _name, _fn in {
    "Add": lambda x, y: _k().add(x, y),
    "Sub": lambda x, y: _k().subtract(x, y),
    "Mul": lambda x, y: _k().multiply(x, y),
    "Div": _divide,
    "Pow": lambda x, y: _k().power(x, _k().cast(y, _dtype(x))),
    "Equal": lambda x, y: _k().equal(x, y),
    "Less": lambda x, y: _k().less(x, y),
    "LessOrEqual": lambda x, y: _k().less_equal(x, y),
    "Greater": lambda x, y: _k().greater(x, y),
    "GreaterOrEqual": lambda x, y: _k().greater_equal(x, y),
    "And": lambda x, y: _k().logical_and(x, y),
    "Or": lambda x, y: _k().logical_or(x, y),
    "Xor": lambda x, y: _k().logical_xor(x, y),
    "PRelu": lambda x, y: _k().where(x >= 0, x, x * y),
    "MatMul": lambda x, y: _k().matmul(x, y),
}.items():
    _binary(_name, _fn)


@op("Mod")
def _mod(x, a):
    k = _k()
    if a.get("fmod", 0):
        return k.sign(x[0]) * k.mod(k.abs(x[0]), k.abs(x[1]))
    return k.mod(x[0], x[1])


@op("Max", "Min", "Sum", "Mean")
def _variadic(x, a):
    k = _k()
    fn = {"Max": k.maximum, "Min": k.minimum, "Sum": k.add, "Mean": k.add}[a.get("__op__")]
    out = x[0]
    for other in x[1:]:
        out = fn(out, other)
    return out / float(len(x)) if a.get("__op__") == "Mean" else out


@op("Clip")
def _clip(x, a):
    k = _k()
    out, low, high = x[0], (x[1] if len(x) > 1 else None), (x[2] if len(x) > 2 else None)
    low = a.get("min") if low is None else low
    high = a.get("max") if high is None else high
    if low is not None:
        out = k.maximum(out, k.cast(low, _dtype(out)))
    if high is not None:
        out = k.minimum(out, k.cast(high, _dtype(out)))
    return out


@op("Where")
def _where(x, a):
    return _k().where(x[0], x[1], x[2])


@op("Cast", "CastLike")
def _cast(x, a):
    import onnx

    k = _k()
    if len(x) > 1:  # CastLike
        return k.cast(x[0], _dtype(x[1]))
    target = onnx.helper.tensor_dtype_to_np_dtype(a.get("to"))
    return k.cast(x[0], a.float if target.kind == "f" else np.dtype(target).name)


@op("Softmax", "LogSoftmax")
def _softmax(x, a):
    k = _k()
    axis = a.get("axis", -1)
    if a.get("__opset__", 13) < 13 and _axis(axis, _rank(x[0])) != _rank(x[0]) - 1:
        flat = k.reshape(x[0], (*k.shape(x[0])[:axis], -1))
        out = _softmax([flat], Attrs({"axis": -1, "__op__": a.get("__op__")}, a.float))
        return k.reshape(out, k.shape(x[0]))
    return k.log_softmax(x[0], axis=axis) if a.get("__op__") == "LogSoftmax" else k.softmax(x[0], axis=axis)


@op("Gemm")
def _gemm(x, a):
    k = _k()
    left = k.transpose(x[0]) if a.get("transA", 0) else x[0]
    right = k.transpose(x[1]) if a.get("transB", 0) else x[1]
    out = k.matmul(left, right) * a.get("alpha", 1.0)
    if len(x) > 2 and x[2] is not None:
        out = out + x[2] * a.get("beta", 1.0)
    return out


@op("Einsum")
def _einsum(x, a):
    return _k().einsum(a.get("equation"), *x)


# -- normalisation -------------------------------------------------------------------------
@op("LayerNormalization")
def _layer_norm(x, a):
    k = _k()
    axis = _axis(a.get("axis", -1), _rank(x[0]))
    axes = tuple(range(axis, _rank(x[0])))
    mean = k.mean(x[0], axis=axes, keepdims=True)
    centred = x[0] - mean
    variance = k.mean(centred * centred, axis=axes, keepdims=True)
    out = centred / k.sqrt(variance + a.get("epsilon", 1e-5)) * x[1]
    return out + x[2] if len(x) > 2 and x[2] is not None else out


@op("BatchNormalization")
def _batch_norm(x, a):
    k = _k()
    shape = (-1,) + (1,) * (_rank(x[0]) - 2)
    scale, bias, mean, var = (k.reshape(v, shape) for v in x[1:5])
    return (x[0] - mean) / k.sqrt(var + a.get("epsilon", 1e-5)) * scale + bias


@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare")
def _reduce(x, a):
    k = _k()
    axes = a.get("axes")
    if len(x) > 1 and x[1] is not None:
        axes = _ints(x[1])
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x[0]
        axes = list(range(_rank(x[0])))
    axes = tuple(_axis(i, _rank(x[0])) for i in axes)
    keep = bool(a.get("keepdims", 1))
    data = x[0]
    name = a.get("__op__")
    if name in ("ReduceL2", "ReduceSumSquare"):
        out = k.sum(data * data, axis=axes, keepdims=keep)
        return k.sqrt(out) if name == "ReduceL2" else out
    fn = {"ReduceMean": k.mean, "ReduceSum": k.sum, "ReduceMax": k.max, "ReduceMin": k.min, "ReduceProd": k.prod}[name]
    return fn(data, axis=axes, keepdims=keep)


@op("ArgMax", "ArgMin")
def _argmax(x, a):
    k = _k()
    axis = a.get("axis", 0)
    out = (k.argmax if a.get("__op__") == "ArgMax" else k.argmin)(x[0], axis=axis)
    out = k.cast(out, "int64")
    return k.expand_dims(out, axis) if a.get("keepdims", 1) else out


@op("CumSum")
def _cumsum(x, a):
    k = _k()
    axis = _ints(x[1])[0]
    data = k.flip(x[0], axis) if a.get("reverse", 0) else x[0]
    out = k.cumsum(data, axis=axis)
    if a.get("exclusive", 0):
        out = out - data
    return k.flip(out, axis) if a.get("reverse", 0) else out


# -- shapes --------------------------------------------------------------------------------
@op("Shape")
def _shape_op(x, a):
    shape = _shape(x[0])
    rank = _rank(x[0])
    start = _axis(a.get("start", 0), rank)
    end = a.get("end")
    end = rank if end is None else _axis(end, rank)
    return shape[max(0, start) : max(0, min(end, rank))]


@op("Size")
def _size(x, a):
    return _k().prod(_shape(x[0]))


@op("Reshape")
def _reshape(x, a):
    k = _k()
    target = k.cast(x[1], "int64")
    if not a.get("allowzero", 0):
        count = int(target.shape[0])
        source = _shape(x[0])
        rank = _rank(x[0])
        if count > rank:
            source = k.concatenate([source, k.ones((count - rank,), "int64")])
        target = k.where(k.equal(target, 0), source[:count], target)
    return k.reshape(x[0], target)


@op("Flatten")
def _flatten(x, a):
    k = _k()
    axis = _axis(a.get("axis", 1), _rank(x[0]))
    shape = _shape(x[0])
    return k.reshape(x[0], k.stack([k.prod(shape[:axis]), k.prod(shape[axis:])]))


@op("Transpose")
def _transpose(x, a):
    return _k().transpose(x[0], a.get("perm"))


@op("Squeeze")
def _squeeze(x, a):
    axes = a.get("axes")
    if len(x) > 1 and x[1] is not None:
        axes = _ints(x[1])
    if axes is None:
        axes = [i for i, d in enumerate(x[0].shape) if d == 1]
    return _k().squeeze(x[0], axis=tuple(_axis(i, _rank(x[0])) for i in axes))


@op("Unsqueeze")
def _unsqueeze(x, a):
    axes = a.get("axes")
    if len(x) > 1 and x[1] is not None:
        axes = _ints(x[1])
    rank = _rank(x[0]) + len(axes)
    out = x[0]
    for axis in sorted(_axis(i, rank) for i in axes):
        out = _k().expand_dims(out, axis)
    return out


@op("Concat")
def _concat(x, a):
    k = _k()
    parts = [v for v in x if v is not None]
    if len({_dtype(p) for p in parts}) > 1:
        parts = [k.cast(p, _dtype(parts[0])) for p in parts]
    return k.concatenate(parts, axis=a.get("axis"))


@op("Split")
def _split(x, a):
    k = _k()
    axis = _axis(a.get("axis", 0), _rank(x[0]))
    sizes = a.get("split")
    if len(x) > 1 and x[1] is not None:
        sizes = _ints(x[1])
    if sizes is None:
        count = a.get("num_outputs") or a.get("__outputs__")
        total = k.shape(x[0])[axis]
        if isinstance(total, int) and total % count == 0:
            return tuple(k.split(x[0], count, axis=axis))
        size = -(-total // count)  # ONNX: the last chunk is the smaller one
        return tuple(_slice_axis(x[0], i * size, (i + 1) * size, 1, axis) for i in range(count))
    offsets = np.cumsum([0, *sizes])
    return tuple(_slice_axis(x[0], int(s), int(e), 1, axis) for s, e in zip(offsets[:-1], offsets[1:]))


def _slice_axis(data, start, end, step, axis: int):
    """ONNX Slice on one axis (clamped like ONNX; start/end/step may be tensors) via a gather."""
    k = _k()
    dim = k.cast(k.shape(data)[axis], "int64")
    start, end, step = (k.cast(v, "int64") for v in (start, end, step))
    start = k.where(start < 0, start + dim, start)
    end = k.where(end < 0, end + dim, end)
    forward = step > 0
    start = k.where(forward, k.clip(start, 0, dim), k.clip(start, 0, dim - 1))
    end = k.where(forward, k.clip(end, 0, dim), k.clip(end, -1, dim - 1))
    return k.take(data, k.arange(start, end, step, dtype="int64"), axis=axis)


@op("Slice")
def _slice(x, a):
    k = _k()
    data = x[0]
    rank = _rank(data)
    starts, ends = x[1], x[2]
    count = int(starts.shape[0])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(count))
    steps = x[4] if len(x) > 4 and x[4] is not None else k.ones((count,), "int64")
    for i, axis in enumerate(axes):
        data = _slice_axis(data, starts[i], ends[i], steps[i], _axis(axis, rank))
    return data


@op("Gather")
def _gather(x, a):
    return _k().take(x[0], _k().cast(x[1], "int64"), axis=_axis(a.get("axis", 0), _rank(x[0])))


@op("GatherElements")
def _gather_elements(x, a):
    k = _k()
    axis = _axis(a.get("axis", 0), _rank(x[0]))
    indices = k.cast(x[1], "int64")
    indices = k.where(indices < 0, indices + k.cast(k.shape(x[0])[axis], "int64"), indices)
    return k.take_along_axis(x[0], indices, axis=axis)


def _broadcast_shape(shape, target):
    """ONNX's bidirectional broadcast of two 1-D shape tensors."""
    k = _k()
    n, m = int(shape.shape[0]), int(target.shape[0])
    if n < m:
        shape = k.concatenate([k.ones((m - n,), "int64"), shape])
    elif m < n:
        target = k.concatenate([k.ones((n - m,), "int64"), target])
    return k.where(k.equal(target, 1), shape, target)


@op("Expand")
def _expand(x, a):
    k = _k()
    return k.broadcast_to(x[0], _broadcast_shape(_shape(x[0]), k.cast(x[1], "int64")))


@op("Tile")
def _tile(x, a):
    import tensorflow as tf  # keras.ops.tile wants Python repeats; ONNX's may be computed

    return tf.tile(x[0], _k().cast(x[1], "int64"))


@op("Range")
def _range(x, a):
    k = _k()
    return k.arange(x[0], x[1], x[2], dtype=_dtype(x[0]))


@op("ConstantOfShape")
def _constant_of_shape(x, a):
    value = a.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    dtype = a.float if value.dtype.kind == "f" else value.dtype.name
    return _k().full(_k().cast(x[0], "int64"), value.reshape(-1)[0].item(), dtype=dtype)


@op("Trilu")
def _trilu(x, a):
    k = _k()
    data = x[0]
    shift = k.cast(x[1], "int64") if len(x) > 1 and x[1] is not None else 0
    rows = k.arange(0, k.shape(data)[-2], dtype="int64")[:, None]
    cols = k.arange(0, k.shape(data)[-1], dtype="int64")[None, :]
    keep = (cols - rows >= shift) if a.get("upper", 1) else (cols - rows <= shift)
    return k.where(keep, data, k.zeros_like(data))


@op("Pad")
def _pad(x, a):
    k = _k()
    rank = _rank(x[0])
    pads = _ints(x[1]) if len(x) > 1 and x[1] is not None else list(a.get("pads"))
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(pads) // 2))
    width = [[0, 0] for _ in range(rank)]
    for i, axis in enumerate(axes):
        width[_axis(axis, rank)] = [pads[i], pads[i + len(axes)]]
    value = x[2] if len(x) > 2 and x[2] is not None else a.get("value", 0.0)
    mode = a.get("mode", "constant")
    if mode == "edge":
        return _edge_pad(x[0], width)
    if mode == "reflect":
        return k.pad(x[0], width, mode="reflect")
    return k.pad(x[0], width, constant_values=float(np.asarray(value).reshape(-1)[0]) if value is not None else 0)


def _edge_pad(data, width):
    k = _k()
    for axis, (before, after) in enumerate(width):
        if before or after:
            first = k.take(data, [0] * before, axis=axis)
            last = k.take(data, [-1] * after, axis=axis)
            data = k.concatenate([first, data, last], axis=axis)
    return data


# -- spatial ops (NCHW in, NCHW out; channels-last inside) ---------------------------------
def _to_last(x):
    return _k().transpose(x, (0, *range(2, _rank(x)), 1))


def _to_first(x):
    return _k().transpose(x, (0, _rank(x) - 1, *range(1, _rank(x) - 1)))


def _spatial_pads(a, spatial: int) -> list[list[int]]:
    pads = a.get("pads") or [0] * (2 * spatial)
    return [[0, 0], *[[pads[i], pads[i + spatial]] for i in range(spatial)], [0, 0]]


@op("Conv")
def _conv(x, a):
    k = _k()
    weight = x[1]
    spatial = _rank(weight) - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ValueError(f"Conv auto_pad={a.get('auto_pad')} on the generic path")
    data = k.pad(_to_last(x[0]), _spatial_pads(a, spatial))
    kernel = k.transpose(weight, (*range(2, spatial + 2), 1, 0))
    out = k.conv(
        data,
        kernel,
        strides=tuple(a.get("strides") or [1] * spatial),
        padding="valid",
        dilation_rate=tuple(a.get("dilations") or [1] * spatial),
    )
    if len(x) > 2 and x[2] is not None:
        out = out + x[2]
    return _to_first(out)


@op("MaxPool", "AveragePool")
def _pool(x, a):
    k = _k()
    spatial = _rank(x[0]) - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(d != 1 for d in a.get("dilations") or [1]):
        raise ValueError("pooling with auto_pad or dilations on the generic path")
    kernel, strides = tuple(a.get("kernel_shape")), tuple(a.get("strides") or [1] * spatial)
    width = _spatial_pads(a, spatial)
    if a.get("ceil_mode", 0):  # extra padding at the end gives the ceil output size
        for i, size in enumerate(x[0].shape[2:]):
            span = size + sum(width[i + 1]) - kernel[i]
            width[i + 1][1] += (-span) % strides[i]
    data = _to_last(x[0])
    if a.get("__op__") == "MaxPool":
        out = k.max_pool(k.pad(data, width, constant_values=float("-inf")), kernel, strides, padding="valid")
        return _to_first(out)
    total = k.average_pool(k.pad(data, width), kernel, strides, padding="valid")
    if not a.get("count_include_pad", 0) and any(any(w) for w in width):
        ones = k.pad(k.ones_like(data[..., :1]), width)
        total = total / k.average_pool(ones, kernel, strides, padding="valid")
    return _to_first(total)


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(x, a):
    axes = tuple(range(2, _rank(x[0])))
    fn = _k().mean if a.get("__op__") == "GlobalAveragePool" else _k().max
    return fn(x[0], axis=axes, keepdims=True)
