"""docs/to-keras-models.md carries the supported-ops table generated from the converter's registries."""

from __future__ import annotations

from pathlib import Path

from surgery.onnx_to_keras.catalogue import ops_table
from surgery.onnx_to_keras.foreign import FRIENDLY_LAYERS  # with every rule registered
from surgery.onnx_to_keras.generic import OPS

DOC = Path(__file__).parent.parent / "docs" / "to-keras-models.md"


def test_docs_ops_table_is_the_generated_one():
    text = DOC.read_text()
    start, end = "<!-- ops-table:start -->\n", "<!-- ops-table:end -->"
    table = text[text.index(start) + len(start) : text.index(end)]
    assert table == ops_table(), "regenerate with: python -m surgery.onnx_to_keras.catalogue"


def test_table_lists_every_registered_op_once():
    rows = [line for line in ops_table().splitlines()[2:]]
    ops = [row.split("`")[1] for row in rows]
    assert ops == sorted(set(OPS) | set(FRIENDLY_LAYERS))
