"""Residual blocks: the subgraphs between consecutive tensors of a model's residual stream.

What `surgery inspect` lists under ``blocks`` and what `surgery deepen` copies. Rules, case by case:

- **Residual Add**: an ``Add`` of two computed tensors where one, the *skip* ``x``, is an
  ancestor of the other, the *branch* ``f(x)``; the nodes between them include a layer with a
  constant weight (``Gemm``, ``MatMul``, ``Conv``), so GELU's ``x + 0.044715·x³`` is not one; and
  the sum keeps the skip's shape where both are known; and no residual Add lies between them
  (a causal mask or position table read by every block is an ancestor of later blocks'
  attention scores through the stream, but it is not the stream). A ResNet downsample block (a projection
  shortcut: neither operand is an ancestor of the other) has no identity skip and is no block.
- **Tail**: the node after the Add when it is the Add's only reader and the sum is no graph
  output: an elementwise activation (ResNet's ``relu(x + f(x))``) always; a
  ``LayerNormalization`` (post-norm, BERT) when its output is the skip of the next residual Add
  or the skip itself comes from a LayerNormalization (so GPT-2's final ``ln_f`` is not a tail).
  A sub-block ends at its tail's output, else at the Add's.
- **Entry**: a sub-block starts from its skip, or from the tensor the skip is an unchanged copy
  of (``Identity``, ``Cast`` to its own type: Llama's RMSNorm casts the stream and the residual
  reads the cast), so consecutive sub-blocks meet on one tensor.
- **Blocks**, in graph order: an attention sub-block (it holds a ``Softmax``) whose output is the
  entry of the next sub-block, which has no attention (the feed-forward), forms one block with it
  (pre-norm transformer: GPT-2, Llama, Keras); every other sub-block is a block of its own
  (ResNet basic and bottleneck blocks, residual MLP blocks). The kind is ``"transformer"`` when
  the block holds attention, else ``"residual"``.
- **Nodes** of a block: every node that descends from its input and leads to its output, plus
  the constant-only nodes they read (``Constant``, and nodes that compute from constants only).
  Tensors it reads from elsewhere (a causal mask, rotary tables) are not part of it, nor are
  model-level computations that depend on its input only through the input's shape and are read
  after it too (Llama's rotary tables, computed from the first block's input shape).
- **Names**, the first rule that gives one: a block that `surgery deepen` made carries its name
  as the first scope of its node names (``transformer.h.0.grown.0/...``); PyTorch's scoped node
  names give the module path (``/transformer/h.0/attn/c_attn/Gemm`` → ``transformer.h.0``,
  ``/layer1/layer1.0/conv1/Conv`` → ``layer1.0``), taken from the block's layers and residual
  Adds; dotted parameter names do the same (dynamo: ``transformer.h.0.attn.c_attn.weight``);
  Keras layer names from ``surgery.layer_map`` give their common prefix (``block0_up``,
  ``block0_down`` → ``block0``); otherwise ``block.<i>``, its position on the stream. A name
  two blocks would share becomes ``block.<i>`` for both. A wrapper module around the whole model
  is left out, as `surgery.naming` leaves it out of layer names (``model.transformer.h.0`` →
  ``transformer.h.0``).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

import onnx_ir as ir

from surgery.graph import ModelLike, as_ir, attribute
from surgery.layers import friendly_names
from surgery.naming import module_path, parameter_path
from surgery.ops import ELEMENTWISE_ACTIVATIONS, LAYER_OPS

#: Elementwise activations that end a residual block when they read the sum (``relu(x + f(x))``).
TAIL_ACTIVATIONS = ELEMENTWISE_ACTIVATIONS
_GROWN = re.compile(r"\.grown\.\d+$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.\w+)+$")


@dataclass(frozen=True)
class Block:
    """One residual block, as `surgery inspect --json` lists it.

    Attributes:
        name: the module path (``transformer.h.0``), Keras prefix or ``block.<i>``.
        kind: ``"transformer"`` (holds attention) or ``"residual"``.
        input: the stream tensor it reads (its skip).
        output: the stream tensor it writes.
        nodes: how many nodes it is made of.
        parameters: elements of the float constants its nodes read (what a copy adds).
    """

    name: str
    kind: str
    input: str
    output: str
    nodes: int
    parameters: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Residual:
    """One residual Add ``x + f(x)`` (a sub-block) and the nodes around it.

    Attributes:
        entry: the stream tensor the sub-block starts from: the skip, or the tensor an
            ``Identity`` or a same-type ``Cast`` made the skip from (Llama's RMSNorm casts the
            stream to float32, and the residual reads that cast).
    """

    add: ir.Node
    skip: ir.Value
    branch: ir.Value
    tail: ir.Node | None
    output: ir.Value
    attention: bool
    entry: ir.Value


@dataclass(frozen=True)
class BlockSite:
    """A block with the graph objects it is made of (for `surgery.deepening`).

    Attributes:
        scope: the PyTorch node-name prefix the name came from (``/transformer/h.0/``), if any.
        prefix: the leading node-name scope of a grown block (``block0.grown.0``), if any.
    """

    block: Block
    entry: ir.Value
    exit: ir.Value
    nodes: tuple[ir.Node, ...]
    residuals: tuple[Residual, ...]
    scope: str | None = None
    prefix: str | None = None


class _Order:
    """Topological positions of the main graph's nodes (ONNX graphs are stored sorted)."""

    def __init__(self, graph: ir.Graph):
        self.index = {id(node): i for i, node in enumerate(graph)}
        self.constant_only = _constant_only(graph)

    def of(self, value: ir.Value) -> int:
        producer = value.producer()
        return -1 if producer is None else self.index.get(id(producer), -1)


