"""The `surgery` command line: one subcommand per job, file I/O here and nowhere else.

Every subcommand reads files, calls the Python API with models, and writes files. Errors the
user can fix are one line on stderr with exit code 2 (`--debug` shows the traceback); a
verification that finds differences exits with 1.
"""

from __future__ import annotations

import json
import sys

import click

from surgery.errors import SurgeryError


class _Group(click.Group):
    """Turns click's multi-line usage errors into the toolkit's one-line errors (exit 2)."""

    def main(self, *args, **kwargs):  # noqa: D401 - click's signature
        kwargs["standalone_mode"] = False
        debug = "--debug" in sys.argv
        try:
            rc = super().main(*args, **kwargs)
            return sys.exit(rc or 0)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.Abort:
            click.echo("surgery: interrupted", err=True)
            sys.exit(130)
        except click.UsageError as error:
            if debug:
                raise
            sub = f"{error.ctx.info_name}: " if error.ctx is not None and error.ctx.parent is not None else ""
            click.echo(f"surgery: {sub}{error.format_message()}", err=True)
            sys.exit(2)
        except SurgeryError as error:
            if debug:
                raise
            click.echo(f"surgery: {error}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("surgery: interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # never a traceback for the user; --debug shows it
            if debug:
                raise
            first = (str(error).strip().splitlines() or [""])[0]
            click.echo(f"surgery: internal error: {type(error).__name__}: {first} (rerun with --debug)", err=True)
            sys.exit(3)


debug_option = click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks on errors.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
def cli() -> None:
    """Function-preserving model surgery on ONNX."""


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset (13-18).")
@click.option("--batch", type=int, default=None, help="Fixed batch size (default: symbolic).")
@click.option("--unsafe", is_flag=True, help="Load the Keras file without safe mode (runs Lambda code it carries).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@debug_option
def export(model: str, output: str, opset: int, batch: int | None, unsafe: bool, force: bool) -> None:
    """Convert a Keras 3 model (.keras/.h5) to ONNX, with a self-check against Keras."""
    from surgery.export import export_keras, load_keras, self_check
    from surgery.modelio import atomic_output

    keras_model = load_keras(model, unsafe=unsafe)
    proto = export_keras(keras_model, opset=opset, batch=batch)
    difference = self_check(keras_model, proto)
    import onnx

    with atomic_output(output, force=force) as tmp:
        onnx.save(proto, tmp)
    click.echo(f"wrote {output} (opset {opset}); self-check max |keras - onnx| = {difference:.3g}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the layer list as JSON.")
@click.option("--symmetry", "symmetry_layer", default=None, metavar="NAME", help="Report groups of identical units in layer NAME.")
@debug_option
def inspect(model: str, as_json: bool, symmetry_layer: str | None) -> None:
    """List the layers whose units can be grown (Gemm, MatMul(+Add), Conv)."""
    from surgery.layers import find_layers
    from surgery.modelio import load_model

    ir_model = load_model(model)
    if symmetry_layer is not None:
        from surgery.symmetry import symmetric_groups

        groups = symmetric_groups(ir_model, symmetry_layer)
        if as_json:
            click.echo(json.dumps({"model": model, "layer": symmetry_layer, "groups": groups}))
        else:
            if not groups:
                click.echo(f"{symmetry_layer}: no two units compute the same function")
            for group in groups:
                click.echo(f"{symmetry_layer}: units {', '.join(map(str, group))} are identical (same fan-in, bias and fan-out)")
        return
    layers = find_layers(ir_model)
    if as_json:
        click.echo(json.dumps({"model": model, "layers": [layer.to_json() for layer in layers]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model}: {len(layers)} layers")
    for column in ("name", "node", "op", "width", "activation", "consumers"):
        table.add_column(column, justify="right" if column == "width" else "left")
    for layer in layers:
        table.add_row(layer.name, layer.node, layer.op, str(layer.width), layer.activation or "-", ", ".join(layer.consumers))
    Console(width=200).print(table)


# Subcommands defined in their own sections below: widen, verify, to-keras.
# --- widen ---
# --- verify ---
# --- to-keras ---


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="surgery")
