"""Out-of-core reading: many files, bounded chunks, the same rows and split as in memory.

Takes file paths and glob patterns and hands on the selected, labelled tracks chunk by
chunk, each with its train/validation/test assignment, without holding the whole data
set in memory. It also hands on a :class:`StreamedDataset`, which
:func:`pid_export.pipeline.train_and_export` accepts in place of an in-memory
:class:`~pid_export.pipeline.Dataset`.

The split is the one :func:`~pid_export.selection.stratified_split` gives, decided in
two passes. Pass 1 feeds each selected track's (class, key) to a :class:`SplitSketch`,
which keeps only the keys near the two per-class quantiles that matter (the keys come
from a hash, so they are uniform), and ends with the exact per-class thresholds. Pass 2
assigns each chunk on its own by comparing its keys with those thresholds. Ties in the
key are broken by (file, row), the order in which the in-memory path concatenates rows.

The single-process path keeps the selected rows of pass 1 in a cache on local disk, so
pass 2 and the training iterator do not read the input files again.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError, SelectionError
from .features import CLASS_NAMES, N_CLASSES, N_FEATURES, pdg_to_class
from .models import TrainingData
from .reader import Layout, _df_folders, _open_root, _trees_in, detect_layout, iter_chunks
from .selection import (
    TEST_FRACTION,
    VALIDATION_FRACTION,
    CutFlow,
    Selections,
    select,
    split_keys,
)

log = logging.getLogger(__name__)

#: Rows of the training part that the report's train accuracy is computed on (as in memory).
TRAIN_ACCURACY_ROWS = 200_000

# --------------------------------------------------------------------------- memory


#: Resident bytes one track costs while a chunk is read, encoded and selected. Measured:
#: ``iter_chunks`` at 200 k rows per chunk grew the RSS by ~450 B per row; rounded up.
BYTES_PER_ROW_IN_FLIGHT = 600
#: Resident bytes per held-out track kept for the test figures and the parity gate
#: (features, label, both predictions, the parity copies).
BYTES_PER_EVAL_ROW = 250
MIN_MEMORY = 256 * 2**20
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}  # fmt: skip


def parse_memory(text: str | int) -> int:
    """Bytes from ``"4GiB"``, ``"800MB"``, ``"2g"`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = float("nan")
    if unit not in _UNITS or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--max-memory: expected a size such as 4GiB, 800MB or 2g, got {text!r}")
    return int(value * _UNITS[unit])


def available_memory() -> int:
    """Physical memory this process may use (cgroup limit if lower), in bytes."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (the kernel's ``ru_maxrss``)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes; Linux: KiB


@dataclass(frozen=True)
class MemoryPlan:
    """What the memory hint turns into: rows per chunk and held-out rows kept."""

    budget: int
    chunk_rows: int
    eval_rows: int
    automatic: bool

    @classmethod
    def from_budget(cls, budget: int | None = None) -> MemoryPlan:
        """A plan for ``budget`` bytes; ``None`` takes a quarter of memory, at most 2 GiB.

        An eighth of the budget goes to the chunk in flight and a sixteenth to the
        held-out rows; the rest is left to the training matrix and the libraries.
        """
        automatic = budget is None
        if budget is None:
            budget = max(MIN_MEMORY, min(2 * 2**30, available_memory() // 4))
        if budget < MIN_MEMORY:
            raise ConfigError(f"--max-memory: {budget / 2**20:.0f} MiB is below the minimum of "
                              f"{MIN_MEMORY // 2**20} MiB that reading and training need; raise it")
        chunk = int(min(2_000_000, max(10_000, budget // 8 // BYTES_PER_ROW_IN_FLIGHT)))
        held = int(min(500_000, max(20_000, budget // 16 // BYTES_PER_EVAL_ROW)))
        return cls(budget=int(budget), chunk_rows=chunk, eval_rows=held, automatic=automatic)

    def describe(self) -> str:
        how = "automatic" if self.automatic else "--max-memory"
        return (f"memory budget {self.budget / 2**30:.2f} GiB ({how}): chunks of at most "
                f"{self.chunk_rows} tracks, at most {self.eval_rows} held-out tracks kept")


# --------------------------------------------------------------------------- inputs


def _is_url(text: str) -> bool:
    return "://" in text


def expand_inputs(patterns: Sequence[str | Path]) -> list[str]:
    """Paths from paths and glob patterns, in the order given, each file once.

    A pattern (``*``, ``?``, ``[``) is expanded and sorted; one that matches nothing is
    an error, as is a plain path that does not exist. URLs (``root://...``) pass as
    they are: opening them is uproot's business.
    """
    if not patterns:
        raise InputError("no input files given: pass --data with files or glob patterns")
    out: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        text = str(pattern)
        if _is_url(text):
            found = [text]
        elif glob.has_magic(text):
            found = sorted(p for p in glob.glob(os.path.expanduser(text), recursive=True)
                           if os.path.isfile(p))
            if not found:
                raise InputError(f"--data {text!r}: the pattern matches no file; check the "
                                 "folder and the pattern (quote it so the shell leaves it alone)")
        else:
            path = os.path.expanduser(text)
            if not os.path.isfile(path):
                raise InputError(f"--data {text!r}: no such file")
            found = [path]
        for p in found:
            key = p if _is_url(p) else os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


# --------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class FileSchema:
    """The layout a file is read with and the type of each branch that layout maps."""

    layout: str
    trees: tuple[str, ...]
    branches: tuple[tuple[str, str], ...]  # (branch, type), sorted by branch

    def differences(self, other: FileSchema) -> list[str]:
        """What ``other`` has that this schema has not, in words."""
        out = []
        if self.layout != other.layout or self.trees != other.trees:
            out.append(f"layout {other.layout} (trees {'+'.join(other.trees)}) instead of "
                       f"{self.layout} ({'+'.join(self.trees)})")
        mine, theirs = dict(self.branches), dict(other.branches)
        missing = sorted(set(mine) - set(theirs))
        extra = sorted(set(theirs) - set(mine))
        changed = sorted(b for b in set(mine) & set(theirs) if mine[b] != theirs[b])
        if missing:
            out.append("no branch " + ", ".join(missing))
        if extra:
            out.append("extra branch " + ", ".join(extra))
        for b in changed:
            out.append(f"{b} is {theirs[b]} instead of {mine[b]}")
        return out


def file_schema(path: str | Path, *, tree: str | None = None, layout: Layout | None = None) -> FileSchema:
    """The schema of one file, from its first DF folder (or its top level, or Parquet)."""
    path = Path(path)
    lay = layout or detect_layout(path, tree)
    if lay.name == "parquet":
        import pyarrow.parquet as pq

        try:
            fields = {f.name: str(f.type) for f in pq.ParquetFile(path).schema_arrow}
        except Exception as err:
            raise InputError(f"{path}: not a Parquet file pyarrow can read ({err})") from err
    else:
        f = _open_root(path)
        dfs = _df_folders(f)
        directory = f[dfs[0]] if dfs else f
        present = _trees_in(directory)
        fields = {}
        for name in lay.trees:
            if name not in present:
                where = dfs[0] if dfs else "the top level"
                raise InputError(f"{path}: tree {name!r} is missing in {where} "
                                 f"(trees there: {', '.join(present) or 'none'})")
            t = directory[name]
            fields.update({b: t[b].typename for b in t.keys()})
    mapped = {b: fields[b] for b in set(lay.columns.values()) if b in fields}
    return FileSchema(lay.name, tuple(lay.trees), tuple(sorted(mapped.items())))


def check_schemas(paths: Sequence[str | Path], schemas: Sequence[FileSchema]) -> None:
    """Error naming the first file whose schema differs from the first file's."""
    if not schemas:
        return
    first = schemas[0]
    for path, schema in zip(paths[1:], schemas[1:]):
        diff = first.differences(schema)
        if diff:
            raise InputError(
                f"{path}: its schema differs from {paths[0]} ({'; '.join(diff)}); the files of "
                "one run must share one schema: train on them separately, or pass a "
                "--column-map that fits both")


# --------------------------------------------------------------------------- per chunk


def label_and_select(chunk, sel: Selections, prange: str, flow: CutFlow,
                     dropped: Counter) -> tuple[np.ndarray, np.ndarray]:
    """(mask of kept rows, class per row) of one chunk; counts go to ``flow``, ``dropped``.

    The in-memory path (:func:`pid_export.pipeline.load_dataset`) and both streamed
    paths call this, so they keep the same rows.
    """
    flow.add("read", len(chunk))
    if chunk.pdg is None:
        raise InputError(f"{chunk.source}: no PDG codes (branch fPdgCode or the column map's "
                         "'pdg'): training and evaluation need labelled Monte Carlo; use "
                         "'pid-export predict' for unlabelled data")
    cls = pdg_to_class(chunk.pdg)
    known = cls >= 0
    if (~known).any():
        dropped.update(np.abs(chunk.pdg[~known]).tolist())
    flow.add("pion, kaon, proton, electron", int(known.sum()))
    keep = select(chunk, sel, prange, flow, keep=known)
    return keep, cls


@dataclass
class Rows:
    """Selected rows of one chunk: features, class, and where each track sits."""

    x: np.ndarray  # float32 [n, 22]
    y: np.ndarray  # int8 [n]
    row: np.ndarray  # int64 [n], running track number in the file
    file_index: int

    def __len__(self) -> int:
        return len(self.y)

    def keys(self, seed: int) -> np.ndarray:
        return split_keys(seed, np.full(len(self.y), self.file_index), self.row)


@dataclass
class ReadSummary:
    """What reading saw, summed over chunks (and over workers, with :meth:`merge`)."""

    flow: CutFlow = field(default_factory=CutFlow)
    dropped: Counter = field(default_factory=Counter)
    n_read: int = 0

    def merge(self, other: ReadSummary) -> None:
        for name, n in other.flow.counts.items():
            self.flow.add(name, n)
        for name, why in other.flow.skipped.items():
            self.flow.skipped.setdefault(name, why)
        self.dropped.update(other.dropped)
        self.n_read += other.n_read


def selected_rows(paths: Sequence[str | Path], *, tree: str | None, layout: Layout | None,
                  selections: Selections, prange: str, step: int, summary: ReadSummary,
                  first_file_index: int = 0) -> Iterator[Rows]:
    """Read ``paths`` chunk by chunk and hand on the selected rows of each chunk."""
    for chunk in iter_chunks(paths, tree=tree, layout=layout, step=step):
        summary.n_read += len(chunk)
        keep, cls = label_and_select(chunk, selections, prange, summary.flow, summary.dropped)
        if keep.any():
            yield Rows(x=chunk.x[keep], y=cls[keep].astype(np.int8), row=chunk.row[keep],
                       file_index=chunk.file_index + first_file_index)


# --------------------------------------------------------------------------- split


#: Half-width of the kept key window, in standard deviations of the quantile's key.
WINDOW_SIGMAS = 12.0


def _window(q: float, n: int) -> tuple[float, float]:
    """Keys kept around quantile ``q`` of ``n`` uniform keys; shrinks as ``n`` grows."""
    if n <= 0:
        return -math.inf, math.inf
    half = WINDOW_SIGMAS * math.sqrt(max(q * (1 - q), 1.0 / n) / n) + 50.0 / n
    return q - half, q + half


def _tuple_less(key, fi, row, t: tuple[float, int, int]) -> np.ndarray:
    """Rows whose (key, file, row) sorts before the threshold ``t``."""
    tk, tf, tr = t
    return (key < tk) | ((key == tk) & ((fi < tf) | ((fi == tf) & (row < tr))))


class _QuantileWindow:
    """Exact order statistic near quantile ``q`` of one class's keys, streamed."""

    def __init__(self, q: float) -> None:
        self.q = q
        self.n = 0
        self.below = 0  # keys under the window's lower edge
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.kept = 0
        self._pruned_at = 0

    def add(self, key: np.ndarray, fi: np.ndarray, row: np.ndarray, n_total: int) -> None:
        self.n = n_total
        lo, hi = _window(self.q, self.n)
        self.below += int((key < lo).sum())
        m = (key >= lo) & (key <= hi)
        if m.any():
            self.parts.append((key[m], fi[m], row[m]))
            self.kept += int(m.sum())
        if self.kept > 2 * self._pruned_at + 4096:
            self.prune()

    def prune(self) -> None:
        """Drop keys outside the window for the current count (it only shrinks)."""
        if not self.parts:
            return
        lo, hi = _window(self.q, self.n)
        key, fi, row = (np.concatenate(a) for a in zip(*self.parts))
        self.below += int((key < lo).sum())
        m = (key >= lo) & (key <= hi)
        self.parts = [(key[m], fi[m], row[m])]
        self.kept = self._pruned_at = int(m.sum())

    def merge(self, other: _QuantileWindow) -> None:
        self.n += other.n
        self.below += other.below
        self.parts.extend(other.parts)
        self.kept += other.kept
        self.prune()

    def threshold(self, k: int) -> tuple[float, int, int]:
        """The (key, file, row) of rank ``k`` (0-based) among the ``n`` keys."""
        if k >= self.n:
            return (math.inf, 0, 0)
        self.prune()
        key, fi, row = (np.concatenate(a) for a in zip(*self.parts)) if self.parts else (
            np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
        order = np.lexsort((row, fi, key))
        i = k - self.below
        if not 0 <= i < len(order):
            # A 12-sigma excursion of a uniform order statistic: not expected to happen.
            raise RuntimeError(f"split sketch: rank {k} of {self.n} fell outside the kept window "
                               f"({self.below} below, {len(order)} kept); please report this")
        j = order[i]
        return (float(key[j]), int(fi[j]), int(row[j]))


@dataclass(frozen=True)
class SplitThresholds:
    """Per class, the (key, file, row) below which a track is test, then validation."""

    test: tuple[tuple[float, int, int], ...]
    val: tuple[tuple[float, int, int], ...]
    counts: tuple[int, ...]  # selected tracks per class

    def assign(self, y: np.ndarray, keys: np.ndarray, file_index: np.ndarray | int,
               row: np.ndarray) -> np.ndarray:
        """0 (train), 1 (validation) or 2 (test) per row, as ``stratified_split`` gives."""
        fi = np.broadcast_to(np.asarray(file_index, dtype=np.int64), np.shape(row))
        part = np.zeros(len(y), dtype=np.int8)
        for c in range(N_CLASSES):
            m = y == c
            if not m.any():
                continue
            k, f, r = keys[m], fi[m], row[m]
            in_test = _tuple_less(k, f, r, self.test[c])
            in_val = ~in_test & _tuple_less(k, f, r, self.val[c])
            part[np.flatnonzero(m)[in_test]] = 2
            part[np.flatnonzero(m)[in_val]] = 1
        return part


class SplitSketch:
    """Pass 1 of the streamed split: per-class counts and the keys near each threshold.

    Memory grows as the square root of the number of tracks (about 50 k keys per class
    and threshold at 20 M tracks). Sketches of different chunks or workers
    :meth:`merge`; the thresholds do not depend on the order of adding or merging.
    """

    def __init__(self, *, test: float = TEST_FRACTION, val: float = VALIDATION_FRACTION) -> None:
        self.test_fraction, self.val_fraction = test, val
        self.counts = [0] * N_CLASSES
        self.windows = [(_QuantileWindow(test), _QuantileWindow(test + val)) for _ in range(N_CLASSES)]

    def add(self, y: np.ndarray, keys: np.ndarray, file_index: np.ndarray | int, row: np.ndarray) -> None:
        fi = np.broadcast_to(np.asarray(file_index, dtype=np.int64), np.shape(row))
        for c in range(N_CLASSES):
            m = y == c
            n = int(m.sum())
            if n == 0:
                continue
            self.counts[c] += n
            for w in self.windows[c]:
                w.add(keys[m], fi[m], row[m], self.counts[c])

    def merge(self, other: SplitSketch) -> None:
        for c in range(N_CLASSES):
            self.counts[c] += other.counts[c]
            for mine, theirs in zip(self.windows[c], other.windows[c]):
                mine.merge(theirs)

    def thresholds(self) -> SplitThresholds:
        test, val = [], []
        for c in range(N_CLASSES):
            n = self.counts[c]
            # The same rounding as stratified_split.
            n_test = int(round(self.test_fraction * n))
            n_val = int(round(self.val_fraction * n))
            w_test, w_val = self.windows[c]
            test.append(w_test.threshold(n_test) if n else (math.inf, 0, 0))
            val.append(w_val.threshold(n_test + n_val) if n else (math.inf, 0, 0))
        return SplitThresholds(tuple(test), tuple(val), tuple(self.counts))


def check_classes(counts: Sequence[int], n_read: int, flow: CutFlow, prange: str,
                  paths: Sequence[str | Path]) -> None:
    """The errors the in-memory path gives for nothing or one class left."""
    total = int(sum(counts))
    if n_read == 0:
        raise SelectionError(f"no tracks in {', '.join(map(str, paths))}")
    if total == 0:
        raise SelectionError(
            f"no tracks left after the selections and the {prange} GeV/c range "
            f"(read {n_read}; kept after each step: {flow.counts}); loosen the cuts "
            "(--no-dpg-cuts) or choose another --range")
    present = [c for c in range(N_CLASSES) if counts[c]]
    if len(present) < 2:
        raise SelectionError(f"only one class ({CLASS_NAMES[present[0]]}) left after the selections "
                             f"({total} tracks): a classifier needs at least two; check the PDG "
                             "codes and the range")


def eval_key_limit(counts_test: int, eval_rows: int) -> float:
    """Test tracks with a key under this limit are kept for the figures and parity.

    All of them when there are at most ``eval_rows``; otherwise a key-ordered (so
    chunking-independent, uniform, about stratified) subsample of about ``eval_rows``.
    """
    if counts_test <= eval_rows:
        return math.inf
    return TEST_FRACTION * eval_rows / counts_test


# --------------------------------------------------------------------------- dataset


@dataclass
class StreamedDataset:
    """The summary of a streamed data set, shaped like the in-memory ``Dataset``.

    :func:`~pid_export.pipeline.train_and_export` reads the same attributes; the rows it
    gets are the first training rows (for the train accuracy), the first validation
    rows, and the held-out test rows (all of them, or the key-ordered subsample that
    :func:`eval_key_limit` describes).
    """

    flow: CutFlow
    n_read: int
    dropped_species: dict[int, int]
    sources: list[str]
    prange: str
    selections: dict
    seed: int
    counts: dict[str, dict[str, int]]
    digest: str
    digest_method: str
    train_head: TrainingData
    val_head: TrainingData
    test_rows: TrainingData
    n_test: int
    n_files: int = 0
    simulated: dict | None = None

    def subset(self, part: int) -> TrainingData:
        return (self.train_head, self.val_head, self.test_rows)[part]

    def class_counts(self) -> dict[str, dict[str, int]]:
        return self.counts

    @property
    def n_selected(self) -> int:
        return sum(sum(cc.values()) for cc in self.counts.values())

    def report_extra(self, mode: str, plan: MemoryPlan, **more) -> dict:
        """What the report says about how the data were read."""
        return {"out_of_core": {
            "mode": mode,
            "files": self.n_files,
            "memory_budget_bytes": plan.budget,
            "memory_budget_automatic": plan.automatic,
            "chunk_rows": plan.chunk_rows,
            "digest_method": self.digest_method,
            "test_tracks": self.n_test,
            "test_tracks_evaluated": int(len(self.test_rows.y)),
            "test_subsample": None if len(self.test_rows.y) == self.n_test else
            "test tracks with a split key under a limit (uniform, about stratified)",
            **more,
        }}


class _Heads:
    """The first rows of the training and validation parts, in stream order."""

    def __init__(self, limit: int = TRAIN_ACCURACY_ROWS) -> None:
        self.limit = limit
        self.x: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
        self.y: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
        self.n = {0: 0, 1: 0, 2: 0}

    def add(self, part_id: int, x: np.ndarray, y: np.ndarray, limit: int | None = None) -> None:
        room = (self.limit if limit is None else limit) - self.n[part_id]
        if room <= 0 or len(y) == 0:
            return
        self.x[part_id].append(x[:room])
        self.y[part_id].append(y[:room].astype(np.int64))
        self.n[part_id] += min(room, len(y))

    def data(self, part_id: int) -> TrainingData:
        if not self.y[part_id]:
            return TrainingData(np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int64))
        return TrainingData(np.concatenate(self.x[part_id]), np.concatenate(self.y[part_id]))


def class_counts_table(per_part: np.ndarray) -> dict[str, dict[str, int]]:
    """``{"train": {"pion": n, ...}, ...}`` from a [3 parts, 4 classes] count array."""
    return {name: {c: int(per_part[p, i]) for i, c in enumerate(CLASS_NAMES)}
            for p, name in ((0, "train"), (1, "validation"), (2, "test"))}


class RowCache:
    """Selected rows of pass 1 on local disk, one ``.npy`` triple per chunk."""

    def __init__(self, parent: str | Path | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pid-export-stream-", dir=parent))
        self.chunks: list[tuple[int, int]] = []  # (file_index, rows)

    def append(self, rows: Rows) -> None:
        i = len(self.chunks)
        np.save(self.folder / f"x{i}.npy", rows.x)
        np.save(self.folder / f"y{i}.npy", rows.y)
        np.save(self.folder / f"r{i}.npy", rows.row)
        self.chunks.append((rows.file_index, len(rows)))

    def load(self, i: int, what: str) -> np.ndarray:
        return np.load(self.folder / f"{what}{i}.npy", mmap_mode="r" if what == "x" else None)

    def save_part(self, i: int, part: np.ndarray) -> None:
        np.save(self.folder / f"p{i}.npy", part)

    def iter_part(self, part_id: int, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) of one part, chunks merged into batches of about ``batch_rows``."""
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        n = 0
        for i in range(len(self.chunks)):
            m = self.load(i, "p") == part_id
            if not m.any():
                continue
            xs.append(np.asarray(self.load(i, "x"))[m])
            ys.append(self.load(i, "y")[m])
            n += len(ys[-1])
            if n >= batch_rows:
                yield np.concatenate(xs), np.concatenate(ys)
                xs, ys, n = [], [], 0
        if ys:
            yield np.concatenate(xs), np.concatenate(ys)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def stream_dataset(
    paths: Sequence[str | Path],
    *,
    tree: str | None = None,
    layout: Layout | None = None,
    selections: Selections | None = None,
    prange: str = "full",
    seed: int = 231,
    plan: MemoryPlan | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[StreamedDataset, RowCache]:
    """Read files out of core into a :class:`RowCache`; split; summarise.

    Returns the data set summary and the cache (with each chunk's part assignment),
    which the caller iterates for training and must :meth:`~RowCache.close`.
    """
    sel = selections if selections is not None else Selections()
    plan = plan or MemoryPlan.from_budget()
    files = expand_inputs(paths)
    schemas = [file_schema(p, tree=tree, layout=layout) for p in files]
    check_schemas(files, schemas)
    say = progress or (lambda msg: None)
    say(f"pass 1: reading {len(files)} file(s); {plan.describe()}")

    summary = ReadSummary()
    sketch = SplitSketch()
    digest = hashlib.sha256()
    cache = RowCache(cache_dir)
    try:
        for rows in selected_rows(files, tree=tree, layout=layout, selections=sel, prange=prange,
                                  step=plan.chunk_rows, summary=summary):
            sketch.add(rows.y, rows.keys(seed), rows.file_index, rows.row)
            digest.update(np.ascontiguousarray(rows.x).tobytes())
            cache.append(rows)
        if summary.dropped:
            top = ", ".join(f"|PDG| {k}: {v}" for k, v in summary.dropped.most_common(5))
            log.info("dropped %d tracks of other species (%s)", sum(summary.dropped.values()), top)
        check_classes(sketch.counts, summary.n_read, summary.flow, prange, files)

        # Pass 2, on the cached rows: assign each chunk against the thresholds.
        thresholds = sketch.thresholds()
        n_test = sum(int(round(TEST_FRACTION * n)) for n in thresholds.counts)
        limit = eval_key_limit(n_test, plan.eval_rows)
        say(f"pass 2: splitting {sum(thresholds.counts)} selected tracks "
            f"({sum(cache.chunks[i][1] for i in range(len(cache.chunks)))} cached)")
        per_part = np.zeros((3, N_CLASSES), dtype=np.int64)
        heads = _Heads()
        for i, (fi, _) in enumerate(cache.chunks):
            y, row = cache.load(i, "y"), cache.load(i, "r")
            digest.update(y.astype(np.int8).tobytes())
            keys = split_keys(seed, np.full(len(y), fi), row)
            part = thresholds.assign(y, keys, fi, row)
            cache.save_part(i, part)
            np.add.at(per_part, (part, y), 1)
            x = cache.load(i, "x")
            for p in (0, 1):
                m = part == p
                if heads.n[p] < heads.limit and m.any():
                    heads.add(p, np.asarray(x[m]), y[m])
            m = (part == 2) & (keys < limit)
            if m.any():
                heads.add(2, np.asarray(x[m]), y[m], limit=2**62)
        for i in range(len(cache.chunks)):
            digest.update(cache.load(i, "p").tobytes())
    except BaseException:
        cache.close()
        raise
    ds = StreamedDataset(
        flow=summary.flow, n_read=summary.n_read, dropped_species=dict(summary.dropped),
        sources=[str(p) for p in paths], prange=prange, selections=sel.as_dict(), seed=seed,
        counts=class_counts_table(per_part), digest=digest.hexdigest()[:16],
        digest_method="sha256 of all features, then classes, then parts (as in memory)",
        train_head=heads.data(0), val_head=heads.data(1), test_rows=heads.data(2),
        n_test=int(per_part[2].sum()), n_files=len(files))
    return ds, cache
