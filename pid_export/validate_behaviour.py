"""Behaviour checks of an ONNX model under whichever onnxruntime runs this file.

Takes the serialised model and named blocks of probe rows (plausible tracks, each
absent-detector pattern, all-NaN rows, edge values) and hands on a list of plain-dict
checks: the model loads, the last output is ``[N, 4]`` float32, outputs are finite, rows
sum to 1, a row gives the same answer alone and inside a batch of 4096, and two sessions
agree bit for bit.

This file imports nothing but numpy and onnxruntime, on purpose: the same code runs
in-process (the export gate and ``pid-export validate``) and as a script inside the
separate onnxruntime 1.22 environment that stands in for O2's runtime
(:mod:`pid_export.validate_o2`)::

    python validate_behaviour.py --model M.onnx --rows ROWS.npz --out RESULT.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

# Copies of pid_export.features.N_FEATURES / N_CLASSES: this file must not import the
# package (it runs where only numpy and onnxruntime are installed); a test keeps them equal.
N_FEATURES = 22
N_CLASSES = 4

#: How far a probability row may sum from 1 (float32 softmax and averaging round-off).
SUM_TOLERANCE = 1e-4
#: Largest difference accepted between a row alone and the same row in a big batch.
BATCH_TOLERANCE = 1e-6
BIG_BATCH = 4096
#: Rows taken from each probe block for the batch comparison.
ROWS_PER_BLOCK_FOR_BATCH = 4
#: Blocks named with this prefix hold edge values: non-finite outputs there only warn.
EDGE_BLOCK_PREFIX = "edge"

Row = dict[str, Any]
#: The check names, in report order.
CHECK_NAMES = (
    "loads_in_onnxruntime",
    "probabilities_shape",
    "finite_outputs",
    "finite_on_edge_values",
    "rows_sum_to_one",
    "batch_consistency",
    "deterministic",
)


def check(name: str, passed: bool, reason: str, *, required: bool = True,
          skipped: bool = False) -> Row:
    return {"name": name, "passed": bool(passed), "reason": reason,
            "required": bool(required) and not skipped, "skipped": bool(skipped)}


def make_session(model: bytes, threads: int = 1):
    """A CPU session from bytes, as O2 gets the model: one blob, no files beside it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _same(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|, NaN against NaN counting as equal, NaN against a number as inf."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        return float("inf")
    d = np.abs(np.where(nan_a, 0.0, a) - np.where(nan_b, 0.0, b))
    d = np.where(np.isnan(d), np.inf, d)  # inf - inf
    return float(d.max()) if d.size else 0.0


def short_error(err: BaseException, limit: int = 300) -> str:
    """onnxruntime's message without its source path and C++ signature, on one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    text = re.sub(r"/onnxruntime_src/\S+\s*", "", text)
    sig = re.search(r"(?:\w+\s+)?onnxruntime::[\w:~]*\(", text)
    if sig:  # skip the signature up to its matching parenthesis
        depth, i = 0, sig.end() - 1
        for i in range(sig.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
        rest = re.sub(r"^\s*(const)?\s*", "", text[i + 1:])
        text = text[:sig.start()] + rest
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _signature_problem(session) -> str | None:
    """Why the probe rows cannot be fed, or None when they can."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        return f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)})"
    inp = inputs[0]
    shape = list(inp.shape) if inp.shape is not None else []
    if inp.type != "tensor(float)":
        return f"input {inp.name!r} is {inp.type}, not tensor(float)"
    if len(shape) != 2 or shape[1] != N_FEATURES:
        return f"input {inp.name!r} has shape {shape}, not [N, {N_FEATURES}]"
    if isinstance(shape[0], int) and shape[0] not in (1, -1) and shape[0] > 0:
        return f"input {inp.name!r} has a fixed batch of {shape[0]}"
    last = session.get_outputs()[-1]
    if not last.type.startswith("tensor("):
        return f"last output {last.name!r} is {last.type}, not a tensor"
    return None


def _runner(session) -> Callable[[np.ndarray], np.ndarray]:
    """Last output for any number of rows (one at a time if the batch is fixed at 1)."""
    inp = session.get_inputs()[0]
    one_at_a_time = inp.shape[0] == 1

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if one_at_a_time:
            outs = [session.run(None, {inp.name: x[i:i + 1]})[-1] for i in range(len(x))]
            return np.concatenate([np.asarray(o) for o in outs]) if outs else np.zeros((0, N_CLASSES))
        out = session.run(None, {inp.name: x})[-1]
        return out if isinstance(out, np.ndarray) else np.asarray(out, dtype=object)

    run.one_at_a_time = one_at_a_time  # type: ignore[attr-defined]
    return run


def _skip_rest(checks: list[Row], reason: str) -> list[Row]:
    done = {c["name"] for c in checks}
    for name in CHECK_NAMES:
        if name not in done:
            checks.append(check(name, False, reason, skipped=True))
    return checks


def run_checks(model: bytes, blocks: dict[str, np.ndarray], *,
               session_factory: Callable[[bytes], Any] = make_session) -> tuple[list[Row], str]:
    """All behaviour checks; returns the checks and the onnxruntime version used."""
    import onnxruntime as ort

    version = ort.__version__
    checks: list[Row] = []
    try:
        session = session_factory(model)
    except Exception as err:  # onnxruntime raises its own exception types
        checks.append(check("loads_in_onnxruntime", False,
                            f"onnxruntime {version} refused the model: {short_error(err)}"))
        return _skip_rest(checks, "skipped: the model did not load"), version
    checks.append(check("loads_in_onnxruntime", True, f"onnxruntime {version} loads it"))

    problem = _signature_problem(session)
    if problem:
        return _skip_rest(checks, f"skipped: {problem} (see the static checks)"), version

    names = list(blocks)
    rows = np.concatenate([np.asarray(blocks[n], dtype=np.float32) for n in names])
    bounds, start = {}, 0
    for n in names:
        bounds[n] = slice(start, start + len(blocks[n]))
        start += len(blocks[n])
    run = _runner(session)
    try:
        out = run(rows)
    except Exception as err:
        checks.append(check("probabilities_shape", False,
                            f"inference failed on {len(rows)} float32 [N, {N_FEATURES}] rows: "
                            f"{short_error(err)}"))
        return _skip_rest(checks, "skipped: inference failed"), version
    if out.dtype != np.float32 or out.shape != (len(rows), N_CLASSES):
        checks.append(check("probabilities_shape", False,
                            f"last output is {out.dtype} {tuple(out.shape)} for {len(rows)} rows; "
                            f"expected float32 ({len(rows)}, {N_CLASSES})"))
        return _skip_rest(checks, "skipped: the last output is not [N, 4] float32"), version
    checks.append(check("probabilities_shape", True, f"float32 [N, {N_CLASSES}] for N = {len(rows)}"))

    checks.extend(_finite_checks(out, bounds))
    checks.append(_sum_check(out))
    checks.append(_batch_check(run, rows, bounds))
    checks.append(_determinism_check(run, session_factory, model, rows, out))
    return checks, version


def _finite_checks(out: np.ndarray, bounds: dict[str, slice]) -> list[Row]:
    finite = np.isfinite(out).all(axis=1)
    bad, bad_edge, n_req, n_edge = [], [], 0, 0
    for name, sl in bounds.items():
        n_bad = int((~finite[sl]).sum())
        edge = name.startswith(EDGE_BLOCK_PREFIX)
        if edge:
            n_edge += sl.stop - sl.start
        else:
            n_req += sl.stop - sl.start
        if n_bad:
            (bad_edge if edge else bad).append(f"{name} ({n_bad}/{sl.stop - sl.start})")
    req_names = [n for n in bounds if not n.startswith(EDGE_BLOCK_PREFIX)]
    edge_kinds = [n.split(":")[-1].strip() for n in bounds if n.startswith(EDGE_BLOCK_PREFIX)]
    out_checks = [check(
        "finite_outputs", not bad,
        f"finite on {n_req} rows: {', '.join(req_names)}" if not bad else
        "NaN/inf probabilities for " + ", ".join(bad) + ": O2 feeds NaN for absent detectors")]
    if n_edge:
        out_checks.append(check(
            "finite_on_edge_values", not bad_edge,
            f"finite on {n_edge} edge-value rows ({', '.join(edge_kinds)})" if not bad_edge else
            "NaN/inf probabilities for " + ", ".join(bad_edge) + " (values far outside physics)",
            required=False))
    return out_checks


def _sum_check(out: np.ndarray) -> Row:
    finite = np.isfinite(out).all(axis=1)
    if not finite.any():
        return check("rows_sum_to_one", False, "no row has finite outputs")
    good = out[finite].astype(np.float64)
    dev = float(np.abs(good.sum(axis=1) - 1.0).max())
    low, high = float(good.min()), float(good.max())
    in_range = low >= -1e-6 and high <= 1 + 1e-6
    ok = dev <= SUM_TOLERANCE and in_range
    reason = f"max |sum - 1| = {dev:.1e}, values in [{low:.3g}, {high:.3g}]"
    if not ok:
        reason += ": the last output is not class probabilities (logits without softmax?)"
    return check("rows_sum_to_one", ok, reason)


def _batch_check(run, rows: np.ndarray, bounds: dict[str, slice]) -> Row:
    if getattr(run, "one_at_a_time", False):
        return check("batch_consistency", True, "batch fixed at 1: every row runs alone", required=False)
    pick = np.concatenate([np.arange(sl.start, min(sl.stop, sl.start + ROWS_PER_BLOCK_FOR_BATCH))
                           for sl in bounds.values()])
    alone = np.concatenate([run(rows[i:i + 1]) for i in pick])
    big = np.resize(rows, (BIG_BATCH, N_FEATURES)).copy()
    where = np.linspace(0, BIG_BATCH - 1, len(pick)).astype(int)
    big[where] = rows[pick]
    inside = run(big)[where]
    diff = _same(alone, inside)
    ok = diff <= BATCH_TOLERANCE
    if diff == 0:
        reason = f"{len(pick)} rows identical alone and inside a batch of {BIG_BATCH}"
    else:
        reason = (f"{len(pick)} rows alone vs inside a batch of {BIG_BATCH}: max diff {diff:.1e} "
                  f"(bound {BATCH_TOLERANCE:.0e})")
        if not ok:
            reason += ": the output depends on the other rows in the batch"
    return check("batch_consistency", ok, reason)


def _determinism_check(run, session_factory, model: bytes, rows: np.ndarray,
                       first: np.ndarray) -> Row:
    """The same rows again in the first session, then in a fresh one: bit-identical."""
    try:
        again = run(rows)
        other = _runner(session_factory(model))(rows)
    except Exception as err:
        return check("deterministic", False,
                     f"a repeated run or a second session failed: {short_error(err)}")
    d_again, d_other = _same(first, again), _same(first, other)
    if d_again == 0 and d_other == 0:
        return check("deterministic", True,
                     f"a repeated run and a second session agree bit for bit on {len(rows)} rows")
    where = "a repeated run in the same session" if d_again else "a second session"
    return check("deterministic", False,
                 f"{where} differs by up to {max(d_again, d_other):.2e} on the same {len(rows)} rows "
                 "(random or uninitialised operators?)")


# --------------------------------------------------------------------------- script


def save_blocks(path, blocks: dict[str, np.ndarray]) -> None:
    """Write probe blocks to ``.npz`` in a form :func:`load_blocks` reads without pickle."""
    arrays = {f"block_{i}": np.asarray(v, dtype=np.float32) for i, v in enumerate(blocks.values())}
    np.savez(path, names=np.array(list(blocks), dtype=str), **arrays)


def load_blocks(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["names"]]
        return {n: data[f"block_{i}"] for i, n in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Behaviour checks of an ONNX model (pid-export).")
    parser.add_argument("--model", required=True, help="ONNX file (read as one blob)")
    parser.add_argument("--rows", required=True, help=".npz written by save_blocks")
    parser.add_argument("--out", required=True, help="JSON result file to write")
    args = parser.parse_args(argv)

    with open(args.model, "rb") as fh:
        model = fh.read()
    checks, version = run_checks(model, load_blocks(args.rows))
    result = {"onnxruntime": version, "numpy": np.__version__,
              "python": sys.version.split()[0], "checks": checks}
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
