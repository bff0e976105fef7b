"""The main job end to end through the command line, and its bad-input list."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from pid_export.cli import main
from pid_export.contract import check_contract, failures
from pid_export.export import read_metadata
from pid_export.features import CLASS_NAMES, FEATURE_NAMES
from pid_export.testing import pidml_branches, write_ao2d

from conftest import only_files


def run(args, cwd=None):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("model", ["xgb", "rf"])
def test_builtin_sample_end_to_end(tmp_path, model):
    out = tmp_path / "pid.onnx"
    res = run(["--model", model, "--out", str(out), "--tracks", "20000", "--seed", "7"])
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output and "parity PASS" in res.output
    assert "kept after |eta| < 0.8" in res.output
    assert only_files(tmp_path)[:2] == ["pid.onnx", "pid.report.json"]

    model_proto = onnx.load(str(out))
    assert model_proto.ir_version <= 10
    assert all(o.version <= 22 for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))
    assert not failures(check_contract(out))
    meta = read_metadata(out)
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["missing_value"] == "nan" and meta["model_kind"] == model
    assert meta["parity"]["passed"] is True

    rep = json.loads((tmp_path / "pid.report.json").read_text())
    assert rep["passed"] and rep["model"] == model
    assert rep["parity"]["max_abs_diff"] <= 1e-6
    assert rep["parity"]["argmax_disagreements"] == 0
    # the report's accuracy is what the ONNX model gives on the test split (within parity)
    assert 0.5 < rep["test"]["accuracy"] <= 1.0
    counts = rep["data"]["split"]["class_counts"]
    n_test = sum(counts["test"].values())
    assert rep["test"]["n"] == n_test
    assert rep["data"]["kept_after_each_step"]["read"] == 20000

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and inp.shape[1] == 22 and not isinstance(inp.shape[0], int)
    nan_row = np.full((1, 22), np.nan, np.float32)
    p = sess.run(None, {"input": nan_row})[-1]
    assert p.shape == (1, 4) and np.isfinite(p).all() and abs(p.sum() - 1) < 1e-5


def test_same_seed_same_model_figures(tmp_path):
    for name in ("a", "b"):
        r = run(["--model", "xgb", "--out", str(tmp_path / f"{name}.onnx"), "--tracks", "5000"])
        assert r.exit_code == 0, r.output
    a = json.loads((tmp_path / "a.report.json").read_text())
    b = json.loads((tmp_path / "b.report.json").read_text())
    assert a["data"]["digest"] == b["data"]["digest"]
    assert a["test"]["accuracy"] == b["test"]["accuracy"]


def test_user_files_and_range(tmp_path, mc_file):
    out = tmp_path / "m.onnx"
    res = run(["--model", "xgb", "--data", str(mc_file), "--out", str(out), "--range", "1-3",
               "--report", str(tmp_path / "rep.json")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert "1.0 <= pT < 3.0 GeV/c" in rep["data"]["kept_after_each_step"]
    assert read_metadata(out)["momentum_range"] == "1-3"


def test_help_shows_every_option_with_default():
    res = run(["--help"])
    assert res.exit_code == 0
    for opt in ("--model", "--out", "--data", "--range", "--seed", "--tree", "--tracks", "--report"):
        assert opt in res.output
    text = " ".join(res.output.split())
    assert "[default: 231]" in text and "[default: full]" in text and "[default: pid.onnx]" in text


# --------------------------------------------------------------------------- bad input


def assert_clean_failure(res, tmp_path, *needles, code=2):
    assert res.exit_code == code, res.output
    for n in needles:
        assert n in res.output, res.output
    leftovers = [p for p in tmp_path.iterdir() if p.suffix in (".onnx", ".json", ".tmp") or
                 p.name.startswith(".")]
    assert not leftovers, leftovers


def test_not_root(tmp_path):
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"\x00garbage")
    res = run(["--model", "xgb", "--data", str(bad), "--out", str(tmp_path / "p.onnx")])
    assert_clean_failure(res, tmp_path, "bad.root", "not a ROOT file")


def test_missing_tree_and_branch(tmp_path):
    b = pidml_branches(200, 0)
    del b["fTPCSignal"]
    path = write_ao2d(tmp_path / "in.root", [{"O2pidtracksmc": b}])
    res = run(["--model", "xgb", "--data", str(path), "--out", str(tmp_path / "p.onnx")])
    assert_clean_failure(res, tmp_path, "fTPCSignal", "in.root")
    res = run(["--model", "xgb", "--data", str(path), "--tree", "O2nope", "--out", str(tmp_path / "p.onnx")])
    assert_clean_failure(res, tmp_path, "O2nope")


def test_nothing_left_after_selections(tmp_path):
    b = pidml_branches(300, 0)
    b["fTpcNClsFound"][:] = 10
    path = write_ao2d(tmp_path / "in.root", [{"O2pidtracksmc": b}])
    res = run(["--model", "xgb", "--data", str(path), "--out", str(tmp_path / "p.onnx")])
    assert_clean_failure(res, tmp_path, "no tracks left", "--no-dpg-cuts")


def test_only_one_class(tmp_path):
    path = write_ao2d(tmp_path / "in.root", [{"O2pidtracksmc": pidml_branches(300, 0, pdg=(211,))}])
    res = run(["--model", "rf", "--data", str(path), "--out", str(tmp_path / "p.onnx")])
    assert_clean_failure(res, tmp_path, "only one class (pion)")


def test_label_with_nan(tmp_path):
    b = pidml_branches(300, 0)
    b["fPdgCode"] = b["fPdgCode"].astype(np.float64)
    b["fPdgCode"][5] = np.nan
    path = write_ao2d(tmp_path / "in.root", [{"O2pidtracksmc": b}])
    res = run(["--model", "xgb", "--data", str(path), "--out", str(tmp_path / "p.onnx")])
    assert_clean_failure(res, tmp_path, "fPdgCode", "NaN")


def test_unlabelled_file_for_training(tmp_path, real_ao2d):
    res = run(["--model", "xgb", "--data", str(real_ao2d), "--out", str(tmp_path / "p.onnx")])
    assert_clean_failure(res, tmp_path, "no PDG codes", "pid-export predict")


def test_unknown_model(tmp_path):
    res = run(["--model", "bdt", "--out", str(tmp_path / "p.onnx")])
    assert res.exit_code == 2 and "bdt" in res.output


def test_output_folder_missing_or_a_file(tmp_path):
    res = run(["--model", "xgb", "--out", str(tmp_path / "nope" / "p.onnx"), "--tracks", "5000"])
    assert_clean_failure(res, tmp_path, "does not exist")
    f = tmp_path / "file"
    f.write_text("x")
    res = run(["--model", "xgb", "--out", str(f / "p.onnx"), "--tracks", "5000"])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert f.read_text() == "x"


# --------------------------------------------------------------------------- predict


def test_predict_on_real_run3_file(tmp_path, real_ao2d):
    out = tmp_path / "pid.onnx"
    assert run(["--model", "xgb", "--out", str(out), "--tracks", "5000"]).exit_code == 0
    pq = tmp_path / "pred.parquet"
    res = run(["predict", "--model", str(out), "--data", str(real_ao2d), "--out", str(pq)])
    assert res.exit_code == 0, res.output
    import pandas as pd

    df = pd.read_parquet(pq)
    assert len(df) == 551
    probs = df[[f"prob_{c}" for c in CLASS_NAMES]].to_numpy()
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    fractions = np.bincount(df["predicted_class"], minlength=4) / len(df)
    for name, f in zip(CLASS_NAMES, fractions):
        assert f"{100 * f:6.2f}%" in res.output
    assert df["has_tof"].sum() == 0


def test_predict_refuses_a_model_breaking_the_contract(tmp_path, real_ao2d):
    from pid_export.testing import tiny_onnx

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(tiny_onnx(n_features=21).SerializeToString())
    res = run(["predict", "--model", str(bad), "--data", str(real_ao2d), "--out", str(tmp_path / "p.parquet")])
    assert res.exit_code == 3 and "input_shape" in res.output
    assert not (tmp_path / "p.parquet").exists()


def test_net_only_options_refused_for_trees(tmp_path):
    for extra in (["--class-weight", "balanced"], ["--learning-rate", "1e-3"], ["--resume"]):
        res = run(["--model", "xgb", "--out", str(tmp_path / "p.onnx"), *extra])
        assert res.exit_code == 2 and "apply to the nets only" in res.output, res.output
    assert not list(tmp_path.iterdir())


def test_resume_needs_a_checkpoint(tmp_path):
    pytest.importorskip("jax")
    res = run(["--model", "simplenn", "--out", str(tmp_path / "p.onnx"), "--resume"])
    assert res.exit_code == 2 and "--checkpoint" in res.output
    assert not list(tmp_path.iterdir())


def test_a_species_missing_from_the_training_data(tmp_path):
    path = write_ao2d(tmp_path / "in.root",
                      [{"O2pidtracksmc": pidml_branches(1500, s, pdg=(211, 321, 2212))} for s in range(2)])
    res = run(["--model", "xgb", "--data", str(path), "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code == 0, res.output
    assert "absent from the test split" in res.output
    assert not failures(check_contract(tmp_path / "x.onnx"))
    res = run(["--model", "rf", "--data", str(path), "--out", str(tmp_path / "r.onnx")])
    assert res.exit_code == 2 and "no electron" in res.output
    assert not (tmp_path / "r.onnx").exists()


def test_report_may_not_overwrite_the_model(tmp_path):
    out = tmp_path / "same.onnx"
    for report in (out, tmp_path / "same.xgb.ubj", tmp_path / "other.onnx"):
        res = run(["--model", "xgb", "--out", str(out), "--report", str(report), "--tracks", "2000"])
        assert res.exit_code == 2 and "--report" in res.output, res.output
    assert not list(tmp_path.iterdir())


def test_bad_parity_bound_refused_before_training(tmp_path):
    for bound in ("0", "-1", "nan"):
        res = run(["--model", "xgb", "--out", str(tmp_path / "p.onnx"), "--parity-bound", bound])
        assert res.exit_code == 2 and "parity-bound" in res.output
        assert "simulating" not in res.output


def test_unmapped_features_are_named(tmp_path):
    b = pidml_branches(2000, 1)
    path = write_ao2d(tmp_path / "in.root", [{"T": b}])
    cmap = tmp_path / "map.toml"
    cmap.write_text('trees = ["T"]\n[columns]\npt = "fPt"\npx = "fPx"\npy = "fPy"\npz = "fPz"\n'
                    'tpcSignal = "fTPCSignal"\npdg = "fPdgCode"\n')
    res = run(["--model", "xgb", "--data", str(path), "--column-map", str(cmap), "--no-dpg-cuts",
               "--out", str(tmp_path / "p.onnx")])
    assert res.exit_code == 0, res.output
    assert "features are absent for every track" in res.output and "tof_beta" in res.output
    rep = json.loads((tmp_path / "p.report.json").read_text())
    assert "tpc_nsigma_pi" in rep["metadata"]["features_absent_in_training"]


@pytest.mark.parametrize("name,content", [("m.json", b"{}"), ("m.onnx", b""), ("m.onnx", b"\x00\x01junk")])
def test_not_a_model(tmp_path, real_ao2d, name, content):
    bad = tmp_path / name
    bad.write_bytes(content)
    res = run(["predict", "--model", str(bad), "--data", str(real_ao2d), "--out", str(tmp_path / "p.parquet")])
    assert res.exit_code == 2 and name in res.output, res.output
    assert "Traceback" not in res.output


def test_predict_warns_about_tracks_without_tpc(tmp_path, real_ao2d):
    out = tmp_path / "pid.onnx"
    assert run(["--model", "xgb", "--out", str(out), "--tracks", "5000"]).exit_code == 0
    res = run(["predict", "--model", str(out), "--data", str(real_ao2d), "--out", str(tmp_path / "p.parquet")])
    assert res.exit_code == 0 and "90 tracks have no TPC" in res.output
