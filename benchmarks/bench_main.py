"""Benchmark of the main job and of the reader (run by hand; figures go in the README).

    python benchmarks/bench_main.py main --tracks 1000000 --model xgb
    python benchmarks/bench_main.py read --tracks 1000000 5000000

``main`` runs simulate + read + train + export + parity gate (the whole
``pid-export --model M`` job) in a fresh process and prints wall time and peak RSS.
``read`` writes simulated files of each size once (kept in --workdir), then streams
each through the reader in a fresh process without keeping the tracks, and prints the
peak RSS: it must stay flat as the files grow.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD_MAIN = """
import sys, time
from pathlib import Path
from pid_export.pipeline import MainOptions, run_main
t = time.perf_counter()
res = run_main(MainOptions(model=sys.argv[1], out=Path(sys.argv[2]), tracks=int(sys.argv[3])),
               echo=lambda s: None)
import resource
print(res.passed, res.report["test"]["accuracy"], res.report["parity"]["max_abs_diff"],
      time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

CHILD_READ = """
import sys, time
from pid_export.reader import iter_chunks
t = time.perf_counter()
n = 0
for chunk in iter_chunks([sys.argv[1]]):
    n += len(chunk)
import resource
print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _child(code: str, *args: str) -> tuple[list[str], float, float]:
    """Run code in a fresh interpreter; (its printed fields, wall seconds, its peak RSS in MB).

    The child prints its own ``ru_maxrss`` (KiB on Linux) as the last field.
    """
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    fields = out.stdout.split()
    return fields[:-1], wall, int(fields[-1]) / 1024.0


def bench_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fields, wall, peak = _child(CHILD_MAIN, args.model, str(Path(tmp) / "pid.onnx"), str(args.tracks))
    passed, acc, diff, _inner = fields[-4:]
    print(json.dumps({
        "benchmark": "main job (simulate + read + train + export + parity)",
        "model": args.model, "tracks": args.tracks, "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak), "test_accuracy": float(acc), "parity_max_abs_diff": float(diff),
        "gate_passed": passed == "True",
    }))


def bench_read(args: argparse.Namespace) -> None:
    from pid_export.simulate import simulate_to_file

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    for n in args.tracks:
        path = work / f"sim_{n}.root"
        if not path.exists():
            t0 = time.perf_counter()
            simulate_to_file(path, n_tracks=n, seed=1)
            print(f"# simulated {n} tracks to {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        fields, wall, peak = _child(CHILD_READ, str(path))
        count, inner = fields
        print(json.dumps({
            "benchmark": "stream a simulated AO2D file through the reader",
            "tracks": int(count), "file_mb": round(path.stat().st_size / 1e6, 1),
            "wall_s": round(wall, 1), "tracks_per_s": round(int(count) / float(inner)),
            "peak_rss_mb": round(peak),
        }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("main")
    m.add_argument("--tracks", type=int, default=1_000_000)
    m.add_argument("--model", default="xgb")
    r = sub.add_parser("read")
    r.add_argument("--tracks", type=int, nargs="+", default=[1_000_000, 5_000_000])
    r.add_argument("--workdir", default="bench-data")
    args = ap.parse_args()
    {"main": bench_main, "read": bench_read}[args.what](args)


if __name__ == "__main__":
    main()
