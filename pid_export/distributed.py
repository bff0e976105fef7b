"""Reading and XGBoost training on a Dask cluster (``--scheduler`` / ``--workers``).

Takes file paths (visible to every worker: a shared file system or ``root://`` URLs)
and a Dask client, and hands on a trained ``xgboost.Booster`` plus a
:class:`~pid_export.streaming.StreamedDataset` summary that
:func:`pid_export.pipeline.train_and_export` exports, checks and gates as usual.

Each worker reads whole files itself (one task per file, read chunk by chunk with the
same selections and labels as the in-memory path) and keeps the selected rows. The client
only ever receives small things: schemas, cut counts, the split sketch, class counts,
and the held-out rows the parity gate needs. The split is the two-pass one of
:mod:`pid_export.streaming`, so every track lands in the same part as in memory.

``dask[distributed]`` is an optional extra (``pip install 'pid-export[dask]'``); the
workers need ``pid_export`` importable too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, PidExportError
from .features import N_CLASSES, N_FEATURES
from .models import TrainingData
from .models.trees import keep_best
from .reader import Layout
from .selection import TEST_FRACTION, Selections, split_keys
from .streaming import (
    TRAIN_ACCURACY_ROWS,
    MemoryPlan,
    ReadSummary,
    SplitSketch,
    SplitThresholds,
    StreamedDataset,
    check_classes,
    check_schemas,
    class_counts_table,
    eval_key_limit,
    expand_inputs,
    file_schema,
    selected_rows,
)

log = logging.getLogger(__name__)

#: Seconds a collective operation of XGBoost may wait for a peer before it fails. A
#: worker that dies leaves the others waiting in an allreduce; this bounds that wait.
COLLECTIVE_TIMEOUT = 600
#: Seconds between checks that the training workers are still there.
WATCH_INTERVAL = 1.0


class DistributedError(PidExportError):
    """The Dask cluster cannot be reached, has no workers, or lost one while working."""

    exit_code = 5


Client = Any  # distributed.Client; an alias so that the import stays lazy


def _import_distributed():
    try:
        import distributed
    except ImportError as err:
        raise ImportError("--scheduler and --workers need Dask: pip install 'pid-export[dask]' "
                          "(dask[distributed])") from err
    return distributed


def connect_timeout() -> float:
    """Seconds to wait for a scheduler: Dask's ``distributed.comm.timeouts.connect``."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


@contextlib.contextmanager
def dask_client(*, scheduler: str | None = None, workers: int | None = None,
                timeout: float | None = None, processes: bool = True,
                threads_per_worker: int | None = None) -> Iterator[Client]:
    """A client of the scheduler at ``scheduler``, or of a local cluster of ``workers``.

    The local cluster listens on 127.0.0.1 only (its HTTP routes on a free port there)
    and is stopped on exit. A scheduler that does not answer within ``timeout`` seconds (default: Dask's
    connect timeout, 30 s) is a :class:`DistributedError`, not a hang.
    """
    distributed = _import_distributed()
    if (scheduler is None) == (workers is None):
        raise ConfigError("give one of --scheduler ADDRESS or --workers N")
    timeout = connect_timeout() if timeout is None else float(timeout)
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise DistributedError(
                f"--scheduler {scheduler}: no answer within {timeout:g} s ({type(err).__name__}: "
                f"{err}); check the address (e.g. tcp://HOST:8786), that the scheduler runs and "
                "that this machine can reach it") from err
        try:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except (OSError, TimeoutError) as err:
                raise DistributedError(f"--scheduler {scheduler}: no worker joined within "
                                       f"{timeout:g} s; start workers with dask worker "
                                       f"{scheduler}") from err
            yield client
        finally:
            client.close()
        return

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=threads, processes=processes, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", worker_dashboard_address=None)
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


