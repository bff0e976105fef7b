"""The main job beyond one machine's memory: ``--stream``, ``--scheduler``, ``--workers``.

Takes the main job's options and hands on a data set summary
(:class:`~pid_export.streaming.StreamedDataset`) and an XGBoost booster already trained
(:class:`~pid_export.pipeline.Trained`), which
:func:`~pid_export.pipeline.train_and_export` exports, checks against the O2 contract,
gates on parity and writes exactly as for the in-memory path.

``--stream`` reads the files out of core in one process and trains XGBoost from a
chunk iterator (``xgboost.QuantileDMatrix`` over an ``xgboost.DataIter``), so the raw
features are never all in memory; the quantised training matrix is. ``--scheduler`` and
``--workers`` read and train on Dask (:mod:`pid_export.distributed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError
from .models import get_family
from .reader import load_column_map
from .selection import Selections
from .streaming import MemoryPlan, RowCache, peak_rss_bytes, stream_dataset

if TYPE_CHECKING:
    from .pipeline import MainOptions, Trained

log = logging.getLogger(__name__)

#: Resident bytes per track of an in-core ``xgboost.QuantileDMatrix`` of the 22 features
#: with their NaN (measured: 219 B per row with xgboost 3.2), rounded up for the training
#: state on top.
XGB_BYTES_PER_TRAIN_ROW = 250


def check_options(opts: MainOptions) -> None:
    """Errors for out-of-core options that do not fit together, before any reading."""
    distributed = opts.scheduler is not None or opts.workers is not None
    if opts.max_memory is not None and not (opts.stream or distributed):
        raise ConfigError("--max-memory applies to --stream, --scheduler and --workers; add one "
                          "of them (the in-memory path reads everything anyway)")
    if opts.scheduler is not None and opts.workers is not None:
        raise ConfigError("--scheduler and --workers exclude each other: --scheduler uses a "
                          "running cluster, --workers starts a local one")
    if opts.model != "xgb":
        raise ConfigError(f"--stream, --scheduler and --workers train XGBoost only (--model xgb), "
                          f"not --model {opts.model}")
    if not opts.data:
        raise ConfigError("--stream, --scheduler and --workers read files: pass --data "
                          "(paths or glob patterns); the built-in sample fits in memory, or "
                          "write a large one with 'pid-export simulate'")


def _part_iter(cache: RowCache, part: int, batch_rows: int, *, external: bool = False):
    """An ``xgboost.DataIter`` over one part of a :class:`RowCache`, in batches.

    ``external`` gives the iterator a cache prefix inside the row cache's folder, for
    XGBoost's external-memory matrix.
    """
    import xgboost as xgb

    prefix = str(cache.folder / f"xgb-part{part}") if external else None

    class PartIter(xgb.DataIter):
        def __init__(self) -> None:
            super().__init__(cache_prefix=prefix, release_data=True)
            self._batches = None

        def next(self, input_data: Callable) -> bool:
            if self._batches is None:
                self._batches = cache.iter_part(part, batch_rows)
            batch = next(self._batches, None)
            if batch is None:
                return False
            input_data(data=batch[0], label=batch[1].astype(np.float32))
            return True

        def reset(self) -> None:
            self._batches = None

    return PartIter()


def training_matrix(n_rows: int, plan: MemoryPlan) -> str:
    """"in-core" when XGBoost's matrix of ``n_rows`` fits in half the budget, else "external"."""
    return "in-core" if n_rows * XGB_BYTES_PER_TRAIN_ROW <= plan.budget // 2 else "external"


def fit_xgb_streamed(cache: RowCache, family, *, seed: int, plan: MemoryPlan,
                     matrix: str = "in-core") -> Any:
    """Train the XGBoost family from the cached chunks; the booster at its best round.

    ``matrix="external"`` keeps XGBoost's quantised pages on disk beside the row cache
    (``xgboost.ExtMemQuantileDMatrix``): flat memory, slower rounds.
    """
    import xgboost as xgb

    from .distributed import xgb_params
    from .models.trees import keep_best
    from .models.trees import _threads

    params, rounds, patience = xgb_params(family, seed)
    params["nthread"] = _threads()
    external = matrix == "external"
    kind = xgb.ExtMemQuantileDMatrix if external else xgb.QuantileDMatrix
    dtrain = kind(_part_iter(cache, 0, plan.chunk_rows, external=external), missing=np.nan,
                  nthread=_threads())
    dval = kind(_part_iter(cache, 1, plan.chunk_rows, external=external), missing=np.nan,
                nthread=_threads(), ref=dtrain)
    booster = xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dval, "validation")],
                        early_stopping_rounds=patience, verbose_eval=False)
    # Free the matrices (and their pages in the cache folder) before the cache goes.
    del dtrain, dval
    return keep_best(booster)


def train_out_of_core(opts: MainOptions, sel: Selections, echo: Callable[[str], None], *,
                      family=None) -> tuple[Any, Trained]:
    """Read and train out of core as the options ask; (data set summary, trained model).

    ``family`` replaces the registered XGBoost family (other hyper-parameters).
    """
    from .pipeline import Trained

    check_options(opts)
    family = family if family is not None else get_family(opts.model)
    plan = MemoryPlan.from_budget(opts.max_memory)
    layout = load_column_map(opts.column_map) if opts.column_map else None
    common = dict(tree=opts.tree, layout=layout, selections=sel, prange=opts.prange,
                  seed=opts.seed, plan=plan, progress=echo)

    if opts.scheduler is None and opts.workers is None:
        t0 = time.perf_counter()
        ds, cache = stream_dataset(opts.data, **common)
        read_seconds = time.perf_counter() - t0
        rss_read = peak_rss_bytes()
        try:
            n_fit = sum(ds.counts["train"].values()) + sum(ds.counts["validation"].values())
            matrix = training_matrix(n_fit, plan)
            echo(f"training xgb from the stream ({matrix} matrix of {n_fit} tracks): "
                 f"{family.description}")
            t0 = time.perf_counter()
            native = fit_xgb_streamed(cache, family, seed=opts.seed, plan=plan, matrix=matrix)
            seconds = time.perf_counter() - t0
        finally:
            cache.close()
        extra = ds.report_extra("stream", plan, read_seconds=round(read_seconds, 2),
                                training_matrix=matrix,
                                client_peak_rss_after_reading_bytes=rss_read,
                                client_peak_rss_after_training_bytes=peak_rss_bytes())
        return ds, Trained(native, seconds, metadata={"training_mode": "stream"}, report=extra)

    from .distributed import dask_client, load_on_dask, train_xgb_on_dask

    local = opts.workers is not None
    with dask_client(scheduler=opts.scheduler, workers=opts.workers) as client:
        t0 = time.perf_counter()
        data = load_on_dask(client, opts.data, **common)
        read_seconds = time.perf_counter() - t0
        rss_read = peak_rss_bytes()
        native, seconds = train_xgb_on_dask(client, data, family, seed=opts.seed, local=local,
                                            progress=echo)
        workers_rss = client.run(peak_rss_bytes)
        data.splits.clear()  # release the rows on the workers (a shared cluster keeps running)
    ds = data.dataset
    where = f"local cluster of {opts.workers}" if local else opts.scheduler
    extra = ds.report_extra("dask", plan, read_seconds=round(read_seconds, 2),
                            workers=len(workers_rss), cluster=where,
                            client_peak_rss_after_reading_bytes=rss_read,
                            client_peak_rss_after_training_bytes=peak_rss_bytes(),
                            worker_peak_rss_bytes=workers_rss)
    return ds, Trained(native, seconds, metadata={"training_mode": "dask"}, report=extra)
