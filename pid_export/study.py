"""The 6 x 3 study: configuration, fitting with resume, evaluation, plots and report.

Takes a TOML configuration (:func:`load_config`: models, momentum ranges, data,
selections, hyper-parameters, output) and an output folder, and hands on one subfolder
per model and range (the ONNX file that passed the gates, its JSON report, the test
predictions as ``.npz``, the evaluation) plus plots and a Markdown/JSON/CSV report.

Every fit goes through :func:`pid_export.pipeline.train_and_export`, the path of
``pid-export --model``. A fit is finished when its ``fit.json`` says it passed with the
same configuration digest; a rerun skips it (``force`` refits), so an interrupted study
resumes where it stopped. Evaluation (:mod:`.evaluation`), plots (:mod:`.plots`) and the
report (:mod:`.study_report`) are rebuilt from the saved predictions on every run.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ConfigError, InputError, PidExportError, SelectionError
from .export import (
    load_model,
    model_bytes,
    read_metadata,
    set_metadata,
    write_atomic,
    write_json_atomic,
)
from .models import FitOptions, families, get_family
from .selection import RANGES, Selections

log = logging.getLogger(__name__)

Echo = Callable[[str], None]

#: The seed study's models, in the order of its comparison table (DESIGN §7).
DEFAULT_MODELS = ("simplenn", "dnn", "fse0", "fse1", "rf", "xgb")
DEFAULT_RANGES = ("0-1", "1-3", "full")

#: Training settings every net understands (FitOptions fields, or ``extra`` keys).
NET_TRAINING_KEYS: dict[str, type] = {
    "epochs": int, "batch_size": int, "learning_rate": float, "patience": int, "class_weight": str,
}
#: Values of ``class_weight`` (the nets' ``CLASS_WEIGHT_MODES``; not imported: it needs JAX).
CLASS_WEIGHT_MODES = ("balanced", "none")

SELECTION_KEYS = ("eta_max", "dcaxy_max", "dcaz_max", "min_tpc_clusters", "min_its_clusters")

STUDY_FILE = "study.json"
FIT_FILE = "fit.json"
PREDICTIONS_FILE = "predictions.npz"
EVALUATION_FILE = "evaluation.json"
THRESHOLD_KEY = "pid_thresholds"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs, checked; built by :func:`load_config` or :func:`parse_config`."""

    name: str = "pid-study"
    models: tuple[str, ...] = DEFAULT_MODELS
    ranges: tuple[str, ...] = DEFAULT_RANGES
    seed: int = 231
    purity_target: float = 0.9
    parity_bound: float | None = None
    files: tuple[Path, ...] = ()
    builtin_tracks: int = 300_000
    tree: str | None = None
    column_map: Path | None = None
    selections: Selections = field(default_factory=Selections)
    model_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    out_dir: Path | None = None
    plots: bool = True
    pt_bins: int = 12
    source: Path | None = None  # the TOML file, if any

    def settings(self, model: str) -> dict[str, Any]:
        """The hyper-parameters the configuration sets for ``model`` (others: defaults)."""
        return dict(self.model_settings.get(model, {}))

    def data_identity(self) -> dict[str, Any]:
        """What decides the tracks: files (path, size, mtime) or the built-in sample."""
        if not self.files:
            return {"builtin_tracks": self.builtin_tracks, "seed": self.seed}
        files = []
        for p in self.files:
            st = p.stat()
            files.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        cmap = None
        if self.column_map is not None:
            cmap = {"path": str(self.column_map.resolve()),
                    "sha256": hashlib.sha256(self.column_map.read_bytes()).hexdigest()[:16]}
        return {"files": files, "tree": self.tree, "column_map": cmap}

    def as_dict(self) -> dict[str, Any]:
        """The configuration as plain data (for ``study.json`` and the report)."""
        return {
            "study": {"name": self.name, "models": list(self.models), "ranges": list(self.ranges),
                      "seed": self.seed, "purity_target": self.purity_target,
                      "parity_bound": self.parity_bound},
            "data": {"files": [str(p) for p in self.files], "builtin_tracks": self.builtin_tracks,
                     "tree": self.tree,
                     "column_map": None if self.column_map is None else str(self.column_map)},
            "selections": self.selections.as_dict(),
            "models": {m: dict(s) for m, s in sorted(self.model_settings.items())},
            "output": {"plots": self.plots, "pt_bins": self.pt_bins},
        }

    def base_digest(self) -> str:
        """Digest of what every fit shares: the tracks, the selections, the seed."""
        return _digest({"data": self.data_identity(), "selections": self.selections.as_dict(),
                        "seed": self.seed})

    def fit_digest(self, model: str, prange: str) -> str:
        """Digest of everything that decides one fit's result."""
        return _digest({"model": model, "range": prange, "data": self.data_identity(),
                        "selections": self.selections.as_dict(), "seed": self.seed,
                        "settings": self.settings(model), "parity_bound": self.parity_bound})


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path) -> StudyConfig:
    """Read and check a study configuration (TOML); paths are relative to its folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config {path}: not valid TOML ({err})") from err
    return parse_config(raw, base=path.resolve().parent, source=path)


class _Table:
    """One TOML table being read: typed look-ups, and unknown keys reported at the end."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"[{where}] must be a table, got {type(raw).__name__}")
        self.raw, self.where, self.used = raw, where, set()

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.raw:
            return default
        return check_type(self.raw[key], kind, f"{self.where}.{key}")

    def finish(self, known: list[str] | tuple[str, ...] | None = None) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            choices = known if known is not None else sorted(self.used)
            raise ConfigError(f"unknown key {self.where}.{unknown[0]}"
                              + (f" (and {', '.join(unknown[1:])})" if unknown[1:] else "")
                              + f"; known keys in [{self.where}]: {', '.join(choices)}")


