"""``pid-export evaluate``: any exported model with detector groups switched off."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pid_export.cli import main
from pid_export.errors import ConfigError
from pid_export.evaluate import evaluate_arrays, format_evaluation, parse_disable
from pid_export.export import base_metadata, model_bytes, normalise, set_metadata, write_atomic
from pid_export.features import N_FEATURES
from pid_export.testing import tiny_onnx


def test_parse_disable():
    assert parse_disable(["tof", "bayes+TPC", "tof"]) == [("tof",), ("tpc", "bayes")]
    assert parse_disable(["tof,bayes"]) == [("tof", "bayes")]
    for bad in ("trd", "", "tof+its"):
        with pytest.raises(ConfigError, match="--disable"):
            parse_disable([bad])


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    from pid_export.simulate import simulate_to_file

    path = tmp_path_factory.mktemp("eval") / "sim.root"
    simulate_to_file(path, n_tracks=6000, seed=11)
    return path


def _linear_on_tof(tmp_path):
    """A hand-made ONNX that says 'kaon' when TOF is present and 'pion' otherwise."""
    model = tiny_onnx(metadata={**base_metadata(), "model_kind": "handmade"})
    import onnx
    from onnx import numpy_helper

    w = np.zeros((N_FEATURES, 4), dtype=np.float32)
    w[21, 1] = 5.0  # has_tof -> kaon logit
    for init in model.graph.initializer:
        if init.name == "w":
            init.CopyFrom(numpy_helper.from_array(w, "w"))
    onnx.checker.check_model(model)
    path = tmp_path / "tof.onnx"
    write_atomic(model.SerializeToString(), path)
    return path


def test_disabled_group_changes_the_figures(tmp_path):
    path = _linear_on_tof(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    x[:, [17, 20, 21]] = 1.0
    y = np.ones(400, dtype=np.int64)  # all kaons
    ev = evaluate_arrays(path, x, y, parse_disable(["tof", "tpc"]))
    assert list(ev.scenarios) == ["full", "no tof", "no tpc"]
    assert ev.scenarios["full"]["accuracy"] == 1.0
    assert ev.scenarios["no tof"]["accuracy"] == 0.0  # every track now called a pion
    assert ev.scenarios["no tpc"]["accuracy"] == 1.0
    text = "\n".join(format_evaluation(ev))
    assert "no tof" in text and "(-100.0)" in text and "kaon efficiency" in text
    assert ev.gates is None


def test_cli_evaluate_any_model(tmp_path, sim_file):
    path = _linear_on_tof(tmp_path)
    report = tmp_path / "eval.json"
    res = CliRunner().invoke(main, ["evaluate", "--model", str(path), "--data", str(sim_file),
                                    "--disable", "tof", "--disable", "tpc+bayes",
                                    "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "no tof" in res.output and "no tpc+bayes" in res.output
    assert "accuracy" in res.output and "pion efficiency" in res.output
    data = json.loads(report.read_text())
    assert set(data["scenarios"]) == {"full", "no tof", "no tpc+bayes"}
    assert data["rows"] == "test"


def test_cli_evaluate_bad_input(tmp_path, sim_file):
    path = _linear_on_tof(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "--model", str(path), "--data", str(sim_file),
                               "--disable", "trd"])
    assert res.exit_code == 2 and "--disable" in res.output
    res = runner.invoke(main, ["evaluate", "--model", str(tmp_path / "none.onnx")])
    assert res.exit_code == 2
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    res = runner.invoke(main, ["evaluate", "--model", str(garbage), "--data", str(sim_file)])
    assert res.exit_code != 0 and "error" in res.output


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jax2onnx's nnx plugins
def test_fse1_gate_table(tmp_path, sim_file):
    pytest.importorskip("jax")
    pytest.importorskip("jax2onnx")
    from pid_export.models import FitOptions, get_family
    from pid_export.pipeline import load_dataset

    ds = load_dataset([sim_file], seed=11)
    family = get_family("fse1")
    native = family.fit(ds.subset(0), ds.subset(1), FitOptions(
        seed=1, epochs=1, batch_size=128,
        extra={"progress": False, "hyper": {"dim": 8, "heads": 2, "blocks": 1, "ff": 16,
                                            "head_hidden": 8}}))
    onx = normalise(family.to_onnx(native))
    set_metadata(onx, {**base_metadata(), "model_kind": "fse1", "seed": 11})
    path = tmp_path / "g.onnx"
    write_atomic(model_bytes(onx), path)
    family.save_native(native, tmp_path / "g")  # g.ckpt beside g.onnx: found without --checkpoint

    res = CliRunner().invoke(main, ["evaluate", "--model", str(path), "--data", str(sim_file),
                                    "--disable", "tof", "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "mean gate value" in res.output
    gates = json.loads((tmp_path / "r.json").read_text())["gates"]
    assert set(gates) == {"full", "no tof"}
    assert all(v == 0.0 for v in gates["no tof"]["tof"].values())
    assert all(0.0 <= v <= 1.0 for v in gates["full"]["tpc"].values() if v is not None)

    # A checkpoint of another model is refused when named explicitly.
    other = family.fit(ds.subset(0), ds.subset(1), FitOptions(
        seed=2, epochs=1, batch_size=128,
        extra={"progress": False, "hyper": {"dim": 8, "heads": 2, "blocks": 1, "ff": 16,
                                            "head_hidden": 8}}))
    (other_dir,) = family.save_native(other, tmp_path / "other")
    res = CliRunner().invoke(main, ["evaluate", "--model", str(path), "--data", str(sim_file),
                                    "--checkpoint", str(other_dir)])
    assert res.exit_code == 2 and "does not belong" in res.output

    # Without a checkpoint the figures still come, with a note on the gates.
    (tmp_path / "g.ckpt" / "config.json").rename(tmp_path / "elsewhere.json")
    import shutil

    shutil.rmtree(tmp_path / "g.ckpt")
    res = CliRunner().invoke(main, ["evaluate", "--model", str(path), "--data", str(sim_file)])
    assert res.exit_code == 0 and "--checkpoint DIR" in res.output
