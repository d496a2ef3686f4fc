"""`locate`: the first node of the candidate whose output differs from the reference's.

Both models run once more with every intermediate tensor exposed; tensors are matched by name
and aligned through the widen metadata (`surgery.widened_tensors`), so a widened tensor is
compared on its original units.
"""

from __future__ import annotations

import numpy as np
import onnx

from surgery.verification.comparison import Tolerance, original_units, update, widened_tensors
from surgery.verification.report import Located, OutputComparison
from surgery.verification.sides import OnnxSide


def _shape_computations(proto: onnx.ModelProto, widened: dict) -> tuple[set[str], set[str]]:
    """Tensors the widening may change on purpose, as (from widened shapes, shapes or constants):

    - `Shape`/`Size` of a widened tensor, and every node whose inputs are all such tensors or
      constants (tf2onnx's dynamic Flatten chain): never compared.
    - tensors computed only from `Shape`/`Size` outputs and constants (a `Constant` node too):
      not compared when integer, since they are shape computations (a Reshape's target, which a
      widening edits, e.g. GPT-2's head split 192 → 240); float ones are compared.

    Their consumers are compared instead.
    """
    constants = {t.name for t in proto.graph.initializer}
    derived: set[str] = set()
    static: set[str] = set()
    for node in proto.graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant":
            constants.update(node.output)
            static.update(node.output)
        elif node.op_type in ("Shape", "Size"):
            static.update(node.output)
            if inputs and inputs[0] in widened:
                derived.update(node.output)
        elif inputs and all(i in static or i in constants for i in inputs):
            static.update(node.output)
            if any(i in derived for i in inputs):
                derived.update(node.output)
    return derived, static


def first_difference(
    reference: OnnxSide,
    candidate: OnnxSide,
    feeds: dict[str, np.ndarray],
    optimization: str,
    tolerance: Tolerance | None,
) -> Located:
    """Run both with every intermediate tensor exposed; the first candidate node that differs.

    Tensors are matched by name and visited in the candidate's topological (node) order.
    """
    run_reference, _ = reference.exposed_runner(optimization)
    run_candidate, candidate_proto = candidate.exposed_runner(optimization)
    reference_values = run_reference(feeds)
    candidate_values = run_candidate(feeds)
    widened = widened_tensors(candidate_proto)
    shape_of_widened, static = _shape_computations(candidate_proto, widened)
    compared = skipped = unmatched = 0
    for node in candidate_proto.graph.node:
        for name in node.output:
            if not name:
                continue
            integer = name in candidate_values and np.asarray(candidate_values[name]).dtype.kind in "iub"
            if name in shape_of_widened or (name in static and integer):
                skipped += 1  # the widening changed this shape on purpose
                continue
            if name not in reference_values:
                unmatched += 1
                continue
            aligned = original_units(reference_values[name], candidate_values[name], widened.get(name))
            if aligned is None:
                skipped += 1
                continue
            compared += 1
            stats = OutputComparison(name)
            if update(stats, reference_values[name], aligned, tolerance):
                return Located(node.name or None, node.op_type, name, stats, compared, skipped, unmatched)
    return Located(None, None, None, None, compared, skipped, unmatched)
