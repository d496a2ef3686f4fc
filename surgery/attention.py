"""Attention blocks: where they are, and where each head's positions go (what `--heads` grows).

Size: detection and head tracking walk the same patterns (scores, softmax, head reshapes in
the forms of four exporters); a known candidate for a split into detection and tracking.

**Detection** (`find_blocks`). Every ``Softmax`` is a candidate. Its input comes, through the
mask ``Add``/``Where``, scaling ``Mul``/``Div`` and reshapes, from a ``MatMul`` of two computed
tensors (the scores ``Q·Kᵀ``); its output goes, through ``Cast``/``IsNaN``/``Where``/``Dropout``
and reshapes, into a second such ``MatMul`` (with ``V``). Walking back from Q, K and V through any computation (head
reshapes, transposes, rotary embeddings, ``repeat_kv``) the nearest growable layers are the
projections — one layer for all three when a fused QKV projection is ``Split``; walking forward
from ``softmax·V`` the first growable layer that reads it is the output projection (or a
``MatMul``/``Gemm`` whose weight is a ``Reshape`` of a constant: tf2onnx's einsum kernel). The block's
name is the longest common module path of the four projections' friendly names (a Keras layer
name when they share one). The head count and head dimension come from `trace_heads` run with no
new heads; a candidate it cannot follow is not listed (`survey` keeps its reason, which
`--heads NAME` reports).

**Head tracking** (`trace_heads`). From the projections' outputs (units ``[…, H·dh]``; for a
fused projection three ranges) the new positions are followed forward, one rule per op:

- ``Split`` along the tracked axis: each output keeps the new positions of its range; constant
  sizes get new values (``num_outputs`` splits stay even).
- ``Reshape``: the target entries are read from constants, ``Shape → Gather/Slice → Concat``
  chains, constant multiples of them, ``ReduceProd`` and ``Max`` of them, and the shape of a
  constant (tf2onnx reads Keras's head count from a 5-D copy of the einsum kernel). Splitting
  ``H·dh`` into ``(H, dh)`` (``dh`` a static entry; with other axes split off before it, as in
  tf2onnx's ``[B·S, H·dh] → [B, S, H, dh, 1]``, when the static entries after ``dh`` match the
  input's axes after the tracked one), merging the head axis with the static axes after it
  (``(H, dh) → H·dh``, ``repeat_kv``'s ``(kv, n_rep) → H``), keeping it, and merging it into the
  batch axis before it and back (the dynamo exporter's ``Kᵀ`` with ``-1``; tf2onnx's einsum with
  the product ``B·H`` read at run time) are followed. An entry that encodes the head count gets
  its new value when it is a constant; when it is a dimension of a constant that only ``Shape``
  reads, that constant grows along it with zeros; ``-1`` stays, a runtime read of the tracked
  dimension adapts by itself. Anything else is refused.
- ``Expand`` (``repeat_kv``): the entry at the head axis is 1, the head count read at run time, or
  a constant that gets the new count. An ``Expand`` of an untracked tensor to a shape read from a
  tracked one (Keras's causal mask, ``ones_like(scores)``) has the heads too, equal along them.
- Elementwise ops (scaling, masks, rotary ``cos``/``sin``, ``Where``): other operands either carry
  the same positions or broadcast along the head axis; a per-unit constant right after a
  projection (its bias) gets new entries 0 (1 for ``Mul``/``Div``). A computed operand whose size
  along the axis is unknown is accepted: it does not depend on the block, so after the growth it
  either broadcasts (size 1) or makes the model fail to run — it never changes old heads' values.
- ``Transpose``, ``Unsqueeze``/``Squeeze``, ``Slice``/``Concat``/``Softmax`` along other axes
  (rotary halves, the score rows), unary ops: the positions follow.
- ``MatMul`` of two tracked tensors (scores, ``softmax·V``): the head axis is a batch axis of both
  (alone or merged into the batch axis in both), with the same positions.
- ``MatMul``/``Gemm`` with a constant weight contracting the tracked axis: the output projection;
  its rows for the new positions are zero. When the weight is a ``Reshape`` of a constant C
  (tf2onnx's ``[1, 1, D, H, dh]``), the axes of C that form the contracted axis are found by their
  sizes and C gets zero entries along the first of them (the heads); the reshape's target must
  follow (read from C's shape, ``-1``, or a constant that is rewritten). The walk stops there.
- ``Shape`` of a tracked tensor: its entries may only reach ``Reshape``/``Expand`` targets (above).

Everything else — a graph output, an op not listed, a head axis that is summed over — is refused
with one line naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.graph import (
    attribute,
    constant_array,
    constant_shape,
    consumers,
    is_constant,
    reachable,
)
from surgery.layers import Layer, LayerSite, friendly_names, layer_sites
from surgery.naming import module_names
from surgery.ops import CATALOGUE, POSITIONAL, SHAPE_ARITHMETIC, SHAPE_CARRIERS

#: Ops between the scores MatMul and the Softmax, and between the Softmax and ``·V``.
_SCORE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze"})
_PROBABILITY_OPS = frozenset({"Cast", "Identity", "Dropout", "Where", "IsNaN", "Reshape", "Squeeze", "Unsqueeze"})

#: Elementwise ops with one data input whose positions stay where they are.
_UNARY = frozenset(op for op, info in CATALOGUE.items() if info.kind == "unary") | POSITIONAL
#: Elementwise ops joining several inputs (broadcasting); the neutral value of a per-unit constant.
_ELEMENTWISE = {
    "Add": 0.0,
    "Sub": 0.0,
    "Mul": 1.0,
    "Div": 1.0,
    "Where": None,
    "Equal": None,
    "Max": None,
    "Min": None,
    "Pow": None,
    "And": None,
    "Or": None,
    "Less": None,
    "Greater": None,
}

_SEARCH_DEPTH = 48


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One attention block.

    Attributes:
        name: the projections' common module path (``transformer.h.0.attn``) or Keras layer name.
        heads, kv_heads, head_dim: query heads, key/value heads (fewer with grouped-query
            attention), and the size of each.
        q, k, v, o: friendly names of the projections (q, k and v are the same for a fused one).
        sites: the projections' layer sites, in the order q, k, v, o.
        parts: for a fused projection, which Split output is q, k and v (else None).
    """

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    q: str
    k: str
    v: str
    o: str
    sites: tuple[LayerSite, LayerSite, LayerSite, LayerSite] = field(repr=False, compare=False)
    parts: tuple[int, int, int] | None = field(default=None, repr=False, compare=False)
    #: the size of one query, key and value head (Keras's ``value_dim`` may differ from ``key_dim``).
    dims: tuple[int, int, int] = field(default=(0, 0, 0), repr=False, compare=False)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "q": self.q,
            "k": self.k,
            "v": self.v,
            "o": self.o,
        }


