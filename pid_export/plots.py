"""Plots of the study, as PNG files readable on a slide.

Takes the study's evaluations and saved predictions (:mod:`.evaluation`) and hands on
PNG files: ROC curves per class, efficiency and purity vs pT per class (all models on
one panel), confusion matrices, and a summary chart of test accuracy for every model and
range. It draws with matplotlib's object API on the Agg canvas, so it never touches
pyplot's global state or needs a display. Every model keeps one colour in every plot.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .export import write_atomic
from .features import CLASS_NAMES

MODEL_LABELS = {"simplenn": "SimpleNN", "dnn": "DNN", "fse0": "FSE0", "fse1": "FSE1",
                "rf": "Random Forest", "xgb": "XGBoost", "bayes": "Bayes baseline"}
#: Okabe-Ito colours (readable with colour-vision deficiencies), one per model.
MODEL_COLORS = {"simplenn": "#56B4E9", "dnn": "#0072B2", "fse0": "#CC79A7", "fse1": "#D55E00",
                "rf": "#009E73", "xgb": "#E69F00", "bayes": "#555555"}
CLASS_LABELS = {"pion": r"pion ($\pi^{\pm}$)", "kaon": r"kaon (K$^{\pm}$)",
                "proton": r"proton (p, $\bar{\mathrm{p}}$)", "electron": r"electron (e$^{\pm}$)"}
RANGE_LABELS = {"0-1": r"$0 \leq p_{\mathrm{T}} < 1$ GeV/$c$",
                "1-3": r"$1 \leq p_{\mathrm{T}} < 3$ GeV/$c$", "full": r"full $p_{\mathrm{T}}$"}
PT_LABEL = r"$p_{\mathrm{T}}$ (GeV/$c$)"

_STYLE = {"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13, "legend.fontsize": 11,
          "xtick.labelsize": 12, "ytick.labelsize": 12, "axes.grid": True, "grid.alpha": 0.3}
DPI = 130


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _color(model: str) -> str:
    return MODEL_COLORS.get(model, "#000000")


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return write_atomic(buf.getvalue(), path)


def _styled(func):
    """Run a plotting function with the slide style (fonts, grid) in effect."""

    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return func(*args, **kwargs)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def _absent(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize=13, color="#777777")


# --------------------------------------------------------------------------- ROC


@_styled
def roc_curves(path: Path, prange: str, scores: Mapping[str, tuple[np.ndarray, np.ndarray]],
               aucs: Mapping[str, Mapping[str, float | None]]) -> Path:
    """One panel per class: efficiency vs misidentification rate (log), every model."""
    from sklearn.metrics import roc_curve

    fig, axes = _figure(2, 2, (12, 9.5))
    for c, (ax, name) in enumerate(zip(axes.flat, CLASS_NAMES)):
        drawn = False
        for model, (y, proba) in scores.items():
            positive = y == c
            if not positive.any() or positive.all():
                continue
            fpr, tpr, _ = roc_curve(positive, proba[:, c])
            auc = aucs.get(model, {}).get(name)
            lab = model_label(model) + ("" if auc is None else f" (AUC {auc:.3f})")
            ax.plot(np.maximum(fpr, 1e-5), tpr, color=_color(model), lw=2, label=lab)
            drawn = True
        n_pos = max((int(np.sum(y == c)) for y, _ in scores.values()), default=0)
        ax.set_title(f"{CLASS_LABELS[name]}: {n_pos} test tracks")
        ax.set_xscale("log")
        ax.set_xlim(1e-4, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"misidentified as {name} (false-positive rate)")
        ax.set_ylabel(f"{name} efficiency")
        if drawn:
            ax.legend(loc="lower right", fontsize=10, framealpha=0.85)
        else:
            _absent(ax, f"no {name} in the test split")
    fig.suptitle(f"ROC curves, one class against the rest: {RANGE_LABELS.get(prange, prange)}",
                 fontsize=15)
    return _save(fig, path)


# --------------------------------------------------------------------------- vs pT


def _log_pt_axis(ax, lo: float, hi: float) -> tuple[float, float]:
    """Log pT axis labelled with plain numbers (0.2, 0.5, 1, 2 ...), no crowded minor
    labels; returns the axis limits (the edges, widened to the nearest labelled tick)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    coarse = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
    fine = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1, 1.5, 2, 3, 4, 5, 7, 10)
    ticks = [t for t in (coarse if hi / lo > 10 else fine) if lo / 1.1 <= t <= hi * 1.1]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    return min([lo, *ticks]), max([hi, *ticks])


