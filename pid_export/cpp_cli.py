"""The ``pid-export cpp`` command: C++ header, example task and CMake lines for a model.

Imported by :func:`pid_export.cli._register_optional_commands`, which attaches the command
to the ``pid-export`` group; the work is done by :func:`pid_export.cppgen.generate_cpp`.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli import handle_errors, main


@click.command("cpp")
@click.argument("model_path", metavar="MODEL.onnx",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the files (created if missing), e.g. your O2Physics task folder.")
@click.option("--features", "features_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Feature names in model order (JSON list or one per line), for a model "
                   "without pid-export metadata.")
@click.option("--force", is_flag=True, default=False,
              help="Replace files of the same names in --out-dir.")
@handle_errors
def cpp(model_path: Path, out_dir: Path, features_file: Path | None, force: bool) -> None:
    """Write the C++ side of MODEL.onnx for an O2Physics task.

    \b
    <name>Features.h  standalone C++17: fills the model input from a track row
                      exactly as training encoded it (<name> from the model file)
    <name>Task.cxx    example task: model from the CCDB, one table row per track
    <name>Task.cmake  the o2physics_add_dpl_workflow lines for the task
    """
    from .cppgen import generate_cpp

    for path in generate_cpp(model_path, out_dir, features_file=features_file, force=force):
        click.echo(str(path))


main.add_command(cpp)
