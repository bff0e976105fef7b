"""The four network architectures and the preprocessing they carry inside them.

Every net takes the raw float32 ``[N, 22]`` input (NaN where absent, DESIGN §2) and does
its own preprocessing, so the exported ONNX graph does too and the C++ side feeds raw
accessor values:

1. A value counts as present when it is finite and its detector group is present (the
   group's flag is 1, or the group is tracking); a group counts as present when at
   least one of its values is. A NaN flag counts as 0.
2. A missing value is replaced by its training encoding: the training median, or -0.25
   for the Bayesian probabilities (the seed study's token).
3. Heavy-tailed quantities are compressed (log of pT and dE/dx, ``s * asinh(x / s)``
   for n-sigma and DCA) and every value is standardised with training-split statistics,
   then clipped to +-20 so that garbage inputs cannot blow up the activations.

The MLPs (SimpleNN, DNN) see the 19 standardised values plus the 4 group-presence
flags. The FSE nets see one token per value (its value times a learned vector plus a
learned feature-identity embedding) and a class token that is never masked, so a row
with every detector absent still attends to something and gives finite probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...features import GROUPS, N_CLASSES, N_FEATURES

#: Detector groups in the order the presence flags and gates use.
GROUP_ORDER: tuple[str, ...] = ("tracking", "tpc", "tof", "bayes")

#: The 19 value columns of the 22 features, grouped as GROUP_ORDER (flags excluded).
VALUE_COLUMNS: tuple[int, ...] = tuple(
    c for g in GROUP_ORDER for c in GROUPS[g]["values"]  # type: ignore[union-attr]
)
VALUE_GROUP: tuple[int, ...] = tuple(
    gi for gi, g in enumerate(GROUP_ORDER) for _ in GROUPS[g]["values"]  # type: ignore[arg-type]
)
N_VALUES = len(VALUE_COLUMNS)
N_GROUPS = len(GROUP_ORDER)

#: Missing Bayesian probabilities: the seed study's token.
BAYES_MISSING_TOKEN = -0.25
#: Standardised values are clipped to this magnitude.
CLIP = 20.0
#: Scale of ``s * asinh(x / s)``: linear within a few s, logarithmic beyond.
ASINH_SCALE = {"tpc_nsigma": 3.0, "tof_nsigma": 3.0, "dca": 0.01}
LOG_FLOOR = 1e-3


def transform_spec() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per value column: is-log mask, is-asinh mask and asinh scale (1 elsewhere)."""
    from ...features import FEATURES

    is_log = np.zeros(N_VALUES, dtype=bool)
    is_asinh = np.zeros(N_VALUES, dtype=bool)
    scale = np.ones(N_VALUES, dtype=np.float32)
    for j, col in enumerate(VALUE_COLUMNS):
        name = FEATURES[col].name
        if name in ("pt", "tpc_signal"):
            is_log[j] = True
        elif name.startswith(("tpc_nsigma", "tof_nsigma")):
            is_asinh[j] = True
            scale[j] = ASINH_SCALE[name[:10]]
        elif name.startswith("dca"):
            is_asinh[j] = True
            scale[j] = ASINH_SCALE["dca"]
    return is_log, is_asinh, scale


def compress_np(v: np.ndarray) -> np.ndarray:
    """NumPy twin of the in-graph compression (used to compute the statistics)."""
    is_log, is_asinh, scale = transform_spec()
    v = np.asarray(v, dtype=np.float32)
    logged = np.log(np.maximum(v, LOG_FLOOR))
    squashed = scale * np.arcsinh(v / scale)
    return np.where(is_log, logged, np.where(is_asinh, squashed, v)).astype(np.float32)


def present_values_np(x: np.ndarray) -> np.ndarray:
    """Boolean ``[n, 19]``: which value columns are present (NumPy twin of the graph)."""
    x = np.asarray(x, dtype=np.float32)
    values = x[:, VALUE_COLUMNS]
    ok = np.isfinite(values)
    for gi, g in enumerate(GROUP_ORDER):
        flag = GROUPS[g]["flag"]
        if flag is None:
            continue
        cols = [j for j, vg in enumerate(VALUE_GROUP) if vg == gi]
        ok[:, cols] &= (x[:, flag] > 0.5)[:, None]  # type: ignore[index]
    return ok