@_styled
def versus_pt(path: Path, prange: str, quantity: str, edges: Sequence[float], log_x: bool,
              per_model: Mapping[str, Mapping[str, Mapping[str, list]]],
              absent: Sequence[str] = ()) -> Path:
    """Efficiency or purity (``quantity``) vs pT, one panel per class, every model."""
    edges = np.asarray(edges, dtype=float)
    centres = np.sqrt(edges[:-1] * edges[1:]) if log_x else 0.5 * (edges[:-1] + edges[1:])
    n_models = max(len(per_model), 1)
    fig, axes = _figure(2, 2, (12, 10))
    handles = None
    for ax, name in zip(axes.flat, CLASS_NAMES):
        drawn = False
        for k, (model, per_class) in enumerate(per_model.items()):
            data = per_class[name]
            val = np.array([np.nan if v is None else v for v in data[quantity]], dtype=float)
            err = np.array([np.nan if v is None else v for v in data[f"{quantity}_err"]],
                           dtype=float)
            if np.isfinite(val).any():
                # Spread the models a little within each bin so error bars do not overlap.
                shift = (k - (n_models - 1) / 2) * 0.08 / n_models
                x = centres * (1 + shift) if log_x else centres + shift * (edges[1] - edges[0]) * 4
                ax.errorbar(x, val, yerr=err, color=_color(model), marker="o", ms=5, lw=1.6,
                            capsize=2, label=model_label(model))
                drawn = True
        ax.set_xlim(*(_log_pt_axis(ax, edges[0], edges[-1]) if log_x else (edges[0], edges[-1])))
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel(PT_LABEL)
        ax.set_ylabel(quantity)
        ax.set_title(CLASS_LABELS[name])
        if drawn:
            handles = handles or ax.get_legend_handles_labels()
        else:
            _absent(ax, f"no {name} in the test split" if name in absent
                    else f"too few {name} tracks per bin")
    if handles:
        # One legend for the four panels, below them: it hides no point.
        fig.legend(*handles, loc="outside lower center", ncols=min(len(handles[0]), 6))
    fig.suptitle(f"{quantity.capitalize()} vs $p_{{\\mathrm{{T}}}}$ (argmax decision): "
                 f"{RANGE_LABELS.get(prange, prange)}", fontsize=15)
    return _save(fig, path)


# --------------------------------------------------------------------------- confusion


@_styled
def confusion_matrices(path: Path, prange: str,
                       matrices: Mapping[str, Sequence[Sequence[int]]]) -> Path:
    """Row-normalised confusion matrix (true class rows) per model, counts underneath."""
    names = list(matrices)
    ncols = min(3, max(len(names), 1))
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = _figure(nrows, ncols, (5.2 * ncols, 4.8 * nrows + 0.6))
    short = ["π", "K", "p", "e"]
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, names):
        m = np.asarray(matrices[model], dtype=float)
        rows = m.sum(axis=1, keepdims=True)
        frac = np.divide(m, rows, out=np.full_like(m, np.nan), where=rows > 0)
        ax.imshow(np.nan_to_num(frac), cmap="Blues", vmin=0, vmax=1)
        ax.grid(False)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if rows[i, 0] == 0:
                    text, colour = "absent" if j == i else "", "#777777"
                else:
                    text = f"{100 * frac[i, j]:.1f}%\n{int(m[i, j])}"
                    colour = "white" if frac[i, j] > 0.6 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=10, color=colour)
        ax.set_xticks(range(len(short)), short)
        ax.set_yticks(range(len(short)), short)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(model_label(model))
    sep = ": " if ncols == 3 else "\n"
    fig.suptitle(f"Confusion matrices, fraction of each true class{sep}"
                 f"{RANGE_LABELS.get(prange, prange)}", fontsize=15)
    return _save(fig, path)


# --------------------------------------------------------------------------- summary


@_styled
def accuracy_summary(path: Path, models: Sequence[str], ranges: Sequence[str],
                     accuracy: Mapping[str, Mapping[str, float | None]],
                     bayes_tier: Mapping[str, Mapping[str, float | None]]) -> Path:
    """Bars of test accuracy: every model and range (left), and on tracks with Bayesian
    PID beside the Bayes baseline (right). ``accuracy[range][model]`` in [0, 1]."""
    fig, axes = _figure(1, 2, (15, 6))
    shades = ["#9ecae1", "#4292c6", "#08306b", "#6baed6", "#2171b5"]
    for ax, table, cols, title in (
        (axes[0, 0], accuracy, list(models), "all test tracks"),
        (axes[0, 1], bayes_tier, ["bayes", *models], "tracks with Bayesian probabilities"),
    ):
        width = 0.8 / max(len(ranges), 1)
        x = np.arange(len(cols))
        for k, prange in enumerate(ranges):
            vals = [table.get(prange, {}).get(m) for m in cols]
            heights = [np.nan if v is None else 100 * v for v in vals]
            pos = x + (k - (len(ranges) - 1) / 2) * width
            bars = ax.bar(pos, np.nan_to_num(heights), width * 0.92, color=shades[k % len(shades)],
                          label=RANGE_LABELS.get(prange, prange))
            for b, h in zip(bars, heights):
                label = "n/a" if not np.isfinite(h) else f"{h:.1f}"
                ax.text(b.get_x() + b.get_width() / 2, (h if np.isfinite(h) else 0) + 0.5, label,
                        ha="center", va="bottom", fontsize=9, rotation=90)
        ax.set_xticks(x, [model_label(m) for m in cols], rotation=20, ha="right")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 110)
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(ranges))
    fig.suptitle("Test accuracy by model and momentum range", fontsize=15)
    return _save(fig, path)
