"""The ``pid-export`` command: a thin click layer over the library.

Each command parses its options, sets up logging and calls one library function; a
:class:`~pid_export.errors.PidExportError` becomes a one-line message on stderr and the
exit code the error class carries.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .errors import PidExportError

MODEL_CHOICES = ("xgb", "rf", "simplenn", "dnn", "fse0", "fse1")
RANGE_CHOICES = ("0-1", "1-3", "full")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    # Third-party libraries are chatty at INFO; keep their warnings only.
    for name in ("jax", "absl", "matplotlib", "urllib3", "skl2onnx", "onnxmltools", "distributed"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def handle_errors(func):
    """Turn library errors into a clear message and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PidExportError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(err.exit_code)

    return wrapper


def _memory_option(ctx, param, value):
    if value is None:
        return None
    from .streaming import parse_memory

    try:
        return parse_memory(value)
    except PidExportError as err:
        raise click.BadParameter(str(err).split(": ", 1)[-1], ctx=ctx, param=param) from err


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", type=click.Choice(MODEL_CHOICES), default=None,
              help="Model to train and export (runs the main job).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("pid.onnx"),
              show_default=True, help="ONNX file to write.")
@click.option("--data", multiple=True, type=str, metavar="FILE|GLOB",
              help="AO2D-style ROOT file(s), flat ROOT trees or Parquet; repeat for more. "
                   "Without it, the built-in fast simulation is used.")
@click.option("--range", "prange", type=click.Choice(RANGE_CHOICES), default="full",
              show_default=True, help="Transverse-momentum range in GeV/c.")
@click.option("--seed", type=int, default=231, show_default=True,
              help="Seed for the simulation, the split and the training.")
@click.option("--tree", default=None, show_default="O2pidtracksmc (PID-ML producer, MC), "
              "or detected from the file",
              help="Tree name inside each DF_* folder (or the flat tree).")
@click.option("--column-map", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TOML file mapping features to branch names (see README).")
@click.option("--tracks", type=click.IntRange(min=1000), default=300_000, show_default=True,
              help="Size of the built-in sample (ignored with --data).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              show_default="OUT with .report.json", help="JSON report to write.")
@click.option("--no-dpg-cuts", is_flag=True, default=False,
              help="Skip the DPG track selections (|eta|, DCA, TPC/ITS clusters).")
@click.option("--parity-bound", type=float, default=None, show_default="1e-6 trees, 1e-5 nets",
              help="Maximum |onnxruntime - native| the parity gate accepts.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, show_default="100",
              help="Nets only: maximum number of epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, show_default="256",
              help="Nets only: training batch size.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Nets only: export this checkpoint folder instead of training.")
@click.option("--resume", is_flag=True, default=False,
              help="Nets only: with --checkpoint, go on training from it (then export).")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              show_default="1e-4", help="Nets only: Adam learning rate.")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default=None,
              show_default="none",
              help="Nets only: focal-loss class weights; 'balanced' (the seed study's) raises "
                   "kaon/proton/electron efficiency at the cost of accuracy (docs/nets.md).")
@click.option("--stream", is_flag=True, default=False,
              help="xgb with --data: read out of core (bounded chunks) and train from a "
                   "chunk iterator in this process.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="xgb with --data: read and train on the Dask cluster at ADDRESS "
                   "(e.g. tcp://HOST:8786); needs the 'dask' extra.")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="xgb with --data: read and train on a local Dask cluster of N workers "
                   "(127.0.0.1), started and stopped by this command.")
@click.option("--max-memory", default=None, metavar="SIZE", callback=_memory_option,
              show_default="a quarter of RAM, at most 2 GiB",
              help="Memory hint for --stream/--scheduler/--workers (e.g. 4GiB, 800MB): "
                   "bounds the chunk size and the held-out rows kept.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors in the log.")
@click.version_option(__version__, prog_name="pid-export")
@click.pass_context
@handle_errors
def main(ctx, model, out, data, prange, seed, tree, column_map, tracks, report, no_dpg_cuts,
         parity_bound, epochs, batch_size, checkpoint, resume, learning_rate, class_weight, stream,
         scheduler, workers, max_memory, verbose, quiet):
    """Train a PID classifier, export it to ONNX for O2 and prove onnxruntime agrees.

    \b
    Main job:   pid-export --model xgb --out pid.onnx
    Real data:  pid-export --model xgb --data AO2D_MC.root --out pid.onnx
    Subcommands (simulate, predict, ...) take their own options: pid-export CMD --help
    """
    _setup_logging(verbose, quiet)
    if ctx.invoked_subcommand is not None:
        if model is not None:
            raise click.UsageError("--model starts the main job; it cannot be combined with a subcommand")
        return
    if model is None:
        click.echo(ctx.get_help())
        ctx.exit(0)

    from .pipeline import MainOptions, run_main

    opts = MainOptions(
        model=model, out=out, data=tuple(data), prange=prange, seed=seed, tree=tree,
        column_map=column_map, tracks=tracks, report=report, dpg_cuts=not no_dpg_cuts,
        parity_bound=parity_bound, epochs=epochs, batch_size=batch_size, checkpoint=checkpoint,
        resume=resume, learning_rate=learning_rate, class_weight=class_weight, stream=stream, scheduler=scheduler, workers=workers, max_memory=max_memory,
    )
    result = run_main(opts, echo=click.echo)
    if not result.passed:
        sys.exit(3)


@main.command()
@click.option("--tracks", type=click.IntRange(min=1), default=300_000, show_default=True,
              help="Number of tracks to simulate (before selections).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="ROOT file to write (AO2D layout: DF_* folders, tree O2pidtracksmc).")
@click.option("--seed", type=int, default=231, show_default=True, help="Random seed.")
@click.option("--tracks-per-df", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Tracks per DF_* folder.")
@handle_errors
def simulate(tracks, out, seed, tracks_per_df):
    """Write the built-in fast simulation of Run 3 Pb-Pb tracks as an AO2D file."""
    from .simulate import simulate_to_file

    summary = simulate_to_file(out, n_tracks=tracks, seed=seed, tracks_per_df=tracks_per_df)
    click.echo(f"wrote {summary['n_tracks']} tracks in {summary['n_df']} DF folders to {out}")
    for name, count in summary["species"].items():
        click.echo(f"  {name:>10}: {count}")


@main.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Exported ONNX model.")
@click.option("--data", multiple=True, type=str, metavar="FILE|GLOB", required=True,
              help="AO2D-style ROOT file(s) or Parquet; labels are not needed.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Parquet file with one row per track.")
@click.option("--tree", default=None, help="Tree name (default: detected).")
@click.option("--column-map", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TOML file mapping features to branch names.")
@handle_errors
def predict(model_path, data, out, tree, column_map):
    """Apply an exported model to (unlabelled) tracks and print the class fractions."""
    from .predict import run_predict

    run_predict(model_path, list(data), out, tree=tree, column_map=column_map, echo=click.echo)


# Subcommands of later stages register themselves here.
def _register_optional_commands() -> None:
    from . import cpp_cli  # noqa: F401  (attaches `pid-export cpp`)
    from .ccdb_cli import ccdb, upload

    main.add_command(upload)
    main.add_command(ccdb)
    from .validate_cli import register as register_validate

    register_validate(main)
    from .evaluate_cli import evaluate

    main.add_command(evaluate)
    from .study_cli import register as register_study

    register_study(main)


_register_optional_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
