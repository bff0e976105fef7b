"""Detector commissioning: an exported model with detectors switched off, no retraining.

Takes any exported ONNX model (trees or nets) and labelled tracks (files or the built-in
simulation) and hands on the classification figures with every detector present and
with chosen detector groups absent (values NaN, flag 0: what O2 feeds when a detector
is off), side by side. For FSE Phase 1, with its checkpoint, it adds the mean gate value
per detector group and true class: how much the net leans on each detector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .contract import assert_contract
from .errors import ConfigError, InputError
from .export import read_metadata
from .features import ABSENT_GROUPS, CLASS_NAMES, mask_groups
from .metrics import classification_summary
from .parity import onnx_proba, onnx_session
from .selection import RANGES, Selections

log = logging.getLogger(__name__)

Echo = Callable[[str], None]

#: How far checkpoint and ONNX may differ before the checkpoint is taken for another model.
CHECKPOINT_MATCH_BOUND = 1e-4


def parse_disable(values: Sequence[str]) -> list[tuple[str, ...]]:
    """``["tof", "tpc+bayes"]`` -> ``[("tof",), ("tpc", "bayes")]``, checked and in order."""
    scenarios: list[tuple[str, ...]] = []
    for value in values:
        groups = tuple(g.strip().lower() for g in value.replace(",", "+").split("+") if g.strip())
        bad = [g for g in groups if g not in ABSENT_GROUPS]
        if not groups or bad:
            raise ConfigError(f"--disable {value!r}: expected detector groups from "
                              f"{', '.join(ABSENT_GROUPS)}, joined with '+' to switch off "
                              "several at once (e.g. tof+bayes)")
        ordered = tuple(g for g in ABSENT_GROUPS if g in groups)
        if ordered not in scenarios:
            scenarios.append(ordered)
    return scenarios


def scenario_name(groups: tuple[str, ...]) -> str:
    return "full" if not groups else "no " + "+".join(groups)


@dataclass
class Evaluation:
    model: str
    model_kind: str | None
    rows: str
    n: int
    sources: list[str]
    momentum_range: str
    training_data: bool | None  # True: the data the model was trained on (test split held out)
    scenarios: dict[str, dict] = field(default_factory=dict)
    gates: dict[str, dict[str, dict[str, float | None]]] | None = None
    gate_note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _load_gate_model(model_path: Path, checkpoint: Path | None, session,
                     probe: np.ndarray) -> tuple[Any, str | None]:
    """The FSE Phase 1 checkpoint that belongs to ``model_path``, or None and why not."""
    from .models import get_family

    explicit = checkpoint is not None
    folder = checkpoint if explicit else model_path.with_name(model_path.stem + ".ckpt")
    if not folder.exists():
        if explicit:
            raise InputError(f"--checkpoint {folder}: no such folder")
        return None, (f"gate values need the model's checkpoint: none at {folder}; "
                      "give it with --checkpoint DIR")
    family = get_family("fse1")
    native = family.load_native(folder)  # raises a clear error for a bad checkpoint
    diff = float(np.max(np.abs(family.predict_proba(native, probe) - onnx_proba(session, probe))))
    if not diff <= CHECKPOINT_MATCH_BOUND:
        msg = (f"checkpoint {folder} does not belong to {model_path} (outputs differ by "
               f"{diff:.2e} > {CHECKPOINT_MATCH_BOUND:.0e})")
        if explicit:
            raise InputError(f"--checkpoint: {msg}; give the folder written beside the model")
        return None, msg + "; gate values skipped"
    return native, None


def evaluate_arrays(model_path: str | Path, x: np.ndarray, y: np.ndarray,
                    disable: Sequence[tuple[str, ...]], *, checkpoint: Path | None = None,
                    rows: str = "test", sources: Sequence[str] = (), momentum_range: str = "full",
                    training_data: bool | None = None) -> Evaluation:
    """Figures of the model on ``x`` with all detectors and with each scenario's groups off."""
    model_path = Path(model_path)
    assert_contract(model_path)
    meta = read_metadata(model_path)
    kind = meta.get("model_kind") if isinstance(meta.get("model_kind"), str) else None
    if len(y) == 0:
        raise InputError("evaluate: no tracks to evaluate on")
    session = onnx_session(model_path.read_bytes(), threads=0)
    result = Evaluation(model=str(model_path), model_kind=kind, rows=rows, n=int(len(y)),
                        sources=list(sources), momentum_range=momentum_range,
                        training_data=training_data)

    inputs = {scenario_name(()): np.asarray(x, dtype=np.float32)}
    for groups in disable:
        inputs[scenario_name(groups)] = mask_groups(x, groups)
    for name, xs in inputs.items():
        result.scenarios[name] = classification_summary(y, onnx_proba(session, xs))

    if kind == "fse1":
        native, note = _load_gate_model(model_path, checkpoint, session, inputs["full"][:512])
        result.gate_note = note
        if native is not None:
            from .evaluation import gate_table
            from .models.nets._layers import GROUP_ORDER

            result.gates = {name: gate_table(native.gates(xs), y, GROUP_ORDER)
                            for name, xs in inputs.items()}
    elif checkpoint is not None:
        log.warning("--checkpoint is used for FSE Phase 1 gate values only; %s is a %s model",
                    model_path, kind or "non-pid-export")
    return result


