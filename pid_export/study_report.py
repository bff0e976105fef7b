"""The study's outputs after the fits: evaluations, thresholds in ONNX, plots, report.

Takes the study's output folder (fit subfolders holding ``fit.json``, the pipeline's JSON
report and ``predictions.npz``) and hands on, for every finished fit, ``evaluation.json``
and the thresholds written into its ONNX metadata; then the plots (:mod:`.plots`) and
``report.md`` with the same tables in ``report.json`` and CSV files. Everything here is
computed from saved files, so it is rebuilt identically on a resumed run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .evaluation import Predictions, evaluate_predictions, importance, pt_edges, threshold_metadata
from .export import write_atomic, write_json_atomic
from .features import CLASS_NAMES
from .plots import model_label

log = logging.getLogger(__name__)

Echo = Callable[[str], None]

PLOT_DIR = "plots"
RANGE_TEXT = {"0-1": "0–1 GeV/c", "1-3": "1–3 GeV/c", "full": "full pT"}


def _pct(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f} %"


def _num(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _range_text(prange: str) -> str:
    return RANGE_TEXT.get(prange, prange)


# --------------------------------------------------------------------------- evaluation


def evaluate_fits(cfg, out: Path, plan, status: dict[str, dict]) -> tuple[dict, dict, dict]:
    """Evaluate every finished fit; write ``evaluation.json`` and the ONNX thresholds.

    Returns evaluations and predictions by fit name, and pT edges by range.
    """
    from .study import EVALUATION_FILE, PREDICTIONS_FILE, fit_folder, store_thresholds

    evaluations: dict[str, dict] = {}
    predictions: dict[str, Predictions] = {}
    edges: dict[str, tuple[Any, bool]] = {}
    for fit in plan:
        rec = status.get(fit.name, {})
        if not rec.get("passed"):
            continue
        folder = fit_folder(out, fit)
        pred = Predictions.load(folder / PREDICTIONS_FILE)
        if fit.prange not in edges:  # one binning per range: every model has the same test split
            edges[fit.prange] = pt_edges(fit.prange, pred.pt, cfg.pt_bins)
        rep = json.loads((folder / f"{fit.name}.report.json").read_text())
        ev = evaluate_predictions(pred, prange=fit.prange, purity_target=cfg.purity_target,
                                  edges=edges[fit.prange][0])
        info = rep["training"].get("info") or {}
        ev.update({
            "model": fit.model,
            "fit": fit.name,
            "onnx": f"{fit.name}/{fit.name}.onnx",
            "train_accuracy": rep["training"]["train_accuracy"],
            "fit_seconds": rep["training"]["seconds"],
            "parity": {k: rep["parity"].get(k) for k in ("passed", "bound", "max_abs_diff",
                                                           "argmax_agreement")},
            "importance": importance(info),
            "pt_log_axis": edges[fit.prange][1],
        })
        if "epochs_run" in info:
            ev["net_training"] = {k: info.get(k) for k in ("epochs_run", "best_epoch",
                                                             "stopped_early", "parameters")}
        write_json_atomic(ev, folder / EVALUATION_FILE)
        if store_thresholds(folder / f"{fit.name}.onnx", threshold_metadata(ev["thresholds"])):
            log.info("%s: thresholds written into the ONNX metadata", fit.name)
        evaluations[fit.name] = ev
        predictions[fit.name] = pred
    return evaluations, predictions, edges


# --------------------------------------------------------------------------- plots


def make_plots(cfg, out: Path, plan, evaluations: dict, predictions: dict, edges: dict) -> dict:
    """All PNG files; returns their paths relative to ``out``, by kind and range."""
    from . import plots

    folder = out / PLOT_DIR
    folder.mkdir(exist_ok=True)
    made: dict[str, Any] = {"ranges": {}}
    for prange in cfg.ranges:
        fits = [f for f in plan if f.prange == prange and f.name in evaluations]
        if not fits:
            continue
        evs = {f.model: evaluations[f.name] for f in fits}
        files = {}
        scores = {f.model: (predictions[f.name].y, predictions[f.name].proba) for f in fits}
        aucs = {m: {c: pc.get("auc") for c, pc in ev["tiers"]["all"]["per_class"].items()}
                for m, ev in evs.items()}
        files["roc"] = plots.roc_curves(folder / f"roc_{prange}.png", prange, scores, aucs)
        absent = sorted({c for ev in evs.values() for c in ev["absent_classes"]})
        per_model = {m: ev["pt_bins"]["per_class"] for m, ev in evs.items()}
        edge, log_x = edges[prange]
        for quantity in ("efficiency", "purity"):
            files[quantity] = plots.versus_pt(folder / f"{quantity}_vs_pt_{prange}.png", prange,
                                              quantity, edge, log_x, per_model, absent)
        files["confusion"] = plots.confusion_matrices(
            folder / f"confusion_{prange}.png", prange,
            {m: ev["tiers"]["all"]["confusion"] for m, ev in evs.items()})
        made["ranges"][prange] = {k: str(p.relative_to(out)) for k, p in files.items()}
    accuracy = {r: {} for r in cfg.ranges}
    bayes = {r: {} for r in cfg.ranges}
    for fit in plan:
        ev = evaluations.get(fit.name)
        if ev is None:
            continue
        accuracy[fit.prange][fit.model] = ev["tiers"]["all"]["accuracy"]
        tier = ev["tiers"]["bayes"]
        if "model" in tier:
            bayes[fit.prange][fit.model] = tier["model"]["accuracy"]
            bayes[fit.prange]["bayes"] = tier["baseline"]["accuracy"]
    if evaluations:
        made["summary"] = str(plots.accuracy_summary(folder / "summary_accuracy.png", cfg.models,
                                                     cfg.ranges, accuracy, bayes).relative_to(out))
    return made


# --------------------------------------------------------------------------- tables


def comparison_table(cfg, evaluations: dict) -> dict:
    """The seed's layout: ranges as rows (three metrics each), models as columns."""
    rows = []
    for prange in cfg.ranges:
        for metric in ("test_accuracy", "train_accuracy", "macro_auc"):
            values = {}
            for model in cfg.models:
                ev = evaluations.get(f"{model}_{prange}")
                if ev is None:
                    values[model] = None
                elif metric == "test_accuracy":
                    values[model] = ev["tiers"]["all"]["accuracy"]
                elif metric == "train_accuracy":
                    values[model] = ev["train_accuracy"]
                else:
                    values[model] = ev["tiers"]["all"]["macro_auc"]
            rows.append({"range": prange, "metric": metric, "values": values})
    return {"columns": list(cfg.models), "rows": rows}


