"""Benchmark of the four nets beside XGBoost (run by hand; figures go in docs/nets.md).

    python benchmarks/bench_nets.py quality --tracks 300000 --workdir /tmp/bench_nets
    python benchmarks/bench_nets.py train-speed --tracks 800000
    python benchmarks/bench_nets.py inference --workdir /tmp/bench_nets
    python benchmarks/bench_nets.py all --workdir /tmp/bench_nets      # the three in turn

``quality`` trains and exports every model through the main job's library call
(:func:`pid_export.pipeline.train_and_export`: export, contract, parity gate) on the
built-in sample (full range, DPG cuts, seed 231) and prints test accuracy, macro AUC,
balanced accuracy and per-class efficiency; nets are trained with each ``--class-weights``
mode. ``train-speed`` times one training epoch (compiled ahead, so compilation is not
counted) on ``--tracks`` selected tracks at batch 256 and 4096. ``inference`` loads the ONNX files
and checkpoints that ``quality`` left in ``--workdir`` and measures rows/s at batch 4096
and batch-1 latency, onnxruntime against jitted JAX, both on one thread (a fresh
process with XLA's thread pool switched off). Results are also written as JSON in
``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

NETS = ("simplenn", "dnn", "fse0", "fse1")
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _load(n_tracks: int, seed: int):
    from pid_export.pipeline import load_builtin_sample

    return load_builtin_sample(n_tracks, seed=seed)


def _emit(line: str, log_lines: list[str]) -> None:
    print(line, flush=True)
    log_lines.append(line)


def quality(args) -> dict:
    from pid_export.models import FitOptions
    from pid_export.pipeline import train_and_export

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = _load(args.tracks, args.seed)
    print(f"built-in sample: {args.tracks} tracks -> {len(ds.y)} selected "
          f"({time.perf_counter() - t0:.1f} s); test split {int((ds.part == 2).sum())}", flush=True)
    runs = []
    for model in args.models:
        modes = [None] if model not in NETS else args.class_weights
        for mode in modes:
            name = model if mode in (None, "none") else f"{model}-{mode}"
            extra = {"progress": False}
            if mode is not None:
                extra["class_weight"] = mode
            opts = FitOptions(seed=args.seed, epochs=args.epochs if model in NETS else None,
                              extra=extra if model in NETS else {})
            t = time.perf_counter()
            res = train_and_export(ds, model, workdir / f"{name}.onnx", fit_options=opts)
            rep = res.report
            tm = rep["test"]
            effs = {c: pc.get("efficiency") for c, pc in tm["per_class"].items()}
            info = rep["training"]["info"]
            row = {
                "name": name, "model": model, "class_weight": mode,
                "accuracy": tm["accuracy"], "macro_auc": tm["macro_auc"],
                "balanced_accuracy": sum(effs.values()) / len(effs), "efficiency": effs,
                "fit_seconds": rep["training"]["seconds"], "total_seconds": time.perf_counter() - t,
                "epochs_run": info.get("epochs_run"), "best_epoch": info.get("best_epoch"),
                "parameters": info.get("parameters"),
                "parity_max_abs_diff": rep["parity"]["max_abs_diff"], "passed": res.passed,
                "onnx_bytes": res.out.stat().st_size,
            }
            runs.append(row)
            print(json.dumps(row), flush=True)
    # Runs of earlier invocations on the same sample stay in the table (one row per name).
    previous = workdir / "quality.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        if (old.get("tracks"), old.get("seed")) == (args.tracks, args.seed):
            names = {r["name"] for r in runs}
            runs = [r for r in old["runs"] if r["name"] not in names] + runs
    order = {m: i for i, m in enumerate(("xgb", *NETS))}
    runs.sort(key=lambda r: (order.get(r["model"], 99), r["class_weight"] not in (None, "none")))
    out = {"tracks": args.tracks, "selected": int(len(ds.y)), "seed": args.seed, "runs": runs,
           "loadavg": os.getloadavg()}
    previous.write_text(json.dumps(out, indent=2))
    lines: list[str] = []
    ref = next((r for r in runs if r["model"] == "xgb"), None)
    _emit(f"{'model':<18}{'accuracy':>9}{'vs xgb':>8}{'macro AUC':>10}{'bal. acc':>9}"
          f"{'eff pi':>8}{'eff K':>7}{'eff p':>7}{'eff e':>7}{'epochs':>7}{'fit s':>8}"
          f"{'parity':>10}", lines)
    for r in runs:
        e = r["efficiency"]
        gap = f"{100 * (r['accuracy'] - ref['accuracy']):+.2f}" if ref else ""
        epochs = f"{r['best_epoch']}/{r['epochs_run']}" if r["epochs_run"] else "-"
        _emit(f"{r['name']:<18}{100 * r['accuracy']:>8.2f}%{gap:>8}{r['macro_auc']:>10.4f}"
              f"{100 * r['balanced_accuracy']:>8.2f}%{100 * e['pion']:>7.1f}%"
              f"{100 * e['kaon']:>6.1f}%{100 * e['proton']:>6.1f}%{100 * e['electron']:>6.1f}%"
              f"{epochs:>7}{r['fit_seconds']:>8.0f}{r['parity_max_abs_diff']:>10.1e}", lines)
    (workdir / "quality.txt").write_text("\n".join(lines) + "\n")
    return out


def train_speed(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from pid_export.models.nets import DEFAULT_HYPER
    from pid_export.models.nets._layers import Standardisation, build
    from pid_export.models.nets._train import TrainConfig, _batches, make_epoch_fn

    ds = _load(int(args.tracks * 1.45) + 1000, args.seed)  # ~70 % pass the DPG cuts
    if len(ds.y) < args.tracks:
        raise SystemExit(f"only {len(ds.y)} tracks selected, wanted {args.tracks}")
    x, y = jnp.asarray(ds.x[: args.tracks]), jnp.asarray(ds.y[: args.tracks], dtype=jnp.int32)
    stats = Standardisation.from_training(ds.x[: args.tracks])
    rows = []
    for model in args.nets:
        for batch in args.batches:
            # The epoch the trainer runs (one jitted lax.scan over shuffled batches),
            # compiled ahead of time so that the timed run is one epoch of work only.
            net = build(model, stats, DEFAULT_HYPER[model], args.seed)
            cfg = TrainConfig(batch_size=batch, seed=args.seed)
            optimizer = nnx.Optimizer(net, optax.adam(cfg.learning_rate), wrt=nnx.Param)
            net.train()
            graphdef, state = nnx.split((net, optimizer))
            idx = jnp.asarray(_batches(len(y), batch, np.random.default_rng(args.seed)))
            xb, yb = x[idx], y[idx]
            wb = jnp.ones(yb.shape, jnp.float32)
            t0 = time.perf_counter()
            compiled = make_epoch_fn(graphdef, cfg).lower(state, xb, yb, wb).compile()
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(state, xb, yb, wb))
            sec = time.perf_counter() - t0
            n = int(idx.size)
            row = {"model": model, "batch": batch, "tracks": n, "epoch_seconds": sec,
                   "compile_seconds": compile_s, "tracks_per_second": n / sec}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"rows": rows, "loadavg": os.getloadavg()}
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    (Path(args.workdir) / "train_speed.json").write_text(json.dumps(out, indent=2))
    lines: list[str] = []
    _emit(f"{'model':<10}{'batch':>6}{'tracks/s':>12}{'epoch s':>9}{'800k epoch s':>14}"
          f"  (timed on {len(y)} tracks)", lines)
    for r in rows:
        _emit(f"{r['model']:<10}{r['batch']:>6}{r['tracks_per_second']:>12,.0f}"
              f"{r['epoch_seconds']:>9.1f}{800_000 / r['tracks_per_second']:>14.1f}", lines)
    (Path(args.workdir) / "train_speed.txt").write_text("\n".join(lines) + "\n")
    return out


INFERENCE_CHILD = r"""
import json, sys, time
import numpy as np
from pathlib import Path
from pid_export.models import get_family
from pid_export.parity import onnx_session
workdir, name, model, reps = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
x = np.load(workdir / "inference_rows.npy")
big = x[:4096]
one = [x[i:i + 1] for i in range(256)]

