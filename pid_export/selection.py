"""Track selections, momentum ranges and the train/validation/test split.

Takes :class:`~pid_export.reader.Chunk` objects and hands on the rows that pass the DPG
track selections (DESIGN §5) and the momentum range, with a pass count per cut, then a
stratified split that depends only on the seed and on each track's position in its file
(not on how the files were cut into chunks), so streamed and in-memory reading agree.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ConfigError
from .features import INDEX, N_CLASSES

log = logging.getLogger(__name__)

#: Transverse-momentum ranges in GeV/c: [low, high).
RANGES: dict[str, tuple[float, float]] = {
    "0-1": (0.0, 1.0),
    "1-3": (1.0, 3.0),
    "full": (0.0, float("inf")),
}

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1  # of all rows, taken from the training part


@dataclass(frozen=True)
class Selections:
    """DPG track selections of November 2025 (DESIGN §5); ``None`` switches a cut off."""

    eta_max: float | None = 0.8
    dcaxy_max: float | None = 0.105  # cm
    dcaz_max: float | None = 0.12  # cm
    min_tpc_clusters: int | None = 70
    min_its_clusters: int | None = 3

    @classmethod
    def none(cls) -> Selections:
        return cls(None, None, None, None, None)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CutFlow:
    """Tracks kept after each step, summed over chunks."""

    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(n)

    def skip(self, name: str, why: str) -> None:
        if name not in self.skipped:
            log.warning("selection %s skipped: %s", name, why)
        self.skipped[name] = why


def select(chunk, sel: Selections, prange: str, flow: CutFlow,
           keep: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the chunk's rows that pass every active cut and the range.

    ``keep`` is where to start from (e.g. the rows of known species); counts in ``flow``
    are of rows kept after each step.
    """
    if prange not in RANGES:
        raise ConfigError(f"unknown momentum range {prange!r}; choose from {', '.join(RANGES)}")
    x = chunk.x
    keep = np.ones(len(x), dtype=bool) if keep is None else keep.copy()

    def cut(name: str, passed: np.ndarray) -> None:
        nonlocal keep
        keep &= passed
        flow.add(name, keep.sum())

    if sel.eta_max is not None:
        cut(f"|eta| < {sel.eta_max}", np.abs(x[:, INDEX["eta"]]) < sel.eta_max)
    for name, limit, col in (
        ("dcaxy", sel.dcaxy_max, "dca_xy"),
        ("dcaz", sel.dcaz_max, "dca_z"),
    ):
        if limit is None:
            continue
        label = f"|{'DCAxy' if name == 'dcaxy' else 'DCAz'}| < {limit} cm"
        v = x[:, INDEX[col]]
        if np.isnan(v).all():
            flow.skip(label, f"{chunk.source} has no {col}")
            continue
        cut(label, np.abs(v) < limit)
    if sel.min_tpc_clusters is not None:
        label = f"TPC clusters >= {sel.min_tpc_clusters}"
        if chunk.tpc_ncls is None:
            flow.skip(label, f"{chunk.source} has no TPC cluster count")
        else:
            cut(label, chunk.tpc_ncls >= sel.min_tpc_clusters)
    if sel.min_its_clusters is not None:
        label = f"ITS clusters >= {sel.min_its_clusters}"
        if chunk.its_ncls is None:
            flow.skip(label, f"{chunk.source} has no ITS cluster map")
        else:
            cut(label, chunk.its_ncls >= sel.min_its_clusters)
    lo, hi = RANGES[prange]
    if prange != "full":
        pt = x[:, INDEX["pt"]]
        cut(f"{lo} <= pT < {hi} GeV/c", (pt >= lo) & (pt < hi))
    return keep


# --------------------------------------------------------------------------- split


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def split_keys(seed: int, file_index: np.ndarray, row: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per track from (seed, file, row): chunking-independent."""
    with np.errstate(over="ignore"):
        key = (np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x100000001B3)) ^ (
            np.asarray(file_index, dtype=np.uint64) << np.uint64(40)
        ) ^ np.asarray(row, dtype=np.uint64)
    return (_splitmix64(_splitmix64(key)) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def stratified_split(
    y: np.ndarray, keys: np.ndarray, *, test: float = TEST_FRACTION, val: float = VALIDATION_FRACTION
) -> np.ndarray:
    """Assign 0 (train), 1 (validation) or 2 (test) per row, stratified by class.

    Within each class, rows are ordered by their key; the first ``test`` fraction goes
    to test, the next ``val`` fraction to validation. Exact per-class fractions, and the
    assignment depends only on the keys.
    """
    part = np.zeros(len(y), dtype=np.int8)
    for c in range(N_CLASSES):
        idx = np.flatnonzero(y == c)
        if len(idx) == 0:
            continue
        order = idx[np.argsort(keys[idx], kind="stable")]
        n_test = int(round(test * len(idx)))
        n_val = int(round(val * len(idx)))
        part[order[:n_test]] = 2
        part[order[n_test:n_test + n_val]] = 1
    return part
