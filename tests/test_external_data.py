"""Models with external data: loading safely, reading only what is needed, streaming writes.

The model is a small MLP (4 × MatMul 384×384 + Add + Relu, about 2.4 MB of weights) whose
tensors are spread over three data files, the form large exported models take.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import assert_one_line_error, digest, run_cli
from onnx import TensorProto, helper

from surgery.errors import SurgeryError
from surgery.external import ConcatenatedTensor, concatenate
from surgery.layers import find_layers
from surgery.modelio import load_model, save_model

UNITS = 384
LAYERS = 4
FILES = 3


def build_external_mlp(folder: Path, *, seed: int = 0, locations: dict[str, str] | None = None) -> Path:
    """Write ``model.onnx`` whose tensors live in ``data0.bin`` … ``data2.bin`` (layer i → file i % 3).

    `locations` overrides the location written for a tensor (the data still goes to its file).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    offsets = [0] * FILES
    handles = [open(folder / f"data{i}.bin", "wb") for i in range(FILES)]
    initializers, nodes, source = [], [], "x"
    try:
        for i in range(LAYERS):
            arrays = {
                f"layer{i}.weight": rng.standard_normal((UNITS, UNITS), dtype=np.float32)
                * np.float32(np.sqrt(2 / UNITS)),
                f"layer{i}.bias": rng.standard_normal(UNITS, dtype=np.float32) * np.float32(0.1),
            }
            for name, array in arrays.items():
                file = i % FILES
                handles[file].write(array.tobytes())
                tensor = TensorProto(
                    name=name, data_type=TensorProto.FLOAT, dims=array.shape, data_location=TensorProto.EXTERNAL
                )
                location = (locations or {}).get(name, f"data{file}.bin")
                for key, value in (("location", location), ("offset", offsets[file]), ("length", array.nbytes)):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, str(value)
                offsets[file] += array.nbytes
                initializers.append(tensor)
            nodes += [
                helper.make_node("MatMul", [source, f"layer{i}.weight"], [f"layer{i}/mm"], name=f"layer{i}/MatMul"),
                helper.make_node("Add", [f"layer{i}/mm", f"layer{i}.bias"], [f"layer{i}/add"], name=f"layer{i}/Add"),
                helper.make_node("Relu", [f"layer{i}/add"], [f"layer{i}/out"], name=f"layer{i}/Relu"),
            ]
            source = f"layer{i}/out"
    finally:
        for handle in handles:
            handle.close()
    graph = helper.make_graph(
        nodes,
        "external_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", UNITS])],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["batch", UNITS])],
        initializers,
    )
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def external_entries(path: Path) -> dict[str, dict[str, str]]:
    proto = onnx.load(path, load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer}


def tensor_bytes(folder: Path, entry: dict[str, str]) -> bytes:
    with open(folder / entry["location"], "rb") as handle:
        handle.seek(int(entry.get("offset", 0)))
        return handle.read(int(entry["length"]))


def widen_by_hand(model: ir.Model, layer: int, added: int, seed: int = 0) -> ir.Model:
    """Layer `layer` gets `added` units with random fan-in, zero bias and zero fan-out (lazily)."""
    rng = np.random.default_rng(seed)
    weight = model.graph.initializers[f"layer{layer}.weight"]
    bias = model.graph.initializers[f"layer{layer}.bias"]
    after = model.graph.initializers[f"layer{layer + 1}.weight"]
    weight.const_value = concatenate(
        [weight.const_value, rng.standard_normal((UNITS, added)).astype(np.float32)], axis=1, name=weight.name
    )
    bias.const_value = concatenate([bias.const_value, np.zeros(added, np.float32)], axis=0, name=bias.name)
    after.const_value = concatenate([after.const_value, np.zeros((added, UNITS), np.float32)], axis=0, name=after.name)
    for value in (weight, bias, after):
        value.shape = value.const_value.shape  # onnx-ir keeps value.shape separately
    for node in model.graph:
        if node.name.startswith(f"layer{layer}/"):
            node.outputs[0].shape = None
    return model


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return build_external_mlp(tmp_path_factory.mktemp("external") / "model")


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((3, UNITS), dtype=np.float32)


