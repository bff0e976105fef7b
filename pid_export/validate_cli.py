"""The ``pid-export validate`` command: options in, :func:`pid_export.validate.run_validate` out.

:func:`register` attaches the command to the ``pid-export`` group (called from
``pid_export.cli._register_optional_commands``). Exit 0 when every required check passed,
3 when one failed, 2 for an input the command cannot use.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("validate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--native", type=click.Path(path_type=Path), default=None,
              help="Native model for parity: XGBoost .json/.ubj, a net checkpoint folder "
                   "(<stem>.ckpt), or a scikit-learn joblib/pickle file with --trust-pickle.")
@click.option("--native-kind", type=click.Choice(("simplenn", "dnn", "fse0", "fse1")), default=None,
              show_default="model_kind from the ONNX metadata",
              help="Net family of a checkpoint folder.")
@click.option("--trust-pickle", is_flag=True, default=False,
              help="Allow --native to be a pickle/joblib file. Unpickling runs code from the "
                   "file: only for files you made or trust.")
@click.option("--data", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="AO2D-style ROOT or Parquet file(s) for the parity rows (labelled: their test "
                   "split; unlabelled: all tracks). Default: the built-in simulation.")
@click.option("--tree", default=None, help="Tree name inside each DF_* folder (default: detected).")
@click.option("--rows", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Held-out rows used for parity at most.")
@click.option("--tracks", type=click.IntRange(min=1000), default=20_000, show_default=True,
              help="Size of the built-in sample when no --data is given.")
@click.option("--seed", type=int, default=None, show_default="the model's metadata, else 231",
              help="Seed of the split and of the row sampling.")
@click.option("--bound", type=float, default=None, show_default="1e-6 trees, 1e-5 nets",
              help="Largest |onnxruntime - native| that parity accepts.")
@click.option("--o2-runtime/--no-o2-runtime", default=True, show_default=True,
              help="Also run the behaviour checks under onnxruntime 1.22 (O2's version) in a "
                   "cached environment of its own; created once with pip on first use.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report (checks, parity figures, worst rows) as JSON.")
def validate(model, native, native_kind, trust_pickle, data, tree, rows, tracks, seed, bound,
             o2_runtime, json_out):
    """Check an ONNX model against what O2 needs, and against its native model.

    \b
    Any model:        pid-export validate model.onnx
    With parity:      pid-export validate pid.onnx --native pid.xgb.ubj --data AO2D_MC.root
    Report as JSON:   pid-export validate pid.onnx --json report.json

    Prints one line per check (PASS, FAIL, WARN, SKIP); exits 0 only if every required
    check passed.
    """
    from .cli import handle_errors
    from .validate import ValidateOptions, run_validate

    opts = ValidateOptions(native=native, native_kind=native_kind, data=tuple(data), tree=tree,
                           rows=rows, tracks=tracks, seed=seed, bound=bound, o2_runtime=o2_runtime,
                           trust_pickle=trust_pickle)
    report = handle_errors(run_validate)(model, opts, json_out=json_out, echo=click.echo)
    sys.exit(report.exit_code)


def register(group: click.Group) -> None:
    group.add_command(validate)
