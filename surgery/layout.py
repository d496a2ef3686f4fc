"""Where the units sit along the widened axis of a tensor (`Layout`), for the width analysis.

A widening adds positions along one axis of every tensor it reaches. A `Layout` records, for
each position of the widened tensor, where it was before (or that it is new), which group's
unit it holds and how to find the old unit a new one copies (Net2Net). Layouts are immutable:
the rules of `surgery.analysis` derive one tensor's layout from another's (moved to another
axis, concatenated, flattened) and never change one in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from surgery.errors import SurgeryError

#: Above this many positions in one tracked tensor the analysis refuses (the new model would not
#: fit anywhere anyway); checked before the position arrays are allocated.
MAX_POSITIONS = 1 << 31


@dataclass(frozen=True, eq=False)
class Layout:
    """The positions along the widened axis of one tensor, old and new.

    Attributes:
        axis: the widened axis (non-negative) of a tensor of rank `rank`.
        original: for each position, its index in the unwidened tensor, or -1 for a new one.
        group: the widening group whose layer's unit the position holds (-1 for positions of
            an unwidened tensor, e.g. another Concat input).
        unit: the unit of that layer (0 … U+K-1; new units are U … U+K-1), else -1.
        base, stride: where old unit ``u`` of the group sits in the unwidened tensor at the same
            place: ``base + u * stride`` (stride 1 and the concat offset on a channel axis;
            ``H·W`` after a channel-major flatten; 1 with base ``p·C`` after an NHWC flatten).
            Net2Net uses it to find the position a new unit copies.
    """

    axis: int
    rank: int
    original: np.ndarray
    group: np.ndarray
    unit: np.ndarray
    base: np.ndarray
    stride: np.ndarray

    @staticmethod
    def seed(group: int, old: int, added: int, axis: int, rank: int) -> Layout:
        """A producer's output: `old` units, then `added` new ones of `group`."""
        size = old + added
        original = np.where(np.arange(size) < old, np.arange(size), -1)
        return Layout(
            axis,
            rank,
            original,
            np.full(size, group, dtype=np.int64),
            np.arange(size, dtype=np.int64),
            np.zeros(size, dtype=np.int64),
            np.ones(size, dtype=np.int64),
        )._frozen()

    def _frozen(self) -> Layout:
        for array in (self.original, self.group, self.unit, self.base, self.stride):
            array.flags.writeable = False
        return self

    @property
    def size(self) -> int:
        return int(self.original.shape[0])

    @property
    def original_size(self) -> int:
        return int(np.count_nonzero(self.original >= 0))

    @property
    def new_mask(self) -> np.ndarray:
        return self.original < 0

    def same_positions(self, other: Layout) -> bool:
        return all(
            np.array_equal(a, b)
            for a, b in zip(
                (self.original, self.group, self.unit, self.base, self.stride),
                (other.original, other.group, other.unit, other.base, other.stride),
            )
        )

    def groups(self) -> set[int]:
        return {int(g) for g in np.unique(self.group) if g >= 0}

    def moved(self, axis: int, rank: int) -> Layout:
        """The same positions on another axis (Transpose, Squeeze, broadcasting)."""
        return Layout(axis, rank, self.original, self.group, self.unit, self.base, self.stride)

    def relabeled(self, mapping: Mapping[int, int]) -> Layout:
        """The same positions with group ids renamed (`mapping`: old id → new id; others stay)."""
        if not any(g in mapping for g in self.groups()):
            return self
        group = self.group.copy()
        for old, new in mapping.items():
            group[self.group == old] = new
        return Layout(self.axis, self.rank, self.original, group, self.unit, self.base, self.stride)._frozen()

    def part(self, start: int, stop: int) -> Layout:
        """The positions of one part of a Split of this axis: the old positions ``start`` …
        ``stop - 1`` and the new positions that follow them (a new position belongs to the part
        of the last old position before it, or to the first part), renumbered from ``start``."""
        old = np.maximum.accumulate(np.where(self.original >= 0, self.original, -1))
        owner = np.where(old >= 0, old, 0)
        mask = (owner >= start) & (owner < stop)
        original = np.where(self.original[mask] >= 0, self.original[mask] - start, -1)
        return Layout(
            self.axis,
            self.rank,
            original,
            self.group[mask],
            self.unit[mask],
            self.base[mask] - start,
            self.stride[mask],
        )._frozen()

    def ranges(self) -> list[list[int]]:
        """Half-open [start, stop) runs of new positions."""
        return mask_ranges(self.new_mask)

    def copy_of(self, sources: Mapping[int, np.ndarray]) -> np.ndarray:
        """For each position, the unwidened position it replicates (Net2Net): old positions
        replicate themselves, unit u of group g replicates old unit ``sources[g][u]`` (the
        identity on old units)."""
        result = self.original.copy()
        for g in self.groups():
            mask = (self.group == g) & self.new_mask
            result[mask] = self.base[mask] + sources[g][self.unit[mask]] * self.stride[mask]
        return result

    @staticmethod
    def concat(parts: Sequence[Layout | int], axis: int, rank: int) -> Layout:
        """Positions of a Concat along the widened axis; an int part is an unwidened input of that size."""
        arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("original", "group", "unit", "base", "stride")}
        offset = 0
        for part in parts:
            if isinstance(part, Layout):
                shifted = np.where(part.original >= 0, part.original + offset, -1)
                arrays["original"].append(shifted)
                arrays["group"].append(part.group)
                arrays["unit"].append(part.unit)
                arrays["base"].append(part.base + offset)
                arrays["stride"].append(part.stride)
                offset += part.original_size
            else:
                arrays["original"].append(np.arange(part) + offset)
                arrays["group"].append(np.full(part, -1))
                arrays["unit"].append(np.full(part, -1))
                arrays["base"].append(np.zeros(part, dtype=np.int64))
                arrays["stride"].append(np.ones(part, dtype=np.int64))
                offset += part
        return Layout(axis, rank, *(np.concatenate(arrays[k]).astype(np.int64) for k in arrays))._frozen()

    def ravel(self, before: int, after: int, axis: int, rank: int) -> Layout:
        """Positions after merging this axis with `before` leading and `after` trailing positions
        (row-major, as Flatten and Reshape do): the widened element ``e`` at leading index ``o``
        and trailing index ``i`` lands at ``(o·S' + e)·after + i``."""
        size = before * self.size * after
        if size > MAX_POSITIONS:
            raise SurgeryError(f"the widened tensor would have {size} positions after flattening; too large")
        old = self.original_size
        o = np.arange(before, dtype=np.int64)[:, None, None]
        e = np.arange(self.size)[None, :, None]
        i = np.arange(after, dtype=np.int64)[None, None, :]
        rest = o * old * after + i
        original = np.where(self.original[e] >= 0, rest + self.original[e] * after, -1)
        base = rest + self.base[e] * after
        stride = np.broadcast_to(self.stride[e] * after, original.shape)
        group = np.broadcast_to(self.group[e], original.shape)
        unit = np.broadcast_to(self.unit[e], original.shape)
        arrays = (original, group, unit, base, stride)
        return Layout(axis, rank, *(np.ascontiguousarray(a).reshape(-1).astype(np.int64) for a in arrays))._frozen()


def mask_ranges(mask: np.ndarray) -> list[list[int]]:
    """Half-open [start, stop) runs where `mask` is True."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [[int(a), int(b)] for a, b in zip(edges[0::2], edges[1::2])]


@dataclass(frozen=True)
class ShapeVector:
    """A shape tensor (output of Shape and what is computed from it) whose `changed` entries
    hold the widened size."""

    changed: frozenset[int]


__all__ = ["Layout", "ShapeVector", "mask_ranges", "MAX_POSITIONS"]
