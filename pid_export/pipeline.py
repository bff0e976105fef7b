"""The main job: tracks in, a checked ONNX model and its report out.

:func:`load_dataset` reads files (or the built-in simulation), labels, selects and splits;
:func:`train_and_export` fits one model family, converts it, checks the O2 contract, runs
the parity gate and writes the artefact and its JSON report; :func:`run_main` is what
``pid-export --model ...`` calls. ``train/`` reuses the first two for the 6 x 3 study.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .contract import check_contract, failures, format_checks
from .errors import ConfigError, InputError, SelectionError
from .export import (
    base_metadata,
    model_bytes,
    normalise,
    set_metadata,
    write_atomic,
    write_json_atomic,
)
from .features import CLASS_NAMES, N_CLASSES
from .metrics import classification_summary
from .models import Family, FitOptions, TrainingData, get_family
from .parity import ParityResult, parity_gate
from .reader import iter_chunks, load_column_map
from .selection import CutFlow, Selections, split_keys, stratified_split
from .streaming import expand_inputs, label_and_select

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


@dataclass
class Dataset:
    """Selected, labelled tracks with their split (0 train, 1 validation, 2 test)."""

    x: np.ndarray
    y: np.ndarray
    part: np.ndarray
    flow: CutFlow
    n_read: int
    dropped_species: dict[int, int]
    sources: list[str]
    prange: str
    selections: dict
    seed: int
    simulated: dict | None = None
    absent_features: list[str] = field(default_factory=list)

    def subset(self, part: int) -> TrainingData:
        m = self.part == part
        return TrainingData(self.x[m], self.y[m])

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.x).tobytes())
        h.update(self.y.astype(np.int8).tobytes())
        h.update(self.part.tobytes())
        return h.hexdigest()[:16]

    def class_counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for p, name in ((0, "train"), (1, "validation"), (2, "test")):
            ys = self.y[self.part == p]
            out[name] = {c: int((ys == i).sum()) for i, c in enumerate(CLASS_NAMES)}
        return out


def load_dataset(
    paths: Sequence[str | Path],
    *,
    tree: str | None = None,
    column_map: str | Path | None = None,
    selections: Selections | None = None,
    prange: str = "full",
    seed: int = 231,
) -> Dataset:
    """Read, label, select and split tracks from files."""
    sel = selections if selections is not None else Selections()
    layout = load_column_map(column_map) if column_map else None
    flow = CutFlow()
    xs, ys, keys = [], [], []
    n_read = 0
    dropped: Counter[int] = Counter()
    paths = expand_inputs(paths)
    for chunk in iter_chunks(paths, tree=tree, layout=layout):
        n_read += len(chunk)
        keep, cls = label_and_select(chunk, sel, prange, flow, dropped)
        if keep.any():
            xs.append(chunk.x[keep])
            ys.append(cls[keep])
            keys.append(split_keys(seed, np.full(int(keep.sum()), chunk.file_index), chunk.row[keep]))
    if dropped:
        top = ", ".join(f"|PDG| {k}: {v}" for k, v in dropped.most_common(5))
        log.info("dropped %d tracks of other species (%s)", sum(dropped.values()), top)
    if n_read == 0:
        raise SelectionError(f"no tracks in {', '.join(map(str, paths))}")
    if not xs:
        raise SelectionError(
            f"no tracks left after the selections and the {prange} GeV/c range "
            f"(read {n_read}; kept after each step: {flow.counts}); loosen the cuts "
            "(--no-dpg-cuts) or choose another --range")
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    present = sorted(set(np.unique(y).tolist()))
    if len(present) < 2:
        only = CLASS_NAMES[present[0]]
        raise SelectionError(f"only one class ({only}) left after the selections ({len(y)} tracks): "
                             "a classifier needs at least two; check the PDG codes and the range")
    part = stratified_split(y, np.concatenate(keys))
    absent = absent_features(x)
    if absent:
        log.warning("features absent (NaN, or flag 0) for every selected track: %s; check the "
                    "file's branches or the column map", ", ".join(absent))
    return Dataset(x=x, y=y, part=part, flow=flow, n_read=n_read, dropped_species=dict(dropped),
                   sources=[str(p) for p in paths], prange=prange, selections=sel.as_dict(), seed=seed,
                   absent_features=absent)


def absent_features(x: np.ndarray) -> list[str]:
    """Features that carry no information: NaN for every row, or a flag that is always 0."""
    from .features import FEATURE_NAMES, GROUPS

    flags = {g["flag"] for g in GROUPS.values() if g["flag"] is not None}
    out = []
    for i, name in enumerate(FEATURE_NAMES):
        col = x[:, i]
        if np.isnan(col).all() or (i in flags and not (col > 0).any()):
            out.append(name)
    return out


def load_builtin_sample(n_tracks: int, *, seed: int, selections: Selections | None = None,
                        prange: str = "full") -> Dataset:
    """Simulate the built-in sample into a temporary AO2D file and read it back."""
    from .simulate import simulate_to_file

    with tempfile.TemporaryDirectory(prefix="pid-export-sim-") as tmp:
        path = Path(tmp) / "sample.root"
        summary = simulate_to_file(path, n_tracks=n_tracks, seed=seed)
        ds = load_dataset([path], selections=selections, prange=prange, seed=seed)
    ds.sources = [f"built-in simulation ({n_tracks} tracks, seed {seed})"]
    ds.simulated = summary
    return ds


# --------------------------------------------------------------------------- training


@dataclass
class Trained:
    """A native model trained outside :func:`train_and_export` (out of core, on Dask).

    ``metadata`` goes into the ONNX metadata and ``report`` into the JSON report, beside
    what :func:`train_and_export` writes itself.
    """

    native: Any
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    out: Path
    report_path: Path
    passed: bool
    report: dict = field(default_factory=dict)


def failed_name(out: Path, what: str = "PARITY-FAILED") -> Path:
    return out.with_name(f"{out.stem}.{what}{out.suffix or '.onnx'}")


def default_report_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.report.json")


def check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: output folder {parent} is not writable")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name such as {path / 'pid.onnx'}")


def check_output_names(out: Path, report_path: Path) -> None:
    """Refuse a report path that would overwrite the model or a file written beside it."""
    out, report_path = Path(out), Path(report_path)
    stem = out.with_suffix("")
    ours = {out, failed_name(out), failed_name(out, "CONTRACT-FAILED"),
            stem.with_name(stem.name + ".xgb.ubj")}
    resolved = {p.resolve() for p in ours}
    if report_path.resolve() in resolved or report_path.suffix == ".onnx":
        raise ConfigError(f"--report {report_path}: that name is (or looks like) the model "
                          f"{out} or a file written beside it; choose a .json name such as "
                          f"{default_report_path(out)}")
    if report_path.resolve().is_dir() or report_path.name.endswith(".ckpt"):
        raise ConfigError(f"--report {report_path}: is a folder; give a .json file name")


def train_and_export(
    ds: Dataset,
    model: str,
    out: Path,
    *,
    report_path: Path | None = None,
    fit_options: FitOptions | None = None,
    parity_bound: float | None = None,
    extra_metadata: dict[str, Any] | None = None,
    family: Family | None = None,
    trained: Trained | None = None,
) -> ExportResult:
    """Fit one family on ``ds``, export, check, run the parity gate, write files.

    ``family`` replaces the registered one for ``model`` (e.g. a tree family built
    with other hyper-parameters, as ``train/`` does). ``trained`` skips the fit and
    exports that model; ``ds`` then may be a :class:`~pid_export.streaming.StreamedDataset`.
    """
    family = family if family is not None else get_family(model)
    out = Path(out)
    report_path = Path(report_path) if report_path else default_report_path(out)
    check_output_names(out, report_path)
    check_writable(out)
    check_writable(report_path)
    opts = fit_options or FitOptions(seed=ds.seed)
    opts.out_stem = opts.out_stem or out.with_suffix("")
    bound = parity_bound if parity_bound is not None else family.parity_bound
    if not bound > 0:
        raise ConfigError(f"--parity-bound must be positive, got {bound}")

    train, val, test = ds.subset(0), ds.subset(1), ds.subset(2)
    if len(test.y) == 0 or len(train.y) == 0:
        n = len(train.y) + len(val.y) + len(test.y)
        raise SelectionError(f"too few tracks to split ({n}): need more data")
    if trained is None:
        t0 = time.perf_counter()
        native = family.fit(train, val, opts)
        fit_seconds = time.perf_counter() - t0
    else:
        native, fit_seconds = trained.native, trained.seconds

    proba_test = family.predict_proba(native, test.x)
    test_metrics = classification_summary(test.y, proba_test)
    ntr = min(len(train.y), 200_000)
    train_acc = float((np.argmax(family.predict_proba(native, train.x[:ntr]), axis=1) == train.y[:ntr]).mean())

    onx = normalise(family.to_onnx(native))
    meta = base_metadata()
    meta.update({
        "model_kind": model,
        "model_description": family.description,
        "momentum_range": ds.prange,
        "momentum_variable": "pt",
        "training_data_digest": ds.digest,
        "training_sources": ds.sources,
        "selections": ds.selections,
        "selections_skipped": dict(ds.flow.skipped),
        "features_absent_in_training": list(getattr(ds, "absent_features", [])),
        "seed": ds.seed,
        "test_accuracy": round(test_metrics["accuracy"], 6),
        "test_macro_auc": None if test_metrics["macro_auc"] is None else round(test_metrics["macro_auc"], 6),
    })
    meta.update(trained.metadata if trained is not None else {})
    meta.update(extra_metadata or {})
    set_metadata(onx, meta)
    blob = model_bytes(onx)

    checks = check_contract(blob)
    bad = failures(checks)
    parity = parity_gate(blob, lambda x: family.predict_proba(native, x), test.x, bound, seed=ds.seed)
    passed = parity.passed and not bad
    set_metadata(onx, {"parity": {
        "passed": parity.passed, "bound": bound, "max_abs_diff": parity.max_abs_diff,
        "p999_abs_diff": parity.p999_abs_diff, "argmax_agreement": parity.argmax_agreement,
        "rows": parity.n_rows,
    }})
    blob = model_bytes(onx)
    target = out if passed else failed_name(out, "PARITY-FAILED" if not parity.passed else "CONTRACT-FAILED")
    write_atomic(blob, target)
    native_files = family.save_native(native, out.with_suffix("")) if passed else []

    report = {
        "package_version": __version__,
        "model": model,
        "model_description": family.description,
        "output": str(target),
        "passed": passed,
        "data": {
            "sources": ds.sources,
            "digest": ds.digest,
            "tracks_read": ds.n_read,
            "kept_after_each_step": ds.flow.counts,
            "skipped_selections": ds.flow.skipped,
            "dropped_other_species": {str(k): v for k, v in sorted(ds.dropped_species.items())},
            "momentum_range": ds.prange,
            "selections": ds.selections,
            "seed": ds.seed,
            "split": {"method": "stratified by class on a per-track hash of (seed, file, row)",
                      "fractions": {"train": 0.7, "validation": 0.1, "test": 0.2},
                      "class_counts": ds.class_counts()},
            "simulation": ds.simulated,
        },
        "training": {"seconds": round(fit_seconds, 2), "train_accuracy": train_acc,
                     "info": family.info(native), "native_files": [str(p) for p in native_files]},
        "test": test_metrics,
        "contract": [c.as_dict() for c in checks],
        "parity": parity.as_dict(),
        "metadata": meta,
    }
    report.update(trained.report if trained is not None else {})
    write_json_atomic(report, report_path)
    return ExportResult(out=target, report_path=report_path, passed=passed, report=report)


# --------------------------------------------------------------------------- CLI entry


@dataclass
class MainOptions:
    model: str
    out: Path
    data: tuple[Path, ...] = ()
    prange: str = "full"
    seed: int = 231
    tree: str | None = None
    column_map: Path | None = None
    tracks: int = 300_000
    report: Path | None = None
    dpg_cuts: bool = True
    parity_bound: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    checkpoint: Path | None = None
    learning_rate: float | None = None  # nets
    resume: bool = False  # nets: go on training from --checkpoint
    class_weight: str | None = None  # nets: "none" or "balanced"
    stream: bool = False  # out of core in this process (xgb)
    scheduler: str | None = None  # Dask scheduler address (xgb)
    workers: int | None = None  # Dask LocalCluster of this many workers (xgb)
    max_memory: int | None = None  # bytes; out-of-core paths only


def run_main(opts: MainOptions, echo: Echo = print) -> ExportResult:
    """``pid-export --model M --out F``: read, train, export, gate, report; print figures."""
    family = get_family(opts.model)
    if family.kind != "net" and (opts.epochs or opts.batch_size or opts.checkpoint or opts.resume
                                 or opts.learning_rate or opts.class_weight):
        raise ConfigError("--epochs, --batch-size, --checkpoint, --resume, --learning-rate and "
                          "--class-weight apply to the nets only "
                          f"(simplenn, dnn, fse0, fse1), not to --model {opts.model}")
    if opts.resume and opts.checkpoint is None:
        raise ConfigError("--resume goes on training from a checkpoint: pass --checkpoint DIR")
    if opts.checkpoint is not None and hasattr(family, "check_checkpoint"):
        family.check_checkpoint(opts.checkpoint)  # a bad checkpoint fails before any reading
    out = Path(opts.out)
    check_writable(out)
    report_path = Path(opts.report) if opts.report else default_report_path(out)
    check_output_names(out, report_path)
    check_writable(report_path)
    if opts.parity_bound is not None and not opts.parity_bound > 0:
        raise ConfigError(f"--parity-bound must be a positive number, got {opts.parity_bound}")
    sel = Selections() if opts.dpg_cuts else Selections.none()

    t0 = time.perf_counter()
    trained = None
    if opts.stream or opts.scheduler or opts.workers or opts.max_memory:
        from .outofcore import train_out_of_core

        ds, trained = train_out_of_core(opts, sel, echo)
    elif opts.data:
        ds = load_dataset(opts.data, tree=opts.tree, column_map=opts.column_map, selections=sel,
                          prange=opts.prange, seed=opts.seed)
    else:
        echo(f"simulating the built-in sample: {opts.tracks} Pb-Pb tracks (seed {opts.seed})")
        ds = load_builtin_sample(opts.tracks, seed=opts.seed, selections=sel, prange=opts.prange)
    echo(f"read {ds.n_read} tracks from {', '.join(ds.sources)}")
    for step, n in ds.flow.counts.items():
        if step != "read":
            echo(f"  kept after {step:<32} {n}")
    for step, why in ds.flow.skipped.items():
        echo(f"  skipped {step}: {why}")
    if ds.dropped_species:
        echo(f"  dropped {sum(ds.dropped_species.values())} tracks of other species")
    absent = getattr(ds, "absent_features", [])
    if absent:
        echo(f"WARNING: {len(absent)} of 22 features are absent for every track ({', '.join(absent)}):"
             " the model cannot use them; check the branches or the column map")
    xs = getattr(ds, "x", None)
    if xs is not None and len(xs) and (xs[:, 20] > 0).all():
        echo("note: every training track has TPC (the TPC-cluster cut): predictions for tracks "
             "without TPC are outside what the model has seen")
    counts = ds.class_counts()
    echo("tracks per class   " + "  ".join(f"{c:>9}" for c in CLASS_NAMES))
    for part, cc in counts.items():
        echo(f"  {part:<16} " + "  ".join(f"{cc[c]:>9}" for c in CLASS_NAMES))

    fit = FitOptions(seed=opts.seed, epochs=opts.epochs, batch_size=opts.batch_size,
                     checkpoint=opts.checkpoint, learning_rate=opts.learning_rate,
                     extra={**({"class_weight": opts.class_weight} if opts.class_weight else {}),
                            **({"resume": True} if opts.resume else {})})
    if trained is None:
        echo(f"training {opts.model}: {family.description}")
    res = train_and_export(ds, opts.model, out, report_path=report_path, fit_options=fit,
                           parity_bound=opts.parity_bound, trained=trained)
    rep = res.report
    tm = rep["test"]
    auc = "n/a" if tm["macro_auc"] is None else f"{tm['macro_auc']:.4f}"
    echo(f"trained in {rep['training']['seconds']:.1f} s; train accuracy "
         f"{100 * rep['training']['train_accuracy']:.2f}%")
    echo(f"test accuracy {100 * tm['accuracy']:.2f}%  macro AUC {auc}  ({tm['n']} tracks)")
    echo(f"  {'class':<10} {'efficiency':>10} {'purity':>8} {'support':>8}")
    for name, pc in tm["per_class"].items():
        if pc.get("absent"):
            echo(f"  {name:<10} {'absent from the test split':>28}")
        else:
            echo(f"  {name:<10} {100 * pc['efficiency']:>9.2f}% {100 * pc['purity']:>7.2f}% "
                 f"{pc['support']:>8}")
    bad = [c for c in rep["contract"] if c["required"] and not c["passed"]]
    echo("O2 contract: " + ("PASS (" + ", ".join(c["name"] for c in rep["contract"]) + ")"
                            if not bad else "FAIL"))
    if bad:
        from .contract import Check

        for line in format_checks([Check(**c) for c in bad]):
            echo(line)
    par = ParityResult(**{k: v for k, v in rep["parity"].items() if k != "passed"})
    echo("parity " + par.summary())
    for name, pat in par.patterns.items():
        echo(f"  {name:<22} rows {pat['rows']:>7}  max diff {pat['max_abs_diff']:.2e}"
             f"  argmax flips {pat['argmax_disagreements']}")
    if res.passed:
        echo(f"wrote {res.out} ({res.out.stat().st_size / 1e6:.2f} MB) and {res.report_path}")
    else:
        echo(f"GATE FAILED: the model is kept as {res.out} for inspection; report {res.report_path}")
    log.info("main job finished in %.1f s", time.perf_counter() - t0)
    return res
