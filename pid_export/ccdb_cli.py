"""The ``pid-export upload`` and ``pid-export ccdb ls|get`` commands.

A thin click layer over :mod:`.ccdb`: each command parses its options and calls one
library function, then prints what it returns. The default store is the local snapshot
folder ``./ccdb``; a server is used only when ``--ccdb-url`` names one.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import click

from . import ccdb as lib

URL_HELP = ("Where the CCDB is: file://DIR for a local snapshot folder (default: "
            f"file://./{lib.DEFAULT_LOCAL_DIR}), or a server, e.g. http://ccdb-test.cern.ch:8080 "
            "(test instance) or http://alice-ccdb.cern.ch (production; the production servers "
            "authenticate with --cert/--key over https://).")


def _handle_errors(func):
    """The package's error handling (cli.handle_errors), looked up when the command runs.

    Looked up late because cli.py imports this module while it is itself being imported.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from .cli import handle_errors

        return handle_errors(func)(*args, **kwargs)

    return wrapper


def _store_options(func):
    """--ccdb-url, --cert, --key, --timeout, --retries: how to reach the store."""
    options = [
        click.option("--ccdb-url", default=None, metavar="URL", help=URL_HELP),
        click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="TLS client certificate (PEM) for https:// servers: the Grid "
                          "certificate or the token certificate of alien-token-init."),
        click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Private key of --cert (PEM, not pass-phrase protected, mode 600). "
                          "Its content is never printed or logged."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                     metavar="SECONDS",
                     help="How long to wait for the server's answer. Default: "
                          f"{lib.DEFAULT_READ_TIMEOUT:g} s (connecting: "
                          f"{lib.DEFAULT_CONNECT_TIMEOUT:g} s)."),
        click.option("--retries", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Retries after connection errors, time-outs and 5xx answers, with "
                          f"back-off; never after a 4xx. Default: {lib.DEFAULT_RETRIES}."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--path", "ccdb_path", required=True, metavar="PATH",
              help="CCDB folder, one model per folder, e.g. Users/j/jdoe/PIDML/xgb. Letters, "
                   "digits, '_', '-', '.'; no all-digit segment.")
@click.option("--start", default=None, metavar="T",
              help="Start of validity: ms since 1970, an ISO date (UTC unless it has an offset), "
                   "'now', or an offset from now such as -1d, +12h, +1y. Default: now.")
@click.option("--end", default=None, metavar="T",
              help="End of validity (exclusive), same forms. Default: now + 1 day, as O2.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE",
              help="Extra metadata (repeat). Keys: letters, digits, '_'. The model kind, "
                   "momentum range, feature-spec digest and package version are added.")
@_store_options
@click.option("--dry-run", is_flag=True,
              help="Print the exact request (URL, headers, size, MD5) or the files to write; "
                   "send and write nothing.")
@click.option("--force", is_flag=True,
              help="Store the model even if it fails the O2 contract checks (loud warning; "
                   "recorded as o2_contract=forced).")
@_handle_errors
def upload(model, ccdb_path, start, end, meta, ccdb_url, cert, key, timeout, retries, dry_run,
           force):
    """Store MODEL.onnx where O2 tasks load it: a local snapshot, or a CCDB server.

    The model must pass the O2 contract checks first. Over REST the object is read back
    and its MD5 compared with MODEL.onnx.

    \b
    Local:   pid-export upload pid.onnx --path Users/j/jdoe/PIDML/xgb
    Server:  pid-export upload pid.onnx --path Users/j/jdoe/PIDML/xgb \\
               --ccdb-url http://ccdb-test.cern.ch:8080 --start 2023-07-01 --end +1y
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = lib.upload_model(model, ccdb_path, url=ccdb_url, start=start, end=end,
                                  meta=list(meta), cert=cert, key=key, dry_run=dry_run,
                                  force=force, read_timeout=timeout, retries=retries)
    for warning in caught:  # the --force caveat, in red, once
        click.secho(f"WARNING: {warning.message}", fg="red", bold=True, err=True)
    for line in lib.describe_upload(result):
        click.echo(line)
    for line in lib.o2_configurables(result):
        click.echo(line)


@click.group()
def ccdb():
    """Look into a CCDB (the local snapshot ./ccdb unless --ccdb-url): ls, get."""


@ccdb.command("ls")
@click.argument("path", required=False, default="")
@_store_options
@_handle_errors
def ls(path, ccdb_url, cert, key, timeout, retries):
    """List the objects at PATH (validity, created, size, MD5, metadata) and its subfolders."""
    listing = lib.list_objects(path, url=ccdb_url, cert=cert, key=key, read_timeout=timeout,
                               retries=retries)
    for line in lib.format_listing(listing):
        click.echo(line)


@ccdb.command("get")
@click.argument("path")
@click.option("--timestamp", default="now", show_default=True, metavar="T",
              help="Time the object must be valid at: ms, ISO date, 'now' or an offset (-1d).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write (atomically).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE",
              help="Only objects with this metadata (repeat).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@_store_options
@_handle_errors
def get(path, timestamp, out, meta, force, ccdb_url, cert, key, timeout, retries):
    """Fetch the object at PATH valid at --timestamp into --out, checking its MD5."""
    info = lib.fetch_object(path, out, url=ccdb_url, timestamp=timestamp, meta=list(meta),
                            force=force, cert=cert, key=key, read_timeout=timeout,
                            retries=retries)
    click.echo(f"wrote {out} ({info.size} bytes, MD5 {info.md5})")
    click.echo(f"  object    {info.id or '?'} at {path}")
    click.echo(f"  validity  {lib.format_ms(info.valid_from)} -> "
               f"{lib.format_ms(info.valid_until)} UTC")
