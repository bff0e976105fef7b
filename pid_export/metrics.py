"""Classification figures on a test split: accuracy, macro AUC, per-class tables.

Takes true classes and predicted probabilities and hands on plain dicts (JSON-ready).
A class absent from the test split is marked absent rather than breaking the figures.
"""

from __future__ import annotations

import numpy as np

from .features import CLASS_NAMES, N_CLASSES


def classification_summary(y: np.ndarray, proba: np.ndarray) -> dict:
    """Accuracy, macro one-vs-rest AUC, per-class efficiency/purity/F1, confusion."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    pred = np.argmax(proba, axis=1)
    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)

    per_class: dict[str, dict] = {}
    aucs = []
    for c, name in enumerate(CLASS_NAMES):
        support = int(confusion[c].sum())
        predicted = int(confusion[:, c].sum())
        tp = int(confusion[c, c])
        if support == 0:
            per_class[name] = {"support": 0, "absent": True}
            continue
        eff = tp / support
        pur = tp / predicted if predicted else 0.0
        f1 = 2 * eff * pur / (eff + pur) if eff + pur > 0 else 0.0
        auc = None
        if 0 < support < len(y):
            auc = float(roc_auc_score(y == c, proba[:, c]))
            aucs.append(auc)
        per_class[name] = {"efficiency": eff, "purity": pur, "f1": f1, "support": support, "auc": auc}
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "confusion_axes": "rows: true class, columns: predicted class, order " + ", ".join(CLASS_NAMES),
    }