@dataclass(frozen=True)
class Standardisation:
    """Training-split statistics of the compressed values (JSON-friendly)."""

    fill: tuple[float, ...]  # raw units, per value column
    mean: tuple[float, ...]  # compressed units
    std: tuple[float, ...]

    @classmethod
    def from_training(cls, x: np.ndarray) -> Standardisation:
        present = present_values_np(x)
        values = np.asarray(x, dtype=np.float32)[:, VALUE_COLUMNS]
        fill, mean, std = [], [], []
        is_bayes = np.asarray(VALUE_GROUP) == GROUP_ORDER.index("bayes")
        for j in range(N_VALUES):
            v = values[present[:, j], j]
            if is_bayes[j]:
                f = BAYES_MISSING_TOKEN
            else:
                f = float(np.median(v)) if len(v) else 0.0
            fill.append(f)
        # Statistics over what the net sees: present values plus the fills of absent ones.
        filled = np.where(present, values, np.asarray(fill, dtype=np.float32))
        comp = compress_np(filled)
        mean = comp.mean(axis=0, dtype=np.float64)
        std = comp.std(axis=0, dtype=np.float64)
        std = np.where(std > 1e-6, std, 1.0)
        return cls(tuple(map(float, fill)), tuple(map(float, mean)), tuple(map(float, std)))

    @classmethod
    def identity(cls) -> Standardisation:
        return cls((0.0,) * N_VALUES, (0.0,) * N_VALUES, (1.0,) * N_VALUES)

    def as_dict(self) -> dict:
        return {"fill": list(self.fill), "mean": list(self.mean), "std": list(self.std)}


class Constant(nnx.Variable):
    """A fixed array inside the model (not trained, saved with the checkpoint)."""


class Preprocess(nnx.Module):
    """Raw ``[N, 22]`` -> standardised values ``[N, 19]``, value mask, group presence."""

    def __init__(self, stats: Standardisation):
        is_log, is_asinh, scale = transform_spec()
        self.fill = Constant(jnp.asarray(stats.fill, dtype=jnp.float32))
        self.mean = Constant(jnp.asarray(stats.mean, dtype=jnp.float32))
        self.inv_std = Constant(jnp.asarray(1.0 / np.asarray(stats.std), dtype=jnp.float32))
        self.scale = Constant(jnp.asarray(scale))
        self.is_log = Constant(jnp.asarray(is_log))
        self.is_asinh = Constant(jnp.asarray(is_asinh))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        values = x[:, np.asarray(VALUE_COLUMNS)]
        finite = jnp.isfinite(values)
        group_flag = []
        for g in GROUP_ORDER:
            flag = GROUPS[g]["flag"]
            if flag is None:
                group_flag.append(jnp.ones((x.shape[0],), dtype=bool))
            else:
                group_flag.append(x[:, flag] > 0.5)  # False for NaN
        flags = jnp.stack(group_flag, axis=1)  # [N, 4]
        present = finite & flags[:, np.asarray(VALUE_GROUP)]
        v = jnp.where(present, values, self.fill[...])
        scale = self.scale[...]
        logged = jnp.log(jnp.maximum(v, LOG_FLOOR))
        squashed = scale * jnp.arcsinh(jnp.clip(v, -1e6, 1e6) / scale)
        comp = jnp.where(self.is_log[...], logged, jnp.where(self.is_asinh[...], squashed, v))
        z = jnp.clip((comp - self.mean[...]) * self.inv_std[...], -CLIP, CLIP)
        membership = jnp.asarray(np.eye(N_GROUPS, dtype=np.float32)[list(VALUE_GROUP)])  # [19, 4]
        group_present = (present.astype(jnp.float32) @ membership) > 0.5
        return z, present, group_present.astype(jnp.float32)


# --------------------------------------------------------------------------- MLPs


