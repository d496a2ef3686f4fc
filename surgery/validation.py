"""Structural checks of a parsed ONNX model, each failure one line that names the problem.

`onnx.checker` accepts some models the toolkit cannot work on (an unsupported opset, an op
domain nothing here runs, duplicate node names, a size given for external data that does not
match the tensor) and words other failures in ways a user cannot act on ("Nodes in a graph
must be topologically sorted, however input 'x' of node:" followed by a dump of the node).
`validate` runs first, straight after parsing, so that a bad file is refused with a message that
says which node, tensor or opset is wrong; `onnx.checker` still runs after it.

Rules, case by case (every graph, subgraphs of If/Loop/Scan included):

- **Text**: every string field is valid UTF-8 (protobuf does not check it for ONNX's proto2
  messages, and onnx-ir fails later with an unreadable error).
- **Toolkit metadata**: ``surgery.*`` entries (export's Keras config and layer map, widen's
  history and widened tensors) are valid JSON of the kind their readers expect.

- **Opsets**: the default domain (``""`` or ``"ai.onnx"``) at versions 7-26, ``ai.onnx.ml``
  1-5 and ``com.microsoft`` 1 — what onnxruntime 1.31 loads and guarantees. A node of any other
  domain is refused unless it calls a function the model itself defines. A domain imported twice
  is refused.
- **Names**: every tensor is defined once (graph inputs, initializers, node outputs; an
  initializer may share its name with a graph input, the ONNX way of giving an input a default);
  non-empty node names are unique within their graph, since layers are addressed by node name.
- **Definitions**: every node input (other than the empty "missing optional input") is a graph
  input, an initializer, an output of an earlier node or a value of an enclosing graph; a tensor
  produced by a later node is reported as a topological-order problem; every graph output is
  defined.
- **Tensor data** (initializers, sparse initializers, tensor attributes): a known data type,
  non-negative dims, and exactly as much data as shape × type needs, in ``raw_data``, in the one
  typed field that type uses, or in the ``length`` an external-data entry declares. The data
  files themselves are not opened here (`surgery.modelio` checks their locations).
- **Types and shapes** (last, once the structure is sound): ONNX's strict type and shape
  inference must find every node's inputs consistent, as onnxruntime requires at load.

Example:
    >>> proto = onnx.load("model.onnx", load_external_data=False)
    >>> validate(proto, "model.onnx")          # raises SurgeryError, or returns None
    >>> list(problems(proto))                  # every problem found, as lines, without raising
    []
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping

import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.metadata import JSON_KINDS
from surgery.shapes import infer

#: Opset versions per domain that the toolkit accepts (onnxruntime 1.31's supported range).
SUPPORTED_OPSETS: Mapping[str, range] = {
    "": range(7, 27),
    "ai.onnx.ml": range(1, 6),
    "com.microsoft": range(1, 2),
}
_DISPLAY_DOMAIN = {"": "ai.onnx (default)"}

_T = onnx.TensorProto
#: The typed field each data type keeps its values in, and how many entries one value takes
#: (complex numbers take two; sub-byte types pack several values into one int32 entry).
_FLOAT_FIELD = {_T.FLOAT: 1.0, _T.COMPLEX64: 2.0}
_DOUBLE_FIELD = {_T.DOUBLE: 1.0, _T.COMPLEX128: 2.0}
_INT64_FIELD = {_T.INT64: 1.0}
_UINT64_FIELD = {_T.UINT32: 1.0, _T.UINT64: 1.0}


def _domain(name: str) -> str:
    return "" if name == "ai.onnx" else name


def _label(domain: str) -> str:
    return _DISPLAY_DOMAIN.get(domain, domain)


def _node_label(node: onnx.NodeProto) -> str:
    name = f"{node.name!r}" if node.name else "(unnamed)"
    return f"node {name} ({node.op_type})"


def _spans(supported: range) -> str:
    return f"{supported.start}-{supported.stop - 1}" if len(supported) > 1 else str(supported.start)


def _typed_field(data_type: int) -> tuple[str, float]:
    """(field name, entries per value) of `data_type`'s typed storage."""
    for field, table in (
        ("float_data", _FLOAT_FIELD),
        ("double_data", _DOUBLE_FIELD),
        ("int64_data", _INT64_FIELD),
        ("uint64_data", _UINT64_FIELD),
    ):
        if data_type in table:
            return field, table[data_type]
    if data_type == _T.STRING:
        return "string_data", 1.0
    bits = ir.DataType(data_type).bitwidth
    return "int32_data", (bits / 8 if bits < 8 else 1.0)


