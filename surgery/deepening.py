"""Deepen: insert new blocks that start as the identity, so the outputs stay bitwise equal.

Size: two insertion kinds (residual block copies, identity layers) that share the planning,
the forking of constants and the metadata records; a known candidate for a split along those kinds.

Two kinds, planned first (`plan_deepen`, nothing changes) and then written (`deepen_in_place`):

**Residual blocks** (``kind="block"``, the default). ``count`` new blocks go right after the
residual block ``after`` (a name `surgery.blocks.find_blocks` lists), each a structural copy of
it reading the previous one's output; every reader of the block's output then reads the last
copy's. Rules, case by case:

- **Output projections.** For each residual Add of the block the branch is followed back from
  the Add to its last layer: through bias ``Add``/``Sub`` with a constant (the constant becomes
  0), ``Mul`` by a constant, ``Div`` by a non-zero constant, ``BatchNormalization`` (scale and
  bias become 0), and layout ops (``Reshape``, ``Transpose``, ``Squeeze``, ``Unsqueeze``,
  ``Flatten``, ``Identity``, ``Dropout``, ``Cast``), each read by that path only, to a ``Gemm``,
  ``MatMul`` or ``Conv`` with a constant weight (directly, or reshaped by layout ops as tf2onnx
  writes an einsum), whose weight and bias become exactly 0. The
  branch then adds ``±0`` and ``x + 0 == x`` for every float but ``-0.0`` (which becomes
  ``+0.0``); its hidden values must be finite (``inf · 0`` is NaN). A branch that reaches
  anything else is refused with the node's name.
- **Parameters.** ``init="copy"``: every other constant keeps the block's values. ``"random"``:
  the weight of every other Gemm/MatMul/Conv is drawn like a widening's new fan-in (He-uniform
  before a ReLU-like activation, else Glorot-uniform; seeded by ``(seed, its new name)``) and
  its bias (Gemm C, Conv B, MatMul's bias Add) is 0; normalisation parameters and every other
  constant keep the block's values.
- **Forks.** Every constant the copy reads, an initializer or a ``Constant`` node (shape
  constants too), is a new one of its own with a fresh name, never the original's: one per
  constant and contents (a ``Shape`` of a zeroed weight reads the zeroed fork). Tensors the
  block reads from outside it (a causal mask, rotary tables, graph inputs) are read as they are.
- **Tails.** A block that ends in an activation after its residual Add (``relu(x + f(x))``) is
  exact only when the activation is the identity on the values it outputs (``Relu``, ``Clip``:
  the copy reads ``relu(...) ≥ 0``, and ``relu(y + 0) = y``); any other activation is refused
  with that reason. A post-norm block (``LayerNormalization(x + f(x))``, BERT) is refused: the
  copy would compute ``LayerNormalization(x + 0) ≠ x``, and no parameter choice makes a
  LayerNormalization the identity on normalised rows.
- **Names.** Copy ``k`` is ``<after>.grown.<k>`` (the first free ``k``): PyTorch's node scope of
  the block (``/transformer/h.0/``) becomes ``/transformer/h.0.grown.0/``, the module path in a
  dotted name (``transformer.h.0.ln_1.weight``) becomes ``transformer.h.0.grown.0.ln_1.weight``,
  and any other name is prefixed: ``transformer.h.0.grown.0/onnx::MatMul_12``. Names stay
  unique (``_1``, ``_2`` … on a clash).

**Identity layers** (``kind="identity"``, Net2DeeperNet). ``after`` is a layer (a name
`surgery.layers.find_layers` lists) whose output goes straight into a ``Relu``: each new layer
is the same op (``MatMul`` + bias ``Add``, ``Gemm`` or ``Conv``) with an identity weight (a Conv's
kernel has the layer's odd size, or 1×1, with 1 at the centre, 'same' padding) and a zero bias,
then a ``Relu``: ``relu(I · relu(x) + 0) = relu(x)`` bitwise, since every product is exact and
only zeros are added.

Nodes are inserted right after the block (or ReLU) they follow, so the graph stays sorted; the
input model's other nodes and tensors keep their names. ``surgery.deepen_history`` gets one
record per call, and a copy of a widened block gets its tensors' entries in
``surgery.widened_tensors``. A model from `surgery export` also gets the copied block's Keras layers in
``surgery.keras_config`` and ``surgery.layer_map`` (``block0_up`` → ``block0.grown.0_up``), so
that `to-keras` rebuilds the deeper model, and an identity layer becomes a copy of the Dense or
Conv2D it follows with ``activation="relu"``; where that cannot be done (a layer called twice,
another layer class) the Keras architecture is dropped and `to-keras` reads the graph instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from difflib import get_close_matches

import numpy as np
import onnx
import onnx_ir as ir

from surgery.blocks import BlockSite, Residual, block_sites
from surgery.errors import SurgeryError
from surgery.graph import ModelLike, as_ir, attribute, constant_array, constant_shape, consumers, like
from surgery.initializers import draw_weight
from surgery.layers import LayerSite, layer_sites
from surgery.metadata import DEEPEN_HISTORY_KEY, KERAS_CONFIG_KEY, LAYER_MAP_KEY, WIDENED_TENSORS_KEY
from surgery.ops import LAYER_OPS, REARRANGING, VALUE_PRESERVING, init_family

INITS = ("copy", "random")
KINDS = ("block", "identity")

#: Activations that are the identity on the values they output: a(a(x)) == a(x).
IDEMPOTENT = frozenset({"Relu", "Clip"})
_LAYOUT = REARRANGING | VALUE_PRESERVING


@dataclass(frozen=True)
class Edit:
    """A constant input of a block node that the copy gets new contents for.

    Attributes:
        node, index: the original node and its input.
        role: ``"zero"`` (an output projection's weight or bias) or ``"draw"`` (a random weight).
        kind, weight_axes: for ``"draw"``: the initializer (``he``/``glorot``) and the fans' axes.
    """

    node: ir.Node
    index: int
    role: str
    kind: str | None = None
    weight_axes: tuple[int, int] | None = None


@dataclass(frozen=True)
class DeepenPlan:
    """Everything `deepen_in_place` writes, worked out before anything changes.

    Attributes:
        kind: ``"block"`` or ``"identity"``.
        after: the name asked for.
        names: the new blocks' (or layers') names, in stream order.
        site: the block copied (kind ``"block"``).
        layer: the layer followed (kind ``"identity"``) and `relu`, the ReLU after it.
        edits: new contents of constants in the copy, by (id of node, input index).
        projections: the output projections zeroed in the block (node names).
    """

    kind: str
    after: str
    count: int
    init: str
    seed: int
    names: tuple[str, ...]
    site: BlockSite | None = None
    layer: LayerSite | None = None
    relu: ir.Node | None = None
    edits: dict[tuple[int, int], Edit] = field(default_factory=dict)
    projections: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeepenResult:
    """What `deepen_in_place` did: the plan and the record added to ``surgery.deepen_history``."""

    plan: DeepenPlan
    record: dict


# --------------------------------------------------------------------------------------------
# Planning


def _check_request(count: int, init: str, seed: int, kind: str) -> None:
    if kind not in KINDS:
        raise SurgeryError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if init not in INITS:
        raise SurgeryError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if kind == "identity" and init != "copy":
        raise SurgeryError(f"init={init!r} does not apply to kind='identity': the new layers start as the identity")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise SurgeryError(f"count must be an integer of at least 1, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SurgeryError(f"seed must be a non-negative integer, got {seed!r}")


def _resolve_block(model: ir.Model, name: str, sites: list[BlockSite]) -> BlockSite:
    for site in sites:
        if site.block.name == name:
            return site
    if any(name in (layer.layer.name, layer.layer.node) for layer in layer_sites(model)):
        raise SurgeryError(
            f"{name!r} is a layer, not a residual block: with no skip connection around it a new layer "
            "cannot start by adding 0; grow it with widen, or insert an identity layer after it with "
            "kind='identity' when a ReLU follows it"
        )
    if not sites:
        raise SurgeryError(
            f"no block named {name!r}: the model has no residual blocks (no Add of a tensor and a branch "
            "computed from it); grow its layers with widen, or use kind='identity' after a ReLU layer"
        )
    known = [site.block.name for site in sites]
    close = get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"blocks are: {', '.join(known[:8])}"
    raise SurgeryError(f"no block named {name!r}; {hint}")


def _weight_source(node: ir.Node) -> tuple[ir.Node, int] | None:
    """Where a Gemm/MatMul/Conv's constant weight enters it: (node, input index) of the constant,
    found through layout ops each read only there (tf2onnx's einsum reshapes a constant kernel by
    a computed shape); None when the layer has no constant weight."""
    candidates = (1, 0) if node.op_type in ("Gemm", "MatMul") else (1,)
    for index in candidates:
        reader, at = node, index
        while at < len(reader.inputs) and reader.inputs[at] is not None:
            value = reader.inputs[at]
            if constant_shape(value) is not None:
                return reader, at
            producer = value.producer()
            if producer is None or producer.op_type not in _LAYOUT or not _only_reader(value, reader):
                break
            reader, at = producer, 0
    return None


def _only_reader(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and all(use.node is node for use in value.uses())


def _projection(block: str, residual: Residual) -> tuple[ir.Node, list[tuple[ir.Node, int]]]:
    """The output projection of `residual`'s branch and the inputs that become zero (rule 1)."""
    value, zeroed = residual.branch, []
    reader = residual.add
    while True:
        node = value.producer()
        where = f"the branch into residual Add {residual.add.name!r} of block {block!r}"
        if node is None:
            raise SurgeryError(f"{where} starts at graph input {value.name!r}: no output projection to start at zero")
        if not _only_reader(value, reader):
            raise SurgeryError(f"{where}: {value.name!r} is also read elsewhere, so it cannot start at zero")
        op, inputs = node.op_type, node.inputs
        constant = [i for i, v in enumerate(inputs) if v is not None and constant_shape(v) is not None]
        if op in LAYER_OPS and (weight := _weight_source(node)) is not None:
            zeroed.append(weight)
            if op in ("Gemm", "Conv") and len(inputs) > 2 and inputs[2] is not None:
                zeroed.append((node, 2))
            return node, zeroed
        if op in ("Add", "Sub") and len(inputs) == 2 and len(constant) == 1:
            zeroed.append((node, constant[0]))
            value = inputs[1 - constant[0]]
        elif op == "Mul" and len(inputs) == 2 and len(constant) == 1:
            value = inputs[1 - constant[0]]
        elif op == "Div" and len(inputs) == 2 and constant == [1] and np.all(constant_array(inputs[1]) != 0):
            value = inputs[0]
        elif op == "BatchNormalization" and constant == [1, 2, 3, 4]:
            zeroed += [(node, 1), (node, 2)]
            value = inputs[0]
        elif op in _LAYOUT and inputs and inputs[0] is not None:
            value = inputs[0]
        else:
            raise SurgeryError(
                f"{where} ends in {node.name!r} ({op}), not a Gemm, MatMul or Conv with a constant weight: "
                "no output projection to start at zero"
            )
        reader = node


