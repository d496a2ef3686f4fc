"""Friendly layers for the transformer patterns exporters write (rules as in `friendly`).

- ``LayerNormalization`` over the last axis → ``LayerNormalization``.
- ``Gather`` of integer indices from a rank-2 parameter on axis 0 → ``Embedding`` (token and
  position tables).
- PyTorch's exact GELU, ``x / √2 → Erf → + 1 → · x → · ½``, → ``Activation("gelu")``.
- A decomposed RMSNorm (Llama's ``Pow → ReduceMean → Add ε → Sqrt → 1/· → Mul x → Mul scale``)
  → ``RMSNormalization``.

Each chain node must be the only reader of the one before, and still to be built; anything else
declines to the generic path.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from surgery.graph import attribute
from surgery.onnx_to_keras.friendly import Decline, FriendlyLayers, Tensor, identity, rule


class TransformerPatterns(FriendlyLayers):
    """The rules above, as methods of the graph builder."""

    @rule("LayerNormalization", layer="LayerNormalization (last axis)")
    def _layer_norm(self, node: ir.Node) -> None:
        source = self._computed(node)
        axis = attribute(node, "axis", -1)
        if axis not in (-1, source.rank - 1) or len([v for v in node.outputs if v is not None and v.uses()]) > 1:
            raise Decline
        scale = self._own_parameter(node, 1)
        offset = self._own_parameter(node, 2) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        source = self._in_layout(source, identity(source.rank), node)
        if (
            scale.ndim != 1
            or source.keras.shape[-1] != scale.size
            or (offset is not None and offset.shape != scale.shape)
        ):
            raise Decline
        layer = self.keras.layers.LayerNormalization(
            axis=-1, epsilon=float(attribute(node, "epsilon", 1e-5)), center=offset is not None, name=self._name(node)
        )
        weights = [scale] + ([offset] if offset is not None else [])
        self._set(node, Tensor(self._layer(node, layer, source.keras, weights=weights), source.perm))

    @rule("Gather", layer="Embedding (integer indices into a rank-2 parameter, axis 0)")
    def _embedding(self, node: ir.Node) -> None:
        indices = self._computed(node, 1)
        table = self._own_parameter(node, 0)
        integer = node.inputs[1].dtype is not None and node.inputs[1].dtype.is_integer()
        if attribute(node, "axis", 0) != 0 or table.ndim != 2 or not integer:
            raise Decline
        indices = self._in_layout(indices, identity(indices.rank), node)
        layer = self.keras.layers.Embedding(table.shape[0], table.shape[1], name=self._name(node))
        out = self._layer(node, layer, indices.keras, weights=[table])
        self._set(node, Tensor(out, identity(indices.rank + 1)))

    # -- layers without weights ----------------------------------------------------------
    @rule("Div", layer="Activation('gelu') for PyTorch's exact GELU, x / √2 → Erf → + 1 → · x → · ½")
    def _erf_gelu(self, node: ir.Node) -> None:
        """Erf-GELU: Div(x, √2) → Erf → Add 1 → Mul x → Mul ½ (the last two in either order), each
        node the only reader of the one before."""
        source = self._computed(node)
        x = node.inputs[0]
        chain, value = [], node.outputs[0]
        for op, constant in (("Erf", None), ("Add", 1.0), ("Mul", "x"), ("Mul", 0.5)):
            reader = self._single_reader(value)
            if reader is None or reader.op_type != op or id(reader) not in self.plan.node_ids:
                raise Decline
            if constant is not None:
                other = [v for v in reader.inputs if v is not value]
                if len(other) != 1:
                    raise Decline
                if constant == "x":
                    if other[0] is not x:
                        raise Decline
                elif not self._scalar_is(other[0], constant):
                    raise Decline
            chain.append(reader)
            value = reader.outputs[0]
        if not self._scalar_is(node.inputs[1], float(np.sqrt(2.0)), rtol=1e-6):
            raise Decline
        for part in chain:
            self._absorb(part)
        out = self._layer(node, self.keras.layers.Activation("gelu", name=self._name(node)), source.keras)
        self._set(node, Tensor(out, source.perm), value)

    @rule("Pow", layer="RMSNormalization for a decomposed RMSNorm, x · 1/√(mean(x², last axis) + ε) · scale")
    def _rms_norm(self, node: ir.Node) -> None:
        """Decomposed RMSNorm (Llama): Pow(x, 2) → ReduceMean(last axis, keepdims) → Add ε → Sqrt →
        Div(1, ·) or Reciprocal → Mul x → [float Cast] → Mul by a parameter scale of the last axis's
        size, each node the only reader of the one before."""
        source = self._computed(node)
        x = node.inputs[0]
        if not self._scalar_is(node.inputs[1], 2.0) or source.rank < 2:
            raise Decline
        mean = self._next(node.outputs[0], "ReduceMean")
        axes = attribute(mean, "axes", None)
        if axes is None and len(mean.inputs) > 1:
            axes = [int(a) for a in np.asarray(self._fixed(mean, 1)).reshape(-1)]
        if list(axes or []) not in ([-1], [source.rank - 1]) or not attribute(mean, "keepdims", 1):
            raise Decline
        add = self._next(mean.outputs[0], "Add")
        epsilon = self.plan.constant(next(v for v in add.inputs if v is not mean.outputs[0]))
        if epsilon is None or epsilon.size != 1:
            raise Decline
        root = self._next(add.outputs[0], "Sqrt")
        inverse = self._next(root.outputs[0], ("Div", "Reciprocal"))
        one_over = inverse.op_type == "Reciprocal" or (
            inverse.inputs[1] is root.outputs[0] and self._scalar_is(inverse.inputs[0], 1.0)
        )
        if not one_over:
            raise Decline
        normed = self._next(inverse.outputs[0], "Mul")
        if x not in normed.inputs:
            raise Decline
        chain, value = [mean, add, root, inverse, normed], normed.outputs[0]
        reader = self._next(value, ("Cast", "Mul"))
        if reader.op_type == "Cast":
            if not ir.DataType(attribute(reader, "to", 1)).is_floating_point():
                raise Decline
            chain.append(reader)
            reader = self._next(reader.outputs[0], "Mul")
        scale_index = 0 if reader.inputs[1] is chain[-1].outputs[0] else 1
        scale = self._own_parameter(reader, scale_index)
        source = self._in_layout(source, identity(source.rank), node)
        if scale.ndim != 1 or source.keras.shape[-1] != scale.size:
            raise Decline
        for part in (*chain, reader):
            self._absorb(part)
        epsilon = float(epsilon.reshape(-1)[0])
        layer = self.keras.layers.RMSNormalization(axis=-1, epsilon=epsilon, name=self._name(node))
        out = self._layer(node, layer, source.keras, weights=[scale])
        self._set(node, Tensor(out, source.perm), reader.outputs[0])

    def _next(self, value: ir.Value, ops: str | tuple[str, ...]) -> ir.Node:
        """The node of one of `ops` that alone reads `value` (still to be built), else Decline."""
        reader = self._single_reader(value)
        wanted = (ops,) if isinstance(ops, str) else ops
        if reader is None or reader.op_type not in wanted or id(reader) not in self.plan.node_ids:
            raise Decline
        return reader

    def _scalar_is(self, value: ir.Value | None, expected: float, rtol: float = 0.0) -> bool:
        array = self.plan.constant(value)
        if array is None or array.size != 1 or self.plan.is_parameter(value):
            return False
        return bool(np.isclose(float(array.reshape(-1)[0]), expected, rtol=rtol, atol=0.0))
