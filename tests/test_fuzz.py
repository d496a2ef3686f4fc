"""Fuzzing: damaged models and random command lines end in success or the clean error path.

Each case takes a valid model (the exporters' forms from `forms.py`, a model exported from
Keras, a `.keras` file), damages its bytes (bit flips, truncation, splicing two models, inserted
or zeroed runs), picks a command with random arguments, and runs it in-process. Every outcome
must be either success (exit 0; a written model loads) or a deliberate error: exit 1 or 2 with
exactly one line on stderr, never "internal error" (exit 3), never a traceback, and nothing
left in the output folder.

In CI a bounded number of cases runs (`DEFAULT_CASES`, also cut off at `TIME_BUDGET_S`).
For a longer run: ``SURGERY_FUZZ_CASES=5000 pytest tests/test_fuzz.py`` (no time cut-off then);
``SURGERY_FUZZ_SEED`` picks another sequence. A failing case prints its seed and command line.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import forms
import onnx
import pytest
from conftest import run_surgery

MODELS = Path(__file__).resolve().parents[1] / "models"
DEFAULT_CASES = 2000
TIME_BUDGET_S = 40.0
CASES = int(os.environ.get("SURGERY_FUZZ_CASES", DEFAULT_CASES))
SEED = int(os.environ.get("SURGERY_FUZZ_SEED", 20261123))


# ---------------------------------------------------------------------------------------------
# Byte mutations


def flip_bits(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    return data[: rng.randrange(len(data))]


def splice(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    other = rng.choice(others)
    return data[: rng.randrange(len(data))] + other[rng.randrange(len(other)) :]


def insert_bytes(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    position = rng.randrange(len(data))
    noise = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 8, 64])))
    return data[:position] + noise + data[position:]


def zero_run(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    start = rng.randrange(len(data))
    stop = min(len(data), start + rng.choice([1, 4, 64, 1024]))
    return data[:start] + bytes(stop - start) + data[stop:]


def header_flip(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """Damage the first bytes, where protobuf keeps field tags and lengths of the outer message."""
    out = bytearray(data)
    out[rng.randrange(min(64, len(out)))] = rng.randrange(256)
    return bytes(out)


def edit_structure(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """Parse, change one field of the graph (names, types, dims, attributes, opsets, nodes), serialize.

    Byte damage mostly breaks the protobuf wire format; this reaches the checks behind parsing.
    """
    model = onnx.load_from_string(data)
    graph = model.graph
    node = rng.choice(graph.node)
    tensor = rng.choice(graph.initializer) if graph.initializer else None
    names = [n for other in graph.node for n in (*other.input, *other.output)] + [v.name for v in graph.input]
    edits = [
        lambda: (
            node.input.__setitem__(rng.randrange(len(node.input)), rng.choice(names + ["", "ghost"]))
            if node.input
            else None
        ),
        lambda: node.output.__setitem__(0, rng.choice(names)),
        lambda: setattr(
            node,
            "op_type",
            rng.choice(["Relu", "Gemm", "Conv", "Softmax", "LayerNormalization", "Frobnicate", "Identity"]),
        ),
        lambda: setattr(node, "domain", rng.choice(["", "ai.onnx.ml", "com.microsoft", "org.pwn"])),
        lambda: setattr(node, "name", rng.choice([n.name for n in graph.node] + ["", "a\nb"])),
        lambda: graph.node.remove(node),
        lambda: graph.node.append(onnx.NodeProto().__class__.FromString(node.SerializeToString())),
        lambda: node.attribute[0].__setattr__("i", rng.choice([-1, 0, 2, 10**9])) if node.attribute else None,
        lambda: setattr(tensor, "data_type", rng.choice([0, 2, 7, 8, 10, 21, 99])) if tensor else None,
        lambda: (
            tensor.dims.__setitem__(0, rng.choice([0, 1, -1, 3, 10**9])) if tensor is not None and tensor.dims else None
        ),
        lambda: graph.initializer.remove(tensor) if tensor is not None else None,
        lambda: setattr(model.opset_import[0], "version", rng.choice([1, 6, 7, 13, 26, 27, 1000])),
        lambda: setattr(rng.choice(graph.output), "name", rng.choice(names + ["ghost"])),
        lambda: (
            rng.choice(graph.input)
            .type.tensor_type.shape.dim[-1]
            .__setattr__("dim_value", rng.choice([0, 1, 7, 10**6]))
        ),
        lambda: setattr(rng.choice(graph.input).type.tensor_type, "elem_type", rng.choice([2, 7, 9, 10, 11])),
    ]
    rng.choice(edits)()
    return model.SerializeToString()


#: Weighted towards damage that still parses, which reaches deeper into the tool.
MUTATIONS = [
    flip_bits,
    flip_bits,
    zero_run,
    header_flip,
    truncate,
    splice,
    insert_bytes,
    edit_structure,
    edit_structure,
    edit_structure,
]


# ---------------------------------------------------------------------------------------------
# Random command lines


def layer_names(proto_bytes: bytes) -> list[str]:
    """Names `widen`/`to-keras` accept on the valid model (layer and node names), plus other nodes'."""
    from surgery.graph import as_ir
    from surgery.layers import find_layers

    proto = onnx.load_from_string(proto_bytes)
    layers = find_layers(as_ir(proto))
    return (
        [layer.name for layer in layers]
        + [layer.node for layer in layers]
        + [node.name for node in proto.graph.node[:3] if node.name]
    )


