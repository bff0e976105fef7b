"""The four Flax nets: SimpleNN, DNN, FSE Phase 0 and FSE Phase 1.

Each is a :class:`~pid_export.models.Family` of kind ``"net"``: ``fit`` trains it (or
loads ``--checkpoint``), ``predict_proba`` runs the jitted JAX function, ``to_onnx``
traces the same function with jax2onnx, and ``save_native`` writes the checkpoint folder
``<out>.ckpt/``. The preprocessing (NaN handling, detector masks, standardisation) lives
inside the network, so it is inside the ONNX graph (see :mod:`._layers`).

JAX, Flax, optax and jax2onnx are the optional ``nets`` extra: this module imports none
of them until a net is used, so the trees work without them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from .. import FitOptions, TrainingData, register

log = logging.getLogger(__name__)

#: Default hyper-parameters per kind (FitOptions.extra["hyper"] overrides them).
DEFAULT_HYPER: dict[str, dict[str, Any]] = {
    "simplenn": {"hidden": [64, 64]},
    "dnn": {"hidden": [256, 128, 64], "dropout": 0.1},
    "fse0": {"dim": 32, "heads": 2, "blocks": 1, "ff": 64, "head_hidden": 64},
    "fse1": {"dim": 32, "heads": 2, "blocks": 1, "ff": 64, "head_hidden": 64},
}

DESCRIPTIONS = {
    "simplenn": "SimpleNN: MLP {hidden} ReLU",
    "dnn": "DNN: MLP {hidden} with BatchNorm, ReLU, dropout {dropout}",
    "fse0": "FSE Phase 0: per-feature tokens, {blocks} masked self-attention block(s) "
            "(dim {dim}, {heads} heads), pooled",
    "fse1": "FSE Phase 1: FSE Phase 0 with a learned gate per detector group "
            "(dim {dim}, {heads} heads, {blocks} blocks)",
}
TRAINING_NOTE = "in-graph NaN handling and standardisation; focal loss (alpha 0.5, gamma 2.5)"

#: FitOptions.extra keys a net understands.
EXTRA_KEYS = ("hyper", "class_weight", "patience", "progress", "resume")


def _imports():
    """The JAX side of the nets, or a clear error naming the extra to install."""
    try:
        from . import _native
    except ImportError as err:
        raise ConfigError(f"the nets need JAX, Flax, optax and jax2onnx ({err.name} is missing): "
                          "pip install 'pid-export[nets]'") from err
    return _native


class NetFamily:
    kind = "net"
    parity_bound = 1e-5

    def __init__(self, name: str, *, learning_rate: float = 1e-4) -> None:
        self.name = name
        self.hyper = dict(DEFAULT_HYPER[name])
        self.learning_rate = learning_rate
        self.description = (DESCRIPTIONS[name].format(**self.hyper) + "; " + TRAINING_NOTE
                            + f", Adam {learning_rate:g}")

    def train_config(self, opts: FitOptions):
        from ._train import TrainConfig

        extra = opts.extra or {}
        unknown = sorted(set(extra) - set(EXTRA_KEYS))
        if unknown:
            raise ConfigError(f"{self.name}: unknown training option(s) {unknown}; "
                              f"known: {', '.join(EXTRA_KEYS)}")
        cfg = TrainConfig(seed=opts.seed)
        if opts.epochs is not None:
            cfg.epochs = int(opts.epochs)
        if opts.batch_size is not None:
            cfg.batch_size = int(opts.batch_size)
        cfg.learning_rate = float(opts.learning_rate or self.learning_rate)
        for key in ("class_weight", "patience", "progress"):
            if key in extra:
                setattr(cfg, key, extra[key])
        if cfg.class_weight not in ("none", "balanced"):
            raise ConfigError(f"{self.name}: class_weight {cfg.class_weight!r}; choose "
                              "'none' or 'balanced'")
        if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.learning_rate > 0:
            raise ConfigError(f"{self.name}: epochs ({cfg.epochs}), batch size "
                              f"({cfg.batch_size}) and learning rate ({cfg.learning_rate}) "
                              "must be positive")
        return cfg

    def check_checkpoint(self, folder: Path) -> None:
        """Fail early (before any data is read) on a checkpoint that cannot be used."""
        _imports().load(Path(folder), expect_kind=self.name)

    def fit(self, train: TrainingData, val: TrainingData, opts: FitOptions):
        native_mod = _imports()
        cfg = self.train_config(opts)
        extra = opts.extra or {}
        if opts.checkpoint is not None:
            native = native_mod.load(Path(opts.checkpoint), expect_kind=self.name)
            if not extra.get("resume"):
                if opts.epochs is not None or opts.batch_size is not None:
                    log.warning("%s: --epochs and --batch-size are ignored: --checkpoint "
                                "exports the checkpoint without training", self.name)
                log.info("%s: exporting checkpoint %s without training", self.name, opts.checkpoint)
                return native
            return native_mod.fit(self.name, native.hyper, train.x, train.y, val.x, val.y, cfg,
                                  resume_from=native)
        if extra.get("resume"):
            raise ConfigError(f"{self.name}: resume needs a checkpoint to go on from")
        hyper = dict(self.hyper, **(extra.get("hyper") or {}))
        return native_mod.fit(self.name, hyper, train.x, train.y, val.x, val.y, cfg)

    def predict_proba(self, native, x: np.ndarray) -> np.ndarray:
        return native.predict_proba(x)

    def gates(self, native, x: np.ndarray) -> np.ndarray:
        """FSE Phase 1 only: gate per detector group (tracking, tpc, tof, bayes)."""
        return native.gates(x)

    def to_onnx(self, native):
        return _imports().to_onnx(native)

    def save_native(self, native, stem: Path) -> list[Path]:
        from ._checkpoint import checkpoint_dir

        return [_imports().save(native, checkpoint_dir(Path(stem)))]

    def load_native(self, folder: Path):
        return _imports().load(Path(folder), expect_kind=self.name)

    def info(self, native) -> dict:
        h = native.history
        best = h.best_epoch if 0 <= h.best_epoch < len(h.val_loss) else None
        out = {
            "architecture": native.hyper,
            "parameters": native.n_parameters(),
            "training": native.train_config,
            "epochs_run": len(h.val_loss),
            "best_epoch": None if best is None else best + 1,
            "stopped_early": h.stopped_early,
            "best_validation_loss": None if best is None else h.val_loss[best],
            "best_validation_accuracy": None if best is None else h.val_accuracy[best],
            "class_weights": h.class_weights,
            "seconds_per_epoch": (float(np.median(h.seconds)) if h.seconds else None),
            "standardisation": native.stats.as_dict(),
            "history": h.as_dict(),
        }
        if native.checkpoint is not None:
            out["loaded_from_checkpoint"] = str(native.checkpoint)
        return out


def register_all() -> None:
    for name in DEFAULT_HYPER:
        register(name, NetFamily(name))
