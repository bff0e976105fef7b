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

    def native_params(self, seed: int) -> tuple[dict, int, int]:
        """(xgboost.train parameters, boosting rounds, early-stopping patience)."""
        p = self.params
        params = {
            "objective": "multi:softprob",
            # Always four classes: a class absent from the training part keeps its column.
            "num_class": N_CLASSES,
            "tree_method": "hist",
            "eval_metric": "mlogloss",
            "max_depth": p["max_depth"],
            "learning_rate": p["learning_rate"],
            "seed": seed,
        }
        return params, int(p["n_estimators"]), int(p["early_stopping_rounds"])

    def fit(self, train: TrainingData, val: TrainingData, opts: FitOptions):
        import xgboost as xgb

        params, rounds, patience = self.native_params(opts.seed)
        params["nthread"] = _threads()
        dtrain = xgb.DMatrix(train.x, label=train.y, missing=np.nan, nthread=_threads())
        evals = [(xgb.DMatrix(val.x, label=val.y, missing=np.nan, nthread=_threads()), "validation")]
        if len(val.y) == 0:  # no validation rows: no early stopping
            evals, patience = [], None
        booster = xgb.train(params, dtrain, num_boost_round=rounds, evals=evals,
                            early_stopping_rounds=patience, verbose_eval=False)
        return keep_best(booster)

    def predict_proba(self, native, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        dm = xgb.DMatrix(np.asarray(x, dtype=np.float32), missing=np.nan)
        return np.asarray(native.predict(dm), dtype=np.float32).reshape(len(x), N_CLASSES)

    def to_onnx(self, native):
        from onnxmltools.convert import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        onx = convert_xgboost(native, initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
                              target_opset=15)  # onnxmltools 1.16 supports up to 15
        _fold_base_values(onx)
        return onx

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


def keep_best(booster):
    """The booster cut at its best iteration, so native and ONNX use the same trees."""
    best = booster.attr("best_iteration")
    rounds = booster.num_boosted_rounds()
    if best is not None and int(best) + 1 < rounds:
        booster = booster[: int(best) + 1]
    log.info("xgboost: %d boosting rounds kept of %d", booster.num_boosted_rounds(), rounds)
    return booster


def _fold_base_values(model) -> None:
    """Add each class's base score to the leaves of that class's first tree.

    XGBoost starts every margin at the base score and adds the trees in order, in
    float32; onnxruntime adds the trees first and the base value last. The two orders
    round differently (up to 4e-6 in the margin, 1.4e-6 in a probability, measured on
    1 M tracks), which is over the 1e-6 parity bound for a model that is right. With the
    base folded into the first tree, both sides perform the same float32 additions in
    the same order.
    """
    from onnx import helper

    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    attrs = {a.name: a for a in node.attribute}
    if "base_values" not in attrs:
        return
    base = np.asarray(helper.get_attribute_value(attrs["base_values"]), dtype=np.float32)
    tree_ids = np.asarray(attrs["class_treeids"].ints)
    class_ids = np.asarray(attrs["class_ids"].ints)
    weights = np.asarray(attrs["class_weights"].floats, dtype=np.float32)
    for k, b in enumerate(base):
        if b == 0:
            continue
        of_class = class_ids == k
        if not of_class.any():
            raise ValueError(f"xgboost export: no tree for class {k}; cannot place its base score")
        first = tree_ids[of_class].min()
        sel = of_class & (tree_ids == first)
        weights[sel] = weights[sel] + b  # float32 + float32, as XGBoost does
    del attrs["class_weights"].floats[:]
    attrs["class_weights"].floats.extend(weights.tolist())
    del attrs["base_values"].floats[:]
    attrs["base_values"].floats.extend([0.0] * len(base))


def _double_tree_attributes(node, forest) -> None:
    """Replace float thresholds and leaf weights by the forest's own doubles."""
    from onnx import TensorProto, helper

    attrs = {a.name: a for a in node.attribute}
    tree_ids = np.asarray(attrs["nodes_treeids"].ints)
    node_ids = np.asarray(attrs["nodes_nodeids"].ints)
    thresholds = np.zeros(len(tree_ids), dtype=np.float64)
    for t, est in enumerate(forest.estimators_):
        sel = tree_ids == t
        thresholds[sel] = est.tree_.threshold[node_ids[sel]]
    old = np.asarray(attrs["nodes_values"].floats, dtype=np.float32)
    branch = np.asarray(attrs["nodes_modes"].strings) != b"LEAF"
    # skl2onnx rounds each threshold to a neighbouring float32; any other gap means the
    # node numbering is not scikit-learn's.
    gap = np.abs(old[branch].astype(np.float64) - thresholds[branch])
    if not (gap <= np.spacing(np.abs(old[branch])).astype(np.float64)).all():
        raise NotImplementedError("skl2onnx node numbering does not follow scikit-learn's; "
                                  "cannot attach double thresholds (report your versions)")
    thresholds[~branch] = 0.0

    c_tree = np.asarray(attrs["class_treeids"].ints)
    c_node = np.asarray(attrs["class_nodeids"].ints)
    c_ids = np.asarray(attrs["class_ids"].ints)
    weights = np.zeros(len(c_tree), dtype=np.float64)
    n_trees = len(forest.estimators_)
    for t, est in enumerate(forest.estimators_):
        sel = c_tree == t
        value = est.tree_.value[c_node[sel], 0, :]
        value = value / value.sum(axis=1, keepdims=True)  # class fractions in the leaf
        weights[sel] = value[np.arange(sel.sum()), c_ids[sel]] / n_trees
    for name in ("nodes_values", "class_weights"):
        node.attribute.remove(attrs[name])
    node.attribute.extend([
        helper.make_attribute("nodes_values_as_tensor",
                              helper.make_tensor("nodes_values", TensorProto.DOUBLE, [len(thresholds)], thresholds)),
        helper.make_attribute("class_weights_as_tensor",
                              helper.make_tensor("class_weights", TensorProto.DOUBLE, [len(weights)], weights)),
    ])


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
            # predict_proba columns follow classes_: a missing class would drop a column.
            from ..errors import SelectionError
            from ..features import CLASS_NAMES

            missing = [CLASS_NAMES[c] for c in range(N_CLASSES) if c not in set(forest.classes_)]
            raise SelectionError(
                f"the training tracks hold no {', '.join(missing)}: a Random Forest can only "
                "give the four-class output O2 reads when every class is trained on; add "
                "Monte Carlo with those species or use --model xgb, which keeps the column")
        return pipe

    def predict_proba(self, native, x: np.ndarray) -> np.ndarray:
        return np.asarray(native.predict_proba(np.asarray(x, dtype=np.float32)), dtype=np.float32)

    def to_onnx(self, native):
        """The forest in double precision behind an in-graph NaN replacement.

        Graph: ``input`` (float32) -> NaN replaced by the token (IsNaN + Where) -> Cast to
        double -> TreeEnsembleClassifier with the forest's double thresholds and leaf
        weights (ai.onnx.ml opset 3 ``*_as_tensor`` attributes). scikit-learn compares
        float32 inputs with double thresholds and averages the trees in double; with float
        thresholds and float sums onnxruntime rounds differently (measured up to 7e-7 on
        3 k tracks, growing with the data), so the double graph is what keeps parity.
        """
        from onnx import TensorProto, helper
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import DoubleTensorType
        from sklearn.ensemble import RandomForestClassifier

        forest = native.named_steps["forest"]
        onx = to_onnx(
            forest,
            initial_types=[("input_double", DoubleTensorType([None, N_FEATURES]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
            options={RandomForestClassifier: {"zipmap": False}},
        )
        graph = onx.graph
        trees = [n for n in graph.node if n.op_type == "TreeEnsembleClassifier"]
        if len(trees) != 1:
            raise NotImplementedError(f"skl2onnx gave {len(trees)} tree ensembles; expected 1 "
                                      "(report this with your scikit-learn/skl2onnx versions)")
        _double_tree_attributes(trees[0], forest)

        token = helper.make_tensor("missing_token", TensorProto.FLOAT, [], [RF_MISSING_TOKEN])
        graph.initializer.append(token)
        prep = [
            helper.make_node("IsNaN", ["input"], ["input_isnan"], name="missing_mask"),
            helper.make_node("Where", ["input_isnan", "missing_token", "input"], ["input_filled"],
                             name="missing_fill"),
            helper.make_node("Cast", ["input_filled"], ["input_double"], to=TensorProto.DOUBLE,
                             name="to_double"),
        ]
        nodes = prep + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.input[:]
        graph.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, N_FEATURES]))
        for opset in onx.opset_import:
            if opset.domain == "ai.onnx.ml":
                opset.version = max(opset.version, 3)
        return onx

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
