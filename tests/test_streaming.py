"""Out-of-core reading: the same rows and split as in memory, globs, schemas, options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pid_export.cli import main
from pid_export.errors import ConfigError, InputError
from pid_export.pipeline import load_dataset
from pid_export.selection import stratified_split
from pid_export.simulate import simulate_to_file
from pid_export.streaming import (
    MemoryPlan,
    SplitSketch,
    expand_inputs,
    parse_memory,
    stream_dataset,
)
from pid_export.testing import pidml_branches, write_ao2d

from conftest import only_files


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory):
    """Three simulated AO2D files, 12 k tracks each in DF folders of 5 k."""
    folder = tmp_path_factory.mktemp("sim")
    for i in range(3):
        simulate_to_file(folder / f"part{i}.root", n_tracks=12_000, seed=40 + i, tracks_per_df=5000)
    return folder


def small_plan(chunk_rows: int = 1500, eval_rows: int = 10**9) -> MemoryPlan:
    return MemoryPlan(budget=2**30, chunk_rows=chunk_rows, eval_rows=eval_rows, automatic=False)


def cached(cache, what: str) -> np.ndarray:
    return np.concatenate([np.asarray(cache.load(i, what)) for i in range(len(cache.chunks))])


def test_stream_equals_in_memory(sim_folder):
    files = sorted(str(p) for p in sim_folder.glob("*.root"))
    mem = load_dataset(files, seed=3)
    # Chunks of 1500 rows do not line up with the 5 k-track DF folders.
    ds, cache = stream_dataset([str(sim_folder / "part*.root")], seed=3, plan=small_plan())
    try:
        assert len(cache.chunks) > 3 * 12_000 // 5000
        np.testing.assert_array_equal(cached(cache, "x"), mem.x)  # NaN == NaN here
        np.testing.assert_array_equal(cached(cache, "y"), mem.y)
        np.testing.assert_array_equal(cached(cache, "p"), mem.part)
    finally:
        cache.close()
    assert not cache.folder.exists()
    assert ds.digest == mem.digest
    assert ds.class_counts() == mem.class_counts()
    assert list(ds.flow.counts.items()) == list(mem.flow.counts.items())
    assert ds.n_read == mem.n_read and ds.dropped_species == mem.dropped_species
    np.testing.assert_array_equal(ds.subset(2).x, mem.subset(2).x)
    np.testing.assert_array_equal(ds.subset(2).y, mem.subset(2).y)
    np.testing.assert_array_equal(ds.subset(0).y, mem.subset(0).y)


def test_held_out_subsample_is_bounded(sim_folder):
    ds, cache = stream_dataset([str(sim_folder / "*.root")], seed=3, plan=small_plan(eval_rows=2000))
    cache.close()
    assert ds.n_test > 2000
    assert 1000 < len(ds.subset(2).y) < 3000
    assert ds.report_extra("stream", small_plan())["out_of_core"]["test_subsample"]


@pytest.mark.parametrize("n_chunks", [1, 37])
def test_split_sketch_matches_stratified_split(n_chunks):
    """Exact per-class fractions and tie-breaking by (file, row), in any chunk order."""
    rng = np.random.default_rng(5)
    n = 300_000
    y = rng.choice(4, size=n, p=[0.6, 0.25, 0.1, 0.05])
    file_index = np.repeat(np.arange(6), n // 6)
    row = np.tile(np.arange(n // 6), 6)
    keys = np.round(rng.random(n), 3)  # ~300 tracks share each key: ties at every threshold
    expected = stratified_split(y, keys)

    pieces = np.array_split(rng.permutation(n), n_chunks)
    halves = SplitSketch(), SplitSketch()
    for i, idx in enumerate(pieces):
        halves[i % 2].add(y[idx], keys[idx], file_index[idx], row[idx])
    halves[0].merge(halves[1])
    thresholds = halves[0].thresholds()
    got = thresholds.assign(y, keys, file_index, row)
    np.testing.assert_array_equal(got, expected)
    # Only keys near the two thresholds are kept: far fewer than the tracks.
    kept = sum(w.kept for pair in halves[0].windows for w in pair)
    assert kept < n // 4


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.root")])
    res = CliRunner().invoke(main, ["--model", "xgb", "--stream", "--data", str(tmp_path / "no*.root"),
                                    "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "matches no file" in res.output
    assert only_files(tmp_path) == []


def test_globs_and_paths_expand_in_order_without_repeats(tmp_path):
    for name in ("b.root", "a.root", "c.parquet"):
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs([str(tmp_path / "c.parquet"), str(tmp_path / "*.root"), str(tmp_path / "a.root")])
    assert [p.rsplit("/", 1)[-1] for p in got] == ["c.parquet", "a.root", "b.root"]
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.root")])


def test_schema_mismatch_names_first_differing_file(tmp_path):
    good = {"O2pidtracksmc": pidml_branches(300, 1)}
    no_bayes = {"O2pidtracksmc": {k: v for k, v in pidml_branches(300, 2).items()
                                  if not k.startswith("fBayes")}}
    double = {"O2pidtracksmc": {k: (v.astype(np.float64) if k == "fTPCSignal" else v)
                                for k, v in pidml_branches(300, 3).items()}}
    write_ao2d(tmp_path / "a.root", [good])
    write_ao2d(tmp_path / "b.root", [good])
    write_ao2d(tmp_path / "c.root", [double])
    write_ao2d(tmp_path / "d.root", [no_bayes])
    with pytest.raises(InputError) as err:
        stream_dataset([str(tmp_path / "*.root")], plan=small_plan())
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / "c.root")) and "fTPCSignal is double instead of float" in msg
    assert str(tmp_path / "a.root") in msg
    with pytest.raises(InputError, match=r"d\.root.*no branch fBayesEl, fBayesKa"):
        stream_dataset([str(tmp_path / "a.root"), str(tmp_path / "d.root")], plan=small_plan())
    out = tmp_path / "out"
    out.mkdir()
    res = CliRunner().invoke(main, ["--model", "xgb", "--stream", "--data", str(tmp_path / "*.root"),
                                    "--out", str(out / "m.onnx")])
    assert res.exit_code == 2 and "c.root: its schema differs" in res.output
    assert only_files(out) == []


def test_cli_stream_trains_exports_and_passes_parity(sim_folder, tmp_path):
    out = tmp_path / "pid.onnx"
    res = CliRunner().invoke(main, ["--model", "xgb", "--stream", "--max-memory", "512MiB", "--seed", "3",
                                    "--data", str(sim_folder / "part[1]*.root"), "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "pass 1: reading 1 file(s)" in res.output and "parity PASS" in res.output
    rep = json.loads((tmp_path / "pid.report.json").read_text())
    assert rep["passed"] and rep["out_of_core"]["mode"] == "stream"
    assert rep["out_of_core"]["memory_budget_bytes"] == 512 * 2**20
    mem = load_dataset([sim_folder / "part1.root"], seed=3)
    assert rep["data"]["digest"] == mem.digest
    assert rep["data"]["split"]["class_counts"] == mem.class_counts()
    assert rep["test"]["n"] == int((mem.part == 2).sum())
    assert rep["metadata"]["training_mode"] == "stream"
    assert only_files(tmp_path) == ["pid.onnx", "pid.report.json", "pid.xgb.ubj"]


@pytest.mark.parametrize("args, message", [
    (["--max-memory", "1GiB"], "--max-memory applies to --stream"),
    (["--stream", "--model", "rf"], "train XGBoost only"),
    (["--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "exclude each other"),
    (["--stream", "--max-memory", "12XB"], "expected a size"),
    (["--stream", "--max-memory", "10MB"], "below the minimum"),
])
def test_out_of_core_option_errors(sim_folder, tmp_path, args, message):
    base = ["--data", str(sim_folder / "part0.root"), "--out", str(tmp_path / "m.onnx")]
    if "--model" not in args:
        base = ["--model", "xgb"] + base
    res = CliRunner().invoke(main, base + args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert only_files(tmp_path) == []


def test_stream_needs_data(tmp_path):
    res = CliRunner().invoke(main, ["--model", "xgb", "--stream", "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "pass --data" in res.output


def test_memory_plan():
    assert parse_memory("4GiB") == 4 * 2**30
    assert parse_memory("800MB") == 800 * 10**6
    assert parse_memory("1.5g") == 1_500_000_000
    assert parse_memory(" 2048 ") == 2048
    for bad in ("", "-1G", "many", "1Q"):
        with pytest.raises(ConfigError):
            parse_memory(bad)
    small, big = MemoryPlan.from_budget(2**28), MemoryPlan.from_budget(2**33)
    assert small.chunk_rows < big.chunk_rows <= 2_000_000
    assert small.eval_rows <= big.eval_rows <= 500_000
    auto = MemoryPlan.from_budget(None)
    assert auto.automatic and 2**28 <= auto.budget <= 2**31


def test_external_memory_training_passes_parity(sim_folder, tmp_path):
    """Over the budget, XGBoost's pages go to disk beside the row cache, then away."""
    from pid_export.models.trees import XGBoostFamily
    from pid_export.outofcore import fit_xgb_streamed, training_matrix
    from pid_export.pipeline import Trained, train_and_export

    plan = small_plan(chunk_rows=4000)
    assert training_matrix(10_000, plan) == "in-core"
    assert training_matrix(10_000_000, plan) == "external"
    ds, cache = stream_dataset([str(sim_folder / "part0.root")], seed=3, plan=plan)
    family = XGBoostFamily(max_depth=4, n_estimators=15, early_stopping_rounds=5)
    try:
        booster = fit_xgb_streamed(cache, family, seed=3, plan=plan, matrix="external")
        assert not list(cache.folder.glob("xgb-part*"))  # pages freed with the matrices
    finally:
        cache.close()
    res = train_and_export(ds, "xgb", tmp_path / "ext.onnx", family=family,
                           trained=Trained(booster, 1.0))
    assert res.passed and res.report["parity"]["max_abs_diff"] <= 1e-6
    assert booster.num_boosted_rounds() <= 15
