"""`surgery to-keras` as users run it: a subprocess, real files, exit codes and one-line errors."""

from __future__ import annotations

import forms
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("to_keras_cli")
    paths = {}
    for name, build in (("mlp", forms.pytorch_mlp), ("convnet", forms.pytorch_convnet), ("sklearn", forms.sklearn_mlp)):
        paths[name] = folder / f"{name}.onnx"
        onnx.save(build(), paths[name])
    unsupported = forms.pytorch_mlp()
    unsupported.graph.node[
        1
    ].op_type = "Acos"  # still a valid graph: Acos is an elementwise float op with no Keras rule
    paths["unsupported"] = folder / "unsupported.onnx"
    onnx.save(unsupported, paths["unsupported"])
    return folder, paths


def test_converts_reports_faithfulness_and_writes_a_loadable_file(cli, files):
    folder, paths = files
    out = folder / "convnet.keras"
    result = cli("to-keras", paths["convnet"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert "faithfulness: max |keras - onnxruntime|" in result.stdout and f"wrote {out}" in result.stdout
    assert result.stderr == ""
    from surgery.tensorflow_runtime import import_tensorflow

    import_tensorflow()
    import keras

    from surgery.onnx_to_keras import check_faithful

    loaded = keras.models.load_model(out, safe_mode=True, compile=False)
    assert check_faithful(loaded, onnx.load(paths["convnet"])) <= 1e-5
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_transfer_flags_accept_repeats_and_comma_lists(cli, files):
    folder, paths = files
    out = folder / "transfer.keras"
    result = cli(
        "to-keras",
        paths["convnet"],
        "-o",
        out,
        "--freeze",
        "conv1,bn1",
        "--freeze",
        "act1",
        "--reinit",
        "conv2",
        "--head",
        "3",
    )
    assert result.returncode == 0, result.stderr
    assert "faithfulness check skipped: --reinit and --head" in result.stdout
    assert "frozen: conv1, bn1, act1" in result.stdout
    import keras

    loaded = keras.models.load_model(out, safe_mode=True, compile=False)
    assert loaded.get_layer("fc2").units == 3 and not loaded.get_layer("conv1").trainable
    assert loaded.predict(np.zeros((2, 2, 9, 9), np.float32), verbose=0)[0].shape == (2, 3)


def test_sklearn_label_output_note(cli, files):
    folder, paths = files
    result = cli("to-keras", paths["sklearn"], "-o", folder / "sklearn.keras")
    assert result.returncode == 0, result.stderr
    assert "note: output 'label'" in result.stdout


def test_unsupported_op_is_one_line_exit_2_and_writes_nothing(cli, files):
    folder, paths = files
    out = folder / "unsupported.keras"
    result = cli("to-keras", paths["unsupported"], "-o", out)
    assert_one_line_error(result, says=("unsupported op Acos at node '/relu/Relu'",))
    assert result.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--freeze", "fc3"), "--freeze fc3: no such layer; did you mean fc"),
        (("--head", "0"), "--head must be at least 1"),
    ],
)
def test_bad_requests_are_one_line_errors(cli, files, args, message):
    folder, paths = files
    out = folder / "bad.keras"
    result = cli("to-keras", paths["mlp"], "-o", out, *args)
    assert_one_line_error(result, says=(message,))
    assert result.stderr.count("\n") == 1
    assert not out.exists()


def test_refuses_a_non_keras_suffix_and_an_existing_file(cli, files):
    folder, paths = files
    assert_one_line_error(cli("to-keras", paths["mlp"], "-o", folder / "model.h5"), says=(".keras",))
    existing = folder / "existing.keras"
    existing.write_text("keep me")
    assert_one_line_error(cli("to-keras", paths["mlp"], "-o", existing), says=("--force",))
    assert existing.read_text() == "keep me"
    assert cli("to-keras", paths["mlp"], "-o", existing, "--force").returncode == 0
    assert existing.stat().st_size > 100


def test_external_data_model_converts_from_another_directory(cli, tmp_path):
    model_dir, elsewhere = tmp_path / "ext", tmp_path / "elsewhere"
    model_dir.mkdir()
    elsewhere.mkdir()
    onnx.save(
        forms.pytorch_convnet(),
        model_dir / "m.onnx",
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    result = cli("to-keras", "../ext/m.onnx", "-o", "out.keras", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "faithfulness" in result.stdout and (elsewhere / "out.keras").is_file()