def _check_tail(block: str, residual: Residual) -> None:
    """Rule 4: the activation after the residual Add must be the identity on its own outputs."""
    tail = residual.tail
    if tail is None:
        return
    if tail.op_type == "LayerNormalization":
        raise SurgeryError(
            f"block {block!r} is post-norm (LayerNormalization {tail.name!r} after its residual Add): a copy "
            "whose output projections are zero computes LayerNormalization(x + 0), which is not x; only "
            "pre-norm blocks (the norm inside the branch) can be inserted exactly"
        )
    if tail.op_type == "Clip" and any(v is not None and constant_shape(v) is None for v in tail.inputs[1:]):
        raise SurgeryError(f"block {block!r} ends in Clip {tail.name!r} with computed bounds: its range is not known")
    if tail.op_type not in IDEMPOTENT:
        raise SurgeryError(
            f"block {block!r} ends in {tail.op_type} {tail.name!r} after its residual Add: a copy would compute "
            f"{tail.op_type}(x + 0) = {tail.op_type}(x), which is not x because {tail.op_type} is not the identity "
            "on the values it outputs (only Relu or Clip there keeps the outputs exact)"
        )


def _weight_axes(node: ir.Node, index: int, rank: int) -> tuple[int, int] | None:
    """(input axis, unit axis) of a weight for its fans; a reshaped one counts as [in, ..., out]."""
    if node.op_type == "Conv":
        return (1, 0)
    if node.op_type == "Gemm":
        transposed = attribute(node, "transB" if index == 1 else "transA", 0)
        return (1, 0) if transposed else (0, 1)
    if node.op_type == "MatMul":
        return (rank - 2, rank - 1) if rank >= 2 else None
    return (0, rank - 1) if rank >= 2 else None


