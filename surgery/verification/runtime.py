"""The one place onnxruntime sessions are made, with the options every check documents.

`session(model, provider=..., optimization=...)` takes a path, an `onnx.ModelProto` or an
`onnx_ir.Model` (whose memory-mapped external data onnxruntime then reads from the model's own
folder, whatever the current directory). `verify`, export's self-check and to-keras's
faithfulness check all run models through it, so they run under the same options:

- graph optimizations as asked (`optimization`, default "disable": onnxruntime's optimizers
  pick kernels by tensor shape, see docs/verify.md);
- deterministic kernels where a provider has a choice;
- no spinning threads between runs (two sessions run in turn);
- onnxruntime's own log silenced (a failure is one line raised as SurgeryError).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from surgery.errors import SurgeryError, first_line

if TYPE_CHECKING:
    import onnxruntime as ort

#: `optimization` argument → onnxruntime's GraphOptimizationLevel member.
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
#: `provider` argument → onnxruntime execution provider.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: Tells onnxruntime where external data lives for a model handed over as bytes.
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
SPINNING_KEY = "session.intra_op.allow_spinning"


def check_choice(value: str, choices: Any, param: str) -> str:
    """`value` if it is one of `choices`, else a SurgeryError naming `param`."""
    if value not in choices:
        raise SurgeryError(f"{{param}} must be one of {', '.join(choices)}, got {value!r}", param=param)
    return value


def session_options(optimization: str = "disable") -> ort.SessionOptions:
    """The onnxruntime session options `verify` gives both models (and the benchmark's bare runs)."""
    import onnxruntime as ort

    check_choice(optimization, OPTIMIZATION_LEVELS, "optimization")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    # Deterministic kernels where a provider has a choice (CUDA reductions); a no-op on CPU.
    options.use_deterministic_compute = True
    # Two sessions run in turn: threads that spin after a run would steal the cores the other
    # session needs (3x slower on 2 cores). Changes scheduling only, never the arithmetic.
    options.add_session_config_entry(SPINNING_KEY, "0")
    # Fatal only: a failed run is raised and reported as one line; onnxruntime's own error and
    # warning log lines would add lines to stderr around it.
    options.log_severity_level = 4
    return options


def describe_session_options(optimization: str, provider: str) -> dict[str, Any]:
    """The session options both models ran with, as named in the report."""
    options = session_options(optimization)
    return {
        "graph_optimization_level": OPTIMIZATION_LEVELS[optimization],
        "execution_mode": str(options.execution_mode).split(".")[-1],
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "use_deterministic_compute": options.use_deterministic_compute,
        "config": {SPINNING_KEY: options.get_session_config_entry(SPINNING_KEY)},
        "providers": [PROVIDERS[provider]] if provider == "cpu" else [PROVIDERS[provider], PROVIDERS["cpu"]],
    }


def runner(session: ort.InferenceSession, label: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Feeds → every output of `session` by name; a failed run is a one-line SurgeryError."""
    names = [node_arg.name for node_arg in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = session.run(names, feeds)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types
            raise SurgeryError(f"{label}: onnxruntime failed to run the model: {first_line(error)}") from None
        return dict(zip(names, values))

    return run


def external_folder(model: ir.Model) -> str | None:
    """The folder an in-memory model's external (memory-mapped) tensors are read from."""
    folders = {
        str(Path(value.const_value.base_dir).resolve())
        for value in model.graph.initializers.values()
        if isinstance(value.const_value, ir.ExternalTensor)
    }
    if len(folders) > 1:
        raise SurgeryError(
            f"model keeps external data in several folders ({', '.join(sorted(folders))}); save it first"
        )
    return folders.pop() if folders else None


def create_session(model: str | bytes, options: ort.SessionOptions, provider: str, label: str) -> ort.InferenceSession:
    """A session on `provider` exactly (never a silent CPU fallback); failures are one-line SurgeryErrors."""
    import onnxruntime as ort

    check_choice(provider, PROVIDERS, "provider")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise SurgeryError(
            f"{wanted} is not available in this onnxruntime build (install onnxruntime-gpu)", param="provider"
        )
    providers = [wanted] if provider == "cpu" else [wanted, PROVIDERS["cpu"]]
    if provider != "cpu":
        # Starting a GPU provider without its libraries makes onnxruntime's default logger print
        # multi-line errors before it falls back; the failure is reported below as one line.
        ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as error:
        raise SurgeryError(f"{label}: onnxruntime cannot load the model: {first_line(error)}") from None
    finally:
        if provider != "cpu":
            ort.set_default_logger_severity(2)  # onnxruntime's default: warnings
    if wanted not in session.get_providers():
        # onnxruntime-gpu without a usable CUDA silently runs on the CPU: never report those
        # results as CUDA results.
        raise SurgeryError(
            f"{wanted} could not be started (no usable GPU, CUDA or cuDNN); onnxruntime fell back to "
            f"{', '.join(session.get_providers())}. Use {{param}} cpu or fix the CUDA installation",
            param="provider",
        )
    return session


def session(
    model: str | os.PathLike[str] | onnx.ModelProto | ir.Model,
    *,
    provider: str = "cpu",
    optimization: str = "disable",
    label: str | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session for `model` under `session_options(optimization)` on `provider`.

    A path is handed to onnxruntime as is (external data read from the file's folder); an
    `onnx_ir.Model` whose weights are memory-mapped external data is serialised without them and
    onnxruntime reads them from their own folder (EXTERNAL_FOLDER_KEY), so the current directory
    never matters. Failures are one-line SurgeryErrors naming `label` (default: the path or "model").
    """
    check_choice(provider, PROVIDERS, "provider")
    options = session_options(optimization)
    if isinstance(model, (str, os.PathLike)):
        return create_session(str(model), options, provider, label or str(model))
    if isinstance(model, ir.Model):
        folder = external_folder(model)
        if folder is not None:
            options.add_session_config_entry(EXTERNAL_FOLDER_KEY, folder)
        model = ir.serde.serialize_model(model)
    if not isinstance(model, onnx.ModelProto):
        raise SurgeryError(
            f"expected an ONNX model, an onnx_ir model or a path, got {type(model).__name__}", param="model"
        )
    return create_session(model.SerializeToString(), options, provider, label or "model")