def _is_constant_value(value: ir.Value, constant_only: set[int]) -> bool:
    if value.const_value is not None and not value.is_graph_input():
        return True
    producer = value.producer()
    return producer is not None and id(producer) in constant_only


def _constant_only(graph: ir.Graph) -> set[int]:
    """ids of the nodes that compute from constants only (``Constant`` included)."""
    found: set[int] = set()
    for node in graph:
        if node.op_type == "Constant" or (
            node.inputs and all(v is None or _is_constant_value(v, found) for v in node.inputs)
        ):
            found.add(id(node))
    return found


def _between(source: ir.Value, last: ir.Node, order: _Order) -> list[ir.Node]:
    """The nodes that descend from `source` and lead to `last` (included), in graph order, with
    the constant-only nodes they read."""
    floor = order.of(source)
    ancestors: dict[int, ir.Node] = {}
    stack = [last]
    while stack:
        node = stack.pop()
        if id(node) in ancestors:
            continue
        ancestors[id(node)] = node
        for value in node.inputs:
            producer = None if value is None else value.producer()
            if producer is not None and order.index.get(id(producer), -1) > floor:
                stack.append(producer)
    reached, found = {id(source)}, []
    for node in sorted(ancestors.values(), key=lambda n: order.index[id(n)]):
        if any(value is not None and id(value) in reached for value in node.inputs):
            found.append(node)
            reached.update(id(value) for value in node.outputs)
    if not found or found[-1] is not last:
        return []
    members = {id(node) for node in found}
    stack = list(found)
    while stack:  # the constant-only nodes they read (shape constants, scalars)
        for value in stack.pop().inputs:
            producer = None if value is None else value.producer()
            if producer is not None and id(producer) in order.constant_only and id(producer) not in members:
                members.add(id(producer))
                found.append(producer)
                stack.append(producer)
    return sorted(found, key=lambda n: order.index[id(n)])


def _own(nodes: list[ir.Node], entry: ir.Value, last: ir.Node) -> list[ir.Node]:
    """`nodes` without the model-level computations that run through the block: a node that
    depends on `entry` only through its shape (``Shape``, ``Size``) and is also read after the
    block (rotary tables the exporter computed from the first block's input and shared), with
    what only it needs."""
    members = {id(node) for node in nodes}
    by_value = {id(entry)}
    for node in nodes:
        if node.op_type not in ("Shape", "Size") and any(v is not None and id(v) in by_value for v in node.inputs):
            by_value.update(id(v) for v in node.outputs)
    shared = {
        id(node)
        for node in nodes
        if node is not last
        and not any(id(v) in by_value for v in node.outputs)
        and any(v.is_graph_output() or any(id(use.node) not in members for use in v.uses()) for v in node.outputs)
    }
    keep, stack = set(), [last]
    while stack:
        node = stack.pop()
        if id(node) in keep:
            continue
        keep.add(id(node))
        for value in node.inputs:
            producer = None if value is None else value.producer()
            if producer is not None and id(producer) in members and id(producer) not in shared:
                stack.append(producer)
    return [node for node in nodes if id(node) in keep]


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    """Same rank and the same static sizes; symbolic sizes are not compared (shape inference
    names the same length differently on the two sides of an Add)."""
    if a.shape is None or b.shape is None:
        return True
    return len(a.shape) == len(b.shape) and all(
        x == y for x, y in zip(a.shape.dims, b.shape.dims) if isinstance(x, int) and isinstance(y, int)
    )


def _has_layer(nodes: list[ir.Node], order: _Order) -> bool:
    return any(
        node.op_type in LAYER_OPS
        and any(v is not None and _is_constant_value(v, order.constant_only) for v in node.inputs)
        for node in nodes
    )


