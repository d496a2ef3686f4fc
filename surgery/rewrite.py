"""Apply a widening: the rewrite pass that follows the width analysis.

`widen` is the public entry point (a copy of the model comes back; the input is never
modified). `widen_in_place` does the same on an `ir.Model` without copying it, for the CLI and
for models larger than memory: only the parameters that change are read (`.numpy()`), every
other tensor, memory-mapped external data included, is left as it is.

Rules, in the order they are applied:

1. The analysis (`surgery.analysis.analyse`) produces the complete plan; a blocker or a bad
   request raises `SurgeryError` before anything changes.
2. The bytes the new parameters need are checked against the memory available.
3. Every changed parameter is computed (`surgery.initializers.extend`) before any is written.
4. Parameters are written: an initializer or ``Constant`` whose every use gets the same new
   contents is replaced in place (same name); one that is shared with a node that must not
   change (or needs other contents) is forked into a new initializer for the changed uses.
5. Every tensor that grows gets its new shape (``value.shape``), so serialised ``value_info``
   is updated rather than left stale; node and tensor names and the opset are kept.
6. Metadata: ``surgery.widen_history`` gets one record per widened layer and
   ``surgery.widened_tensors`` the new positions of every grown tensor, composed with earlier
   widenings so they stay relative to the never-widened model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from surgery.analysis import Edit, WidenPlan, analyse, infer_missing_shapes, mask_ranges
from surgery.errors import SurgeryError
from surgery.graph import ModelLike, as_ir, constant_array, constant_shape, like
from surgery.initializers import check_strategy, extend, unit_sources
from surgery.layers import resolve_layer

HISTORY_KEY = "surgery.widen_history"
TENSORS_KEY = "surgery.widened_tensors"


@dataclass(frozen=True)
class WidenResult:
    """What `widen_in_place` did.

    Attributes:
        plan: the analysis's plan that was applied.
        history: the records appended to ``surgery.widen_history``.
        forked: names of parameters that were shared and got a widened copy.
    """

    plan: WidenPlan
    history: tuple[dict, ...]
    forked: tuple[str, ...]


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _check_memory(plan: WidenPlan) -> None:
    needed, available = plan.added_bytes(), _available_memory()
    # The old array, the grown one and a temporary per parameter: three times the new size.
    if 3 * needed > available:
        raise SurgeryError(
            f"the widened parameters need {needed / 2**30:.1f} GiB, more than fits in the "
            f"{available / 2**30:.1f} GiB of memory available; ask for fewer units"
        )


def _precheck_size(model: ir.Model, plan: Mapping[str, int]) -> None:
    """Refuse absurd unit counts before the analysis allocates position arrays for them."""
    available = _available_memory()
    for name, added in plan.items():
        if isinstance(added, (int, np.integer)) and not isinstance(added, bool) and added > 0:
            site = resolve_layer(model, name)
            shape = constant_shape(site.node.inputs[1]) or (1,)
            per_unit = int(np.prod(shape)) // max(site.layer.width, 1)
            if (site.layer.width + int(added)) * max(per_unit, 1) * 4 > available:
                raise SurgeryError(
                    f"{name}: {added} new units would need more memory than the "
                    f"{available / 2**30:.1f} GiB available; ask for fewer units"
                )


def _composed_tensors(model: ir.Model, plan: WidenPlan) -> dict:
    """``surgery.widened_tensors`` after this widening, relative to the never-widened model."""
    raw = model.metadata_props.get(TENSORS_KEY)
    try:
        entries = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise SurgeryError(f"metadata {TENSORS_KEY!r} is not valid JSON; cannot compose a new widening with it") from None
    for value, layout in plan.tensors:
        name = value.name or ""
        earlier = entries.get(name)
        if earlier is None:
            entries[name] = {"axis": layout.axis, "original": layout.original_size, "new": layout.ranges()}
            continue
        if earlier["axis"] != layout.axis:
            raise SurgeryError(
                f"tensor {name!r} was widened along axis {earlier['axis']} before; "
                f"widening it along axis {layout.axis} as well is not supported"
            )
        was_new = np.zeros(layout.original_size, dtype=bool)
        for start, stop in earlier["new"]:
            was_new[start:stop] = True
        old = layout.original
        now_new = (old < 0) | was_new[np.where(old >= 0, old, 0)]
        entries[name] = {"axis": layout.axis, "original": earlier["original"], "new": mask_ranges(now_new)}
    return dict(sorted(entries.items()))


def _history(plan: WidenPlan, init: str, seed: int) -> list[dict]:
    records = []
    for group in plan.groups:
        for member in group.members:
            records.append({
                "layer": member.site.layer.name,
                "node": member.site.layer.node,
                "added": group.added,
                "old_width": group.old_width,
                "new_width": group.new_width,
                "strategy": init,
                "seed": seed,
            })
    return records


def _new_arrays(plan: WidenPlan, *, init: str, fan_in: str | None, seed: int) -> list[tuple[list[Edit], np.ndarray]]:
    """Every changed parameter's new contents, keyed by its edits (one list per node input)."""
    sources = {group.id: unit_sources(group, seed) for group in plan.groups} if init == "net2net" else {}
    shapes = plan.new_shapes()
    by_input: dict[tuple[int, int], list[Edit]] = {}
    for edit in plan.edits:
        by_input.setdefault((id(edit.node), edit.input_index), []).append(edit)
    results = []
    for key, edits in by_input.items():
        value = edits[0].value
        array = constant_array(value)  # only parameters that change are ever read
        name = f"{value.name}@{edits[0].node.name}:{edits[0].input_index}"
        new = extend(array, edits, shapes[key], strategy=init, fan_in=fan_in, seed=seed, sources=sources, key=name)
        results.append((edits, np.ascontiguousarray(new)))
    return results


