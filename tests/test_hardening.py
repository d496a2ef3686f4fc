"""Broken and hostile inputs, for every command that reads a model: one line, exit 2, nothing written.

Each row of a table is a file a stranger could hand the tool (truncated protobuf, a text file,
an ONNX graph that reads an undefined tensor, an unsupported opset, a .keras file carrying a
Lambda, ...). Every command that reads that kind of file is run on it in-process (fast; pytest's
`capfd` captures file descriptors 1 and 2, so native libraries writing to stderr are caught too)
and must answer with exit code 2 and exactly one line on stderr that names the file and the
problem, write no file, and leave its inputs byte for byte as they were.
"""

from __future__ import annotations

import copy
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import forms
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, digest, run_surgery
from onnx import helper

# ---------------------------------------------------------------------------------------------
# Broken ONNX files: name -> (how to write it, what the message must say)


def _edit(change: Callable[[onnx.ModelProto], None]) -> Callable[[onnx.ModelProto], bytes]:
    def build(good: onnx.ModelProto) -> bytes:
        model = copy.deepcopy(good)
        change(model)
        return model.SerializeToString()

    return build


def _nested_ifs(depth: int) -> Callable[[onnx.ModelProto], bytes]:
    """If nodes nested `depth` deep, written as raw protobuf (the Python bindings refuse to build it).

    Protobuf refuses to parse messages nested past its depth limit (100).
    """

    def varint(number: int) -> bytes:
        out = bytearray()
        while True:
            out.append((number & 0x7F) | (0x80 if number > 0x7F else 0))
            number >>= 7
            if not number:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    def build(good: onnx.ModelProto) -> bytes:
        out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1]).SerializeToString()
        graph = field(2, b"leaf") + field(12, out)
        for _ in range(depth):
            attribute = field(1, b"then_branch") + field(6, graph) + varint(20 << 3) + varint(onnx.AttributeProto.GRAPH)
            node = field(1, b"cond") + field(2, b"y") + field(4, b"If") + field(5, attribute)
            graph = field(1, node) + field(2, b"level") + field(12, out)
        opset = helper.make_opsetid("", 17).SerializeToString()
        return varint(1 << 3) + varint(8) + field(7, graph) + field(8, opset)

    return build


def _set_raw(index: int, cut: int) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        tensor = model.graph.initializer[index]
        tensor.raw_data = tensor.raw_data[:-cut]

    return change


def _huge_declared_shape(model: onnx.ModelProto) -> None:
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([10**6, 10**6])  # 4 TB declared, 1280 bytes held


def _reorder(model: onnx.ModelProto) -> None:
    first = copy.deepcopy(model.graph.node[0])
    del model.graph.node[0]
    model.graph.node.append(first)


def _traversal(model: onnx.ModelProto) -> None:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../outside.bin")


