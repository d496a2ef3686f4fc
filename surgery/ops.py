"""The op catalogue: what the toolkit knows about each ONNX op, written once.

`CATALOGUE` maps an op type to its `OpInfo`: how a widening passes through it (its *kind*, which
`surgery.analysis` turns into a rule), the value a per-unit constant operand gets for new units,
whether a non-constant operand must grow with the widened one (a *join*), and, for activations,
their init family and Keras name. `inspect`, the width analysis, the initializers and the Keras
converter read it; nothing else lists ops.

Kinds, case by case:

- ``unary``: elementwise, one data input (input 0; Clip's bounds and Dropout's ratio are
  scalars): every position stays where it is. Log, Sqrt, Reciprocal and Exp are not unary
  pass-through: on a new unit they can give inf or NaN, and 0·inf in the next layer is NaN.
- ``elementwise``: n-ary, broadcasting: a constant operand with a per-unit entry gets `neutral`
  for new units; with `joins`, a non-constant operand must grow along with the widened one.
- ``pool``: pools over spatial axes, per channel (axis 1).
- ``over-axes``: normalises, reduces or takes an arg-extremum over some axes: a blocker when the
  widened axis is among them, pass-through otherwise.
- ``channel-norm``: per-channel parameters on axis 1 (BatchNormalization, InstanceNormalization)
  get `channel_neutral` entries for new channels.
- the remaining kinds (``matmul``, ``gemm``, ``conv``, ``transpose``, ``concat``, ``flatten``,
  ``reshape``, ``squeeze``, ``shape``, ``pick``, ``split``, ``pow``, ``blocker``) each have one rule of
  their own in `surgery.analysis.rules`.

Activations: ``family`` is the default fan-in initializer for the units a layer adds in front
of it: ``he`` for the ReLU family (ReLU, its leaky and smooth variants, GELU, SiLU, SwiGLU:
functions that are ~identity for large inputs and ~zero for negative ones), ``glorot`` for the
saturating ones (Tanh, Sigmoid, Softmax...). `activation_after` also recognises the activations
exporters write as several nodes (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from surgery.graph import attribute, constant_array, consumers, is_constant


@dataclass(frozen=True)
class OpInfo:
    """What the toolkit knows about one op type (see the module docstring for the kinds).

    Attributes:
        kind: how a widening passes through it.
        neutral: for ``elementwise``, what a per-unit constant operand holds for new units.
        joins: for ``elementwise``, a non-constant operand must grow with the widened one.
        channel_neutral: for ``channel-norm``, input index → value of new channels' entries.
        family: ``"he"`` or ``"glorot"`` when the op is an activation, else None.
        keras: the Keras activation name, for activations Keras has.
        fuses: the Keras name may be a Dense/Conv2D ``activation=`` argument.
    """

    kind: str
    neutral: float | None = None
    joins: bool = False
    channel_neutral: tuple[tuple[int, float], ...] = ()
    family: str | None = None
    keras: str | None = None
    fuses: bool = False


def _unary(family: str | None = None, keras: str | None = None, fuses: bool = False) -> OpInfo:
    return OpInfo("unary", family=family, keras=keras, fuses=fuses)


def _join(neutral: float) -> OpInfo:
    return OpInfo("elementwise", neutral=neutral, joins=True)


_REDUCTIONS = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)

CATALOGUE: dict[str, OpInfo] = {
    # activations
    "Relu": _unary("he", "relu", fuses=True),
    "LeakyRelu": _unary("he"),
    "Elu": _unary("he"),
    "Selu": _unary("he"),
    "Celu": _unary("he"),
    "Gelu": _unary("he"),
    "HardSwish": _unary("he", "hard_silu"),
    "Mish": _unary("he", "mish"),
    "Tanh": _unary("glorot", "tanh", fuses=True),
    "Sigmoid": _unary("glorot", "sigmoid", fuses=True),
    "HardSigmoid": _unary("glorot"),
    "Softplus": _unary("glorot", "softplus", fuses=True),
    "Softsign": _unary("glorot", "softsign", fuses=True),
    "Clip": _unary("glorot"),
    # other elementwise single-input ops
    **{op: _unary() for op in ("Erf", "Neg", "Abs", "Sign", "Identity", "Dropout", "Cast")},
    # elementwise n-ary ops
    "Add": _join(0.0),
    "Sub": _join(0.0),
    "Mul": _join(1.0),
    "Div": _join(1.0),
    "Max": _join(0.0),
    "Min": _join(0.0),
    "Sum": _join(0.0),
    "Mean": _join(0.0),
    "PRelu": OpInfo("elementwise", neutral=0.25, family="he"),
    # per-channel
    "BatchNormalization": OpInfo("channel-norm", channel_neutral=((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0))),
    "InstanceNormalization": OpInfo("channel-norm", channel_neutral=((1, 1.0), (2, 0.0))),
    **{
        op: OpInfo("pool")
        for op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
    },
    # over some axes
    "Softmax": OpInfo("over-axes", family="glorot", keras="softmax"),
    "LogSoftmax": OpInfo("over-axes", family="glorot"),
    **{
        op: OpInfo("over-axes")
        for op in (
            "Hardmax",
            "LayerNormalization",
            "LpNormalization",
            "MeanVarianceNormalization",
            "ArgMax",
            "ArgMin",
            *_REDUCTIONS,
        )
    },
    "GroupNormalization": OpInfo("blocker"),
    # layers and layout
    "MatMul": OpInfo("matmul"),
    "Gemm": OpInfo("gemm"),
    "Conv": OpInfo("conv"),
    "Transpose": OpInfo("transpose"),
    "Concat": OpInfo("concat"),
    "Flatten": OpInfo("flatten"),
    "Reshape": OpInfo("reshape"),
    "Squeeze": OpInfo("squeeze"),
    "Unsqueeze": OpInfo("squeeze"),
    "Shape": OpInfo("shape"),
    "Gather": OpInfo("pick"),
    "Slice": OpInfo("pick"),
    "Split": OpInfo("split"),
    "Pow": OpInfo("pow"),
}

#: Ops whose constant weight makes a layer (`surgery.layers` decides which of their nodes are layers).
LAYER_OPS = frozenset(op for op, info in CATALOGUE.items() if info.kind in ("matmul", "gemm", "conv"))

#: Activations applied entry by entry (Softmax and LogSoftmax act over an axis): what may end a block.
ELEMENTWISE_ACTIVATIONS = frozenset(
    op for op, info in CATALOGUE.items() if info.family is not None and info.kind != "over-axes"
)

#: Single-input ops that copy their input's values unchanged at inference (Cast to another type).
VALUE_PRESERVING = frozenset({"Identity", "Dropout", "Cast"})

#: Ops that only rearrange a tensor's entries.
REARRANGING = frozenset(
    op for op, info in CATALOGUE.items() if info.kind in ("reshape", "transpose", "squeeze", "flatten")
)

#: Elementwise single-input ops that keep every position but are not widening pass-through: on a new
#: unit they can give inf or NaN (or work on booleans). Adding heads passes through them like ``unary``.
POSITIONAL = frozenset({"Exp", "Log", "Sqrt", "Reciprocal", "IsNaN", "IsInf", "Not"})

#: Activations that several exporter nodes spell out (recognised by `activation_after`).
COMPOSITE_ACTIVATIONS = {"Gelu": "he", "Silu": "he", "SwiGLU": "he", "Relu6": "he"}

#: Ops `activation_after` looks through: layout changes (a Keras Dense on 3-D input is
#: Reshape → MatMul → Reshape → Add) and per-channel normalisation
#: (Dense → BatchNormalization → ReLU reports ReLU), besides a Mul/Add by a constant.
TRANSPARENT = frozenset({"Transpose", "Reshape", "BatchNormalization"}) | VALUE_PRESERVING

#: Ops that carry a shape tensor from `Shape` to a Reshape's target, entry by entry.
SHAPE_CARRIERS = frozenset({"Cast", "Identity", "Squeeze", "Unsqueeze", "Concat", "Gather", "Slice"})

#: Ops that compute a shape entry from others (a flattened size, a broadcast size).
SHAPE_ARITHMETIC = frozenset({"ReduceProd", "Max", "Mul"})

#: How many nodes `activation_after` looks through before giving up.
_LOOK_AHEAD = 6


def init_family(activation: str | None) -> str:
    """The default fan-in initializer (``"he"`` or ``"glorot"``) for units feeding `activation`."""
    if activation in COMPOSITE_ACTIVATIONS:
        return COMPOSITE_ACTIVATIONS[activation]
    entry = CATALOGUE.get(activation or "")
    return "he" if entry is not None and entry.family == "he" else "glorot"


def keras_activation(op_type: str, *, fused: bool = False) -> str | None:
    """The Keras name of activation `op_type` (with `fused`, only if Dense/Conv2D take it as their
    ``activation=`` argument), else None."""
    entry = CATALOGUE.get(op_type)
    if entry is None or entry.keras is None or (fused and not entry.fuses):
        return None
    return entry.keras


def _scalar(value: ir.Value | None) -> float | None:
    array = constant_array(value)
    return float(array) if array is not None and array.size == 1 else None


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other operand of a binary node that reads `value`."""
    rest = [v for v in node.inputs if v is not value]
    return rest[0] if len(rest) == 1 else None


