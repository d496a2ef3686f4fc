"""Issue 12, row by row: never destroy a file, never call nothing "equivalent".

Every command that writes goes through `surgery.modelio.check_output`: the output is never the
input or one of its external data files (after resolving links), never a device, FIFO or
directory, its suffix says what is written, and an existing file needs --force. The rows that
could destroy a file check the victim's bytes and type after the command.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import forms
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_one_line_error, run_surgery
from onnx import TensorProto, helper
from test_external_data import build_external_mlp

import surgery
from surgery.errors import SurgeryError
from surgery.modelio import check_output
from surgery.verification import verify


def snapshot(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry of `folder`: its file type and, for a regular file, its bytes."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        entries[str(path.relative_to(folder))] = (stat.S_IFMT(mode), path.read_bytes() if stat.S_ISREG(mode) else None)
    return entries


@pytest.fixture
def mlp(tmp_path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(forms.pytorch_mlp(), path)
    return path


WIDEN = ("--layer", "/fc1/Gemm=2")


# --- special files: a device or FIFO is never replaced, --force or not --------------------------


@pytest.mark.parametrize("command", ["widen", "export", "to-keras", "verify-json"])
def test_a_fifo_output_is_refused_and_stays_a_fifo(command, mlp, tmp_path, capfd):
    suffix = {"widen": ".onnx", "export": ".onnx", "to-keras": ".keras", "verify-json": ".json"}[command]
    fifo = tmp_path / f"out{suffix}"
    os.mkfifo(fifo)
    args = {
        "widen": ("widen", mlp, "-o", fifo, *WIDEN, "--force"),
        "export": ("export", Path(__file__).parents[1] / "models" / "mlp.keras", "-o", fifo, "--force"),
        "to-keras": ("to-keras", mlp, "-o", fifo, "--force"),
        "verify-json": ("verify", mlp, mlp, "--json", fifo, "--force"),
    }[command]
    assert_one_line_error(run_surgery(capfd, *args), says=("not a regular file",))
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_link_to_dev_null_is_refused_and_dev_null_stays_a_device(mlp, tmp_path, capfd):
    """As root, replacing /dev/null would break the machine: the output is checked through links."""
    link = tmp_path / "null.onnx"
    link.symlink_to("/dev/null")
    assert_one_line_error(run_surgery(capfd, "widen", mlp, "-o", link, *WIDEN, "--force"), says=("not a regular file",))
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert_one_line_error(run_surgery(capfd, "widen", mlp, "-o", "/dev/null", *WIDEN, "--force"))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# --- the input is never modified ---------------------------------------------------------------


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_the_input_as_output_is_refused(alias, mlp, tmp_path, capfd):
    output = {"same": mlp, "symlink": tmp_path / "link.onnx", "hardlink": tmp_path / "hard.onnx"}[alias]
    if alias == "symlink":
        output.symlink_to(mlp)
    elif alias == "hardlink":
        os.link(mlp, output)
    before = snapshot(tmp_path)
    assert_one_line_error(run_surgery(capfd, "widen", mlp, "-o", output, *WIDEN, "--force"), says=("never modified",))
    assert snapshot(tmp_path) == before


def test_export_onto_its_keras_source_is_refused(tmp_path, capfd):
    source = tmp_path / "f.keras"
    source.write_bytes((Path(__file__).parents[1] / "models" / "mlp.keras").read_bytes())
    alias = tmp_path / "f.onnx"
    alias.symlink_to(source)
    before = snapshot(tmp_path)
    assert_one_line_error(run_surgery(capfd, "export", source, "-o", source, "--force"), says=(".onnx",))
    assert_one_line_error(run_surgery(capfd, "export", source, "-o", alias, "--force"), says=("never modified",))
    assert snapshot(tmp_path) == before


def external_model(folder: Path, data_name: str) -> Path:
    """The external-data MLP whose first data file is called `data_name`."""
    path = build_external_mlp(folder)
    proto = onnx.load(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == "data0.bin":
                entry.value = data_name
    onnx.save(proto, path)
    (folder / "data0.bin").rename(folder / data_name)
    return path


def run_model(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, session.get_inputs()[0].shape[1])).astype(np.float32)
    return session.run(None, {"x": x})[0]


def test_an_external_data_file_of_the_input_as_output_is_refused(tmp_path, capfd):
    model = external_model(tmp_path / "m", "weights.onnx")
    before, expected = snapshot(tmp_path), run_model(model)
    done = run_surgery(
        capfd, "widen", model, "-o", model.parent / "weights.onnx", "--layer", "layer0/MatMul=8", "--force"
    )
    assert_one_line_error(done, says=("never modified",))
    assert snapshot(tmp_path) == before
    np.testing.assert_array_equal(run_model(model), expected)


def test_an_output_whose_data_file_is_the_inputs_data_is_refused(tmp_path, capfd):
    """a.onnx keeps its weights in b.onnx.data: writing b.onnx (and b.onnx.data) would corrupt a.onnx."""
    model = external_model(tmp_path / "m", "b.onnx.data")
    before, expected = snapshot(tmp_path), run_model(model)
    done = run_surgery(capfd, "widen", model, "-o", model.parent / "b.onnx", "--layer", "layer0/MatMul=8", "--force")
    assert_one_line_error(done, says=("data file", "never modified"))
    assert snapshot(tmp_path) == before
    np.testing.assert_array_equal(run_model(model), expected)


def test_share_external_data_onto_the_inputs_data_is_refused(tmp_path, capfd):
    model = external_model(tmp_path / "m", "shared.onnx")
    before = snapshot(tmp_path)
    done = run_surgery(
        capfd,
        "widen",
        model,
        "-o",
        model.parent / "shared.onnx",
        "--layer",
        "layer0/MatMul=8",
        "--share-external-data",
        "--force",
    )
    assert_one_line_error(done, says=("never modified",))
    assert snapshot(tmp_path) == before


def test_the_library_writers_apply_the_same_rules(mlp, tmp_path):
    with pytest.raises(SurgeryError, match="never modified") as raised:
        check_output(mlp, inputs=[mlp], suffix=".onnx", force=True)
    assert raised.value.param == "output"
    with pytest.raises(SurgeryError, match="already exists") as raised:
        surgery.save_model(onnx.load(mlp), mlp)
    assert raised.value.param == "force" and "use force to overwrite" in str(raised.value)


# --- names: directories, suffixes, existing reports -----------------------------------------------


@pytest.mark.parametrize(("command", "name"), [("widen", "d.onnx"), ("export", "d.onnx"), ("to-keras", "d.keras")])
def test_a_directory_output_is_named_as_such(command, name, mlp, tmp_path, capfd):
    folder = tmp_path / name
    folder.mkdir()
    source = Path(__file__).parents[1] / "models" / "mlp.keras" if command == "export" else mlp
    extra = WIDEN if command == "widen" else ()
    assert_one_line_error(
        run_surgery(capfd, command, source, "-o", folder, *extra, "--force"), says=("is a directory",)
    )
    assert folder.is_dir() and not any(folder.iterdir())


@pytest.mark.parametrize(
    ("command", "name", "wanted"),
    [
        ("widen", "out.keras", ".onnx"),
        ("export", "out.keras", ".onnx"),
        ("to-keras", "out.onnx", ".keras"),
        ("verify", "report.txt", ".json"),
    ],
)
def test_a_suffix_that_does_not_say_what_is_written_is_refused(command, name, wanted, mlp, tmp_path, capfd):
    source = Path(__file__).parents[1] / "models" / "mlp.keras" if command == "export" else mlp
    args = {"widen": ("-o", tmp_path / name, *WIDEN), "verify": (mlp, "--json", tmp_path / name)}.get(
        command, ("-o", tmp_path / name)
    )
    assert_one_line_error(run_surgery(capfd, command, source, *args), says=(wanted,))
    assert not (tmp_path / name).exists()


def test_an_existing_json_report_needs_force(mlp, tmp_path, capfd):
    report = tmp_path / "report.json"
    report.write_text("keep me")
    assert_one_line_error(run_surgery(capfd, "verify", mlp, mlp, "--json", report), says=("already exists", "--force"))
    assert report.read_text() == "keep me"
    assert run_surgery(capfd, "verify", mlp, mlp, "--json", report, "--force").returncode == 0
    assert json.loads(report.read_text())["equivalent"] is True


# --- verification: nothing compared is never a pass ------------------------------------------


def token_model(vocab: int = 5, width: int = 4, hidden: int = 6) -> onnx.ModelProto:
    """input_ids [batch, sequence] (int64) → Gather on an embedding [vocab, width] → MatMul → Relu → MatMul."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embed.weight", "input_ids"], ["e"], name="/embed/Gather"),
            helper.make_node("MatMul", ["e", "fc1.weight"], ["h"], name="/fc1/MatMul"),
            helper.make_node("Relu", ["h"], ["r"], name="/act/Relu"),
            helper.make_node("MatMul", ["r", "fc2.weight"], ["logits"], name="/fc2/MatMul"),
        ],
        "main_graph",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 3])],
        [
            forms.tensor("embed.weight", rng.normal(size=(vocab, width)).astype(np.float32)),
            forms.tensor("fc1.weight", rng.normal(size=(width, hidden)).astype(np.float32)),
            forms.tensor("fc2.weight", rng.normal(size=(hidden, 3)).astype(np.float32)),
        ],
    )
    return forms.finish(graph)


