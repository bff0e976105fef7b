"""The tree families: XGBoost and a scikit-learn Random Forest.

XGBoost handles NaN natively (a learned default direction per split), and onnxmltools
keeps that routing. A scikit-learn forest trained on NaN does not survive skl2onnx
(sklearn-onnx#1253: 13 % argmax flips on NaN rows, measured), so the forest is a
pipeline whose first step replaces NaN by a token outside every physical range; the
same step becomes an ONNX ``Imputer`` node, and the graph takes raw NaN like XGBoost.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..features import N_CLASSES, N_FEATURES
from . import FitOptions, TrainingData, register

log = logging.getLogger(__name__)

#: The Random Forest's encoding of a missing value (outside every feature's range).
RF_MISSING_TOKEN = -999.0


def _threads() -> int:
    return max(1, os.cpu_count() or 1)


class XGBoostFamily:
    kind = "tree"
    parity_bound = 1e-6
    description = "XGBoost multi:softprob, hist, max_depth 7, learning rate 0.1, early stopping"

    def __init__(self, *, max_depth: int = 7, learning_rate: float = 0.1,
                 n_estimators: int = 600, early_stopping_rounds: int = 25) -> None:
        self.params = dict(max_depth=max_depth, learning_rate=learning_rate,
                           n_estimators=n_estimators, early_stopping_rounds=early_stopping_rounds)

    def fit(self, train: TrainingData, val: TrainingData, opts: FitOptions):
        import xgboost as xgb

        model = xgb.XGBClassifier(
            objective="multi:softprob",
            num_class=N_CLASSES,
            tree_method="hist",
            eval_metric="mlogloss",
            random_state=opts.seed,
            n_jobs=_threads(),
            **self.params,
        )
        model.fit(train.x, train.y, eval_set=[(val.x, val.y)], verbose=False)
        booster = model.get_booster()
        best = getattr(model, "best_iteration", None)
        rounds = booster.num_boosted_rounds()
        if best is not None and best + 1 < rounds:
            # Keep the best iteration only, so native and ONNX use the same trees.
            booster = booster[: best + 1]
        log.info("xgboost: %d boosting rounds kept of %d", booster.num_boosted_rounds(), rounds)
        return booster

    def predict_proba(self, native, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        dm = xgb.DMatrix(np.asarray(x, dtype=np.float32), missing=np.nan)
        return np.asarray(native.predict(dm), dtype=np.float32).reshape(len(x), N_CLASSES)

    def to_onnx(self, native):
        from onnxmltools.convert import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        return convert_xgboost(native, initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
                               target_opset=15)  # onnxmltools 1.16 supports up to 15

    def save_native(self, native, stem: Path) -> list[Path]:
        from ..export import write_atomic

        path = stem.with_name(stem.name + ".xgb.ubj")
        raw = native.save_raw(raw_format="ubj")
        write_atomic(bytes(raw), path)
        return [path]

    def info(self, native) -> dict:
        from ..features import FEATURE_NAMES

        gain = native.get_score(importance_type="gain")  # keys f0..f21, unused features absent
        return {
            "boosting_rounds": native.num_boosted_rounds(),
            "params": self.params,
            "importance_gain": {name: float(gain.get(f"f{i}", 0.0)) for i, name in enumerate(FEATURE_NAMES)},
        }


class RandomForestFamily:
    kind = "tree"
    parity_bound = 1e-6
    description = (f"scikit-learn RandomForest (100 trees, max_depth 18, min_samples_leaf 5) "
                   f"after NaN -> {RF_MISSING_TOKEN}")

    def __init__(self, *, n_estimators: int = 100, max_depth: int | None = 18,
                 min_samples_leaf: int = 5) -> None:
        self.params = dict(n_estimators=n_estimators, max_depth=max_depth,
                           min_samples_leaf=min_samples_leaf)

    def fit(self, train: TrainingData, val: TrainingData, opts: FitOptions):
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline

        pipe = Pipeline([
            ("missing", SimpleImputer(strategy="constant", fill_value=RF_MISSING_TOKEN,
                                      keep_empty_features=True)),
            ("forest", RandomForestClassifier(random_state=opts.seed, n_jobs=_threads(), **self.params)),
        ])
        # Train on train + validation: a forest has no early stopping to feed.
        x = np.concatenate([train.x, val.x])
        y = np.concatenate([train.y, val.y])
        pipe.fit(x, y)
        forest = pipe.named_steps["forest"]
        if list(forest.classes_) != list(range(N_CLASSES)):
            # predict_proba columns follow classes_: a missing class would shift them.
            raise ValueError(f"random forest saw classes {list(forest.classes_)}, expected 0..{N_CLASSES - 1}")
        return pipe

    def predict_proba(self, native, x: np.ndarray) -> np.ndarray:
        return np.asarray(native.predict_proba(np.asarray(x, dtype=np.float32)), dtype=np.float32)

    def to_onnx(self, native):
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.ensemble import RandomForestClassifier

        return to_onnx(
            native,
            initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
            options={RandomForestClassifier: {"zipmap": False}},
        )

    def save_native(self, native, stem: Path) -> list[Path]:
        return []  # no pickle: the ONNX file is the artefact

    def info(self, native) -> dict:
        forest = native.named_steps["forest"]
        from ..features import FEATURE_NAMES

        return {
            "params": self.params,
            "missing_token": RF_MISSING_TOKEN,
            "importance_impurity": dict(zip(FEATURE_NAMES, map(float, forest.feature_importances_))),
            "n_nodes": int(sum(t.tree_.node_count for t in forest.estimators_)),
        }


def register_all() -> None:
    register("xgb", XGBoostFamily())
    register("rf", RandomForestFamily())