def tensor_problem(tensor: onnx.TensorProto, what: str, raw_length: int | None = None) -> str | None:
    """Why `tensor`'s declared data does not fit its shape and type, or None when it does.

    `what` names the tensor in the message, e.g. ``"initializer 'fc1.weight'"``. `raw_length`:
    the length of a raw_data the loader left out of `tensor` (`surgery.inline`).
    """
    if tensor.data_type not in _T.DataType.values() or tensor.data_type == _T.UNDEFINED:
        return f"{what} has unknown data type {tensor.data_type}"
    type_name = _T.DataType.Name(tensor.data_type)
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        return f"{what} has a negative dimension in its shape {dims}"
    if tensor.HasField("segment"):
        return f"{what} is a segment of a larger tensor; segmented tensors are not supported"
    count = math.prod(dims)
    is_string = tensor.data_type == _T.STRING
    needed = None if is_string else math.ceil(count * ir.DataType(tensor.data_type).bitwidth / 8)
    if tensor.data_location == _T.EXTERNAL:
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if "length" in entries and needed is not None:
            if not entries["length"].isdigit():
                return f"{what} declares external data length {entries['length']!r}, not a number"
            if int(entries["length"]) != needed:
                return f"{what} declares {entries['length']} bytes of external data, but its shape {dims} and type {type_name} need {needed}"
        if "offset" in entries and not entries["offset"].isdigit():
            return f"{what} declares external data offset {entries['offset']!r}, not a number"
        return None
    filled = [
        field
        for field in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
        if len(getattr(tensor, field))
    ]
    if raw_length is None:
        raw_length = len(tensor.raw_data)  # one copy of the bytes, of a tensor the loader kept whole
    if raw_length:
        if is_string:
            return f"{what} of type STRING keeps its data in raw_data, which STRING cannot use"
        if filled:
            return f"{what} keeps data in both raw_data and {filled[0]}"
        if raw_length != needed:
            return f"{what} holds {raw_length} bytes, but its shape {dims} and type {type_name} need {needed}"
        return None
    field, per_value = _typed_field(tensor.data_type)
    if len(filled) > 1 or (filled and filled[0] != field):
        return f"{what} of type {type_name} keeps data in {', '.join(filled)}; that type uses {field}"
    expected = math.ceil(count * per_value)
    have = len(getattr(tensor, field))
    if have != expected:
        return f"{what} holds {have} values in {field}, but its shape {dims} and type {type_name} need {expected}"
    return None


def _opset_problems(imports: list[onnx.OperatorSetIdProto], where: str) -> Iterator[str]:
    seen: set[str] = set()
    for opset in imports:
        domain = _domain(opset.domain)
        if domain in seen:
            yield f"{where} imports domain {_label(domain)!r} twice"
        seen.add(domain)
        supported = SUPPORTED_OPSETS.get(domain)
        if supported is not None and opset.version not in supported:
            yield f"{where} uses opset {opset.version} of domain {_label(domain)!r}; supported: {_spans(supported)}"