def bayes_tier_table(cfg, evaluations: dict) -> dict:
    """Accuracy on tracks with Bayesian probabilities, the Bayes baseline beside the models."""
    rows = []
    for prange in cfg.ranges:
        row: dict[str, Any] = {"range": prange, "tracks": None, "fraction": None, "bayes": None,
                               "values": {}}
        for model in cfg.models:
            ev = evaluations.get(f"{model}_{prange}")
            tier = None if ev is None else ev["tiers"]["bayes"]
            row["values"][model] = tier["model"]["accuracy"] if tier and "model" in tier else None
            if tier is not None:
                row["tracks"], row["fraction"] = tier["n"], tier["fraction"]
                if "baseline" in tier:
                    row["bayes"] = tier["baseline"]["accuracy"]
                    row["bayes_macro_auc"] = tier["baseline"]["macro_auc"]
        rows.append(row)
    return {"columns": ["bayes", *cfg.models], "rows": rows}


def best_model(cfg, evaluations: dict) -> tuple[str | None, str]:
    """Highest full-range test accuracy; without full-range results, the highest mean test
    accuracy over the ranges (among models evaluated on all of them)."""
    acc = {m: {r: evaluations[f"{m}_{r}"]["tiers"]["all"]["accuracy"] for r in cfg.ranges
               if f"{m}_{r}" in evaluations} for m in cfg.models}
    full = {m: a["full"] for m, a in acc.items() if "full" in a}
    if full:
        return max(full, key=full.get), "highest test accuracy on the full pT range"
    done = [r for r in cfg.ranges if any(r in a for a in acc.values())]
    mean = {m: sum(a.values()) / len(a) for m, a in acc.items() if a and len(a) == len(done)}
    if not mean:
        return None, ""
    return max(mean, key=mean.get), "highest mean test accuracy over the ranges"


