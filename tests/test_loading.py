"""Loading without parsing weights (`surgery.inline`, `surgery.shapes`): the same values, the same
written bytes, the same errors as parsing the whole file, with the weights left in the file."""

from __future__ import annotations

import sys
from pathlib import Path

import forms
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes.common import ShapeInferencePass

from surgery.errors import SurgeryError
from surgery.inline import WEIGHT_BYTES, InlineTensor, split_weights
from surgery.modelio import load_model, load_proto, save_model
from surgery.rewrite import widen_in_place
from surgery.shapes import infer, infer_missing_shapes, weightless
from surgery.validation import validate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import real_size  # noqa: E402  (the benchmark's generators, at a small size)

#: Models in the forms real exporters write, and the layer each test widens.
MODELS = {
    "gpt2": (lambda: real_size.gpt2_model(layers=2, d=32, heads=4, vocab=50, context=16), "transformer.h.*.mlp.c_fc"),
    "llama": (lambda: real_size.llama_model(layers=2, d=32, heads=4, ffn=48, vocab=50), "model.layers.*.mlp.gate_proj"),
    "pytorch_cnn": (forms.pytorch_cnn, "/conv1/Conv"),
    "swiglu": (lambda: forms.pytorch_swiglu(d_model=16, hidden=32), "/gate/MatMul"),
    "keras_mlp": (lambda: onnx.load(ROOT / "models" / "mlp.onnx"), "dense_1"),
}


@pytest.fixture(params=sorted(MODELS))
def model_file(request, tmp_path) -> tuple[Path, str]:
    make, layer = MODELS[request.param]
    path = tmp_path / f"{request.param}.onnx"
    onnx.save(make(), path)
    return path, layer


def test_weights_are_views_of_the_file_with_the_values_onnx_reads(model_file):
    path, _ = model_file
    expected = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    model = load_model(path)
    kinds = {}
    for name, value in model.graph.initializers.items():
        array = value.const_value.numpy()
        assert array.dtype == expected[name].dtype and np.array_equal(array, expected[name]), name
        kinds[name] = isinstance(value.const_value, InlineTensor)
    assert any(kinds.values())
    assert all(kinds[name] == (array.nbytes > WEIGHT_BYTES) for name, array in expected.items())


def test_load_proto_gives_what_onnx_load_gives(model_file):
    path, _ = model_file
    assert load_proto(path).SerializeToString() == onnx.load(path).SerializeToString()


def test_saving_writes_the_bytes_onnx_ir_writes(model_file, tmp_path):
    path, _ = model_file
    save_model(load_model(path), tmp_path / "copy.onnx")
    ir.save(ir.load(path), tmp_path / "reference.onnx")
    assert (tmp_path / "copy.onnx").read_bytes() == (tmp_path / "reference.onnx").read_bytes()


def test_a_widened_model_is_written_as_onnx_ir_writes_it(model_file, tmp_path):
    path, layer = model_file
    ours, reference = load_model(path), ir.load(path)
    for model in (ours, reference):
        widen_in_place(model, {layer: 3}, seed=7)
    save_model(ours, tmp_path / "wide.onnx")
    ir.save(reference, tmp_path / "reference.onnx")
    assert (tmp_path / "wide.onnx").read_bytes() == (tmp_path / "reference.onnx").read_bytes()
    # the widened tensors were written from memory, the others copied from the input file
    assert onnx.load(tmp_path / "wide.onnx") == onnx.load(tmp_path / "reference.onnx")


def test_filling_shapes_matches_onnx_irs_shape_inference_pass(model_file):
    path, _ = model_file
    stripped = onnx.load(path)
    del stripped.graph.value_info[:]  # as tf2onnx writes it: no intermediate shapes
    ours, reference = ir.serde.deserialize_model(stripped), ir.serde.deserialize_model(stripped)
    assert infer_missing_shapes(ours)
    ShapeInferencePass(strict_mode=False)(reference)
    assert ir.serde.serialize_model(ours).SerializeToString() == ir.serde.serialize_model(reference).SerializeToString()


def test_the_weightless_view_keeps_small_constants_and_infers_the_same_shapes(model_file):
    path, _ = model_file
    proto = onnx.load(path)
    view = weightless(proto)
    kept = {t.name for t in view.graph.initializer}
    assert kept == {t.name for t in proto.graph.initializer if numpy_helper.to_array(t).nbytes <= WEIGHT_BYTES}
    assert {t.name for t in proto.graph.initializer} - kept <= {v.name for v in view.graph.input}
    assert view.ByteSize() < proto.ByteSize()
    onnx.checker.check_model(view)
    full = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    assert list(infer(proto, strict=True).graph.value_info) == list(full.graph.value_info)


def _one_weight_model(raw: bytes, dims: list[int]) -> onnx.ModelProto:
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=dims, raw_data=raw)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_left_out_weight_of_the_wrong_size_is_refused_in_the_same_words(tmp_path):
    model = _one_weight_model(np.zeros(600, np.float32).tobytes(), [601])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    assert split_weights(path.read_bytes())[1]["W"].length == 2400  # left out of the parsed graph
    with pytest.raises(SurgeryError) as whole:
        validate(onnx.load(path), path)
    with pytest.raises(SurgeryError) as ours:
        load_model(path)
    assert str(ours.value) == str(whole.value)
    assert "holds 2400 bytes, but its shape [601] and type FLOAT need 2404" in str(ours.value)


def test_a_file_in_an_unexpected_wire_form_is_parsed_whole(tmp_path):
    model = _one_weight_model(np.arange(600, dtype=np.float32).tobytes(), [600])
    # A second graph field: protobuf merges the two (the name is the second one's), the walk gives up.
    second = onnx.GraphProto(name="second").SerializeToString()
    data = model.SerializeToString() + bytes([7 << 3 | 2, len(second)]) + second
    path = tmp_path / "two_graphs.onnx"
    path.write_bytes(data)
    assert split_weights(data) is None
    loaded = load_model(path)
    assert loaded.graph.name == "second"
    assert np.array_equal(loaded.graph.initializers["W"].const_value.numpy(), np.arange(600, dtype=np.float32))
