"""What a graph without Keras provenance needs before any Keras layer exists (analyse first).

`analyse(model)` returns a `GraphPlan`:

- **Outputs.** An integer output computed through ``ArgMax`` (skl2onnx's ``label``) is dropped
  (`dropped_outputs`); every other output is kept, under its ONNX name.
- **Needed nodes**, walking back from the kept outputs. An op that neither a friendly layer nor
  the generic catalogue (`surgery.onnx_to_keras.generic.OPS`) knows, or a node of another domain,
  is a `SurgeryError` naming the node and the op.
- **Parameters.** A constant (initializer or ``Constant`` output) is a parameter — a trainable
  Keras weight — when it is floating point, has more than one element or sits at a weight
  input (`WEIGHT_INPUTS`: a Conv's or Gemm's weight and bias, a PRelu slope, a norm's scale and
  bias), and is read somewhere a gradient flows through (not only as a shape, index, axis or
  condition: `generic.NO_GRADIENT_INPUTS`) other than a
  BatchNormalization's running statistics (kept non-trainable, as Keras does). Integer and
  boolean constants never are.
- **Folding.** A node whose inputs are all constants and none a parameter is computed now, with
  ONNX's reference evaluator, and its outputs become constants (``Constant`` nodes, constant
  shape arithmetic).
- **Static shapes** from ONNX shape inference with data propagation: the dimensions known
  whatever the batch and sequence length (hints for layers built after a run-time reshape).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.graph import constant_array
from surgery.onnx_to_keras.generic import NO_GRADIENT_INPUTS, OPS

#: (op, input position) of weights: parameters even when they hold a single value.
WEIGHT_INPUTS = frozenset(
    {
        ("Conv", 1),
        ("Conv", 2),
        ("Gemm", 1),
        ("Gemm", 2),
        ("PRelu", 1),
        ("LayerNormalization", 1),
        ("LayerNormalization", 2),
        ("BatchNormalization", 1),
        ("BatchNormalization", 2),
    }
)
#: (op, input position) of running statistics: constants, never trained.
STATISTIC_INPUTS = frozenset({("BatchNormalization", 3), ("BatchNormalization", 4)})
#: Ops whose outputs are not a function of their inputs: never folded.
_RANDOM = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


@dataclass
class GraphPlan:
    """The analysis of one graph (see the module docstring)."""

    kept: list[ir.Value]
    dropped: list[ir.Value]
    nodes: list[ir.Node]
    constants: dict[int, np.ndarray] = field(default_factory=dict)
    parameters: set[int] = field(default_factory=set)
    shapes: dict[str, list[int | None]] = field(default_factory=dict)
    node_ids: set[int] = field(default_factory=set)
    dtypes: dict[str, str] = field(default_factory=dict)

    def constant(self, value: ir.Value | None) -> np.ndarray | None:
        return None if value is None else self.constants.get(id(value))

    def is_parameter(self, value: ir.Value | None) -> bool:
        return value is not None and id(value) in self.parameters


def where(node: ir.Node) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"


def is_label_output(value: ir.Value) -> bool:
    """An integer output computed through ArgMax: skl2onnx's class-label path."""
    if value.dtype is None or not value.dtype.is_integer():
        return False
    stack, seen = [value], set()
    while stack:
        node = stack.pop().producer()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "ArgMax":
            return True
        stack.extend(v for v in node.inputs if v is not None)
    return False


def dropped_outputs(model: ir.Model) -> list[str]:
    """Names of the ONNX outputs `to_keras` leaves out (class labels through ArgMax)."""
    return [v.name for v in model.graph.outputs if is_label_output(v)]


def _is_parameter(value: ir.Value, array: np.ndarray) -> bool:
    producer = value.producer()
    if array.dtype.kind != "f" or (producer is not None and producer.op_type != "Constant"):
        return False
    uses = [(use.node.op_type, use.idx) for use in value.uses()]
    data_uses = [u for u in uses if u[1] not in NO_GRADIENT_INPUTS.get(u[0], ()) and u not in STATISTIC_INPUTS]
    return bool(data_uses) and (array.size > 1 or any(u in WEIGHT_INPUTS for u in data_uses))


