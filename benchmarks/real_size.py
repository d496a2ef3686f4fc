"""Real-size transformers: `inspect`, `widen` and `verify` against the plainest baseline process.

Builds two exports with `onnx.helper`, in the forms PyTorch's classic exporter writes
(/work/shared/exporter-forms.md; every parameter random, none shared):

- **GPT-2 small** (`gpt2_model`): 12 blocks, d=768, 12 heads, vocabulary 50,257, context 1,024;
  124M parameters plus the untied `lm_head` copy, about 652 MB inline. Conv1D as
  `Reshape → Gemm → Reshape` with runtime-shape targets, fused QKV `Gemm` + `Split`, tanh-GELU
  with `Pow`, `LayerNormalization`, the causal mask built from shapes (`Trilu`, `Equal`, `Where`).
- **Llama** of the same size (`llama_model`): 12 blocks, d=768, SwiGLU width 2,048, vocabulary
  32,000; about 537 MB. RMSNorm decomposed, rotary embeddings, separate Q/K/V `MatMul` on 3-D.

Then measures, median of ``--repeats`` runs, each command interleaved with its baseline and every
run a fresh process (wall time, and peak RSS from ``resource.getrusage(RUSAGE_CHILDREN)``):

| command | baseline process |
|---|---|
| ``surgery inspect --json`` | ``onnx.load`` |
| ``surgery widen`` one feed-forward ``--no-verify`` | ``onnx.load`` + ``onnx.save`` |
| ``surgery widen`` every block's feed-forward ``--no-verify`` | ``onnx.load`` + ``onnx.save`` |
| ``surgery verify A B`` (16 samples) | two onnxruntime sessions (optimizations off) in turn, same batches |

Widening adds ``--added`` units to the feed-forward of block 0, then of every block (one glob):
GPT-2's ``c_fc`` (its Conv1D and tanh-GELU), Llama's ``gate_proj`` (``up_proj`` grows with it).

Usage::

    python benchmarks/real_size.py                      # builds both into /tmp/surgery-real-size
    python benchmarks/real_size.py --repeats 5 --keep   # keep the models for another run
    python benchmarks/real_size.py --gpt2 my.onnx       # measure inspect on an existing export
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
INT64_MAX = np.iinfo(np.int64).max

# Runs argv[1:]; prints wall time and the child's peak RSS (KiB on Linux) as JSON.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
if done.returncode:
    sys.exit(f"{sys.argv[1:]} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
print(json.dumps({"wall": wall, "rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

_LOAD = "import onnx, sys; onnx.load(sys.argv[1])"
_LOAD_SAVE = "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
# Two sessions in turn, as `surgery verify` runs them, on the same batches (optimizations off).
_TWO_SESSIONS = """
import sys, numpy as np, onnxruntime as ort
batch, seq, samples = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
feeds = [rng.integers(0, 10, (batch, seq)).astype(np.int64) for _ in range(samples // batch)]
outputs = []
for path in sys.argv[1:3]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs.append([session.run(None, {name: ids}) for ids in feeds])
    del session
"""


class _Graph:
    """Nodes and initializers with PyTorch's naming: node ``/scope/Op_k``, output ``/scope/Op_k_output_0``."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._counts: dict[str, int] = {}
        self._matmul_ids = 100

    def node(self, scope: str, op: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        key = f"{scope}/{op}"
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        name = f"{key}_{count}" if count else key
        names = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, scope: str, array) -> str:
        """A `Constant` node, as the classic exporter writes scalars and shape pieces."""
        return self.node(scope, "Constant", [], value=numpy_helper.from_array(np.asarray(array)))

    def weight(self, name: str | None, shape: tuple[int, ...], scale: float = 0.02, around: float = 0.0) -> str:
        """A random float32 initializer; `name` None gives PyTorch's ``onnx::MatMul_N``."""
        if name is None:
            name, self._matmul_ids = f"onnx::MatMul_{self._matmul_ids}", self._matmul_ids + 1
        values = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale) + np.float32(around)
        self.inits.append(numpy_helper.from_array(values, name))
        return name

    def dim(self, scope: str, x: str, index: int) -> str:
        """``x.shape[index]`` as a 1-D tensor: Shape → Gather → Unsqueeze."""
        shape = self.node(scope, "Shape", [x])
        scalar = self.node(scope, "Gather", [shape, self.const(scope, np.int64(index))], axis=0)
        return self.node(scope, "Unsqueeze", [scalar, self.const(scope, np.array([0], np.int64))])


def _causal_mask(g: _Graph, scope: str, ids: str) -> str:
    """``Where(Trilu(ones[S, S]) == 0, -inf, 0)`` from the input's runtime shape."""
    seq = g.dim(scope, ids, 1)
    square = g.node(scope, "Concat", [seq, seq], axis=0)
    ones = g.node(scope, "ConstantOfShape", [square], value=numpy_helper.from_array(np.array([1], np.float32)))
    lower = g.node(scope, "Trilu", [ones], upper=0)
    masked = g.node(scope, "Equal", [lower, g.const(scope, np.float32(0))])
    return g.node(scope, "Where", [masked, g.const(scope, np.float32(-np.inf)), g.const(scope, np.float32(0))])


def _conv1d(g: _Graph, scope: str, x: str, module: str, d_in: int, d_out: int) -> str:
    """GPT-2's Conv1D: Reshape to ``[-1, D]`` (D read at run time), Gemm ``[in, out]``, Reshape back."""
    shape = g.node(scope, "Shape", [x])
    last = g.node(
        scope,
        "Slice",
        [shape, g.const(scope, np.array([-1], np.int64)), g.const(scope, np.array([INT64_MAX], np.int64))],
    )
    squeezed = g.node(scope, "Squeeze", [last])
    d = g.node(scope, "Unsqueeze", [squeezed, g.const(scope, np.array([0], np.int64))])
    flat = g.node(scope, "Reshape", [x, g.node(scope, "Concat", [g.const(scope, np.array([-1], np.int64)), d], axis=0)])
    weight = g.weight(f"{module}.weight", (d_in, d_out))
    bias = g.weight(f"{module}.bias", (d_out,))
    y = g.node(scope, "Gemm", [flat, weight, bias], alpha=1.0, beta=1.0)
    target = g.node(
        scope, "Concat", [g.dim(scope, x, 0), g.dim(scope, x, 1), g.const(scope, np.array([d_out], np.int64))], axis=0
    )
    return g.node(scope, "Reshape", [y, target])


def _heads(g: _Graph, scope: str, x: str, head_dim: int, perm: list[int]) -> str:
    """``x.view(B, S, -1, dh).permute(perm)``."""
    target = g.node(
        scope,
        "Concat",
        [
            g.dim(scope, x, 0),
            g.dim(scope, x, 1),
            g.const(scope, np.array([-1], np.int64)),
            g.const(scope, np.array([head_dim], np.int64)),
        ],
        axis=0,
    )
    return g.node(scope, "Transpose", [g.node(scope, "Reshape", [x, target])], perm=perm)


def _merge_heads(g: _Graph, scope: str, x: str, like: str) -> str:
    """``x.transpose(1, 2).reshape(B, S, -1)`` with B, S read from `like`."""
    moved = g.node(scope, "Transpose", [x], perm=[0, 2, 1, 3])
    target = g.node(
        scope,
        "Concat",
        [g.dim(scope, like, 0), g.dim(scope, like, 1), g.const(scope, np.array([-1], np.int64))],
        axis=0,
    )
    return g.node(scope, "Reshape", [moved, target])


def _model(g: _Graph, ids: str, logits: str, vocab: int, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", "sequence", vocab])],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch", producer_version="2.13.0"
    )
    model.ir_version = 8
    return model


def gpt2_model(
    layers: int = 12, d: int = 768, heads: int = 12, vocab: int = 50257, context: int = 1024, seed: int = 0
) -> onnx.ModelProto:
    """GPT-2 (sdpa attention) as PyTorch's classic exporter writes it; see the module docstring."""
    g = _Graph(seed)
    dh = d // heads
    ids = "input_ids"
    tokens = g.node("/transformer/wte", "Gather", [g.weight("transformer.wte.weight", (vocab, d)), ids], axis=0)
    seq = g.node(
        "/transformer", "Gather", [g.node("/transformer", "Shape", [ids]), g.const("/transformer", np.int64(1))], axis=0
    )
    positions = g.node(
        "/transformer", "Range", [g.const("/transformer", np.int64(0)), seq, g.const("/transformer", np.int64(1))]
    )
    positions = g.node("/transformer", "Unsqueeze", [positions, g.const("/transformer", np.array([0], np.int64))])
    h = g.node(
        "/transformer",
        "Add",
        [
            tokens,
            g.node("/transformer/wpe", "Gather", [g.weight("transformer.wpe.weight", (context, d)), positions], axis=0),
        ],
    )
    quarter = np.float32(dh**-0.25)
    for i in range(layers):
        block, module = f"/transformer/h.{i}", f"transformer.h.{i}"
        ln = g.node(
            f"{block}/ln_1",
            "LayerNormalization",
            [h, g.weight(f"{module}.ln_1.weight", (d,), 0.1, 1.0), g.weight(f"{module}.ln_1.bias", (d,))],
            axis=-1,
            epsilon=1e-5,
        )
        qkv = _conv1d(g, f"{block}/attn/c_attn", ln, f"{module}.attn.c_attn", d, 3 * d)
        attn = f"{block}/attn"
        q, k, v = g.node(attn, "Split", [qkv, g.const(attn, np.array([d, d, d], np.int64))], outputs=3, axis=2)
        q = g.node(attn, "Mul", [_heads(g, attn, q, dh, [0, 2, 1, 3]), g.const(attn, quarter)])
        k = g.node(attn, "Mul", [_heads(g, attn, k, dh, [0, 2, 3, 1]), g.const(attn, quarter)])
        v = _heads(g, attn, v, dh, [0, 2, 1, 3])
        scores = g.node(attn, "Add", [g.node(attn, "MatMul", [q, k]), _causal_mask(g, attn, ids)])
        context_ = g.node(attn, "MatMul", [g.node(attn, "Softmax", [scores], axis=-1), v])
        merged = _merge_heads(g, attn, context_, ln)
        h = g.node(block, "Add", [h, _conv1d(g, f"{attn}/c_proj", merged, f"{module}.attn.c_proj", d, d)])
        ln = g.node(
            f"{block}/ln_2",
            "LayerNormalization",
            [h, g.weight(f"{module}.ln_2.weight", (d,), 0.1, 1.0), g.weight(f"{module}.ln_2.bias", (d,))],
            axis=-1,
            epsilon=1e-5,
        )
        mlp = f"{block}/mlp"
        x = _conv1d(g, f"{mlp}/c_fc", ln, f"{module}.mlp.c_fc", d, 4 * d)
        act = f"{mlp}/act"  # gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        cube = g.node(
            act, "Mul", [g.const(act, np.float32(0.044715)), g.node(act, "Pow", [x, g.const(act, np.float32(3))])]
        )
        inner = g.node(act, "Mul", [g.const(act, np.float32(math.sqrt(2 / math.pi))), g.node(act, "Add", [x, cube])])
        one_plus = g.node(act, "Add", [g.const(act, np.float32(1)), g.node(act, "Tanh", [inner])])
        gelu = g.node(act, "Mul", [g.node(act, "Mul", [g.const(act, np.float32(0.5)), x]), one_plus])
        h = g.node(block, "Add", [h, _conv1d(g, f"{mlp}/c_proj", gelu, f"{module}.mlp.c_proj", 4 * d, d)])
    ln = g.node(
        "/transformer/ln_f",
        "LayerNormalization",
        [h, g.weight("transformer.ln_f.weight", (d,), 0.1, 1.0), g.weight("transformer.ln_f.bias", (d,))],
        axis=-1,
        epsilon=1e-5,
    )
    g.nodes.append(helper.make_node("MatMul", [ln, g.weight(None, (d, vocab))], ["logits"], name="/lm_head/MatMul"))
    return _model(g, ids, "logits", vocab, "main_graph")


