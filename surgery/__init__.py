"""surgery: function-preserving model surgery on ONNX.

The Python API mirrors the CLI. Functions take and return models (`onnx.ModelProto` or
`onnx_ir.Model`, handed back in the kind they were given); file I/O is in `surgery.modelio`,
and `widen_verified` is `surgery widen` as one call (file in, verified file out).
TensorFlow is imported only by `export_keras` and `to_keras`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import wrapt

from surgery.errors import NotEquivalentError, SurgeryError
from surgery.layers import Layer, find_layers
from surgery.modelio import load_model, save_model

try:
    __version__ = version("surgery")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Public name -> module that defines it. Imported on first use: export_keras and to_keras pull
# TensorFlow, verify pulls onnxruntime, and `surgery inspect` must start without either.
_LAZY = {
    "export_keras": "surgery.export",
    "widen": "surgery.rewrite",
    "widen_verified": "surgery.widening",
    "deepen": "surgery.deepening",
    "find_blocks": "surgery.blocks",
    "verify": "surgery.verification",
    "Report": "surgery.verification",
    "to_keras": "surgery.onnx_to_keras",
    "carry_optimizer_state": "surgery.keras_growth",
}

__all__ = ["Layer", "NotEquivalentError", "SurgeryError", "find_layers", "load_model", "save_model", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API, lazily imported names included (so that `dir(surgery)` and completion list them)."""
    return sorted(set(globals()) | set(__all__))


@wrapt.when_imported("keras")
def _register_keras_layers(_keras) -> None:
    """Register to-keras's layers once Keras is imported, so a converted `.keras` file loads in safe
    mode after `import surgery` (without importing TensorFlow for the ONNX-only commands)."""
    import surgery.onnx_to_keras.layers  # noqa: F401