def per_class_rows(cfg, evaluations: dict, models: Sequence[str]) -> list[dict]:
    """Per model, range and class: efficiency, purity, F1, support, AUC and thresholds."""
    rows = []
    for model in models:
        for prange in cfg.ranges:
            ev = evaluations.get(f"{model}_{prange}")
            if ev is None:
                continue
            for name in CLASS_NAMES:
                pc = ev["tiers"]["all"]["per_class"][name]
                th = ev["thresholds"][name]
                row: dict[str, Any] = {"model": model, "range": prange, "class": name,
                                       "absent": bool(pc.get("absent"))}
                if not pc.get("absent"):
                    row.update({k: pc[k] for k in ("efficiency", "purity", "f1", "support", "auc")})
                    row["threshold_max_f1"] = th["max_f1"]["threshold"]
                    row["f1_at_max_f1"] = th["max_f1"]["f1"]
                    hit = th["at_purity_target"]
                    row["purity_target"] = th["purity_target"]
                    row["threshold_purity_target"] = None if hit is None else hit["threshold"]
                    row["efficiency_at_purity_target"] = None if hit is None else hit["efficiency"]
                else:
                    row["support"] = 0
                rows.append(row)
    return rows


# --------------------------------------------------------------------------- writers


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    return buf.getvalue().encode()


def _md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _data_text(cfg) -> str:
    if cfg.files:
        return ", ".join(str(p) for p in cfg.files)
    return f"built-in fast simulation, {cfg.builtin_tracks} Pb–Pb tracks (seed {cfg.seed})"


def _selections_text(cfg) -> str:
    s = cfg.selections.as_dict()
    if all(v is None for v in s.values()):
        return "none"
    parts = []
    for key, label in (("eta_max", "|η| < {}"), ("dcaxy_max", "|DCAxy| < {} cm"),
                       ("dcaz_max", "|DCAz| < {} cm"), ("min_tpc_clusters", "≥ {} TPC clusters"),
                       ("min_its_clusters", "≥ {} ITS clusters")):
        if s[key] is not None:
            parts.append(label.format(s[key]))
    return ", ".join(parts)