def random_command(rng: random.Random, model: Path, intact: Path, names: list[str], out: Path) -> list:
    name = (
        rng.choice(names)
        if rng.random() < 0.8
        else rng.choice(["", "nosuch", "dense_1", "hidden1", "fc1", "/fc1/Gemm\nx"])
    )
    k = rng.choice([1, 2, 3, 8]) if rng.random() < 0.85 else rng.choice([0, -1, 10**12])
    command = rng.choice(["inspect", "inspect", "verify", "verify", "widen", "widen", "widen", "to-keras"])
    if command == "inspect":
        args = ["inspect", model]
        if rng.random() < 0.5:
            args.append("--json")
        if rng.random() < 0.3:
            args += ["--symmetry", name]
        return args
    if command == "verify":
        args = [
            "verify",
            *rng.sample([model, intact], 2),
            "--samples",
            rng.choice([1, 4, 8]),
            "--batch",
            rng.choice([1, 4]),
        ]
        args += rng.choice(
            [[], ["--atol", "1e-5"], ["--locate"], ["--optimization", "all"], ["--dim", "batch=3"], ["--json", "-"]]
        )
        return args
    if command == "widen":
        args = ["widen", model, "-o", out / "wide.onnx"]
        for _ in range(rng.choice([1, 1, 1, 2])):
            args += ["--layer", f"{rng.choice(names + [name])}={k}"]
        args += rng.choice(
            [
                [],
                [],
                ["--init", "all-zero"],
                ["--init", "net2net"],
                ["--init", "all-random", "--no-verify"],
                ["--allow-output-change"],
                ["--fan-in", "he", "--seed", rng.randrange(100)],
                ["--align", rng.choice([1, 8, 16])],
            ]
        )
        return args
    args = ["to-keras", model, "-o", out / "model.keras"]
    args += rng.choice([[], ["--freeze", name], ["--reinit", name], ["--head", rng.choice([1, 3, 0])]])
    return args


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """Valid models to damage: the exporters' forms and a model exported from Keras."""
    return {
        "pytorch_mlp": forms.pytorch_mlp().SerializeToString(),
        "pytorch_mlp_bn": forms.pytorch_mlp_bn().SerializeToString(),
        "pytorch_cnn": forms.pytorch_cnn().SerializeToString(),
        "sklearn_mlp": forms.sklearn_mlp().SerializeToString(),
        "keras_mlp": (MODELS / "mlp.onnx").read_bytes(),
    }


def _check(outcome, out: Path, case: str) -> str | None:
    """None when `outcome` is success or the clean error path, else what went wrong."""
    if "Traceback" in outcome.stderr:
        return f"{case}: traceback: {outcome.stderr[-800:]}"
    if outcome.returncode == 0:
        for written in out.iterdir():
            if written.suffix == ".onnx":
                try:
                    onnx.checker.check_model(onnx.load(written))
                except Exception as error:  # noqa: BLE001 - any failure is the finding
                    return f"{case}: wrote an invalid model: {error}"
        return None
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if outcome.returncode not in (1, 2):
        return f"{case}: exit {outcome.returncode}: {outcome.stderr.strip()[:500]}"
    if len(lines) != 1 or not lines[0].startswith("surgery: "):
        return f"{case}: exit {outcome.returncode} with {len(lines)} stderr lines: {outcome.stderr[:500]!r}"
    left = [p.name for p in out.iterdir()]
    if left:
        return f"{case}: failed ({lines[0]}) but left {left}"
    return None


