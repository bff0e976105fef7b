"""Native models for the parity check of ``pid-export validate``.

Takes the path given to ``--native`` and hands on a :class:`NativeModel`: a
``predict_proba`` over float32 ``[n, 22]`` rows (NaN where a detector is absent), what it
is, and its default parity bound. Accepted forms:

* **XGBoost** ``.json`` or ``.ubj`` (``Booster.save_model`` / ``save_raw``; the main job
  writes ``<stem>.xgb.ubj`` beside the ONNX file). Read by XGBoost's own loader, which
  holds data only.
* **Flax checkpoints**, the folder ``<stem>.ckpt/`` a net family writes; the family comes
  from the ONNX metadata ``model_kind`` or from ``native_kind``, and is loaded through the
  family registry (:func:`pid_export.models.get_family`).
* **scikit-learn** estimators with ``predict_proba`` (a Pipeline included) as a joblib or
  pickle file. Unpickling runs whatever code the file names, and scikit-learn has no
  data-only format in our dependencies (skops is not one), so a pickle is loaded only when
  the caller passes that exact file *and* ``trust_pickle=True`` (``--trust-pickle``).
  Nothing is ever unpickled by discovery: files beside the model are only mentioned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError
from .features import N_CLASSES, N_FEATURES

log = logging.getLogger(__name__)

#: Default parity bounds (DESIGN: 1e-6 for trees, 1e-5 for nets).
TREE_BOUND = 1e-6
NET_BOUND = 1e-5
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".jbl", ".sav")
XGB_SUFFIXES = (".json", ".ubj")
NET_KINDS = ("simplenn", "dnn", "fse0", "fse1")


@dataclass
class NativeModel:
    kind: str  # "xgboost", "sklearn" or "net:<family>"
    source: str
    description: str
    bound: float
    predict_proba: Callable[[np.ndarray], np.ndarray]


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(2)
    # Pickle protocol 2+ opens with PROTO (0x80); joblib's compressed files with zlib/gzip/xz.
    return (head[:1] == b"\x80" or head in (b"\x78\x9c", b"\x78\x01", b"\x78\xda", b"\x1f\x8b")
            or head == b"\xfd7")


def native_beside(model_path: str | Path) -> list[Path]:
    """Native files that the main job writes beside ``<stem>.onnx`` (never loaded here)."""
    p = Path(model_path)
    stem = p.with_suffix("")
    found = [stem.with_name(stem.name + ".xgb.ubj"), stem.with_name(stem.name + ".ckpt")]
    return [f for f in found if f.exists()]


def load_native(path: str | Path, *, native_kind: str | None = None,
                trust_pickle: bool = False) -> NativeModel:
    """Load the model given to ``--native``; an error that says what is accepted otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--native {path}: no such file or folder")
    if path.is_dir():
        return _load_net(path, native_kind)
    suffix = path.suffix.lower()  # "<stem>.xgb.ubj" ends in ".ubj"
    if suffix in PICKLE_SUFFIXES or _looks_like_pickle(path):
        return _load_pickle(path, trust_pickle)
    if suffix in XGB_SUFFIXES:
        return _load_xgboost(path)
    raise InputError(
        f"--native {path}: unknown format {path.suffix or '(no suffix)'}; give an XGBoost model "
        "(.json or .ubj), a net checkpoint folder (<stem>.ckpt), or a scikit-learn joblib/pickle "
        "file together with --trust-pickle")


