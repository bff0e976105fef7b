"""Wall time and peak memory of writing the built-in simulation to a ROOT file.

Usage::

    python benchmarks/bench_simulate.py 1000000
    python benchmarks/bench_simulate.py 5000000 --out /scratch/sim.root --keep

Peak RSS is the process high-water mark (``getrusage``), so it includes the imports;
the RSS after the imports is printed too. Run two sizes to see that memory stays flat.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_tracks", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--out", type=Path, default=None, help="file to write (default: temporary)")
    parser.add_argument("--tracks-per-df", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=231)
    parser.add_argument("--keep", action="store_true", help="keep the written file")
    args = parser.parse_args(argv)

    import numpy  # noqa: F401  (imports are not part of the timing)
    import uproot  # noqa: F401

    from pid_export.simulate import simulate_to_file

    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        out = args.out or Path(tmp) / "sim.root"
        rss_before = _rss_mib()
        start = time.perf_counter()
        summary = simulate_to_file(out, n_tracks=args.n_tracks, seed=args.seed,
                                   tracks_per_df=args.tracks_per_df)
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
        size = out.stat().st_size / 2**20
        if args.out is not None and not args.keep:
            os.unlink(out)

    print(f"tracks          {summary['n_tracks']:,} in {summary['n_df']} DF folders "
          f"({args.tracks_per_df:,} per DF), seed {args.seed}")
    print(f"wall time       {wall:.2f} s ({summary['n_tracks'] / wall / 1e6:.2f} M tracks/s)")
    print(f"RSS after imports {rss_before:.0f} MiB; peak RSS {peak:.0f} MiB")
    print(f"file size       {size:.1f} MiB")
    print("species         " + ", ".join(f"{k} {v:,}" for k, v in summary["species"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
