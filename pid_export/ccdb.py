"""CCDB: ship a validated ONNX model to the place O2 tasks load it from.

Takes an exported ONNX file, checks it against the O2 contract (:mod:`.contract`) and
hands on a CCDB object: the model's raw bytes with a validity interval and metadata
(model kind, momentum range, feature-spec digest, package version, plus the user's).

Two stores, one interface (DESIGN §4):

* a **local snapshot** (the default, or a ``file://DIR`` URL): ``DIR/PATH/snapshot.root``
  holds the raw bytes, which is where O2's ``CcdbApi`` looks in file mode and under
  ``ALICEO2_CCDB_LOCALCACHE``. Every upload is also kept in ``DIR/PATH/.versions/`` and
  recorded with its validity and metadata in ``.versions/index.json``, so a new upload
  never destroys an earlier one. Nothing is ever deleted.
* a **CCDB server** (``http://`` or ``https://``), through its REST API: a multipart POST
  to ``URL/PATH/START/END/key=value/...``, then a round trip (GET at a timestamp inside the
  validity, redirect followed, MD5 compared with the local file).

Both stores list a path (``ls``) and fetch the object valid at a timestamp (``get``).
Paths, metadata keys and times are checked before anything is written or sent.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests

from . import __version__
from .errors import CCDBError, CCDBUploadError, ConfigError, InputError, PidExportError

log = logging.getLogger(__name__)

#: Local snapshot folder used when no --ccdb-url is given (relative to the working dir).
DEFAULT_LOCAL_DIR = Path("ccdb")
#: O2's default validity: from now for one day (CcdbApi::storeAsBinaryFile).
DAY_MS = 86_400_000
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Generous: a 100-tree forest is ~15 MB and the server answers only once it is stored.
DEFAULT_READ_TIMEOUT = 120.0
DEFAULT_RETRIES = 3
#: Seconds before the first retry; doubled for each further one.
DEFAULT_BACKOFF = 1.0
MAX_REDIRECTS = 5

SNAPSHOT_NAME = "snapshot.root"
VERSIONS_DIR = ".versions"
INDEX_NAME = "index.json"
CONTENT_TYPE = "application/octet-stream"
#: Name of the multipart file field, as CcdbApi sends it.
FILE_PART = "send"
#: Keys copied from the model's own metadata into the CCDB metadata.
MODEL_META_KEYS = ("model_kind", "momentum_range", "feature_spec_digest", "package_version")
#: Metadata key recording whether the model passed the contract ("passed") or not ("forced").
CONTRACT_KEY = "o2_contract"

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_KEY_RE = re.compile(r"[A-Za-z0-9_]+")
#: First path segments the server reads as an endpoint rather than a folder.
_ENDPOINTS = frozenset({"browse", "latest"})
#: Fields of a CCDB object description; a metadata key may not shadow them.
_OBJECT_FIELDS = ("id", "path", "validFrom", "validUntil", "createTime", "lastModified",
                  "MD5", "fileName", "contentType", "size")
_RESERVED_KEYS = frozenset(k.lower() for k in _OBJECT_FIELDS)
#: Browse fields that are neither an object field above nor user metadata.
_SERVER_FIELDS = frozenset({"initialValidity", "replicas", "partName", "UploadedFrom"})
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS,
            "y": 365 * DAY_MS}
_OFFSET_RE = re.compile(r"((?i:now))?([+-])(\d+)([smhdwy])")
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


# --------------------------------------------------------------------------- checks


def validate_path(path: str, *, allow_empty: bool = False) -> str:
    """Return the CCDB path without leading/trailing '/', or raise :class:`ConfigError`.

    Refused: empty segments, ``.`` and ``..``, a segment starting with ``.`` (hidden
    folders; the local store keeps its versions in one), a segment of digits only (the
    server reads it as a timestamp), characters other than letters, digits, ``_``, ``-``,
    ``.`` and ``/``, and ``browse``/``latest`` as first segment (server endpoints).
    """
    inner = path[1:] if path.startswith("/") else path
    inner = inner[:-1] if inner.endswith("/") else inner
    if not inner:
        if allow_empty:
            return ""
        raise ConfigError("CCDB path: got an empty path; give folders such as "
                          "Users/j/jdoe/PIDML/xgb (one model per folder)")
    problems = []
    for i, seg in enumerate(inner.split("/")):
        if seg == "":
            problems.append("an empty segment ('//')")
        elif seg in (".", ".."):
            problems.append(f"segment {seg!r} (relative paths are not allowed)")
        elif not _SEGMENT_RE.fullmatch(seg):
            bad = "".join(sorted({c for c in seg if not _SEGMENT_RE.fullmatch(c)}))
            problems.append(f"segment {seg!r} holds characters {bad!r}")
        elif seg.isdigit():
            problems.append(f"segment {seg!r} is all digits (the server reads it as a timestamp)")
        elif seg.startswith("."):
            problems.append(f"segment {seg!r} starts with '.' (hidden folder)")
        elif i == 0 and seg.lower() in _ENDPOINTS:
            problems.append(f"first segment {seg!r} is a server endpoint")
    if problems:
        raise ConfigError(f"CCDB path {path!r}: " + "; ".join(problems) + ". Use segments of "
                          "letters, digits, '_', '-' and '.', e.g. Users/j/jdoe/PIDML/xgb")
    return inner


def validate_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """Check keys (letters, digits, ``_``: no punctuation, no spaces) and turn values to text.

    Non-string values become compact JSON. Empty values, control characters and keys that
    shadow a field the server sets itself (``size``, ``MD5``, ...) are refused.
    """
    out: dict[str, str] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            hint = re.sub(r"[^A-Za-z0-9_]", "_", str(key)) or "modelKind"
            raise ConfigError(f"metadata key {key!r}: only letters, digits and '_' are allowed "
                              f"(the CCDB refuses punctuation and spaces in keys); rename it, "
                              f"e.g. {hint!r}")
        if key.lower() in _RESERVED_KEYS:
            raise ConfigError(f"metadata key {key!r}: the server sets this field itself; "
                              "choose another name")
        text = value if isinstance(value, str) else json.dumps(
            value, sort_keys=True, separators=(",", ":"))
        if not text:
            raise ConfigError(f"metadata {key}: the value is empty; give KEY=VALUE")
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ConfigError(f"metadata {key}: the value holds control characters "
                              "(newline, tab, ...); remove them")
        out[key] = text
    return out


def parse_meta_options(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line to a checked dict (split at the first '=')."""
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--meta {item!r}: expected KEY=VALUE, e.g. --meta period=LHC23zzh")
        if key in meta:
            raise ConfigError(f"--meta {key}: given twice; give each key once")
        meta[key] = value
    return validate_metadata(meta)