def _random_edits(site: BlockSite, sites: dict[int, LayerSite], zeroed: set[tuple[int, int]]) -> list[Edit]:
    """Rule 2, ``init="random"``: a drawn weight and a zero bias for every other layer of the block."""
    edits = []
    for node in site.nodes:
        weight = _weight_source(node) if node.op_type in LAYER_OPS else None
        if weight is None or (id(weight[0]), weight[1]) in zeroed:
            continue
        layer = sites.get(id(node))
        activation = layer.layer.activation if layer is not None else None
        reader, index = weight
        rank = len(constant_shape(reader.inputs[index]) or ())
        kind = init_family(activation)
        edits.append(Edit(reader, index, "draw", kind, _weight_axes(reader, index, rank)))
        if node.op_type in ("Gemm", "Conv") and len(node.inputs) > 2 and node.inputs[2] is not None:
            edits.append(Edit(node, 2, "zero"))
        elif layer is not None and layer.bias_node is not None:
            bias = layer.bias_node
            edits.append(Edit(bias, 1 if bias.inputs[0] is node.outputs[0] else 0, "zero"))
    return edits


def _all_names(model: ir.Model) -> set[str]:
    graph = model.graph
    names = {v.name for v in graph.inputs} | set(graph.initializers)
    for node in graph:
        names.add(node.name or "")
        names.update(v.name or "" for v in node.outputs)
    names.discard("")
    return names


