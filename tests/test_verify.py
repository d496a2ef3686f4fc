"""`surgery verify` and `surgery.verify`: real onnxruntime on graphs built in exporters' forms."""

from __future__ import annotations

import json

import forms
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, reader_of
from onnx import TensorProto, helper, numpy_helper

from surgery.errors import SurgeryError
from surgery.graph import as_ir
from surgery.testing import assert_equivalent
from surgery.verification import compare_arrays, verify
from surgery.verification.feeds import SYMBOLIC_DEFAULT, index_bounds

f32 = np.float32


def one_ulp_up(model: onnx.ModelProto, initializer: str) -> onnx.ModelProto:
    """A copy of `model` whose largest-magnitude weight in `initializer` moved up by one ULP."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    proto = next(i for i in changed.graph.initializer if i.name == initializer)
    weights = numpy_helper.to_array(proto).copy()
    where = np.unravel_index(np.argmax(np.abs(weights)), weights.shape)
    weights[where] = np.nextafter(weights[where], f32(np.inf))
    proto.CopyFrom(numpy_helper.from_array(weights, initializer))
    return changed


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify")
    reference = forms.pytorch_mlp()
    paths = {"reference": folder / "reference.onnx", "ulp": folder / "ulp.onnx"}
    onnx.save(reference, paths["reference"])
    onnx.save(one_ulp_up(reference, "fc2.weight"), paths["ulp"])
    paths["folder"] = folder
    return paths


# --- CLI ------------------------------------------------------------------------------------


def test_identical_models_exit_0(cli, files):
    result = cli("verify", files["reference"], files["reference"])
    assert result.returncode == 0, result.stderr
    assert "EQUIVALENT" in result.stdout


def test_one_ulp_weight_change_exits_1_and_locate_names_the_reader(cli, files):
    report_path = files["folder"] / "ulp.json"
    result = cli("verify", files["reference"], files["ulp"], "--samples", "64", "--locate", "--json", report_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith("surgery: not equivalent")
    report = json.loads(report_path.read_text())
    (output,) = report["outputs"]
    assert not report["equivalent"] and not output["bitwise_equal"]
    assert output["max_ulp"] >= 1 and output["mismatches"] > 0
    reader = reader_of(forms.pytorch_mlp(), "fc2.weight")
    assert report["located"]["node"] == reader
    assert reader in result.stdout


def test_tolerance_mode_accepts_the_one_ulp_change(cli, files):
    result = cli("verify", files["reference"], files["ulp"], "--samples", "64", "--atol", "1e-6", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # --json - prints JSON only
    assert report["mode"] == "tolerance" and report["equivalent"]
    assert report["outputs"][0]["bitwise_equal"] is False


def test_json_schema_fields(cli, files):
    result = cli(
        "verify",
        files["reference"],
        files["reference"],
        "--json",
        "-",
        "--samples",
        "20",
        "--batch",
        "6",
        "--seed",
        "3",
    )
    report = json.loads(result.stdout)
    for key in (
        "equivalent",
        "mode",
        "provider",
        "optimization",
        "samples",
        "batch",
        "seed",
        "session_options",
        "versions",
        "located",
        "outputs",
    ):
        assert key in report
    assert (report["samples"], report["batch"], report["seed"]) == (20, 6, 3)
    assert report["session_options"]["graph_optimization_level"] == "ORT_DISABLE_ALL"
    assert set(report["versions"]) >= {"onnx", "onnxruntime"}
    (output,) = report["outputs"]
    for key in ("name", "shape", "dtype", "bitwise_equal", "mismatches", "max_abs_diff", "max_rel_diff", "max_ulp"):
        assert key in output
    assert output["elements"] == 20 * 5


def test_cuda_provider_never_reports_cpu_results(cli, files):
    result = cli("verify", files["reference"], files["reference"], "--provider", "cuda", "--json", "-")
    if result.returncode == 0:  # a machine with a working GPU
        assert json.loads(result.stdout)["session_options"]["providers"][0] == "CUDAExecutionProvider"
        return
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("surgery: CUDAExecutionProvider") and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({}, "lacks model input(s) input"),
        ({"input": np.zeros((3, 20), f32), "mask": np.zeros(3, f32)}, "mask that are not model inputs"),
        ({"input": np.zeros((3, 21), f32)}, "input 'input' has shape [3, 21], the model expects [batch, 20]"),
        ({"input": np.zeros((3, 20, 1), f32)}, "input 'input' has shape [3, 20, 1]"),
        ({"input": np.zeros((3, 20), np.float64)}, "input 'input' is float64, the model expects float32"),
    ],
)
def test_npz_input_errors_exit_2(cli, files, tmp_path, arrays, message):
    archive = tmp_path / "inputs.npz"
    np.savez(archive, **arrays)
    assert_one_line_error(cli("verify", files["reference"], files["reference"], "--inputs", archive), says=(message,))


def test_npz_inputs_are_used(cli, files, tmp_path):
    archive = tmp_path / "inputs.npz"
    np.savez(archive, input=np.random.default_rng(1).random((10, 20), dtype=f32))
    result = cli("verify", files["reference"], files["ulp"], "--inputs", archive, "--batch", "4", "--json", "-")
    report = json.loads(result.stdout)
    assert report["inputs"] == "given" and report["samples"] == 10
    assert report["outputs"][0]["elements"] == 10 * 5


def test_bad_dim_flag_exits_2(cli, files):
    assert_one_line_error(cli("verify", files["reference"], files["reference"], "--dim", "batch"), says=("NAME=VALUE",))


# --- API: outputs, NaN, dims, dtypes -------------------------------------------------------


def elementwise(op_nodes: list, outputs=("y",), inputs=(("x", ["batch", 4]),)) -> onnx.ModelProto:
    """A float graph of the given nodes; outputs are float, shaped like the first input."""
    graph = helper.make_graph(
        op_nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, inputs[0][1]) for name in outputs],
    )
    return forms.finish(graph)


def test_nan_in_the_same_place_is_equal_and_against_a_number_is_not():
    sqrt = elementwise([helper.make_node("Sqrt", ["x"], ["y"], name="sqrt")])  # x uniform in [-1, 1): NaNs
    report = verify(sqrt, sqrt, samples=32)
    assert report.equivalent and report.outputs[0].bitwise_equal
    safe = elementwise(
        [helper.make_node("Abs", ["x"], ["a"], name="abs"), helper.make_node("Sqrt", ["a"], ["y"], name="sqrt")]
    )
    report = verify(sqrt, safe, samples=32)
    output = report.outputs[0]
    assert not report.equivalent and output.nan_mismatches == output.mismatches > 0
    assert output.max_ulp == 0  # where neither is NaN the values agree
    assert not verify(sqrt, safe, samples=32, atol=1.0).equivalent  # NaN against a number fails any tolerance


def test_zero_over_zero_nan_in_both_is_equal():
    div = elementwise(
        [
            helper.make_node("Sub", ["x", "x"], ["z"], name="zero"),
            helper.make_node("Div", ["z", "z"], ["y"], name="div"),
        ]
    )
    report = verify(div, div)
    assert report.equivalent and report.outputs[0].max_abs_diff == 0.0


def test_an_output_present_in_one_model_only_makes_it_not_equivalent():
    one = elementwise([helper.make_node("Relu", ["x"], ["y"], name="relu")])
    two = elementwise(
        [helper.make_node("Relu", ["x"], ["y"], name="relu"), helper.make_node("Neg", ["x"], ["z"], name="neg")],
        outputs=("y", "z"),
    )
    report = verify(one, two)
    assert not report.equivalent
    by_name = {o.name: o for o in report.outputs}
    assert by_name["y"].passed and by_name["z"].present_in == "candidate"
    report = verify(two, one)
    assert {o.name: o.present_in for o in report.outputs}["z"] == "reference" and not report.equivalent
    assert "only in reference" in report.summary()


def test_symbolic_dims_take_a_default_or_the_given_value():
    relu = elementwise([helper.make_node("Relu", ["x"], ["y"], name="relu")], inputs=(("x", ["batch", "seq", 4]),))
    report = verify(relu, relu, samples=10, batch=4)
    assert report.equivalent and report.outputs[0].elements == 10 * SYMBOLIC_DEFAULT * 4
    assert report.dims == {"batch": 4, "seq": SYMBOLIC_DEFAULT}
    report = verify(relu, relu, dims={"seq": 3}, samples=10, batch=4)
    assert report.equivalent and report.outputs[0].elements == 10 * 3 * 4
    with pytest.raises(SurgeryError, match=r"no symbolic dimension 'sq' \(theirs: batch, seq\)"):
        verify(relu, relu, dims={"sq": 3})


def test_token_ids_stay_below_the_embedding_table():
    """An int64 input indexing a 3-row table through a Cast: ids beyond 2 would make Gather fail."""
    table = np.arange(12, dtype=f32).reshape(3, 4)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids32"], name="cast", to=TensorProto.INT32),
            helper.make_node("Gather", ["table", "ids32"], ["y"], name="gather"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4])],
        [numpy_helper.from_array(table, "table")],
    )
    model = forms.finish(graph)
    assert index_bounds(model.graph) == {"ids": 3}
    assert verify(model, model, samples=64, batch=16).equivalent


def test_integer_and_bool_inputs_are_generated_in_range():
    table = np.arange(40, dtype=f32).reshape(10, 4)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"], name="gather"),
        helper.make_node("Where", ["keep", "rows", "zeros"], ["y"], name="where"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("keep", TensorProto.BOOL, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.zeros(4, f32), "zeros")],
    )
    model = forms.finish(graph)
    assert verify(model, model, samples=50, batch=16).equivalent  # an id >= 10 would make Gather fail


def test_samples_run_in_batches_with_progress():
    model = forms.pytorch_mlp()
    seen = []
    report = verify(model, model, samples=20, batch=8, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(8, 20), (16, 20), (20, 20)]
    assert report.samples == 20 and report.outputs[0].elements == 20 * 5


def test_deployed_reports_the_default_level_too():
    model = forms.pytorch_cnn()
    report = verify(model, model, deployed=True)
    assert report.deployed["optimization"] == "all"
    assert report.deployed["session_options"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert report.deployed["outputs"][0]["max_ulp"] == 0
    assert report.session_options["graph_optimization_level"] == "ORT_DISABLE_ALL"


def test_bad_options_are_surgery_errors():
    model = forms.pytorch_mlp()
    with pytest.raises(SurgeryError, match="optimization must be one of"):
        verify(model, model, optimization="max")
    with pytest.raises(SurgeryError, match="samples must be an integer of at least 1") as raised:
        verify(model, model, samples=0)
    assert raised.value.param == "samples"
    for tolerance in (float("inf"), float("nan"), -1.0):
        with pytest.raises(SurgeryError, match="rtol must be a finite non-negative number") as raised:
            verify(model, model, rtol=tolerance)
        assert raised.value.param == "rtol"
    with pytest.raises(
        SurgeryError, match=r"input 'input' has shape \[batch, 20\] in reference but \[batch, 1, 8, 8\] in candidate"
    ):
        verify(model, forms.pytorch_cnn())
    relu = elementwise([helper.make_node("Relu", ["x"], ["y"], name="relu")])
    with pytest.raises(
        SurgeryError, match="different inputs: candidate lacks input.s. input; candidate has extra input.s. x"
    ):
        verify(model, relu)


def test_ir_model_proto_and_path_give_the_same_result(files):
    from_memory = verify(as_ir(forms.pytorch_mlp()), onnx.load(files["ulp"]), samples=64)
    from_files = verify(str(files["reference"]), files["ulp"], samples=64)
    assert not from_memory.equivalent and from_files.candidate == str(files["ulp"])
    assert from_memory.outputs[0].to_json() == from_files.outputs[0].to_json()


# --- compare_arrays: bits and ULPs ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_ulp_distance_on_ordered_integers(dtype):
    one = np.array([1.0], dtype)
    assert compare_arrays("t", one, np.nextafter(one, dtype(2))).max_ulp == 1
    tiny = np.array([np.finfo(dtype).smallest_subnormal], dtype)
    # -tiny, -0, +0, +tiny: three steps, -0 one below +0
    assert compare_arrays("t", -tiny, tiny).max_ulp == 3
    signed_zero = compare_arrays("t", np.array([0.0], dtype), np.array([-0.0], dtype))
    assert signed_zero.max_ulp == 1 and not signed_zero.bitwise_equal and signed_zero.max_abs_diff == 0.0
    big = compare_arrays("t", np.array([-np.finfo(dtype).max], dtype), np.array([np.finfo(dtype).max], dtype))
    assert big.max_ulp == 2 * (int(np.array(np.finfo(dtype).max, dtype).view(f"u{np.dtype(dtype).itemsize}")) + 1) - 1


def test_nan_payloads_and_infinities():
    quiet = np.array([np.nan], f32)
    other_payload = np.array([0x7FC00001], np.uint32).view(f32)
    assert compare_arrays("t", quiet, other_payload).passed
    inf = np.array([np.inf, -np.inf], f32)
    assert compare_arrays("t", inf, inf.copy()).passed
    flipped = compare_arrays("t", inf, inf[::-1].copy())
    assert flipped.mismatches == 2 and flipped.max_abs_diff == np.inf
    assert compare_arrays("t", np.array([1, 5], np.int64), np.array([1, 7], np.int64)).max_ulp is None


def test_tolerance_fails_only_beyond_both():
    a, b = np.array([1.0, 100.0], f32), np.array([1.1, 100.1], f32)
    assert compare_arrays("t", a, b, atol=0.05, rtol=0.01).mismatches == 1  # 1 vs 1.1: 0.1 abs, 10% rel
    assert compare_arrays("t", a, b, atol=0.2).mismatches == 0
    assert compare_arrays("t", a, b, rtol=0.2).mismatches == 0


# --- assert_equivalent ---------------------------------------------------------------------


def test_assert_equivalent_passes_and_fails_readably(files):
    assert assert_equivalent(forms.pytorch_mlp(), str(files["reference"])).equivalent
    with pytest.raises(AssertionError) as failure:
        assert_equivalent(forms.pytorch_mlp(), forms.pytorch_mlp(seed=9))
    message = str(failure.value)
    assert message.startswith("models are not equivalent")
    assert "NOT EQUIVALENT" in message and "output" in message and "max ULP" in message


# --- locate across a widening, and with external data ---------------------------------------


def matmul_mlp(
    w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, widened: dict | None = None
) -> onnx.ModelProto:
    """skl2onnx's form: MatMul [in, out] + Add, Relu, MatMul + Add; optional widen metadata."""
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["h"], name="MatMul"),
        helper.make_node("Add", ["h", "B1"], ["hb"], name="Add"),
        helper.make_node("Relu", ["hb"], ["act"], name="Relu"),
        helper.make_node("MatMul", ["act", "W2"], ["o"], name="MatMul1"),
        helper.make_node("Add", ["o", "B2"], ["output"], name="Add1"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, w1.shape[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, w2.shape[1]])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))],
    )
    model = forms.finish(graph)
    if widened is not None:
        helper.set_model_props(model, {"surgery.widened_tensors": json.dumps(widened)})
    return model


