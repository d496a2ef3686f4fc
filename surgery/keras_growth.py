"""Growing a Keras model during training: carry the optimizer's state across a widening.

A model widened through the toolkit (`surgery.export_keras` → `surgery.widen` →
`surgery.to_keras`) comes back with fresh weights objects and, once compiled, a fresh optimizer:
Adam's moment estimates and its step counter start again from zero. `carry_optimizer_state`
widens the old optimizer's per-variable state with the same plan as the weights instead, so
training continues as if the new units had always been there with zero moments.

Example:
    >>> grown = surgery.to_keras(surgery.widen(surgery.export_keras(model), {"dense_1": 16}))
    >>> grown.compile(optimizer=keras.optimizers.Adam(1e-3), loss=...)
    >>> surgery.carry_optimizer_state(model, grown)       # Adam's m and v widened, step count kept
    ['dense_1/kernel', 'dense_1/bias', 'dense_2/kernel', 'dense_2/bias']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from surgery.errors import SurgeryError

if TYPE_CHECKING:
    import keras

#: Optimizer variables that are not per-model-variable state. The step counter is copied on
#: its own; the learning rate stays the new optimizer's.
_GLOBAL = ("iteration", "iterations", "learning_rate")


def _key(path: str) -> str:
    """How Keras names a variable's optimizer slots: ``<path with '/' → '_'>_<slot>``."""
    return path.replace("/", "_")


def _optimizer(model: keras.Model, which: str):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise SurgeryError(f"{which}: the model has no optimizer; compile it first")
    return optimizer


def _slots(optimizer, paths: Sequence[str]) -> dict[str, dict[str, object]]:
    """Optimizer variable path → {slot name: optimizer variable}, each slot given to the
    longest variable key it starts with (``dense_1_kernel_momentum`` → ``dense_1/kernel``)."""
    keys = sorted(((_key(p), p) for p in paths), key=lambda kp: -len(kp[0]))
    slots: dict[str, dict[str, object]] = {p: {} for p in paths}
    for variable in optimizer.variables:
        if variable.name in _GLOBAL:
            continue
        for key, path in keys:
            if variable.name.startswith(key + "_"):
                slots[path][variable.name[len(key) + 1 :]] = variable
                break
    return slots


def _old_index(
    old_shape: tuple[int, ...], new_shape: tuple[int, ...], path: str, given: Mapping[int, Sequence[int]]
) -> tuple:
    """The index of the new array where the old entries go (rule 4 of `carry_optimizer_state`)."""
    if len(old_shape) != len(new_shape) or any(o > n for o, n in zip(old_shape, new_shape)):
        raise SurgeryError(f"{path}: shape {old_shape} cannot grow into {new_shape}; only widenings are carried")
    index: list = []
    for axis, (old, new) in enumerate(zip(old_shape, new_shape)):
        if axis in given:
            positions = np.asarray(given[axis], dtype=np.int64)
            if (
                positions.shape != (old,)
                or len(set(positions.tolist())) != old
                or positions.min(initial=0) < 0
                or positions.max(initial=0) >= new
            ):
                raise SurgeryError(f"positions[{path!r}][{axis}] must be {old} distinct indices below {new}")
            index.append(positions)
        else:
            index.append(np.arange(old))
    return np.ix_(*index) if index else ()


def carry_optimizer_state(
    old_model: keras.Model,
    new_model: keras.Model,
    *,
    positions: Mapping[str, Mapping[int, Sequence[int]]] | None = None,
) -> list[str]:
    """Give `new_model`'s optimizer the state of `old_model`'s, widened like the weights.

    Rules:

    1. Both models are compiled; `old_model`'s optimizer has state (has been built by
       training). `new_model`'s optimizer is built here on its trainable variables.
    2. Trainable variables are paired by path (``layer/variable``; `surgery.to_keras` keeps the
       exported model's layer names). A new variable without an old one (a new head) keeps
       the new optimizer's zeros; no pair at all is an error (the models do not correspond).
    3. Per-variable slots (Adam's ``momentum`` and ``velocity``, SGD's ``momentum``, …) are
       paired by slot name. Same shape: copied. Grown: old values at the old entries' positions
       (rule 4), zeros at the new ones, as if the new units had always been there untouched.
       A slot that shrinks or changes rank is refused.
    4. Old positions along a grown axis are ``positions[path][axis]`` when given, else the
       leading entries — where `surgery.widen` puts a Dense or Conv layer's new units (after the
       old ones). Without `positions` the new weight at those positions must equal the old
       weight bitwise, so a widening that moved old entries (a Flatten after a widened Conv
       interleaves them) or changed them (net2net divides fan-out) is refused, not guessed.
    5. The step counter is copied (Adam's bias correction goes on from where it was); the
       learning rate (or schedule) is the new optimizer's own.

    Args:
        old_model: the model before the widening, trained with its optimizer.
        new_model: the widened model (e.g. from `surgery.to_keras`), compiled.
        positions: variable path → {axis: the old entries' indices along that axis}.

    Returns:
        The paths of the new model's variables whose state was carried.

    Raises:
        SurgeryError: an optimizer missing or unbuilt, no corresponding variables, a slot
            that does not grow, or old entries that are not where rule 4 looks.
    """
    old_optimizer, new_optimizer = _optimizer(old_model, "old_model"), _optimizer(new_model, "new_model")
    if not old_optimizer.built:
        raise SurgeryError("old_model: its optimizer has no state yet; train the model (or build the optimizer) first")
    old_variables = {v.path: v for v in old_model.trainable_variables}
    new_variables = {v.path: v for v in new_model.trainable_variables}
    paired = [path for path in new_variables if path in old_variables]
    if not paired:
        raise SurgeryError("new_model shares no trainable variable path with old_model; the state cannot be paired")
    given = dict(positions or {})
    unknown = sorted(set(given) - set(paired))
    if unknown:
        raise SurgeryError(f"positions names {unknown}, not variables of both models")
    if not new_optimizer.built:
        new_optimizer.build(new_model.trainable_variables)
    old_slots, new_slots = _slots(old_optimizer, paired), _slots(new_optimizer, paired)

    # Analyse every pair before writing anything (rule 4's checks can fail).
    writes = []
    for path in paired:
        old_weight, new_weight = old_variables[path].numpy(), new_variables[path].numpy()
        index = _old_index(old_weight.shape, new_weight.shape, path, given.get(path, {}))
        if path not in given and not np.array_equal(new_weight[index], old_weight):
            raise SurgeryError(
                f"{path}: the old weights are not the leading entries of the new ones; pass positions[{path!r}]"
            )
        for slot, new_slot in new_slots[path].items():
            old_slot = old_slots[path].get(slot)
            if old_slot is None:
                continue
            state = np.zeros(tuple(new_slot.shape), dtype=new_slot.dtype)
            state[index] = old_slot.numpy()
            writes.append((new_slot, state))
    for variable, state in writes:
        variable.assign(state)
    new_optimizer.iterations.assign(old_optimizer.iterations)
    return paired


__all__ = ["carry_optimizer_state"]