def rate(fn, batch, min_seconds=2.0):
    fn(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn(batch); n += 1
    return n * len(batch) / (time.perf_counter() - t0)

def latency(fn, reps):
    for r in one[:20]:
        fn(r)
    times = []
    for i in range(reps):
        r = one[i % len(one)]
        t0 = time.perf_counter(); fn(r); times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6

sess = onnx_session((workdir / f"{name}.onnx").read_bytes(), threads=1)
iname = sess.get_inputs()[0].name
ort_fn = lambda b: sess.run(None, {iname: b})[-1]
fam = get_family(model)
if model == "xgb":
    import xgboost as xgb
    booster = xgb.Booster()
    booster.load_model(str(workdir / f"{name}.xgb.ubj"))
    booster.set_param({"nthread": 1})
    native_fn = lambda b: booster.predict(xgb.DMatrix(b, missing=np.nan))
else:
    native = fam.load_native(workdir / f"{name}.ckpt")
    native_fn = lambda b: native.forward(b).block_until_ready()
print(json.dumps({"name": name, "native_rows_per_s": rate(native_fn, big),
                  "onnx_rows_per_s": rate(ort_fn, big),
                  "native_batch1_us": latency(native_fn, reps),
                  "onnx_batch1_us": latency(ort_fn, reps)}))
"""


def inference(args) -> dict:
    import numpy as np

    workdir = Path(args.workdir)
    ds = _load(60_000, args.seed)
    np.save(workdir / "inference_rows.npy", ds.x[ds.part == 2][:4096])
    env = dict(os.environ, XLA_FLAGS=ONE_THREAD_XLA, OMP_NUM_THREADS="1")
    rows = []
    for name in args.models:
        if not (workdir / f"{name}.onnx").is_file():
            print(f"skip {name}: no {workdir / name}.onnx (run quality first)", flush=True)
            continue
        model = name.split("-")[0]
        out = subprocess.run([sys.executable, "-c", INFERENCE_CHILD, str(workdir), name, model,
                              str(args.reps)], env=env, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"inference child for {name} failed")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"rows": rows, "loadavg": os.getloadavg()}
    (workdir / "inference.json").write_text(json.dumps(res, indent=2))
    lines: list[str] = []
    _emit(f"{'model':<10}{'JAX rows/s':>12}{'ORT rows/s':>12}{'JAX b1 us':>11}{'ORT b1 us':>11}"
          "   (batch 4096 / batch 1, one thread)", lines)
    for r in rows:
        _emit(f"{r['name']:<10}{r['native_rows_per_s']:>12,.0f}{r['onnx_rows_per_s']:>12,.0f}"
              f"{r['native_batch1_us']:>11.1f}{r['onnx_batch1_us']:>11.1f}", lines)
    (workdir / "inference.txt").write_text("\n".join(lines) + "\n")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("quality", "train-speed", "inference", "all"))
    ap.add_argument("--workdir", default="bench_nets_out")
    ap.add_argument("--tracks", type=int, default=None,
                    help="quality: sample size before cuts (300000); train-speed: selected "
                         "tracks per epoch (800000)")
    ap.add_argument("--seed", type=int, default=231)
    ap.add_argument("--epochs", type=int, default=None, help="nets: at most this many (100)")
    ap.add_argument("--models", nargs="+", default=["xgb", *NETS])
    ap.add_argument("--class-weights", nargs="+", default=["none", "balanced"],
                    choices=("none", "balanced"))
    ap.add_argument("--nets", nargs="+", default=list(NETS), help="train-speed: nets to time")
    ap.add_argument("--batches", nargs="+", type=int, default=[256, 4096])
    ap.add_argument("--reps", type=int, default=2000, help="inference: batch-1 calls")
    args = ap.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.what in ("quality", "all"):
        a = argparse.Namespace(**vars(args))
        a.tracks = args.tracks or 300_000
        quality(a)
    if args.what in ("train-speed", "all"):
        a = argparse.Namespace(**vars(args))
        a.tracks = args.tracks if args.what == "train-speed" and args.tracks else 800_000
        train_speed(a)
    if args.what in ("inference", "all"):
        a = argparse.Namespace(**vars(args))
        if args.what == "all":
            a.models = [*args.models]
        inference(a)


if __name__ == "__main__":
    main()