def write_report(cfg, out: Path, plan, status: dict, range_errors: dict, evaluations: dict,
                 plot_files: dict) -> Path:
    """``report.md`` plus ``report.json`` and the CSV tables."""
    comparison = comparison_table(cfg, evaluations)
    bayes = bayes_tier_table(cfg, evaluations)
    best, best_how = best_model(cfg, evaluations)
    per_class_all = per_class_rows(cfg, evaluations, cfg.models)
    per_class_best = [r for r in per_class_all if r["model"] == best]
    notes = _notes(cfg, plan, status, range_errors, evaluations)
    fits = _fit_rows(plan, status, evaluations)

    md = [f"# PID model comparison: {cfg.name}", ""]
    md += [f"- data: {_data_text(cfg)}", f"- selections: {_selections_text(cfg)}",
           f"- split: 70 % train, 10 % validation, 20 % test, stratified by class, "
           f"seed {cfg.seed}; every figure below is on the **test split** unless it says train",
           f"- pid-export {__version__}; configuration in `config.toml`, state in `study.json`", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]

    md += ["## Comparison (seed layout)", "",
           "Ranges as rows, models as columns: test accuracy, train accuracy and macro "
           "one-vs-rest AUC. Decision: the class with the highest probability.", ""]
    header = ["range", "metric"] + [model_label(m) for m in cfg.models]
    metric_text = {"test_accuracy": "test accuracy", "train_accuracy": "train accuracy",
                   "macro_auc": "macro AUC"}
    body = []
    for row in comparison["rows"]:
        fmt = _num if row["metric"] == "macro_auc" else _pct
        first = row["metric"] == "test_accuracy"
        body.append([_range_text(row["range"]) if first else "", metric_text[row["metric"]]]
                    + [fmt(row["values"][m]) for m in cfg.models])
    md += _md_table(header, body, "ll" + "r" * len(cfg.models)) + [""]
    if "summary" in plot_files:
        md += [f"![Test accuracy by model and range]({plot_files['summary']})", ""]

    md += ["## Tracks with Bayesian probabilities", "",
           "Second tier: only test tracks with real Bayesian PID probabilities; the Bayes "
           "baseline takes the class with the largest of the four probabilities.", ""]
    header = ["range", "tracks", "Bayes baseline"] + [model_label(m) for m in cfg.models]
    body = []
    for row in bayes["rows"]:
        tracks = "n/a" if row["tracks"] is None else f"{row['tracks']} ({_pct(row['fraction'], 1)})"
        body.append([_range_text(row["range"]), tracks, _pct(row["bayes"])]
                    + [_pct(row["values"][m]) for m in cfg.models])
    md += _md_table(header, body) + [""]

    if best is not None:
        md += [f"## Per class: {model_label(best)} (best model: {best_how})", "",
               f"Efficiency = recall, purity = precision, at the argmax decision. Thresholds are "
               f"cuts `p(class) >= t` judged one class at a time, read off the test split: the "
               f"one with the highest F1, and the loosest one whose purity reaches "
               f"{cfg.purity_target:.0%} (its efficiency in brackets). Both are in the ONNX "
               f"metadata (`pid_thresholds`).", ""]
        header = ["range", "class", "efficiency", "purity", "F1", "support", "AUC",
                  "max-F1 threshold", f"threshold for purity ≥ {cfg.purity_target:.0%}"]
        body = []
        for r in per_class_best:
            if r["absent"]:
                body.append([_range_text(r["range"]), r["class"], "absent"] + [""] * 2
                            + ["0"] + [""] * 3)
                continue
            target = "not reached"
            if r["threshold_purity_target"] is not None:
                target = (f"{r['threshold_purity_target']:.3f} "
                          f"({_pct(r['efficiency_at_purity_target'], 1)})")
            body.append([_range_text(r["range"]), r["class"], _pct(r["efficiency"]),
                         _pct(r["purity"]), _num(r["f1"], 3), str(r["support"]),
                         _num(r["auc"]), f"{r['threshold_max_f1']:.3f}", target])
        md += _md_table(header, body, "llrrrrrrr") + [""]
        md += ["All models: `per_class.csv`.", ""]

    md += _importance_section(cfg, evaluations)
    md += _gate_section(cfg, evaluations)
    md += _plot_section(cfg, plot_files)

    md += ["## Fits", ""]
    header = ["fit", "status", "fit time", "parity max abs diff", "ONNX"]
    body = [[r["fit"], r["status"], "" if r["seconds"] is None else f"{r['seconds']:.0f} s",
             "" if r["parity_max_abs_diff"] is None else f"{r['parity_max_abs_diff']:.1e}",
             f"[{r['onnx']}]({r['onnx']})" if r["onnx"] else ""] for r in fits]
    md += _md_table(header, body, "llrrl") + [""]

    report_md = out / "report.md"
    write_atomic("\n".join(md).encode(), report_md)

    cols = ["range", "metric"] + list(cfg.models)
    write_atomic(_csv([{"range": r["range"], "metric": r["metric"], **r["values"]}
                       for r in comparison["rows"]], cols), out / "comparison.csv")
    bayes_rows = [{"range": r["range"], "tracks": r["tracks"], "bayes": r["bayes"], **r["values"]}
                  for r in bayes["rows"]]
    write_atomic(_csv(bayes_rows, ["range", "tracks", "bayes", *cfg.models]), out / "bayes_tier.csv")
    pc_cols = ["model", "range", "class", "absent", "efficiency", "purity", "f1", "support", "auc",
               "threshold_max_f1", "f1_at_max_f1", "purity_target", "threshold_purity_target",
               "efficiency_at_purity_target"]
    write_atomic(_csv(per_class_all, pc_cols), out / "per_class.csv")
    write_atomic(_csv(per_class_best, pc_cols), out / "per_class_best.csv")
    write_json_atomic({
        "name": cfg.name,
        "package_version": __version__,
        "config": cfg.as_dict(),
        "comparison": comparison,
        "bayes_tier": bayes,
        "best_model": {"model": best, "chosen_by": best_how},
        "per_class_best": per_class_best,
        "per_class": per_class_all,
        "importance": {n: ev["importance"] for n, ev in evaluations.items()
                       if ev.get("importance")},
        "gates": {n: ev["gates"] for n, ev in evaluations.items() if "gates" in ev},
        "fits": fits,
        "notes": notes,
        "range_errors": range_errors,
        "plots": plot_files,
    }, out / "report.json")
    return report_md


