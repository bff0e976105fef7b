"""The ``pid-export evaluate`` command (detector commissioning).

Imported by :func:`pid_export.cli._register_optional_commands`; the work is done by
:func:`pid_export.evaluate.evaluate_main`.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli import RANGE_CHOICES, handle_errors


@click.command("evaluate")
@click.option("--model", "model_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Exported ONNX model (any kind: trees or nets).")
@click.option("--data", multiple=True, type=click.Path(path_type=Path),
              help="Labelled AO2D-style ROOT file(s), flat trees or Parquet; repeat for more. "
                   "Without it, the built-in fast simulation is used.")
@click.option("--disable", multiple=True, metavar="GROUPS",
              help="Detector group(s) to switch off: tpc, tof or bayes; join with '+' to switch "
                   "off several together (tof+bayes). Repeat for more scenarios.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              show_default="MODEL with .ckpt, if present",
              help="FSE Phase 1 only: checkpoint folder, for the mean gate values.")
@click.option("--all-rows", is_flag=True, default=False,
              help="Evaluate on every selected track, not only the test split.")
@click.option("--range", "prange", type=click.Choice(RANGE_CHOICES), default=None,
              show_default="the model's training range",
              help="Transverse-momentum range in GeV/c.")
@click.option("--seed", type=int, default=None, show_default="the model's training seed",
              help="Seed of the split (and of the built-in simulation).")
@click.option("--tracks", type=click.IntRange(min=1000), default=300_000, show_default=True,
              help="Size of the built-in sample (ignored with --data).")
@click.option("--no-dpg-cuts", is_flag=True, default=False, help="Skip the DPG track selections.")
@click.option("--tree", default=None, help="Tree name (default: detected).")
@click.option("--column-map", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TOML file mapping features to branch names.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures as JSON to this file.")
@handle_errors
def evaluate(model_path, data, disable, checkpoint, all_rows, prange, seed, tracks, no_dpg_cuts,
             tree, column_map, report):
    """Evaluate a model with detectors switched off, beside the full-detector figures.

    \b
    pid-export evaluate --model fse1.onnx --data AO2D_MC.root --disable tof
    pid-export evaluate --model pid.onnx --disable tpc --disable tof+bayes

    The switched-off groups get NaN values and flag 0, as O2 feeds them when a detector
    is absent; the model is not retrained. Accuracy and per-class efficiency and purity
    are printed for each scenario, with the change from the full-detector figures in
    points; for FSE Phase 1 also the mean gate value per detector group and class.
    """
    from .evaluate import evaluate_main
    from .export import write_json_atomic

    result = evaluate_main(model_path, data=data, disable=disable, checkpoint=checkpoint,
                           tracks=tracks, seed=seed, prange=prange, dpg_cuts=not no_dpg_cuts,
                           all_rows=all_rows, tree=tree, column_map=column_map, echo=click.echo)
    if report is not None:
        write_json_atomic(result.as_dict(), report)
        click.echo(f"wrote {report}")
