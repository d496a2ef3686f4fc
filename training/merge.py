"""``python -m training.merge EXPERIMENT OUT DIR [DIR ...]``: join runs of one experiment.

A long run can be split across processes by seed (``--first-seed``); this joins their
``results.json`` files into ``OUT/results.json`` and ``OUT``'s plot, recomputing every summary
over all seeds, as one run over the same seeds would have written them. Rules: every part ran the
same experiment with the same configuration, data and quick flag (else an error); a seed that
several parts ran is taken from the first part given; ``wall_s`` is the sum of the parts' wall
times; ``merged_from`` records each part's folder and command.

Example:
    python -m training grow --seeds 5 --out runs/grow-a
    python -m training grow --seeds 5 --first-seed 5 --out runs/grow-b
    python -m training.merge grow runs/grow runs/grow-a runs/grow-b
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from surgery import SurgeryError
from training.runtime import quiet

EXPERIMENTS = ("grow", "init", "transfer")


def _config(cls, recorded: dict[str, Any]):
    fields = {name: recorded[name] for name in cls.__dataclass_fields__ if name in recorded}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def merge(experiment: str, out: Path, parts: list[Path]) -> dict[str, Any]:
    """Join the parts' results (see the module docstring) and publish them in `out`."""
    from training.data import load_mnist

    loaded = []
    for part in parts:
        try:
            loaded.append(json.loads((part / "results.json").read_text()))
        except (OSError, ValueError) as error:
            raise SurgeryError(f"{part / 'results.json'}: cannot be read: {error}") from None
    first = loaded[0]
    for part, results in zip(parts, loaded):
        for key in ("experiment", "config", "quick"):
            if results[key] != first[key]:
                raise SurgeryError(
                    f"{part}: its {key} differs from {parts[0]}'s; only runs of one set-up can be joined"
                )
        if results["data"]["sha256"] != first["data"]["sha256"]:
            raise SurgeryError(f"{part}: ran on other data than {parts[0]}")
    if first["experiment"] != experiment:
        raise SurgeryError(f"{parts[0]}: holds a {first['experiment']!r} run, not {experiment!r}")
    kind = first["data"]["kind"]
    data = load_mnist(
        None if kind == "bundled" else "fashion-mnist" if kind == "fashion-mnist" else first["data"]["path"]
    )
    started = time.perf_counter() - sum(r["wall_s"] for r in loaded)
    quick = first["quick"]
    if experiment == "transfer":
        from training import transfer

        seeds, runs, pretrained = set(), [], []
        for results in loaded:
            new = sorted({r["seed"] for r in results["runs"]} - seeds)
            runs += [r for r in results["runs"] if r["seed"] in new]
            pretrained += [p for p in results["pretrained"] if p["seed"] in new]
            seeds |= set(new)
        runs.sort(key=lambda r: r["seed"])
        merged = transfer._publish(
            out,
            data,
            quick,
            _config(transfer.TransferConfig, first["config"]),
            runs,
            pretrained,
            first["pretrain_samples"],
            first["test_samples_5_to_9"],
            started,
        )
    else:
        module = __import__(f"training.{experiment}", fromlist=["_publish"])
        per_seed, seen = [], set()
        for results in loaded:
            per_seed += [p for p in results["per_seed"] if p["seed"] not in seen]
            seen |= {p["seed"] for p in results["per_seed"]}
        per_seed.sort(key=lambda p: p["seed"])
        if experiment == "grow":
            if any(r["learning_rate"] != first["learning_rate"] for r in loaded):
                raise SurgeryError("the parts chose different learning rates; they cannot be joined")
            merged = module._publish(
                out,
                data,
                quick,
                _config(module.GrowConfig, first["config"]),
                per_seed,
                first["split"],
                first["learning_rate"],
                started,
            )
        else:
            merged = module._publish(
                out, data, quick, _config(module.InitConfig, first["config"]), per_seed, first["split"], started
            )
    merged["merged_from"] = [
        {"folder": str(part), "command": r["command"], "seeds": r["seeds"]} for part, r in zip(parts, loaded)
    ]
    (out / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
    return merged


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in EXPERIMENTS:
        print(f"error: usage: python -m training.merge {{{','.join(EXPERIMENTS)}}} OUT DIR [DIR ...]", file=sys.stderr)
        return 2
    quiet()
    from surgery.tensorflow_runtime import import_tensorflow

    import_tensorflow()
    try:
        merge(argv[0], Path(argv[1]), [Path(p) for p in argv[2:]])
    except SurgeryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