def _residual_operands(add: ir.Node, order: _Order, earlier: set[int]) -> tuple[ir.Value, ir.Value] | None:
    """(skip, branch) of a residual Add, or None when `add` is not one (`earlier`: ids of the
    residual Adds before it; one of those between the operands makes the skip a tensor that
    entered the stream upstream, such as a mask, not the stream)."""
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    a, b = add.inputs
    if a is None or b is None or any(_is_constant_value(v, order.constant_only) for v in (a, b)):
        return None
    for skip, branch in sorted(((a, b), (b, a)), key=lambda pair: order.of(pair[0])):
        producer = branch.producer()
        if producer is None or order.of(skip) >= order.index[id(producer)]:
            continue
        nodes = _between(skip, producer, order)
        if (
            nodes
            and _has_layer(nodes, order)
            and _same_shape(skip, add.outputs[0])
            and not any(id(node) in earlier for node in nodes)
        ):
            return skip, branch
    return None


def _tail(add: ir.Node, skip: ir.Value, next_skips: set[int]) -> ir.Node | None:
    total = add.outputs[0]
    readers = {id(use.node): use.node for use in total.uses()}
    if len(readers) != 1 or total.is_graph_output():
        return None
    (node,) = readers.values()
    if node.op_type in TAIL_ACTIVATIONS and node.domain in ("", "ai.onnx"):
        return node
    if node.op_type == "LayerNormalization":
        producer = skip.producer()
        if id(node.outputs[0]) in next_skips or (producer is not None and producer.op_type == "LayerNormalization"):
            return node
    return None


#: Ops whose output has the type of their first input (what `_dtype` looks through).
_SAME_TYPE = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Relu",
        "Neg",
        "Identity",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Gather",
        "MatMul",
        "Gemm",
        "Conv",
        "LayerNormalization",
        "Softmax",
        "Concat",
        "Slice",
        "Expand",
    }
)


def _dtype(value: ir.Value, steps: int = 64) -> ir.DataType | None:
    """The value's element type: declared, or read back through ops that keep their input's type
    (the classic exporter declares no intermediate types)."""
    for _ in range(steps):
        if value.dtype is not None:
            return value.dtype
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "Cast":
            return ir.DataType(attribute(producer, "to", 0))
        if producer.op_type == "Constant":
            attr = producer.attributes.get("value")
            return attr.as_tensor().dtype if attr is not None and attr.type == ir.AttributeType.TENSOR else None
        if producer.op_type not in _SAME_TYPE or not producer.inputs or producer.inputs[0] is None:
            return None
        value = producer.inputs[0]
    return None


def _stream_entry(skip: ir.Value) -> ir.Value:
    """`skip`, or the tensor it is an unchanged copy of (``Identity``, ``Cast`` to its own type)."""
    value = skip
    while (producer := value.producer()) is not None and len(producer.inputs) == 1 and producer.inputs[0] is not None:
        source = producer.inputs[0]
        same_type = producer.op_type == "Cast" and (dtype := _dtype(source)) is not None
        if producer.op_type == "Identity" or (same_type and attribute(producer, "to", None) == dtype.value):
            value = source
            continue
        break
    return value


def residuals(model: ir.Model) -> list[Residual]:
    """Every residual Add of the main graph (see the module docstring), in graph order."""
    order = _Order(model.graph)
    found, earlier = [], set()
    for node in model.graph:
        operands = _residual_operands(node, order, earlier)
        if operands is not None:
            found.append((node, *operands))
            earlier.add(id(node))
    skips = {id(skip) for _, skip, _ in found}
    result = []
    for add, skip, branch in found:
        tail = _tail(add, skip, skips)
        output = (tail or add).outputs[0]
        entry = _stream_entry(skip)
        nodes = _between(entry, tail or add, order)
        attention = any(n.op_type == "Softmax" for n in nodes)
        result.append(Residual(add, skip, branch, tail, output, attention, entry))
    return result


def _module_path(scopes: list[str]) -> str:
    """PyTorch scope components → dotted path (``layer1``, ``layer1.0`` → ``layer1.0``)."""
    path = ""
    for scope in scopes:
        path = scope if path and scope.startswith(path + ".") else (f"{path}.{scope}" if path else scope)
    return path


def _common(lists: list[list[str]]) -> list[str]:
    common = list(lists[0]) if lists else []
    for items in lists[1:]:
        n = 0
        while n < min(len(common), len(items)) and common[n] == items[n]:
            n += 1
        common = common[:n]
    return common


