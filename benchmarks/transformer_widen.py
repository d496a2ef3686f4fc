"""Growing every block of a GPT-2-small-sized export in one run, against ``onnx.load`` + ``onnx.save``.

The model is `real_size.gpt2_model` (GPT-2 small as PyTorch's classic exporter writes it: 12
blocks, d=768, 12 heads, 124M parameters plus the untied ``lm_head``, about 652 MB inline). Three
commands, each a fresh process, interleaved with the baseline process that loads and saves the
same file (median of ``--repeats``; wall time and peak RSS):

| command | what |
|---|---|
| ``widen --heads 'transformer.h.*.attn=1'`` | one head more in each of the 12 blocks |
| ``widen --layer 'transformer.h.*.mlp.c_fc=768'`` | every feed-forward 3072 → 3840 (+25 %) |
| both in one command | one analysis, one write |

All with ``--no-verify`` (the verification's cost is `real_size.py`'s subject).

Usage::

    python benchmarks/transformer_widen.py                 # builds the model into /tmp/surgery-real-size
    python benchmarks/transformer_widen.py --repeats 5 --keep
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_size import _LOAD_SAVE, _measure, _python, _surgery, gpt2_model  # noqa: E402

HEADS = "--heads=transformer.h.*.attn=1"
FEED_FORWARD = "--layer=transformer.h.*.mlp.c_fc=768"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "surgery-real-size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the built model for the next run")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    model = args.dir / "gpt2.onnx"
    if not model.exists():
        print(f"building {model} ...", flush=True)
        onnx.save(gpt2_model(), model)
    work = Path(tempfile.mkdtemp(prefix="heads-", dir=args.dir))
    out, baseline_out = work / "grown.onnx", work / "baseline.onnx"
    widen = [str(model), "-o", str(out), "--no-verify", "--force"]
    table = [
        ("widen --heads (12 blocks)", _surgery("widen", *widen, HEADS)),
        ("widen --layer (12 FFNs)", _surgery("widen", *widen, FEED_FORWARD)),
        ("widen --layer + --heads", _surgery("widen", *widen, FEED_FORWARD, HEADS)),
    ]
    baseline = _python(_LOAD_SAVE, str(model), str(baseline_out))
    try:
        results = {label: ([], []) for label, _ in table}
        for repeat in range(args.repeats):
            for label, ours in table:
                order = [(0, ours), (1, baseline)] if repeat % 2 == 0 else [(1, baseline), (0, ours)]
                for side, argv in order:
                    results[label][side].append(_measure(argv))
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        print(
            f"\nmedian of {args.repeats}, each run a fresh process, interleaved with onnx.load + onnx.save "
            f"of the same file ({model.stat().st_size / 1e6:.0f} MB)\n"
        )
        print("| command | ours (wall, peak RSS) | onnx.load + onnx.save | ratio wall | ratio RSS |")
        print("|---|---|---|---|---|")
        for label, _ in table:
            ours, base = (
                {key: statistics.median(r[key] for r in runs) for key in ("wall", "rss")} for runs in results[label]
            )
            print(
                f"| {label} | {ours['wall']:.2f} s, {ours['rss']:.0f} MB | "
                f"{base['wall']:.2f} s, {base['rss']:.0f} MB | "
                f"{ours['wall'] / base['wall']:.2f}× | {ours['rss'] / base['rss']:.2f}× |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            model.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
