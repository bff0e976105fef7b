"""XGBoost on a Dask LocalCluster (127.0.0.1, 2 worker processes), and its faults."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

distributed = pytest.importorskip("distributed", reason="needs the 'dask' extra")

import cloudpickle  # noqa: E402  (comes with distributed)
import dask  # noqa: E402
import psutil  # noqa: E402
import xgboost as xgb  # noqa: E402

from pid_export import distributed as pe_distributed  # noqa: E402
from pid_export.cli import main  # noqa: E402
from pid_export.contract import check_contract, failures  # noqa: E402
from pid_export.distributed import (  # noqa: E402
    DistributedError,
    dask_client,
    load_on_dask,
    train_xgb_on_dask,
)
from pid_export.models.trees import XGBoostFamily  # noqa: E402
from pid_export.pipeline import Trained, load_dataset, train_and_export  # noqa: E402
from pid_export.simulate import simulate_to_file  # noqa: E402
from pid_export.streaming import MemoryPlan  # noqa: E402

from conftest import only_files  # noqa: E402

# The kill callback below runs on the workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask-sim")
    for i in range(3):
        simulate_to_file(folder / f"part{i}.root", n_tracks=8000, seed=70 + i, tracks_per_df=3000)
    return folder


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2, threads_per_worker=1) as c:
        assert all(a.startswith("tcp://127.0.0.1:") for a in pe_distributed.worker_addresses(c))
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        yield c


def small_family() -> XGBoostFamily:
    return XGBoostFamily(max_depth=4, n_estimators=40, early_stopping_rounds=5)


def test_dask_reads_splits_trains_exports_and_passes_parity(client, sim_folder, tmp_path):
    plan = MemoryPlan(budget=2**30, chunk_rows=2000, eval_rows=10**9, automatic=False)
    data = load_on_dask(client, [str(sim_folder / "part*.root")], seed=4, plan=plan)
    ds = data.dataset
    mem = load_dataset(sorted(str(p) for p in sim_folder.glob("*.root")), seed=4)
    assert ds.class_counts() == mem.class_counts()
    assert list(ds.flow.counts.items()) == list(mem.flow.counts.items())
    np.testing.assert_array_equal(ds.subset(2).x, mem.subset(2).x)
    np.testing.assert_array_equal(ds.subset(0).y, mem.subset(0).y)
    # The rows stay on the workers: one split per file, each held by a worker.
    assert len(data.splits) == 3 and all(f.status == "finished" for f in data.splits)

    family = small_family()
    booster, seconds = train_xgb_on_dask(client, data, family, seed=4, local=True)
    out = tmp_path / "dask.onnx"
    res = train_and_export(ds, "xgb", out, family=family,
                           trained=Trained(booster, seconds, metadata={"training_mode": "dask"}))
    assert res.passed, res.report["parity"]
    assert res.report["parity"]["max_abs_diff"] <= 1e-6
    assert res.report["parity"]["argmax_disagreements"] == 0
    assert not failures(check_contract(out))
    assert res.report["test"]["n"] == int((mem.part == 2).sum())
    assert res.report["test"]["accuracy"] > 0.8
    assert res.report["metadata"]["training_mode"] == "dask"


def test_cli_scheduler_end_to_end(client, sim_folder, tmp_path):
    out = tmp_path / "pid.onnx"
    res = CliRunner().invoke(main, ["--model", "xgb", "--scheduler", client.scheduler.address,
                                    "--data", str(sim_folder / "*.root"), "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "on 2 Dask worker(s)" in res.output and "parity PASS" in res.output
    rep = json.loads((tmp_path / "pid.report.json").read_text())
    assert rep["passed"] and rep["out_of_core"]["mode"] == "dask"
    assert rep["out_of_core"]["workers"] == 2 and rep["out_of_core"]["files"] == 3
    assert only_files(tmp_path) == ["pid.onnx", "pid.report.json", "pid.xgb.ubj"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_fails_within_the_timeout(sim_folder, tmp_path):
    address = f"tcp://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match="no answer within 1.5 s"):
        with dask_client(scheduler=address, timeout=1.5):
            pass
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        res = CliRunner().invoke(main, ["--model", "xgb", "--scheduler", address, "--data",
                                        str(sim_folder / "part0.root"), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 5, res.output
    assert f"--scheduler {address}: no answer within 2 s" in res.output
    assert time.monotonic() - t0 < 30
    assert only_files(tmp_path) == []


class KillWorkerAt(xgb.callback.TrainingCallback):
    """XGBoost callback: the worker of rank 1 kills its own process at one iteration."""

    def __init__(self, iteration: int) -> None:
        super().__init__()
        self.iteration = iteration

    def after_iteration(self, model, epoch, evals_log):
        if epoch == self.iteration and xgb.collective.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return False


def test_worker_killed_mid_training_fails_cleanly(sim_folder, tmp_path, monkeypatch):
    """--workers 2: rank 1 dies at iteration 3; the command says so and writes nothing."""
    train = pe_distributed.train_xgb_on_dask
    monkeypatch.setattr(pe_distributed, "train_xgb_on_dask",
                        functools.partial(train, callbacks=[KillWorkerAt(3)]))
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    res = CliRunner().invoke(main, ["--model", "xgb", "--workers", "2", "--data",
                                    str(sim_folder / "*.root"), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 5, res.output
    assert "left the cluster during training" in res.output and "nothing was written" in res.output
    assert only_files(tmp_path) == []
    # The command stopped the cluster it started.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = {p.pid for p in psutil.Process().children(recursive=True)} - children_before
        if not left:
            break
        time.sleep(0.5)
    assert not left