def check_type(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it has the type ``kind`` (ints pass as floats, bools never as numbers)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}: expected {names}, got {value!r} ({type(value).__name__})")
    return value


def _check_list(values: list, where: str, choices: list[str], what: str) -> tuple[str, ...]:
    out = []
    for v in values:
        check_type(v, str, where)
        if v not in choices:
            raise ConfigError(f"{where}: unknown {what} {v!r}; choose from {', '.join(choices)}")
        if v in out:
            raise ConfigError(f"{where}: {what} {v!r} is listed twice")
        out.append(v)
    if not out:
        raise ConfigError(f"{where}: list at least one {what}")
    return tuple(out)


def _model_keys(model: str) -> dict[str, Any]:
    """Settable keys of one model and their default values (type templates)."""
    family = get_family(model)
    if family.kind == "tree":
        keys: dict[str, Any] = dict(family.params)  # type: ignore[attr-defined]
    else:
        keys = dict(getattr(family, "hyper", {}))
        keys.update(NET_TRAINING_KEYS)
    keys["parity_bound"] = float  # this model's gate, instead of study.parity_bound
    return keys


def parity_bound(cfg: StudyConfig, model: str) -> float | None:
    """The parity bound of one model: its own, the study's, or (None) the family's."""
    return cfg.settings(model).get("parity_bound", cfg.parity_bound)