# --------------------------------------------------------------------------- time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_time(value: str | int, *, now: int | None = None, what: str = "time") -> int:
    """Milliseconds since 1970 (UTC) from ms, an ISO date, ``now`` or an offset from now.

    Offsets are ``+N`` or ``-N`` followed by a unit: s, m (minutes), h, d, w, y (365 d),
    optionally after ``now`` (``now+12h``). ISO dates without an offset are UTC.
    """
    now = now_ms() if now is None else now
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        text = str(value).strip()
    if text.lower() == "now":
        return now
    offset = _OFFSET_RE.fullmatch(text)
    if offset:
        sign = 1 if offset.group(2) == "+" else -1
        return now + sign * int(offset.group(3)) * _UNIT_MS[offset.group(4)]
    if text.isascii() and text.isdigit():
        ms = int(text)
        if 10**9 <= ms < 10**11:
            log.warning("%s %s looks like seconds, not milliseconds (%s); CCDB times are in ms",
                        what, text, format_ms(ms))
        return ms
    try:
        stamp = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{what} {value!r}: expected milliseconds since 1970 (e.g. 1735689600000), an ISO "
            "date (2025-01-01, 2025-01-01T12:00:00Z; UTC unless an offset is given), 'now', "
            "or an offset from now such as +1d, +12h, +1y (units s, m, h, d, w, y)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.timezone.utc)
    epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (stamp - epoch) // _dt.timedelta(milliseconds=1)


def resolve_validity(start: str | int | None = None, end: str | int | None = None, *,
                     now: int | None = None) -> tuple[int, int]:
    """The validity ``[start, end)`` in ms; defaults as O2: now, and now + 1 day."""
    now = now_ms() if now is None else now
    t0 = now if start is None else parse_time(start, now=now, what="--start")
    t1 = now + DAY_MS if end is None else parse_time(end, now=now, what="--end")
    if t0 < 0:
        raise ConfigError(f"--start {start!r}: validity cannot start before 1970 ({t0} ms)")
    if t1 <= t0:
        raise ConfigError(f"validity: --end ({format_ms(t1)}, {t1} ms) must come after --start "
                          f"({format_ms(t0)}, {t0} ms); give a later --end such as +1y or an "
                          "ISO date")
    return t0, t1


def format_ms(ms: int | None) -> str:
    """``2025-01-01 12:00:00`` (UTC) for a time in ms; ``?`` when unknown."""
    if ms is None:
        return "?"
    try:
        stamp = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    return stamp.strftime("%Y-%m-%d %H:%M:%S")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ObjectInfo:
    """One CCDB object: what the browse JSON (or the local index) says of it."""

    path: str
    id: str
    valid_from: int | None
    valid_until: int | None
    created: int | None
    md5: str
    size: int
    file_name: str = ""
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], path: str) -> ObjectInfo:
        def as_int(key: str) -> int | None:
            try:
                return int(obj[key])
            except (KeyError, TypeError, ValueError):
                return None

        if isinstance(obj.get("metadata"), Mapping):  # the local index keeps it apart
            meta = {str(k): str(v) for k, v in obj["metadata"].items()}
        else:  # the server's browse JSON merges it into the object
            meta = {k: str(v) for k, v in obj.items() if k not in _OBJECT_FIELDS
                    and k not in _SERVER_FIELDS and isinstance(v, (str, int, float))}
        return cls(path=str(obj.get("path") or path), id=str(obj.get("id", "")),
                   valid_from=as_int("validFrom"), valid_until=as_int("validUntil"),
                   created=as_int("createTime"), md5=str(obj.get("MD5", "")).lower(),
                   size=as_int("size") or 0, file_name=str(obj.get("fileName", "")),
                   content_type=str(obj.get("contentType", "")), metadata=meta)

    def covers(self, timestamp: int) -> bool:
        return (self.valid_from is not None and self.valid_until is not None
                and self.valid_from <= timestamp < self.valid_until)


@dataclass(frozen=True)
class Listing:
    path: str
    objects: list[ObjectInfo]
    subfolders: list[str]


@dataclass(frozen=True)
class Artefact:
    """The model as it will be stored: bytes, their MD5, the metadata it contributes."""

    source: Path
    data: bytes
    md5: str
    metadata: dict[str, str]
    contract: str  # "passed" or "forced"
    contract_problem: str = ""

    @property
    def file_name(self) -> str:
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", self.source.name)
        return name or "model.onnx"


@dataclass(frozen=True)
class UploadResult:
    """What an upload did (or, with ``dry_run``, would do) and where O2 finds the model."""

    kind: str  # "local" or "rest"
    ccdb_url: str  # what an O2 task passes as its CCDB URL
    path: str
    valid_from: int
    valid_until: int
    md5: str
    size: int
    file_name: str
    metadata: dict[str, str]
    contract: str
    contract_problem: str = ""
    dry_run: bool = False
    location: str = ""  # server Location, or the snapshot file
    object_id: str = ""
    verified: bool = False
    request: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- model


