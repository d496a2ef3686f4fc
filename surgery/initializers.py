"""Initial values for the new units: the strategies of `surgery.widen(init=...)`.

Each parameter a widening touches is rebuilt from its old array and the analysis's edits
(`surgery.analysis.Edit`). What goes into the new positions depends on the strategy:

============  ====================  ===========  ==================  =====================
strategy      fan-in (new weights)  bias         fan-out (next layer)  exactness
============  ====================  ===========  ==================  =====================
output-zero   random (see below)    0            0                   bitwise equal outputs
all-zero      0                     0            0                   bitwise equal; new units symmetric
net2net       copy of a random old  copy         old unit's fan-out   equal up to rounding
              unit's fan-in                      divided among copies
all-random    random                0            random (Glorot)     outputs change
============  ====================  ===========  ==================  =====================

Per-unit constants of pass-through nodes (BatchNormalization parameters, the folded Mul + Add of
tf2onnx, PRelu slopes) get neutral values (1 for scales, 0 for shifts and means, 1 for
variances) or, for net2net, the copied unit's values.

The random fan-in follows Keras with the layer's full new fan-in and fan-out (for a Conv both
include the receptive field): ``he`` is He-uniform ``U(±√(6/fan_in))``, the default after
ReLU-like activations; ``glorot`` is Glorot-uniform ``U(±√(6/(fan_in+fan_out)))``, the default
otherwise; ``normal`` is LeCun-normal ``N(0, 1/fan_in)``.

Every draw comes from a NumPy Generator seeded with ``(seed, CRC-32 of the edit's role, the
parameter's name and the axis)``, so the same model, plan and seed give the same bytes whatever
order things run in.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from surgery.analysis import Edit, Group
from surgery.errors import SurgeryError
from surgery.ops import init_family

STRATEGIES = ("output-zero", "all-zero", "net2net", "all-random")
#: The strategies whose widened model computes bitwise the same outputs (zero fan-out).
EXACT_STRATEGIES = ("output-zero", "all-zero")
FAN_IN_INITS = ("glorot", "he", "normal")

#: Which edits are applied first. Net2Net divides the fan-out rows before copying columns, so a
#: layer that both reads and makes new units copies complete columns; the other strategies fill
#: new columns first and then write the fan-out rows over them (zero rows stay zero).
_ORDER = {
    "net2net": ("literal", "fan-out", "fan-in", "bias", "neutral"),
    "default": ("literal", "fan-in", "bias", "neutral", "fan-out"),
}


def check_strategy(init: str, fan_in: str | None) -> None:
    """Refuse an unknown `init` or `fan_in` with one line naming the parameter."""
    if init not in STRATEGIES:
        raise SurgeryError(
            f"{{param}}: unknown init strategy {init!r}; choose one of {', '.join(STRATEGIES)}", param="init"
        )
    if fan_in is not None and fan_in not in FAN_IN_INITS:
        raise SurgeryError(
            f"{{param}}: unknown fan-in initializer {fan_in!r}; choose one of {', '.join(FAN_IN_INITS)}", param="fan_in"
        )


def _rng(seed: int, *key: str) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, *(zlib.crc32(k.encode()) for k in key)])


def unit_sources(group: Group, seed: int) -> np.ndarray:
    """Net2Net: for each unit of `group`, the old unit it copies: itself for old units, one
    drawn uniformly at random for each new unit."""
    key = "|".join(sorted(member.node.name or "" for member in group.members))
    chosen = _rng(seed, "net2net", key).integers(0, group.old_width, size=group.added)
    return np.concatenate([np.arange(group.old_width), chosen])


def _fans(shape: Sequence[int], weight_axes: tuple[int, int] | None) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of `shape`, as Keras counts them (× receptive field)."""
    if weight_axes is None or len(shape) < 2:
        size = int(np.prod(shape)) if len(shape) else 1
        return size, size
    in_axis, unit_axis = weight_axes
    receptive = int(np.prod([d for i, d in enumerate(shape) if i not in weight_axes]))
    return shape[in_axis] * receptive, shape[unit_axis] * receptive


def _random(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, kind: str, fans: tuple[int, int]
) -> np.ndarray:
    if not np.issubdtype(dtype, np.floating):
        raise SurgeryError(f"cannot draw random {dtype} weights; use {{param}} all-zero or net2net", param="init")
    fan_in, fan_out = max(fans[0], 1), max(fans[1], 1)
    if kind == "he":
        limit = np.sqrt(6.0 / fan_in)
        values = rng.uniform(-limit, limit, size=shape)
    elif kind == "normal":
        values = rng.normal(0.0, np.sqrt(1.0 / fan_in), size=shape)
    else:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        values = rng.uniform(-limit, limit, size=shape)
    return values.astype(dtype)