def _reaches(value: ir.Value, op_type: str, steps: int) -> bool:
    """True when a node of `op_type` reads `value` within `steps` nodes downstream."""
    frontier = [value]
    for _ in range(steps):
        nodes = [node for v in frontier for node in consumers(v)]
        if any(node.op_type == op_type for node in nodes):
            return True
        frontier = [out for node in nodes for out in node.outputs if out is not None]
    return False


def _silu_product(value: ir.Value) -> ir.Node | None:
    """The Mul of ``value · Sigmoid(value)`` (SiLU as PyTorch writes it), if `value` feeds one."""
    for sigmoid in consumers(value):
        if sigmoid.op_type != "Sigmoid":
            continue
        for mul in consumers(sigmoid.outputs[0]):
            if mul.op_type == "Mul" and value in mul.inputs:
                return mul
    return None


def _gated(mul: ir.Node) -> bool:
    """True when `mul`'s output is multiplied by a non-constant tensor (SwiGLU's ``silu(gate)·up``)."""
    users = consumers(mul.outputs[0])
    return len(users) == 1 and users[0].op_type == "Mul" and not is_constant(_other(users[0], mul.outputs[0]))


def _composite(value: ir.Value) -> str | None:
    """A multi-node activation that reads `value`, by the forms exporters write:

    - Erf-GELU (PyTorch): ``x / √2 → Erf → +1 → ·x → ·0.5``: `value` feeds a Div and a Mul,
      the Div an Erf → "Gelu".
    - tanh-GELU (GPT-2's ``gelu_new``): ``Pow(x, 3)`` on `value` and a Tanh a few nodes on → "Gelu".
    - SiLU: ``x · Sigmoid(x)`` → "Silu"; when that product is multiplied by another tensor
      (the gate of SwiGLU) → "SwiGLU".
    - SwiGLU's up: `value` is multiplied by ``g · Sigmoid(g)`` of another tensor g → "SwiGLU".
    """
    users = consumers(value)
    ops = sorted(node.op_type for node in users)
    if ops == ["Div", "Mul"]:
        div = next(node for node in users if node.op_type == "Div")
        if any(node.op_type == "Erf" for node in consumers(div.outputs[0])):
            return "Gelu"
    if "Pow" in ops:
        power = next(node for node in users if node.op_type == "Pow")
        if power.inputs[0] is value and _scalar(power.inputs[1]) == 3.0 and _reaches(power.outputs[0], "Tanh", 4):
            return "Gelu"
    silu = _silu_product(value)
    if silu is not None:
        return "SwiGLU" if _gated(silu) else "Silu"
    if len(users) == 1 and users[0].op_type == "Mul":
        other = _other(users[0], value)
        producer = other.producer() if other is not None else None
        if (
            producer is not None
            and producer.op_type == "Mul"
            and any(_silu_product(v) is producer for v in producer.inputs if v is not None)
        ):
            return "SwiGLU"
    return None