@pytest.fixture
def tokens(tmp_path) -> Path:
    path = tmp_path / "tokens.onnx"
    onnx.save(token_model(), path)
    return path


@pytest.mark.parametrize("dim", ["sequence=0", "batch=0"])
def test_a_zero_dimension_is_a_usage_error(dim, tokens, capfd):
    assert_one_line_error(run_surgery(capfd, "verify", tokens, tokens, "--dim", dim), says=("at least 1",))
    name, value = dim.split("=")
    with pytest.raises(SurgeryError, match="at least 1") as raised:
        verify(onnx.load(tokens), onnx.load(tokens), dims={name: int(value)})
    assert raised.value.param == "dims"


def test_inputs_with_no_rows_are_a_usage_error(tokens, tmp_path, capfd):
    empty = tmp_path / "empty.npz"
    np.savez(empty, input_ids=np.zeros((0, 4), dtype=np.int64))
    assert_one_line_error(
        run_surgery(capfd, "verify", tokens, tokens, "--inputs", empty), says=("compared no output element",)
    )


def test_an_unknown_dimension_lists_the_models_dimensions(tokens, capfd):
    done = run_surgery(capfd, "verify", tokens, tokens, "--dim", "nosuch=3")
    assert_one_line_error(done, says=("--dim", "'nosuch'", "batch, sequence"))


