"""The parity gate: onnxruntime against the native model, on the rows that matter.

Takes held-out rows, a native ``predict_proba`` and the serialised ONNX model, and hands
on a :class:`ParityResult`: the max and 99.9th-percentile absolute difference, argmax
agreement, figures per block of rows and the worst rows. The rows are the held-out
tracks as they are, the same tracks with every combination of the absent detector groups
(TPC, TOF, Bayes: values NaN, flag 0), rows that are all NaN, and edge values (each
feature in turn at zero, at a very large and a very small magnitude, and negative where
the feature can be).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ParityError
from .features import ABSENT_GROUPS, CLASS_NAMES, FEATURES, GROUPS, N_FEATURES, mask_groups

log = logging.getLogger(__name__)

#: Rows per absent-detector pattern (taken from the held-out rows).
PATTERN_ROWS = 2000
#: Held-out rows that each edge value is written into, one feature at a time.
EDGE_BASE_ROWS = 4
#: A magnitude far above any physical value of every feature, and one far below.
EDGE_LARGE = 1e6
EDGE_SMALL = 1e-30
#: The 0/1 flags: an edge sweep leaves them alone (O2's encoding never writes other values).
FLAG_FEATURES: tuple[int, ...] = tuple(
    int(g["flag"]) for g in GROUPS.values() if g["flag"] is not None)  # type: ignore[arg-type]
#: Features that take negative values (eta, n-sigma, DCA). pt is |pT| in O2 (never
#: negative), phi is in [0, 2pi), dE/dx, beta and probabilities are positive.
NEGATIVE_FEATURES: tuple[int, ...] = tuple(
    f.index for f in FEATURES if f.name == "eta" or "nsigma" in f.name or f.name.startswith("dca"))


def absent_patterns() -> list[tuple[str, ...]]:
    """Every non-empty combination of the detector groups that can be missing."""
    out: list[tuple[str, ...]] = []
    for k in range(1, len(ABSENT_GROUPS) + 1):
        out.extend(itertools.combinations(ABSENT_GROUPS, k))
    return out


def edge_blocks(base: np.ndarray, *, n_base: int = EDGE_BASE_ROWS) -> dict[str, np.ndarray]:
    """Rows with one feature at a time set to an edge value, plus whole-row extremes.

    ``base`` supplies plausible rows (those with every detector present first); in
    copies of them each feature other than the 0/1 flags becomes 0, ``EDGE_LARGE``,
    ``EDGE_SMALL``, and, where the feature can be negative, ``-EDGE_LARGE`` and
    ``-EDGE_SMALL``. Whole rows of zeros, of large and of small values come on top.
    """
    x = np.asarray(base, dtype=np.float32)
    if len(x) == 0:
        x = np.zeros((1, N_FEATURES), dtype=np.float32)
    complete = np.isfinite(x).all(axis=1)
    order = np.concatenate([np.flatnonzero(complete), np.flatnonzero(~complete)])
    x = x[order[:n_base]]
    values = [i for i in range(N_FEATURES) if i not in FLAG_FEATURES]

    def sweep(value: float, features) -> np.ndarray:
        parts = []
        for f in features:
            rows = x.copy()
            rows[:, f] = value
            parts.append(rows)
        whole = np.zeros((1, N_FEATURES), dtype=np.float32)
        whole[0, list(features)] = value
        whole[0, list(FLAG_FEATURES)] = 1.0
        parts.append(whole)
        return np.concatenate(parts).astype(np.float32)

    all_zero = np.zeros((1, N_FEATURES), dtype=np.float32)
    return {
        "edge: zeros": np.concatenate([all_zero, sweep(0.0, values)]),
        "edge: large": sweep(EDGE_LARGE, values),
        "edge: small": sweep(EDGE_SMALL, values),
        "edge: negative": np.concatenate([sweep(-EDGE_LARGE, NEGATIVE_FEATURES),
                                          sweep(-EDGE_SMALL, NEGATIVE_FEATURES)]),
    }


def parity_blocks(x_heldout: np.ndarray, *, pattern_rows: int = PATTERN_ROWS,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Named row blocks: held-out rows, each absent-detector pattern, all NaN, edges."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x_heldout, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"parity rows: expected float32 [n, {N_FEATURES}], got shape {x.shape}")
    blocks = {"held-out": x}
    base = x[rng.choice(len(x), size=min(pattern_rows, len(x)), replace=False)] if len(x) else x
    for combo in absent_patterns():
        blocks["no " + "+".join(combo)] = mask_groups(base, combo)
    blocks["all NaN"] = np.full((8, N_FEATURES), np.nan, dtype=np.float32)
    blocks.update(edge_blocks(base))
    return blocks


def parity_rows(x_heldout: np.ndarray, *, pattern_rows: int = PATTERN_ROWS,
                seed: int = 0) -> tuple[np.ndarray, list[tuple[str, slice]]]:
    """Held-out rows, the NaN-pattern sweep, all-NaN rows and edge values, with named slices."""
    blocks = parity_blocks(x_heldout, pattern_rows=pattern_rows, seed=seed)
    names: list[tuple[str, slice]] = []
    start = 0
    for name, rows in blocks.items():
        names.append((name, slice(start, start + len(rows))))
        start += len(rows)
    return np.concatenate(list(blocks.values())), names


def onnx_session(model_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def onnx_proba(session, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    """The last output (class probabilities) for all rows, in batches."""
    name = session.get_inputs()[0].name
    outs = [np.asarray(session.run(None, {name: x[i:i + batch]})[-1], dtype=np.float32)
            for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, len(CLASS_NAMES)), np.float32)


@dataclass
class ParityResult:
    bound: float
    n_rows: int
    max_abs_diff: float
    p999_abs_diff: float
    argmax_agreement: float
    argmax_disagreements: int
    ties_excluded: int
    nonfinite_rows_native: int
    nonfinite_rows_onnx: int
    patterns: dict[str, dict] = field(default_factory=dict)
    worst_rows: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.max_abs_diff <= self.bound and self.argmax_disagreements == 0
                and self.nonfinite_rows_onnx == 0)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict}: max |ORT - native| = {self.max_abs_diff:.2e} (bound {self.bound:.0e}), "
                f"99.9% quantile {self.p999_abs_diff:.2e}, argmax agreement "
                f"{100 * self.argmax_agreement:.4f}% on {self.n_rows} rows")


def compare(native: np.ndarray, onnx_out: np.ndarray, bound: float, *,
            names: list[tuple[str, slice]] | None = None, x: np.ndarray | None = None,
            n_worst: int = 10) -> ParityResult:
    """Figures of the difference between two probability arrays of one shape."""
    native = np.asarray(native, dtype=np.float64)
    onnx_out = np.asarray(onnx_out, dtype=np.float64)
    if native.shape != onnx_out.shape:
        raise ValueError(f"compare: native {native.shape} vs onnx {onnx_out.shape}")
    diff = np.abs(native - onnx_out)
    # A NaN on one side only is an infinite difference; NaN on both sides is still a fault.
    both_nan = np.isnan(native) & np.isnan(onnx_out)
    diff = np.where(np.isnan(diff), np.inf, diff)
    diff[both_nan] = np.inf
    row_diff = diff.max(axis=1) if len(diff) else np.zeros(0)

    top_native = np.argmax(np.nan_to_num(native, nan=-1.0), axis=1)
    top_onnx = np.argmax(np.nan_to_num(onnx_out, nan=-1.0), axis=1)
    srt = np.sort(np.nan_to_num(native, nan=-1.0), axis=1)
    gap = srt[:, -1] - srt[:, -2] if native.shape[1] > 1 else np.ones(len(native))
    tie = gap <= 2 * bound  # a flip inside the bound is not a disagreement
    disagree = (top_native != top_onnx) & ~tie

    finite = row_diff[np.isfinite(row_diff)]
    result = ParityResult(
        bound=bound,
        n_rows=int(len(native)),
        max_abs_diff=float(row_diff.max()) if len(row_diff) else 0.0,
        p999_abs_diff=float(np.quantile(finite, 0.999)) if len(finite) else float("inf"),
        argmax_agreement=float((top_native == top_onnx).mean()) if len(native) else 1.0,
        argmax_disagreements=int(disagree.sum()),
        ties_excluded=int((tie & (top_native != top_onnx)).sum()),
        nonfinite_rows_native=int((~np.isfinite(native)).any(axis=1).sum()),
        nonfinite_rows_onnx=int((~np.isfinite(onnx_out)).any(axis=1).sum()),
    )
    for name, sl in names or []:
        d = row_diff[sl]
        result.patterns[name] = {
            "rows": int(len(d)),
            "max_abs_diff": float(d.max()) if len(d) else 0.0,
            "argmax_disagreements": int(disagree[sl].sum()),
        }
    for i in np.argsort(-np.nan_to_num(row_diff, posinf=1e300))[:n_worst]:
        if row_diff[i] == 0:
            break
        row = {"row": int(i), "abs_diff": float(row_diff[i]),
               "native": native[i].tolist(), "onnx": onnx_out[i].tolist()}
        block = next((name for name, sl in names or [] if sl.start <= i < sl.stop), None)
        if block is not None:
            row["block"] = block
        if x is not None:
            row["features"] = [None if np.isnan(v) else float(v) for v in x[i]]
        result.worst_rows.append(row)
    return result


def parity_gate(model_bytes: bytes, native_proba: Callable[[np.ndarray], np.ndarray],
                x_heldout: np.ndarray, bound: float, *, seed: int = 0) -> ParityResult:
    """Run onnxruntime and the native model on the parity rows and compare."""
    rows, names = parity_rows(x_heldout, seed=seed)
    sess = onnx_session(model_bytes)
    ort_out = onnx_proba(sess, rows)
    nat_out = np.asarray(native_proba(rows))
    if nat_out.shape != ort_out.shape:
        raise ParityError(f"parity_gate: the native model gives shape {nat_out.shape} for "
                          f"{len(rows)} rows, onnxruntime {ort_out.shape}; both must be "
                          f"[n, {len(CLASS_NAMES)}] probabilities in the order {', '.join(CLASS_NAMES)}")
    result = compare(nat_out, ort_out, bound, names=names, x=rows)
    log.info("parity %s", result.summary())
    return result