def prepare_artefact(model_path: str | Path, *, force: bool = False) -> Artefact:
    """Read the model, run the O2 contract checks and collect its metadata.

    A model that fails the checks (or is not ONNX) is refused with the checks' error;
    with ``force`` it goes ahead with a warning and ``o2_contract=forced`` in its metadata.
    """
    from .contract import assert_contract
    from .export import read_metadata

    source = Path(model_path)
    if not source.is_file():
        raise InputError(f"{source}: no such model file; give the .onnx file pid-export wrote")
    data = source.read_bytes()
    if not data:
        raise InputError(f"{source}: the file is empty; re-export the model")

    status, problem = "passed", ""
    try:
        assert_contract(source)
    except PidExportError as err:  # ContractError, or InputError for a file that is not ONNX
        if not force:
            raise
        status, problem = "forced", str(err)
        warnings.warn(f"--force: {source} fails the O2 contract checks and is stored anyway; "
                      f"O2 tasks may refuse it or compute wrong probabilities. {problem}",
                      UserWarning, stacklevel=2)

    meta: dict[str, Any] = {}
    try:
        props = read_metadata(source)
    except PidExportError:
        props = {}
    for key in MODEL_META_KEYS:
        if props.get(key) not in (None, ""):
            meta[key] = props[key]
    meta[CONTRACT_KEY] = status
    return Artefact(source, data, md5_hex(data), validate_metadata(meta), status, problem)


def merge_metadata(model_meta: Mapping[str, str], user_meta: Mapping[str, str]) -> dict[str, str]:
    """The model's metadata, then the user's (the user's value wins, with a note in the log)."""
    merged = dict(model_meta)
    for key, value in user_meta.items():
        if key in merged and merged[key] != value:
            log.warning("--meta %s=%s replaces %r taken from the model", key, value, merged[key])
        merged[key] = value
    return merged


# --------------------------------------------------------------------------- local store


