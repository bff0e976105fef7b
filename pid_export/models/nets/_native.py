"""The native net: building, training, predicting, exporting and checkpointing one model.

Takes a model kind and the training parts (or a checkpoint) and hands on a
:class:`NetModel`: the Flax network in inference mode plus everything needed to rebuild
it (hyper-parameters, standardisation statistics, training settings and history).
:func:`to_onnx` traces the inference function with jax2onnx.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization

from ...errors import InputError
from ...export import INPUT_NAME, MAX_OPSET, PROBA_NAME
from ...features import N_CLASSES, N_FEATURES
from . import _checkpoint
from ._layers import GROUP_ORDER, Standardisation, assert_input, build
from ._train import History, TrainConfig, train

log = logging.getLogger(__name__)

#: Rows per jitted call; smaller requests are padded to a power of two (few compilations).
CHUNK = 8192


@dataclass
class NetModel:
    kind: str
    model: Any  # flax.nnx.Module, in inference mode
    hyper: dict[str, Any]
    stats: Standardisation
    train_config: dict[str, Any]
    history: History
    seed: int
    optimizer_state: Any = None
    checkpoint: Path | None = None  # the folder it was loaded from, if any
    resumed: bool = False
    _jitted: dict[str, Any] = field(default_factory=dict, repr=False)

    def _fn(self, what: str):
        if what not in self._jitted:
            self.model.eval()
            graphdef, state = nnx.split(self.model)
            # The weights are closed over (compiled in as constants): one argument per
            # call keeps the dispatch cost of a batch-1 call low.
            if what == "proba":
                def fn(x):
                    return jax.nn.softmax(nnx.merge(graphdef, state)(x), axis=-1)
            else:
                def fn(x):
                    return nnx.merge(graphdef, state).gates(x)
            self._jitted[what] = jax.jit(fn)
        return self._jitted[what]

    def forward(self, x: jax.Array | np.ndarray) -> jax.Array:
        """Jitted probabilities for exactly this batch (no padding): for benchmarks."""
        return self._fn("proba")(x)

    def _apply(self, what: str, x: np.ndarray, width: int) -> np.ndarray:
        x = assert_input(x)
        fn = self._fn(what)
        out = np.empty((len(x), width), dtype=np.float32)
        for start in range(0, len(x), CHUNK):
            part = x[start:start + CHUNK]
            m = len(part)
            size = CHUNK if m == CHUNK else 1 << max(m - 1, 0).bit_length()
            if size > m:
                part = np.concatenate([part, np.zeros((size - m, N_FEATURES), np.float32)])
            out[start:start + m] = np.asarray(fn(part))[:m]
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self._apply("proba", x, N_CLASSES)

    def gates(self, x: np.ndarray) -> np.ndarray:
        """FSE Phase 1: gate per detector group ``[n, 4]`` (order :data:`GROUP_ORDER`)."""
        if self.kind != "fse1":
            raise ValueError(f"gates: only fse1 has detector gates, this is {self.kind}")
        return self._apply("gates", x, len(GROUP_ORDER))

    def n_parameters(self) -> int:
        params = nnx.state(self.model, nnx.Param)
        return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params)))


def fit(kind: str, hyper: dict[str, Any], x_train: np.ndarray, y_train: np.ndarray,
        x_val: np.ndarray, y_val: np.ndarray, cfg: TrainConfig,
        resume_from: NetModel | None = None) -> NetModel:
    """Train a new net (or go on training ``resume_from``) and return it."""
    if resume_from is not None:
        stats, hyper, model = resume_from.stats, resume_from.hyper, resume_from.model
        opt_state = resume_from.optimizer_state
    else:
        stats = Standardisation.from_training(x_train)
        model = build(kind, stats, hyper, cfg.seed)
        opt_state = None
    history, opt_state = train(model, x_train, y_train, x_val, y_val, cfg, name=kind,
                               optimizer_state=opt_state)
    native = NetModel(kind=kind, model=model, hyper=dict(hyper), stats=stats,
                      train_config=cfg.as_dict(), history=history, seed=cfg.seed,
                      optimizer_state=opt_state, resumed=resume_from is not None)
    log.info("%s: %d parameters", kind, native.n_parameters())
    return native


@contextlib.contextmanager
def _quiet(names: tuple[str, ...] = ("onnx_ir", "jax2onnx")):
    """jax2onnx and onnx_ir log a warning per untyped shape constant: keep errors only."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    disabled = logging.root.manager.disable
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    # jax2onnx 0.17 also logs its arguments at INFO on the root logger.
    logging.disable(max(disabled, logging.INFO))
    try:
        yield
    finally:
        logging.disable(disabled)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def to_onnx(native: NetModel, *, opset: int = MAX_OPSET):
    """Trace ``softmax(model(x))`` in inference mode: input ``[N, 22]``, output ``[N, 4]``."""
    from jax2onnx import to_onnx as j2o

    model = native.model
    model.eval()

    def probabilities(x):
        return jax.nn.softmax(model(x), axis=-1)

    with _quiet():
        onx = j2o(probabilities, inputs=[("N", N_FEATURES)], model_name=f"pid_{native.kind}",
                  opset=opset, input_names=[INPUT_NAME], output_names=[PROBA_NAME])
    onx.doc_string = (f"pid-export {native.kind}: raw 22 features (NaN = absent) -> "
                      "4 class probabilities")
    return onx