def test_loading_and_layer_discovery_read_no_weight_data(source):
    model = load_model(source)
    layers = find_layers(model)
    assert [(layer.node, layer.width) for layer in layers] == [(f"layer{i}/MatMul", UNITS) for i in range(LAYERS)]
    tensors = [v.const_value for v in model.graph.initializers.values()]
    assert all(isinstance(t, ir.ExternalTensor) for t in tensors)
    assert all(t.raw is None for t in tensors), "a weight file was memory-mapped while only shapes were needed"


def test_inspect_and_verify_cli_on_external_data(source, cli, tmp_path):
    listed = cli("inspect", source, "--json")
    assert listed.returncode == 0, listed.stderr
    assert f'"width": {UNITS}' in listed.stdout
    copy = tmp_path / "copy"
    shutil.copytree(source.parent, copy)
    same = cli("verify", source, copy / "model.onnx", "--samples", "4", "--batch", "2", cwd=tmp_path)
    assert same.returncode == 0, same.stderr


def test_widen_cli_writes_a_self_contained_folder_and_copies_untouched_bytes(source, cli, tmp_path, x):
    before = digest(source.parent)
    out = tmp_path / "cli" / "wide.onnx"
    out.parent.mkdir()
    result = cli("widen", source, "-o", out, "--layer", "layer1/MatMul=24", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["wide.onnx", "wide.onnx.data"]
    assert digest(source.parent) == before, "the input was modified"
    entries, original = external_entries(out), external_entries(source)
    assert {e["location"] for e in entries.values()} == {"wide.onnx.data"}
    untouched = set(original) - {"layer1.weight", "layer1.bias", "layer2.weight"}
    for name in untouched:
        assert tensor_bytes(out.parent, entries[name]) == tensor_bytes(source.parent, original[name]), name
    moved = Path(shutil.move(str(out.parent), str(tmp_path / "moved")))
    assert np.array_equal(run(moved / "wide.onnx", x), run(source, x))
    assert cli("verify", source, moved / "wide.onnx", "--samples", "4", "--batch", "2").returncode == 0


def test_widen_cli_shares_external_data_beside_the_input(source, cli, tmp_path, x):
    folder = tmp_path / "side_by_side"
    shutil.copytree(source.parent, folder)
    result = cli(
        "widen",
        folder / "model.onnx",
        "-o",
        folder / "wide.onnx",
        "--layer",
        "layer2/MatMul=8",
        "--no-verify",
        "--share-external-data",
    )
    assert result.returncode == 0, result.stderr
    entries = external_entries(folder / "wide.onnx")
    assert {n for n, e in entries.items() if e["location"] == "wide.onnx.data"} == {
        "layer2.weight",
        "layer2.bias",
        "layer3.weight",
    }
    assert cli("verify", folder / "model.onnx", folder / "wide.onnx", "--samples", "4", "--batch", "2").returncode == 0
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    elsewhere = cli(
        "widen",
        folder / "model.onnx",
        "-o",
        sibling / "wide.onnx",
        "--layer",
        "layer2/MatMul=8",
        "--no-verify",
        "--share-external-data",
    )
    assert_one_line_error(elsewhere, says=("does not contain the input's data file",))
    assert list(sibling.iterdir()) == []


def test_streaming_write_is_self_contained_and_keeps_untouched_bytes(source, tmp_path, x):
    before = digest(source.parent)
    model = widen_by_hand(load_model(source), layer=1, added=32)
    out = tmp_path / "wide" / "wide.onnx"
    out.parent.mkdir()
    save_model(model, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["wide.onnx", "wide.onnx.data"]
    assert digest(source.parent) == before, "the input was modified"
    entries, original = external_entries(out), external_entries(source)
    assert {e["location"] for e in entries.values()} == {"wide.onnx.data"}
    changed = {"layer1.weight", "layer1.bias", "layer2.weight"}
    for name, entry in entries.items():
        if name not in changed:
            assert tensor_bytes(out.parent, entry) == tensor_bytes(source.parent, original[name]), name
        if int(entry["length"]) >= 64 * 1024:
            assert int(entry["offset"]) % 4096 == 0, name
    # Self-contained: the folder works from anywhere, and the widening preserved the function.
    moved = shutil.move(str(out.parent), str(tmp_path / "elsewhere"))
    assert np.array_equal(run(Path(moved) / "wide.onnx", x), run(source, x))
    widened = load_model(Path(moved) / "wide.onnx").graph.initializers["layer1.weight"].const_value.numpy()
    assert np.array_equal(
        widened[:, :UNITS], load_model(source).graph.initializers["layer1.weight"].const_value.numpy()
    )


def test_concatenated_tensor_streams_what_numpy_would_concatenate(source, tmp_path):
    model = load_model(source)
    old = model.graph.initializers["layer2.weight"]
    rng = np.random.default_rng(3)
    middle = rng.standard_normal((UNITS, 5)).astype(np.float32)
    # A slice, an inserted block, the rest: the layout of units added inside a Concat.
    lazy = ConcatenatedTensor([(old.const_value, 0, 100), middle, (old.const_value, 100, UNITS)], axis=1, name=old.name)
    expected = np.concatenate([old.const_value.numpy()[:, :100], middle, old.const_value.numpy()[:, 100:]], axis=1)
    old.const_value, old.shape = lazy, lazy.shape
    for node in model.graph:
        if node.name.startswith("layer2/"):
            node.outputs[0].shape = None
    out = tmp_path / "sliced.onnx"
    save_model(model, out)
    # ir.load, not load_model: this half-widened model's shapes disagree, which load_model refuses.
    written = ir.load(out).graph.initializers["layer2.weight"].const_value.numpy()
    assert written.shape == (UNITS, UNITS + 5)
    assert np.array_equal(written, expected)
    assert np.array_equal(lazy.numpy(), expected)


def test_shared_external_data_writes_only_changed_tensors(source, tmp_path, x):
    folder = tmp_path / "side_by_side"
    shutil.copytree(source.parent, folder)
    before = digest(folder)
    model = widen_by_hand(load_model(folder / "model.onnx"), layer=0, added=16)
    save_model(model, folder / "wide.onnx", share_external_data=True)
    entries = external_entries(folder / "wide.onnx")
    changed = {"layer0.weight", "layer0.bias", "layer1.weight"}
    assert {n for n, e in entries.items() if e.get("location") == "wide.onnx.data"} == changed
    assert all(e["location"].startswith("data") for n, e in entries.items() if n not in changed)
    assert (folder / "wide.onnx.data").stat().st_size < 2 * UNITS * (UNITS + 16) * 4 + 8192
    assert {k: v for k, v in digest(folder).items() if not k.startswith("wide")} == before
    assert np.array_equal(run(folder / "wide.onnx", x), run(source, x))


def test_shared_external_data_needs_the_input_folder(source, tmp_path):
    model = widen_by_hand(load_model(source), layer=0, added=4)
    with pytest.raises(SurgeryError, match="does not contain the input's data file"):
        save_model(model, tmp_path / "wide.onnx", share_external_data=True)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force_and_replaced_with_it(source, tmp_path, x):
    out = tmp_path / "wide.onnx"
    out.write_bytes(b"precious")
    model = widen_by_hand(load_model(source), layer=2, added=8)
    with pytest.raises(SurgeryError, match="already exists"):
        save_model(model, out)
    assert out.read_bytes() == b"precious" and not (tmp_path / "wide.onnx.data").exists()
    save_model(model, out, force=True)
    assert np.array_equal(run(out, x), run(source, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.onnx", "wide.onnx.data"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_no_partial_files(source, tmp_path, monkeypatch, failure):
    from surgery import external

    copies = []
    real_copy = external._Sink.copy

    def copy_then_fail(self, *args):
        copies.append(args)
        if len(copies) == 3:  # mid-way: after some tensors are already in the data file
            raise failure
        return real_copy(self, *args)

    monkeypatch.setattr(external._Sink, "copy", copy_then_fail)
    model = widen_by_hand(load_model(source), layer=1, added=8)
    with pytest.raises(type(failure)):
        save_model(model, tmp_path / "wide.onnx")
    assert len(copies) == 3
    assert list(tmp_path.iterdir()) == []
    # The model object is unchanged: it still writes correctly once the failure is gone.
    monkeypatch.undo()
    save_model(model, tmp_path / "wide.onnx")
    assert {e["location"] for e in external_entries(tmp_path / "wide.onnx").values()} == {"wide.onnx.data"}


def test_writes_are_deterministic(source, tmp_path):
    for name in ("a.onnx", "b.onnx"):
        save_model(widen_by_hand(load_model(source), layer=1, added=8, seed=5), tmp_path / name)
    assert (tmp_path / "a.onnx.data").read_bytes() == (tmp_path / "b.onnx.data").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes().replace(b"a.onnx.data", b"b.onnx.data") == (
        tmp_path / "b.onnx"
    ).read_bytes()


def test_inline_models_stay_inline(tmp_path):
    weight = helper.make_tensor("W", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "inline",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [weight],
    )
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    save_model(load_model(path), tmp_path / "copy.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.onnx", "small.onnx"]
    assert onnx.load(tmp_path / "copy.onnx").graph.initializer[0].data_location == TensorProto.DEFAULT


# --- hostile external-data locations -------------------------------------------------------------


def _hostile_model(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A model whose layer0.weight points outside its folder, at a FIFO: opening it would hang."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "secret.bin"
    os.mkfifo(target)
    folder = tmp_path / "model"
    if kind == "parent":
        path = build_external_mlp(folder, locations={"layer0.weight": "../outside/secret.bin"})
    elif kind == "absolute":
        path = build_external_mlp(folder, locations={"layer0.weight": str(target)})
    elif kind == "symlink":
        path = build_external_mlp(folder, locations={"layer0.weight": "link.bin"})
        (folder / "link.bin").symlink_to(target)
    elif kind == "hardlink":
        path = build_external_mlp(folder, locations={"layer0.weight": "hard.bin"})
        os.link(target, folder / "hard.bin")
    return path, target


@pytest.mark.parametrize(
    "kind, message",
    [
        ("parent", "outside the model's folder"),
        ("absolute", "outside the model's folder"),
        ("symlink", "symbolic link"),
        ("hardlink", "hard link"),
    ],
)
def test_external_data_outside_the_folder_is_refused_unopened(tmp_path, cli, kind, message):
    path, target = _hostile_model(tmp_path, kind)
    with pytest.raises(SurgeryError, match=message):
        load_model(path)
    for command in (["inspect", path], ["verify", path, path]):
        # A FIFO blocks whoever opens it: a timeout here means the target was opened.
        try:
            result = run_cli(*command, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command[0]} opened {target}")
        assert_one_line_error(result, says=(message,))


def test_symlink_swapped_in_after_loading_is_refused_by_the_writer(source, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(source.parent, folder)
    model = load_model(folder / "model.onnx")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * (4 << 20))
    os.utime(secret, (1_000_000, 2_000_000))  # atime older than mtime: relatime records any read
    (folder / "data1.bin").unlink()
    (folder / "data1.bin").symlink_to(secret)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SurgeryError, match="symbolic link"):
        save_model(model, out / "wide.onnx")
    assert list(out.iterdir()) == []
    assert secret.stat().st_atime == 1_000_000


@pytest.mark.skipif(os.environ.get("SURGERY_LARGE_TESTS") != "1", reason="set SURGERY_LARGE_TESTS=1 (writes ~600 MB)")
def test_peak_memory_of_widen_on_a_few_hundred_megabytes(tmp_path):
    """`surgery widen` of a 320 MB model stays under 256 MiB of peak RSS (the weights never all in memory)."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import large_widen

    folder = tmp_path / "model"
    folder.mkdir()
    model = large_widen.build_model(folder, large_widen.layer_size(0.3))
    out = tmp_path / "out"
    out.mkdir()
    result = large_widen.measure(
        [
            sys.executable,
            "-m",
            "surgery",
            "widen",
            str(model),
            "-o",
            str(out / "model.onnx"),
            "--layer",
            "layer3/MatMul=256",
            "--no-verify",
        ]
    )
    assert result["rss_kib"] < 256 * 1024, json.dumps(result)
    assert (out / "model.onnx.data").stat().st_size > 300e6