def activation_after(value: ir.Value) -> str | None:
    """The activation a layer's output `value` feeds, as an op type ("Relu", "Tanh"...) or the
    name of a composite one ("Gelu", "Silu", "SwiGLU"; see `_composite`; "Relu6" for a Clip from
    0), else None.

    Looks through `TRANSPARENT` ops and a Mul or Add by constants (a bias Add, tf2onnx's folded
    BatchNormalization), at most a few nodes deep; any other node, or a fork into several
    readers that is not a composite activation, ends the search with None.
    """
    for _ in range(_LOOK_AHEAD):
        composite = _composite(value)
        if composite is not None:
            return composite
        users = consumers(value)
        if len(users) != 1:
            return None
        node = users[0]
        entry = CATALOGUE.get(node.op_type)
        if node.op_type == "Clip" and len(node.inputs) > 1 and _scalar(node.inputs[1]) == 0.0:
            return "Relu6"  # Clip(0, max): ReLU with a cap (MobileNet's ReLU6)
        if entry is not None and entry.family is not None:
            return node.op_type
        others = [v for v in node.inputs if v is not value and v is not None]
        if not (node.op_type in TRANSPARENT or (node.op_type in ("Add", "Mul") and all(map(is_constant, others)))):
            return None
        value = node.outputs[0]
    return None


def pow_exponent(node: ir.Node) -> float | None:
    """A Pow node's constant scalar exponent, or None."""
    return _scalar(node.inputs[1]) if len(node.inputs) > 1 else None


def default_softmax_axis(node: ir.Node, opset: int) -> int:
    """Softmax/LogSoftmax/Hardmax's axis attribute with the opset's default."""
    return attribute(node, "axis", -1 if (opset == 0 or opset >= 13) else 1)


__all__ = [
    "OpInfo",
    "CATALOGUE",
    "LAYER_OPS",
    "ELEMENTWISE_ACTIVATIONS",
    "VALUE_PRESERVING",
    "REARRANGING",
    "POSITIONAL",
    "COMPOSITE_ACTIVATIONS",
    "TRANSPARENT",
    "SHAPE_CARRIERS",
    "SHAPE_ARITHMETIC",
    "init_family",
    "keras_activation",
    "activation_after",
    "pow_exponent",
    "default_softmax_axis",
]
