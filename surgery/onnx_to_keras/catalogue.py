"""The supported-ops table of docs/to-keras-models.md, generated from the converter's registries.

``python -m surgery.onnx_to_keras.catalogue`` prints it; a test keeps the docs' copy current.
"""

from __future__ import annotations

from surgery.onnx_to_keras.foreign import FRIENDLY_LAYERS  # with every rule registered
from surgery.onnx_to_keras.generic import OPS


def ops_table() -> str:
    """A Markdown table: every ONNX op to-keras converts, its friendly layer, and its generic path."""
    rows = ["| ONNX op | friendly Keras layer (when the pattern applies) | generic path (`OnnxOp`) |", "|---|---|---|"]
    for op in sorted(set(OPS) | set(FRIENDLY_LAYERS)):
        rows.append(f"| `{op}` | {FRIENDLY_LAYERS.get(op, '–')} | {'yes' if op in OPS else '–'} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(ops_table(), end="")