def _name(
    nodes: tuple[ir.Node, ...], residual_adds: list[ir.Node], keras: dict[str, str], order: _Order
) -> tuple[str | None, str | None, str | None]:
    """(name, PyTorch scope, grown prefix) of a block by the naming rules of the module docstring."""
    names = [node.name or "" for node in nodes]
    firsts = {name.split("/", 1)[0] for name in names}
    if len(firsts) == 1 and _GROWN.search(next(iter(firsts))) and all("/" in name for name in names):
        prefix = next(iter(firsts))
        return prefix, None, prefix
    marks = [n for n in nodes if n.op_type in LAYER_OPS and _has_layer([n], order)] + residual_adds
    marked = [node.name or "" for node in marks]
    if marked and all(name.startswith("/") for name in marked):
        common = _common([name.split("/")[1:-1] for name in marked])
        if common:
            return _module_path(common), "/" + "/".join(common) + "/", None
    dotted = [
        value.name.split(".")[:-1]
        for node in nodes
        for value in node.inputs
        if value is not None and value.const_value is not None and value.name and _DOTTED.match(value.name)
    ]
    common = _common(dotted)
    if common:
        return ".".join(common), None, None
    layers = sorted({keras[name] for name in names if name in keras})
    if layers:
        prefix = os.path.commonprefix(layers).rstrip("_./-")
        if prefix and all(len(name) == len(prefix) or name[len(prefix)] in "_./-" for name in layers):
            return prefix, None, None
    return None, None, None


def _wrapper(model: ir.Model) -> str | None:
    """``"model."`` when every layer's PyTorch module path starts with that one module (a wrapper
    around the model), which `surgery.naming` leaves out of layer names too."""
    paths = [
        module_path(node.name or "") or parameter_path(node.inputs[1] if len(node.inputs) > 1 else None)
        for node in model.graph
        if node.op_type in LAYER_OPS
    ]
    paths = [path for path in paths if path]
    firsts = {path.split(".", 1)[0] for path in paths}
    return f"{firsts.pop()}." if len(firsts) == 1 and all("." in path for path in paths) else None


def _parameters(nodes: tuple[ir.Node, ...]) -> int:
    """Elements of the distinct float constants `nodes` read (initializers and Constant nodes)."""
    seen: dict[int, int] = {}
    for node in nodes:
        if node.op_type == "Constant":
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                tensor = attr.as_tensor()
                if tensor.dtype.is_floating_point():
                    seen[id(node)] = tensor.size
        for value in node.inputs:
            tensor = None if value is None or value.is_graph_input() else value.const_value
            if tensor is not None and tensor.dtype.is_floating_point():
                seen[id(value)] = tensor.size
    return sum(seen.values())


def block_sites(model: ir.Model) -> list[BlockSite]:
    """Every residual block of the main graph, in stream order (see the module docstring)."""
    order = _Order(model.graph)
    subs = residuals(model)
    groups: list[list[Residual]] = []
    i = 0
    while i < len(subs):
        sub = subs[i]
        follower = subs[i + 1] if i + 1 < len(subs) else None
        if sub.attention and follower is not None and follower.entry is sub.output and not follower.attention:
            groups.append([sub, follower])
            i += 2
        else:
            groups.append([sub])
            i += 1
    keras, wrapper = friendly_names(model), _wrapper(model)
    drafts = []
    for position, group in enumerate(groups):
        entry, exit_ = group[0].entry, group[-1].output
        last = exit_.producer()
        nodes = tuple(_own(_between(entry, last, order), entry, last)) if last is not None else ()
        adds = [node for sub in group for node in (sub.add, sub.tail) if node is not None]
        name, scope, prefix = _name(nodes, adds, keras, order)
        if name is not None and wrapper is not None and name.startswith(wrapper) and name not in keras.values():
            name = name[len(wrapper) :]
        kind = "transformer" if any(sub.attention for sub in group) else "residual"
        drafts.append((name or f"block.{position}", kind, entry, exit_, nodes, group, scope, prefix))
    counts: dict[str, int] = {}
    for draft in drafts:
        counts[draft[0]] = counts.get(draft[0], 0) + 1
    sites = []
    for position, (name, kind, entry, exit_, nodes, group, scope, prefix) in enumerate(drafts):
        if counts[name] > 1:
            name, scope, prefix = f"block.{position}", None, None
        block = Block(name, kind, entry.name or "", exit_.name or "", len(nodes), _parameters(nodes))
        sites.append(BlockSite(block, entry, exit_, nodes, tuple(group), scope, prefix))
    return sites


def find_blocks(model: ModelLike) -> list[Block]:
    """The residual blocks of `model` (an `onnx.ModelProto` or `ir.Model`), in stream order
    (what `surgery inspect` lists).

    Example:
        >>> [b.name for b in find_blocks(onnx.load("tests/fixtures/gpt2_sdpa.onnx"))]
        ['model.transformer.h.0', 'model.transformer.h.1']
    """
    return [site.block for site in block_sites(as_ir(model))]


__all__ = ["Block", "BlockSite", "Residual", "TAIL_ACTIVATIONS", "block_sites", "find_blocks", "residuals"]
