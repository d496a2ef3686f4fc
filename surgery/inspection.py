"""What `surgery inspect` reports: the layers, whether each can grow, and the attention blocks.

- Layers (`surgery.layers.find_layers`), each with ``widenable`` and ``blocked_by``: the width
  analysis (`surgery.analysis.analyse`) is run for one new unit of that layer alone; its refusal
  is the one-line reason, else null. One analysis per layer: each walks only the layer's
  forward region, so the cost grows with the number of layers times the region's size
  (a fraction of a second for the test fixtures).
- Attention blocks (`surgery.attention.find_blocks`): name, heads, key/value heads, head
  dimension and the friendly names of the Q, K, V and output projections; the name is what
  `widen --heads NAME=K` takes.
- Residual blocks (`surgery.blocks.find_blocks`): name, kind, input and output tensors, node and
  parameter counts; the name is what `surgery deepen --after NAME` takes.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from surgery.analysis import analyse, infer_missing_shapes
from surgery.attention import find_blocks as find_attention_blocks
from surgery.blocks import find_blocks as find_residual_blocks
from surgery.errors import SurgeryError
from surgery.layers import LayerSite, layer_sites


def blocked_by(
    model: ir.Model,
    node: str,
    sites: list[LayerSite] | None = None,
    name: Callable[[str | None], str | None] | None = None,
) -> str | None:
    """Why one new unit of layer `node` cannot be added (the analysis's one line), or None.

    `sites`: the model's `layer_sites`, found once by a caller that asks about every layer.
    `name`: how the line writes a parameter it names (the CLI passes its flags); default its own name."""
    try:
        analyse(model, {node: 1}, sites=sites)
    except SurgeryError as error:
        return error.render(name(error.param)) if name is not None else str(error)
    return None


def inspect_document(model: ir.Model, name: Callable[[str | None], str | None] | None = None) -> dict:
    """The ``layers``, ``attention`` and ``blocks`` entries of ``surgery inspect --json`` (the model is only read,
    apart from value shapes that shape inference fills in); `name` as `blocked_by`'s."""
    # Residual blocks are found on the shapes the file declares, as `deepen` finds them.
    blocks = [block.to_json() for block in find_residual_blocks(model)]
    infer_missing_shapes(model)
    layers = []
    sites = layer_sites(model)
    for layer in (site.layer for site in sites):
        reason = blocked_by(model, layer.node, sites, name)
        layers.append({**layer.to_json(), "widenable": reason is None, "blocked_by": reason})
    return {
        "layers": layers,
        "attention": [block.to_json() for block in find_attention_blocks(model)],
        "blocks": blocks,
    }


__all__ = ["blocked_by", "inspect_document"]