class SimpleNN(nnx.Module):
    """Preprocess -> [Linear -> ReLU] x len(hidden) -> Linear (logits)."""

    def __init__(self, stats: Standardisation, *, hidden: tuple[int, ...] = (64, 64),
                 rngs: nnx.Rngs):
        self.pre = Preprocess(stats)
        sizes = (N_VALUES + N_GROUPS, *hidden)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        self.head = nnx.Linear(sizes[-1], N_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        z, _, group_present = self.pre(x)
        h = jnp.concatenate([z, group_present], axis=1)
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return self.head(h)


class DNN(nnx.Module):
    """Preprocess -> [Linear -> BatchNorm -> ReLU -> Dropout] x len(hidden) -> Linear."""

    def __init__(self, stats: Standardisation, *, hidden: tuple[int, ...] = (256, 128, 64),
                 dropout: float = 0.1, rngs: nnx.Rngs):
        self.pre = Preprocess(stats)
        sizes = (N_VALUES + N_GROUPS, *hidden)
        self.layers = nnx.List([nnx.Linear(a, b, use_bias=False, rngs=rngs)
                                for a, b in zip(sizes, sizes[1:])])
        self.norms = nnx.List([nnx.BatchNorm(b, momentum=0.99, rngs=rngs) for b in hidden])
        self.drops = nnx.List([nnx.Dropout(dropout, rngs=rngs) for _ in hidden])
        self.head = nnx.Linear(sizes[-1], N_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        z, _, group_present = self.pre(x)
        h = jnp.concatenate([z, group_present], axis=1)
        for layer, norm, drop in zip(self.layers, self.norms, self.drops):
            h = jax.nn.relu(norm(layer(h)))
            if not drop.deterministic:
                # Skipped, not traced, in inference mode: no Dropout node in the export.
                h = drop(h)
        return self.head(h)


# --------------------------------------------------------------------------- FSE


class LayerNorm(nnx.Module):
    """Layer normalisation written out (mean, variance, rsqrt) for a predictable export."""

    def __init__(self, dim: int, *, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, h: jax.Array) -> jax.Array:
        mu = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mu), axis=-1, keepdims=True)
        return (h - mu) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class MaskedSelfAttention(nnx.Module):
    """Multi-head self-attention over tokens, masked keys, written with einsum.

    Hand-written on purpose: nnx.MultiHeadAttention exported with large logits drifted
    by up to 2.7e-2 from JAX (DESIGN §8); this form stayed within a few 1e-6.
    """

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"attention: dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.out = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, h: jax.Array, key_mask: jax.Array) -> jax.Array:
        n, t, d = h.shape
        dh = d // self.heads
        qkv = self.qkv(h).reshape(n, t, 3, self.heads, dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) * (1.0 / math.sqrt(dh))
        logits = jnp.where(key_mask[:, None, None, :], logits, -1e9)
        weights = jax.nn.softmax(logits, axis=-1)
        ctx = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, t, d)
        return self.out(ctx)


