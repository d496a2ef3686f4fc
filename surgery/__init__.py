"""surgery: function-preserving model surgery on ONNX.

The Python API mirrors the CLI. Functions take and return models (`onnx.ModelProto` or
`onnx_ir.Model`, handed back in the kind they were given); file I/O is in `surgery.modelio`.
TensorFlow is imported only by `export_keras` and `to_keras`.
"""

from __future__ import annotations

from surgery.errors import NotEquivalentError, SurgeryError
from surgery.layers import Layer, find_layers
from surgery.modelio import load_model, save_model

__all__ = [
    "Layer",
    "NotEquivalentError",
    "SurgeryError",
    "export_keras",
    "find_layers",
    "load_model",
    "save_model",
]


def __getattr__(name: str):
    # Lazy: these pull TensorFlow (export, to_keras) or are optional to import eagerly.
    if name == "export_keras":
        from surgery.export import export_keras

        return export_keras
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")