def test_fuzz_models_and_command_lines(seeds, tmp_path, capfd):
    rng = random.Random(SEED)
    names = {key: layer_names(data) for key, data in seeds.items()}
    intact = {}
    for key, data in seeds.items():
        intact[key] = tmp_path / f"{key}.onnx"
        intact[key].write_bytes(data)
    failures: list[str] = []
    outcomes: dict[int, int] = {}
    began = time.monotonic()
    bounded = "SURGERY_FUZZ_CASES" not in os.environ
    for index in range(CASES):
        if bounded and time.monotonic() - began > TIME_BUDGET_S:
            break
        case_rng = random.Random(rng.getrandbits(64))
        key = case_rng.choice(list(seeds))
        mutation = case_rng.choice(MUTATIONS) if case_rng.random() < 0.85 else None
        data = seeds[key] if mutation is None else mutation(case_rng, seeds[key], list(seeds.values()))
        folder = tmp_path / f"case{index}"
        out = folder / "out"
        out.mkdir(parents=True)
        model = folder / "model.onnx"
        model.write_bytes(data)
        args = random_command(case_rng, model, intact[key], names[key], out)
        case = f"case {index} (SURGERY_FUZZ_SEED={SEED}; {key}, {mutation.__name__ if mutation else 'intact'}): surgery {' '.join(map(str, args))}"
        outcome = run_surgery(capfd, *args)
        outcomes[outcome.returncode] = outcomes.get(outcome.returncode, 0) + 1
        problem = _check(outcome, out, case)
        if problem:
            failures.append(problem)
    assert not failures, f"{len(failures)} bad outcomes, first ones:\n" + "\n".join(failures[:10])
    ran = sum(outcomes.values())
    assert ran >= min(CASES, 50), f"only {ran} cases ran in {TIME_BUDGET_S} s"
    assert outcomes.get(0, 0) and outcomes.get(2, 0), f"the fuzzer hit only {outcomes}: not a useful mix"


