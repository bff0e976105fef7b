"""Net checkpoints: a folder with a JSON configuration and msgpack states, no pickle.

Takes a trained :class:`NetModel` and hands on ``<stem>.ckpt/``::

    config.json        format, model kind, feature-spec digest, hyper-parameters,
                       training settings, standardisation statistics, history, and the
                       SHA-256 of the two state files
    state.msgpack      the network's variables (flax.serialization, pure dict)
    optimizer.msgpack  the Adam state, so that training can go on

and reads it back with a clear error for a missing or corrupt folder, another model
kind or another feature specification. The folder is written next to itself under a
temporary name and renamed into place, so it appears whole or not at all; a folder of
that name that is not a checkpoint of ours is never replaced (a numbered name is used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import ConfigError, InputError
from ...features import spec_digest

log = logging.getLogger(__name__)

FORMAT = "pid-export net checkpoint"
FORMAT_VERSION = 1
CONFIG = "config.json"
STATE = "state.msgpack"
OPTIMIZER = "optimizer.msgpack"
SUFFIX = ".ckpt"


def checkpoint_dir(stem: Path) -> Path:
    """Where the checkpoint of an export to ``<stem>.onnx`` goes."""
    return stem.with_name(stem.name + SUFFIX)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_config(folder: Path) -> dict[str, Any] | None:
    """The folder's checkpoint configuration, or None if it is not one of ours."""
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return cfg if isinstance(cfg, dict) and cfg.get("format") == FORMAT else None


def _free_name(folder: Path) -> Path:
    """``folder`` if it is free or one of our checkpoints, else the first free numbered name."""
    if not folder.exists() or (folder.is_dir() and read_config(folder) is not None):
        return folder
    base = folder.name[: -len(SUFFIX)] if folder.name.endswith(SUFFIX) else folder.name
    for i in range(2, 1000):
        candidate = folder.with_name(f"{base}-{i}{SUFFIX}")
        if not candidate.exists() or (candidate.is_dir() and read_config(candidate) is not None):
            log.warning("%s exists and is not a pid-export checkpoint: writing %s instead",
                        folder, candidate)
            return candidate
    raise InputError(f"{folder}: exists and is not a checkpoint, and so do {base}-2..999{SUFFIX}; "
                     "clean up the folder")


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_checkpoint(folder: Path, config: dict[str, Any], state: bytes,
                     optimizer: bytes | None) -> Path:
    """Write the three files into ``folder`` (or a numbered sibling) atomically."""
    folder = _free_name(Path(folder))
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{folder}: folder {parent} does not exist; create it first")
    config = dict(config, format=FORMAT, format_version=FORMAT_VERSION,
                  feature_spec_digest=spec_digest(), package_version=__version__)
    config["files"] = {STATE: _sha256(state)}
    if optimizer is not None:
        config["files"][OPTIMIZER] = _sha256(optimizer)

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    old: Path | None = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is not
        _write_file(tmp / STATE, state)
        if optimizer is not None:
            _write_file(tmp / OPTIMIZER, optimizer)
        # The configuration last: a folder without it is not taken for a checkpoint.
        _write_file(tmp / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=parent))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists() and (old / folder.name).exists():
            os.replace(old / folder.name, folder)  # put the previous checkpoint back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def open_checkpoint(folder: Path, *,
                    expect_kind: str) -> tuple[dict[str, Any], bytes, bytes | None]:
    """Configuration and state bytes of a checkpoint, checked against ``expect_kind``."""
    folder = Path(folder)
    hint = ("give the checkpoint folder that exporting a net writes beside its ONNX file "
            "(<out>.ckpt)")
    if not folder.exists():
        raise InputError(f"--checkpoint {folder}: no such folder; {hint}")
    if not folder.is_dir():
        raise InputError(f"--checkpoint {folder}: is a file, not a checkpoint folder; {hint}")
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise InputError(f"--checkpoint {folder}: no {CONFIG} inside, so not a pid-export "
                         f"net checkpoint (or an incomplete one); {hint}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--checkpoint {folder}: {CONFIG} is corrupt ({err}); "
                         "export again from the training run") from err
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else None
        raise InputError(f"--checkpoint {folder}: {CONFIG} is not a pid-export net checkpoint "
                         f"configuration (format {found!r}, expected {FORMAT!r})")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise InputError(f"--checkpoint {folder}: format version {cfg.get('format_version')!r}, "
                         f"this pid-export reads {FORMAT_VERSION}; use the matching version")
    kind = cfg.get("model")
    if kind != expect_kind:
        raise ConfigError(f"--checkpoint {folder} holds a {kind!r} net, not {expect_kind!r}: "
                          f"run with --model {kind} or give a {expect_kind} checkpoint")
    digest = spec_digest()
    if cfg.get("feature_spec_digest") != digest:
        raise ConfigError(f"--checkpoint {folder} was trained on feature specification "
                          f"{cfg.get('feature_spec_digest')!r}, this pid-export has {digest!r} "
                          "(features, order or groups changed): retrain the net")

    files = cfg.get("files") or {}
    blobs: dict[str, bytes | None] = {}
    for name in (STATE, OPTIMIZER):
        path = folder / name
        if name not in files:
            if name == STATE:
                raise InputError(f"--checkpoint {folder}: {CONFIG} lists no {STATE}: corrupt")
            blobs[name] = None
            continue
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InputError(f"--checkpoint {folder}: cannot read {name} ({err}): the "
                             "checkpoint is incomplete") from err
        if _sha256(data) != files[name]:
            raise InputError(f"--checkpoint {folder}: {name} is corrupt (SHA-256 differs from "
                             f"the one in {CONFIG}); export again from the training run")
        blobs[name] = data
    return cfg, blobs[STATE], blobs[OPTIMIZER]  # type: ignore[return-value]