def _site_outputs(sites: list[LayerSite]) -> dict[ir.Value, LayerSite]:
    found: dict[ir.Value, LayerSite] = {}
    for site in sites:
        found[site.output] = site
        found.setdefault(site.node.outputs[0], site)
    return found


def _is_pair_matmul(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "MatMul" and not any(is_constant(v) for v in node.inputs)


def _back_to(value: ir.Value, ops: frozenset[str], want) -> ir.Node | None:
    """The nearest producer satisfying `want`, walking back through `ops` (breadth first)."""
    frontier, seen = [value], set()
    for _ in range(6):
        following = []
        for current in frontier:
            producer = current.producer()
            if producer is None or producer in seen:
                continue
            seen.add(producer)
            if want(producer):
                return producer
            if producer.op_type in ops:
                following.extend(v for v in producer.inputs if v is not None and not is_constant(v))
        frontier = following
    return None


def _forward_to(value: ir.Value, ops: frozenset[str], want) -> ir.Node | None:
    frontier, seen = [value], set()
    for _ in range(6):
        following = []
        for current in frontier:
            for use in current.uses():
                node = use.node
                if node in seen:
                    continue
                seen.add(node)
                if want(node, use.idx):
                    return node
                if node.op_type in ops:
                    following.extend(o for o in node.outputs if o is not None)
        frontier = following
    return None


def _projection(value: ir.Value, outputs: dict[ir.Value, LayerSite]) -> tuple[LayerSite, int | None] | None:
    """The nearest layer whose output `value` is computed from (breadth first, not crossing
    another attention's MatMul or Softmax), and which output of a ``Split`` on the way it took."""
    frontier: list[tuple[ir.Value, int | None]] = [(value, None)]
    seen: set[ir.Value] = set()
    for _ in range(_SEARCH_DEPTH):
        following = []
        for current, part in frontier:
            if current in seen:
                continue
            seen.add(current)
            if current in outputs:
                return outputs[current], part
            producer = current.producer()
            if producer is None or producer.op_type == "Softmax" or _is_pair_matmul(producer):
                continue
            if producer.op_type == "Split":
                part = list(producer.outputs).index(current)
            following.extend((v, part) for v in producer.inputs if v is not None and not is_constant(v))
        frontier = following
        if not frontier:
            break
    return None


def _kernel_site(node: ir.Node, names: dict[str, str]) -> LayerSite:
    """A layer site for an output projection whose weight is reshaped at run time (`_reshaped_kernel`)."""
    dims = _dims(node.outputs[0]) or [None]
    layer = Layer(
        node.name or "",
        names.get(node.name or "", node.name or ""),
        node.op_type,
        dims[-1] or 0,
        None,
        [user.name or user.op_type for user in consumers(node.outputs[0])],
    )
    return LayerSite(layer, node, None, node.outputs[0])


def _output_projection(value: ir.Value, sites: list[LayerSite], names: dict[str, str]) -> LayerSite | None:
    by_node = {site.node: site for site in sites}
    frontier, seen = [value], set()
    for _ in range(_SEARCH_DEPTH):
        following = []
        for current in frontier:
            for use in current.uses():
                node = use.node
                if node in seen:
                    continue
                seen.add(node)
                if node in by_node and use.idx == 0:
                    return by_node[node]
                if use.idx == 0 and _reshaped_kernel(node) is not None:
                    return _kernel_site(node, names)
                if node.op_type in ("Softmax", "MatMul", "Gemm"):
                    continue
                following.extend(o for o in node.outputs if o is not None)
        frontier = following
        if not frontier:
            break
    return None


def _common_name(names: list[str]) -> str:
    if len(set(names)) == 1:
        return names[0]
    split = [n.split(".") for n in names]
    common = []
    for segments in zip(*split):
        if len(set(segments)) != 1:
            break
        common.append(segments[0])
    return ".".join(common) or names[0]


def _candidates(model: ir.Model) -> list[dict]:
    sites = layer_sites(model)
    outputs = _site_outputs(sites)
    names = module_names(model) | friendly_names(model)
    found = []
    for softmax in (node for node in model.graph if node.op_type == "Softmax"):
        scores = _back_to(softmax.inputs[0], _SCORE_OPS, _is_pair_matmul)
        weighted = _forward_to(softmax.outputs[0], _PROBABILITY_OPS, lambda n, i: _is_pair_matmul(n) and i == 0)
        if scores is None or weighted is None:
            continue
        traced = [_projection(v, outputs) for v in (scores.inputs[0], scores.inputs[1], weighted.inputs[1])]
        o = _output_projection(weighted.outputs[0], sites, names)
        if any(t is None for t in traced) or o is None:
            continue
        (q, q_part), (k, k_part), (v, v_part) = traced
        fused = q is k is v
        if not fused and len({id(q.node), id(k.node), id(v.node)}) != 3:
            continue
        parts = (q_part, k_part, v_part) if fused else None
        if fused and (None in parts or len(set(parts)) != 3):
            continue
        found.append({"sites": (q, k, v, o), "parts": parts, "scores": scores, "weighted": weighted})
    return found


def find_blocks(model: ir.Model) -> list[Block]:
    """Every attention block `trace_heads` can follow, in graph order (see the module docstring)."""
    return survey(model)[0]


def survey(model: ir.Model) -> tuple[list[Block], dict[str, str]]:
    """The blocks `trace_heads` can follow, and name → one-line reason for the candidates it
    cannot (they look like attention, but a node on the way is not understood)."""
    from surgery.analysis import infer_missing_shapes

    infer_missing_shapes(model)
    blocks: list[Block] = []
    refused: dict[str, str] = {}
    for candidate in _candidates(model):
        q, k, v, o = candidate["sites"]
        name = _common_name([s.layer.name for s in (q, k, v, o)])
        if name in refused or any(block.name == name for block in blocks):
            name = f"{name}#{len(blocks) + len(refused)}"
        try:
            trace = trace_heads(model, candidate, 0)
        except SurgeryError as error:
            refused[name] = str(error)
            continue
        parts = candidate["parts"]
        origins = [f"qkv#{part}" for part in parts] if parts is not None else ["q", "k", "v"]
        dims = tuple(trace.split_dims.get(origin, trace.head_dim) for origin in origins)
        blocks.append(
            Block(
                name,
                trace.heads,
                trace.kv_heads,
                trace.head_dim,
                q.layer.name,
                k.layer.name,
                v.layer.name,
                o.layer.name,
                candidate["sites"],
                parts,
                dims,
            )
        )
    return blocks, refused


# --------------------------------------------------------------------------------------------
# Head tracking
# --------------------------------------------------------------------------------------------


@dataclass
class Track:
    """Positions along one axis of a tensor inside an attention block.

    Attributes:
        axis, rank: the tracked axis.
        original: per position (after the growth), its index before, or -1 for a new one.
        origin: which projection output it comes from ("q", "k", "v", or "qkv").
        merged: the axis is a dynamic batch axis times the tracked one (dynamo's ``Kᵀ``).
    """

    axis: int
    rank: int
    original: np.ndarray
    origin: str
    merged: bool = False

    @property
    def old(self) -> int:
        return int(np.count_nonzero(self.original >= 0))

    @property
    def new(self) -> int:
        return int(self.original.shape[0])

    def moved(self, axis: int, rank: int) -> Track:
        return Track(axis, rank, self.original, self.origin, self.merged)


@dataclass
class Trace:
    """What `trace_heads` found: the tracked tensors, the parameter changes, the block's sizes.

    `edits` are (node, input index, role, axis, positions or literal, neutral value) records that
    `surgery.heads` turns into the width analysis's `Edit`s.
    """

    tracks: dict[ir.Value, Track] = field(default_factory=dict)
    edits: list[tuple] = field(default_factory=list)
    head_dim: int = 0
    heads: int = 0
    kv_heads: int = 0
    split_dims: dict[str, int] = field(default_factory=dict)
    split_heads: dict[str, int] = field(default_factory=dict)


def _fail(node: ir.Node, why: str) -> SurgeryError:
    return SurgeryError(f"cannot add heads: {node.op_type} node {node.name or '<unnamed>'!r} {why}")


def _seed(old: int, added: int) -> np.ndarray:
    return np.concatenate([np.arange(old), np.full(added, -1)]).astype(np.int64)


def _unravel(original: np.ndarray, inner: int) -> np.ndarray | None:
    """Positions of ``(n, inner)`` blocks as positions of n: None when a block mixes old and new
    positions or reorders them."""
    if original.shape[0] % inner:
        return None
    blocks = original.reshape(-1, inner)
    result = np.full(blocks.shape[0], -1, dtype=np.int64)
    for i, block in enumerate(blocks):
        if np.all(block < 0):
            continue
        if block[0] % inner or not np.array_equal(block, block[0] + np.arange(inner)):
            return None
        result[i] = block[0] // inner
    return result


def _ravel(original: np.ndarray, inner: int) -> np.ndarray:
    return np.where(original[:, None] >= 0, original[:, None] * inner + np.arange(inner), -1).reshape(-1)


def _dims(value: ir.Value) -> list[int | None] | None:
    shape = value.shape
    if shape is None:
        return None
    return [d if isinstance(d, int) else None for d in shape.dims]


# An entry of a shape vector: ("const", value, (node, input, position) or None), ("dim", tensor,
# axis, factor) read at run time, ("cdim", constant, axis, Shape node) a constant's dimension read by
# ``Shape`` (tf2onnx's einsum targets), ("prod", entries) a ``ReduceProd`` or a product with a
# constant, ("max", a, b) an elementwise ``Max`` of two shape vectors.
def _product(parts: list[tuple]) -> tuple:
    if all(p[0] == "const" for p in parts):
        return ("const", math.prod(p[1] for p in parts), None)
    return ("prod", tuple(parts))


def _entries(node: ir.Node, index: int, depth: int = 0) -> list[tuple] | None:
    value = node.inputs[index]
    array = constant_array(value)
    if array is not None:
        flat = np.asarray(array).reshape(-1)
        return [("const", int(v), (node, index, k)) for k, v in enumerate(flat)]
    producer = value.producer()
    if producer is None or depth > 24:
        return None
    op = producer.op_type
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"):
        return _entries(producer, 0, depth + 1)
    if op == "Concat":
        result: list[tuple] = []
        for i in range(len(producer.inputs)):
            part = _entries(producer, i, depth + 1)
            if part is None:
                return None
            result.extend(part)
        return result
    if op == "Shape":
        source = producer.inputs[0]
        static = constant_shape(source) if is_constant(source) else None
        dims = list(static) if static is not None else _dims(source)
        if dims is None:
            return None
        rank = len(dims)
        start, end = attribute(producer, "start", 0), attribute(producer, "end", rank)
        start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
        picked = range(max(start, 0), min(end, rank))
        if static is not None:
            return [("cdim", source, i, producer) for i in picked]
        return [("dim", source, i, 1) for i in picked]
    if op == "ReduceProd":
        inner = _entries(producer, 0, depth + 1)
        axes = attribute(producer, "axes", None)
        if axes is None and len(producer.inputs) > 1 and producer.inputs[1] is not None:
            axes = constant_array(producer.inputs[1])
            axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)] or None
        if inner is None or axes not in (None, [0], [-1]) or not attribute(producer, "keepdims", 1):
            return None
        return [_product(inner)]
    if op == "Max" and len(producer.inputs) == 2:
        left, right = _entries(producer, 0, depth + 1), _entries(producer, 1, depth + 1)
        if left is None or right is None or len(left) != len(right):
            return None
        return [("max", a, b) for a, b in zip(left, right)]
    if op in ("Gather", "Slice"):
        inner = _entries(producer, 0, depth + 1)
        if inner is None:
            return None
        if op == "Gather":
            indices = constant_array(producer.inputs[1])
            if indices is None:
                return None
            return [inner[int(i) % len(inner)] for i in np.asarray(indices).reshape(-1)]
        starts, ends = (constant_array(v) if v is not None else None for v in producer.inputs[1:3])
        has_steps = len(producer.inputs) > 4 and producer.inputs[4] is not None
        steps = constant_array(producer.inputs[4]) if has_steps else None
        if starts is None or ends is None:
            return None
        step = int(np.asarray(steps).reshape(-1)[0]) if steps is not None else 1
        first = lambda array: int(np.asarray(array).reshape(-1)[0])  # noqa: E731
        picked = range(len(inner))[slice(first(starts), first(ends), step)]
        return [inner[i] for i in picked]
    if op == "Mul":
        for data, factor in ((0, 1), (1, 0)):
            scale = constant_array(producer.inputs[factor])
            if scale is not None and np.asarray(scale).size == 1:
                inner = _entries(producer, data, depth + 1)
                if inner is None:
                    return None
                c = int(np.asarray(scale).reshape(-1)[0])
                return [
                    ("const", e[1] * c, None)
                    if e[0] == "const"
                    else ("dim", e[1], e[2], e[3] * c)
                    if e[0] == "dim"
                    else ("prod", (e, ("const", c, None)))
                    for e in inner
                ]
        return None
    if op == "Where":
        # torch's expand: Where(Equal(shape, -1), 1, shape) — the shape itself when it holds no -1.
        condition = producer.inputs[0].producer()
        if condition is not None and condition.op_type == "Equal" and condition.inputs[0] is producer.inputs[2]:
            inner = _entries(producer, 2, depth + 1)
            if inner is not None and not any(e[0] == "const" and e[1] == -1 for e in inner):
                return inner
        return None
    return None


