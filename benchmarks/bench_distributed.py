"""Out-of-core and Dask XGBoost on many simulated files: time, memory, throughput.

Usage::

    python benchmarks/bench_distributed.py                        # 40 files x 0.5 M tracks
    python benchmarks/bench_distributed.py --files 8 --tracks-per-file 250000 --rounds 5

Writes ``--files`` simulated AO2D files under ``--folder`` (default
/tmp/pid-export-bench), then runs the main job's two out-of-core paths on all of them,
each in a process of its own: ``--stream`` (one process) and ``--workers 2`` (a Dask
LocalCluster on 127.0.0.1). For each it reports the wall time, the peak RSS of the
client process and of each Dask worker (the kernel's high-water marks, plus a 0.5 s
sampling of every process as a cross-check), the reading rate (tracks read per second
of the reading phase, which includes the selections and the split) and the training
rate (training tracks x boosting rounds per second). The generated files are deleted
at the end unless ``--keep``.

The runs set ``OMP_WAIT_POLICY=PASSIVE`` (unless it is set already): on a machine
shared with other work, OpenMP threads that spin while waiting made XGBoost's rounds
about 9x slower. ``--rounds`` bounds the boosting rounds (default 10, no early stopping reached) so the
run fits in an hour on 2 shared cores; ``--rounds 0`` keeps the family's own setting
(up to 600 rounds with early stopping).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MODES = ("stream", "dask")


def _simulate(args: tuple[str, int, int]) -> dict:
    from pid_export.simulate import simulate_to_file

    path, n_tracks, seed = args
    return simulate_to_file(path, n_tracks=n_tracks, seed=seed, tracks_per_df=50_000)


def generate(folder: Path, n_files: int, per_file: int, jobs: int) -> float:
    """Write the files (``jobs`` at a time); seconds taken. Existing ones are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(str(folder / f"sim_{i:03d}.root"), per_file, 1000 + i) for i in range(n_files)
            if not (folder / f"sim_{i:03d}.root").is_file()]
    start = time.perf_counter()
    if todo:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for done in pool.map(_simulate, todo):
                print(f"  simulated {done['n_tracks']:,} tracks", flush=True)
    return time.perf_counter() - start


def run_child(mode: str, folder: Path, rounds: int, max_memory: str | None, result: Path) -> None:
    """One out-of-core run of the main job, in this process; figures to ``result``."""
    from pid_export.models import get_family
    from pid_export.models.trees import XGBoostFamily
    from pid_export.outofcore import train_out_of_core
    from pid_export.pipeline import MainOptions, train_and_export
    from pid_export.selection import Selections
    from pid_export.streaming import parse_memory, peak_rss_bytes

    family = get_family("xgb")
    if rounds:
        family = XGBoostFamily(n_estimators=rounds, early_stopping_rounds=rounds)
    with tempfile.TemporaryDirectory(prefix="bench-out-") as out_dir:
        opts = MainOptions(model="xgb", out=Path(out_dir) / "pid.onnx", data=(str(folder / "*.root"),),
                           stream=mode == "stream", workers=2 if mode == "dask" else None,
                           max_memory=parse_memory(max_memory) if max_memory else None)
        t0 = time.perf_counter()
        ds, trained = train_out_of_core(opts, Selections(), print, family=family)
        t1 = time.perf_counter()
        res = train_and_export(ds, "xgb", opts.out, family=family, trained=trained)
        t2 = time.perf_counter()
    rep = res.report
    ooc = rep["out_of_core"]
    n_train = sum(rep["data"]["split"]["class_counts"]["train"].values())
    figures = {
        "mode": mode,
        "tracks_read": rep["data"]["tracks_read"],
        "tracks_train": n_train,
        "boosting_rounds": rep["training"]["info"]["boosting_rounds"],
        "read_seconds": ooc["read_seconds"],
        "train_seconds": rep["training"]["seconds"],
        "read_and_train_seconds": round(t1 - t0, 2),
        "export_parity_report_seconds": round(t2 - t1, 2),
        "client_peak_rss_after_reading": ooc["client_peak_rss_after_reading_bytes"],
        "client_peak_rss": peak_rss_bytes(),
        "worker_peak_rss": ooc.get("worker_peak_rss_bytes", {}),
        "memory_budget": ooc["memory_budget_bytes"],
        "chunk_rows": ooc["chunk_rows"],
        "test_tracks_evaluated": ooc["test_tracks_evaluated"],
        "passed": res.passed,
        "parity_max_abs_diff": rep["parity"]["max_abs_diff"],
        "test_accuracy": rep["test"]["accuracy"],
    }
    result.write_text(json.dumps(figures, indent=2))


