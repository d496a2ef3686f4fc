"""The two sides of a comparison: an ONNX model run by onnxruntime, or a `.keras` file run by Keras."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError
from surgery.external import all_tensors
from surgery.verification.comparison import widened_tensors
from surgery.verification.feeds import ORT_TYPES, InputSpec, index_bounds
from surgery.verification.runtime import EXTERNAL_FOLDER_KEY, create_session, external_folder, runner, session_options

if TYPE_CHECKING:
    import onnxruntime as ort


class OnnxSide:
    """One ONNX model: a path handed to onnxruntime as is, or an in-memory model serialised once."""

    kind = "onnx"

    def __init__(self, source: Any, label: str, provider: str, optimization: str):
        from surgery.modelio import check_file

        self.label = label
        self.provider = provider
        self.optimization = optimization  # the level whose session also answers input/output queries
        self.path: Path | None = None
        self.model_bytes: bytes | None = None
        self.external_folder: str | None = None
        #: Bytes of weights onnxruntime will hold for the model: its file or bytes plus external data.
        self.footprint: int
        if isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            proto = check_file(self.path)  # one clear error for a bad file; no weight is read
            self.footprint = self.path.stat().st_size + _external_bytes(proto)
        elif isinstance(source, onnx.ModelProto):
            proto = source
            self.model_bytes = source.SerializeToString()
            self.footprint = len(self.model_bytes)
        elif isinstance(source, ir.Model):
            self.external_folder = external_folder(source)
            proto = ir.serde.serialize_model(source)
            self.model_bytes = proto.SerializeToString()
            self.footprint = len(self.model_bytes) + sum(
                value.const_value.nbytes
                for value in source.graph.initializers.values()
                if isinstance(value.const_value, ir.ExternalTensor)
            )
        else:
            raise SurgeryError(
                f"{label}: expected an ONNX model, an onnx_ir model or a path, got {type(source).__name__}"
            )
        #: Integer inputs that index a constant table: their values are drawn below its length.
        self.index_bounds = index_bounds(proto.graph)
        #: The widen metadata: grown tensors (outputs too) are compared on their original units.
        self.widened = widened_tensors(proto)
        self._sessions: dict[str, ort.InferenceSession] = {}
        self.dropped: list[str] = []  # an ONNX model drops no output

    def release(self) -> None:
        """Drop this side's sessions (and the weights onnxruntime holds for them)."""
        self._sessions.clear()

    def session(self, optimization: str) -> ort.InferenceSession:
        if optimization not in self._sessions:
            if self.path is not None:
                model: str | bytes = str(self.path)
                options = session_options(optimization)
            else:
                model = self.model_bytes
                options = self._options_for_bytes(optimization)
            self._sessions[optimization] = create_session(model, options, self.provider, self.label)
        return self._sessions[optimization]

    def _options_for_bytes(self, optimization: str) -> ort.SessionOptions:
        options = session_options(optimization)
        if self.external_folder is not None:
            options.add_session_config_entry(EXTERNAL_FOLDER_KEY, self.external_folder)
        return options

    def inputs(self) -> list[InputSpec]:
        specs = []
        for node_arg in self.session(self.optimization).get_inputs():
            if node_arg.type not in ORT_TYPES:
                raise SurgeryError(
                    f"{self.label}: input {node_arg.name!r} has type {node_arg.type}, which verify cannot generate"
                )
            dtype = np.dtype(ORT_TYPES[node_arg.type])
            high = self.index_bounds.get(node_arg.name) if dtype.kind in "iu" else None
            specs.append(InputSpec(node_arg.name, tuple(node_arg.shape), dtype, high))
        return specs

    def output_names(self) -> list[str]:
        return [node_arg.name for node_arg in self.session(self.optimization).get_outputs()]

    def runner(self, optimization: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        return runner(self.session(optimization), self.label)

    def graph_proto(self) -> onnx.ModelProto:
        """The model as a proto for rewriting; weights kept on disk stay there."""
        if self.path is not None:
            from surgery.modelio import load_proto

            return load_proto(self.path)
        return onnx.ModelProto.FromString(self.model_bytes)

    def exposed_runner(
        self, optimization: str
    ) -> tuple[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], onnx.ModelProto]:
        """A runner over a copy of the graph whose every node output is also a graph output.

        A model read from a path is rewritten without its external data: the copy is handed to
        onnxruntime as bytes, and the session config entry EXTERNAL_FOLDER_KEY points it at the
        original file's folder, so nothing is written to disk and no weight is read by us.
        """
        proto = self.graph_proto()
        existing = {output.name for output in proto.graph.output}
        for node in proto.graph.node:
            for name in node.output:
                if name and name not in existing:
                    proto.graph.output.append(onnx.ValueInfoProto(name=name))
                    existing.add(name)
        options = session_options(optimization)
        folder = str(self.path.resolve().parent) if self.path is not None else self.external_folder
        if folder is not None:
            options.add_session_config_entry(EXTERNAL_FOLDER_KEY, folder)
        session = create_session(proto.SerializeToString(), options, self.provider, self.label)
        return runner(session, self.label), proto

    def versions(self) -> dict[str, str]:
        return {}