class _Walk:
    """The forward pass of `trace_heads` over one block (see the module docstring)."""

    def __init__(self, trace: Trace, ends: set[ir.Node]):
        self.trace, self.ends = trace, ends
        #: (id of a constant, axis) → (old, new) size, for constants whose shape grows.
        self.grown: dict[tuple[int, int], tuple[int, int]] = {}

    def head_entry(self, entry: tuple) -> Track | None:
        if entry[0] != "dim":
            return None
        track = self.trace.tracks.get(entry[1])
        return track if track is not None and track.axis == entry[2] and not track.merged else None

    def reads_heads(self, entry: tuple) -> bool:
        """Whether `entry` depends on a head count (a tracked axis or a growing constant's)."""
        kind = entry[0]
        if kind == "dim":
            track = self.trace.tracks.get(entry[1])
            return track is not None and track.axis == entry[2]
        if kind == "cdim":
            return (id(entry[1]), entry[2]) in self.grown
        if kind in ("prod", "max"):
            return any(self.reads_heads(part) for part in (entry[1] if kind == "prod" else entry[1:]))
        return False

    def values(self, entry: tuple) -> tuple[int | None, int | None]:
        """(old, new) value of a shape entry; None where it is not known statically."""
        kind = entry[0]
        if kind == "const":
            return entry[1], entry[1]
        if kind == "cdim":
            size = int(constant_shape(entry[1])[entry[2]])
            return self.grown.get((id(entry[1]), entry[2]), (size, size))
        if kind in ("prod", "max"):
            pairs = [self.values(part) for part in (entry[1] if kind == "prod" else entry[1:])]
            if any(None in pair for pair in pairs):
                return None, None
            join = math.prod if kind == "prod" else max
            return join(p[0] for p in pairs), join(p[1] for p in pairs)
        if kind != "dim":
            return None, None
        track = self.head_entry(entry)
        if track is not None:
            return entry[3] * track.old, entry[3] * track.new
        dims = _dims(entry[1])
        if self.reads_heads(entry) or dims is None or dims[entry[2]] is None:
            return None, None
        return entry[3] * dims[entry[2]], entry[3] * dims[entry[2]]

    def literal(self, entry: tuple, new: int, node: ir.Node) -> None:
        if entry[2] is None:
            raise _fail(node, "computes the head count from constants the rewrite cannot update")
        target, index, position = entry[2]
        self.trace.edits.append(("literal", target, index, position, new, node))

    def set_entry(self, entry: tuple, old: int, new: int, node: ir.Node) -> bool:
        """Whether `entry` gives the tracked size `old` (→ `new`), editing a constant if needed."""
        if entry[0] == "const":
            if entry[1] == -1:
                return True
            if entry[1] != old:
                return False
            if new != old:
                self.literal(entry, new, node)
            return True
        if entry[0] == "cdim" and not self.reads_heads(entry):
            if self.values(entry)[0] != old:
                return False
            if new != old:
                self.grow(entry[1], entry[2], _seed(old, new - old), {node}, node)
            return True
        was, now = self.values(entry)
        return was == old and now == new

    def grow(
        self,
        constant: ir.Value,
        axis: int,
        original: np.ndarray,
        readers: set[ir.Node],
        node: ir.Node,
        data: ir.Node | None = None,
    ) -> None:
        """Grow `constant` along `axis` to `original`'s positions for every ``Shape`` that reads it
        (zero-filled: only its shape is read there). The shapes read from it may only reach
        `readers` or targets that do not read `axis`; `data` is the one node that may read it as data."""
        key, old, new = (id(constant), axis), int(np.count_nonzero(original >= 0)), int(original.shape[0])
        if self.grown.get(key, (old, new)) != (old, new):
            raise _fail(node, f"reads the shape of {constant.name!r}, which would need two head counts")
        if key in self.grown:
            return
        self.grown[key] = (old, new)
        shapes = [use.node for use in constant.uses() if use.node.op_type == "Shape"]
        if any(use.node not in shapes and use.node is not data for use in constant.uses()):
            raise _fail(node, f"reads the head count from the shape of {constant.name!r}, which is also used as data")
        for shape in shapes:
            for reader, index in _shape_readers(shape):
                if reader in readers:
                    continue
                entries = _entries(reader, 1) if reader.op_type in ("Reshape", "Expand") and index == 1 else None
                if entries is None or any(self.reads_heads(e) for e in entries):
                    raise _fail(
                        node,
                        f"reads the shape of {constant.name!r}, which {reader.op_type} node "
                        f"{reader.name!r} reads as well",
                    )
            self.trace.edits.append(("grow", shape, 0, axis, original))

    # -- rules --------------------------------------------------------------------------
    def rule(self, node: ir.Node, tracked: dict[int, Track]) -> dict[int, Track]:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise _fail(node, f"is from domain {node.domain!r}")
        if op == "Shape":
            return {}
        if op in _UNARY:
            if set(tracked) != {0}:
                raise _fail(node, "reads the tracked tensor as a parameter")
            return {0: tracked[0]}
        if op == "Transpose":
            track = tracked[0]
            perm = list(attribute(node, "perm", list(range(track.rank))[::-1]))
            return {0: track.moved(perm.index(track.axis), track.rank)}
        if op in ("Softmax", "LogSoftmax"):
            track = tracked[0]
            if attribute(node, "axis", -1) % track.rank == track.axis:
                raise _fail(node, "normalises over the heads")
            return {0: track}
        if op in ("Unsqueeze", "Squeeze"):
            return self.squeeze(node, tracked[0])
        if op == "Split":
            return self.split(node, tracked)
        if op == "Reshape":
            return self.reshape(node, tracked)
        if op == "Expand":
            return self.expand(node, tracked)
        if op == "Slice":
            return self.slice(node, tracked)
        if op == "Concat":
            return self.concat(node, tracked)
        if op in _ELEMENTWISE:
            return self.elementwise(node, tracked)
        if op in ("MatMul", "Gemm"):
            return self.matmul(node, tracked)
        raise _fail(node, "is not an op the head tracking knows; refusing to guess")

    def squeeze(self, node: ir.Node, track: Track) -> dict[int, Track]:
        axes = attribute(node, "axes", None)
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            array = constant_array(node.inputs[1])
            if array is None:
                raise _fail(node, "has non-constant axes")
            axes = [int(a) for a in np.asarray(array).reshape(-1)]
        if axes is None:
            raise _fail(node, "squeezes unknown axes")
        if node.op_type == "Unsqueeze":
            rank = track.rank + len(axes)
            axes = sorted(a % rank for a in axes)
            axis = track.axis
            for a in axes:
                if a <= axis:
                    axis += 1
            return {0: track.moved(axis, rank)}
        axes = [a % track.rank for a in axes]
        if track.axis in axes:
            raise _fail(node, "squeezes the tracked axis")
        return {0: track.moved(track.axis - sum(a < track.axis for a in axes), track.rank - len(axes))}

    def split(self, node: ir.Node, tracked: dict[int, Track]) -> dict[int, Track]:
        track = tracked.get(0)
        if track is None or set(tracked) != {0} or track.merged:
            raise _fail(node, "splits a tracked tensor it cannot follow")
        if attribute(node, "axis", 0) % track.rank != track.axis:
            raise _fail(node, "splits along another axis")
        count = len(node.outputs)
        sizes = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            raise _fail(node, "has non-constant split sizes")
        if sizes is not None:
            old_sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
        else:
            old_sizes = [track.old // count] * count
        if sum(old_sizes) != track.old:
            raise _fail(node, "has split sizes that do not add up to the tracked size")
        # A new position belongs to the part of the old position before it (new units sit at each range's end).
        bounds = np.cumsum([0] + old_sizes)
        owner, current = [], 0
        for position in track.original:
            if position >= 0:
                current = int(np.searchsorted(bounds, position, side="right") - 1)
            owner.append(current)
        owner = np.asarray(owner)
        result, new_sizes = {}, []
        for i in range(count):
            part = track.original[owner == i]
            part = np.where(part >= 0, part - bounds[i], -1)
            new_sizes.append(int(part.shape[0]))
            result[i] = Track(track.axis, track.rank, part, f"{track.origin}#{i}")
        if sizes is None:
            if len(set(new_sizes)) != 1:
                raise _fail(node, "splits evenly (num_outputs), but its parts would grow unevenly")
        elif new_sizes != old_sizes:
            self.trace.edits.append(("sizes", node, 1, np.asarray(new_sizes, dtype=np.asarray(sizes).dtype)))
        return result

    def reshape(self, node: ir.Node, tracked: dict[int, Track]) -> dict[int, Track]:
        track = tracked.get(0)
        if track is None or set(tracked) != {0}:
            raise _fail(node, "reads the tracked tensor as its target shape")
        entries = _entries(node, 1)
        in_dims = _dims(node.inputs[0])
        if entries is None or in_dims is None:
            raise _fail(node, "has a target shape the head tracking cannot read")
        a, out_rank, in_rank = track.axis, len(entries), track.rank
        if track.merged:  # dynamo's Kᵀ: [B·H, …] back to [B, H, …]
            for m in range(1, out_rank):
                if self.set_entry(entries[m], track.old, track.new, node):
                    return {0: Track(m, out_rank, track.original, track.origin)}
            raise _fail(node, "splits a merged batch-and-head axis in a way the head tracking cannot follow")
        # Split the tracked axis into (n, d) with a constant d (head split).
        if out_rank > in_rank:
            m = a
            if m + 1 < out_rank and entries[m + 1][0] == "const" and entries[m + 1][1] > 0:
                d = entries[m + 1][1]
                heads = _unravel(track.original, d)
                if heads is not None and track.old % d == 0 and out_rank - m - 2 == in_rank - a - 1:
                    if self.set_entry(entries[m], track.old // d, heads.shape[0], node):
                        return self.split_heads(track, d, m, out_rank, heads)
            split = self.split_elsewhere(node, track, entries, in_dims)
            if split is not None:
                return split
        # tf2onnx's einsum: the head axis merged into the batch axis before it, [B, H, …] → [B·H, …]
        # with the product read at run time.
        for m, entry in enumerate(entries):
            if (
                entry[0] == "prod"
                and a > 0
                and len(entry[1]) == 2
                and all(p[0] == "dim" and p[1] is node.inputs[0] and p[3] == 1 for p in entry[1])
                and [p[2] for p in entry[1]] == [a - 1, a]
                and not any(self.reads_heads(e) for j, e in enumerate(entries) if j != m)
            ):
                return {0: Track(m, out_rank, track.original, track.origin, merged=True)}
        # Merge the tracked axis with the k static axes after it (k = 0: keep it), into entry m.
        for k in range(in_rank - a):
            m = out_rank - in_rank + a + k
            entry = entries[m] if 0 <= m < out_rank else None
            if entry is None or any(self.reads_heads(e) for j, e in enumerate(entries) if j != m):
                continue
            inner_dims = in_dims[a + 1 : a + 1 + k]
            if entry[0] == "const" and entry[1] == -1:
                if k == 0 and m == a - 1 and out_rank == in_rank - 1:  # the batch axis before it joins
                    return {0: Track(m, out_rank, track.original, track.origin, merged=True)}
                if m != a or None in inner_dims:
                    continue
                inner = math.prod(inner_dims)
            else:
                old, new = self.values(entry)
                if old is None or old % track.old:
                    continue
                inner = old // track.old
                if None not in inner_dims and math.prod(inner_dims) != inner:
                    continue
                if entry[0] == "const":
                    if track.new != track.old:
                        self.literal(entry, track.new * inner, node)
                elif new != track.new * inner:
                    continue
            return {0: Track(m, out_rank, _ravel(track.original, inner), track.origin)}
        raise _fail(node, "reshapes the tracked axis in a way the head tracking cannot follow")

    def broadcast(self, node: ir.Node) -> dict[int, Track]:
        """An ``Expand`` of an untracked tensor to a shape read from a tracked one (Keras's causal
        mask ``ones_like(scores)``): its output has the heads' axis, with equal values along it."""
        if node.op_type != "Expand":
            return {}
        entries = _entries(node, 1)
        heads = [(i, self.head_entry(e)) for i, e in enumerate(entries or []) if self.head_entry(e) is not None]
        if not heads:
            return {}
        dims = _dims(node.inputs[0])
        (axis, track), rank = heads[0], len(entries)
        own = axis - (rank - len(dims)) if dims is not None else None
        if len(heads) > 1 or own is None or own >= 0 and dims[own] != 1 or entries[axis][3] != 1:
            raise _fail(node, "expands a tensor to the heads in a way the head tracking cannot follow")
        return {0: Track(axis, rank, track.original, track.origin)}

    def split_heads(self, track: Track, d: int, m: int, rank: int, heads: np.ndarray) -> dict[int, Track]:
        self.trace.split_dims.setdefault(track.origin, d)
        self.trace.split_heads.setdefault(track.origin, track.old // d)
        return {0: Track(m, rank, heads, track.origin)}

    def split_elsewhere(
        self, node: ir.Node, track: Track, entries: list[tuple], in_dims: list[int | None]
    ) -> dict[int, Track] | None:
        """tf2onnx's einsum split ``[B·S, H·dh] → [B, S, H, dh, 1]``: the tracked axis becomes the
        entries (m, m + 1) = (n, d) with d static, when the static sizes after them multiply to the
        input's after the tracked axis (so the entries before them cover the axes before it)."""
        after = in_dims[track.axis + 1 :]
        if None in after:
            return None
        for m in range(len(entries) - 1):
            d = self.values(entries[m + 1])
            rest = [self.values(e) for e in entries[m + 2 :]]
            static = all(r[0] is not None and r[0] == r[1] for r in rest)
            if (
                d[0] is None
                or d[0] <= 0
                or d[0] != d[1]
                or track.old % d[0]
                or not static
                or math.prod(r[0] for r in rest) != math.prod(after)
            ):
                continue
            heads = _unravel(track.original, d[0])
            others = [e for j, e in enumerate(entries) if j not in (m, m + 1)]
            if (
                heads is not None
                and not any(self.reads_heads(e) for e in others)
                and self.set_entry(entries[m], track.old // d[0], heads.shape[0], node)
            ):
                return self.split_heads(track, d[0], m, len(entries), heads)
        return None

    def expand(self, node: ir.Node, tracked: dict[int, Track]) -> dict[int, Track]:
        track = tracked.get(0)
        if track is None or set(tracked) != {0} or track.merged:
            raise _fail(node, "expands a tracked tensor it cannot follow")
        entries = _entries(node, 1)
        if entries is None:
            raise _fail(node, "has a target shape the head tracking cannot read")
        axis = track.axis + len(entries) - track.rank
        entry = entries[axis]
        if not (entry[0] == "const" and entry[1] == 1) and not self.set_entry(entry, track.old, track.new, node):
            raise _fail(node, "expands the head axis to a size the head tracking cannot update")
        return {0: track.moved(axis, max(len(entries), track.rank))}

    def slice(self, node: ir.Node, tracked: dict[int, Track]) -> dict[int, Track]:
        track = tracked.get(0)
        if set(tracked) != {0}:
            raise _fail(node, "slices with tracked bounds")
        starts = node.inputs[1]
        axes = constant_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if axes is None:
            count = constant_shape(starts)
            if len(node.inputs) > 3 and node.inputs[3] is not None or count is None:
                raise _fail(node, "slices along axes the head tracking cannot read")
            axes = np.arange(count[0] if count else 1)
        if track.axis in {int(x) % track.rank for x in np.asarray(axes).reshape(-1)}:
            raise _fail(node, "slices the head axis")
        return {0: track}

    def concat(self, node: ir.Node, tracked: dict[int, Track]) -> dict[int, Track]:
        reference = next(iter(tracked.values()))
        if attribute(node, "axis", 0) % reference.rank == reference.axis:
            raise _fail(node, "concatenates along the head axis")
        if len(tracked) != len(node.inputs) or not all(self.same(t, reference) for t in tracked.values()):
            raise _fail(node, "concatenates tensors whose heads differ")
        return {0: reference}

    @staticmethod
    def same(a: Track, b: Track) -> bool:
        return a.axis == b.axis and a.merged == b.merged and np.array_equal(a.original, b.original)

    def elementwise(self, node: ir.Node, tracked: dict[int, Track]) -> dict[int, Track]:
        ranks = {i: tracked[i].rank if i in tracked else len(_dims(v) or []) for i, v in enumerate(node.inputs)}
        out_rank = max(ranks.values())
        first = next(iter(tracked.values()))
        axis = first.axis + out_rank - first.rank
        for track in tracked.values():
            if (
                track.axis + out_rank - track.rank != axis
                or track.merged != first.merged
                or not np.array_equal(track.original, first.original)
            ):
                raise _fail(node, "joins tensors whose heads differ")
        for i, value in enumerate(node.inputs):
            if i in tracked or value is None:
                continue
            dims = _dims(value)
            if dims is None:
                raise _fail(node, f"joins the heads with {value.name!r} of unknown rank")
            own = axis - (out_rank - len(dims))
            size = dims[own] if own >= 0 else 1
            if size == 1 or size is None and not is_constant(value):
                continue  # broadcasts (or does not depend on the block: see the module docstring)
            neutral = _ELEMENTWISE.get(node.op_type)
            if is_constant(value) and size == first.old and neutral is not None and not first.merged:
                self.trace.edits.append(("neutral", node, i, own, first.original, neutral))
                continue
            raise _fail(node, f"joins the heads with {value.name!r}, which does not grow with them")
        return {0: first.moved(axis, out_rank)}

    def matmul(self, node: ir.Node, tracked: dict[int, Track]) -> dict[int, Track]:
        weight = node.inputs[1]
        if node in self.ends:
            track = tracked.get(0)
            if track is None or set(tracked) != {0} or track.merged:
                raise _fail(node, "reads the heads as its weight")
            if node.op_type == "MatMul":
                contracted, axes = track.rank - 1, (0, 1)
            else:
                contracted = 0 if attribute(node, "transA", 0) else 1
                axes = (1, 0) if attribute(node, "transB", 0) else (0, 1)
            if track.axis != contracted:
                raise _fail(node, "does not contract the heads' axis")
            kernel = _reshaped_kernel(node)
            if kernel is not None:
                self.kernel_fan_out(node, kernel, track, axes)
            else:
                self.trace.edits.append(("fan-out", node, 1, axes[0], track.original, axes))
            return {}
        if node.op_type != "MatMul" or is_constant(weight) or is_constant(node.inputs[0]):
            raise _fail(node, "multiplies the heads by a weight that is not the output projection")
        if set(tracked) != {0, 1}:
            raise _fail(node, "multiplies tracked heads by an untracked tensor")
        left, right = tracked[0], tracked[1]
        rank = max(left.rank, right.rank)
        if (
            left.merged != right.merged
            or left.axis >= left.rank - 2
            or right.axis >= right.rank - 2
            or left.axis + rank - left.rank != right.axis + rank - right.rank
            or not np.array_equal(left.original, right.original)
        ):
            raise _fail(node, "multiplies tensors whose heads are not the same batch axis")
        self.record(left, right)
        return {0: left.moved(left.axis + rank - left.rank, rank)}

    def kernel_fan_out(self, node: ir.Node, kernel: ir.Node, track: Track, axes: tuple[int, int]) -> None:
        """The output projection's weight is a Reshape of a constant C (tf2onnx keeps Keras's
        einsum kernel ``[H, dh, D]`` as ``[1, 1, D, H, dh]`` and flattens it at run time): the axes
        of C that make up the weight's contracted axis are found by their sizes; the first of them
        is the head axis, which gets zero entries for the new heads. Its target must follow: an
        entry read from C's shape adapts by itself, a constant one is rewritten, ``-1`` stays."""
        constant, dims = kernel.inputs[0], [int(d) for d in constant_shape(kernel.inputs[0])]
        entries = _entries(kernel, 1)
        sizes = None if entries is None else [self.values(e)[0] for e in entries]
        if sizes is None or None in sizes or sizes.count(-1) > 1 or len(sizes) != 2:
            raise _fail(node, "reads a weight reshaped to a shape the head tracking cannot read")
        if -1 in sizes:
            sizes[sizes.index(-1)] = math.prod(dims) // -math.prod(sizes)
        contracted = axes[0]
        before, through = math.prod(sizes[:contracted]), math.prod(sizes[: contracted + 1])
        prefix = [math.prod(dims[:i]) for i in range(len(dims) + 1)]
        first = next((i for i in range(len(dims)) if prefix[i] == before and dims[i] > 1), None)
        last = next((j for j in range(len(dims), 0, -1) if prefix[j] == through), None)
        heads = None
        if first is not None and last is not None and first < last:
            heads = _unravel(track.original, math.prod(dims[first + 1 : last]))
        if heads is None or heads.shape[0] - int(np.count_nonzero(heads < 0)) != dims[first]:
            raise _fail(node, f"reads weight {constant.name!r} reshaped in a way the head tracking cannot follow")
        unit = next(i for i in range(len(dims)) if dims[i] > 1 and not first <= i < last)
        self.grow(constant, first, heads, {kernel}, node, data=kernel)
        self.trace.edits.append(("fan-out", kernel, 0, first, heads, (first, unit)))
        for index, entry in enumerate(entries):
            wanted = track.new if index == contracted else sizes[index]
            if entry[0] == "const" and entry[1] == -1:
                continue
            if entry[0] == "const" and index == contracted:
                if wanted != entry[1]:
                    self.literal(entry, wanted, kernel)
            elif self.values(entry)[1] != wanted:
                raise _fail(kernel, "reshapes the output projection's weight to a size that does not follow its heads")

    def record(self, left: Track, right: Track) -> None:
        if not self.trace.heads:  # the first pair product is the scores Q·Kᵀ
            self.trace.heads = left.old
            self.trace.head_dim = self.trace.split_dims.get(left.origin, 0)
            self.trace.kv_heads = self.trace.split_heads.get(right.origin, 0)


def trace_heads(model: ir.Model, candidate: dict, added: int) -> Trace:
    """Follow `added` new key/value heads (each with heads/kv_heads query heads) of a detected
    block from its projections to its output projection (see the module docstring).

    Raises:
        SurgeryError: one line naming the node the tracking cannot follow.
    """
    q, k, v, o = candidate["sites"]
    trace = Trace()
    n_rep = candidate.get("n_rep", 1)
    q_dim, k_dim, v_dim = candidate.get("dims") or (candidate.get("head_dim", 0),) * 3
    seeds: dict[str, int] = {"q": added * n_rep * q_dim, "k": added * k_dim, "v": added * v_dim}
    if candidate["parts"] is not None:
        roles = dict(zip(candidate["parts"], "qkv"))  # Split output -> q, k or v
        widths = _fused_widths(q)
        offsets = np.cumsum([0] + widths)
        pieces = [_seed(widths[i], seeds[roles[i]]) for i in range(3)]
        original = np.concatenate([np.where(p >= 0, p + offsets[i], -1) for i, p in enumerate(pieces)])
        seeded = [(q, original, "qkv")]
    else:
        seeded = [(site, _seed(site.layer.width, seeds[role]), role) for site, role in ((q, "q"), (k, "k"), (v, "v"))]
    walk = _Walk(trace, {o.node})
    starts = []
    for site, original, role in seeded:
        node = site.node
        output = node.outputs[0]
        rank = 2 if node.op_type == "Gemm" else len(_dims(node.inputs[0]) or [0, 0])
        trace.tracks[output] = Track(rank - 1, rank, original, role)
        if node.op_type == "Gemm":
            axes = (1, 0) if attribute(node, "transB", 0) else (0, 1)
            bias = 2 if len(node.inputs) > 2 and node.inputs[2] is not None else None
        else:
            axes, bias = (0, 1), None
        trace.edits.append(("fan-in", node, 1, axes[1], original, axes))
        if bias is not None and (constant_shape(node.inputs[bias]) or (0,))[-1] == site.layer.width:
            trace.edits.append(("bias", node, bias, len(constant_shape(node.inputs[bias])) - 1, original))
        starts.append(output)
    for node in reachable(starts, {o.node}):
        tracked = {i: trace.tracks[value] for i, value in enumerate(node.inputs) if value in trace.tracks}
        for index, track in (walk.rule(node, tracked) if tracked else walk.broadcast(node)).items():
            value = node.outputs[index]
            if value.is_graph_output():
                raise _fail(node, f"writes the heads to graph output {value.name!r}")
            trace.tracks[value] = track
    if not trace.heads:
        raise SurgeryError("cannot add heads: no product of queries and keys was found")
    return trace


def _reshaped_kernel(node: ir.Node) -> ir.Node | None:
    """The ``Reshape`` of a constant that gives a MatMul/Gemm its weight (tf2onnx's einsum output
    projection), else None."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2 or is_constant(node.inputs[0]):
        return None
    producer = node.inputs[1].producer()
    if producer is None or producer.op_type != "Reshape" or not is_constant(producer.inputs[0]):
        return None
    return producer


def _fused_widths(site: LayerSite) -> list[int]:
    """Old widths of a fused projection's Split outputs, in output order."""
    split = _forward_to(site.output, frozenset({"Reshape", "Identity", "Add"}), lambda n, i: n.op_type == "Split")
    if split is None:
        raise SurgeryError(f"cannot add heads: no Split after the fused projection {site.layer.name!r}")
    sizes = constant_array(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
    if sizes is None:
        return [site.layer.width // 3] * 3
    return [int(s) for s in np.asarray(sizes).reshape(-1)]


#: Ops a shape vector passes through on its way to a Reshape or Expand target.
_SHAPE_PATH = SHAPE_CARRIERS | SHAPE_ARITHMETIC


def _shape_readers(shape: ir.Node) -> list[tuple[ir.Node, int]]:
    """The (node, input index) pairs a ``Shape`` node's output ends in, through `_SHAPE_PATH`."""
    found, stack, seen = [], [shape.outputs[0]], set()
    while stack:
        value = stack.pop()
        for use in value.uses():
            if use.node.op_type in _SHAPE_PATH and use.node not in seen:
                seen.add(use.node)
                stack.extend(use.node.outputs)
            elif use.node.op_type not in _SHAPE_PATH:
                found.append((use.node, use.idx))
    return found


__all__ = ["Block", "Track", "Trace", "find_blocks", "survey", "trace_heads"]