def _check_model_value(model: str, key: str, value: Any, template: Any) -> Any:
    """Check one hyper-parameter against the type of its default (or its declared type)."""
    where = f"models.{model}.{key}"
    if isinstance(template, type):
        kind = template
    elif isinstance(template, (list, tuple)):
        kind = list
    elif template is None:
        kind = float
    else:
        kind = type(template)
    value = check_type(value, kind, where)
    if kind is list:
        inner = type(template[0]) if template else int
        value = [check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        if not value or any(not v > 0 for v in value):
            raise ConfigError(f"{where}: expected a non-empty list of positive numbers, "
                              f"got {value}")
    elif key == "class_weight":
        if value not in CLASS_WEIGHT_MODES:
            raise ConfigError(f"{where}: expected one of {', '.join(CLASS_WEIGHT_MODES)}, "
                              f"got {value!r}")
    elif key == "dropout":
        if not 0 <= value < 1:
            raise ConfigError(f"{where}: expected a rate in [0, 1), got {value}")
    elif kind in (int, float) and not value > 0:
        raise ConfigError(f"{where}: must be positive, got {value}")
    return value


def parse_config(raw: Mapping[str, Any], *, base: Path | None = None,
                 source: Path | None = None) -> StudyConfig:
    """Check a configuration given as nested dicts (the parsed TOML)."""
    base = base or Path.cwd()
    top = _Table(dict(raw), "config")
    sections = ("study", "data", "selections", "models", "output")
    for key in raw:
        if key not in sections:
            raise ConfigError(f"unknown section [{key}]; known sections: "
                              + ", ".join(f"[{s}]" for s in sections))

    study = _Table(top.raw.get("study", {}), "study")
    models = _check_list(study.get("models", list, list(DEFAULT_MODELS)), "study.models",
                         families(), "model")
    ranges = _check_list(study.get("ranges", list, list(DEFAULT_RANGES)), "study.ranges",
                         list(RANGES), "range")
    seed = study.get("seed", int, 231)
    purity = study.get("purity_target", float, 0.9)
    if not 0 < purity < 1:
        raise ConfigError(f"study.purity_target: expected a purity between 0 and 1, got {purity}")
    bound = study.get("parity_bound", float, None)
    if bound is not None and not bound > 0:
        raise ConfigError(f"study.parity_bound: must be positive, got {bound}")
    name = study.get("name", str, "pid-study")
    study.finish()

    data = _Table(top.raw.get("data", {}), "data")
    files = tuple(_path(base, check_type(f, str, "data.files[]"))
                  for f in data.get("files", list, []))
    for f in files:
        if not f.is_file():
            raise ConfigError(f"data.files: {f} does not exist (paths are relative to the "
                              "configuration file's folder)")
    tracks = data.get("builtin_tracks", int, 300_000)
    if tracks < 1000:
        raise ConfigError(f"data.builtin_tracks: at least 1000 tracks, got {tracks}")
    tree = data.get("tree", str, None) or None
    cmap = data.get("column_map", str, None)
    column_map = _path(base, cmap) if cmap else None
    if column_map is not None and not column_map.is_file():
        raise ConfigError(f"data.column_map: {column_map} does not exist")
    data.finish()

    sel_t = _Table(top.raw.get("selections", {}), "selections")
    sel = Selections() if sel_t.get("dpg", bool, True) else Selections.none()
    changes: dict[str, Any] = {}
    for key in SELECTION_KEYS:
        if sel_t.has(key):
            kind = int if key.startswith("min_") else float
            value = sel_t.get(key, (kind, bool))
            if value is True:
                raise ConfigError(f"selections.{key}: give a number, or false to switch the "
                                  "cut off")
            changes[key] = None if value is False else value
    sel_t.finish(["dpg", *SELECTION_KEYS])
    if changes:
        sel = Selections(**{**sel.as_dict(), **changes})

    settings: dict[str, dict[str, Any]] = {}
    models_t = _Table(top.raw.get("models", {}), "models")
    for model in list(models_t.raw):
        if model not in families():
            raise ConfigError(f"[models.{model}]: unknown model {model!r}; choose from "
                              f"{', '.join(families())}")
        table = _Table(models_t.get(model, dict), f"models.{model}")
        known = _model_keys(model)
        for key in list(table.raw):
            if key in known:
                settings[model] = settings.get(model, {})
                table.used.add(key)
                settings[model][key] = _check_model_value(model, key, table.raw[key], known[key])
        table.finish(sorted(known))
    models_t.finish()

    out_t = _Table(top.raw.get("output", {}), "output")
    out_dir = out_t.get("dir", str, None)
    plots = out_t.get("plots", bool, True)
    pt_bins = out_t.get("pt_bins", int, 12)
    if not 2 <= pt_bins <= 100:
        raise ConfigError(f"output.pt_bins: between 2 and 100, got {pt_bins}")
    out_t.finish()

    return StudyConfig(name=name, models=models, ranges=ranges, seed=seed, purity_target=purity,
                       parity_bound=bound, files=files, builtin_tracks=tracks, tree=tree,
                       column_map=column_map, selections=sel, model_settings=settings,
                       out_dir=_path(base, out_dir) if out_dir else None, plots=plots,
                       pt_bins=pt_bins, source=source)


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def configured_family(cfg: StudyConfig, model: str) -> tuple[Any, FitOptions]:
    """The family with the configuration's hyper-parameters, and its fit options."""
    registered = get_family(model)
    settings = cfg.settings(model)
    settings.pop("parity_bound", None)  # a property of the gate, not of the model
    opts = FitOptions(seed=cfg.seed)
    if registered.kind == "tree":
        params = {**registered.params, **settings}  # type: ignore[attr-defined]
        family = type(registered)(**params)
    else:
        family = copy.copy(registered)
        hyper = {k: v for k, v in settings.items() if k not in NET_TRAINING_KEYS}
        opts.epochs = settings.get("epochs")
        opts.batch_size = settings.get("batch_size")
        opts.learning_rate = settings.get("learning_rate")
        opts.extra = {k: settings[k] for k in ("patience", "class_weight") if k in settings}
        if hyper:
            opts.extra["hyper"] = hyper
    if settings:
        family.description = (registered.description + "; study settings: "
                              + ", ".join(f"{k} {v}" for k, v in sorted(settings.items())))
    return family, opts


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Fit:
    """One model on one momentum range: the ``index``-th of ``total`` fits."""

    index: int
    total: int
    model: str
    prange: str

    @property
    def name(self) -> str:
        return f"{self.model}_{self.prange}"

    @property
    def label(self) -> str:
        return f"[{self.index}/{self.total}] {self.model} {self.prange}"


def plan_fits(cfg: StudyConfig) -> list[Fit]:
    """All fits, range by range (one data set in memory at a time), models in order."""
    total = len(cfg.models) * len(cfg.ranges)
    pairs = [(m, r) for r in cfg.ranges for m in cfg.models]
    return [Fit(i + 1, total, m, r) for i, (m, r) in enumerate(pairs)]


def fit_folder(out: Path, fit: Fit) -> Path:
    return out / fit.name


def read_fit_record(folder: Path) -> dict | None:
    path = folder / FIT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_finished(out: Path, fit: Fit, digest: str) -> bool:
    """Passed with this digest, and its ONNX file and predictions are still there."""
    folder = fit_folder(out, fit)
    rec = read_fit_record(folder)
    return bool(rec and rec.get("passed") and rec.get("digest") == digest
                and (folder / f"{fit.name}.onnx").is_file()
                and (folder / PREDICTIONS_FILE).is_file())


# --------------------------------------------------------------------------- output folder


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every configuration value that differs."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_output(cfg: StudyConfig, out: Path, plan: list[Fit], *, force: bool) -> None:
    """Refuse (unless ``force``) a folder that holds something else or another study."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()) or force:
        return
    study_file = out / STUDY_FILE
    if not study_file.is_file():
        raise ConfigError(f"--out {out}: the folder is not empty and holds no {STUDY_FILE} (not a "
                          "study written by this tool); choose a new folder, or --force to write "
                          "into it anyway")
    try:
        old = json.loads(study_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--out {out}: {STUDY_FILE} is unreadable ({err}); --force to "
                          "start the study afresh") from err
    problems = []
    if old.get("base_digest") != cfg.base_digest():
        problems.append("the data, selections or seed differ")
    for fit in plan:
        rec = read_fit_record(fit_folder(out, fit))
        if rec and rec.get("digest") not in (None, cfg.fit_digest(fit.model, fit.prange)):
            problems.append(f"{fit.name} was fitted with other settings")
    if problems:
        diffs = config_differences(old.get("config", {}), cfg.as_dict())
        shown = "; ".join(diffs[:8]) + (f"; ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
        raise ConfigError(f"--out {out} holds results of a different configuration ("
                          + ", ".join(problems[:4]) + (", ..." if len(problems) > 4 else "")
                          + (f"; changed: {shown}" if diffs else "")
                          + "): choose another --out, or --force to refit there")


def _write_study_file(cfg: StudyConfig, out: Path, status: dict[str, dict]) -> None:
    write_json_atomic({
        "package_version": __version__,
        "config_file": None if cfg.source is None else str(cfg.source),
        "config": cfg.as_dict(),
        "base_digest": cfg.base_digest(),
        "updated": _now(),
        "fits": status,
    }, out / STUDY_FILE)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- data


class DataSource(contextlib.AbstractContextManager):
    """The tracks of one range at a time; the built-in sample is simulated once."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._sim: tuple[Path, dict] | None = None

    def load(self, prange: str):
        from .pipeline import load_dataset

        cfg = self.cfg
        if cfg.files:
            return load_dataset(list(cfg.files), tree=cfg.tree, column_map=cfg.column_map,
                                selections=cfg.selections, prange=prange, seed=cfg.seed)
        if self._sim is None:
            from .simulate import simulate_to_file

            self._tmp = tempfile.TemporaryDirectory(prefix="pid-study-")
            path = Path(self._tmp.name) / "sample.root"
            summary = simulate_to_file(path, n_tracks=cfg.builtin_tracks, seed=cfg.seed)
            self._sim = (path, summary)
        path, summary = self._sim
        ds = load_dataset([path], selections=cfg.selections, prange=prange, seed=cfg.seed)
        # The same description as pipeline.load_builtin_sample: the data set is identical.
        ds.sources = [f"built-in simulation ({cfg.builtin_tracks} tracks, seed {cfg.seed})"]
        ds.simulated = summary
        return ds

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# --------------------------------------------------------------------------- one fit


#: Errors that end one fit but not the study: the fit is recorded as failed.
FIT_ERRORS = (PidExportError, FloatingPointError, ValueError)


def run_fit(cfg: StudyConfig, fit: Fit, ds, out: Path, say: Echo) -> dict:
    """Fit, export, gate and save the test predictions of one model on one range."""
    from .evaluation import Predictions
    from .parity import onnx_proba, onnx_session
    from .pipeline import train_and_export

    folder = fit_folder(out, fit)
    if folder.exists():
        shutil.rmtree(folder)  # leftovers of an interrupted or outdated fit
    folder.mkdir(parents=True)
    digest = cfg.fit_digest(fit.model, fit.prange)
    record: dict[str, Any] = {"fit": fit.name, "model": fit.model, "range": fit.prange,
                              "digest": digest, "passed": False, "started": _now()}
    family, opts = configured_family(cfg, fit.model)
    record["description"] = family.description
    counts = ds.class_counts()
    say(f"{fit.label}: fitting on {sum(counts['train'].values())} tracks "
        f"({', '.join(f'{c} {n}' for c, n in counts['train'].items())})")
    for part, what in (("train", "training"), ("test", "test")):
        absent = [c for c, n in counts[part].items() if n == 0]
        if absent:
            say(f"{fit.label}: no {', '.join(absent)} in the {what} split of range {fit.prange}"
                + (": evaluated without, marked absent" if part == "test" else ""))

    t0 = time.perf_counter()
    try:
        res = train_and_export(
            ds, fit.model, folder / f"{fit.name}.onnx",
            report_path=folder / f"{fit.name}.report.json", fit_options=opts,
            parity_bound=parity_bound(cfg, fit.model), family=family,
            extra_metadata={"study": {"name": cfg.name, "fit": fit.name, "config_digest": digest}})
    except FIT_ERRORS as err:
        error = f"{type(err).__name__}: {err}"
        missing = [c for c, n in counts["train"].items() if n == 0]
        if missing:
            error += (f" (the training split of range {fit.prange} has no {', '.join(missing)}; "
                      f"{fit.model} could not be trained without it)")
        record.update(error=error, failure="error", seconds=round(time.perf_counter() - t0, 1))
        log.debug("%s failed", fit.name, exc_info=True)
        say(f"{fit.label}: FAILED: {record['error']}")
        write_json_atomic(record, folder / FIT_FILE)
        return record

    rep = res.report
    record.update(seconds=round(time.perf_counter() - t0, 1), data_digest=ds.digest,
                  onnx=res.out.name, report=res.report_path.name,
                  train_accuracy=rep["training"]["train_accuracy"],
                  parity_max_abs_diff=rep["parity"].get("max_abs_diff"))
    if not res.passed:
        bad = [c["name"] for c in rep["contract"] if c.get("required") and not c.get("passed")]
        why = f"contract checks failed: {', '.join(bad)}" if bad else "parity gate failed"
        record.update(error=why, failure="gate")
        say(f"{fit.label}: GATE FAILED ({why}); kept as {res.out}")
        write_json_atomic(record, folder / FIT_FILE)
        return record

    test = ds.subset(2)
    proba = onnx_proba(onnx_session(res.out.read_bytes(), threads=0), test.x)
    gates = None
    if fit.model == "fse1":
        ckpt = Path(rep["training"]["native_files"][0])
        gates = family.load_native(ckpt).gates(test.x)
    write_atomic(Predictions.from_test(test.x, test.y, proba, gates).to_bytes(),
                 folder / PREDICTIONS_FILE)
    record.update(passed=True, finished=_now())
    write_json_atomic(record, folder / FIT_FILE)  # last: the fit counts as finished from here

    acc = float((np.argmax(proba, axis=1) == test.y).mean())
    auc = rep["test"]["macro_auc"]
    say(f"{fit.label}: done in {record['seconds']:.0f} s: test accuracy {100 * acc:.2f}%, macro "
        f"AUC {'n/a' if auc is None else f'{auc:.4f}'}, parity max |diff| "
        f"{record['parity_max_abs_diff']:.1e}")
    return record


# --------------------------------------------------------------------------- the study


@dataclass
class StudyResult:
    out: Path
    fits: dict[str, dict]
    range_errors: dict[str, str]
    report: Path
    seconds: float

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.fits.items() if not r.get("passed")]

    @property
    def exit_code(self) -> int:
        """0 all fits passed; 3 a gate failed; 2 a range had no tracks; 1 another failure."""
        kinds = {r.get("failure") for r in self.fits.values() if not r.get("passed")}
        if "gate" in kinds:
            return 3
        if self.range_errors:
            return 2
        return 1 if self.failed else 0


