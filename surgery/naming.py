"""Friendly names for layers of foreign exports, and glob patterns over names.

A layer is known by its node name and by a *friendly name*. Rules, first match wins:

1. `surgery export` models: the Keras layer name from the ``surgery.layer_map`` metadata
   (`surgery.layers.friendly_names`).
2. PyTorch's classic exporter names nodes after the module path, ``/<module>/<sub>.<i>/<Op>``
   (``/transformer/h.0/mlp/c_fc/Gemm``): the path without the op segment, joined with dots
   (``transformer.h.0.mlp.c_fc``), the name the module has in PyTorch's ``state_dict``.
3. Generic node names (the dynamo exporter's ``node_addmm_2``, ``node_linear_3``): the name of
   the weight initializer the node reads, when it is a ``state_dict`` key
   (``transformer.h.0.mlp.c_fc.weight`` → ``transformer.h.0.mlp.c_fc``). The classic exporter's
   transposed copies (``onnx::MatMul_123``) are not such keys, hence rule 2 first.
4. tf2onnx's own node names (``Gemm__915``, which change on every conversion): ``<layer>.<sublayer>``
   from the Keras path of the node its output reaches through reshapes
   (``keras_transformer_1/block0_mha_1/query_1/Add`` → ``block0_mha.query``).
5. Otherwise the node name.

When every path starts with the same module (a wrapper around the model, e.g. ``model.``), that
first segment is dropped. A friendly name that two layers would share (a module that holds two layers) is not used: both
keep their node names, so every name still picks one layer.

Patterns: a requested name containing ``*``, ``?`` or ``[`` is a glob (`fnmatch`, case
sensitive) matched against every candidate's names; it stands for every match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from difflib import get_close_matches
from fnmatch import fnmatchcase
from typing import TypeVar

import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.ops import LAYER_OPS

#: Weight suffixes of PyTorch's state_dict keys, longest first.
_PARAMETER_SUFFIXES = (".weight", ".weight_orig")

_GLOB_CHARACTERS = frozenset("*?[")

#: Ops that only move a layer's output around, between tf2onnx's einsum Gemm and its Keras-named node.
_LAYOUT_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity"})

T = TypeVar("T")


def module_path(node_name: str) -> str | None:
    """``/a/b.0/c/Gemm`` → ``a.b.0.c``; None unless the name has that form (a leading ``/``, at
    least one module segment before the op segment)."""
    if not node_name.startswith("/"):
        return None
    segments = node_name.split("/")[1:-1]
    if not segments or any(not s for s in segments):
        return None
    return ".".join(segments)


def parameter_path(value: ir.Value | None) -> str | None:
    """The module path of a weight named like a PyTorch ``state_dict`` key, else None."""
    name = (value.name or "") if value is not None else ""
    if "::" in name or "/" in name:
        return None
    for suffix in _PARAMETER_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _derived_name(node: ir.Node) -> str | None:
    path = module_path(node.name or "")
    if path is not None:
        return path
    for value in node.inputs[1:2]:  # the weight operand of Gemm, MatMul and Conv
        path = parameter_path(value)
        if path is not None:
            return path
    return None


def module_names(model: ir.Model) -> dict[str, str]:
    """Node name → friendly name from PyTorch's module paths and tf2onnx's Keras paths (rules 2
    to 4), for every node that may be a layer; names two nodes would share are left out."""
    derived = {
        node.name: name
        for node in model.graph
        if node.op_type in LAYER_OPS and node.name and (name := _derived_name(node)) is not None
    }
    firsts = {name.split(".", 1)[0] for name in derived.values()}
    if len(firsts) == 1 and all("." in name for name in derived.values()):  # a wrapper module around the model
        derived = {node: name.split(".", 1)[1] for node, name in derived.items()}
    derived |= {
        node.name: name
        for node in model.graph
        if node.op_type in LAYER_OPS
        and node.name
        and node.name not in derived
        and "/" not in node.name
        and (name := _keras_sublayer(node)) is not None
    }
    counts = Counter(derived.values())
    return {node: name for node, name in derived.items() if counts[name] == 1}


def _keras_sublayer(node: ir.Node) -> str | None:
    """Rule 4: ``<layer>.<sublayer>`` for a node tf2onnx made and named (``Gemm__915``), from the
    first node of a Keras path (``<model>_1/<layer>_1/<sublayer>_1/<Op>``) its output reaches
    through reshapes: MultiHeadAttention's query, key, value and attention_output projections."""
    value = node.outputs[0]
    for _ in range(6):
        users = [use.node for use in value.uses()]
        if len(users) != 1:
            return None
        segments = (users[0].name or "").split("/")
        if len(segments) >= 4 and all(segments):
            return ".".join(segment.removesuffix("_1") for segment in segments[1:3])
        if users[0].op_type not in _LAYOUT_OPS:
            return None
        value = users[0].outputs[0]
    return None


def is_pattern(name: str) -> bool:
    """Whether `name` is a glob pattern rather than a plain name."""
    return any(c in _GLOB_CHARACTERS for c in name)


def layer_candidates(layers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(node name, friendly name) pairs → the candidates `expand` takes: the friendly name first
    where no other layer shares it, else the node name (which is unique)."""
    pairs = list(layers)
    counts = Counter(friendly for _, friendly in pairs)
    return [(friendly, node) if counts[friendly] == 1 else (node, friendly) for node, friendly in pairs]


def expand(requests: Mapping[str, T], candidates: Sequence[tuple[str, ...]], what: str) -> dict[str, T]:
    """Replace each glob in `requests` (name or pattern → value) by the candidates it matches.

    Args:
        requests: requested names or patterns and their values, in order.
        candidates: every candidate's names, the one to request it by first (e.g. friendly, node).
        what: what a candidate is, for messages ("layer", "attention block").

    Returns:
        Name → value: a pattern is replaced by the first names of its matches (in candidate
        order); a plain name is kept as given (resolving it reports an unknown name).

    Raises:
        SurgeryError: a pattern that matches nothing (naming close names), or a candidate that
            two requests name.
    """
    result: dict[str, T] = {}
    claimed: dict[str, str] = {}  # a candidate's first name -> the request that names it
    for request, value in requests.items():
        if not isinstance(request, str) or not is_pattern(request):
            matches = [(c[0], request) for c in candidates if request in c] or [(request, request)]
        else:
            matches = [(c[0], c[0]) for c in candidates if any(fnmatchcase(n, request) for n in c)]
            if not matches:
                raise SurgeryError(f"no {what} matches {request!r}{_suggestion(request, candidates, what)}")
        for key, name in matches:
            if key in claimed:
                raise SurgeryError(f"{what} {key!r} is requested twice (by {claimed[key]!r} and {request!r})")
            claimed[key] = request
            result[name] = value
    return result


def _suggestion(request: str, candidates: Iterable[tuple[str, ...]], what: str) -> str:
    known = sorted({c[0] for c in candidates})
    if not known:
        return f"; the model has no {what}"
    stem = request.split("*")[0].split("?")[0].split("[")[0]
    close = get_close_matches(request, known, n=3, cutoff=0.4) or [k for k in known if k.startswith(stem)][:3]
    shown = close or known[:5]
    return f"; close names: {', '.join(shown)}"


__all__ = ["module_path", "parameter_path", "module_names", "is_pattern", "layer_candidates", "expand"]
