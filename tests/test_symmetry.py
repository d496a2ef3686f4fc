"""Neuron symmetry: all-zero widening creates identical units, output-zero does not, and units
that differ only downstream (fan-out, BatchNormalization) are told apart."""

from __future__ import annotations

import forms
import numpy as np
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from surgery.rewrite import widen
from surgery.symmetry import symmetric_groups


@pytest.mark.parametrize(
    ("builder", "layer", "width"),
    [
        (forms.pytorch_mlp, "/fc1/Gemm", 16),
        (forms.pytorch_cnn, "/conv1/Conv", 4),
        (forms.pytorch_swiglu, "/gate/MatMul", 12),
        (forms.sklearn_mlp, "MatMul", 8),
    ],
)
def test_all_zero_creates_a_symmetric_group_and_output_zero_does_not(builder, layer, width):
    model = builder()
    assert symmetric_groups(ir.serde.deserialize_model(model), layer) == []
    assert symmetric_groups(widen(model, {layer: 3}, init="all-zero"), layer) == [[width, width + 1, width + 2]]
    assert symmetric_groups(widen(model, {layer: 3}), layer) == []


def test_net2net_copies_are_symmetric_with_their_source():
    groups = symmetric_groups(
        widen(forms.pytorch_mlp_bn(hidden=10), {"/fc1/Gemm": 2}, init="net2net", seed=3), "/fc1/Gemm"
    )
    assert groups and all(g[0] < 10 and all(u >= 10 for u in g[1:]) for g in groups)
    assert sum(len(g) - 1 for g in groups) == 2


def test_units_that_differ_only_in_fan_out_or_batchnorm_are_distinct():
    model = forms.pytorch_mlp_bn(hidden=4)
    weights = {i.name: i for i in model.graph.initializer}
    for name in ("fc1.weight", "fc1.bias"):  # make units 0 and 1 identical upstream
        array = numpy_helper.to_array(weights[name]).copy()
        array[1] = array[0]
        weights[name].CopyFrom(numpy_helper.from_array(array, name))
    scale = numpy_helper.to_array(weights["bn1.weight"]).copy()
    for name in ("bn1.bias", "bn1.running_mean", "bn1.running_var"):
        array = numpy_helper.to_array(weights[name]).copy()
        array[1] = array[0]
        weights[name].CopyFrom(numpy_helper.from_array(array, name))
    fc2 = numpy_helper.to_array(weights["fc2.weight"]).copy()
    fc2[:, 1] = fc2[:, 0]
    weights["fc2.weight"].CopyFrom(numpy_helper.from_array(fc2, "fc2.weight"))
    scale[1] = scale[0]
    weights["bn1.weight"].CopyFrom(numpy_helper.from_array(scale, "bn1.weight"))
    assert symmetric_groups(model, "/fc1/Gemm") == [[0, 1]]
    scale[1] = scale[0] + np.float32(0.5)
    weights["bn1.weight"].CopyFrom(numpy_helper.from_array(scale, "bn1.weight"))
    assert symmetric_groups(model, "/fc1/Gemm") == []
    scale[1] = scale[0]
    weights["bn1.weight"].CopyFrom(numpy_helper.from_array(scale, "bn1.weight"))
    fc2[0, 1] += np.float32(0.25)
    weights["fc2.weight"].CopyFrom(numpy_helper.from_array(fc2, "fc2.weight"))
    assert symmetric_groups(model, "/fc1/Gemm") == []