@pytest.fixture(scope="module")
def mlp_weights():
    rng = np.random.default_rng(4)
    return [rng.normal(0, 0.5, shape).astype(f32) for shape in ((6, 4), (4,), (4, 3), (3,))]


def widen_by_hand(weights, new: slice, fan_out: float = 0.0):
    """Insert 2 hidden units at `new` (random fan-in, zero fan-out but for one weight `fan_out`)."""
    w1, b1, w2, b2 = weights
    rng = np.random.default_rng(5)
    position = new.start
    wide_w1 = np.insert(w1, [position] * 2, rng.normal(0, 0.5, (6, 2)).astype(f32), axis=1)
    wide_b1 = np.insert(b1, [position] * 2, np.ones(2, f32))  # positive bias: the new units are active
    wide_w2 = np.insert(w2, [position] * 2, np.zeros((2, 3), f32), axis=0)
    wide_w2[position + 1, 2] = fan_out
    metadata = {name: {"axis": 1, "original": 4, "new": [[new.start, new.stop]]} for name in ("h", "hb", "act")}
    return (wide_w1, wide_b1, wide_w2, b2), metadata


@pytest.mark.parametrize("where", [slice(4, 6), slice(0, 2)], ids=["appended", "prepended"])
def test_locate_across_a_widening_names_the_consumer(mlp_weights, where):
    reference = matmul_mlp(*mlp_weights)
    weights, metadata = widen_by_hand(mlp_weights, where)
    assert verify(reference, matmul_mlp(*weights, widened=metadata), samples=32).equivalent
    weights, metadata = widen_by_hand(mlp_weights, where, fan_out=0.25)
    report = verify(reference, matmul_mlp(*weights, widened=metadata), samples=32, locate=True)
    assert not report.equivalent
    located = report.located
    assert (located.node, located.op, located.output) == ("MatMul1", "MatMul", "o")
    assert located.compared == 4 and located.skipped == 0  # h, hb and act compared on original units