def _rms_norm(g: _Graph, scope: str, x: str, weight: str, d: int) -> str:
    """Llama's RMSNorm, decomposed: ``w · x / √(mean(x²) + ε)``."""
    square = g.node(scope, "Pow", [x, g.const(scope, np.float32(2))])
    mean = g.node(scope, "ReduceMean", [square], axes=[-1], keepdims=1)
    root = g.node(scope, "Sqrt", [g.node(scope, "Add", [mean, g.const(scope, np.float32(1e-6))])])
    normed = g.node(scope, "Mul", [x, g.node(scope, "Reciprocal", [root])])
    return g.node(scope, "Mul", [g.weight(weight, (d,), 0.1, 1.0), normed])


def _rotate(g: _Graph, scope: str, x: str, cos: str, sin: str, half: int) -> str:
    """``x·cos + rotate_half(x)·sin`` with ``rotate_half(x) = concat(-x[..., h:], x[..., :h])``."""
    axes = g.const(scope, np.array([3], np.int64))
    first = g.node(
        scope, "Slice", [x, g.const(scope, np.array([0], np.int64)), g.const(scope, np.array([half], np.int64)), axes]
    )
    second = g.node(
        scope,
        "Slice",
        [x, g.const(scope, np.array([half], np.int64)), g.const(scope, np.array([INT64_MAX], np.int64)), axes],
    )
    rotated = g.node(scope, "Concat", [g.node(scope, "Neg", [second]), first], axis=-1)
    return g.node(scope, "Add", [g.node(scope, "Mul", [x, cos]), g.node(scope, "Mul", [rotated, sin])])