BAD_ONNX: dict[str, tuple[Callable[[onnx.ModelProto], bytes] | None, tuple[str, ...]]] = {
    "truncated-protobuf": (lambda good: good.SerializeToString()[: good.ByteSize() // 2], ("not an ONNX model",)),
    "text-file": (lambda good: b"this is a text file, not a model\n" * 4, ("not an ONNX model",)),
    "empty-file": (lambda good: b"", ("empty file",)),
    "directory": (None, ("is a directory",)),
    "missing-path": (None, ("no such file",)),
    "keras-zip-as-onnx": (lambda good: b"PK\x03\x04" + bytes(200), ("not an ONNX model",)),
    "protobuf-without-graph": (lambda good: onnx.ModelProto(ir_version=8).SerializeToString(), ("no graph",)),
    "undefined-tensor": (_edit(lambda m: m.graph.node[1].input.__setitem__(0, "nowhere")), ("reads tensor 'nowhere'",)),
    "nodes-out-of-order": (_edit(_reorder), ("not in topological order",)),
    "undefined-graph-output": (_edit(lambda m: setattr(m.graph.output[0], "name", "ghost")), ("graph output 'ghost'",)),
    "duplicate-node-output": (
        _edit(lambda m: m.graph.node[1].output.__setitem__(0, "/fc1/Gemm_output_0")),
        ("defined twice",),
    ),
    "duplicate-initializer": (
        _edit(lambda m: m.graph.initializer.append(copy.deepcopy(m.graph.initializer[0]))),
        ("defined twice",),
    ),
    "duplicate-graph-input": (
        _edit(lambda m: m.graph.input.append(copy.deepcopy(m.graph.input[0]))),
        ("declared twice",),
    ),
    "duplicate-node-name": (_edit(lambda m: setattr(m.graph.node[2], "name", "/fc1/Gemm")), ("two nodes are named",)),
    "initializer-too-short": (_edit(_set_raw(0, 4)), ("holds 1276 bytes", "need 1280")),
    "initializer-huge-declared-shape": (_edit(_huge_declared_shape), ("need 4000000000000",)),
    "opset-too-new": (_edit(lambda m: setattr(m.opset_import[0], "version", 30)), ("opset 30",)),
    "opset-too-old": (_edit(lambda m: setattr(m.opset_import[0], "version", 5)), ("opset 5",)),
    "unsupported-op-domain": (
        _edit(
            lambda m: (
                setattr(m.graph.node[1], "domain", "org.evil"),
                m.opset_import.append(helper.make_opsetid("org.evil", 1)),
            )
        ),
        ("op domain 'org.evil'",),
    ),
    "weights-disagree-with-shapes": (
        _edit(lambda m: m.graph.initializer[0].dims.__setitem__(slice(None), [20, 16])),
        ("types or shapes do not agree", "/fc1/Gemm"),
    ),
    "input-type-disagrees": (
        _edit(lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", onnx.TensorProto.DOUBLE)),
        ("types or shapes do not agree",),
    ),
    "name-not-utf8": (
        lambda good: good.SerializeToString().replace(b"/relu/Relu", b"/rel\xbe/Relu"),
        ("not valid UTF-8",),
    ),
    "surgery-metadata-not-json": (
        _edit(lambda m: m.metadata_props.add(key="surgery.widen_history", value="[{")),
        ("surgery.widen_history", "not valid JSON"),
    ),
    "ir-version-from-the-future": (_edit(lambda m: setattr(m, "ir_version", 99)), ("ir_version",)),
    "subgraphs-nested-too-deep": (_nested_ifs(120), ("not an ONNX model",)),
    "external-data-outside-folder": (_edit(_traversal), ("outside the model's folder",)),
}


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(folder, {row: path}) with a good MLP as ``good.onnx`` and one file per BAD_ONNX row."""
    folder = tmp_path_factory.mktemp("onnx_inputs") / "models"
    folder.mkdir()
    good = forms.pytorch_mlp()
    onnx.save(good, folder / "good.onnx")
    paths = {"good": folder / "good.onnx"}
    for name, (build, _) in BAD_ONNX.items():
        path = folder / f"{name}.onnx"
        if name == "directory":
            path.mkdir()
        elif build is not None:
            path.write_bytes(build(good))
        paths[name] = path
    (folder.parent / "outside.bin").write_bytes(bytes(1280))  # what the traversal row points at
    return folder, paths


def _onnx_commands(model: Path, good: Path, out: Path) -> dict[str, list]:
    return {
        "inspect": ["inspect", model],
        "inspect-json": ["inspect", model, "--json"],
        "verify-reference": ["verify", model, good],
        "verify-candidate": ["verify", good, model],
        "widen": ["widen", model, "-o", out / "wide.onnx", "--layer", "/fc1/Gemm=2"],
        "to-keras": ["to-keras", model, "-o", out / "model.keras"],
    }


ONNX_COMMANDS = list(_onnx_commands(Path(), Path(), Path()))


@pytest.mark.parametrize("command", ONNX_COMMANDS)
@pytest.mark.parametrize("row", list(BAD_ONNX))
def test_bad_onnx_file_is_one_line_error_and_writes_nothing(onnx_files, row, command, tmp_path, capfd):
    folder, paths = onnx_files
    args = _onnx_commands(paths[row], paths["good"], tmp_path)[command]
    before = digest(folder)
    outcome = run_surgery(capfd, *args)
    assert_one_line_error(outcome, names=paths[row].name, says=BAD_ONNX[row][1])
    assert list(tmp_path.iterdir()) == []
    assert digest(folder) == before


def test_good_onnx_passes_every_command(onnx_files, tmp_path, capfd):
    """The table's control row: the same commands on the unbroken model succeed."""
    folder, paths = onnx_files
    for name, args in _onnx_commands(paths["good"], paths["good"], tmp_path).items():
        outcome = run_surgery(capfd, *args)
        assert outcome.returncode == 0, (name, outcome.stderr)


# ---------------------------------------------------------------------------------------------
# Broken Keras files (read by export, and by verify when a side is .keras)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    from surgery.tensorflow_runtime import import_tensorflow

    import_tensorflow()
    import keras

    folder = tmp_path_factory.mktemp("keras_inputs") / "models"
    folder.mkdir()
    keras.utils.set_random_seed(0)
    good = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="relu", name="hidden"), keras.layers.Dense(3, name="head")]
    )
    good.save(folder / "good.keras")
    inp = keras.Input((6,))
    out = keras.layers.Dense(3, name="head")(keras.layers.Lambda(lambda x: x * 2.0, name="twice")(inp))
    keras.Model(inp, out).save(folder / "lambda.keras")
    raw = (folder / "good.keras").read_bytes()
    paths = {"good": folder / "good.keras", "lambda": folder / "lambda.keras"}

    def write(name: str, data: bytes) -> None:
        paths[name] = folder / name
        paths[name].write_bytes(data)

    write("truncated.keras", raw[: len(raw) // 2])
    write("text.keras", b"not a zip archive\n")
    write("empty.keras", b"")
    write("onnx-file.onnx", forms.pytorch_mlp().SerializeToString())
    with zipfile.ZipFile(folder / "good.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name, replace in {
        "bad-json.keras": {"config.json": b"{not json"},
        "unknown-class.keras": {
            "config.json": b'{"class_name": "Nowhere", "config": {}, "module": "os", "registered_name": "system"}'
        },
        "no-weights.keras": {"model.weights.h5": None},
    }.items():
        paths[name] = folder / name
        with zipfile.ZipFile(paths[name], "w") as archive:
            for member, data in {**members, **replace}.items():
                if data is not None:
                    archive.writestr(member, data)
    paths["directory.keras"] = folder / "directory.keras"
    paths["directory.keras"].mkdir()
    paths["missing.keras"] = folder / "missing.keras"
    return folder, paths


BAD_KERAS = {
    "truncated.keras": ("not a .keras file",),
    "text.keras": ("not a .keras file",),
    "empty.keras": ("empty file",),
    "directory.keras": ("is a directory",),
    "missing.keras": ("no such file",),
    "onnx-file.onnx": ("expected a .keras",),
    "bad-json.keras": ("cannot be loaded as a Keras model",),
    "unknown-class.keras": ("cannot be loaded as a Keras model",),
    "no-weights.keras": ("cannot be loaded as a Keras model",),
    "lambda": ("safe mode", "--unsafe"),
}


@pytest.mark.parametrize("command", ["export", "verify"])
@pytest.mark.parametrize("row", list(BAD_KERAS))
def test_bad_keras_file_is_one_line_error_and_writes_nothing(keras_files, onnx_files, row, command, tmp_path, capfd):
    folder, paths = keras_files
    if command == "verify" and row == "onnx-file.onnx":
        pytest.skip("verify reads .onnx files too")
    if command == "export":
        args = ["export", paths[row], "-o", tmp_path / "out.onnx"]
    else:  # verify runs a .keras side with Keras
        args = ["verify", paths[row], paths["good"]]
    before = digest(folder)
    outcome = run_surgery(capfd, *args)
    assert_one_line_error(outcome, names=paths[row].name, says=BAD_KERAS[row])
    assert list(tmp_path.iterdir()) == []
    assert digest(folder) == before


def test_lambda_loads_with_unsafe(keras_files, tmp_path, capfd):
    folder, paths = keras_files
    outcome = run_surgery(capfd, "export", paths["lambda"], "-o", tmp_path / "lambda.onnx", "--unsafe")
    assert outcome.returncode == 0, outcome.stderr
    assert (tmp_path / "lambda.onnx").is_file()
    help_text = run_surgery(capfd, "export", "--help").stdout
    assert "--unsafe" in help_text and "Lambda" in help_text  # says what it allows


# ---------------------------------------------------------------------------------------------
# Broken input arrays for verify --inputs


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("npz_inputs")
    paths = {
        name: folder / f"{name}.npz"
        for name in ("text", "empty", "truncated", "pickled", "wrong-name", "wrong-shape", "wrong-dtype", "missing")
    }
    paths["text"].write_text("not an archive\n")
    paths["empty"].write_bytes(b"")
    np.savez(folder / "full.npz", input=np.zeros((2, 20), np.float32))
    paths["truncated"].write_bytes((folder / "full.npz").read_bytes()[:100])
    np.savez(paths["pickled"], input=np.array([{"code": "run me"}], dtype=object))
    np.savez(paths["wrong-name"], features=np.zeros((2, 20), np.float32))
    np.savez(paths["wrong-shape"], input=np.zeros((2, 21), np.float32))
    np.savez(paths["wrong-dtype"], input=np.zeros((2, 20), np.int64))
    paths["directory"] = folder / "folder.npz"
    paths["directory"].mkdir()
    return folder, paths


BAD_NPZ = {
    "text": ("not an .npz file",),
    "empty": ("not an .npz file",),
    "truncated": ("not an .npz file",),
    "pickled": ("not an .npz file",),
    "missing": ("no such file",),
    "directory": ("is a directory",),
    # Content problems name the model input at fault rather than the file.
    "wrong-name": ("input",),
    "wrong-shape": ("shape [2, 21]",),
    "wrong-dtype": ("int64",),
}


@pytest.mark.parametrize("row", list(BAD_NPZ))
def test_bad_inputs_archive_for_verify(onnx_files, npz_files, row, capfd):
    _, models = onnx_files
    _, paths = npz_files
    outcome = run_surgery(capfd, "verify", models["good"], models["good"], "--inputs", paths[row])
    named = paths[row].name if row not in ("wrong-name", "wrong-shape", "wrong-dtype") else None
    assert_one_line_error(outcome, names=named, says=BAD_NPZ[row])


# ---------------------------------------------------------------------------------------------
# Bad requests and bad destinations


@pytest.mark.parametrize(
    "args, says",
    [
        (["--samples", "0"], ("samples",)),
        (["--batch", "0"], ("batch",)),
        (["--samples", "-5"], ("samples",)),
        (["--dim", "batch"], ("--dim",)),
        (["--dim", "batch=-1"], ("--dim",)),
        (["--atol", "-1"], ("atol",)),
        (["--provider", "tpu"], ("provider",)),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_verify_bad_options(onnx_files, args, says, capfd):
    _, paths = onnx_files
    assert_one_line_error(run_surgery(capfd, "verify", paths["good"], paths["good"], *args), says=says)


def test_verify_json_report_into_missing_folder(onnx_files, tmp_path, capfd):
    _, paths = onnx_files
    target = tmp_path / "no" / "such" / "report.json"
    assert_one_line_error(
        run_surgery(capfd, "verify", paths["good"], paths["good"], "--json", target), names="report.json"
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["--opset", "99"], ("opset 99",)),
        (["--batch", "0"], ("--batch",)),
    ],
)
def test_export_bad_options(keras_files, tmp_path, args, says, capfd):
    _, paths = keras_files
    outcome = run_surgery(capfd, "export", paths["good"], "-o", tmp_path / "out.onnx", *args)
    assert_one_line_error(outcome, says=says)
    assert list(tmp_path.iterdir()) == []


def _writers(onnx_path: Path, keras_path: Path, out: Path) -> dict[str, list]:
    """Each command that writes a model, aimed at `out` (its expected output name)."""
    return {
        "export": ["export", keras_path, "-o", out.with_suffix(".onnx")],
        "widen": ["widen", onnx_path, "-o", out.with_suffix(".onnx"), "--layer", "/fc1/Gemm=2"],
        "to-keras": ["to-keras", onnx_path, "-o", out.with_suffix(".keras")],
    }


@pytest.mark.parametrize("command", ["export", "widen", "to-keras"])
def test_existing_output_kept_without_force_replaced_with_it(onnx_files, keras_files, command, tmp_path, capfd):
    args = _writers(onnx_files[1]["good"], keras_files[1]["good"], tmp_path / "out")[command]
    target = Path(args[3])
    target.write_bytes(b"precious")
    assert_one_line_error(run_surgery(capfd, *args), names=target.name, says=("already exists", "--force"))
    assert target.read_bytes() == b"precious"
    outcome = run_surgery(capfd, *args, "--force")
    assert outcome.returncode == 0, outcome.stderr
    assert target.read_bytes() != b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left behind


@pytest.mark.parametrize("command", ["export", "widen", "to-keras"])
@pytest.mark.parametrize("where", ["missing-folder", "is-a-directory"])
def test_unwritable_destination(onnx_files, keras_files, command, where, tmp_path, capfd):
    base = tmp_path / "no-such-folder" / "out" if where == "missing-folder" else tmp_path / "out"
    args = _writers(onnx_files[1]["good"], keras_files[1]["good"], base)[command]
    if where == "is-a-directory":
        Path(args[3]).mkdir()
        args = [*args, "--force"]
    assert_one_line_error(run_surgery(capfd, *args))
    assert [p.name for p in tmp_path.iterdir()] == ([] if where == "missing-folder" else [Path(args[3]).name])


@pytest.mark.parametrize("command", ["export", "widen", "to-keras"])
def test_inputs_never_modified_by_a_successful_run(onnx_files, keras_files, command, tmp_path, capfd):
    folders = [onnx_files[0], keras_files[0]]
    before = [digest(folder) for folder in folders]
    outcome = run_surgery(capfd, *_writers(onnx_files[1]["good"], keras_files[1]["good"], tmp_path / "out")[command])
    assert outcome.returncode == 0, outcome.stderr
    assert [digest(folder) for folder in folders] == before


# --- widen requests


@pytest.mark.parametrize(
    "layers, says",
    [
        (["/fc1/Gem=2"], ("did you mean", "/fc1/Gemm")),  # unknown name: the closest names are suggested
        (["/fc1/Gemm=0"], ("/fc1/Gemm",)),
        (["/fc1/Gemm=-3"], ("/fc1/Gemm",)),
        (["/fc1/Gemm=two"], ("/fc1/Gemm=two",)),
        (["/fc1/Gemm"], ("/fc1/Gemm",)),
        (["/fc1/Gemm=2", "/fc1/Gemm=3"], ("/fc1/Gemm", "twice")),
        (["/fc2/Gemm=2"], ("--allow-output-change",)),  # the last layer feeds the graph output
    ],
    ids=["unknown-layer", "k-zero", "k-negative", "k-not-a-number", "no-k", "same-layer-twice", "output-layer"],
)
def test_widen_bad_requests(onnx_files, layers, says, tmp_path, capfd):
    _, paths = onnx_files
    plan = [arg for layer in layers for arg in ("--layer", layer)]
    outcome = run_surgery(capfd, "widen", paths["good"], "-o", tmp_path / "wide.onnx", *plan)
    assert_one_line_error(outcome, says=says)
    assert list(tmp_path.iterdir()) == []


def test_widen_same_layer_under_two_names(tmp_path, capfd):
    """A Keras layer name and its node name are one layer: asking for both is asking twice."""
    model = Path(__file__).resolve().parents[1] / "models" / "mlp.onnx"
    from surgery.layers import find_layers
    from surgery.modelio import load_model

    first = find_layers(load_model(model))[0]
    outcome = run_surgery(
        capfd, "widen", model, "-o", tmp_path / "wide.onnx", "--layer", f"{first.name}=2", "--layer", f"{first.node}=3"
    )
    assert_one_line_error(outcome, says=("twice",))
    assert list(tmp_path.iterdir()) == []


def test_widen_absurd_k_is_refused_before_allocating(onnx_files, tmp_path, capfd):
    _, paths = onnx_files
    tracemalloc.start()
    try:
        outcome = run_surgery(
            capfd, "widen", paths["good"], "-o", tmp_path / "wide.onnx", "--layer", f"/fc1/Gemm={10**12}"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_one_line_error(outcome, says=("/fc1/Gemm",))
    assert peak < 256 << 20, f"peak {peak / 2**20:.0f} MiB traced before refusing"
    assert list(tmp_path.iterdir()) == []


# --- to-keras requests


@pytest.mark.parametrize(
    "args, says",
    [
        (["--freeze", "nosuchlayer"], ("nosuchlayer",)),
        (["--reinit", "nosuchlayer"], ("nosuchlayer",)),
        (["--head", "0"], ("--head",)),
        (["--head", "-4"], ("--head",)),
    ],
    ids=["freeze-unknown", "reinit-unknown", "head-zero", "head-negative"],
)
def test_to_keras_bad_requests(onnx_files, args, says, tmp_path, capfd):
    _, paths = onnx_files
    outcome = run_surgery(capfd, "to-keras", paths["good"], "-o", tmp_path / "model.keras", *args)
    assert_one_line_error(outcome, says=says)
    assert list(tmp_path.iterdir()) == []


def test_validation_reports_every_problem_as_one_line():
    """The library-level check: each broken model of the table gives exactly the problem planted."""
    from surgery.validation import problems

    good = forms.pytorch_mlp()
    assert list(problems(good)) == []
    for form in (forms.pytorch_cnn(), forms.pytorch_mlp_bn(), forms.sklearn_mlp()):
        assert list(problems(form)) == []
    for name in (
        "undefined-tensor",
        "duplicate-initializer",
        "initializer-too-short",
        "opset-too-new",
        "unsupported-op-domain",
    ):
        found = list(problems(onnx.load_from_string(BAD_ONNX[name][0](good))))
        assert len(found) == 1 and "\n" not in found[0], found
        assert all(text in found[0] for text in BAD_ONNX[name][1]), found
