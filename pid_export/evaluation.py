"""Evaluation of one fit on its test split: two tiers, thresholds, pT dependence.

Takes what a fit leaves behind (:class:`Predictions`: true classes, predicted
probabilities, pT and the Bayesian probabilities of the test tracks, and for FSE Phase 1
the detector gates) and hands on plain, JSON-ready dicts for the study report:

* tier ``all``: every test track; tier ``bayes``: only tracks with real Bayesian
  probabilities, with the Bayesian baseline (argmax of the four probabilities) beside
  the model;
* per class, the probability threshold that maximises F1 and the lowest threshold whose
  purity reaches a target (the one with the highest efficiency among those that do);
* efficiency and purity per pT bin, with binomial errors;
* mean gate value per detector group and true class (FSE Phase 1).

A class with no test track is marked ``absent`` everywhere instead of breaking a figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .features import CLASS_NAMES, INDEX, N_CLASSES
from .metrics import classification_summary
from .selection import RANGES

#: Bins with fewer tracks than this get no efficiency or purity point.
MIN_BIN_TRACKS = 10

#: Order of the FSE Phase 1 gate columns (the nets' ``GROUP_ORDER``).
GATE_GROUPS = ("tracking", "tpc", "tof", "bayes")

_BAYES_COLUMNS = [INDEX[f"bayes_prob_{s}"] for s in ("pi", "ka", "pr", "el")]


@dataclass
class Predictions:
    """One fit's test tracks and what the exported model says about them."""

    y: np.ndarray  # int64 [n], true class
    proba: np.ndarray  # float32 [n, 4]
    pt: np.ndarray  # float32 [n], GeV/c
    bayes: np.ndarray  # float32 [n, 4], NaN where not available
    bayes_available: np.ndarray  # bool [n]
    gates: np.ndarray | None = None  # float32 [n, 4] in GATE_GROUPS order (fse1)

    @classmethod
    def from_test(cls, x: np.ndarray, y: np.ndarray, proba: np.ndarray,
                  gates: np.ndarray | None = None) -> Predictions:
        x = np.asarray(x, dtype=np.float32)
        return cls(
            y=np.asarray(y, dtype=np.int64),
            proba=np.asarray(proba, dtype=np.float32),
            pt=x[:, INDEX["pt"]].copy(),
            bayes=x[:, _BAYES_COLUMNS].copy(),
            bayes_available=x[:, INDEX["bayes_available"]] > 0.5,
            gates=None if gates is None else np.asarray(gates, dtype=np.float32),
        )

    def to_bytes(self) -> bytes:
        """A compressed ``.npz`` (plain arrays, no pickle)."""
        arrays = {"y": self.y.astype(np.int8), "proba": self.proba, "pt": self.pt,
                  "bayes": self.bayes, "bayes_available": self.bayes_available}
        if self.gates is not None:
            arrays["gates"] = self.gates
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(
                    y=f["y"].astype(np.int64), proba=f["proba"], pt=f["pt"], bayes=f["bayes"],
                    bayes_available=f["bayes_available"].astype(bool),
                    gates=f["gates"] if "gates" in f.files else None,
                )
        except (OSError, KeyError, ValueError) as err:
            raise InputError(f"{path}: not a readable predictions file ({err}); "
                             "rerun the fit with --force") from err


# --------------------------------------------------------------------------- tiers


def bayes_baseline(bayes: np.ndarray) -> np.ndarray:
    """Scores of the Bayesian baseline: the four probabilities themselves (argmax decides)."""
    return np.nan_to_num(np.asarray(bayes, dtype=np.float32), nan=0.0)


def tiers(pred: Predictions) -> dict:
    """Figures on all tracks, and on tracks with Bayesian PID beside the Bayes baseline."""
    out: dict = {"all": classification_summary(pred.y, pred.proba)}
    m = pred.bayes_available
    n = int(m.sum())
    bayes: dict = {"n": n, "fraction": float(n / len(m)) if len(m) else 0.0}
    if n:
        bayes["model"] = classification_summary(pred.y[m], pred.proba[m])
        bayes["baseline"] = classification_summary(pred.y[m], bayes_baseline(pred.bayes[m]))
    else:
        bayes["note"] = "no test track has Bayesian probabilities"
    out["bayes"] = bayes
    return out