def _fresh_names(base: str, count: int, taken: set[str]) -> tuple[str, ...]:
    """`count` names ``<base>.grown.<k>`` that no block, node or tensor uses yet."""
    names, k = [], 0
    while len(names) < count:
        candidate = f"{base}.grown.{k}"
        if not any(candidate in name for name in taken):
            names.append(candidate)
        k += 1
    return tuple(names)


def _relu_after(site: LayerSite) -> ir.Node | None:
    users = consumers(site.output)
    if len(users) == 1 and users[0].op_type == "Relu" and not site.output.is_graph_output():
        return users[0]
    return None


def plan_deepen(
    model: ir.Model, *, after: str, count: int = 1, init: str = "copy", seed: int = 0, kind: str = "block"
) -> DeepenPlan:
    """Work out a deepening without changing `model` (see `deepen` for the arguments).

    Raises:
        SurgeryError: a bad request, or a block that cannot start as the identity (the message
            says why).
    """
    _check_request(count, init, seed, kind)
    taken = _all_names(model)
    if kind == "identity":
        layers = layer_sites(model)
        site = next((s for s in layers if after in (s.layer.name, s.layer.node)), None)
        if site is None:
            known = sorted({s.layer.name for s in layers} | {s.layer.node for s in layers})
            close = get_close_matches(after, known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"layers are: {', '.join(known[:8])}"
            raise SurgeryError(f"no layer named {after!r}; {hint}")
        relu = _relu_after(site)
        if relu is None:
            follows = ", ".join(f"{n.name} ({n.op_type})" for n in consumers(site.output)) or "nothing"
            raise SurgeryError(
                f"layer {after!r} is not followed directly by a Relu (it is read by {follows}): an identity layer "
                "is exact only after a ReLU, relu(I·relu(x)) = relu(x)"
            )
        if site.node.op_type == "Conv" and attribute(site.node, "group", 1) != 1:
            raise SurgeryError(f"layer {after!r} is a grouped Conv; an identity layer after it is not supported")
        return DeepenPlan(
            "identity",
            after,
            int(count),
            init,
            int(seed),
            _fresh_names(site.layer.name, count, taken),
            layer=site,
            relu=relu,
        )
    sites = block_sites(model)
    site = _resolve_block(model, after, sites)
    name = site.block.name
    for node in site.nodes:
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            raise SurgeryError(
                f"block {name!r} holds {node.op_type} {node.name!r} with a subgraph; copying it is not supported"
            )
    edits: dict[tuple[int, int], Edit] = {}
    projections = []
    for residual in site.residuals:
        _check_tail(name, residual)
        projection, zeroed = _projection(name, residual)
        projections.append(projection.name or projection.op_type)
        for node, index in zeroed:
            edits[(id(node), index)] = Edit(node, index, "zero")
    if init == "random":
        layers = {id(s.node): s for s in layer_sites(model)}
        for edit in _random_edits(site, layers, set(edits)):
            edits.setdefault((id(edit.node), edit.index), edit)
    members = {id(node) for node in site.nodes}
    for edit in list(edits.values()):  # a Shape of the same constant reads the same fork (tf2onnx's einsum)
        for use in edit.node.inputs[edit.index].uses():
            if use.node.op_type in ("Shape", "Size") and id(use.node) in members:
                edits.setdefault((id(use.node), use.idx), replace(edit, node=use.node, index=use.idx))
    taken |= {s.block.name for s in sites}
    return DeepenPlan(
        "block",
        after,
        int(count),
        init,
        int(seed),
        _fresh_names(name, count, taken),
        site=site,
        edits=edits,
        projections=tuple(projections),
    )


# --------------------------------------------------------------------------------------------
# Rewriting


class _Renamer:
    """Fresh names for one copy (rule 5): the block's scope, path or a prefix, unique in `taken`."""

    def __init__(self, site: BlockSite, new: str, taken: set[str]):
        old = site.block.name
        self.new, self.taken = new, taken
        self.scope = site.scope
        self.new_scope = None if site.scope is None else site.scope[:-1] + new[len(old) :] + "/"
        self.prefix = None if site.prefix is None else site.prefix + "/"
        self.path = re.compile(rf"(?<!\w){re.escape(old)}(?=[./]|$)")

    def text(self, text: str) -> str:
        """`text` with the block's module path replaced (node metadata such as dynamo's scopes)."""
        return self.path.sub(self.new, text)

    def __call__(self, name: str | None, fallback: str = "") -> str:
        name = name or fallback
        if self.scope is not None and name.startswith(self.scope):
            fresh = self.new_scope + name[len(self.scope) :]
        elif self.prefix is not None and name.startswith(self.prefix):
            fresh = self.new + "/" + name[len(self.prefix) :]
        elif self.path.search(name):
            fresh = self.path.sub(self.new, name, count=1)
        else:
            fresh = f"{self.new}/{name}"
        return unique(fresh, self.taken)


def unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2`, … : the first that is not in `taken` (which gets it)."""
    fresh, n = name, 0
    while fresh in taken:
        n += 1
        fresh = f"{name}_{n}"
    taken.add(fresh)
    return fresh


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.Tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _contents(value: ir.Value, edit: Edit | None, new_name: str, seed: int) -> np.ndarray:
    array = constant_array(value)
    if edit is None:
        return array
    if edit.role == "zero":
        return np.zeros(array.shape, dtype=array.dtype)
    return draw_weight(array.shape, array.dtype, kind=edit.kind, weight_axes=edit.weight_axes, seed=seed, key=new_name)


def _copy_attributes(node: ir.Node, rename: _Renamer) -> list[ir.Attr]:
    copies = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.TENSOR:
            tensor = attr.as_tensor()
            name = rename(tensor.name, "value")
            copies.append(ir.AttrTensor(attr.name, ir.Tensor(tensor.numpy(), name=name)))
        else:
            copies.append(ir.Attr(attr.name, attr.type, attr.value))
    return copies


def _copy_block(
    graph: ir.Graph, plan: DeepenPlan, entry: ir.Value, rename: _Renamer
) -> tuple[list[ir.Node], ir.Value, dict[str, str]]:
    """One copy of the block reading `entry`: its nodes (not yet in the graph), its output, and
    the names of the copied nodes and of their outputs, by the originals'."""
    site = plan.site
    mapping: dict[int, ir.Value] = {id(site.entry): entry}
    forks: dict[tuple[int, str], ir.Value] = {}
    nodes = []
    for node in site.nodes:
        inputs = []
        for index, value in enumerate(node.inputs):
            edit = plan.edits.get((id(node), index))
            if value is None or (edit is None and id(value) in mapping):
                inputs.append(None if value is None else mapping[id(value)])
            elif edit is not None or (value.const_value is not None and not value.is_graph_input()):
                key = (id(value), "" if edit is None else edit.role)
                if key not in forks:
                    name = rename(value.name, "constant")
                    forks[key] = _initializer(graph, name, _contents(value, edit, name, plan.seed))
                inputs.append(forks[key])
            else:
                inputs.append(value)  # read from outside the block: a mask, rotary tables, a graph input
        outputs = [
            ir.Value(
                name=rename(old.name, "output"),
                type=old.type,
                shape=None if old.shape is None else ir.Shape(old.shape.dims),
            )
            for old in node.outputs
        ]
        metadata = {key: rename.text(text) for key, text in node.metadata_props.items()}
        copy = ir.Node(
            node.domain,
            node.op_type,
            inputs,
            _copy_attributes(node, rename),
            overload=node.overload,
            outputs=outputs,
            version=node.version,
            name=rename(node.name, node.op_type),
            doc_string=node.doc_string,
            metadata_props=metadata,
        )
        mapping.update((id(old), new) for old, new in zip(node.outputs, copy.outputs))
        nodes.append(copy)
    kept = _without_unread(nodes, mapping[id(site.exit)])
    names = {}
    for old, new in zip(site.nodes, nodes):
        if new in kept:
            names.update((a.name, b.name) for a, b in zip([old, *old.outputs], [new, *new.outputs]) if a.name)
    return kept, mapping[id(site.exit)], names


def _without_unread(nodes: list[ir.Node], output: ir.Value) -> list[ir.Node]:
    """Drop copied nodes nothing reads (a Constant whose only reader got a zeroed fork)."""
    kept: list[ir.Node] = []
    for node in reversed(nodes):
        if all(not v.uses() and v is not output for v in node.outputs):
            for index in range(len(node.inputs)):
                node.replace_input_with(index, None)
            continue
        kept.append(node)
    return kept[::-1]


def _identity_kernel(conv: ir.Node) -> list[int]:
    """The kernel of an identity Conv after `conv`: its size when every side is odd, else 1×1."""
    kernel = [int(k) for k in constant_shape(conv.inputs[1])[2:]]
    return [1] * len(kernel) if any(k % 2 == 0 for k in kernel) else kernel


def _identity_layer(
    graph: ir.Graph, plan: DeepenPlan, entry: ir.Value, name: str, taken: set[str]
) -> tuple[list[ir.Node], ir.Value]:
    """Net2DeeperNet: a layer of the same op with an identity weight and a zero bias, then a Relu."""
    site = plan.layer
    node, width = site.node, site.layer.width
    dtype = np.dtype(constant_array(node.inputs[1]).dtype)
    bias = _initializer(graph, unique(f"{name}.bias", taken), np.zeros(width, dtype=dtype))
    nodes: list[ir.Node] = []

    def make(op: str, inputs: list[ir.Value], attributes: list[ir.Attr] = ()) -> ir.Value:
        out = ir.Value(
            name=unique(f"{name}/{op}_output_0", taken),
            type=entry.type,
            shape=None if entry.shape is None else ir.Shape(entry.shape.dims),
        )
        nodes.append(ir.Node("", op, inputs, attributes, outputs=[out], name=unique(f"{name}/{op}", taken)))
        return out

    if node.op_type == "Conv":
        kernel = _identity_kernel(node)
        weight = np.zeros([width, width, *kernel], dtype=dtype)
        weight[(np.arange(width), np.arange(width), *(k // 2 for k in kernel))] = 1
        pads = [k // 2 for k in kernel] * 2
        value = make(
            "Conv",
            [entry, _initializer(graph, unique(f"{name}.weight", taken), weight), bias],
            [ir.AttrInt64s("kernel_shape", kernel), ir.AttrInt64s("pads", pads)],
        )
    elif node.op_type == "Gemm":
        weight = _initializer(graph, unique(f"{name}.weight", taken), np.eye(width, dtype=dtype))
        value = make("Gemm", [entry, weight, bias])
    else:
        weight = _initializer(graph, unique(f"{name}.weight", taken), np.eye(width, dtype=dtype))
        value = make("Add", [make("MatMul", [entry, weight]), bias])
    return nodes, make("Relu", [value])


def _rewire(graph: ir.Graph, old: ir.Value, new: ir.Value, readers: list[tuple[ir.Node, int]]) -> None:
    """Every former reader of `old` reads `new`; a graph output keeps its name (the two swap names)."""
    for node, index in readers:
        node.replace_input_with(index, new)
    for i, output in enumerate(graph.outputs):
        if output is old:
            graph.outputs[i] = new
    if new.is_graph_output():
        old.name, new.name = new.name, old.name


def _keras_references(document, renamed: dict[str, str]):
    """`document` (a Keras layer's inbound nodes) with every ``keras_history`` layer renamed."""
    if isinstance(document, dict):
        copy = {key: _keras_references(value, renamed) for key, value in document.items()}
        history = copy.get("keras_history")
        if isinstance(history, list) and history and history[0] in renamed:
            copy["keras_history"] = [renamed[history[0]], *history[1:]]
        return copy
    if isinstance(document, list):
        return [_keras_references(item, renamed) for item in document]
    return document


def _copy_keras_layers(model: ir.Model, plan: DeepenPlan, copies: list[dict[str, str]]) -> None:
    """A model from `surgery export` gets the block's Keras layers copied into
    ``surgery.keras_config`` and ``surgery.layer_map`` (``block0_ffn_up`` → ``block0.grown.0_ffn_up``),
    so that `to-keras` rebuilds the deeper model. When the block's layers cannot be told apart
    (a layer called twice, a stream tensor no layer made) the architecture is dropped instead,
    and `to-keras` rebuilds from the graph."""
    raw_config, raw_map = model.metadata_props.get(KERAS_CONFIG_KEY), model.metadata_props.get(LAYER_MAP_KEY)
    if not raw_config or not raw_map:
        return
    try:
        config, layer_map = json.loads(raw_config), json.loads(raw_map)
        layers = config["config"]["layers"]
        by_node = {node: layer for layer, nodes in layer_map.items() for node in nodes}
        site = plan.site
        block = {by_node[n.name] for n in site.nodes if n.name in by_node}
        members = [entry for entry in layers if entry["name"] in block]
        producer = site.entry.producer()
        source = by_node.get(producer.name) if producer is not None else site.entry.name
        sink = by_node.get(site.exit.producer().name)
        if (
            source is None
            or source in block
            or sink not in block
            or any(len(entry.get("inbound_nodes", ())) != 1 for entry in members)
        ):
            raise KeyError("block layers")
    except (KeyError, TypeError, ValueError, AttributeError):
        model.metadata_props.pop(KERAS_CONFIG_KEY, None)
        return
    taken = {entry["name"] for entry in layers}
    readers = [entry for entry in layers if entry["name"] not in block]
    position = next(i for i, entry in enumerate(layers) if entry["name"] == sink) + 1
    last = sink
    for new, nodes in zip(plan.names, copies):
        prefix = site.block.name
        renamed = {
            layer: unique(new + layer[len(prefix) :] if layer.startswith(prefix) else f"{new}_{layer}", taken)
            for layer in sorted(block)
        }
        for entry in members:
            copy = _keras_references(entry, {**renamed, source: last})
            copy["name"] = copy["config"]["name"] = renamed[entry["name"]]
            layers.insert(position, copy)
            position += 1
            layer_map[copy["name"]] = [nodes[node] for node in layer_map[entry["name"]] if node in nodes]
        last = renamed[sink]
    for entry in readers:  # every reader of the block's output reads the last copy's
        entry["inbound_nodes"] = _keras_references(entry.get("inbound_nodes", []), {sink: last})
    outputs = config["config"].get("output_layers")
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    config["config"]["output_layers"] = [[last if o[0] == sink else o[0], *o[1:]] for o in outputs or []]
    model.metadata_props[KERAS_CONFIG_KEY] = json.dumps(config)
    model.metadata_props[LAYER_MAP_KEY] = json.dumps(dict(sorted(layer_map.items())))


def _identity_keras_layers(model: ir.Model, plan: DeepenPlan, layers: list[dict[str, str]]) -> None:
    """A model from `surgery export` gets each identity layer as a Keras layer: a copy of the
    Dense or Conv2D it follows (same units or filters, ``activation="relu"``, a bias; a Conv2D with
    the new kernel size, 'same' padding, stride 1), reading the layer that holds the ReLU, and read
    by that layer's former readers. Any other layer drops the Keras architecture instead."""
    raw_config, raw_map = model.metadata_props.get(KERAS_CONFIG_KEY), model.metadata_props.get(LAYER_MAP_KEY)
    if not raw_config or not raw_map:
        return
    try:
        config, layer_map = json.loads(raw_config), json.loads(raw_map)
        entries = config["config"]["layers"]
        by_node = {node: layer for layer, nodes in layer_map.items() for node in nodes}
        relu = by_node[plan.relu.name]
        # tf2onnx's fused Conv nodes (``Conv__34``) lose their scope; the ReLU keeps it
        source = next(e for e in entries if e["config"]["name"] == by_node.get(plan.layer.node.name, relu))
        sequential = config["class_name"] == "Sequential"  # layers in order, no inbound nodes
        if source["class_name"] not in ("Dense", "Conv2D") or (not sequential and len(source["inbound_nodes"]) != 1):
            raise KeyError(source["class_name"])
        tensor = None if sequential else source["inbound_nodes"][0]["args"][0]
    except (KeyError, TypeError, ValueError, IndexError, StopIteration):
        model.metadata_props.pop(KERAS_CONFIG_KEY, None)  # `to-keras` rebuilds from the graph instead
        return
    width = plan.layer.layer.width
    readers = [entry for entry in entries if entry["config"]["name"] != relu]
    position = next(i for i, entry in enumerate(entries) if entry["config"]["name"] == relu) + 1
    last, taken = relu, {entry["config"]["name"] for entry in entries}
    for nodes in layers:
        name = unique(nodes[""], taken)
        layer = json.loads(json.dumps(source))
        layer["config"]["name"] = name
        layer["config"].update(activation="relu", use_bias=True)
        if source["class_name"] == "Conv2D":
            layer["config"].update(
                kernel_size=_identity_kernel(plan.layer.node),
                padding="same",
                strides=[1, 1],
                dilation_rate=[1, 1],
                groups=1,
            )
        else:
            layer["config"]["units"] = width
        if not sequential:
            shape = list(tensor["config"]["shape"])
            shape[-1] = width  # Keras is channels-last
            layer["name"] = name
            layer["inbound_nodes"] = [
                {
                    "args": [{**tensor, "config": {**tensor["config"], "shape": shape, "keras_history": [last, 0, 0]}}],
                    "kwargs": {},
                }
            ]
        entries.insert(position, layer)
        position += 1
        layer_map[name] = [node for op, node in nodes.items() if op]
        last = name
    if not sequential:
        for entry in readers:  # the ReLU's former readers read the last identity layer
            entry["inbound_nodes"] = _keras_references(entry.get("inbound_nodes", []), {relu: last})
        outputs = config["config"].get("output_layers")
        if outputs and isinstance(outputs[0], str):
            outputs = [outputs]
        config["config"]["output_layers"] = [[last if o[0] == relu else o[0], *o[1:]] for o in outputs or []]
    model.metadata_props[KERAS_CONFIG_KEY] = json.dumps(config)
    model.metadata_props[LAYER_MAP_KEY] = json.dumps(dict(sorted(layer_map.items())))


def _parameters(values: list[ir.Value]) -> int:
    return sum(v.const_value.size for v in values if v.const_value.dtype.is_floating_point())


def deepen_in_place(
    model: ir.Model, *, after: str, count: int = 1, init: str = "copy", seed: int = 0, kind: str = "block"
) -> DeepenResult:
    """Deepen `model` itself (no copy): see `deepen` for the arguments. On a `SurgeryError`
    nothing has changed."""
    plan = plan_deepen(model, after=after, count=count, init=init, seed=seed, kind=kind)
    raw = model.metadata_props.get(DEEPEN_HISTORY_KEY)
    try:
        history = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        raise SurgeryError(f"metadata {DEEPEN_HISTORY_KEY!r} is not valid JSON; cannot append to it") from None
    if not isinstance(history, list):
        raise SurgeryError(f"metadata {DEEPEN_HISTORY_KEY!r} is not a JSON list; cannot append to it")
    raw = model.metadata_props.get(WIDENED_TENSORS_KEY)
    try:
        widened = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise SurgeryError(
            f"metadata {WIDENED_TENSORS_KEY!r} is not valid JSON; cannot add the copies' tensors"
        ) from None
    # Nothing above changed the model; from here on it is written.
    graph = model.graph
    taken = _all_names(model)
    before = set(graph.initializers)
    anchor = plan.site.exit if plan.kind == "block" else plan.relu.outputs[0]
    readers = [(use.node, use.idx) for use in anchor.uses()]
    current, inserted, copies = anchor, [], []
    for name in plan.names:
        if plan.kind == "block":
            nodes, current, names = _copy_block(graph, plan, current, _Renamer(plan.site, name, taken))
            copies.append(names)
        else:
            nodes, current = _identity_layer(graph, plan, current, name, taken)
            copies.append({"": name, **{node.op_type: node.name for node in nodes}})
        inserted += nodes
    graph.insert_after(anchor.producer(), inserted)
    _rewire(graph, anchor, current, readers)
    if plan.kind == "block":
        _copy_keras_layers(model, plan, copies)
        if widened:  # a copy of a widened block has the same new positions (`verify --locate` reads them)
            for names in copies:
                widened.update({names[t]: widened[t] for t in list(widened) if t in names})
            model.metadata_props[WIDENED_TENSORS_KEY] = json.dumps(dict(sorted(widened.items())))
    else:
        _identity_keras_layers(model, plan, copies)
    added = [graph.initializers[n] for n in graph.initializers if n not in before]
    record = {
        "after": plan.after,
        "kind": plan.kind,
        "added": list(plan.names),
        "count": plan.count,
        "init": plan.init if plan.kind == "block" else "identity",
        "seed": plan.seed,
        "nodes": len(inserted) // plan.count,
        "parameters": plan.site.block.parameters if plan.kind == "block" else _parameters(added) // plan.count,
        "zeroed": list(plan.projections),
    }
    model.metadata_props[DEEPEN_HISTORY_KEY] = json.dumps(history + [record])
    return DeepenResult(plan, record)


def deepen(
    model: ModelLike, *, after: str, count: int = 1, init: str = "copy", seed: int = 0, kind: str = "block"
) -> ModelLike:
    """Insert `count` blocks after block `after` that start as the identity (bitwise-equal outputs).

    Args:
        model: an `onnx.ModelProto` or `ir.Model`; never modified.
        after: a residual block's name as `surgery.blocks.find_blocks` (``surgery inspect``) lists
            it, e.g. ``"transformer.h.1"``; for ``kind="identity"`` a layer's name.
        count: how many new blocks (≥ 1), inserted one after another.
        init: ``"copy"`` (the block's parameters) or ``"random"`` (drawn weights, zero biases);
            in both every residual branch's output projection starts at exactly zero.
        seed: seeds the random draws; the same model, arguments and seed give the same bytes.
        kind: ``"block"`` (a copy of a residual block) or ``"identity"`` (Net2DeeperNet: an
            identity layer and a ReLU after a layer that a ReLU follows).

    Returns:
        The deeper model, of the same kind as `model`.

    Raises:
        SurgeryError: a bad request, or a block that cannot start as the identity (the reason).

    Example:
        >>> deeper = surgery.deepen(onnx.load("tests/fixtures/gpt2_sdpa.onnx"), after="transformer.h.1", count=2)
        >>> surgery.verify(onnx.load("tests/fixtures/gpt2_sdpa.onnx"), deeper, dims={"sequence": 8}).equivalent
        True
    """
    if isinstance(model, onnx.ModelProto):
        working = as_ir(model)  # a fresh graph; its tensors are read-only views of the proto
    else:
        working = as_ir(model).clone()
    deepen_in_place(working, after=after, count=count, init=init, seed=seed, kind=kind)
    return like(working, model)


__all__ = ["INITS", "KINDS", "DeepenPlan", "DeepenResult", "Edit", "plan_deepen", "deepen_in_place", "deepen"]