def _domain_problem(node: onnx.NodeProto, imported: set[str], functions: set[tuple[str, str]]) -> str | None:
    domain = _domain(node.domain)
    if (node.domain, node.op_type) in functions:
        return None
    if domain not in SUPPORTED_OPSETS:
        known = ", ".join(repr(_label(d)) for d in SUPPORTED_OPSETS)
        return f"{_node_label(node)} uses op domain {node.domain!r}, which the toolkit does not support (supported: {known})"
    if domain not in imported:
        return f"{_node_label(node)} uses op domain {_label(domain)!r}, which the model does not import"
    return None


def _graph_problems(
    graph: onnx.GraphProto,
    outer: frozenset[str],
    imported: set[str],
    functions: set[tuple[str, str]],
    where: str,
    left_out: Mapping[str, int],
) -> Iterator[str]:
    """Problems of one graph and its subgraphs; `outer` holds the enclosing graphs' values.

    `where` prefixes each message: empty for the main graph, the path to a subgraph otherwise.
    `left_out`: raw_data lengths of the graph's initializers that were loaded without their data.
    """
    defined: dict[str, str] = {}  # tensor name -> what defines it (for duplicate messages)
    for value in graph.input:
        if value.name in defined:
            yield f"{where}graph input {value.name!r} is declared twice"
        defined[value.name] = "a graph input"
    initializer_names: set[str] = set()
    for tensor in graph.initializer:
        if tensor.name in initializer_names:
            yield f"{where}initializer {tensor.name!r} is defined twice"
        initializer_names.add(tensor.name)
        problem = tensor_problem(tensor, f"initializer {tensor.name!r}", left_out.get(tensor.name))
        if problem:
            yield f"{where}{problem}"
        defined.setdefault(tensor.name, "an initializer")
    for sparse in graph.sparse_initializer:
        name = sparse.values.name
        if name in defined:
            yield f"{where}sparse initializer {name!r} has the name of {defined[name]}"
        defined[name] = "a sparse initializer"
        for part, label in ((sparse.values, "values"), (sparse.indices, "indices")):
            problem = tensor_problem(part, f"sparse initializer {name!r} ({label})")
            if problem:
                yield f"{where}{problem}"

    producer_index = {output: index for index, node in enumerate(graph.node) for output in node.output if output}
    node_names: set[str] = set()
    for index, node in enumerate(graph.node):
        label = _node_label(node)
        if node.name:
            if node.name in node_names:
                yield f"{where}two nodes are named {node.name!r}; layers are addressed by node name"
            node_names.add(node.name)
        problem = _domain_problem(node, imported, functions)
        if problem:
            yield f"{where}{problem}"
        for name in node.input:
            if not name or name in defined or name in outer:
                continue
            later = producer_index.get(name)
            if later is not None and later > index:
                yield f"{where}{label} reads tensor {name!r} before node {graph.node[later].name or later!r} produces it (nodes are not in topological order)"
            else:
                yield f"{where}{label} reads tensor {name!r}, which no graph input, initializer or earlier node defines"
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                problem = tensor_problem(attribute.t, f"attribute {attribute.name!r} of {label}")
                if problem:
                    yield f"{where}{problem}"
            subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for subgraph in subgraphs:  # the values visible here: built only for nodes with subgraphs
                yield from _graph_problems(
                    subgraph,
                    outer | frozenset(defined),
                    imported,
                    functions,
                    f"{where}subgraph {attribute.name!r} of {label}: ",
                    {},
                )
        for name in node.output:
            if not name:
                continue
            if name in defined or name in outer:
                first = defined.get(name, "an enclosing graph")
                yield f"{where}tensor {name!r} is defined twice: by {first} and as an output of {label}"
            defined[name] = f"an output of {label}"
    for value in graph.output:
        if value.name not in defined and value.name not in outer:
            yield f"{where}graph output {value.name!r} is not produced by any node, input or initializer"