def absent_classes(summary: dict) -> list[str]:
    return [c for c, pc in summary["per_class"].items() if pc.get("absent")]


# --------------------------------------------------------------------------- thresholds


def _operating_points(positive: np.ndarray, score: np.ndarray):
    """For each distinct score t (descending): tp and fp of the cut ``score >= t``."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    pos = positive[order].astype(np.int64)
    tp = np.cumsum(pos)
    fp = np.cumsum(1 - pos)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last row of each tie group
    return s[last], tp[last], fp[last]


def _point(t: float, tp: int, fp: int, n_pos: int) -> dict:
    eff = tp / n_pos
    pur = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * tp / (tp + fp + n_pos) if tp + fp + n_pos else 0.0
    return {"threshold": float(t), "efficiency": float(eff), "purity": float(pur), "f1": float(f1),
            "selected": int(tp + fp)}


def class_thresholds(y: np.ndarray, proba: np.ndarray, purity_target: float) -> dict:
    """Per class, the cut ``p_class >= t`` that maximises F1 and the one that reaches the
    purity target with the highest efficiency (``None`` with the best purity when none
    does). A track may pass several classes' cuts: each class is judged on its own."""
    out: dict = {}
    for c, name in enumerate(CLASS_NAMES):
        positive = np.asarray(y) == c
        n_pos = int(positive.sum())
        if n_pos == 0:
            out[name] = {"absent": True}
            continue
        t, tp, fp = _operating_points(positive, np.asarray(proba[:, c], dtype=np.float64))
        f1 = 2 * tp / (tp + fp + n_pos)
        best = int(np.argmax(f1))
        purity = tp / (tp + fp)
        reach = np.flatnonzero(purity >= purity_target)
        entry = {"max_f1": _point(t[best], tp[best], fp[best], n_pos),
                 "purity_target": purity_target}
        if len(reach):
            k = int(reach[-1])  # lowest threshold that still reaches the target
            entry["at_purity_target"] = _point(t[k], tp[k], fp[k], n_pos)
        else:
            entry["at_purity_target"] = None
            entry["best_purity"] = float(purity.max())
        out[name] = entry
    return out


def threshold_metadata(thresholds: dict) -> dict:
    """The compact form stored in the ONNX metadata (key ``pid_thresholds``)."""
    max_f1, target = {}, {}
    purity_target = None
    for name, entry in thresholds.items():
        if entry.get("absent"):
            max_f1[name] = target[name] = None
            continue
        purity_target = entry["purity_target"]
        max_f1[name] = round(entry["max_f1"]["threshold"], 6)
        hit = entry["at_purity_target"]
        target[name] = None if hit is None else round(hit["threshold"], 6)
    return {
        "rule": "class c is selected when its probability >= threshold (one class at a time)",
        "determined_on": "test split of the training sample",
        "max_f1": max_f1,
        "purity_target": purity_target,
        "at_purity_target": target,
    }


# --------------------------------------------------------------------------- pT dependence


def pt_edges(prange: str, pt: np.ndarray, n_bins: int) -> tuple[np.ndarray, bool]:
    """Bin edges over the range (clipped to where the tracks are) and whether to use a
    log axis (when the edges span more than a factor 4)."""
    lo, hi = RANGES[prange]
    pt = np.asarray(pt, dtype=np.float64)
    pt = pt[np.isfinite(pt) & (pt > 0)]
    if len(pt):
        lo = max(lo, float(np.quantile(pt, 0.001)))
        hi = min(hi, float(np.quantile(pt, 0.999)))
    if not (np.isfinite(hi) and hi > lo > 0):
        lo, hi = 0.1, max(hi if np.isfinite(hi) else 10.0, 0.2)
    log = hi / lo > 4
    edges = np.geomspace(lo, hi, n_bins + 1) if log else np.linspace(lo, hi, n_bins + 1)
    return edges, bool(log)