def test_fuzz_keras_files_for_export(tmp_path, capfd):
    """Damaged .keras archives for `export`: Keras's loader behind safe mode, one-line errors."""
    rng = random.Random(SEED + 1)
    original = (MODELS / "mlp.keras").read_bytes()
    cases = max(6, CASES // 25)
    failures = []
    byte_mutations = [mutation for mutation in MUTATIONS if mutation is not edit_structure]
    for index in range(cases):
        mutation = rng.choice(byte_mutations)
        folder = tmp_path / f"case{index}"
        out = folder / "out"
        out.mkdir(parents=True)
        model = folder / "model.keras"
        model.write_bytes(mutation(rng, original, [original]))
        args = ["export", model, "-o", out / "model.onnx"]
        problem = _check(
            run_surgery(capfd, *args),
            out,
            f"keras case {index} ({mutation.__name__}): surgery {' '.join(map(str, args))}",
        )
        if problem:
            failures.append(problem)
    assert not failures, "\n".join(failures[:10])


# ---------------------------------------------------------------------------------------------
# Random requests: flags, dimensions, tolerances and output paths on intact models

REQUEST_TIME_BUDGET_S = 30.0


def request_folder(folder: Path) -> dict[str, Path]:
    """An intact model beside every kind of file a careless output path could hit.

    `ext.onnx` keeps its weights in `ext.onnx.data`-like files of other names (one of them named
    like an output a command would write), `link.onnx` is a link to the input, `null.onnx` a link
    to /dev/null, `fifo.onnx` a FIFO, `dir.onnx` a directory, `old.onnx`/`old.json` existing files.
    """
    from test_external_data import build_external_mlp

    folder.mkdir(parents=True)
    model = folder / "m.onnx"
    model.write_bytes(forms.pytorch_mlp().SerializeToString())
    ext = build_external_mlp(folder / "ext")
    (folder / "link.onnx").symlink_to(model)
    (folder / "null.onnx").symlink_to("/dev/null")
    os.mkfifo(folder / "fifo.onnx")
    (folder / "dir.onnx").mkdir()
    (folder / "old.onnx").write_bytes(b"old model")
    (folder / "old.json").write_text("{}")
    import numpy as np

    np.savez(folder / "good.npz", input=np.zeros((3, 20), dtype=np.float32))
    np.savez(folder / "empty.npz", input=np.zeros((0, 20), dtype=np.float32))
    np.save(folder / "x.npy", np.zeros(3))
    (folder / "text.npz").write_text("not an archive")
    return {"m": model, "ext": ext}


def random_request(rng: random.Random, folder: Path, models: dict[str, Path]) -> list:
    key = rng.choice(["m", "m", "ext"])
    model = models[key]
    names = {"m": ["/fc1/Gemm", "/fc2/Gemm"], "ext": ["layer0/MatMul", "layer1/MatMul"]}[key]
    outputs = [
        "new.onnx",
        "new.keras",
        "m.onnx",
        "link.onnx",
        "null.onnx",
        "fifo.onnx",
        "dir.onnx",
        "old.onnx",
        "missing/x.onnx",
        "ext/data0.bin",
        "ext/model.onnx",
        "ext/new.onnx",
        "/dev/null",
    ]
    values = ["-1", "0", "1", "3", "x", "", "inf", "nan", "1e-5", "100000000000000"]
    verification = []
    for _ in range(rng.choice([0, 1, 2])):
        verification += rng.choice(
            [
                ["--dim", f"{rng.choice(['batch', 'sequence', 'nosuch', '', 'unk__0'])}={rng.choice(values)}"],
                ["--samples", rng.choice(values[:-1])],  # a huge sample count is a long run, not an error
                [
                    "--inputs",
                    folder / rng.choice(["good.npz", "empty.npz", "x.npy", "text.npz", "nosuch.npz", "dir.onnx"]),
                ],
            ]
        )
    command = rng.choice(["widen", "widen", "verify", "export"])
    if command == "widen":
        output = folder / rng.choice(outputs)
        args = ["widen", model, "-o", output, "--layer", f"{rng.choice(names)}={rng.choice(['1', '2', '0', 'x'])}"]
        args += rng.choice(
            [
                [],
                ["--force"],
                ["--force", "--share-external-data"],
                ["--share-external-data"],
                ["--no-verify", "--force"],
                ["--allow-output-change"],
            ]
        )
        return args + verification
    if command == "verify":
        args = ["verify", model, model, *verification]
        for _ in range(rng.choice([0, 1, 2])):
            reports = ["old.json", "new.json", "fifo.onnx", "null.onnx", "m.onnx"]
            args += rng.choice(
                [
                    ["--atol", rng.choice(values)],
                    ["--rtol", rng.choice(values)],
                    ["--batch", rng.choice(values)],
                    ["--json", folder / rng.choice(reports)],
                    ["--force"],
                    ["--provider", rng.choice(["cpu", "gpu"])],
                ]
            )
        return args
    # export: only outputs that must be refused before Keras is loaded (a success would import TensorFlow)
    output = folder / rng.choice(["m.onnx", "link.onnx", "null.onnx", "fifo.onnx", "dir.onnx", "old.onnx", "new.keras"])
    return ["export", MODELS / "mlp.keras", "-o", output, *rng.choice([[], ["--force"]])]


def entries(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every file under `folder`: its type and, for a regular file, its bytes (links are not followed)."""
    import stat

    found = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        found[str(path.relative_to(folder))] = (stat.S_IFMT(mode), path.read_bytes() if stat.S_ISREG(mode) else None)
    return found


def test_fuzz_requests_never_damage_a_file(tmp_path, capfd):
    """Random flags and output paths on intact models: success or one line, and no file but the
    named output (and its data file) ever changes; the inputs never do."""
    rng = random.Random(SEED + 2)
    folder = tmp_path / "work"
    models = request_folder(folder)
    failures: list[str] = []
    outcomes: dict[int, int] = {}
    began = time.monotonic()
    bounded = "SURGERY_FUZZ_CASES" not in os.environ
    for index in range(CASES):
        if bounded and time.monotonic() - began > REQUEST_TIME_BUDGET_S:
            break
        args = random_request(random.Random(rng.getrandbits(64)), folder, models)
        case = f"request {index} (SURGERY_FUZZ_SEED={SEED}): surgery {' '.join(map(str, args))}"
        before = entries(folder)
        outcome = run_surgery(capfd, *args)
        outcomes[outcome.returncode] = outcomes.get(outcome.returncode, 0) + 1
        after = entries(folder)
        if "Traceback" in outcome.stderr or outcome.returncode not in (0, 1, 2):
            failures.append(f"{case}: exit {outcome.returncode}: {outcome.stderr[-500:]}")
            continue
        lines = [line for line in outcome.stderr.splitlines() if line.strip()]
        if outcome.returncode and (len(lines) != 1 or not lines[0].startswith("surgery: ")):
            failures.append(f"{case}: exit {outcome.returncode} with stderr {outcome.stderr[:500]!r}")
        written = set()
        if outcome.returncode == 0 and "-o" in args:
            output = Path(args[args.index("-o") + 1]).relative_to(folder)
            written = {str(output), f"{output}.data"}
        if outcome.returncode == 0 and "--json" in args:
            written.add(str(Path(args[args.index("--json") + 1]).relative_to(folder)))
        changed = sorted(
            name for name in before.keys() | after.keys() if before.get(name) != after.get(name) and name not in written
        )
        if changed:
            failures.append(f"{case}: exit {outcome.returncode} changed {changed}")
        for name in written - {str(models["m"].relative_to(folder))}:  # restore the scene for the next case
            path = folder / name
            if name not in before and path.is_file():
                path.unlink()
            elif name in before and before[name][1] is not None and after.get(name) != before[name]:
                path.write_bytes(before[name][1])
    assert not failures, f"{len(failures)} bad outcomes, first ones:\n" + "\n".join(failures[:10])
    assert sum(outcomes.values()) >= min(CASES, 8) and outcomes.get(0) and outcomes.get(2), outcomes
