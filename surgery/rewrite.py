"""Apply a widening: the rewrite pass that follows the width analysis.

Size: the rewrite's steps (size pre-check, parameter edits, forks of shared shape chains,
metadata) share the plan's edit records; splitting them would pass those records across modules.

`widen` is the public entry point (a copy of the model comes back; the input is never
modified). `widen_in_place` does the same on an `ir.Model` without copying it, for the CLI and
for models larger than memory: every tensor that does not change, memory-mapped external data
included, is left as it is, and a changed parameter whose old units stay as they were is not
read either (see rule 3).

Rules, in the order they are applied:

1. The analysis (`surgery.analysis.analyse`) produces the complete plan; a blocker or a bad
   request raises `SurgeryError` before anything changes.
2. The bytes the new parameters need are checked against the memory available (only the new
   units of a parameter that rule 3 keeps lazy; three times the grown size of the others).
3. Every changed parameter is computed before any is written. Where the strategy keeps the old
   units as they are (output-zero, all-zero, all-random) and the parameter has one edit along
   one axis that keeps the old units in order, it becomes a lazy
   `surgery.external.ConcatenatedTensor`: slices of the old tensor (never read here; the
   streaming writer copies them file-to-file) joined with the new units' values, which are the
   only part held in memory. Otherwise (net2net, several edits, reordered units, ``Constant``
   nodes) `surgery.initializers.extend` computes it in memory. Both take the new values from
   `surgery.initializers.new_unit_values`, so they give the same bytes. ``numpy()`` on a lazy
   tensor computes the full array whenever it is asked for (fine for models that fit in memory).
4. Parameters are written: an initializer or ``Constant`` whose every use gets the same new
   contents is replaced in place (same name); one that is shared with a node that must not
   change (or needs other contents) is forked into a new initializer for the changed uses. A
   Reshape target computed from a changed constant (a ``Concat``) and shared with Reshapes
   that do not grow is computed by a copy of its nodes for the ones that do.
5. Every tensor that grows gets its new shape (``value.shape``), so serialised ``value_info``
   is updated rather than left stale, and attributes that count channels (a depthwise Conv's
   ``group``) get their new value; node and tensor names and the opset are kept.
6. Metadata: ``surgery.widen_history`` gets one record per widened layer and
   ``surgery.widened_tensors`` the new positions of every grown tensor, composed with earlier
   widenings so they stay relative to the never-widened model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from surgery.analysis import Edit, WidenPlan, analyse, infer_missing_shapes, parse_plan
from surgery.errors import SurgeryError
from surgery.external import ConcatenatedTensor, concatenate
from surgery.graph import ModelLike, as_ir, constant_array, constant_shape, like
from surgery.heads import plan_heads
from surgery.initializers import check_strategy, extend, new_unit_values, unit_sources
from surgery.layers import LayerSite, layer_sites
from surgery.layout import mask_ranges
from surgery.metadata import WIDEN_HISTORY_KEY, WIDENED_TENSORS_KEY
from surgery.naming import expand, layer_candidates
from surgery.ops import SHAPE_CARRIERS


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


def _check_memory(plan: WidenPlan, init: str) -> None:
    """Refuse a widening whose parameters cannot be computed in the memory available."""
    shapes, needed = plan.new_shapes(), 0
    for key, edits in _edits_by_input(plan).items():
        value = edits[0].value
        itemsize = value.dtype.itemsize if value.dtype is not None else 8
        grown = math.prod(shapes[key]) * itemsize
        if _keeps_old_units(edits, value, init):  # only the new units are held (rule 3)
            needed += grown - math.prod(constant_shape(value) or ()) * itemsize
        else:  # the old array, the grown one and a temporary: three times the new size
            needed += 3 * grown
    available = _available_memory()
    if needed > available:
        raise SurgeryError(
            f"the widened parameters need {needed / 2**30:.1f} GiB, more than fits in the "
            f"{available / 2**30:.1f} GiB of memory available; ask for fewer units"
        )


def _precheck_size(requests: list[tuple[LayerSite, int, str]]) -> None:
    """Refuse absurd unit counts (`parse_plan`'s requests) before the analysis allocates position arrays for them."""
    available = _available_memory()
    for site, added, name in requests:
        shape = constant_shape(site.node.inputs[1]) or (1,)
        per_unit = int(np.prod(shape)) // max(site.layer.width, 1)
        if (site.layer.width + added) * max(per_unit, 1) * 4 > available:
            raise SurgeryError(
                f"{name}: {added} new units would need more memory than the "
                f"{available / 2**30:.1f} GiB available; ask for fewer units"
            )


def _composed_tensors(model: ir.Model, plan: WidenPlan) -> dict:
    """``surgery.widened_tensors`` after this widening, relative to the never-widened model."""
    raw = model.metadata_props.get(WIDENED_TENSORS_KEY)
    try:
        entries = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise SurgeryError(
            f"metadata {WIDENED_TENSORS_KEY!r} is not valid JSON; cannot compose a new widening with it"
        ) from None
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
            records.append(
                {
                    "layer": member.site.layer.name,
                    "node": member.site.layer.node,
                    "added": group.added,
                    "old_width": group.old_width,
                    "new_width": group.new_width,
                    "strategy": init,
                    "seed": seed,
                }
            )
    return records


#: A changed parameter's new contents: in memory, or lazily "old tensor plus new units".
Contents = np.ndarray | ConcatenatedTensor


def _edits_by_input(plan: WidenPlan) -> dict[tuple[int, int], list[Edit]]:
    """The plan's edits grouped per changed parameter: (id of node, input index) → edits."""
    by_input: dict[tuple[int, int], list[Edit]] = {}
    for edit in plan.edits:
        by_input.setdefault((id(edit.node), edit.input_index), []).append(edit)
    return by_input


def _keeps_old_units(edits: list[Edit], value: ir.Value, init: str) -> bool:
    """Whether the parameter can be "old tensor + new units" (see `_lazy_contents`)."""
    if init == "net2net" or len(edits) != 1 or edits[0].role == "literal" or edits[0].layout is None:
        return False
    tensor = value.const_value
    if tensor is None or tensor.dtype == ir.DataType.STRING or tensor.dtype.bitwidth % 8:
        return False
    layout = edits[0].layout
    # Old units reordered (or repeated) need a gather in memory.
    return np.array_equal(layout.original[layout.original >= 0], np.arange(tensor.shape[edits[0].axis]))


def _lazy_contents(
    edits: list[Edit],
    value: ir.Value,
    final_shape: tuple[int, ...],
    *,
    init: str,
    fan_in: str | None,
    seed: int,
    key: str,
) -> ConcatenatedTensor | None:
    """The parameter as "old tensor plus new units", or None when it must be computed in memory.

    Lazy when the old units stay as they are: a strategy that leaves old weights alone, one
    non-literal edit, an initializer (not a ``Constant``) of a byte-sized dtype, and old positions
    in their old order. Runs of old positions become ``(old tensor, start, stop)`` slices (never
    read here: the writer streams them file-to-file), runs of new positions the matching columns
    of `new_unit_values`'s block, the same values `extend` writes.
    """
    if not _keeps_old_units(edits, value, init):
        return None
    edit, tensor = edits[0], value.const_value
    layout, axis = edit.layout, edit.axis
    dims = [int(d) for d in tensor.shape.numpy()]
    is_new = layout.new_mask
    dims[axis] = int(np.count_nonzero(is_new))
    block = new_unit_values(
        edit, dims, np.dtype(tensor.dtype.numpy()), final_shape, strategy=init, fan_in=fan_in, seed=seed, key=key
    )
    cuts = [0, *(np.flatnonzero(is_new[1:] != is_new[:-1]) + 1).tolist(), layout.size]
    parts: list = []
    taken = 0  # new positions already placed: the block's next column
    for start, stop in zip(cuts[:-1], cuts[1:]):
        if is_new[start]:
            index = (slice(None),) * axis + (slice(taken, taken + stop - start),)
            parts.append(np.ascontiguousarray(block[index]))
            taken += stop - start
        else:
            parts.append((tensor, int(layout.original[start]), int(layout.original[stop - 1]) + 1))
    return concatenate(parts, axis, name=value.name)


#: The roles whose new positions `widen`'s `unit_values` may set: the layer's own weights and
#: bias, and the weights of the layers that read its units.
GIVEN_ROLES = ("fan-in", "bias", "fan-out")


def _given_blocks(
    plan: WidenPlan, unit_values: Mapping[str, Mapping[str, np.ndarray]] | None, init: str
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """id(edit) → (positions along the edit's axis, the array `unit_values` puts there).

    Rules: every named layer was requested in the plan and grows alone (a coupled group would
    need one array per member); roles are `GIVEN_ROLES`; a role's edits are those of that role
    with new positions of the layer's group (its weight; its bias, a Gemm or Conv input or the
    shift of the Add right after a MatMul; every consumer weight reading it); each
    array has the parameter's shape with the edit's axis cut to those positions (the ONNX
    parameter's own layout). Net2net is refused: it rewrites old units too.
    """
    if not unit_values:
        return {}
    if init == "net2net":
        raise SurgeryError("unit_values cannot be combined with init 'net2net'; use output-zero or all-zero")
    groups = {name: group for group in plan.groups for name in group.requested}
    shapes = plan.new_shapes()
    blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for layer, roles in unit_values.items():
        group = groups.get(layer)
        if group is None:
            raise SurgeryError(f"unit_values names {layer!r}, which the plan does not widen")
        if len(group.members) != 1:
            raise SurgeryError(
                f"unit_values[{layer!r}]: the layer grows with {len(group.members) - 1} coupled "
                "layer(s); explicit values need a layer that grows alone"
            )
        output = group.members[0].node.outputs[0]
        for role, given in roles.items():
            if role not in GIVEN_ROLES:
                raise SurgeryError(f"unit_values[{layer!r}] has role {role!r}; choose from {', '.join(GIVEN_ROLES)}")
            found = 0
            for edit in plan.edits:
                # A MatMul's bias is the shift of the Add right after it (a "neutral" edit).
                layer_bias = edit.role == "neutral" and edit.node.op_type == "Add" and output in edit.node.inputs
                if (edit.role != role and not (role == "bias" and layer_bias)) or edit.layout is None:
                    continue
                positions = np.flatnonzero(edit.layout.new_mask & (edit.layout.group == group.id))
                if positions.size == 0:
                    continue
                shape = list(shapes[(id(edit.node), edit.input_index)])
                shape[edit.axis] = positions.size
                array = np.asarray(given)
                if array.shape != tuple(shape):
                    raise SurgeryError(
                        f"unit_values[{layer!r}][{role!r}] must have shape {tuple(shape)}, got {array.shape}"
                    )
                if not np.all(np.isfinite(array)):
                    raise SurgeryError(f"unit_values[{layer!r}][{role!r}] holds non-finite values")
                blocks[id(edit)] = (positions, array)
                found += 1
            if not found:
                raise SurgeryError(f"unit_values[{layer!r}][{role!r}]: the layer has no {role} parameter to set")
    return blocks


def _put_given(array: np.ndarray, edits: list[Edit], blocks: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`array` with the given values written over their edits' new positions."""
    for edit in edits:
        if id(edit) in blocks:
            positions, given = blocks[id(edit)]
            index = (slice(None),) * edit.axis + (positions,)
            array[index] = given.astype(array.dtype)
    return array


def _new_arrays(
    plan: WidenPlan, *, init: str, fan_in: str | None, seed: int, blocks: dict[int, tuple[np.ndarray, np.ndarray]]
) -> list[tuple[list[Edit], Contents]]:
    """Every changed parameter's new contents, keyed by its edits (one list per node input).

    Contents are a lazy `ConcatenatedTensor` where `_lazy_contents` allows it (only the new
    units are in memory; the writer streams the old ones), else an array computed by `extend`;
    a parameter that `blocks` (`_given_blocks`) writes into is always computed in memory.
    """
    sources = {group.id: unit_sources(group, seed) for group in plan.groups} if init == "net2net" else {}
    shapes = plan.new_shapes()
    results: list[tuple[list[Edit], Contents]] = []
    for key, edits in _edits_by_input(plan).items():
        value = edits[0].value
        name = f"{value.name}@{edits[0].node.name}:{edits[0].input_index}"
        given = any(id(edit) in blocks for edit in edits)
        lazy = (
            None if given else _lazy_contents(edits, value, shapes[key], init=init, fan_in=fan_in, seed=seed, key=name)
        )
        if lazy is not None:
            results.append((edits, lazy))
            continue
        array = constant_array(value)  # only parameters that change are ever read
        new = extend(array, edits, shapes[key], strategy=init, fan_in=fan_in, seed=seed, sources=sources, key=name)
        results.append((edits, _put_given(np.array(new), edits, blocks)))
    return results


def _as_array(contents: Contents) -> np.ndarray:
    return contents if isinstance(contents, np.ndarray) else contents.numpy()


def _shape(contents: Contents) -> ir.Shape:
    return ir.Shape(contents.shape if isinstance(contents, np.ndarray) else contents.shape.numpy())


def _dtype(contents: Contents) -> ir.DataType:
    return ir.DataType.from_numpy(contents.dtype) if isinstance(contents, np.ndarray) else contents.dtype


def _tensor(contents: Contents, name: str | None) -> ir.TensorProtocol:
    if isinstance(contents, np.ndarray):
        return ir.Tensor(contents, name=name)
    contents.name = name  # each lazy tensor is made for one destination: naming it is safe
    return contents


def _unique_name(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers)
    for n in range(1, 1 << 20):
        name = f"{base}_widened" if n == 1 else f"{base}_widened{n}"
        if name not in taken:
            return name
    raise SurgeryError(f"cannot find a free name for a widened copy of {base!r}")


def _write_parameters(graph: ir.Graph, arrays: list[tuple[list[Edit], Contents]]) -> list[str]:
    """Put the new contents in place (rule 4 of the module docstring); returns forked names."""
    by_value: dict[ir.Value, list[tuple[ir.Node, int, Contents]]] = {}
    for edits, contents in arrays:
        by_value.setdefault(edits[0].value, []).append((edits[0].node, edits[0].input_index, contents))
    forked = []
    for value, changes in by_value.items():
        uses = {(id(use.node), use.idx) for use in value.uses()}
        changed = {(id(node), index) for node, index, _ in changes}
        first = changes[0][2]
        # A parameter changed for a single use is never compared (a lazy one is never read here).
        same = len(changes) == 1 or all(_same(contents, first) for *_, contents in changes)
        if same and uses == changed and not value.is_graph_output():
            _replace_contents(value, first)
            continue
        for node, index, contents in changes:
            name = _unique_name(graph, value.name or "param")
            copy = ir.Value(
                name=name,
                shape=_shape(contents),
                type=ir.TensorType(_dtype(contents)),
                const_value=_tensor(contents, name),
            )
            graph.register_initializer(copy)
            node.replace_input_with(index, copy)
            forked.append(name)
    return forked


def _same(a: Contents, b: Contents) -> bool:
    if _shape(a) != _shape(b) or _dtype(a) != _dtype(b):
        return False
    return np.array_equal(_as_array(a), _as_array(b))


def _replace_contents(value: ir.Value, contents: Contents) -> None:
    producer = value.producer()
    if value.const_value is not None:
        value.const_value = _tensor(contents, value.name)
    elif producer is not None and producer.op_type == "Constant":
        producer.attributes["value"] = ir.AttrTensor("value", ir.Tensor(_as_array(contents), name=value.name))
    else:
        raise SurgeryError(f"{value.name!r} is not a constant; it cannot be widened")
    value.shape = _shape(contents)


def _shape_readers(node: ir.Node) -> set[ir.Node]:
    """The nodes that `node`'s outputs, shape tensors, end in (through `SHAPE_CARRIERS`)."""
    readers: set[ir.Node] = set()
    stack = [out for out in node.outputs if out is not None]
    while stack:
        for use in stack.pop().uses():
            if use.node.op_type in SHAPE_CARRIERS:
                stack.extend(out for out in use.node.outputs if out is not None)
            else:
                readers.add(use.node)
    return readers


def _chain(target: ir.Node, readers: list[ir.Node]) -> list[ir.Node]:
    """The nodes from `target` to the readers' shape inputs (target included), in graph order."""
    on_path: dict[ir.Node, bool] = {}

    def reaches(node: ir.Node | None) -> bool:
        if node is None:
            return False
        if node not in on_path:
            on_path[node] = node is target or (
                node.op_type in SHAPE_CARRIERS and any(reaches(v.producer()) for v in node.inputs if v is not None)
            )
        return on_path[node]

    for reader in readers:
        reaches(reader.inputs[1].producer())
    return [node for node in target.graph if on_path.get(node)]


def _free_name(taken: set[str], base: str) -> str:
    name, n = f"{base}_widened", 1
    while name in taken:
        n += 1
        name = f"{base}_widened{n}"
    taken.add(name)
    return name


def _unshare_shape_chains(
    graph: ir.Graph, arrays: list[tuple[list[Edit], Contents]]
) -> list[tuple[list[Edit], Contents]]:
    """Rule 4 for shapes computed at run time: a literal edit of a constant that a Concat (or
    another `SHAPE_CARRIERS` chain) turns into the target of Reshapes that do not all grow
    (dynamo's one target shared by several blocks) is made on a copy of that chain, read only by
    the Reshapes that grow; the others keep the original."""
    result = []
    taken = {n.name for n in graph if n.name} | {v.name for n in graph for v in n.outputs if v.name}
    for edits, contents in arrays:
        target = edits[0].node
        readers = [e.reader for e in edits if e.reader is not None and e.reader is not target]
        if edits[0].role != "literal" or not readers or _shape_readers(target) <= set(readers):
            result.append((edits, contents))
            continue
        copies: dict[ir.Value, ir.Value] = {}
        clones = []
        for node in _chain(target, readers):
            clone = ir.Node(
                node.domain,
                node.op_type,
                [copies.get(v, v) for v in node.inputs],
                [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()],
                num_outputs=len(node.outputs),
                version=node.version,
                name=_free_name(taken, node.name or "shape"),
            )
            for old, new in zip(node.outputs, clone.outputs):
                new.name, new.shape, new.type = _free_name(taken, old.name or "shape"), old.shape, old.type
                copies[old] = new
            clones.append(clone)
        graph.insert_before(min(readers, key=list(graph).index), clones)
        for reader in readers:
            reader.replace_input_with(1, copies[reader.inputs[1]])
        moved = clones[0]
        result.append(([dataclasses.replace(e, node=moved) for e in edits], contents))
    return result


def _write_shapes(plan: WidenPlan) -> None:
    for value, layout in plan.tensors:
        if value.shape is None or len(value.shape) != layout.rank:
            continue
        dims = list(value.shape.dims)
        dims[layout.axis] = layout.size
        value.shape = ir.Shape(dims)


def widen_in_place(
    model: ir.Model,
    plan: Mapping[str, int],
    *,
    init: str = "output-zero",
    fan_in: str | None = None,
    seed: int = 0,
    allow_output_change: bool = False,
    align: int | None = None,
    heads: Mapping[str, int] | None = None,
    unit_values: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> WidenResult:
    """Widen `model` itself (no copy): see `widen` for the arguments.

    Shape inference fills in value shapes the graph lacks before the analysis (in place).
    On a `SurgeryError` nothing but those inferred shapes has changed.
    """
    check_strategy(init, fan_in)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SurgeryError(f"{{param}} must be a non-negative integer, got {seed!r}", param="seed")
    sites = layer_sites(model)
    plan = expand(plan, layer_candidates((s.layer.node, s.layer.name) for s in sites), "layer")
    if plan:
        _precheck_size(parse_plan(model, plan, sites))
    infer_missing_shapes(model)
    if plan or not heads:
        widen_plan = analyse(model, plan, allow_output_change=allow_output_change, align=align)
    else:
        widen_plan = WidenPlan((), (), ())
    head_plan = plan_heads(model, heads, init=init) if heads else None
    if head_plan is not None:
        widen_plan = head_plan.joined(widen_plan)
    _check_memory(widen_plan, init)
    tensors = _composed_tensors(model, widen_plan)
    arrays = _new_arrays(
        widen_plan, init=init, fan_in=fan_in, seed=seed, blocks=_given_blocks(widen_plan, unit_values, init)
    )
    records = _history(widen_plan, init, int(seed))
    if head_plan is not None:
        records += [{**record, "strategy": init, "seed": int(seed)} for record in head_plan.records]
    raw = model.metadata_props.get(WIDEN_HISTORY_KEY)
    try:
        history = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        raise SurgeryError(f"metadata {WIDEN_HISTORY_KEY!r} is not valid JSON; cannot append to it") from None
    # Nothing above changed the model (beyond inferred shapes); from here on it is written.
    arrays = _unshare_shape_chains(model.graph, arrays)
    forked = _write_parameters(model.graph, arrays)
    _write_shapes(widen_plan)
    for change in widen_plan.attributes:
        change.node.attributes[change.name] = ir.AttrInt64(change.name, change.value)
    model.metadata_props[WIDEN_HISTORY_KEY] = json.dumps(history + records)
    model.metadata_props[WIDENED_TENSORS_KEY] = json.dumps(tensors)
    return WidenResult(widen_plan, tuple(records), tuple(forked))


def widen(
    model: ModelLike,
    plan: Mapping[str, int] | None = None,
    *,
    init: str = "output-zero",
    fan_in: str | None = None,
    seed: int = 0,
    allow_output_change: bool = False,
    align: int | None = None,
    heads: Mapping[str, int] | None = None,
    unit_values: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> ModelLike:
    """Add units to layers without changing what the model computes (for the preserving strategies).

    Args:
        model: an `onnx.ModelProto` or `ir.Model`; never modified.
        plan: layer name (node name as `surgery inspect` shows it, or its friendly name: the Keras
            layer name or PyTorch module path) or glob pattern (``"h.*.mlp.c_fc"``: every match)
            → number of new units K ≥ 1. Layers coupled to a requested one (by an
            Add, Mul, … join) grow with it by the same K.
        init: ``"output-zero"`` (default; random fan-in, zero fan-out: bitwise-equal outputs),
            ``"all-zero"``, ``"net2net"`` or ``"all-random"`` (see `surgery.initializers`).
        fan_in: ``"glorot"``, ``"he"`` or ``"normal"``; None picks He after ReLU-like activations
            and Glorot otherwise.
        seed: seeds every random draw; the same model, plan and seed give the same bytes.
        allow_output_change: let a widened tensor be a graph output (its shape changes).
        align: round every new width up to a multiple of `align` (e.g. 16 keeps onnxruntime's
            NCHWc Conv kernels for channel counts that were multiples of 16).
        heads: attention block name (as `surgery.attention.find_blocks` lists it) or glob → K new
            key/value heads (K heads without grouped-query attention); see `surgery.heads`.
        unit_values: layer name → {"fan-in" | "bias" | "fan-out": array}: the new units' values
            computed elsewhere (e.g. GradMax's fan-out), written instead of the strategy's for the
            roles given, each in the ONNX parameter's layout with the unit axis cut to the new
            units (a MatMul weight's fan-in is (inputs, K), its consumer's fan-out (K, outputs)).
            Outputs stay equal only if the values keep the new units silent (zero fan-in before
            an activation with f(0) = 0, or zero fan-out).

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
    widen_in_place(
        working,
        plan or {},
        init=init,
        fan_in=fan_in,
        seed=seed,
        allow_output_change=allow_output_change,
        align=align,
        heads=heads,
        unit_values=unit_values,
    )
    return like(working, model)


__all__ = ["widen", "widen_in_place", "WidenResult"]
