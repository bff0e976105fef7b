"""Shared fixtures: small AO2D-style files written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pid_export.testing import pidml_branches, write_ao2d

#: The small real Run 3 file beside the checkout (never committed).
REAL_AO2D = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "ao2d_run3_pbpb_ud.root"


@pytest.fixture(scope="session")
def mc_file(tmp_path_factory) -> Path:
    """Four DF folders of labelled PID-ML MC tracks (random but learnable)."""
    path = tmp_path_factory.mktemp("mc") / "mc.root"
    write_ao2d(path, [{"O2pidtracksmc": pidml_branches(2500, seed)} for seed in range(4)])
    return path


@pytest.fixture(scope="session")
def real_ao2d() -> Path:
    if not REAL_AO2D.is_file():
        pytest.skip(f"real AO2D fixture not found at {REAL_AO2D}")
    return REAL_AO2D


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