def _notes(cfg, plan, status, range_errors, evaluations) -> list[str]:
    notes = [f"range {r}: no tracks; its fits were not run ({msg})"
             for r, msg in range_errors.items()]
    for fit in plan:
        rec = status.get(fit.name, {})
        if not rec.get("passed") and fit.prange not in range_errors:
            notes.append(f"{fit.name}: {rec.get('error', 'not run')}")
    for prange in cfg.ranges:
        absent = sorted({c for f in plan if f.prange == prange and f.name in evaluations
                         for c in evaluations[f.name]["absent_classes"]})
        if absent:
            notes.append(f"range {prange}: no {', '.join(absent)} in the test split; "
                         "evaluated on the other classes, marked absent")
    return notes


def _fit_rows(plan, status, evaluations) -> list[dict]:
    rows = []
    for fit in plan:
        rec = status.get(fit.name, {})
        ev = evaluations.get(fit.name)
        rows.append({
            "fit": fit.name, "model": fit.model, "range": fit.prange,
            "status": "passed" if rec.get("passed") else ("not run" if rec.get("pending")
                                                         else "failed"),
            "error": rec.get("error"),
            "seconds": rec.get("seconds"),
            "parity_max_abs_diff": rec.get("parity_max_abs_diff"),
            "onnx": ev["onnx"] if ev else None,
            "test_accuracy": ev["tiers"]["all"]["accuracy"] if ev else None,
        })
    return rows


def _importance_section(cfg, evaluations) -> list[str]:
    lines: list[str] = []
    for model in cfg.models:
        imps = {r: evaluations[f"{model}_{r}"]["importance"] for r in cfg.ranges
                if f"{model}_{r}" in evaluations and evaluations[f"{model}_{r}"].get("importance")}
        if not imps:
            continue
        kind = next(iter(imps.values()))["kind"]
        ref = imps.get("full") or next(iter(imps.values()))
        top = list(ref["values"])[:10]
        if not lines:
            lines += ["## Feature importance (trees)", ""]
        lines += [f"{model_label(model)}: share of total {kind}, the ten largest "
                  f"({'full range' if 'full' in imps else 'first range'} order).", ""]
        header = ["feature"] + [_range_text(r) for r in imps]
        body = [[f"`{f}`"] + [_pct(imps[r]["values"].get(f), 1) for r in imps] for f in top]
        lines += _md_table(header, body) + [""]
    return lines


def _gate_section(cfg, evaluations) -> list[str]:
    lines: list[str] = []
    for prange in cfg.ranges:
        ev = evaluations.get(f"fse1_{prange}")
        if ev is None or "gates" not in ev:
            continue
        if not lines:
            lines += ["## FSE Phase 1: mean gate per detector group and true class", "",
                      "How much the detector-aware net leans on each group (test split).", ""]
        lines += [f"{_range_text(prange)}:", ""]
        header = ["group"] + list(CLASS_NAMES)
        body = [[g] + [_num(v, 3) for v in per_class.values()]
                for g, per_class in ev["gates"].items()]
        lines += _md_table(header, body) + [""]
    return lines


def _plot_section(cfg, plot_files) -> list[str]:
    if not plot_files.get("ranges"):
        return []
    lines = ["## Plots", ""]
    names = {"roc": "ROC curves", "efficiency": "efficiency vs pT", "purity": "purity vs pT",
             "confusion": "confusion matrices"}
    for prange, files in plot_files["ranges"].items():
        links = ", ".join(f"[{names[k]}]({v})" for k, v in files.items())
        lines.append(f"- {_range_text(prange)}: {links}")
    lines.append("")
    for prange, files in plot_files["ranges"].items():
        lines += [f"### {_range_text(prange)}", "", f"![efficiency vs pT]({files['efficiency']})",
                  "", f"![purity vs pT]({files['purity']})", ""]
    return lines


# --------------------------------------------------------------------------- entry


def build_outputs(cfg, out: Path, plan, status: dict, range_errors: dict, *,
                  echo: Echo = print) -> Path:
    """Evaluate, plot and report; returns the Markdown report's path."""
    evaluations, predictions, edges = evaluate_fits(cfg, out, plan, status)
    plot_files: dict = {}
    if cfg.plots and evaluations:
        plot_files = make_plots(cfg, out, plan, evaluations, predictions, edges)
    return write_report(cfg, out, plan, status, range_errors, evaluations, plot_files)