def test_the_report_says_what_ran(tokens, tmp_path, capfd):
    done = run_surgery(capfd, "verify", tokens, tokens, "--dim", "batch=3", "--json", "-")
    report = json.loads(done.stdout)
    assert (report["samples"], report["batch"], report["dims"]) == (18, 3, {"batch": 3, "sequence": 8})
    fixed = tmp_path / "fixed.onnx"
    model = token_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, fixed)
    report = json.loads(run_surgery(capfd, "verify", fixed, fixed, "--samples", "10", "--json", "-").stdout)
    assert (report["samples"], report["batch"]) == (12, 4)


@pytest.mark.parametrize("content", [b"not an archive\n", None])
def test_inputs_that_are_not_npz_are_named(content, tokens, tmp_path, capfd):
    path = tmp_path / "x.npy"
    if content is None:
        np.save(path, np.zeros((2, 3)))
    else:
        path.write_bytes(content)
    assert_one_line_error(run_surgery(capfd, "verify", tokens, tokens, "--inputs", path), says=("not an .npz file",))


@pytest.mark.parametrize(("flag", "value"), [("--rtol", "inf"), ("--rtol", "nan"), ("--atol", "-1"), ("--atol", "nan")])
def test_tolerances_must_be_finite_and_non_negative(flag, value, mlp, capfd):
    assert_one_line_error(run_surgery(capfd, "verify", mlp, mlp, flag, value), says=(flag, "finite non-negative"))


def test_a_gpu_provider_that_cannot_start_is_one_line(mlp, capfd):
    done = run_surgery(capfd, "verify", mlp, mlp, "--provider", "cuda")
    if done.returncode == 0:
        pytest.skip("a GPU is usable here")
    assert_one_line_error(done, says=("CUDAExecutionProvider",))


# --- widen: outputs that grow, what is printed ------------------------------------------------