@contextlib.contextmanager
def _progress(total: int, echo: Echo) -> Iterator[tuple[Any, Echo]]:
    """An overall bar over the fits (on a terminal) and a writer that does not break it."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, unit="fit", desc="study", disable=None, file=sys.stderr,
               dynamic_ncols=True)

    def say(msg: str) -> None:
        if bar.disable:
            echo(msg)
        else:
            bar.write(msg)

    try:
        if bar.disable:
            yield bar, say
        else:
            with logging_redirect_tqdm():
                yield bar, say
    finally:
        bar.close()


def _warn_if_family_changed(cfg: StudyConfig, fit: Fit, record: dict, say: Echo) -> None:
    """A finished fit whose family now builds something else (new defaults in the code):
    the configuration did not change, so it is kept, but say so."""
    before = record.get("description")
    now = configured_family(cfg, fit.model)[0].description
    if before and before != now:
        say(f"{fit.label}: note: fitted as '{before}'; the family now builds '{now}' "
            "(--force refits)")


def run_study(cfg: StudyConfig, out: str | Path | None = None, *, force: bool = False,
              echo: Echo = print) -> StudyResult:
    """Fit every model on every range (resuming), then evaluate, plot and report."""
    t_start = time.perf_counter()
    out = Path(out) if out is not None else cfg.out_dir
    if out is None:
        raise ConfigError("no output folder: give --out DIR (or output.dir in the configuration)")
    plan = plan_fits(cfg)
    check_output(cfg, out, plan, force=force)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.source is not None and cfg.source.is_file():
        write_atomic(cfg.source.read_bytes(), out / "config.toml")

    status: dict[str, dict] = {}
    for fit in plan:
        rec = read_fit_record(fit_folder(out, fit))
        done = not force and is_finished(out, fit, cfg.fit_digest(fit.model, fit.prange))
        pending = {"fit": fit.name, "passed": False, "pending": True}
        status[fit.name] = rec if done and rec else pending
    _write_study_file(cfg, out, status)
    range_errors: dict[str, str] = {}

    todo = sum(1 for r in status.values() if r.get("pending"))
    echo(f"study {cfg.name!r}: {len(plan)} fits ({len(cfg.models)} models x {len(cfg.ranges)} "
         f"ranges), {len(plan) - todo} finished earlier, {todo} to run; output {out}")
    with DataSource(cfg) as source, _progress(len(plan), echo) as (bar, say):
        for prange in cfg.ranges:
            ds = None
            for fit in (f for f in plan if f.prange == prange):
                bar.set_description(fit.label)
                if not status[fit.name].get("pending"):
                    say(f"{fit.label}: finished earlier (same configuration), not refitted")
                    _warn_if_family_changed(cfg, fit, status[fit.name], say)
                    bar.update(1)
                    continue
                if ds is None and prange not in range_errors:
                    try:
                        ds = source.load(prange)
                    except SelectionError as err:
                        range_errors[prange] = f"range {prange}: {err}"
                        say(f"{fit.label}: range {prange} skipped, the other ranges go on: {err}")
                if prange in range_errors:
                    status[fit.name] = {"fit": fit.name, "passed": False, "failure": "no tracks",
                                        "error": range_errors[prange]}
                else:
                    status[fit.name] = run_fit(cfg, fit, ds, out, say)
                _write_study_file(cfg, out, status)
                bar.update(1)
            del ds

    from .study_report import build_outputs

    report = build_outputs(cfg, out, plan, status, range_errors, echo=echo)
    result = StudyResult(out=out, fits=status, range_errors=range_errors, report=report,
                         seconds=time.perf_counter() - t_start)
    echo(f"{len(plan) - len(result.failed)} of {len(plan)} fits passed in "
         f"{result.seconds:.0f} s; report {report}")
    for name in result.failed:
        echo(f"  {name}: {status[name].get('error', 'not run')}")
    return result


# --------------------------------------------------------------------------- thresholds in ONNX


def store_thresholds(onnx_path: Path, thresholds: dict) -> bool:
    """Write the thresholds into the model's metadata (atomically; outputs unchanged).

    Returns whether the file changed (a rerun with the same thresholds leaves it alone).
    """
    model = load_model(onnx_path)
    if read_metadata(model).get(THRESHOLD_KEY) == thresholds:
        return False
    set_metadata(model, {THRESHOLD_KEY: thresholds})
    write_atomic(model_bytes(model), onnx_path)
    return True
