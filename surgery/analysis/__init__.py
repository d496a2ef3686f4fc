"""Width analysis: everything a widening must change, worked out before anything is changed.

Growing a layer by K units adds K positions along one axis of its output tensor. The analysis
follows that tensor forward and classifies every node it meets, the way Torch-Pruning's
dependency graph groups coupled channels, applied to growth. The modules:

- `surgery.ops` (the op catalogue): what each op is — its kind, the neutral value a per-unit
  constant gets, whether it joins, its activation family. Op knowledge lives there only.
- `surgery.analysis.rules` and `surgery.analysis.reshape`: one rule object per kind, with its
  forward behaviour (layouts of a node's outputs, the edits it needs), how it carries a shape
  tensor, and its backtrace (which inputs a growth of its output comes from).
- `surgery.analysis.walk`: the pass over the graph; couplings found on the way merge groups or
  add layers to them in place.
- `surgery.analysis.plan`: the typed, immutable result (`WidenPlan`, `Group`, `Member`, `Edit`).

The cases, briefly (docs/widen-analysis.md has the table, kind by kind):

- **producers** — the requested layers (``Gemm``, ``MatMul`` with a constant rank-2 weight,
  ``Conv`` with group 1; asking for a depthwise ``Conv`` asks for the layers that feed it): new
  weight columns/filters ("fan-in") and bias entries.
- **pass-through** — elementwise ops, per-channel norms and pools, ``Pow`` by 1…4, layout
  changes (Transpose, Squeeze, Concat, Split across the axis, Flatten/Reshape that merge the
  axis or keep it last, with shape constants updated and shapes read at run time followed),
  depthwise ``Conv`` (new filters for the new channels, ``group`` updated); per-unit constants
  get neutral entries.
- **consumers** — MatMul, Gemm and group-1 Conv read the new positions with new fan-out entries;
  the widening stops there.
- **coupled joins** — an elementwise join with a non-constant operand that must grow too: the
  layers it comes from join the group (residual branches, SwiGLU's gate and up).
- **blockers** — refused with one line naming the node, its op and why: statistics, softmaxes,
  reductions and arg-extrema over the widened axis, division by it, a graph output (unless
  `allow_output_change`), a shape that reads the new size elsewhere, and any op or domain the
  analysis does not know — it never guesses.

Nothing here changes the model: `analyse` returns an immutable `WidenPlan` that
`surgery.rewrite` applies.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from surgery.analysis.common import block
from surgery.analysis.plan import (
    SGEMM_K_BLOCK,
    AttributeEdit,
    ChannelChange,
    Edit,
    Group,
    Member,
    RowShift,
    WidenPlan,
)
from surgery.analysis.rules import is_depthwise
from surgery.analysis.walk import RULES, GroupBuilder, backtrace, find_plan, make_member, rule_for
from surgery.errors import SurgeryError
from surgery.layers import LayerSite, layer_sites, resolve_layer
from surgery.layout import Layout, mask_ranges
from surgery.shapes import infer_missing_shapes  # the one shape inference (weight-less view); re-exported


def parse_plan(model: ir.Model, plan: Mapping[str, int], sites: list[LayerSite]) -> list[tuple[LayerSite, int, str]]:
    """`plan` checked (each name a layer, once; each count an integer ≥ 1) as (site, new units, name) requests."""
    if not plan:
        raise SurgeryError("nothing to widen: give at least one layer and a number of new units")
    requested: list[tuple[LayerSite, int, str]] = []
    seen: dict[ir.Node, str] = {}
    for name, added in plan.items():
        if isinstance(added, bool) or not isinstance(added, (int, np.integer)):
            raise SurgeryError(f"{name}: the number of new units must be an integer, got {added!r}")
        if added <= 0:
            raise SurgeryError(f"{name}: the number of new units must be at least 1, got {added}")
        site = resolve_layer(model, name, sites)
        if site.node in seen:
            raise SurgeryError(f"layer {name!r} is requested twice (also as {seen[site.node]!r})")
        seen[site.node] = name
        requested.append((site, int(added), name))
    return requested


def analyse(
    model: ir.Model,
    plan: Mapping[str, int],
    *,
    allow_output_change: bool = False,
    align: int | None = None,
    sites: list[LayerSite] | None = None,
) -> WidenPlan:
    """Work out everything that `plan` (layer name → new units) changes, without changing it.

    Args:
        model: the model (only read).
        plan: layer node name or friendly name → number of new units (≥ 1).
        allow_output_change: let a widened tensor reach a graph output (its shape changes).
        align: round every new width up to a multiple of `align`.
        sites: `layer_sites(model)`, when the caller analyses many plans of an unchanged model
            (found once, so that analysing every layer stays linear in the graph's size).

    Returns:
        The `WidenPlan`: coupled groups, every parameter edit, every tensor that grows.

    Raises:
        SurgeryError: a bad request or a blocker, one line naming the node, its op and why.

    Example:
        >>> plan = analyse(model, {"dense_1": 4})
        >>> [(g.old_width, g.new_width) for g in plan.groups]
        [(16, 20)]
    """
    if align is not None and align < 1:
        raise SurgeryError(f"{{param}} must be at least 1, got {align}", param="align")
    sites = layer_sites(model) if sites is None else sites
    return _analyse(model, parse_plan(model, plan, sites), allow_output_change, align, sites)


def trace_units(model: ir.Model, layer: str) -> WidenPlan:
    """Where each unit of `layer` goes, as a widening by zero units would see it: its coupled
    layers, every weight that reads it and every per-unit constant on the way (graph outputs
    allowed). Used by `surgery.symmetry`; raises SurgeryError at a blocker, and for a depthwise
    Conv, whose units are those of the layer that feeds it."""
    sites = layer_sites(model)
    site = resolve_layer(model, layer, sites)
    if is_depthwise(site.node):
        raise block(site.node, "is a depthwise convolution: its units are those of the layer that feeds it")
    return _analyse(model, [(site, 0, layer)], True, None, sites)


def _members_of(site: LayerSite, sites: dict[ir.Node, LayerSite]) -> list[LayerSite]:
    """The layers a request for `site` grows: itself, or for a depthwise Conv (which grows with
    its input, see `ConvRule`) the layers its input channels come from."""
    if not is_depthwise(site.node):
        return [site]
    return backtrace(site.node.inputs[0], 1, sites, site.node)


def _analyse(
    model: ir.Model,
    requested: list[tuple[LayerSite, int, str]],
    allow_output_change: bool,
    align: int | None,
    found: list[LayerSite],
) -> WidenPlan:
    sites = {site.node: site for site in found}
    groups: list[GroupBuilder] = []
    for site, added, name in requested:
        members = _members_of(site, sites)
        old = members[0].layer.width
        if any(m.layer.width != old for m in members):
            raise block(site.node, "grows with layers of different widths")
        if align:
            added = -(-(old + added) // align) * align - old
        groups.append(GroupBuilder([make_member(m) for m in members], old, added, [name]))
    return find_plan(model.graph, groups, sites, allow_output_change)


__all__ = [
    "Layout",
    "Member",
    "Group",
    "Edit",
    "AttributeEdit",
    "ChannelChange",
    "RowShift",
    "SGEMM_K_BLOCK",
    "WidenPlan",
    "RULES",
    "rule_for",
    "analyse",
    "parse_plan",
    "trace_units",
    "infer_missing_shapes",
    "mask_ranges",
]
