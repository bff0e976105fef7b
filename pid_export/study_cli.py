"""The ``pid-export study`` command and ``train/fit_all.py``: options in, the study out.

:func:`register` attaches :data:`study` to the ``pid-export`` group (called from
``pid_export.cli._register_optional_commands``); ``train/fit_all.py`` runs the same
command on its own. Exit codes: 0 every fit passed, 2 a bad configuration or a range
without tracks, 3 a fit failed the contract or parity gate, 1 another failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("study")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="TOML study configuration (see train/configs/default.toml).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="output.dir of the configuration",
              help="Output folder: one subfolder per model and range, plots, report.md.")
@click.option("--force", is_flag=True, default=False,
              help="Refit every model, also those finished earlier, and write into a folder "
                   "that holds another configuration's results.")
def study(config_path: Path, out: Path | None, force: bool) -> None:
    """Fit all models over all momentum ranges, evaluate, plot and report.

    \b
    A rerun skips fits that finished with the same configuration, so an interrupted
    study resumes. Example:
      pid-export study --config train/configs/smoke.toml --out smoke-study
    """
    from .errors import PidExportError
    from .study import load_config, run_study

    try:
        cfg = load_config(config_path)
        result = run_study(cfg, out, force=force, echo=click.echo)
    except PidExportError as err:
        click.secho(f"error: {err}", fg="red", err=True)
        sys.exit(err.exit_code)
    sys.exit(result.exit_code)


def register(group: click.Group) -> None:
    group.add_command(study)
