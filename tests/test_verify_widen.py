"""`verify --locate` across real widenings made by `surgery.widen`."""

from __future__ import annotations

import json
from pathlib import Path

import forms
import onnx
import pytest
from conftest import reader_of
from onnx import numpy_helper

from surgery.graph import as_ir
from surgery.rewrite import widen
from surgery.verification import verify


def give_new_unit_a_fan_out(model: onnx.ModelProto, weight: str, axis: int, new_index: int) -> onnx.ModelProto:
    """A copy whose consumer weight `weight` has one non-zero entry for new unit `new_index`."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    proto = next(t for t in changed.graph.initializer if t.name == weight)
    array = numpy_helper.to_array(proto).copy()
    index = [0] * array.ndim
    index[axis] = new_index
    assert array[tuple(index)] == 0.0  # output-zero widening left it zero
    array[tuple(index)] = 0.5
    proto.CopyFrom(numpy_helper.from_array(array, weight))
    return changed


@pytest.mark.parametrize(
    "build, layer, consumer_weight, in_axis, new_index",
    [
        (forms.pytorch_mlp, "/fc1/Gemm", "fc2.weight", 1, 17),  # Gemm transB: weight [out, in]
        # Conv widened 4 -> 7 channels: Flatten (channel-major, 4x4 per channel) puts channel 5 at 80..95
        (forms.pytorch_cnn, "/conv1/Conv", "fc.weight", 1, 5 * 16 + 3),
    ],
    ids=["mlp", "cnn"],
)
def test_locate_names_the_consumer_of_a_widened_layer(build, layer, consumer_weight, in_axis, new_index):
    reference = build()
    wide = widen(reference, {layer: 3})
    widened = json.loads({p.key: p.value for p in wide.metadata_props}["surgery.widened_tensors"])
    assert verify(reference, wide, samples=32).equivalent

    broken = give_new_unit_a_fan_out(wide, consumer_weight, in_axis, new_index)
    report = verify(reference, broken, samples=32, locate=True)
    assert not report.equivalent
    located = report.located
    assert located.node == reader_of(broken, consumer_weight)
    # every widened intermediate was compared on its original units, none skipped
    assert located.skipped == 0 and located.compared >= len(widened) + 1


def test_locate_looks_past_tf2onnx_flatten_shape_chain():
    """tf2onnx's dynamic-batch Flatten reads Shape(widened tensor): that differs on purpose."""
    import keras

    from surgery.export import export_keras

    keras.utils.set_random_seed(0)
    cnn = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv", bias_initializer="ones"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(3, name="head", bias_initializer="ones"),
        ],
        name="cnn",
    )
    reference = export_keras(cnn)
    wide = widen(reference, {"conv": 2})
    assert verify(reference, wide, samples=8).equivalent
    head = as_ir(wide)
    (matmul,) = [n for n in head.graph if n.op_type == "MatMul"]
    weight = matmul.inputs[1].name
    # NHWC flatten of 4x4 positions x 6 channels: new channels are 4 and 5 of each position.
    broken = give_new_unit_a_fan_out(wide, weight, 0, 6 * 3 + 4)
    located = verify(reference, broken, samples=8, locate=True).located
    assert located.node == matmul.name
    assert located.skipped >= 1  # the Shape chain, skipped rather than blamed


def test_locate_looks_past_shape_constants_a_widening_edits():
    """Adding a GPT-2 head edits the head-splitting Reshape's width constant (192 → 240) on purpose:
    with random new heads, locate names the first float tensor that differs, the output projection."""
    reference = onnx.load(Path(__file__).parent / "fixtures" / "gpt2_sdpa.onnx")
    grown = widen(reference, heads={"transformer.h.0.attn": 1}, init="all-random")
    located = verify(reference, grown, samples=2, locate=True).located
    assert located.comparison is not None and located.comparison.dtype == "float32"
    assert located.node == "/model/transformer/h.0/attn/c_proj/Gemm"
    assert located.skipped >= 1  # the edited shape constants, skipped rather than blamed