def evaluate_main(model_path: str | Path, *, data: Sequence[Path] = (), disable: Sequence[str] = (),
                  checkpoint: Path | None = None, tracks: int = 300_000, seed: int | None = None,
                  prange: str | None = None, dpg_cuts: bool = True, all_rows: bool = False,
                  tree: str | None = None, column_map: Path | None = None,
                  echo: Echo = print) -> Evaluation:
    """``pid-export evaluate``: read the data, evaluate the scenarios, print the tables."""
    from .pipeline import load_builtin_sample, load_dataset

    model_path = Path(model_path)
    scenarios = parse_disable(disable)
    meta = read_metadata(model_path)
    if prange is None:
        trained = meta.get("momentum_range")
        prange = trained if trained in RANGES else "full"
    if seed is None:
        seed = meta.get("seed") if isinstance(meta.get("seed"), int) else 231
    sel = Selections() if dpg_cuts else Selections.none()
    if data:
        ds = load_dataset(list(data), tree=tree, column_map=column_map, selections=sel,
                          prange=prange, seed=seed)
    else:
        echo(f"simulating the built-in sample: {tracks} Pb-Pb tracks (seed {seed})")
        ds = load_builtin_sample(tracks, seed=seed, selections=sel, prange=prange)
    if all_rows:
        x, y, rows = ds.x, ds.y, "all"
    else:
        test = ds.subset(2)
        x, y, rows = test.x, test.y, "test"
    same = meta.get("training_data_digest") == ds.digest if "training_data_digest" in meta else None
    result = evaluate_arrays(model_path, x, y, scenarios, checkpoint=checkpoint, rows=rows,
                             sources=ds.sources, momentum_range=prange, training_data=same)
    for line in format_evaluation(result):
        echo(line)
    return result


def _pct(v: float | None) -> str:
    return "     n/a" if v is None or not np.isfinite(v) else f"{100 * v:7.2f}%"


def format_evaluation(ev: Evaluation) -> list[str]:
    """The tables ``pid-export evaluate`` prints: figures, then gates (FSE Phase 1)."""
    where = "the test split" if ev.rows == "test" else "all selected tracks"
    lines = [f"model {ev.model} ({ev.model_kind or 'unknown kind'}); {ev.n} tracks, {where} of "
             f"{', '.join(ev.sources)}; pT range {ev.momentum_range}"]
    if ev.training_data and ev.rows == "all":
        lines.append("  note: this is the model's training data; use the test split (the "
                     "default) for fair figures")
    names = list(ev.scenarios)
    full = ev.scenarios["full"]
    width = max(18, *(len(n) + 2 for n in names))
    lines.append(f"{'':<22}" + "".join(f"{n:>{width}}" for n in names))

    def row(label: str, get: Callable[[dict], float | None],
            fmt: Callable[[float | None], str] = _pct, delta: bool = True) -> str:
        cells = []
        ref = get(full)
        for n in names:
            v = get(ev.scenarios[n])
            cell = fmt(v)
            if delta and n != "full" and v is not None and ref is not None:
                cell = f"{cell} ({100 * (v - ref):+.1f})"
            cells.append(f"{cell:>{width}}")
        return f"{label:<22}" + "".join(cells)

    lines.append(row("accuracy", lambda s: s["accuracy"]))
    lines.append(row("macro AUC", lambda s: s["macro_auc"],
                     fmt=lambda v: "n/a" if v is None else f"{v:.4f}", delta=False))
    for c in CLASS_NAMES:
        lines.append(row(f"{c} efficiency", lambda s, c=c: s["per_class"][c].get("efficiency")))
    for c in CLASS_NAMES:
        lines.append(row(f"{c} purity", lambda s, c=c: s["per_class"][c].get("purity")))
    support = full["per_class"]
    lines.append(f"{'tracks per class':<22}" + "  ".join(
        f"{c} {support[c].get('support', 0)}" for c in CLASS_NAMES))
    if ev.gates:
        lines.append("mean gate value (FSE Phase 1) per detector group and true class:")
        for name, table in ev.gates.items():
            lines.append(f"  {name}")
            lines.append(f"    {'':<10}" + "".join(f"{c:>10}" for c in CLASS_NAMES))
            for g, per_class in table.items():
                lines.append(f"    {g:<10}" + "".join(
                    f"{'n/a' if v is None else f'{v:.3f}':>10}" for v in per_class.values()))
    elif ev.gate_note:
        lines.append(f"gates: {ev.gate_note}")
    return lines