def _non_utf8_string(message, where: str) -> str | None:
    """The first string field under `message` that is not valid UTF-8 (protobuf hands it over as bytes)."""
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue  # numbers and raw bytes (tensor data) are not text
        values = value if field.is_repeated else [value]
        if field.type == field.TYPE_STRING:
            for text in values:
                if isinstance(text, bytes):
                    return f"{where}.{field.name} is not valid UTF-8 text ({text[:40]!r})"
        elif field.type == field.TYPE_MESSAGE:
            for index, item in enumerate(values):
                found = _non_utf8_string(
                    item, f"{where}.{field.name}[{index}]" if field.is_repeated else f"{where}.{field.name}"
                )
                if found:
                    return found
    return None


def _metadata_problems(proto: onnx.ModelProto) -> Iterator[str]:
    """`surgery.*` metadata (written by export and widen) must be the JSON kinds their readers expect."""
    for entry in proto.metadata_props:
        expected = JSON_KINDS.get(entry.key)
        if expected is None:
            continue
        try:
            value = json.loads(entry.value)
        except ValueError as error:
            yield f"metadata {entry.key!r} is not valid JSON ({error})"
            continue
        if not isinstance(value, expected):
            yield f"metadata {entry.key!r} holds a JSON {type(value).__name__}, expected a {expected.__name__}"


def problems(proto: onnx.ModelProto, left_out: Mapping[str, int] | None = None) -> Iterator[str]:
    """Every structural problem of `proto`, one line each, in the order the graph is read.

    `left_out`: the raw_data length of each main-graph initializer loaded without its data.
    """
    bad_text = _non_utf8_string(proto, "model")
    if bad_text:
        yield bad_text
        return  # names that are bytes would make every later message unreadable
    yield from _metadata_problems(proto)
    yield from _opset_problems(list(proto.opset_import), "the model")
    imported = {_domain(opset.domain) for opset in proto.opset_import}
    functions = {(function.domain, function.name) for function in proto.functions}
    for function in proto.functions:
        function_imports = imported | {_domain(opset.domain) for opset in function.opset_import}
        for node in function.node:
            problem = _domain_problem(node, function_imports, functions)
            if problem:
                yield f"function {function.name!r}: {problem}"
    yield from _graph_problems(proto.graph, frozenset(), imported, functions, "", left_out or {})


def _inference_problem(proto: onnx.ModelProto) -> str | None:
    """What ONNX's strict type and shape inference finds inconsistent, as onnxruntime would at load.

    A model whose weights disagree with its ops' shapes or types (a Gemm fed 7 features whose
    weight has 12 rows, a MatMul of float by int64) passes `onnx.checker`; left in, it surfaces
    as a Keras or NumPy error deep inside a pass. Only shapes and types are read, never tensor
    data (`surgery.shapes` runs it on the weight-less view); ops without a schema (com.microsoft)
    are skipped by the inference.
    """
    try:
        infer(proto, strict=True)
    except Exception as error:  # InferenceError, and ValidationError for some malformed attributes
        text = " ".join(str(error).split())
        text = re.sub(r"\[(ShapeInferenceError|TypeInferenceError)\]\s*|Inference error\(s\):\s*", "", text)
        first = re.search(r"\(op_type:(\S+), node name: (.*?)\): (.*?)(?= \(op_type:|$)", text)
        if first:  # the first of the errors it lists, in the toolkit's words
            op, node, why = first.groups()
            text = f"node {node!r} ({op}): {why}"
        return f"types or shapes do not agree: {text[:300]}"
    return None


def validate(
    proto: onnx.ModelProto, path: str | os.PathLike | None = None, left_out: Mapping[str, int] | None = None
) -> None:
    """Raise `SurgeryError` naming `path` and the first problem `problems` finds (see `problems`
    for `left_out`).

    Example:
        >>> validate(onnx.load("broken.onnx"), "broken.onnx")
        SurgeryError: broken.onnx: node '/relu/Relu' (Relu) reads tensor 'nope', which no graph input, initializer or earlier node defines
    """
    first = next(problems(proto, left_out), None) or _inference_problem(proto)
    if first is not None:
        raise SurgeryError(f"{os.fspath(path) if path is not None else 'model'}: {first}")