class Block(nnx.Module):
    """Pre-norm transformer block: attention and a feed-forward layer, each residual."""

    def __init__(self, dim: int, heads: int, ff: int, *, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(dim)
        self.attn = MaskedSelfAttention(dim, heads, rngs=rngs)
        self.norm2 = LayerNorm(dim)
        self.ff1 = nnx.Linear(dim, ff, rngs=rngs)
        self.ff2 = nnx.Linear(ff, dim, rngs=rngs)

    def __call__(self, h: jax.Array, key_mask: jax.Array) -> jax.Array:
        h = h + self.attn(self.norm1(h), key_mask)
        return h + self.ff2(jax.nn.gelu(self.ff1(self.norm2(h)), approximate=True))


class FSE(nnx.Module):
    """Feature-set embedding + masked self-attention; ``gated`` adds detector gates.

    Phase 0 (``gated=False``): the class token's output and the masked mean of the
    feature tokens feed the classifier. Phase 1 (``gated=True``): the feature tokens are
    pooled per detector group; each group gets a gate in (0, 1) computed from its pooled
    tokens and the presence of all groups (0 for an absent group), and the classifier
    sees the class token and the gated group summaries.
    """

    def __init__(self, stats: Standardisation, *, gated: bool, dim: int = 32, heads: int = 4,
                 blocks: int = 2, ff: int = 64, head_hidden: int = 64, rngs: nnx.Rngs):
        self.pre = Preprocess(stats)
        self.gated = gated
        init = nnx.initializers.normal(0.5)
        self.value_vec = nnx.Param(init(rngs.params(), (N_VALUES, dim)))
        self.feature_emb = nnx.Param(init(rngs.params(), (N_VALUES, dim)))
        self.cls = nnx.Param(init(rngs.params(), (1, 1, dim)))
        self.blocks = nnx.List([Block(dim, heads, ff, rngs=rngs) for _ in range(blocks)])
        self.norm = LayerNorm(dim)
        if gated:
            self.gate_w = nnx.Param(nnx.initializers.lecun_normal()(
                rngs.params(), (N_GROUPS, dim + N_GROUPS)))
            self.gate_b = nnx.Param(jnp.zeros((N_GROUPS,), jnp.float32))
            pooled = dim * (1 + N_GROUPS)
        else:
            pooled = 2 * dim
        self.hidden = nnx.Linear(pooled, head_hidden, rngs=rngs)
        self.head = nnx.Linear(head_hidden, N_CLASSES, rngs=rngs)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Token outputs after the blocks: class token, feature tokens, mask, presence."""
        z, present, group_present = self.pre(x)
        n = x.shape[0]
        tokens = z[:, :, None] * self.value_vec[...] + self.feature_emb[...]
        cls = jnp.broadcast_to(self.cls[...], (n, 1, tokens.shape[-1]))
        h = jnp.concatenate([cls, tokens], axis=1)
        key_mask = jnp.concatenate([jnp.ones((n, 1), dtype=bool), present], axis=1)
        for block in self.blocks:
            h = block(h, key_mask)
        h = self.norm(h)
        return h[:, 0], h[:, 1:], present, group_present

    def _gates(self, feats: jax.Array, present: jax.Array,
               group_present: jax.Array) -> tuple[jax.Array, jax.Array]:
        membership = jnp.asarray(np.eye(N_GROUPS, dtype=np.float32)[list(VALUE_GROUP)])
        weights = present.astype(jnp.float32)[:, :, None] * membership  # [N, 19, 4]
        counts = jnp.maximum(weights.sum(axis=1), 1.0)  # [N, 4]
        summary = jnp.einsum("ntg,ntd->ngd", weights, feats) / counts[:, :, None]
        n = feats.shape[0]
        cond = jnp.concatenate(
            [summary, jnp.broadcast_to(group_present[:, None, :], (n, N_GROUPS, N_GROUPS))], axis=2)
        gates = jax.nn.sigmoid(jnp.einsum("ngc,gc->ng", cond, self.gate_w[...]) + self.gate_b[...])
        return gates * group_present, summary

    def gates(self, x: jax.Array) -> jax.Array:
        """Gate value per detector group ``[N, 4]`` in GROUP_ORDER (0 when absent)."""
        if not self.gated:
            raise ValueError("gates: this FSE net has no detector gates (Phase 0)")
        _, feats, present, group_present = self.encode(x)
        return self._gates(feats, present, group_present)[0]

    def __call__(self, x: jax.Array) -> jax.Array:
        cls, feats, present, group_present = self.encode(x)
        if self.gated:
            gates, summary = self._gates(feats, present, group_present)
            pooled = jnp.concatenate(
                [cls, (gates[:, :, None] * summary).reshape(x.shape[0], -1)], axis=1)
        else:
            w = present.astype(jnp.float32)[:, :, None]
            mean = (w * feats).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
            pooled = jnp.concatenate([cls, mean], axis=1)
        return self.head(jax.nn.gelu(self.hidden(pooled), approximate=True))


ARCHITECTURES = {
    "simplenn": lambda stats, rngs, **kw: SimpleNN(stats, rngs=rngs, **kw),
    "dnn": lambda stats, rngs, **kw: DNN(stats, rngs=rngs, **kw),
    "fse0": lambda stats, rngs, **kw: FSE(stats, gated=False, rngs=rngs, **kw),
    "fse1": lambda stats, rngs, **kw: FSE(stats, gated=True, rngs=rngs, **kw),
}


def build(kind: str, stats: Standardisation, hyper: dict, seed: int) -> nnx.Module:
    """A fresh network of ``kind`` with the given hyper-parameters."""
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()}
    return ARCHITECTURES[kind](stats, nnx.Rngs(params=seed, dropout=seed + 1), **kw)


def assert_input(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"net input has shape {x.shape}, expected (n, {N_FEATURES})")
    return x