def _along(axis: int, ndim: int, index) -> tuple:
    return (slice(None),) * axis + (index,) + (slice(None),) * (ndim - axis - 1)


def extend(
    array: np.ndarray,
    edits: Sequence[Edit],
    final_shape: Sequence[int],
    *,
    strategy: str,
    fan_in: str | None,
    seed: int,
    sources: Mapping[int, np.ndarray],
    key: str,
) -> np.ndarray:
    """The new contents of one parameter: `array` grown by all its `edits` (see the module docstring).

    Args:
        array: the parameter's current contents (never modified).
        edits: the analysis's edits for this parameter (same node and input).
        final_shape: its shape after every edit (sets the fan-in/fan-out of random draws).
        strategy: one of `STRATEGIES`.
        fan_in: `FAN_IN_INITS` member, or None to choose by the activation that follows.
        seed: the widening's seed.
        sources: net2net's `unit_sources` per group id (empty for the other strategies).
        key: a stable name for this parameter (seeds its draws).
    """
    order = _ORDER["net2net" if strategy == "net2net" else "default"]
    result = array
    for edit in sorted(edits, key=lambda e: order.index(e.role)):
        if edit.role == "literal":
            result = edit.literal.astype(array.dtype)
            continue
        layout, axis = edit.layout, edit.axis
        if strategy == "net2net":
            copy = layout.copy_of(sources)
            result = np.take(result, copy, axis=axis)
            if edit.role == "fan-out":
                counts = np.bincount(copy, minlength=layout.original_size)[copy]
                shape = [1] * result.ndim
                shape[axis] = -1
                result = result / counts.astype(result.dtype).reshape(shape)
            continue
        grown = np.take(result, np.where(layout.original >= 0, layout.original, 0), axis=axis)
        new = np.flatnonzero(layout.new_mask)
        shape = list(grown.shape)
        shape[axis] = new.size
        grown[_along(axis, grown.ndim, new)] = new_unit_values(
            edit, shape, grown.dtype, final_shape, strategy=strategy, fan_in=fan_in, seed=seed, key=key
        )
        result = grown
    return result


def new_unit_values(
    edit: Edit,
    shape: Sequence[int],
    dtype: np.dtype,
    final_shape: Sequence[int],
    *,
    strategy: str,
    fan_in: str | None,
    seed: int,
    key: str,
) -> np.ndarray:
    """What one edit puts into its new positions, for every strategy but net2net.

    `extend` writes this block over the new positions along ``edit.axis`` (in their order);
    `surgery.rewrite` joins it lazily to the untouched old tensor instead. Both get it from
    here, so the two give the same bytes.

    Args:
        edit: a non-literal edit (its role picks the values, its layout is not read).
        shape: the parameter's shape with ``edit.axis`` cut to the number of new positions.
        dtype: the parameter's dtype.
        final_shape, strategy, fan_in, seed, key: as for `extend`.
    """
    shape = tuple(int(d) for d in shape)
    if edit.role == "fan-in" and strategy in ("output-zero", "all-random"):
        kind = fan_in or init_family(edit.activation)
        rng = _rng(seed, edit.role, key, str(edit.axis))
        return _random(rng, shape, dtype, kind, _fans(final_shape, edit.weight_axes))
    if edit.role == "fan-out" and strategy == "all-random":
        rng = _rng(seed, edit.role, key, str(edit.axis))
        return _random(rng, shape, dtype, "glorot", _fans(final_shape, edit.weight_axes))
    if edit.role == "neutral":
        return np.full(shape, edit.neutral, dtype=dtype)
    return np.zeros(shape, dtype=dtype)


def draw_weight(
    shape: Sequence[int], dtype: np.dtype, *, kind: str, weight_axes: tuple[int, int] | None, seed: int, key: str
) -> np.ndarray:
    """A whole weight drawn the way new units' fan-in is (`surgery deepen --init random`).

    Args:
        shape, dtype: the weight's.
        kind: one of `FAN_IN_INITS`.
        weight_axes: (input axis, unit axis) of the weight for its fans, None for a 1-D one.
        seed, key: seed the draw (`key` names the weight, so each gets its own stream).
    """
    shape = tuple(int(d) for d in shape)
    return _random(_rng(seed, "deepen", key), shape, np.dtype(dtype), kind, _fans(shape, weight_axes))


__all__ = [
    "STRATEGIES",
    "EXACT_STRATEGIES",
    "FAN_IN_INITS",
    "check_strategy",
    "unit_sources",
    "extend",
    "new_unit_values",
    "draw_weight",
]
