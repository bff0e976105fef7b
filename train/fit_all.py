#!/usr/bin/env python3
"""Fit all six models over the three momentum ranges and write the comparison.

    python train/fit_all.py --config train/configs/default.toml --out study-default [--force]

The same as ``pid-export study``; see train/README.md.
"""

from __future__ import annotations

import logging
import sys

from pid_export.study_cli import study


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    # Third-party libraries are chatty at INFO; keep their warnings only.
    for name in ("jax", "absl", "matplotlib", "skl2onnx", "onnxmltools", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    study.main(args=sys.argv[1:], prog_name="fit_all.py")


if __name__ == "__main__":
    main()
