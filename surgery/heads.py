"""Adding attention heads (`surgery widen --heads NAME=K`): the plan the rewrite applies.

Rules, case by case:

1. NAME is an attention block as `surgery.attention.find_blocks` lists it (or a glob over those
   names); K ≥ 1 is the number of new **key/value heads**. With multi-head attention that is K
   new heads; with grouped-query attention each new key/value head brings heads/kv_heads query
   heads, so the new query heads form a new group at the end (query head h reads key/value head
   h // n_rep, before and after). Each new head has the existing head dimension. A block that
   looks like attention but that the head tracking cannot follow is refused with its reason.
2. New positions go at the end of each head range: after Q's columns, after K's and after V's
   (three ranges of a fused QKV projection, at the end of its Split's parts).
3. New Q/K/V columns get random fan-in (the width strategies' draw, `surgery.initializers`);
   their bias entries are 0. The output projection's rows for the new heads are exactly zero
   (``output-zero``, ``all-zero``), so every output stays bitwise equal: a new head's values are
   multiplied by zero rows, the old heads' scores, softmax and values are untouched (heads are a
   batch axis of the attention products). ``all-random`` draws those rows too (outputs change);
   ``net2net`` does not apply to heads and is refused.
4. Every constant that encodes the head count or the fused width is rewritten: Split sizes,
   reshape and expand targets holding H, H·dh or the fused width; ``-1`` entries and sizes read
   at run time are left alone, as are scale constants (1/√dh, dh^-1/4) and rotary tables (they act
   on the head dimension, which does not change). Where tf2onnx reads the head count from the
   shape of a copy of a Keras einsum kernel (``[1, 1, H, dh, D]``, read only by ``Shape``), that copy
   grows along H with zeros; the output kernel ``[1, 1, D, H, dh]``, reshaped to 2-D at run time,
   gets zero entries for the new heads. A constant shared with nodes outside the
   growth is forked by the rewrite; a ``Concat`` chain that builds a reshape target for several
   blocks (the dynamo exporter's) is copied for the blocks that grow.
5. ``surgery.widened_tensors`` records every tensor that grows (heads or units axis), so
   `verify --locate` compares old heads across the growth; ``surgery.widen_history`` one record
   per block.

Anything the head tracking cannot follow is refused with the node and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from difflib import get_close_matches

import numpy as np
import onnx_ir as ir

from surgery.analysis import Edit, Layout, WidenPlan
from surgery.attention import Block, survey, trace_heads
from surgery.errors import SurgeryError
from surgery.graph import constant_array, constant_shape
from surgery.naming import expand


@dataclass(frozen=True)
class HeadPlan:
    """Everything `--heads` changes.

    Attributes:
        edits: parameter changes, as the width analysis writes them (`surgery.analysis.Edit`).
        tensors: every tensor that grows, with its new positions.
        records: one ``surgery.widen_history`` record per block (strategy and seed added later).
    """

    edits: tuple[Edit, ...]
    tensors: tuple[tuple[ir.Value, Layout], ...]
    records: tuple[dict, ...]

    def joined(self, plan: WidenPlan) -> WidenPlan:
        """`plan` (the layers' widening) with these changes added; refuses overlapping edits."""
        taken = {(id(e.node), e.input_index) for e in plan.edits}
        for edit in self.edits:
            if (id(edit.node), edit.input_index) in taken:
                raise SurgeryError(
                    f"{{param}} and the widened layers both change input {edit.input_index} of {edit.node.op_type} "
                    f"node {edit.node.name!r}; grow them in two runs",
                    param="heads",
                )
        return replace(plan, edits=plan.edits + self.edits, tensors=plan.tensors + self.tensors)


def _layout(original: np.ndarray, axis: int, rank: int) -> Layout:
    size = original.shape[0]
    return Layout(
        axis,
        rank,
        np.asarray(original, dtype=np.int64),
        np.zeros(size, dtype=np.int64),
        np.arange(size, dtype=np.int64),
        np.zeros(size, dtype=np.int64),
        np.ones(size, dtype=np.int64),
    )


def resolve_blocks(model: ir.Model, requests: Mapping[str, int]) -> list[tuple[Block, int]]:
    """The blocks `requests` (name or glob → K) name, each with its K; one-line errors otherwise."""
    blocks, refused = survey(model)
    by_name = {block.name: block for block in blocks}
    resolved = []
    for name, added in expand(requests, [(b.name,) for b in blocks], "attention block").items():
        if isinstance(added, bool) or not isinstance(added, (int, np.integer)):
            raise SurgeryError(f"{name}: the number of new heads must be an integer, got {added!r}")
        if added <= 0:
            raise SurgeryError(f"{name}: the number of new heads must be at least 1, got {added}")
        if name in refused:
            raise SurgeryError(f"{name}: {refused[name]}")
        if name not in by_name:
            close = get_close_matches(name, sorted(by_name), n=3) or sorted(by_name)[:5]
            hint = (
                f"; did you mean {', '.join(close)}?" if close else "; the model has no attention block this can grow"
            )
            raise SurgeryError(f"no attention block named {name!r}{hint}")
        resolved.append((by_name[name], int(added)))
    return resolved


def plan_heads(model: ir.Model, requests: Mapping[str, int], *, init: str) -> HeadPlan:
    """Work out everything that adding `requests` (block → K new key/value heads) changes.

    Raises:
        SurgeryError: an unknown block, a bad K, a strategy that does not apply, or a node the
            head tracking cannot follow (one line naming it).
    """
    if init == "net2net":
        raise SurgeryError(
            "{param} net2net does not apply to heads (a copied head would change the softmax's "
            "inputs); use output-zero",
            param="init",
        )
    edits: list[Edit] = []
    tensors: list[tuple[ir.Value, Layout]] = []
    records: list[dict] = []
    literals: dict[tuple[int, int], tuple[ir.Node, int, dict[int, int], list[ir.Node]]] = {}
    for block, added in resolve_blocks(model, requests):
        candidate = {
            "sites": block.sites,
            "parts": block.parts,
            "dims": block.dims,
            "n_rep": block.heads // block.kv_heads,
        }
        trace = trace_heads(model, candidate, added)
        for record in trace.edits:
            _add_edit(record, edits, literals)
        tensors.extend(
            (value, _layout(track.original, track.axis, track.rank))
            for value, track in trace.tracks.items()
            if not track.merged
        )
        records.append(
            {
                "block": block.name,
                "added_kv_heads": added,
                "old_heads": block.heads,
                "new_heads": block.heads + added * candidate["n_rep"],
                "old_kv_heads": block.kv_heads,
                "new_kv_heads": block.kv_heads + added,
                "head_dim": block.head_dim,
            }
        )
    for node, index, positions, readers in literals.values():
        literal = np.array(constant_array(node.inputs[index]), copy=True)
        for position, new in positions.items():
            literal.reshape(-1)[position] = new
        # One edit per reading Reshape/Expand: the rewrite copies a shape chain that is also read
        # by reshapes that do not grow (dynamo shares one among blocks).
        edits.extend(Edit(node, index, "literal", literal=literal, reader=reader) for reader in readers)
    return HeadPlan(tuple(edits), tuple(tensors), tuple(records))


def _add_edit(record: tuple, edits: list[Edit], literals: dict) -> None:
    kind, node, index = record[0], record[1], record[2]
    if kind == "literal":
        position, new, reader = record[3], record[4], record[5]
        _, _, positions, readers = literals.setdefault((id(node), index), (node, index, {}, []))
        if reader not in readers:
            readers.append(reader)
        if positions.get(position, new) != new:
            raise SurgeryError(
                f"{node.op_type} node {node.name!r} builds a shape for several blocks that would need "
                "different head counts; add the same number of heads to each"
            )
        positions[position] = new
    elif kind == "sizes":
        edits.append(Edit(node, index, "literal", literal=record[3]))
    elif kind in ("fan-in", "fan-out"):
        axis, original, axes = record[3], record[4], record[5]
        rank = len(constant_shape(node.inputs[index]) or ())
        edits.append(Edit(node, index, kind, axis, _layout(original, axis, rank), weight_axes=axes))
    else:  # bias, neutral, grow (a constant only read by Shape: zero-filled)
        axis, original = record[3], record[4]
        rank = len(constant_shape(node.inputs[index]) or ())
        neutral = record[5] if kind == "neutral" else 0.0
        role = "bias" if kind == "bias" or neutral == 0.0 else "neutral"
        edits.append(Edit(node, index, role, axis, _layout(original, axis, rank), neutral=neutral))


__all__ = ["HeadPlan", "plan_heads", "resolve_blocks"]