def test_locate_infers_appended_units_from_shapes(mlp_weights):
    weights, _ = widen_by_hand(mlp_weights, slice(4, 6), fan_out=0.25)
    report = verify(matmul_mlp(*mlp_weights), matmul_mlp(*weights), samples=32, locate=True)
    assert report.located.node == "MatMul1" and report.located.compared == 4


def test_locate_without_metadata_misreads_prepended_units(mlp_weights):
    """Shape inference keeps the first U units: right for appended units only, so metadata matters."""
    weights, _ = widen_by_hand(mlp_weights, slice(0, 2), fan_out=0.25)
    report = verify(matmul_mlp(*mlp_weights), matmul_mlp(*weights), samples=32, locate=True)
    assert report.located.node == "MatMul"


def test_locate_skips_tensors_it_cannot_align(mlp_weights):
    w1, b1, w2, b2 = mlp_weights
    reference = matmul_mlp(w1, b1, w2, b2)
    changed = one_ulp_up(reference, "W2")
    proto = onnx.ModelProto()
    proto.CopyFrom(changed)
    # A Transpose of the hidden layer in the candidate only, under a reference tensor's name:
    # same name, different shape on two axes: not alignable.
    proto.graph.node[2].output[0] = "act_t"
    proto.graph.node.insert(3, helper.make_node("Transpose", ["act_t"], ["act"], name="T", perm=[1, 0]))
    proto.graph.node.insert(4, helper.make_node("Transpose", ["act"], ["act_back"], name="T2", perm=[1, 0]))
    proto.graph.node[5].input[0] = "act_back"
    report = verify(reference, proto, samples=64, locate=True)
    assert report.located.skipped == 1 and report.located.node == "MatMul1"
    assert report.located.unmatched == 2  # act_t and act_back exist only in the candidate