# --------------------------------------------------------------------------- checkpoints


def _variables(model) -> Any:
    return nnx.state(model, nnx.Not(nnx.RngState))


def save(native: NetModel, folder: Path) -> Path:
    """Write the checkpoint of ``native`` (skipped when it is where it was loaded from)."""
    folder = Path(folder)
    if (native.checkpoint is not None and not native.resumed and folder.exists()
            and folder.resolve() == native.checkpoint.resolve()):
        return folder
    config = {
        "model": native.kind,
        "hyper": native.hyper,
        "seed": native.seed,
        "training": native.train_config,
        "standardisation": native.stats.as_dict(),
        "history": native.history.as_dict(),
    }
    state = serialization.msgpack_serialize(nnx.to_pure_dict(_variables(native.model)))
    opt = None
    if native.optimizer_state is not None:
        opt = serialization.msgpack_serialize(nnx.to_pure_dict(native.optimizer_state))
    return _checkpoint.write_checkpoint(folder, config, state, opt)


def _shapes(tree) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): (tuple(np.shape(v)), str(jnp.asarray(v).dtype))
            for k, v in flat}


def load(folder: Path, *, expect_kind: str) -> NetModel:
    """Rebuild the net saved in ``folder``; clear errors for every way it can be wrong."""
    import optax

    folder = Path(folder)
    cfg, state_bytes, opt_bytes = _checkpoint.open_checkpoint(folder, expect_kind=expect_kind)
    try:
        std = cfg["standardisation"]
        stats = Standardisation(tuple(std["fill"]), tuple(std["mean"]), tuple(std["std"]))
        hyper = dict(cfg.get("hyper") or {})
        seed = int(cfg.get("seed", 0))
        model = build(expect_kind, stats, hyper, seed)
        train_cfg = dict(cfg.get("training") or {})
        history = History.from_dict(cfg.get("history") or {})
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"--checkpoint {folder}: {_checkpoint.CONFIG} is incomplete or holds "
                         f"invalid hyper-parameters ({type(err).__name__}: {err})") from err

    target = _variables(model)
    try:
        pure = serialization.msgpack_restore(state_bytes)
        if _shapes(pure) != _shapes(nnx.to_pure_dict(target)):
            raise ValueError("variable names or shapes differ from the configuration's network")
        nnx.replace_by_pure_dict(target, pure)
    except Exception as err:  # msgpack and flax raise assorted types for a damaged blob
        raise InputError(f"--checkpoint {folder}: {_checkpoint.STATE} cannot be restored "
                         f"({err}); the checkpoint is corrupt or from another version") from err
    nnx.update(model, target)
    model.eval()

    opt_state = None
    if opt_bytes is not None:
        lr = float(train_cfg.get("learning_rate", 1e-4))
        optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
        opt_state = nnx.state(optimizer)
        try:
            pure_opt = serialization.msgpack_restore(opt_bytes)
            if _shapes(pure_opt) != _shapes(nnx.to_pure_dict(opt_state)):
                raise ValueError("optimiser state does not match the network")
            nnx.replace_by_pure_dict(opt_state, pure_opt)
        except Exception as err:
            raise InputError(f"--checkpoint {folder}: {_checkpoint.OPTIMIZER} cannot be "
                             f"restored ({err}); the checkpoint is corrupt") from err
    log.info("loaded %s checkpoint %s (best epoch %d)", expect_kind, folder, history.best_epoch + 1)
    return NetModel(kind=expect_kind, model=model, hyper=hyper, stats=stats,
                    train_config=train_cfg, history=history, seed=seed,
                    optimizer_state=opt_state, checkpoint=folder)