def _load_xgboost(path: Path) -> NativeModel:
    import xgboost as xgb

    try:
        booster = xgb.Booster(model_file=str(path))
    except xgb.core.XGBoostError as err:
        raise InputError(f"--native {path}: XGBoost cannot read it as a model "
                         f"({str(err).splitlines()[0]})") from err
    cfg = json.loads(booster.save_config())
    learner = cfg.get("learner", {})
    objective = learner.get("objective", {}).get("name", "?")
    n_class = int(learner.get("learner_model_param", {}).get("num_class", "0") or 0)
    if objective == "multi:softmax":
        raise InputError(f"--native {path}: objective multi:softmax predicts labels, not "
                         "probabilities; train with multi:softprob (its ONNX export holds raw "
                         "scores too)")
    if objective != "multi:softprob" or n_class != N_CLASSES:
        raise InputError(f"--native {path}: objective {objective} with {n_class} classes; "
                         f"expected multi:softprob with {N_CLASSES} classes")
    n_feat = booster.num_features()
    if n_feat not in (0, N_FEATURES):
        raise InputError(f"--native {path}: the booster takes {n_feat} features, expected {N_FEATURES}")

    def predict(x: np.ndarray) -> np.ndarray:
        dm = xgb.DMatrix(np.asarray(x, dtype=np.float32), missing=np.nan)
        return np.asarray(booster.predict(dm), dtype=np.float32).reshape(len(x), N_CLASSES)

    rounds = booster.num_boosted_rounds()
    desc = f"XGBoost {objective}, {rounds} rounds ({path.name})"
    if booster.attr("best_iteration") is not None:
        desc += f"; all {rounds} rounds are used although best_iteration={booster.attr('best_iteration')}"
    return NativeModel("xgboost", str(path), desc, TREE_BOUND, predict)


def _load_pickle(path: Path, trust_pickle: bool) -> NativeModel:
    if not trust_pickle:
        raise InputError(
            f"--native {path}: this is a pickle (joblib) file; unpickling runs any code the file "
            "names. Pass --trust-pickle if you made it yourself or trust its author, or give the "
            "model in a data-only format (XGBoost .json/.ubj, a net checkpoint)")
    import joblib

    log.warning("unpickling %s (--trust-pickle)", path)
    try:
        est = joblib.load(path)
    except Exception as err:  # unpickling can raise anything the file asks for
        raise InputError(f"--native {path}: could not unpickle it: {err}") from err
    if not hasattr(est, "predict_proba"):
        raise InputError(f"--native {path}: holds a {type(est).__name__}, which has no predict_proba")
    classes = getattr(est, "classes_", None)
    if classes is not None and [int(c) for c in classes] != list(range(N_CLASSES)):
        raise InputError(f"--native {path}: classes {list(classes)}, expected 0..{N_CLASSES - 1} "
                         "(pion, kaon, proton, electron)")

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(est.predict_proba(np.asarray(x, dtype=np.float32)), dtype=np.float32)

    name = type(est).__name__
    if name == "Pipeline":
        name = "Pipeline(" + " -> ".join(type(s).__name__ for _, s in est.steps) + ")"
    return NativeModel("sklearn", str(path), f"scikit-learn {name} ({path.name}, unpickled)",
                       TREE_BOUND, predict)


def _load_net(path: Path, native_kind: str | None) -> NativeModel:
    from .models import FitOptions, TrainingData, get_family

    if native_kind is None:
        raise InputError(f"--native {path}: a checkpoint folder needs the net family; the ONNX "
                         f"metadata has no model_kind, so pass --native-kind ({', '.join(NET_KINDS)})")
    try:
        family = get_family(native_kind)
    except ConfigError as err:
        raise InputError(f"--native {path}: net family {native_kind!r} is not available here "
                         f"({err}); install the nets extra: pip install 'pid-export[nets]'") from err
    if family.kind != "net":
        raise InputError(f"--native {path}: {native_kind} is a {family.kind} family; a folder is "
                         f"a net checkpoint (one of {', '.join(NET_KINDS)})")
    loader = getattr(family, "load_native", None)
    try:
        if loader is not None:
            native = loader(path)
        else:
            empty = TrainingData(np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int64))
            native = family.fit(empty, empty, FitOptions(checkpoint=path))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--native {path}: cannot load it as a {native_kind} checkpoint: {err}") from err

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(family.predict_proba(native, np.asarray(x, dtype=np.float32)), dtype=np.float32)

    return NativeModel(f"net:{native_kind}", str(path), f"{family.description} ({path.name})",
                       float(getattr(family, "parity_bound", NET_BOUND)), predict)