@contextlib.contextmanager
def cluster_faults(what: str) -> Iterator[None]:
    """Turn Dask's errors for lost workers or a lost scheduler into a DistributedError."""
    import asyncio
    import concurrent.futures

    distributed = _import_distributed()
    from distributed.comm.core import CommClosedError

    try:
        yield
    except distributed.KilledWorker as err:
        raise DistributedError(f"{what}: a task killed every worker it ran on ({err}); a worker "
                               "probably ran out of memory: give workers more memory or lower "
                               "--max-memory") from err
    except (CommClosedError, asyncio.CancelledError, concurrent.futures.CancelledError) as err:
        raise DistributedError(f"{what}: lost the connection to the Dask cluster "
                               f"({type(err).__name__}: {err}); is the scheduler still up?") from err


def worker_addresses(client: Client) -> set[str]:
    return set(client.scheduler_info(n_workers=-1)["workers"])


# --------------------------------------------------------------------------- worker tasks


@dataclass
class FileRows:
    """On a worker: the selected rows of one file, with what reading it saw."""

    x: np.ndarray
    y: np.ndarray
    row: np.ndarray
    file_index: int
    summary: ReadSummary
    sketch: SplitSketch


@dataclass
class FileSplit:
    """On a worker: one file's rows by part, and the small figures the client needs."""

    arrays: dict[str, np.ndarray]
    per_part: np.ndarray  # [3, N_CLASSES]
    digest: str
    sizes: dict[str, int] = field(default_factory=dict)


def read_file_task(path: str, file_index: int, tree: str | None, layout: Layout | None,
                   selections: Selections, prange: str, step: int, seed: int) -> FileRows:
    """Read one file chunk by chunk; keep its selected rows and sketch their split keys."""
    summary = ReadSummary()
    sketch = SplitSketch()
    xs, ys, rows = [], [], []
    for r in selected_rows([path], tree=tree, layout=layout, selections=selections, prange=prange,
                           step=step, summary=summary, first_file_index=file_index):
        sketch.add(r.y, r.keys(seed), r.file_index, r.row)
        xs.append(r.x)
        ys.append(r.y)
        rows.append(r.row)
    x = np.concatenate(xs) if xs else np.zeros((0, N_FEATURES), np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, np.int8)
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return FileRows(x, y, row, file_index, summary, sketch)


def summary_task(fr: FileRows) -> tuple[ReadSummary, SplitSketch]:
    return fr.summary, fr.sketch


def split_task(fr: FileRows, thresholds: SplitThresholds, seed: int, eval_limit: float,
               head_rows: int) -> FileSplit:
    """Assign the file's rows to train/validation/test and keep them by part."""
    keys = split_keys(seed, np.full(len(fr.y), fr.file_index), fr.row)
    part = thresholds.assign(fr.y, keys, fr.file_index, fr.row)
    per_part = np.zeros((3, N_CLASSES), dtype=np.int64)
    np.add.at(per_part, (part, fr.y), 1)
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(fr.x), fr.y.astype(np.int8), part):
        h.update(arr.tobytes())
    arrays = {}
    for p, name in ((0, "train"), (1, "val")):
        m = part == p
        arrays[f"x_{name}"] = fr.x[m]
        arrays[f"y_{name}"] = fr.y[m].astype(np.float32)
    m = (part == 2) & (keys < eval_limit)
    arrays["x_eval"], arrays["y_eval"] = fr.x[m], fr.y[m].astype(np.int64)
    arrays["x_head"] = arrays["x_train"][:head_rows]
    arrays["y_head"] = arrays["y_train"][:head_rows].astype(np.int64)
    sizes = {k: len(v) for k, v in arrays.items()}
    return FileSplit(arrays, per_part, h.hexdigest(), sizes)


def field_task(fs: FileSplit, name: str) -> np.ndarray:
    return fs.arrays[name]


def small_task(fs: FileSplit) -> tuple[np.ndarray, str, dict[str, int]]:
    return fs.per_part, fs.digest, fs.sizes


# --------------------------------------------------------------------------- client side