def _unique_name(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers)
    for n in range(1, 1 << 20):
        name = f"{base}_widened" if n == 1 else f"{base}_widened{n}"
        if name not in taken:
            return name
    raise SurgeryError(f"cannot find a free name for a widened copy of {base!r}")


def _write_parameters(graph: ir.Graph, arrays: list[tuple[list[Edit], np.ndarray]]) -> list[str]:
    """Put the new contents in place (rule 4 of the module docstring); returns forked names."""
    by_value: dict[ir.Value, list[tuple[ir.Node, int, np.ndarray]]] = {}
    for edits, array in arrays:
        by_value.setdefault(edits[0].value, []).append((edits[0].node, edits[0].input_index, array))
    forked = []
    for value, changes in by_value.items():
        uses = {(id(use.node), use.idx) for use in value.uses()}
        changed = {(id(node), index) for node, index, _ in changes}
        first = changes[0][2]
        same = all(a.shape == first.shape and a.dtype == first.dtype and np.array_equal(a, first) for *_, a in changes)
        if same and uses == changed and not value.is_graph_output():
            _replace_contents(value, first)
            continue
        for node, index, array in changes:
            name = _unique_name(graph, value.name or "param")
            copy = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                            const_value=ir.Tensor(array, name=name))
            graph.register_initializer(copy)
            node.replace_input_with(index, copy)
            forked.append(name)
    return forked


def _replace_contents(value: ir.Value, array: np.ndarray) -> None:
    tensor = ir.Tensor(array, name=value.name)
    producer = value.producer()
    if value.const_value is not None:
        value.const_value = tensor
    elif producer is not None and producer.op_type == "Constant":
        producer.attributes["value"] = ir.AttrTensor("value", tensor)
    else:
        raise SurgeryError(f"{value.name!r} is not a constant; it cannot be widened")
    value.shape = ir.Shape(array.shape)