def test_allow_output_change_compares_the_original_units(mlp, tmp_path, capfd):
    out = tmp_path / "wide.onnx"
    done = run_surgery(capfd, "widen", mlp, "-o", out, "--layer", "/fc2/Gemm=2", "--allow-output-change")
    assert done.returncode == 0, done.stderr
    assert "verified: outputs bitwise equal" in done.stdout
    report = verify(mlp, out)
    assert report.equivalent and report.outputs[0].shape == [8, 5]


def test_widen_prints_the_growth_only_after_success(tmp_path, capfd):
    model, out = tmp_path / "one.onnx", tmp_path / "wide.onnx"
    onnx.save(forms.single_channel_conv(), model)
    done = run_surgery(capfd, "widen", model, "-o", out, "--layer", "/conv/Conv=2")
    assert_one_line_error(done, code=1, says=("not bitwise equal",))
    assert "->" not in done.stdout and not out.exists()


def test_widen_verifies_symbolic_sequences_and_token_ids(tokens, tmp_path, capfd):
    """input_ids [batch, sequence] feeding a Gather on a 5-row table: ids are drawn in [0, 5), the
    sequence takes its default, and --dim/--samples/--inputs work as in verify."""
    out = tmp_path / "wide.onnx"
    done = run_surgery(capfd, "widen", tokens, "-o", out, "--layer", "/fc1/MatMul=3")
    assert done.returncode == 0, done.stderr
    assert "verified: outputs bitwise equal (16 samples in batches of 8, batch=8, sequence=8" in done.stdout
    done = run_surgery(
        capfd,
        "widen",
        tokens,
        "-o",
        out,
        "--layer",
        "/fc1/MatMul=3",
        "--force",
        "--dim",
        "sequence=3",
        "--samples",
        "4",
    )
    assert "(4 samples in batches of 4, batch=4, sequence=3" in done.stdout
    arrays = tmp_path / "ids.npz"
    np.savez(arrays, input_ids=np.array([[0, 4, 2]], dtype=np.int64))
    done = run_surgery(capfd, "widen", tokens, "-o", out, "--layer", "/fc1/MatMul=3", "--force", "--inputs", arrays)
    assert done.returncode == 0 and "1 samples" in done.stdout
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.array([[0, 4, 2]], dtype=np.int64), extra=np.zeros(1))
    assert_one_line_error(
        run_surgery(capfd, "widen", tokens, "-o", out, "--layer", "/fc1/MatMul=3", "--force", "--inputs", bad),
        says=("extra",),
    )


def test_widen_verified_is_the_commands_library_call(tokens, tmp_path):
    outcome = surgery.widen_verified(tokens, tmp_path / "wide.onnx", {"/fc1/MatMul": 2}, dims={"sequence": 5})
    assert outcome.report.equivalent and outcome.report.dims == {"batch": 8, "sequence": 5}
    assert outcome.lines[0] == "fc1: 6 -> 8 units" and outcome.lines[-1].startswith("wrote ")
    with pytest.raises(SurgeryError, match="already exists") as raised:
        surgery.widen_verified(tokens, tmp_path / "wide.onnx", {"/fc1/MatMul": 2})
    assert raised.value.param == "force"


# --- the package's face ------------------------------------------------------------------------


def test_version_and_public_names(capfd):
    from importlib.metadata import version

    assert surgery.__version__ == version("surgery")
    done = run_surgery(capfd, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"surgery {surgery.__version__}"
    assert {"widen", "verify", "to_keras", "export_keras", "widen_verified"} <= set(dir(surgery))


def test_find_layers_accepts_a_proto(mlp):
    layers = surgery.find_layers(onnx.load(mlp))
    assert [layer.node for layer in layers] == ["/fc1/Gemm", "/fc2/Gemm"]


@pytest.mark.slow
def test_to_keras_reads_external_data_from_another_directory(tmp_path, cli):
    """The faithfulness check runs the ONNX model through the one session factory, which reads an
    in-memory model's external data from the model's folder, not the current directory."""
    build_external_mlp(tmp_path / "ext")
    done = cli("to-keras", Path("ext") / "model.onnx", "-o", "x.keras", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "faithfulness" in done.stdout and (tmp_path / "x.keras").is_file()