def test_locate_with_external_data_reads_weights_in_place(tmp_path, mlp_weights):
    reference = matmul_mlp(*mlp_weights)
    candidate = one_ulp_up(reference, "W2")
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save(
        candidate, folder / "candidate.onnx", save_as_external_data=True, location="candidate.data", size_threshold=0
    )
    before = sorted(p.name for p in folder.iterdir())
    report = verify(reference, folder / "candidate.onnx", samples=64, locate=True)
    assert report.located.node == "MatMul1"
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written beside the model
    from surgery.modelio import load_model

    loaded = load_model(folder / "candidate.onnx")  # memory-mapped external tensors
    assert verify(reference, loaded, samples=64, locate=True).located.node == "MatMul1"


def test_integer_and_sequence_outputs_have_no_ulps():
    report = verify(forms.sklearn_mlp(), forms.sklearn_mlp())
    by_name = {o.name: o for o in report.outputs}
    assert report.equivalent and by_name["label"].max_ulp is None and by_name["probabilities"].max_ulp == 0
    # onnxruntime returns ZipMap-style outputs as lists of dicts
    differing = compare_arrays("zipmap", [{0: 0.25}, {0: 0.75}], [{0: 0.25}, {0: 0.5}])
    assert differing.mismatches == 1 and differing.max_ulp is None and not differing.passed