def _write_shapes(plan: WidenPlan) -> None:
    for value, layout in plan.tensors:
        if value.shape is None or len(value.shape) != layout.rank:
            continue
        dims = list(value.shape.dims)
        dims[layout.axis] = layout.size
        value.shape = ir.Shape(dims)


def widen_in_place(model: ir.Model, plan: Mapping[str, int], *, init: str = "output-zero", fan_in: str | None = None,
                   seed: int = 0, allow_output_change: bool = False, align: int | None = None) -> WidenResult:
    """Widen `model` itself (no copy): see `widen` for the arguments.

    Shape inference fills in value shapes the graph lacks before the analysis (in place).
    On a `SurgeryError` nothing but those inferred shapes has changed.
    """
    check_strategy(init, fan_in)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SurgeryError(f"--seed must be a non-negative integer, got {seed!r}")
    _precheck_size(model, plan)
    infer_missing_shapes(model)
    widen_plan = analyse(model, plan, allow_output_change=allow_output_change, align=align)
    _check_memory(widen_plan)
    tensors = _composed_tensors(model, widen_plan)
    arrays = _new_arrays(widen_plan, init=init, fan_in=fan_in, seed=seed)
    records = _history(widen_plan, init, int(seed))
    raw = model.metadata_props.get(HISTORY_KEY)
    try:
        history = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        raise SurgeryError(f"metadata {HISTORY_KEY!r} is not valid JSON; cannot append to it") from None
    # Nothing above changed the model (beyond inferred shapes); from here on it is written.
    forked = _write_parameters(model.graph, arrays)
    _write_shapes(widen_plan)
    model.metadata_props[HISTORY_KEY] = json.dumps(history + records)
    model.metadata_props[TENSORS_KEY] = json.dumps(tensors)
    return WidenResult(widen_plan, tuple(records), tuple(forked))


def widen(model: ModelLike, plan: Mapping[str, int], *, init: str = "output-zero", fan_in: str | None = None,
          seed: int = 0, allow_output_change: bool = False, align: int | None = None) -> ModelLike:
    """Add units to layers without changing what the model computes (for the preserving strategies).

    Args:
        model: an `onnx.ModelProto` or `ir.Model`; never modified.
        plan: layer name (node name as `surgery inspect` shows it, or the Keras layer name of an
            exported model) → number of new units K ≥ 1. Layers coupled to a requested one (by an
            Add, Mul, … join) grow with it by the same K.
        init: ``"output-zero"`` (default; random fan-in, zero fan-out: bitwise-equal outputs),
            ``"all-zero"``, ``"net2net"`` or ``"all-random"`` (see `surgery.initializers`).
        fan_in: ``"glorot"``, ``"he"`` or ``"normal"``; None picks He after ReLU-like activations
            and Glorot otherwise.
        seed: seeds every random draw; the same model, plan and seed give the same bytes.
        allow_output_change: let a widened tensor be a graph output (its shape changes).
        align: round every new width up to a multiple of `align` (e.g. 16 keeps onnxruntime's
            NCHWc Conv kernels for channel counts that were multiples of 16).

    Returns:
        The widened model, of the same kind as `model`.

    Raises:
        SurgeryError: a bad request or a node that blocks the widening (the message names it).

    Example:
        >>> wider = surgery.widen(onnx.load("mlp.onnx"), {"dense_1": 8})
        >>> surgery.verify(onnx.load("mlp.onnx"), wider).equivalent
        True
    """
    if isinstance(model, onnx.ModelProto):
        working = as_ir(model)  # a fresh graph; its tensors are read-only views of the proto
    else:
        working = as_ir(model).clone()  # tensors are shared, never written: the rewrite replaces them
    widen_in_place(working, plan, init=init, fan_in=fan_in, seed=seed,
                   allow_output_change=allow_output_change, align=align)
    return like(working, model)


__all__ = ["widen", "widen_in_place", "WidenResult", "HISTORY_KEY", "TENSORS_KEY"]