def llama_model(
    layers: int = 12, d: int = 768, heads: int = 12, ffn: int = 2048, vocab: int = 32000, seed: int = 1
) -> onnx.ModelProto:
    """Llama (eager attention) as PyTorch's classic exporter writes it; see the module docstring."""
    g = _Graph(seed)
    dh = d // heads
    ids = "input_ids"
    h = g.node("/model/embed_tokens", "Gather", [g.weight("model.embed_tokens.weight", (vocab, d)), ids], axis=0)
    rotary = "/model/rotary_emb"
    seq = g.node(rotary, "Gather", [g.node(rotary, "Shape", [ids]), g.const(rotary, np.int64(1))], axis=0)
    positions = g.node(
        rotary,
        "Cast",
        [g.node(rotary, "Range", [g.const(rotary, np.int64(0)), seq, g.const(rotary, np.int64(1))])],
        to=TensorProto.FLOAT,
    )
    positions = g.node(rotary, "Unsqueeze", [positions, g.const(rotary, np.array([0, 1], np.int64))])  # [1, 1, S]
    inv_freq = (1.0 / 10000 ** (np.arange(0, dh, 2, dtype=np.float32) / dh)).astype(np.float32).reshape(1, dh // 2, 1)
    freqs = g.node(rotary, "MatMul", [g.const(rotary, inv_freq), positions])
    freqs = g.node(rotary, "Transpose", [freqs], perm=[0, 2, 1])
    angles = g.node(rotary, "Concat", [freqs, freqs], axis=-1)
    cos, sin = g.node(rotary, "Cos", [angles]), g.node(rotary, "Sin", [angles])
    mask = _causal_mask(g, "/model", ids)
    scale = np.float32(1 / math.sqrt(dh))
    for i in range(layers):
        block, module = f"/model/layers.{i}", f"model.layers.{i}"
        attn = f"{block}/self_attn"
        n = _rms_norm(g, f"{block}/input_layernorm", h, f"{module}.input_layernorm.weight", d)
        q, k, v = (g.node(f"{attn}/{p}_proj", "MatMul", [n, g.weight(None, (d, d))]) for p in "qkv")
        c = g.node(attn, "Unsqueeze", [cos, g.const(attn, np.array([1], np.int64))])
        s = g.node(attn, "Unsqueeze", [sin, g.const(attn, np.array([1], np.int64))])
        q = _rotate(g, attn, _heads(g, attn, q, dh, [0, 2, 1, 3]), c, s, dh // 2)
        k = _rotate(g, attn, _heads(g, attn, k, dh, [0, 2, 1, 3]), c, s, dh // 2)
        v = _heads(g, attn, v, dh, [0, 2, 1, 3])
        scores = g.node(attn, "MatMul", [q, g.node(attn, "Transpose", [k], perm=[0, 1, 3, 2])])
        scores = g.node(attn, "Add", [g.node(attn, "Mul", [scores, g.const(attn, scale)]), mask])
        context_ = g.node(attn, "MatMul", [g.node(attn, "Softmax", [scores], axis=-1), v])
        merged = _merge_heads(g, attn, context_, n)
        h = g.node(block, "Add", [h, g.node(f"{attn}/o_proj", "MatMul", [merged, g.weight(None, (d, d))])])
        n = _rms_norm(g, f"{block}/post_attention_layernorm", h, f"{module}.post_attention_layernorm.weight", d)
        mlp = f"{block}/mlp"
        gate = g.node(f"{mlp}/gate_proj", "MatMul", [n, g.weight(None, (d, ffn))])
        silu = g.node(f"{mlp}/act_fn", "Mul", [gate, g.node(f"{mlp}/act_fn", "Sigmoid", [gate])])
        up = g.node(f"{mlp}/up_proj", "MatMul", [n, g.weight(None, (d, ffn))])
        product = g.node(mlp, "Mul", [silu, up])
        h = g.node(block, "Add", [h, g.node(f"{mlp}/down_proj", "MatMul", [product, g.weight(None, (ffn, d))])])
    n = _rms_norm(g, "/model/norm", h, "model.norm.weight", d)
    g.nodes.append(helper.make_node("MatMul", [n, g.weight(None, (d, vocab))], ["logits"], name="/lm_head/MatMul"))
    return _model(g, ids, "logits", vocab, "main_graph")


#: Every block's feed-forward, as a glob over the layers' module-path names (Llama: gate_proj,
#: with which up_proj grows).
GPT2_FFN, LLAMA_FFN = "transformer.h.*.mlp.c_fc", "model.layers.*.mlp.gate_proj"


def _measure(argv: list[str]) -> dict[str, float]:
    """Wall time and peak RSS (MB) of `argv`, run by a fresh wrapper process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(done.stderr.strip())
    result = json.loads(done.stdout)
    return {"wall": result["wall"], "rss": result["rss_kib"] / 1024}


def _surgery(*args: str) -> list[str]:
    return [sys.executable, "-m", "surgery", *args]


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def build(folder: Path) -> tuple[Path, Path]:
    """The two full-size models in `folder`, built unless they are there already."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "gpt2.onnx", folder / "llama.onnx"
    for path, make in zip(paths, (gpt2_model, llama_model)):
        if not path.exists():
            print(f"building {path} ...", flush=True)
            onnx.save(make(), path)
    return paths


def cases(
    gpt2: Path, llama: Path, work: Path, added: int, seq: int, samples: int, batch: int
) -> list[tuple[str, list[str], str, list[str], float]]:
    """(label, our command, baseline label, baseline command, target ratio) for each measurement."""
    base_out = work / "baseline.onnx"
    load, llama_load = (("onnx.load", _python(_LOAD, str(path))) for path in (gpt2, llama))
    load_save, llama_load_save = (
        ("onnx.load + onnx.save", _python(_LOAD_SAVE, str(path), str(base_out))) for path in (gpt2, llama)
    )

    def widen(model: Path, out: str, layer: str) -> list[str]:
        return _surgery(
            "widen", str(model), "-o", str(work / out), "--no-verify", "--force", f"--layer={layer}={added}"
        )

    return [
        ("inspect --json (GPT-2)", _surgery("inspect", "--json", str(gpt2)), *load, 1.5),
        ("inspect --json (Llama)", _surgery("inspect", "--json", str(llama)), *llama_load, 1.5),
        ("widen one FFN (GPT-2)", widen(gpt2, "gpt2_one.onnx", GPT2_FFN.replace("*", "0")), *load_save, 1.5),
        ("widen one FFN (Llama)", widen(llama, "llama_one.onnx", LLAMA_FFN.replace("*", "0")), *llama_load_save, 1.5),
        ("widen every FFN, glob (GPT-2)", widen(gpt2, "gpt2_all.onnx", GPT2_FFN), *load_save, 2.0),
        ("widen every FFN, glob (Llama)", widen(llama, "llama_all.onnx", LLAMA_FFN), *llama_load_save, 2.0),
        (
            f"verify A B, {samples} samples (GPT-2)",
            _surgery(
                "verify",
                str(gpt2),
                str(work / "gpt2_all.onnx"),
                f"--dim=sequence={seq}",
                f"--samples={samples}",
                f"--batch={batch}",
            ),
            "2 sessions + runs",
            _python(_TWO_SESSIONS, str(gpt2), str(work / "gpt2_all.onnx"), str(batch), str(seq), str(samples)),
            1.3,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "surgery-real-size",
        help="where the models are built and outputs written (kept with --keep)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the built models for the next run")
    parser.add_argument("--added", type=int, default=256, help="units added to each widened SwiGLU")
    parser.add_argument("--seq", type=int, default=32, help="sequence length of verify's batches")
    args = parser.parse_args()
    gpt2, llama = build(args.dir)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.dir))
    try:
        table = cases(gpt2, llama, work, args.added, args.seq, 16, 8)
        _measure(table[4][1])  # verify reads the widened GPT-2: write it once before the first repeat
        results: dict[int, tuple[list[dict], list[dict]]] = {i: ([], []) for i in range(len(table))}
        for repeat in range(args.repeats):
            for index, (_label, ours, _, baseline, _) in enumerate(table):
                order = [(0, ours), (1, baseline)] if repeat % 2 == 0 else [(1, baseline), (0, ours)]
                for side, argv in order:
                    results[index][side].append(_measure(argv))
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        print(
            f"\nmedian of {args.repeats}, each run a fresh process, interleaved with its baseline "
            f"(GPT-2 {gpt2.stat().st_size / 1e6:.0f} MB, Llama {llama.stat().st_size / 1e6:.0f} MB inline)\n"
        )
        print(
            "| command | ours (wall, peak RSS) | baseline | baseline (wall, peak RSS) | ratio wall | ratio RSS "
            "| target |"
        )
        print("|---|---|---|---|---|---|---|")
        for index, (label, _, base_label, _, target) in enumerate(table):
            ours, base = (
                {key: statistics.median(r[key] for r in runs) for key in ("wall", "rss")} for runs in results[index]
            )
            wall, rss = ours["wall"] / base["wall"], ours["rss"] / base["rss"]
            met = "met" if max(wall, rss) <= target else "NOT met"
            print(
                f"| {label} | {ours['wall']:.2f} s, {ours['rss']:.0f} MB | {base_label} | "
                f"{base['wall']:.2f} s, {base['rss']:.0f} MB | {wall:.2f}× | {rss:.2f}× | ≤ {target}× ({met}) |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            for path in (gpt2, llama):
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