def _external_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of external data a parsed model declares (the lengths in its external-data entries)."""
    external = 0
    for tensor in all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            external += int(entries.get("length", 0) or 0)
    return external


class KerasSide:
    """A `.keras` file, run with Keras; its inputs and outputs are matched to the other side (`match_keras`)."""

    kind = "keras"

    def __init__(self, path: Path, label: str):
        from surgery.export import load_keras  # quiets TensorFlow's start-up (tensorflow_runtime)

        self.label = label
        self.model = load_keras(str(path))
        self.input_names: list[str] = [f"input_{i}" for i in range(len(self.model.inputs))]
        #: The Keras model's own output names (a functional model's output layers), if it has them.
        self.own_output_names: list[str] = list(getattr(self.model, "output_names", None) or [])
        self.output_name_list: list[str] = [f"output_{i}" for i in range(len(self.model.outputs))]
        if len(self.output_name_list) == 1:
            self.output_name_list = ["output"]
        #: Outputs of the ONNX side that this model does not produce (see `match_keras`).
        self.dropped: list[str] = []

    def inputs(self) -> list[InputSpec]:
        return [
            InputSpec(name, tuple(tensor.shape), np.dtype(str(tensor.dtype)))
            for name, tensor in zip(self.input_names, self.model.inputs)
        ]

    def output_names(self) -> list[str]:
        return self.output_name_list

    def runner(self, optimization: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            arrays = [feeds[name] for name in self.input_names]
            result = self.model(arrays if len(arrays) > 1 else arrays[0], training=False)
            result = result if isinstance(result, (list, tuple)) else [result]
            return {name: np.asarray(value) for name, value in zip(self.output_name_list, result)}

        return run

    def versions(self) -> dict[str, str]:
        import keras
        import tensorflow as tf

        return {"keras": keras.__version__, "tensorflow": tf.__version__}


def open_side(source: Any, label: str, provider: str, optimization: str) -> OnnxSide | KerasSide:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix in (".keras", ".h5"):
            return KerasSide(path, label)
    return OnnxSide(source, label, provider, optimization)


def label_of(source: Any, default: str) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else default


def match_keras(reference: OnnxSide | KerasSide, candidate: OnnxSide | KerasSide) -> None:
    """Give a Keras side the other side's input and output names.

    Inputs are matched by position. Outputs by name when every output of the Keras model names
    an ONNX output (a conversion keeps names): ONNX outputs the Keras model lacks are `dropped`
    (a classifier's label, left out on purpose), reported and not compared. Otherwise by
    position when both have as many outputs.
    """
    for keras_side, other in ((reference, candidate), (candidate, reference)):
        if keras_side.kind != "keras" or other.kind != "onnx":
            continue
        onnx_inputs = [spec.name for spec in other.inputs()]
        if len(onnx_inputs) != len(keras_side.input_names):
            raise SurgeryError(
                f"{keras_side.label} has {len(keras_side.input_names)} inputs but {other.label} has {len(onnx_inputs)}"
            )
        keras_side.input_names = onnx_inputs
        onnx_outputs = other.output_names()
        own = keras_side.own_output_names
        if own and len(own) == len(keras_side.output_name_list) and set(own) <= set(onnx_outputs):
            keras_side.output_name_list = own
            keras_side.dropped = [name for name in onnx_outputs if name not in own]
        elif len(onnx_outputs) == len(keras_side.output_name_list):
            keras_side.output_name_list = onnx_outputs