def _ratio(k: np.ndarray, n: np.ndarray, min_n: int) -> tuple[list, list]:
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        err = np.sqrt(p * (1 - p) / n)
    ok = n >= min_n
    val = [float(v) if o else None for v, o in zip(p, ok)]
    e = [float(v) if o else None for v, o in zip(err, ok)]
    return val, e


def efficiency_purity_vs_pt(y: np.ndarray, proba: np.ndarray, pt: np.ndarray, edges: np.ndarray,
                            *, min_tracks: int = MIN_BIN_TRACKS) -> dict:
    """Per class and pT bin: efficiency (argmax = true class among the true class's tracks)
    and purity (true class among tracks assigned to the class), binomial errors; ``None``
    where a bin holds fewer than ``min_tracks`` tracks."""
    pred = np.argmax(proba, axis=1)
    b = np.digitize(pt, edges) - 1
    inside = (b >= 0) & (b < len(edges) - 1)
    nb = len(edges) - 1
    out: dict = {}
    for c, name in enumerate(CLASS_NAMES):
        true_c = inside & (y == c)
        pred_c = inside & (pred == c)
        n_true = np.bincount(b[true_c], minlength=nb)
        n_pred = np.bincount(b[pred_c], minlength=nb)
        n_tp = np.bincount(b[true_c & (pred == c)], minlength=nb)
        eff, eff_err = _ratio(n_tp, n_true, min_tracks)
        pur, pur_err = _ratio(n_tp, n_pred, min_tracks)
        out[name] = {"efficiency": eff, "efficiency_err": eff_err, "purity": pur,
                     "purity_err": pur_err, "n_true": n_true.tolist(),
                     "n_predicted": n_pred.tolist()}
    return out


# --------------------------------------------------------------------------- model insight


def gate_table(gates: np.ndarray, y: np.ndarray,
               groups: Sequence[str] = GATE_GROUPS) -> dict[str, dict[str, float | None]]:
    """Mean gate value per detector group and true class (``None`` for an absent class)."""
    table: dict[str, dict[str, float | None]] = {}
    for g, group in enumerate(groups):
        table[group] = {}
        for c, name in enumerate(CLASS_NAMES):
            sel = y == c
            table[group][name] = float(gates[sel, g].mean()) if sel.any() else None
    return table


def importance(info: dict) -> dict | None:
    """Tree feature importance normalised to sum 1, largest first (``None`` for nets)."""
    for key, kind in (("importance_gain", "gain"), ("importance_impurity", "impurity")):
        if key in info:
            raw = {k: float(v) for k, v in info[key].items()}
            total = sum(raw.values()) or 1.0
            ranked = sorted(raw.items(), key=lambda kv: -kv[1])
            return {"kind": kind, "values": {k: v / total for k, v in ranked}}
    return None


# --------------------------------------------------------------------------- one fit


def evaluate_predictions(pred: Predictions, *, prange: str, purity_target: float,
                         edges: np.ndarray) -> dict:
    """Everything the report shows for one fit, computed from its saved predictions."""
    if pred.proba.shape != (len(pred.y), N_CLASSES):
        raise InputError(f"predictions: probabilities have shape {pred.proba.shape}, "
                         f"expected ({len(pred.y)}, {N_CLASSES})")
    t = tiers(pred)
    out = {
        "momentum_range": prange,
        "n_test": int(len(pred.y)),
        "tiers": t,
        "absent_classes": absent_classes(t["all"]),
        "thresholds": class_thresholds(pred.y, pred.proba, purity_target),
        "pt_bins": {"edges": [float(e) for e in edges],
                    "per_class": efficiency_purity_vs_pt(pred.y, pred.proba, pred.pt, edges)},
    }
    if pred.gates is not None:
        out["gates"] = gate_table(pred.gates, pred.y)
    return out
