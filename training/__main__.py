"""``python -m training EXPERIMENT [--data PATH] [--seeds N] [--out DIR] [--quick]``.

EXPERIMENT is one of ``grow``, ``init``, ``transfer``, ``symmetry`` or ``demo`` (what ``make demo``
runs). Each writes ``DIR/results.json`` and ``DIR/*.png`` (default
``runs/EXPERIMENT``) and prints a short table. Data: the bundled 5,000-digit MNIST subset,
full MNIST from a local Keras-format ``mnist.npz`` with ``--data PATH``, or the full
Fashion-MNIST of Debian's dataset-fashion-mnist package with ``--data fashion-mnist``.
``--quick`` runs a smoke-sized version in seconds.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from training.runtime import quiet

EXPERIMENTS = {
    "grow": "training.grow",
    "init": "training.init",
    "transfer": "training.transfer",
    "symmetry": "training.symmetry",
    "demo": "training.demo",
    "transformer": "training.transformer",  # --data names its corpus (training.charlm)
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__.split("\n\n", 1)[1])
@click.argument("experiment", type=click.Choice(sorted(EXPERIMENTS)))
@click.option(
    "--data",
    help="fashion-mnist (Debian's dataset-fashion-mnist), or a local Keras-format mnist.npz "
    "(default: the bundled 5k MNIST subset).",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=None,
    help="Number of seeds (default 3; 1 with --quick and for demo).",
)
@click.option(
    "--first-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seeds are FIRST-SEED … FIRST-SEED+N-1 (a long run split across processes; "
    "`python -m training.merge` joins them).",
)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder (default runs/EXPERIMENT).")
@click.option("--quick", is_flag=True, help="Smoke-sized run (seconds), as the tests use.")
def main(experiment: str, data: str | None, seeds: int | None, first_seed: int, out: str | None, quick: bool) -> None:
    quiet()
    from surgery import SurgeryError
    from surgery.tensorflow_runtime import import_tensorflow
    from training.data import load_mnist

    if seeds is None:
        seeds = 1 if quick or experiment == "demo" else 3
    try:
        mnist = data if experiment == "transformer" else load_mnist(data)
        import_tensorflow()  # before the experiment imports it: keeps TensorFlow's start-up logs off stderr
        module = importlib.import_module(EXPERIMENTS[experiment])
        chosen = list(range(first_seed, first_seed + seeds))
        module.run(mnist, seeds=chosen, out=Path(out or f"runs/{experiment}"), quick=quick)
    except SurgeryError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(getattr(error, "exit_code", 2))


def run() -> None:
    """Entry point: usage errors and unexpected failures as one line on stderr, like `surgery`."""
    try:
        sys.exit(main.main(prog_name="python -m training", standalone_mode=False) or 0)
    except click.UsageError as error:
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as error:  # a bug: one line, not a traceback
        first = (str(error).strip().splitlines() or [""])[0]
        click.echo(f"error: internal error: {type(error).__name__}: {first}", err=True)
        sys.exit(3)


if __name__ == "__main__":
    run()
