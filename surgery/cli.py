"""The `surgery` command line: one subcommand per job, file I/O here and nowhere else.

Size: one click command per job plus the reusable option groups and the flag map that turns
a library parameter name into its flag; no library logic lives here.

Every subcommand reads files, calls the Python API with models, and writes files. Errors the
user can fix are one line on stderr with exit code 2 (`--debug` shows the traceback); a
verification that finds differences exits with 1.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from surgery.errors import NotEquivalentError, SurgeryError
from surgery.initializers import FAN_IN_INITS, STRATEGIES
from surgery.verification.feeds import SYMBOLIC_DEFAULT
from surgery.verification.runtime import OPTIMIZATION_LEVELS, PROVIDERS


class _Group(click.Group):
    """Turns click's multi-line usage errors into the toolkit's one-line errors (exit 2)."""

    def main(self, *args, **kwargs):  # noqa: D401 - click's signature
        kwargs["standalone_mode"] = False
        debug = "--debug" in sys.argv
        if not debug and not logging.getLogger().handlers:
            # Libraries log warnings (some with tracebacks) through `logging`, which Python prints on
            # stderr when nothing is configured; stderr carries only the toolkit's one-line messages.
            logging.getLogger().addHandler(logging.NullHandler())
        try:
            rc = super().main(*args, **kwargs)
            return sys.exit(rc or 0)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.Abort:
            _interrupted()
        except click.UsageError as error:
            if debug:
                raise
            sub = f"{error.ctx.info_name}: " if error.ctx is not None and error.ctx.parent is not None else ""
            click.echo(f"surgery: {sub}{error.format_message()}", err=True)
            sys.exit(2)
        except SurgeryError as error:
            if debug:
                raise
            click.echo(f"surgery: {_one_line(error.render(flag_for(error.param)))}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            _interrupted()
        except OSError as error:  # the file system said no (disk full, permission denied, ...): the user can act on it
            if debug:
                raise
            where = f"{error.filename}: " if error.filename else ""
            click.echo(f"surgery: {_one_line(where + (error.strerror or str(error)))}", err=True)
            sys.exit(2)
        except Exception as error:  # never a traceback for the user; --debug shows it
            if debug:
                raise
            first = (str(error).strip().splitlines() or [""])[0]
            click.echo(f"surgery: internal error: {type(error).__name__}: {first} (rerun with --debug)", err=True)
            sys.exit(3)


def _interrupted() -> None:
    """Ctrl-C: remove the temporary files of a write it cut short (even between their creation
    and the writer's own cleanup), say so in one line, exit 130."""
    from surgery.external import remove_temporary_files

    remove_temporary_files()
    click.echo("surgery: interrupted", err=True)
    sys.exit(130)


#: Library parameters whose flag is not `--` + the name with dashes (see `flag_for`).
FLAGS = {"plan": "--layer", "dims": "--dim", "output": "--output", "model": "MODEL"}


def flag_for(param: str | None) -> str | None:
    """The CLI's flag for a library parameter named in a SurgeryError (`errors.SurgeryError.render`)."""
    if param is None:
        return None
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def _one_line(message: str) -> str:
    """`message` on one line: names read from a model file may hold line breaks."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


debug_option = click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks on errors.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="surgery", prog_name="surgery", message="%(prog)s %(version)s")
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
    from surgery.modelio import atomic_output, check_output

    check_output(output, inputs=[model], suffix=".onnx", force=force)
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
@click.option(
    "--symmetry", "symmetry_layer", default=None, metavar="NAME", help="Report groups of identical units in layer NAME."
)
@debug_option
def inspect(model: str, as_json: bool, symmetry_layer: str | None) -> None:
    """List the layers whose units can be grown (Gemm, MatMul(+Add), Conv) and the attention blocks."""
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
                click.echo(
                    f"{symmetry_layer}: units {', '.join(map(str, group))} are identical (same fan-in, bias and fan-out)"
                )
        return
    from surgery.inspection import inspect_document

    document = inspect_document(ir_model, flag_for)
    if as_json:
        click.echo(json.dumps({"model": model, **document}))
        return
    from rich.console import Console
    from rich.table import Table

    layers, console = document["layers"], Console(width=200)
    table = Table(title=f"{model}: {len(layers)} layers")
    for column in ("name", "node", "op", "width", "activation", "grows", "consumers"):
        table.add_column(column, justify="right" if column == "width" else "left")
    for layer in layers:
        table.add_row(
            layer["name"],
            layer["node"],
            layer["op"],
            str(layer["width"]),
            layer["activation"] or "-",
            "yes" if layer["widenable"] else "no",
            ", ".join(layer["consumers"]),
        )
    console.print(table)
    for layer in layers:
        if layer["blocked_by"]:
            console.print(f"{layer['name']}: {layer['blocked_by']}", highlight=False, markup=False, soft_wrap=True)
    if document["attention"]:
        attention = Table(title="attention blocks (widen --heads NAME=K)")
        for column in ("name", "heads", "kv_heads", "head_dim", "q", "k", "v", "o"):
            attention.add_column(column)
        for block in document["attention"]:
            attention.add_row(*(str(block[c]) for c in ("name", "heads", "kv_heads", "head_dim", "q", "k", "v", "o")))
        console.print(attention)
    if document["blocks"]:
        blocks = Table(title=f"{len(document['blocks'])} residual blocks (surgery deepen --after NAME)")
        columns = ("name", "kind", "nodes", "parameters", "input", "output")
        for column in columns:
            blocks.add_column(column, justify="right" if column in ("nodes", "parameters") else "left")
        for block in document["blocks"]:
            blocks.add_row(*(str(block[c]) for c in columns))
        console.print(blocks)


def _parse_layers(specs: tuple[str, ...], flag: str = "--layer") -> dict[str, int]:
    """`--layer NAME=K` (or `--heads`) options → {NAME: K}. Only the syntax is checked here (and a
    NAME given twice, which a dict would hide); what K may be is the library's rule (`surgery.widen`)."""
    plan: dict[str, int] = {}
    for spec in specs:
        name, sep, count = spec.rpartition("=")
        if not sep or not name:
            raise SurgeryError(f"{flag} {spec!r}: expected NAME=K (e.g. dense_1=8)")
        try:
            added = int(count)
        except ValueError:
            raise SurgeryError(f"{flag} {spec!r}: K must be an integer, got {count!r}") from None
        if name in plan:
            raise SurgeryError(f"{flag} {name!r} is given twice")
        plan[name] = added
    return plan


def _parse_dims(items: tuple[str, ...]) -> dict[str, int]:
    """`--dim NAME=VALUE` options → {NAME: VALUE}; which names and values are valid is verify's rule."""
    dims = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            dims[name] = int(value)
        except ValueError:
            name = ""
        if not sep or not name:
            raise SurgeryError(f"--dim expects NAME=VALUE with an integer VALUE, got {item!r}")
    return dims


def verification_inputs(command):
    """The options that choose what a verification feeds the models (shared by `verify` and `widen`)."""
    options = [
        click.option(
            "--inputs",
            "inputs_file",
            type=click.Path(),
            default=None,
            help="Input arrays (.npz, names -> arrays) instead of random ones.",
        ),
        click.option("--samples", default=16, show_default=True, help="Random samples in all."),
        click.option(
            "--dim",
            "dim_values",
            multiple=True,
            metavar="NAME=VALUE",
            help=f"Value of a symbolic dimension (repeatable; default: the batch for the leading one, "
            f"{SYMBOLIC_DEFAULT} for others).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _read_verification_inputs(inputs_file: str | None, dim_values: tuple[str, ...]):
    """The parsed `verification_inputs` options: (dims, inputs or None)."""
    from surgery.verification.feeds import load_inputs

    return _parse_dims(dim_values), None if inputs_file is None else load_inputs(inputs_file)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write.")
@click.option(
    "--layer",
    "layers",
    multiple=True,
    metavar="NAME=K",
    help="Add K units to layer NAME, or to every layer a glob matches (repeatable).",
)
@click.option(
    "--heads",
    "heads",
    multiple=True,
    metavar="NAME=K",
    help="Add K key/value heads to attention block NAME or every block a glob matches (repeatable).",
)
@click.option(
    "--init", default="output-zero", show_default=True, type=click.Choice(STRATEGIES), help="How the new units start."
)
@click.option(
    "--fan-in",
    type=click.Choice(FAN_IN_INITS),
    default=None,
    help="Random fan-in initializer (default: He after ReLU-like activations, else Glorot).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every random draw.")
@click.option("--no-verify", is_flag=True, help="Skip running both models with onnxruntime.")
@click.option(
    "--allow-output-change",
    is_flag=True,
    help="Let a widened tensor be a graph output (its shape changes; verified on its original units).",
)
@click.option("--align", type=click.IntRange(min=1), default=None, help="Round every new width up to a multiple of N.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option(
    "--share-external-data",
    is_flag=True,
    help="Write only changed tensors; the output reads the input's unchanged external data in place (keep the input unchanged).",
)
@verification_inputs
@debug_option
def widen(
    model: str,
    output: str,
    layers: tuple[str, ...],
    heads: tuple[str, ...],
    init: str,
    fan_in: str | None,
    seed: int,
    no_verify: bool,
    allow_output_change: bool,
    align: int | None,
    force: bool,
    share_external_data: bool,
    inputs_file: str | None,
    samples: int,
    dim_values: tuple[str, ...],
) -> None:
    """Add units to layers or heads to attention blocks; the outputs stay bitwise equal (output-zero, all-zero)."""
    from surgery.widening import widen_verified

    plan, head_plan = _parse_layers(layers), _parse_layers(heads, "--heads")
    if not plan and not head_plan:
        raise SurgeryError("nothing to widen: give --layer NAME=K or --heads NAME=K")
    dims, inputs = _read_verification_inputs(inputs_file, dim_values)
    outcome = widen_verified(
        model,
        output,
        plan,
        heads=head_plan,
        init=init,
        fan_in=fan_in,
        seed=seed,
        allow_output_change=allow_output_change,
        align=align,
        verify=not no_verify,
        force=force,
        share_external_data=share_external_data,
        dims=dims,
        inputs=inputs,
        samples=samples,
    )
    for line in outcome.lines:  # printed once the file is written: nothing claims a growth that failed
        click.echo(line)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write.")
@click.option(
    "--after", required=True, metavar="NAME", help="Residual block (or, with --kind identity, layer) to insert after."
)
@click.option("--count", type=int, default=1, show_default=True, help="How many new blocks, one after another.")
@click.option(
    "--init",
    type=click.Choice(["copy", "random"]),
    default="copy",
    show_default=True,
    help="New parameters: the block's, or drawn; output projections start at zero either way.",
)
@click.option(
    "--kind",
    type=click.Choice(["block", "identity"]),
    default="block",
    show_default=True,
    help="Copy a residual block, or insert an identity layer + ReLU after a ReLU layer.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every random draw.")
@click.option("--no-verify", is_flag=True, help="Skip running both models with onnxruntime.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@debug_option
def deepen(
    model: str, output: str, after: str, count: int, init: str, kind: str, seed: int, no_verify: bool, force: bool
) -> None:
    """Insert new blocks that start as the identity; the outputs stay bitwise equal."""
    from surgery.deepening import deepen_in_place
    from surgery.modelio import check_output, input_files, load_model, staged_save

    if count < 1:
        raise SurgeryError(f"--count must be at least 1, got {count}")
    ir_model = load_model(model)
    check_output(output, inputs=input_files(model, ir_model), suffix=".onnx", force=force)
    record = deepen_in_place(ir_model, after=after, count=count, init=init, seed=seed, kind=kind).record
    what = ("block" if kind == "block" else "identity layer") + ("s" if count > 1 else "")
    click.echo(
        f"{after}: {count} new {what} after it: {', '.join(record['added'])} "
        f"({record['nodes']} nodes, {record['parameters']} parameters each)"
    )
    if record["zeroed"]:
        click.echo(f"output projections starting at zero: {', '.join(record['zeroed'])} (in each copy)")
    with staged_save(ir_model, output, force=force) as staged:
        if not no_verify:
            from surgery.verification import verify

            report = verify(model, staged)  # symbolic dimensions after the leading one take verify's default
            if not report.equivalent:
                diff = max((o.max_abs_diff for o in report.outputs), default=0.0)
                raise NotEquivalentError(
                    f"outputs are not bitwise equal after deepening (max |diff| {diff:.3g}); {output} not written"
                )
            click.echo(
                f"verified: outputs bitwise equal ({report.samples} samples, onnxruntime CPU, optimizations off)"
            )
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("reference", type=click.Path(dir_okay=True))
@click.argument("candidate", type=click.Path(dir_okay=True))
@verification_inputs
@click.option("--batch", default=8, show_default=True, help="Samples per run (symbolic leading dimension).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--atol", type=float, default=None, help="Tolerance mode: absolute tolerance.")
@click.option("--rtol", type=float, default=None, help="Tolerance mode: relative tolerance.")
@click.option(
    "--provider",
    type=click.Choice(list(PROVIDERS)),
    default="cpu",
    show_default=True,
    help="onnxruntime execution provider.",
)
@click.option(
    "--optimization",
    type=click.Choice(list(OPTIMIZATION_LEVELS)),
    default="disable",
    show_default=True,
    help="Graph optimization level for both models.",
)
@click.option(
    "--deployed",
    is_flag=True,
    help="Also run both at the default optimization level and report the ULP distance there.",
)
@click.option(
    "--json",
    "json_path",
    default=None,
    metavar="PATH|-",
    help="Write the full report as JSON (- for stdout, which also silences the table).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
@click.option("--locate", is_flag=True, help="When outputs differ, name the first node whose output differs.")
@debug_option
def verify(
    reference: str,
    candidate: str,
    inputs_file: str | None,
    samples: int,
    dim_values: tuple[str, ...],
    batch: int,
    seed: int,
    atol: float | None,
    rtol: float | None,
    provider: str,
    optimization: str,
    deployed: bool,
    json_path: str | None,
    force: bool,
    locate: bool,
) -> None:
    """Prove two models compute the same outputs (exit 0), or show where they differ (exit 1)."""
    from surgery.modelio import atomic_output, check_output
    from surgery.verification import verify as run_verify

    quiet = json_path == "-"
    if json_path is not None and not quiet:
        check_output(json_path, inputs=[reference, candidate], suffix=".json", force=force)
    dims, inputs = _read_verification_inputs(inputs_file, dim_values)
    progress = None
    if not quiet and inputs is None and samples >= 10 * batch and sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True, console=_stderr_console())
        task = bar.add_task("verifying", total=samples)
        progress = lambda done, total: bar.update(task, completed=done)  # noqa: E731
        bar.start()
    try:
        report = run_verify(
            reference,
            candidate,
            inputs=inputs,
            samples=samples,
            batch=batch,
            dims=dims,
            seed=seed,
            atol=atol,
            rtol=rtol,
            provider=provider,
            optimization=optimization,
            deployed=deployed,
            locate=locate,
            progress=progress,
        )
    finally:
        if progress is not None:
            bar.stop()
    document = report.to_json()
    if quiet:
        click.echo(json.dumps(document, indent=2))
    else:
        _print_report(document)
        if json_path is not None:
            with atomic_output(json_path, force=force) as tmp:
                tmp.write_text(json.dumps(document, indent=2) + "\n")
    if not report.equivalent:
        differing = [o["name"] for o in document["outputs"] if not o["equal"] and not o["dropped"]]
        raise NotEquivalentError(f"not equivalent: output(s) {', '.join(differing)} differ")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _print_report(document: dict) -> None:
    """The verify report as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    from surgery.verification import describe_mode

    console = Console(width=200)
    mode = describe_mode(document["mode"], document["atol"], document["rtol"], document["atol_scaled"])
    table = Table(title=f"{document['reference']} vs {document['candidate']}")
    # Printed as a line of its own: a table caption is wrapped to the table's width, mid-phrase.
    dims = "".join(f", {name}={value}" for name, value in document["dims"].items())
    caption = (
        f"{mode}; provider {document['provider']}; optimization {document['optimization']}; "
        f"{document['samples']} samples ({document['inputs']}, batch {document['batch']}, seed {document['seed']}{dims})"
    )
    for column in ("output", "shape", "dtype", "bitwise", "mismatches", "max |diff|", "max rel", "max ULP"):
        table.add_column(column, justify="left" if column in ("output", "shape", "dtype", "bitwise") else "right")
    for output in document["outputs"]:
        if output["present_in"] != "both":
            where = f"only in {output['present_in']}" + (" (dropped by the Keras model)" if output["dropped"] else "")
            table.add_row(output["name"], where, "", "-" if output["dropped"] else "[red]no[/]", "", "", "", "")
            continue
        shape = (
            str(output["shape"])
            if output["shape"] == output["candidate_shape"]
            else f"{output['shape']} vs {output['candidate_shape']}"
        )
        dtype = (
            output["dtype"]
            if output["dtype"] == output["candidate_dtype"]
            else f"{output['dtype']} vs {output['candidate_dtype']}"
        )
        bitwise = "[green]yes[/]" if output["bitwise_equal"] else "[red]no[/]"
        mismatches = f"{output['mismatches']} ({output['mismatch_fraction']:.3%})"
        if output["nan_mismatches"]:
            mismatches += f", {output['nan_mismatches']} NaN"
        number = lambda value: value if isinstance(value, str) else f"{value:.3g}"  # noqa: E731 - "inf"/"nan" strings
        ulp = "-" if output["max_ulp"] is None else str(output["max_ulp"])
        table.add_row(
            output["name"],
            shape,
            dtype,
            bitwise,
            mismatches,
            number(output["max_abs_diff"]),
            number(output["max_rel_diff"]),
            ulp,
        )
    console.print(table)
    console.print(caption, highlight=False, soft_wrap=True)
    if document["deployed"] is not None:
        parts = [
            f"{o['name']}: max ULP {o['max_ulp']}, {o['mismatches']} differing" for o in document["deployed"]["outputs"]
        ]
        console.print(f"deployed (optimization all): {'; '.join(parts)}", highlight=False, soft_wrap=True)
    located = document["located"]
    if located is not None:
        counts = (
            f"{located['tensors_compared']} tensors compared, {located['tensors_skipped']} skipped as not alignable, "
            f"{located['tensors_only_in_candidate']} only in the candidate"
        )
        if located["node"] is None:
            console.print(f"located: no intermediate tensor differs ({counts})", highlight=False, soft_wrap=True)
        else:
            diff = located["diff"]
            detail = (
                f"{diff['mismatches']} differing, max ULP {diff['max_ulp']}"
                if diff and diff["shape"] == diff["candidate_shape"]
                else "incomparable"
            )
            console.print(
                f"located: first differing node {located['node']!r} ({located['op']}), output {located['output']!r}: "
                f"{detail} ({counts})",
                highlight=False,
                soft_wrap=True,
            )
    console.print("[bold green]EQUIVALENT[/]" if document["equivalent"] else "[bold red]NOT EQUIVALENT[/]")


def _names(values: tuple[str, ...]) -> list[str]:
    """Repeatable option values, each also allowed to be a comma-separated list."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@cli.command("to-keras")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Keras file to write (.keras).")
@click.option("--freeze", multiple=True, metavar="NAME", help="Make layer NAME non-trainable (repeatable; or a,b,c).")
@click.option(
    "--reinit",
    multiple=True,
    metavar="NAME",
    help="Redraw layer NAME's weights from its initializers (repeatable; or a,b,c).",
)
@click.option(
    "--head", type=int, default=None, metavar="UNITS", help="Replace the final Dense with a fresh one of UNITS outputs."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the redrawn weights (--reinit, --head).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@debug_option
def to_keras(
    model: str, output: str, freeze: tuple[str, ...], reinit: tuple[str, ...], head: int | None, seed: int, force: bool
) -> None:
    """Convert an ONNX model (widened, exported, PyTorch, skl2onnx) to a trainable Keras model."""
    import os

    from surgery.modelio import atomic_output, check_output, input_files, load_model
    from surgery.onnx_to_keras import FAITHFUL_TOLERANCE, check_faithful, convert

    ir_model = load_model(model)
    check_output(output, inputs=input_files(model, ir_model), suffix=".keras", force=force)
    conversion = convert(ir_model, freeze=_names(freeze), reinit=_names(reinit), head=head, seed=seed)
    keras_model = conversion.model
    route = "its Keras architecture (export metadata)" if conversion.source == "keras-config" else "its ONNX ops"
    trainable = sum(int(w.numpy().size) for w in keras_model.trainable_weights)
    click.echo(
        f"rebuilt {model} from {route}: {len(keras_model.layers)} layers, "
        f"{len(keras_model.trainable_weights)} trainable weights ({trainable} parameters)"
    )
    for note in conversion.notes:
        click.echo(f"note: {note}")
    changed = [flag for flag, used in (("--reinit", reinit), ("--head", head is not None)) if used]
    if changed:
        click.echo(f"faithfulness check skipped: {' and '.join(changed)} changed the function on purpose")
    else:
        difference = check_faithful(keras_model, ir_model, outputs=conversion.kept_outputs)
        click.echo(
            f"faithfulness: max |keras - onnxruntime| / max(1, |output|) = {difference:.3g} (tolerance {FAITHFUL_TOLERANCE:g}; "
            "random inputs, batch 3, other free dimensions 7)"
        )
        if difference > FAITHFUL_TOLERANCE:
            raise SurgeryError(
                f"the Keras model differs from the ONNX model by {difference:.3g} (> {FAITHFUL_TOLERANCE:g}); nothing written"
            )
    with atomic_output(output, force=force) as tmp:
        staged = tmp.with_name(tmp.name + ".keras")  # Keras refuses any other suffix
        try:
            keras_model.save(staged)
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)
    frozen = [layer.name for layer in keras_model.layers if layer.weights and not layer.trainable]
    if frozen:
        click.echo(f"frozen: {', '.join(frozen)}")
    click.echo(f"wrote {output}")


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="surgery")