@dataclass
class DaskData:
    """Futures of the per-file splits on the workers, and the client-side summary."""

    splits: list[Any]
    sizes: list[dict[str, int]]
    dataset: StreamedDataset

    def array(self, name: str, columns: int | None):
        """A Dask array of one field over all files (empty files left out)."""
        import dask.array as da

        pieces = []
        for fut, sizes in zip(self.splits, self.sizes):
            n = sizes[name]
            if n == 0:
                continue
            shape = (n, columns) if columns else (n,)
            pieces.append(da.from_delayed(_delayed_field(fut, name), shape=shape, dtype=np.float32))
        return da.concatenate(pieces) if pieces else None


def _delayed_field(fut, name: str):
    from dask import delayed

    return delayed(field_task, pure=True)(fut, name)


def _gather_in_order(client: Client, futures: Sequence[Any], name: str, limit: int | None = None
                     ) -> np.ndarray | None:
    """Fetch one field of each file in file order; stop once ``limit`` rows are in."""
    out, n = [], 0
    for fut in futures:
        if limit is not None and n >= limit:
            break
        arr = client.submit(field_task, fut, name, pure=False).result()
        if limit is not None:
            arr = arr[: limit - n]
        out.append(arr)
        n += len(arr)
    return np.concatenate(out) if out else None


def _fail_on_lost(client: Client, before: set[str], what: str) -> None:
    lost = before - worker_addresses(client)
    if lost:
        raise DistributedError(f"worker {', '.join(sorted(lost))} left the cluster {what} (it died, "
                               "was killed or ran out of memory); nothing was written. Check the "
                               "worker logs, give workers more memory or lower --max-memory, then "
                               "run again")


def load_on_dask(
    client: Client,
    paths: Sequence[str | Path],
    *,
    tree: str | None = None,
    layout: Layout | None = None,
    selections: Selections | None = None,
    prange: str = "full",
    seed: int = 231,
    plan: MemoryPlan | None = None,
    progress: Callable[[str], None] | None = None,
) -> DaskData:
    """Read, select and split ``paths`` on the workers; keep the rows there."""
    sel = selections if selections is not None else Selections()
    plan = plan or MemoryPlan.from_budget()
    say = progress or (lambda msg: None)
    files = expand_inputs(paths)
    # Paths must mean the same on the workers: pass them absolute.
    files = [f if "://" in f else os.path.abspath(f) for f in files]
    with cluster_faults("reading on Dask"):
        return _load_on_dask(client, files, paths, tree=tree, layout=layout, sel=sel,
                             prange=prange, seed=seed, plan=plan, say=say)


def _load_on_dask(client: Client, files: list[str], paths: Sequence[str | Path], *,
                  tree: str | None, layout: Layout | None, sel: Selections, prange: str,
                  seed: int, plan: MemoryPlan, say: Callable[[str], None]) -> DaskData:
    schemas = client.gather(client.map(file_schema, files, tree=tree, layout=layout, pure=False))
    check_schemas(files, schemas)
    say(f"reading {len(files)} file(s) on {len(worker_addresses(client))} Dask worker(s); "
        f"{plan.describe()}")

    rows = client.map(read_file_task, files, range(len(files)), tree=tree, layout=layout,
                      selections=sel, prange=prange, step=plan.chunk_rows, seed=seed, pure=False)
    summary, sketch = ReadSummary(), SplitSketch()
    # Merge in file order so that the cut-flow reads as in memory; all is small.
    for fut in client.map(summary_task, rows, pure=False):
        s, sk = fut.result()
        summary.merge(s)
        sketch.merge(sk)
    check_classes(sketch.counts, summary.n_read, summary.flow, prange, files)

    thresholds = sketch.thresholds()
    n_test = sum(int(round(TEST_FRACTION * n)) for n in thresholds.counts)
    limit = eval_key_limit(n_test, plan.eval_rows)
    splits = client.map(split_task, rows, thresholds=thresholds, seed=seed, eval_limit=limit,
                        head_rows=TRAIN_ACCURACY_ROWS, pure=False)
    small = client.gather(client.map(small_task, splits, pure=False))
    del rows  # the per-part copies on the workers replace the rows as read
    per_part = np.sum([s[0] for s in small], axis=0)
    digest = hashlib.sha256("".join(s[1] for s in small).encode()).hexdigest()[:16]
    sizes = [s[2] for s in small]

    def head(x_name: str, y_name: str, limit: int | None) -> TrainingData:
        x = _gather_in_order(client, splits, x_name, limit)
        y = _gather_in_order(client, splits, y_name, limit)
        if x is None:
            return TrainingData(np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int64))
        return TrainingData(x, y.astype(np.int64))

    ds = StreamedDataset(
        flow=summary.flow, n_read=summary.n_read, dropped_species=dict(summary.dropped),
        sources=[str(p) for p in paths], prange=prange, selections=sel.as_dict(), seed=seed,
        counts=class_counts_table(per_part), digest=digest,
        digest_method="sha256 of the per-file sha256 (features, classes, parts) in file order",
        train_head=head("x_head", "y_head", TRAIN_ACCURACY_ROWS),
        val_head=TrainingData(np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int64)),
        test_rows=head("x_eval", "y_eval", None), n_test=int(per_part[2].sum()),
        n_files=len(files))
    return DaskData(splits=splits, sizes=sizes, dataset=ds)