class LocalSnapshot:
    """A folder laid out as O2's snapshot mode reads it, plus a kept history of uploads."""

    kind = "local"

    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(Path(root).expanduser()))

    @property
    def url(self) -> str:
        return "file://" + self.root.as_posix()

    def snapshot_file(self, path: str) -> Path:
        return self.root / path / SNAPSHOT_NAME

    def versions_dir(self, path: str) -> Path:
        return self.root / path / VERSIONS_DIR

    # -- upload

    def plan_upload(self, art: Artefact, path: str, t0: int, t1: int,
                    meta: Mapping[str, str]) -> UploadResult:
        lines = [f"would write {self.snapshot_file(path)} ({len(art.data)} bytes, MD5 {art.md5})",
                 f"would keep a copy in {self.versions_dir(path)}/ and record it in "
                 f"{self.versions_dir(path) / INDEX_NAME}",
                 "metadata " + (", ".join(f"{k}={v}" for k, v in meta.items()) or "(none)")]
        return self._result(art, path, t0, t1, meta, dry_run=True, request=lines)

    def upload(self, art: Artefact, path: str, t0: int, t1: int,
               meta: Mapping[str, str]) -> UploadResult:
        folder = self.root / path
        self._make_folder(folder)
        snapshot = self.snapshot_file(path)
        with self._locked(path):
            index = self._read_index(path)
            notes = self._keep_foreign_snapshot(path, index)
            object_id = str(uuid.uuid4())
            version = f"{t0}_{t1}_{object_id[:8]}.onnx"
            entry = {"id": object_id, "validFrom": t0, "validUntil": t1, "createTime": now_ms(),
                     "MD5": art.md5, "size": len(art.data), "fileName": art.file_name,
                     "contentType": CONTENT_TYPE, "file": version, "metadata": dict(meta)}
            _write_bytes(art.data, self.versions_dir(path) / version)
            index.append(entry)
            self._write_index(path, index)
            _write_bytes(art.data, snapshot)

        stored = md5_hex(snapshot.read_bytes())
        if stored != art.md5:
            raise CCDBUploadError(f"{snapshot}: read back with MD5 {stored}, the model has "
                                  f"{art.md5}; another process may be writing there")
        log.info("stored %s (%d bytes, MD5 %s) in %s, valid %d -> %d", art.source, len(art.data),
                 art.md5, snapshot, t0, t1)
        notes.append(f"{len(index)} version(s) kept in {self.versions_dir(path)}")
        return self._result(art, path, t0, t1, meta, location=str(snapshot), object_id=object_id,
                            verified=True, notes=notes)

    def _result(self, art: Artefact, path: str, t0: int, t1: int, meta: Mapping[str, str],
                **extra: Any) -> UploadResult:
        return UploadResult(kind=self.kind, ccdb_url=self.url, path=path, valid_from=t0,
                            valid_until=t1, md5=art.md5, size=len(art.data),
                            file_name=art.file_name, metadata=dict(meta),
                            contract=art.contract, contract_problem=art.contract_problem, **extra)

    def _make_folder(self, folder: Path) -> None:
        snapshot = folder / SNAPSHOT_NAME
        if snapshot.exists() and not snapshot.is_file():
            raise InputError(f"local CCDB: {snapshot} exists and is not a file; move it away")
        for parent in [folder, *folder.parents]:
            if parent.exists() and not parent.is_dir():
                raise InputError(f"local CCDB: {parent} is a file, but the path needs a folder "
                                 "there; choose another --path or --ccdb-url")
        try:
            (folder / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"local CCDB: cannot create {folder} ({err.strerror}); choose a "
                             "writable --ccdb-url file://DIR") from err

    @contextmanager
    def _locked(self, path: str) -> Iterator[None]:
        """One writer per folder at a time (two uploads would race on the index)."""
        with open(self.versions_dir(path) / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _keep_foreign_snapshot(self, path: str, index: list[dict[str, Any]]) -> list[str]:
        """Copy a snapshot.root that pid-export did not write into the versions folder."""
        snapshot = self.snapshot_file(path)
        if not snapshot.is_file():
            return []
        digest = md5_hex(snapshot.read_bytes())
        if any(e.get("MD5") == digest for e in index):
            return []
        stat = snapshot.stat()
        object_id = str(uuid.uuid4())
        version = f"preexisting_{object_id[:8]}.root"
        shutil.copy2(snapshot, self.versions_dir(path) / version)
        index.append({"id": object_id, "validFrom": None, "validUntil": None,
                      "createTime": int(stat.st_mtime * 1000), "MD5": digest,
                      "size": stat.st_size, "fileName": SNAPSHOT_NAME, "contentType": "",
                      "file": version, "metadata": {"origin": "preexisting"}})
        note = (f"{snapshot} was not written by pid-export: kept a copy as "
                f"{self.versions_dir(path) / version}")
        log.warning(note)
        return [note]

    def _read_index(self, path: str) -> list[dict[str, Any]]:
        index_file = self.versions_dir(path) / INDEX_NAME
        if not index_file.is_file():
            return []
        try:
            payload = json.loads(index_file.read_text())
            objects = payload["objects"]
            if not isinstance(objects, list):
                raise TypeError("'objects' is not a list")
        except (ValueError, KeyError, TypeError) as err:
            raise CCDBError(f"local CCDB index {index_file} is unreadable ({err}); repair it or "
                            "move the folder away (pid-export never overwrites it)") from err
        return objects

    def _write_index(self, path: str, objects: list[dict[str, Any]]) -> None:
        payload = {"format": "pid-export local CCDB index", "version": 1, "path": path,
                   "objects": objects}
        _write_bytes((json.dumps(payload, indent=1) + "\n").encode(),
                     self.versions_dir(path) / INDEX_NAME)

    # -- read

    def list(self, path: str) -> Listing:
        folder = self.root / path if path else self.root
        objects = [ObjectInfo.from_json(e, path) for e in self._read_index(path)] if path else []
        snapshot = folder / SNAPSHOT_NAME
        if path and not objects and snapshot.is_file():
            objects = [self._bare_snapshot_info(path)]
        subfolders = sorted(f"{path}/{p.name}" if path else p.name
                            for p in folder.iterdir() if p.is_dir()
                            and not p.name.startswith(".")) if folder.is_dir() else []
        objects.sort(key=lambda o: o.created or 0, reverse=True)
        return Listing(path, objects, subfolders)

    def get(self, path: str, timestamp: int,
            metadata: Mapping[str, str] | None = None) -> tuple[bytes, ObjectInfo]:
        """The newest object covering ``timestamp`` (and matching ``metadata``)."""
        index = self._read_index(path)
        snapshot = self.snapshot_file(path)
        if not index:
            if snapshot.is_file() and not metadata:
                log.warning("%s has no pid-export index: serving it as O2's file mode does, "
                            "whatever its validity", snapshot)
                return snapshot.read_bytes(), self._bare_snapshot_info(path)
            raise CCDBError(f"no object at {path} in the local snapshot {self.root} "
                            f"({snapshot} does not exist); upload one with "
                            f"pid-export upload MODEL.onnx --path {path}")
        wanted = dict(metadata or {})
        candidates = [(ObjectInfo.from_json(e, path), e) for e in index]
        candidates = [(o, e) for o, e in candidates if o.covers(timestamp)
                      and all(o.metadata.get(k) == v for k, v in wanted.items())]
        if not candidates:
            filt = "".join(f", {k}={v}" for k, v in wanted.items())
            raise CCDBError(f"no object at {path} valid at {timestamp} ({format_ms(timestamp)} "
                            f"UTC{filt}) in the local snapshot {self.root}; "
                            f"pid-export ccdb ls {path} --ccdb-url {self.url} shows the "
                            "validities")
        info, entry = max(candidates, key=lambda c: c[0].created or 0)
        data = (self.versions_dir(path) / entry["file"]).read_bytes()
        if md5_hex(data) != info.md5:
            raise CCDBError(f"{self.versions_dir(path) / entry['file']}: MD5 {md5_hex(data)} "
                            f"differs from the index ({info.md5}); the copy was altered")
        return data, info

    def _bare_snapshot_info(self, path: str) -> ObjectInfo:
        snapshot = self.snapshot_file(path)
        data = snapshot.read_bytes()
        return ObjectInfo(path=path, id="", valid_from=None, valid_until=None,
                          created=int(snapshot.stat().st_mtime * 1000), md5=md5_hex(data),
                          size=len(data), file_name=SNAPSHOT_NAME,
                          metadata={"origin": "no pid-export index"})


def _write_bytes(data: bytes, path: Path) -> None:
    try:
        _write_shared(data, path)
    except OSError as err:
        raise InputError(f"local CCDB: cannot write {path} ({err.strerror})") from err


def _write_shared(data: bytes, path: Path) -> None:
    """write_atomic, then the permissions of an ordinary new file.

    The temporary file behind write_atomic is private (0600); a snapshot folder or a
    fetched model is often read by other accounts (Grid jobs, a shared cache).
    """
    from .export import write_atomic

    write_atomic(data, path)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# --------------------------------------------------------------------------- REST store


class _Retry(Exception):
    """A failure worth another attempt; ``ambiguous`` when the body may have arrived."""

    def __init__(self, message: str, *, ambiguous: bool):
        super().__init__(message)
        self.ambiguous = ambiguous


class RestCCDB:
    """A CCDB server through its REST API, with time-outs, retries and a round trip."""

    kind = "rest"

    def __init__(self, url: str, *, cert: str | Path | None = None, key: str | Path | None = None,
                 connect_timeout: float | None = None, read_timeout: float | None = None,
                 retries: int | None = None, backoff: float | None = None,
                 max_redirects: int | None = None, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.cert = _client_cert(cert, key, self.url)
        self.verify = _ca_setting()
        self.timeout = (DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
                        DEFAULT_READ_TIMEOUT if read_timeout is None else read_timeout)
        self.retries = DEFAULT_RETRIES if retries is None else max(0, retries)
        self.backoff = DEFAULT_BACKOFF if backoff is None else backoff
        self.max_redirects = MAX_REDIRECTS if max_redirects is None else max_redirects
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"pid-export/{__version__}"

    # -- upload

    def upload_url(self, path: str, t0: int, t1: int, meta: Mapping[str, str]) -> str:
        tail = "".join(f"{quote(k, safe='')}={quote(v, safe='')}/" for k, v in meta.items())
        return f"{self.url}/{path}/{t0}/{t1}/{tail}"

    def prepare_upload(self, art: Artefact, path: str, t0: int, t1: int,
                       meta: Mapping[str, str]) -> requests.PreparedRequest:
        files = {FILE_PART: (art.file_name, art.data, CONTENT_TYPE)}
        request = requests.Request("POST", self.upload_url(path, t0, t1, meta), files=files)
        return self.session.prepare_request(request)

    def plan_upload(self, art: Artefact, path: str, t0: int, t1: int,
                    meta: Mapping[str, str]) -> UploadResult:
        prepared = self.prepare_upload(art, path, t0, t1, meta)
        lines = [f"{prepared.method} {prepared.url}"]
        lines += [f"  {k}: {v}" for k, v in _safe_headers(prepared.headers).items()]
        lines.append(f"  body: multipart/form-data, {len(prepared.body or b'')} bytes, one file "
                     f"part {FILE_PART!r} (filename {art.file_name}, {CONTENT_TYPE}, "
                     f"{len(art.data)} bytes, MD5 {art.md5})")
        if self.cert:
            cert, key = self.cert if isinstance(self.cert, tuple) else (self.cert, None)
            lines.append(f"  TLS client certificate {cert}" + (f", key {key}" if key else ""))
        lines.append(f"  time-outs: connect {self.timeout[0]:g} s, read {self.timeout[1]:g} s; "
                     f"then GET {self.url}/{path}/{t0}/ to compare the MD5")
        return self._result(art, path, t0, t1, meta, dry_run=True, request=lines)

    def upload(self, art: Artefact, path: str, t0: int, t1: int,
               meta: Mapping[str, str]) -> UploadResult:
        prepared = self.prepare_upload(art, path, t0, t1, meta)
        location, object_id, notes = self._post(prepared, art, path, t0, t1)
        log.info("uploaded %s (%d bytes, MD5 %s) to %s/%s, valid %d -> %d", art.source,
                 len(art.data), art.md5, self.url, path, t0, t1)
        try:
            data, info = self.get(path, t0)
        except CCDBError as err:
            raise CCDBUploadError(f"uploaded to {location or self.url + '/' + path}, but the "
                                  f"round trip failed: {err}") from err
        if md5_hex(data) != art.md5:
            raise CCDBUploadError(
                f"round trip failed: at {path} for {t0} the server returns {len(data)} bytes "
                f"with MD5 {md5_hex(data)} (object {info.id or '?'}), the local file has MD5 "
                f"{art.md5}; the stored object is not the model. Check with pid-export ccdb ls "
                f"{path} --ccdb-url {self.url}")
        notes.append(f"round trip: GET at {t0} returned the same {len(data)} bytes "
                     f"(MD5 {art.md5})")
        return self._result(art, path, t0, t1, meta, location=location,
                            object_id=object_id or info.id, verified=True, notes=notes)

    def _result(self, art: Artefact, path: str, t0: int, t1: int, meta: Mapping[str, str],
                **extra: Any) -> UploadResult:
        return UploadResult(kind=self.kind, ccdb_url=self.url, path=path, valid_from=t0,
                            valid_until=t1, md5=art.md5, size=len(art.data),
                            file_name=art.file_name, metadata=dict(meta),
                            contract=art.contract, contract_problem=art.contract_problem, **extra)

    def _post(self, prepared: requests.PreparedRequest, art: Artefact, path: str, t0: int,
              t1: int) -> tuple[str, str, list[str]]:
        """POST with retries; (Location, object id, notes).

        After an ambiguous failure (time-out or broken connection once the body was sent,
        or a 5xx) the path is listed first: if the object is there, it is not sent again.
        """
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._pause(attempt, f"upload to {self.url}/{path}", last)
            try:
                resp = self._send(prepared)
            except requests.RequestException as err:
                retry = self._classify(err, sent=prepared.body is not None)
                last = str(retry)
            else:
                retry = self._check_post(resp, path)
                if retry is None:
                    return self._location(resp, prepared), "", []
                last = str(retry)
            if retry.ambiguous:
                found = self._find_uploaded(path, art.md5, t0, t1, last)
                if found is not None:
                    note = (f"the upload was stored although the answer was lost ({last}); "
                            f"found as object {found.id} with the same MD5, not sent again")
                    log.warning(note)
                    return "", found.id, [note]
        raise CCDBUploadError(f"upload to {self.url}/{path} failed after {self.retries + 1} "
                              f"attempt(s): {last}. {_reach_hint(self.url)}")

    @staticmethod
    def _location(resp: requests.Response, prepared: requests.PreparedRequest) -> str:
        place = resp.headers.get("Location", "")
        if not place:
            log.warning("the server answered 201 Created without a Location header")
            return ""
        return urljoin(prepared.url or "", place)

    def _check_post(self, resp: requests.Response, path: str) -> _Retry | None:
        code = resp.status_code
        if code == 201:
            return None
        if code >= 500:
            return _Retry(f"HTTP {code} {resp.reason}: {_server_message(resp)}", ambiguous=True)
        if 300 <= code < 400:
            raise CCDBUploadError(f"the server redirected the upload to "
                                  f"{resp.headers.get('Location', '?')} (HTTP {code}); give that "
                                  "server as --ccdb-url")
        if 400 <= code < 500:
            hint = {401: " Give your Grid/token certificate with --cert and --key.",
                    403: " The certificate may not allow writing there (user models go under "
                         "Users/<initial>/<login>/)."}.get(code, "")
            raise CCDBUploadError(f"the server refused the upload to {path} with HTTP {code} "
                                  f"{resp.reason}: {_server_message(resp)}.{hint} Not retried.")
        raise CCDBUploadError(f"expected 201 Created for the upload to {path}, got HTTP {code} "
                              f"{resp.reason}: {_server_message(resp)}")

    def _find_uploaded(self, path: str, md5: str, t0: int, t1: int,
                       failure: str) -> ObjectInfo | None:
        """After an ambiguous failure: is our object on the server already?"""
        try:
            listing = self.list(path)
        except CCDBError as err:
            raise CCDBUploadError(
                f"the upload to {self.url}/{path} may or may not have been stored ({failure}), "
                f"and listing the path to find out failed ({err}); not sent again. Check with "
                f"pid-export ccdb ls {path} --ccdb-url {self.url} before uploading again") from err
        for obj in listing.objects:
            if (obj.md5 == md5.lower() and obj.valid_from == t0 and obj.valid_until == t1
                    and obj.path.strip("/") == path):
                return obj
        log.info("after %s: %s holds no object with MD5 %s; sending again", failure, path, md5)
        return None

    # -- read

    def list(self, path: str) -> Listing:
        url = f"{self.url}/browse/{path}" if path else f"{self.url}/browse"
        _, resp = self._get(url, accept="application/json", what=f"listing {path or '/'}")
        try:
            payload = resp.json()
            objects = [ObjectInfo.from_json(o, path) for o in payload.get("objects", [])]
            subfolders = [str(s) for s in payload.get("subfolders", [])]
        except (ValueError, AttributeError, TypeError) as err:
            raise CCDBError(f"{url}: the answer is not the CCDB's browse JSON ({err}); is "
                            f"{self.url} a CCDB server?") from err
        objects.sort(key=lambda o: o.created or 0, reverse=True)
        return Listing(path, objects, subfolders)

    def get(self, path: str, timestamp: int,
            metadata: Mapping[str, str] | None = None) -> tuple[bytes, ObjectInfo]:
        """The object valid at ``timestamp`` (filtered by ``metadata``), MD5 checked."""
        tail = "".join(f"{quote(k, safe='')}={quote(v, safe='')}/"
                       for k, v in (metadata or {}).items())
        url = f"{self.url}/{path}/{timestamp}/{tail}"
        first, resp = self._get(url, accept="*/*", what=f"{path} at {timestamp}")
        data = resp.content
        info = _info_from_headers(first, resp, path, data)
        expected = _header_md5(resp) or _header_md5(first)
        if expected and expected != info.md5:
            raise CCDBError(f"download of {path} at {timestamp} from {resp.url} is damaged: MD5 "
                            f"{info.md5} of {len(data)} bytes, the server announced {expected}")
        return data, info

    def _get(self, url: str, *, accept: str, what: str) -> tuple[requests.Response,
                                                                 requests.Response]:
        """GET with redirects followed by hand; retries connection errors, 5xx, truncation."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._pause(attempt, f"GET {url}", last)
            try:
                return self._get_once(url, accept, what)
            except requests.RequestException as err:
                last = str(self._classify(err, sent=False))
            except _Retry as err:
                last = str(err)
        raise CCDBError(f"{what}: {url} failed after {self.retries + 1} attempt(s): {last}. "
                        f"{_reach_hint(self.url)}")

    def _get_once(self, url: str, accept: str,
                  what: str) -> tuple[requests.Response, requests.Response]:
        chain: list[str] = []
        first: requests.Response | None = None
        current = url
        while True:
            if current in chain:
                raise CCDBError(f"{what}: redirect loop {' -> '.join([*chain, current])}; the "
                                "server is misconfigured, report it to its maintainers")
            if len(chain) > self.max_redirects:
                raise CCDBError(f"{what}: more than {self.max_redirects} redirects from {url}")
            chain.append(current)
            prepared = self.session.prepare_request(
                requests.Request("GET", current, headers={"Accept": accept}))
            resp = self._send(prepared)
            if first is None:
                first = resp
            if resp.is_redirect:
                current = _redirect_target(resp, current, what)
                continue
            if resp.status_code >= 500:
                raise _Retry(f"HTTP {resp.status_code} {resp.reason}: {_server_message(resp)}",
                             ambiguous=False)
            if resp.status_code == 404:
                raise CCDBError(f"{what}: nothing at {current} (HTTP 404: "
                                f"{_server_message(resp)}); pid-export ccdb ls shows what the "
                                "path holds and the validities")
            if resp.status_code >= 400:
                raise CCDBError(f"{what}: the server refused {current} with HTTP "
                                f"{resp.status_code} {resp.reason}: {_server_message(resp)}")
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) != len(resp.content):
                raise _Retry(f"truncated download from {current}: {len(resp.content)} of "
                             f"{length} bytes arrived", ambiguous=False)
            return first, resp

    # -- transport

    def _send(self, prepared: requests.PreparedRequest) -> requests.Response:
        settings = self.session.merge_environment_settings(prepared.url, {}, None, self.verify,
                                                           self.cert)
        log.debug("%s %s", prepared.method, prepared.url)
        resp = self.session.send(prepared, timeout=self.timeout, allow_redirects=False,
                                 **settings)
        log.debug("-> HTTP %d", resp.status_code)
        return resp

    def _classify(self, err: requests.RequestException, *, sent: bool) -> _Retry:
        """Turn a transport error into a retry (or raise it when retrying cannot help)."""
        if isinstance(err, requests.exceptions.SSLError):
            raise CCDBError(f"TLS with {self.url} failed: {err}. Check --cert/--key and the CA "
                            "certificates (X509_CERT_DIR)") from err
        if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                            requests.exceptions.MissingSchema)):
            raise CCDBError(f"{self.url}: not a usable URL ({err})") from err
        if isinstance(err, requests.exceptions.ConnectTimeout):
            return _Retry(f"no connection to {self.url} within {self.timeout[0]:g} s",
                          ambiguous=False)
        if isinstance(err, requests.exceptions.ReadTimeout):
            return _Retry(f"no answer from {self.url} within {self.timeout[1]:g} s after the "
                          "request was sent", ambiguous=sent)
        if isinstance(err, requests.exceptions.ChunkedEncodingError):
            return _Retry(f"truncated download: the connection broke before the announced "
                          f"length arrived ({err})", ambiguous=sent)
        if isinstance(err, requests.exceptions.ConnectionError) and _never_connected(err):
            return _Retry(f"cannot connect to {self.url} (server down or unreachable: "
                          f"{_root_cause(err)})", ambiguous=False)
        return _Retry(f"connection to {self.url} broke: {_root_cause(err)}", ambiguous=sent)

    def _pause(self, attempt: int, what: str, last: str) -> None:
        delay = self.backoff * 2 ** (attempt - 1)
        log.warning("%s: %s; retrying in %.2g s (attempt %d of %d)", what, last, delay,
                    attempt + 1, self.retries + 1)
        time.sleep(delay)


def _client_cert(cert: str | Path | None, key: str | Path | None,
                 url: str) -> str | tuple[str, str] | None:
    """The ``cert`` argument for requests; the files are checked, their content never logged."""
    if key and not cert:
        raise ConfigError("--key needs --cert: give both (the Grid or token certificate and key)")
    if not cert:
        return None
    for name, f in (("--cert", cert), ("--key", key)):
        if f is not None and not Path(f).is_file():
            raise ConfigError(f"{name} {f}: no such file")
    if urlsplit(url).scheme != "https":
        log.warning("--cert/--key are only used with https:// servers; %s is plain HTTP, so no "
                    "client certificate is sent", url)
        return None
    if key is None:
        return str(cert)
    if os.stat(key).st_mode & 0o077:
        log.warning("--key %s is readable by other users; chmod 600 it", key)
    with open(key, "rb") as fh:
        encrypted = b"ENCRYPTED" in fh.read(4096)
    if encrypted:
        raise ConfigError(f"--key {key}: the key is protected by a pass phrase, which pid-export "
                          "does not ask for; use the token key alien-token-init writes "
                          "(/tmp/tokenkey_<uid>.pem) or an unprotected copy with mode 600")
    return str(cert), str(key)


def _ca_setting() -> bool | str:
    """CA certificates: $X509_CERT_DIR (the Grid CAs, as O2 uses) when set, else the default."""
    ca_dir = os.environ.get("X509_CERT_DIR")
    return ca_dir if ca_dir and Path(ca_dir).is_dir() else True


def _safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: ("<not shown>" if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items()}


def _server_message(resp: requests.Response, limit: int = 300) -> str:
    text = " ".join((resp.text or "").split())
    if not text:
        return "(no message)"
    return text if len(text) <= limit else text[:limit] + "..."


def _never_connected(err: BaseException) -> bool:
    """True when the TCP connection was never made (so nothing can have been sent)."""
    from urllib3.exceptions import NewConnectionError

    seen: set[int] = set()
    todo: list[Any] = [err]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, NewConnectionError):
            return True
        todo.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__,
                     *[a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]])
    return False


def _root_cause(err: BaseException) -> str:
    reason = getattr(err.args[0], "reason", None) if err.args else None
    # urllib3 prefixes "<HTTPConnection object at 0x...>: ", which tells a user nothing.
    return re.sub(r"^<[^>]*>:\s*", "", str(reason or err))


def _reach_hint(url: str) -> str:
    return (f"Check that {url} is the right server and reachable (network, VPN), or use the "
            "local snapshot (no --ccdb-url)")


def _redirect_target(resp: requests.Response, current: str, what: str) -> str:
    """The first http(s) place among Location and Content-Location."""
    places = [resp.headers.get("Location", "")]
    places += [p.strip() for p in resp.headers.get("Content-Location", "").split(",")]
    for place in places:
        if place:
            target = urljoin(current, place)
            if urlsplit(target).scheme in ("http", "https"):
                return target
    raise CCDBError(f"{what}: the server redirects to {places[0] or '(nothing)'}, which "
                    "pid-export cannot fetch (only http and https)")


def _header_md5(resp: requests.Response) -> str:
    """Content-MD5 as hex (the CCDB sends hex; RFC 1864 says base64: accept both)."""
    value = resp.headers.get("Content-MD5", "").strip().strip('"')
    if re.fullmatch(r"[0-9a-fA-F]{32}", value):
        return value.lower()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return raw.hex() if len(raw) == 16 else ""


def _info_from_headers(first: requests.Response, final: requests.Response, path: str,
                       data: bytes) -> ObjectInfo:
    def header(name: str) -> str:
        return first.headers.get(name) or final.headers.get(name) or ""

    def as_int(name: str) -> int | None:
        value = header(name)
        return int(value) if value.isdigit() else None

    disposition = re.search(r'filename="?([^";]+)', header("Content-Disposition"))
    return ObjectInfo(path=path, id=header("ETag").strip('"'), valid_from=as_int("Valid-From"),
                      valid_until=as_int("Valid-Until"), created=as_int("Created"),
                      md5=md5_hex(data), size=len(data),
                      file_name=disposition.group(1) if disposition else "",
                      content_type=final.headers.get("Content-Type", ""))


# --------------------------------------------------------------------------- entry points


Store = LocalSnapshot | RestCCDB


def open_store(url: str | None = None, *, cert: str | Path | None = None,
               key: str | Path | None = None, read_timeout: float | None = None,
               retries: int | None = None) -> Store:
    """The store behind ``url``: none or ``file://DIR`` is local, ``http(s)://`` a server."""
    if not url:
        store: Store = LocalSnapshot(DEFAULT_LOCAL_DIR)
    elif url.startswith("file://"):
        folder = unquote(url[len("file://"):])
        if not folder:
            raise ConfigError("--ccdb-url file://: give a folder, e.g. file:///home/me/ccdb")
        store = LocalSnapshot(folder)
    else:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--ccdb-url {url!r}: expected file://DIR for a local snapshot or "
                              "http(s)://HOST[:PORT] for a CCDB server, e.g. "
                              "http://ccdb-test.cern.ch:8080")
        if parts.username or parts.password:
            raise ConfigError(f"--ccdb-url: a user name or password in the URL is not supported "
                              "(it would show in logs); CCDB servers authenticate with --cert "
                              "and --key")
        if parts.query or parts.fragment:
            raise ConfigError(f"--ccdb-url {url!r}: the server URL takes no ?query or #fragment")
        return RestCCDB(url, cert=cert, key=key, read_timeout=read_timeout, retries=retries)
    if cert or key:
        log.warning("--cert/--key are ignored for the local snapshot %s", store.url)
    return store


def upload_model(model_path: str | Path, ccdb_path: str, *, url: str | None = None,
                 start: str | int | None = None, end: str | int | None = None,
                 meta: Mapping[str, str] | Iterable[str] | None = None,
                 cert: str | Path | None = None, key: str | Path | None = None,
                 dry_run: bool = False, force: bool = False, read_timeout: float | None = None,
                 retries: int | None = None) -> UploadResult:
    """Check the model against the O2 contract and store it at ``ccdb_path``.

    ``meta`` is a mapping or ``KEY=VALUE`` strings. With ``dry_run`` nothing is written
    or sent: the result's ``request`` describes exactly what would be.
    """
    path = validate_path(ccdb_path)
    if meta is None:
        user_meta: dict[str, str] = {}
    elif isinstance(meta, Mapping):
        user_meta = validate_metadata(meta)
    else:
        user_meta = parse_meta_options(meta)
    t0, t1 = resolve_validity(start, end)
    store = open_store(url, cert=cert, key=key, read_timeout=read_timeout, retries=retries)

    art = prepare_artefact(model_path, force=force)
    metadata = merge_metadata(art.metadata, user_meta)
    if dry_run:
        return store.plan_upload(art, path, t0, t1, metadata)
    return store.upload(art, path, t0, t1, metadata)


def list_objects(ccdb_path: str, *, url: str | None = None, cert: str | Path | None = None,
                 key: str | Path | None = None, read_timeout: float | None = None,
                 retries: int | None = None) -> Listing:
    """What ``ccdb_path`` holds (newest first) and its subfolders."""
    path = validate_path(ccdb_path, allow_empty=True)
    store = open_store(url, cert=cert, key=key, read_timeout=read_timeout, retries=retries)
    return store.list(path)


def fetch_object(ccdb_path: str, out: str | Path, *, url: str | None = None,
                 timestamp: str | int | None = None,
                 meta: Mapping[str, str] | Iterable[str] | None = None, force: bool = False,
                 cert: str | Path | None = None, key: str | Path | None = None,
                 read_timeout: float | None = None, retries: int | None = None) -> ObjectInfo:
    """Write the object valid at ``timestamp`` (default now) to ``out``, atomically.

    An existing ``out`` is replaced only with ``force``.
    """
    path = validate_path(ccdb_path)
    when = parse_time("now" if timestamp is None else timestamp, what="--timestamp")
    wanted = (validate_metadata(meta) if isinstance(meta, Mapping)
              else parse_meta_options(meta or []))
    out = Path(out)
    _check_out(out, force)
    store = open_store(url, cert=cert, key=key, read_timeout=read_timeout, retries=retries)

    data, info = store.get(path, when, wanted)
    _check_out(out, force)
    _write_shared(data, out)
    log.info("wrote %s (%d bytes, MD5 %s) from %s at %d", out, len(data), info.md5, path, when)
    return info


def _check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give a file name such as model.onnx")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"--out {out}: the folder {parent} does not exist; create it first")
    if out.exists() and not force:
        raise InputError(f"--out {out}: the file exists; pass --force to replace it or choose "
                         "another name")


# --------------------------------------------------------------------------- reporting


def describe_upload(result: UploadResult) -> list[str]:
    """Lines saying what the upload did, or would do."""
    where = "local snapshot " + result.ccdb_url if result.kind == "local" else result.ccdb_url
    validity = (f"{format_ms(result.valid_from)} -> {format_ms(result.valid_until)} UTC "
                f"({result.valid_from} -> {result.valid_until} ms)")
    if result.dry_run:
        head = f"dry run: nothing written or sent. Upload of {result.path} to {where}:"
        return [head, *[f"  {line}" for line in result.request], f"  validity {validity}"]
    meta = ", ".join(f"{k}={v}" for k, v in result.metadata.items()) or "(none)"
    lines = [f"stored {result.path} in {where}",
             f"  object    {result.object_id or '?'} ({result.size} bytes, MD5 {result.md5})",
             f"  validity  {validity}",
             f"  metadata  {meta}"]
    if result.location:
        label = "file" if result.kind == "local" else "location"
        lines.insert(2, f"  {label:<9} {result.location}")
    lines += [f"  note      {n}" for n in result.notes]
    return lines


def o2_configurables(result: UploadResult) -> list[str]:
    """The settings an O2 task needs to load what was uploaded."""
    if result.kind == "local":
        stamp, ts_note = "-1", "any value: file mode serves snapshot.root whatever the time"
    else:
        stamp = str(result.valid_from)
        ts_note = (f"any ms in [{result.valid_from}, {result.valid_until}); -1 takes the data's "
                   "time, which must then fall inside the validity")
    lines = ["O2 configurables (task generated by pid-export cpp; MlResponse-based tasks call "
             "them ccdbUrl, modelPathsCCDB, timestampCCDB, onnxFileNames):",
             f"  ccdbUrl        {result.ccdb_url}",
             f"  ccdbPath       {result.path}",
             f"  ccdbTimestamp  {stamp}    ({ts_note})",
             f"  modelFileName  {result.file_name}    (name of the local copy the task writes)"]
    if result.kind == "local":
        root = result.ccdb_url[len("file://"):]
        lines += ["  or keep the task's server ccdbUrl and serve this folder as its cache:",
                  f"  export ALICEO2_CCDB_LOCALCACHE={root} "
                  "IGNORE_VALIDITYCHECK_OF_CCDB_LOCALCACHE=1"]
    return lines


def format_listing(listing: Listing) -> list[str]:
    """A table: validity, created, size, MD5, metadata; then the subfolders."""
    rows = [("VALID FROM (UTC)", "VALID UNTIL (UTC)", "CREATED (UTC)", "SIZE", "MD5", "METADATA")]
    for obj in listing.objects:
        meta = ", ".join(f"{k}={v}" for k, v in sorted(obj.metadata.items()))
        rows.append((format_ms(obj.valid_from), format_ms(obj.valid_until),
                     format_ms(obj.created), str(obj.size), obj.md5 or "?", meta))
    name = listing.path or "/"
    lines = [f"{name}: {len(listing.objects)} object(s), newest first"]
    if listing.objects:
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5]
                  for r in rows]
    if listing.subfolders:
        lines.append("subfolders: " + ", ".join(listing.subfolders))
    return lines