def _fold(node: ir.Node, arrays: list[np.ndarray | None], opsets: dict[str, int]) -> list[np.ndarray]:
    """The node's outputs on constant inputs, by ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    proto = ir.serde.serialize_node(node)
    names = [name for name in proto.input if name]
    graph = onnx.helper.make_graph(
        [proto],
        "fold",
        [
            onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, (a for a in arrays if a is not None))
        ],
        [onnx.helper.make_empty_tensor_value_info(name) for name in proto.output if name],
    )
    opset_imports = [onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    model = onnx.helper.make_model(graph, opset_imports=opset_imports)
    feeds = dict(zip(names, (a for a in arrays if a is not None)))
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


def static_types(model: ir.Model) -> tuple[dict[str, list[int | None]], dict[str, str]]:
    """value name → dimensions ONNX shape inference fixes (None where symbolic or unknown), and
    value name → element type (a NumPy dtype name)."""
    shapes: dict[str, list[int | None]] = {}
    dtypes: dict[str, str] = {}
    try:
        proto = ir.serde.serialize_model(model)
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # shape inference is only a hint; ops it does not know leave shapes open
        inferred = None
    infos = list(inferred.graph.value_info) + list(inferred.graph.output) if inferred is not None else []
    for info in infos:
        tensor_type = info.type.tensor_type if info.type.HasField("tensor_type") else None
        if tensor_type is None:
            continue
        if tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if tensor_type.elem_type:
            dtypes[info.name] = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    for node in model.graph:
        for value in node.outputs:
            if value.name not in shapes and value.shape is not None:
                shapes[value.name] = [d if isinstance(d, int) else None for d in value.shape]
            if value.name not in dtypes and value.dtype is not None:
                dtypes[value.name] = value.dtype.numpy().name
    return shapes, dtypes


def analyse(model: ir.Model, supported: frozenset[str]) -> GraphPlan:
    """The plan for `model` (module docstring); `supported` adds the friendly layers' ops to `OPS`."""
    kept = [v for v in model.graph.outputs if not is_label_output(v)]
    dropped = [v for v in model.graph.outputs if is_label_output(v)]
    if not kept:
        raise SurgeryError("the graph has no output to rebuild in Keras")
    plan = GraphPlan(kept, dropped, [])
    for value in model.graph.initializers.values():
        if value.const_value is not None and not value.is_graph_input():
            plan.constants[id(value)] = value.const_value.numpy()
    opsets = {d or "": v for d, v in model.opset_imports.items()}
    needed = _needed(model, kept, plan)
    for node in model.graph:
        if id(node) not in needed:
            continue
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            plan.constants[id(node.outputs[0])] = constant_array(node.outputs[0])
            continue
        known = node.domain in ("", "ai.onnx") and (node.op_type in OPS or node.op_type in supported)
        if not known:
            domain = f" (domain {node.domain})" if node.domain not in ("", "ai.onnx") else ""
            raise SurgeryError(f"unsupported op {node.op_type}{domain} at {where(node)}: to-keras has no rule for it")
        arrays = [plan.constant(v) for v in node.inputs]
        foldable = node.op_type not in _RANDOM and all(
            v is None or (a is not None and not _is_parameter(v, a)) for v, a in zip(node.inputs, arrays)
        )
        if foldable and any(a is not None for a in arrays):
            for value, array in zip(node.outputs, _fold(node, arrays, opsets)):
                plan.constants[id(value)] = array
            continue
        plan.nodes.append(node)
    for node in plan.nodes:
        for value in node.inputs:
            array = plan.constant(value)
            if array is not None and _is_parameter(value, array):
                plan.parameters.add(id(value))
    plan.node_ids = {id(node) for node in plan.nodes}
    plan.shapes, plan.dtypes = static_types(model)
    return plan


def _needed(model: ir.Model, kept: list[ir.Value], plan: GraphPlan) -> set[int]:
    """Ids of the nodes the kept outputs depend on."""
    needed: set[int] = set()
    stack = list(kept)
    while stack:
        node = stack.pop().producer()
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(v for v in node.inputs if v is not None and id(v) not in plan.constants)
    return needed