def xgb_params(family, seed: int) -> tuple[dict[str, Any], int, int]:
    """The native-API parameters of the XGBoost family (shared with its in-memory fit)."""
    return family.native_params(seed)


def train_xgb_on_dask(client: Client, data: DaskData, family, *, seed: int,
                      callbacks: Sequence[Any] | None = None, local: bool = False,
                      progress: Callable[[str], None] | None = None) -> tuple[Any, float]:
    """Train with ``xgboost.dask`` on the workers' partitions; (booster, seconds).

    A worker that leaves the cluster while this runs is a :class:`DistributedError`
    at the next check (every second), whatever XGBoost's own tasks do meanwhile.
    """
    from xgboost import dask as dxgb
    from xgboost.collective import Config as CollConfig

    say = progress or (lambda msg: None)
    x_train, y_train = data.array("x_train", N_FEATURES), data.array("y_train", None)
    x_val, y_val = data.array("x_val", N_FEATURES), data.array("y_val", None)
    if x_train is None or x_val is None:
        raise DistributedError("nothing to train on after the split: need more tracks")
    params, rounds, patience = xgb_params(family, seed)
    coll = CollConfig(timeout=COLLECTIVE_TIMEOUT, tracker_host_ip="127.0.0.1" if local else None)
    before = worker_addresses(client)
    say(f"training xgb on {len(before)} Dask worker(s): {family.description}")

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            # xgboost.dask looks the client up as the current one even when it is passed.
            with client.as_current():
                dtrain = dxgb.DaskQuantileDMatrix(client, x_train, y_train, missing=np.nan)
                dval = dxgb.DaskQuantileDMatrix(client, x_val, y_val, missing=np.nan, ref=dtrain)
                box["out"] = dxgb.train(
                    client, params, dtrain, num_boost_round=rounds, evals=[(dval, "validation")],
                    early_stopping_rounds=patience, verbose_eval=False,
                    callbacks=list(callbacks) if callbacks else None, coll_cfg=coll)
        except BaseException as err:  # handed to the calling thread below
            box["error"] = err

    t0 = time.perf_counter()
    thread = threading.Thread(target=run, name="pid-export-xgboost-dask", daemon=True)
    thread.start()
    with cluster_faults("training on Dask"):
        while thread.is_alive():
            thread.join(WATCH_INTERVAL)
            _fail_on_lost(client, before, "during training")
        seconds = time.perf_counter() - t0
        if "error" in box:
            err = box["error"]
            _fail_on_lost(client, before, "during training")
            raise DistributedError(f"XGBoost training on Dask failed: {type(err).__name__}: "
                                   f"{err}") from err
    return keep_best(box["out"]["booster"]), seconds