def run_mode(mode: str, folder: Path, rounds: int, max_memory: str | None) -> dict:
    """Run one mode in a child process, sampling the RSS of it and its children."""
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        result = Path(tmp.name)
    cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--rounds", str(rounds),
           "--result", str(result)] + (["--max-memory", max_memory] if max_memory else [])
    load_before = os.getloadavg()
    start = time.perf_counter()
    # OpenMP threads that spin while they wait starve each other on a busy machine: with
    # other work on the 2 cores, XGBoost's rounds took ~9x longer without this.
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    child = subprocess.Popen(cmd, env=env)
    proc = psutil.Process(child.pid)
    sampled: dict[int, int] = {}
    loads = []
    while child.poll() is None:
        try:
            for p in [proc] + proc.children(recursive=True):
                try:
                    sampled[p.pid] = max(sampled.get(p.pid, 0), p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        loads.append(os.getloadavg()[0])
        time.sleep(0.5)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{mode}: the run failed with exit code {child.returncode}")
    figures = json.loads(result.read_text())
    result.unlink()
    figures.update({
        "wall_seconds": round(wall, 1),
        "sampled_rss_client": sampled.get(child.pid, 0),
        "sampled_rss_largest_other_process": max((v for k, v in sampled.items() if k != child.pid),
                                                 default=0),
        "load_average_before": round(load_before[0], 2),
        "load_average_mean": round(sum(loads) / max(1, len(loads)), 2),
        "omp_wait_policy": env["OMP_WAIT_POLICY"],
    })
    return figures


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_table(figs: dict, sim_seconds: float, n_files: int, per_file: int, disk: int) -> None:
    print(f"\ndata: {n_files} files x {per_file:,} tracks = {n_files * per_file:,} tracks, "
          f"{disk / 2**30:.2f} GiB on disk, simulated in {sim_seconds:.0f} s")
    for mode, f in figs.items():
        print(f"\n{mode}: wall {f['wall_seconds']:.0f} s (load average {f['load_average_before']} "
              f"before, {f['load_average_mean']} mean over the run, 2 cores)")
        print(f"  reading   {f['tracks_read']:,} tracks in {f['read_seconds']:.0f} s = "
              f"{f['tracks_read'] / f['read_seconds'] / 1e6:.2f} M tracks/s")
        rate = f["tracks_train"] * f["boosting_rounds"] / f["train_seconds"]
        print(f"  training  {f['tracks_train']:,} tracks x {f['boosting_rounds']} rounds in "
              f"{f['train_seconds']:.0f} s = {rate / 1e6:.2f} M track-rounds/s")
        print(f"  export, parity ({f['test_tracks_evaluated']:,} held-out tracks), report: "
              f"{f['export_parity_report_seconds']:.0f} s; passed {f['passed']}, max diff "
              f"{f['parity_max_abs_diff']:.1e}, test accuracy {100 * f['test_accuracy']:.2f} %")
        print(f"  client peak RSS {_gib(f['client_peak_rss'])} (after reading "
              f"{_gib(f['client_peak_rss_after_reading'])}; sampled {_gib(f['sampled_rss_client'])})")
        for addr, rss in sorted(f["worker_peak_rss"].items()):
            print(f"  worker {addr} peak RSS {_gib(rss)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--tracks-per-file", type=int, default=500_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/pid-export-bench"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-memory", default=None, help="as the command's --max-memory")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--jobs", type=int, default=2, help="simulation processes")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        run_child(args.child, args.folder, args.rounds, args.max_memory, args.result)
        return 0

    print(f"generating {args.files} files of {args.tracks_per_file:,} tracks in {args.folder}",
          flush=True)
    sim_seconds = generate(args.folder, args.files, args.tracks_per_file, args.jobs)
    disk = sum(p.stat().st_size for p in args.folder.glob("*.root"))
    figs = {}
    try:
        for mode in args.modes.split(","):
            print(f"\n== {mode} ==", flush=True)
            figs[mode] = run_mode(mode, args.folder, args.rounds, args.max_memory)
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)
    print_table(figs, sim_seconds, args.files, args.tracks_per_file, disk)
    if args.json:
        args.json.write_text(json.dumps({"files": args.files, "tracks_per_file": args.tracks_per_file,
                                         "simulation_seconds": round(sim_seconds, 1),
                                         "disk_bytes": disk, "rounds": args.rounds, "modes": figs},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
