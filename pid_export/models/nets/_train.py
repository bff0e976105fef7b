"""Training the nets: focal loss, a jit-compiled epoch, early stopping.

Takes a network (:mod:`._layers`), the training and validation parts and a
:class:`TrainConfig`, and hands back the network with the weights of its best epoch
(lowest validation loss) plus the per-epoch history. One epoch is one ``jax.jit``-ed
``lax.scan`` over shuffled batches: the model and the optimiser are split into a graph
definition and a state, and merged inside the step (DESIGN §8: 1 s per epoch for 800 k
tracks against 12.6 s with ``nnx.jit`` per step).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ...features import N_CLASSES

log = logging.getLogger(__name__)

CLASS_WEIGHT_MODES = ("balanced", "none")


@dataclass
class TrainConfig:
    """Training settings (the seed study's unless said otherwise)."""

    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-4
    patience: int = 30
    focal_alpha: float = 0.5
    focal_gamma: float = 2.5
    # "none" by default: balanced weights buy rare-class efficiency with 5 points of
    # accuracy on the built-in sample (docs/nets.md); "balanced" is the seed study's.
    class_weight: str = "none"
    seed: int = 231
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("progress")
        return d


@dataclass
class History:
    """Per-epoch figures and where the best weights came from."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1  # 0-based; -1: no epoch run
    stopped_early: bool = False
    class_weights: list[float] = field(default_factory=list)
    devices: int = 1  # local devices the batches were sharded over

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def class_weights(y: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights: ``n / (K n_c)`` for "balanced" (absent classes get 0)."""
    if mode == "none":
        return np.ones(N_CLASSES, dtype=np.float32)
    if mode != "balanced":
        raise ValueError(f"class_weight {mode!r}: choose from {', '.join(CLASS_WEIGHT_MODES)}")
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=N_CLASSES).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (N_CLASSES * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def focal_loss(logits: jax.Array, y: jax.Array, weight: jax.Array, *, alpha: float,
               gamma: float) -> jax.Array:
    """Per-row weighted focal loss ``-w alpha (1 - p_t)^gamma log p_t`` (Lin et al. 2017)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    logp_t = jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
    p_t = jnp.exp(logp_t)
    return -weight * alpha * jnp.power(jnp.maximum(1.0 - p_t, 0.0), gamma) * logp_t


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled row indices ``[n_batches, batch]``; the incomplete last batch is dropped
    (a new order each epoch, so every row is used) to keep BatchNorm statistics clean."""
    size = min(batch_size, n)
    perm = rng.permutation(n)
    n_batches = n // size
    return perm[: n_batches * size].reshape(n_batches, size)


def data_mesh():
    """A one-axis mesh over the local devices for data parallelism, or None for one device.

    With several devices (GPUs, or CPU devices forced with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N``), each batch is split along
    its rows over the mesh and the model and optimiser state are replicated; ``jax.jit``
    then partitions the step and averages the gradients across devices, so the update is
    the one a single device would make on the whole batch.
    """
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    return jax.sharding.Mesh(np.array(devices), ("data",))


def make_epoch_fn(graphdef, cfg: TrainConfig):
    """A jitted ``(state, x, y, w) -> (state, losses, accuracies)`` over stacked batches."""

    def step(state, batch):
        xb, yb, wb = batch
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(m):
            logits = m(xb)
            loss = focal_loss(logits, yb, wb, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
            return loss.mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        acc = jnp.mean(jnp.argmax(logits, axis=-1) == yb)
        return nnx.state((model, optimizer)), (loss, acc)

    @jax.jit
    def epoch(state, x, y, w):
        return jax.lax.scan(step, state, (x, y, w))

    return epoch


def make_eval_fn(graphdef, cfg: TrainConfig):
    """A jitted ``(model_state, x, y, w) -> (per-row loss, correct)`` in inference mode."""

    @jax.jit
    def evaluate(state, x, y, w):
        model = nnx.merge(graphdef, state)
        logits = model(x)
        loss = focal_loss(logits, y, w, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
        return loss, jnp.argmax(logits, axis=-1) == y

    return evaluate


def _evaluate(eval_fn, state, x: jax.Array, y: jax.Array, w: jax.Array,
              chunk: int = 4096) -> tuple[float, float]:
    """Mean weighted loss and accuracy over all rows, in fixed-size padded chunks."""
    n = x.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    loss_sum, correct = 0.0, 0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        pad = chunk - (stop - start) if n > chunk else 0
        xs, ys, ws = x[start:stop], y[start:stop], w[start:stop]
        if pad:
            xs = jnp.concatenate([xs, jnp.repeat(xs[-1:], pad, axis=0)])
            ys = jnp.concatenate([ys, jnp.repeat(ys[-1:], pad, axis=0)])
            ws = jnp.concatenate([ws, jnp.zeros((pad,), ws.dtype)])
        loss, ok = eval_fn(state, xs, ys, ws)
        m = stop - start
        loss_sum += float(jnp.sum(loss[:m]))
        correct += int(jnp.sum(ok[:m]))
    return loss_sum / n, correct / n


def train(model: nnx.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
          y_val: np.ndarray, cfg: TrainConfig, *, name: str = "net",
          optimizer_state: Any | None = None) -> tuple[History, Any]:
    """Train ``model`` in place; on return it holds the best epoch's weights (eval mode).

    Returns the history and the optimiser's state (for a checkpoint that can go on).
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    weights = class_weights(y_train, cfg.class_weight)
    history = History(class_weights=weights.tolist())
    optimizer = nnx.Optimizer(model, optax.adam(cfg.learning_rate), wrt=nnx.Param)
    if optimizer_state is not None:
        nnx.update(optimizer, optimizer_state)

    model.eval()
    eval_graphdef, _ = nnx.split(model)
    model.train()
    train_graphdef, state = nnx.split((model, optimizer))
    epoch_fn = make_epoch_fn(train_graphdef, cfg)
    eval_fn = make_eval_fn(eval_graphdef, cfg)

    mesh = data_mesh()
    batch_size = cfg.batch_size
    if mesh is not None:
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        # Each device takes an equal share of every batch.
        batch_size = max(mesh.size, (cfg.batch_size // mesh.size) * mesh.size)
        rows_spec = NamedSharding(mesh, P(None, "data"))
        state = jax.device_put(state, NamedSharding(mesh, P()))
        history.devices = mesh.size
        log.info("%s: data parallel over %d local devices (batch %d, %d per device)", name,
                 mesh.size, batch_size, batch_size // mesh.size)

    def shard(a):
        return a if mesh is None else jax.device_put(a, rows_spec)

    xt = jnp.asarray(x_train, dtype=jnp.float32)
    yt = jnp.asarray(y_train, dtype=jnp.int32)
    wt = jnp.asarray(weights)[yt]
    xv = jnp.asarray(x_val, dtype=jnp.float32)
    yv = jnp.asarray(y_val, dtype=jnp.int32)
    wv = jnp.asarray(weights)[yv]
    has_val = len(y_val) > 0
    rng = np.random.default_rng(cfg.seed)

    best_loss, best_state, wait = np.inf, state, 0
    bar = tqdm(range(cfg.epochs), desc=f"training {name}", unit="epoch", leave=True,
               disable=None if cfg.progress is None else not cfg.progress)
    per_epoch_level = logging.DEBUG if not bar.disable else logging.INFO
    with logging_redirect_tqdm():
        for epoch in bar:
            t0 = time.perf_counter()
            idx = jnp.asarray(_batches(len(y_train), batch_size, rng))
            state, (losses, accs) = epoch_fn(state, shard(xt[idx]), shard(yt[idx]), shard(wt[idx]))
            train_loss, train_acc = float(jnp.mean(losses)), float(jnp.mean(accs))
            if has_val:
                val_loss, val_acc = _evaluate(eval_fn, state[0], xv, yv, wv)
            else:  # no validation rows: early stopping watches the training loss
                val_loss, val_acc = train_loss, train_acc
            dt = time.perf_counter() - t0
            history.train_loss.append(train_loss)
            history.train_accuracy.append(train_acc)
            history.val_loss.append(val_loss)
            history.val_accuracy.append(val_acc)
            history.seconds.append(dt)
            if not np.isfinite(train_loss):
                raise FloatingPointError(f"{name}: training loss became {train_loss} in epoch "
                                         f"{epoch + 1}; lower the learning rate")
            if val_loss < best_loss:
                best_loss, best_state, wait = val_loss, state, 0
                history.best_epoch = epoch
            else:
                wait += 1
            bar.set_postfix(loss=f"{train_loss:.4f}", acc=f"{train_acc:.3f}",
                            val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
            log.log(per_epoch_level, "%s epoch %d/%d: train loss %.4f acc %.4f, validation loss "
                    "%.4f acc %.4f (%.1f s)", name, epoch + 1, cfg.epochs, train_loss, train_acc,
                    val_loss, val_acc, dt)
            if wait >= cfg.patience:
                history.stopped_early = True
                log.info("%s: early stop after epoch %d (no better validation loss for %d "
                         "epochs)", name, epoch + 1, cfg.patience)
                break
    bar.close()
    nnx.update((model, optimizer), best_state)
    model.eval()
    log.info("%s: best epoch %d of %d, validation loss %.4f", name, history.best_epoch + 1,
             len(history.val_loss), best_loss)
    return history, nnx.state(optimizer)
