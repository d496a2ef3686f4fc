"""Width analysis: everything a widening must change, worked out before anything is changed.

Growing a layer by K units adds K positions along one axis of its output tensor. The analysis
follows that tensor forward through `value.uses()` and classifies every node it meets, the way
Torch-Pruning's dependency graph groups coupled channels, applied to growth:

- **producers** — the requested layers (``Gemm`` with any transA/transB, ``MatMul`` with a
  constant rank-2 weight, ``Conv`` with group 1): new weight columns/filters ("fan-in") and new
  bias entries. The bias ``Add`` after a ``MatMul`` is an ordinary per-unit constant (below).
- **channel-wise pass-through** — the new positions flow through unchanged in kind:
  elementwise activations (Relu, LeakyRelu, Elu, Selu, Celu, Tanh, Sigmoid, HardSigmoid,
  HardSwish, Softplus, Softsign, Gelu, Erf, Clip, Mish, Neg, Abs, Sign), Identity, Dropout,
  Cast; ``BatchNormalization`` (new scale 1, bias 0, mean 0, var 1) and
  ``InstanceNormalization`` on the channel axis (scale 1, bias 0); elementwise
  ``Add/Sub/Mul/Div/Max/Min/Sum/Mean/PRelu`` with constants: a constant that broadcasts along
  the axis is left alone, one with a per-unit entry gets new entries (0 for Add/Sub/Max/Min/
  Sum/Mean, 1 for Mul/Div, 0.25 for a PRelu slope) — this covers the bias Add of MatMul layers,
  tf2onnx's folded BatchNormalization (Mul + Add) and PyTorch's Erf-GELU (Div/Erf/Add/Mul with
  scalar Constants); ``MaxPool``, ``AveragePool``, ``LpPool`` and the global pools on the
  channel axis; ``Transpose`` (the axis moves to ``perm.index(axis)``); ``Squeeze``/``Unsqueeze``;
  reductions, ``ArgMax``/``ArgMin``, ``Softmax`` and ``LayerNormalization`` over *other* axes;
  ``Flatten``/``Reshape`` that merge the widened axis with static neighbours (the new positions
  follow the flatten order: channel-major after an NCHW Conv, interleaved ``p·C' + c`` after
  tf2onnx's NHWC Transpose), including tf2onnx's dynamic-batch chain
  ``Shape → Gather/Slice → Cast → Concat → Reshape`` whose constant flattened size is updated;
  ``Concat`` along the axis (new positions land at each input's offset).
- **consumers** — ``MatMul`` (rows of its constant weight), ``Gemm`` (rows or columns of B
  depending on transA/transB), ``Conv`` with group 1 (input channels of its weight) receive new
  fan-out entries for the new positions; the widening stops there.
- **coupled joins** — an elementwise node joining the widened tensor with a non-constant tensor
  that does not broadcast along the axis: the other side must grow with it. Its producer is
  found by walking back through pass-through nodes; when that reaches a growable layer the layer
  joins the group (same number of new units, e.g. residual branches or SwiGLU's gate and up);
  a graph input, a constant of the wrong shape or anything else is refused.
- **blockers** — refused with one line naming the node, its op and why: normalisations over the
  widened axis (LayerNormalization, GroupNormalization, InstanceNormalization,
  MeanVarianceNormalization, LpNormalization), Softmax/LogSoftmax/Hardmax, Reduce* and
  ArgMax/ArgMin over it, division by the widened tensor, the widened tensor reaching a graph
  output (unless `allow_output_change`), a shape that reads the new size, and any op the analysis
  does not know — it never guesses.

Nothing here changes the model: `analyse` returns an immutable `WidenPlan` that
`surgery.rewrite` applies.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from surgery.analysis.common import block
from surgery.analysis.plan import (
    SGEMM_K_BLOCK, AttributeEdit, ChannelChange, Edit, Group, Member, RowShift, WidenPlan,
)
from surgery.analysis.rules import is_depthwise
from surgery.analysis.walk import RULES, GroupBuilder, backtrace, make_member, rule_for, walk
from surgery.errors import SurgeryError
from surgery.layers import LayerSite, layer_sites, resolve_layer
from surgery.layout import Layout, mask_ranges
from surgery.shapes import infer_missing_shapes  # the one shape inference (weight-less view); re-exported


def _parse_plan(model: ir.Model, plan: Mapping[str, int]) -> list[tuple[LayerSite, int, str]]:
    if not plan:
        raise SurgeryError("nothing to widen: give at least one layer and a number of new units")
    requested: list[tuple[LayerSite, int, str]] = []
    seen: dict[ir.Node, str] = {}
    sites = layer_sites(model)  # once: a plan naming every block stays linear in the graph's size
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


def analyse(model: ir.Model, plan: Mapping[str, int], *, allow_output_change: bool = False,
            align: int | None = None) -> WidenPlan:
    """Work out everything that `plan` (layer name → new units) changes, without changing it.

    Args:
        model: the model (only read).
        plan: layer node name or friendly name → number of new units (≥ 1).
        allow_output_change: let a widened tensor reach a graph output (its shape changes).
        align: round every new width up to a multiple of `align`.

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
    return _analyse(model, _parse_plan(model, plan), allow_output_change, align)


def trace_units(model: ir.Model, layer: str) -> WidenPlan:
    """Where each unit of `layer` goes, as a widening by zero units would see it: its coupled
    layers, every weight that reads it and every per-unit constant on the way (graph outputs
    allowed). Used by `surgery.symmetry`; raises SurgeryError at a blocker."""
    return _analyse(model, [(resolve_layer(model, layer), 0, layer)], True, None)


def _members_of(site: LayerSite, sites: dict[ir.Node, LayerSite]) -> list[LayerSite]:
    """The layers a request for `site` grows: itself, or for a depthwise Conv (which grows with
    its input, see `ConvRule`) the layers its input channels come from."""
    if not is_depthwise(site.node):
        return [site]
    return backtrace(site.node.inputs[0], 1, sites, site.node)


def _analyse(model: ir.Model, requested: list[tuple[LayerSite, int, str]], allow_output_change: bool,
             align: int | None) -> WidenPlan:
    sites = {site.node: site for site in layer_sites(model)}
    groups: list[GroupBuilder] = []
    for site, added, name in requested:
        members = _members_of(site, sites)
        old = members[0].layer.width
        if any(m.layer.width != old for m in members):
            raise block(site.node, "grows with layers of different widths")
        if align:
            added = -(-(old + added) // align) * align - old
        groups.append(GroupBuilder([make_member(m) for m in members], old, added, [name]))
    return walk(model.graph, groups, sites, allow_output_change)


__all__ = [
    "Layout", "Member", "Group", "Edit", "AttributeEdit", "ChannelChange", "RowShift", "SGEMM_K_BLOCK",
    "WidenPlan", "RULES", "rule_for", "analyse", "trace_units", "infer_missing_shapes", "mask_ranges",
]