def test_optimization_level_applies_to_both_and_is_named(cli, files):
    result = cli("verify", files["reference"], files["reference"], "--optimization", "all", "--deployed", "--json", "-")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["optimization"] == "all"
    assert report["session_options"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert report["deployed"]["outputs"][0]["mismatches"] == 0


def test_large_models_run_one_session_at_a_time(monkeypatch):
    """Above ONE_SESSION_BYTES the two sessions never coexist, and the verdicts are the same."""
    from surgery.verification import core, sides

    reference = forms.pytorch_mlp()
    changed = one_ulp_up(reference, "fc2.bias")

    alive: list[int] = []
    create = sides.create_session

    def counting(*args, **kwargs):
        session = create(*args, **kwargs)
        alive.append(sum(len(side._sessions) for side in opened) + 1)
        return session

    opened: list = []
    make_side = sides.OnnxSide

    def tracked(*args, **kwargs):
        side = make_side(*args, **kwargs)
        opened.append(side)
        return side

    monkeypatch.setattr(core, "ONE_SESSION_BYTES", 0)
    monkeypatch.setattr(core, "ROUND_BYTES", 1)  # a round per batch: several rounds
    monkeypatch.setattr(sides, "create_session", counting)
    monkeypatch.setattr(sides, "OnnxSide", tracked)
    same = verify(reference, reference, samples=24, batch=8)
    differs = verify(reference, changed, samples=24, batch=8)
    assert same.equivalent and not differs.equivalent
    assert differs.outputs[0].max_ulp >= 1
    assert max(alive) == 1  # never two sessions at once
