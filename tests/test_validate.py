"""The validation harness: reference cases, our own models, parity, pickles, O2's runtime.

Every broken reference case (validation/reference_cases.py) must fail exactly its named
check; models made by the main job must pass with their native model; the known skl2onnx
fault must fail the parity gate; onnxruntime 1.22 runs in an environment of its own.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pid_export import contract, validate_behaviour
from pid_export.cli import main
from pid_export.errors import InputError
from pid_export.features import N_CLASSES, N_FEATURES
from pid_export.parity import parity_gate, parity_rows
from pid_export.validate import ValidateOptions, validate_model

ROOT = Path(__file__).resolve().parents[1]


def _load_cases():
    path = ROOT / "validation" / "reference_cases.py"
    spec = importlib.util.spec_from_file_location("reference_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


cases = _load_cases()


def failed_names(report) -> set[str]:
    return {c.name for c in report.failed}


def run_cli(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    return cases.write_all(folder)


# --------------------------------------------------------------------------- reference cases


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_reference_case_fails_exactly_its_check(case_dir, name):
    report = validate_model(case_dir[name], ValidateOptions(o2_runtime=False))
    assert failed_names(report) == cases.CASES[name].expect, "\n".join(report.summary_lines())
    assert report.passed == (not cases.CASES[name].expect)
    assert report.exit_code == (0 if report.passed else 3)
    statuses = {c.name: c.status for c in report.checks}
    assert statuses["o2_runtime"] == "SKIP"  # switched off: shown, never a silent pass
    assert statuses["parity"] == "SKIP"


def test_every_check_has_a_one_line_reason(case_dir):
    for name in ("good", "zipmap", "logits"):
        report = validate_model(case_dir[name], ValidateOptions(o2_runtime=False))
        for c in report.checks:
            assert c.reason and "\n" not in c.reason, c


def test_cli_summary_exit_codes_and_json(case_dir, tmp_path):
    out = tmp_path / "good.json"
    res = run_cli(["validate", str(case_dir["good"]), "--no-o2-runtime", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "[PASS] input_shape" in res.output and "[SKIP] o2_runtime" in res.output
    assert "VALID for O2" in res.output
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert report["passed"] and report["exit_code"] == 0
    assert {c["status"] for c in report["checks"]} <= {"PASS", "SKIP"}

    res = run_cli(["validate", str(case_dir["fixed_batch_64"]), "--no-o2-runtime"])
    assert res.exit_code == 3
    assert "[FAIL] input_shape" in res.output and "fixed at 64" in res.output
    assert "NOT VALID for O2: input_shape" in res.output


def test_cli_refuses_a_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    res = CliRunner().invoke(main, ["validate", str(bad), "--no-o2-runtime"])
    assert res.exit_code == 2 and "not a readable ONNX model" in res.output


def test_gate_and_validate_share_the_checks(case_dir):
    """The export gate calls check_contract: the same behaviour checks run there."""
    names = [c.name for c in contract.check_contract(case_dir["good"])]
    for expected in validate_behaviour.CHECK_NAMES:
        assert expected in names
    report = validate_model(case_dir["good"], ValidateOptions(o2_runtime=False))
    assert names == [c.name for c in report.checks][:len(names)]


def test_main_job_report_holds_the_harness_checks(xgb_artefact):
    report = json.loads(xgb_artefact.with_name("pid.report.json").read_text())
    names = {c["name"] for c in report["contract"]}
    assert set(validate_behaviour.CHECK_NAMES) <= names
    assert {"no tof", "all NaN", "edge: large"} <= set(report["parity"]["patterns"])
    # The pipeline rebuilds Check objects from the report's dicts.
    assert all(contract.Check(**c).status == "PASS" for c in report["contract"])


def test_skips_that_share_a_reason_share_a_line():
    checks = [contract.Check("a", True, "fine"), contract.skipped("b", "why"),
              contract.skipped("c", "why"), contract.Check("d", False, "broken"),
              contract.Check("e", False, "meh", required=False)]
    lines = contract.format_checks(checks)
    assert len(lines) == 4
    assert "[SKIP] b +1 more" in lines[1] and "[FAIL] d" in lines[2] and "[WARN] e" in lines[3]
    assert [c.name for c in contract.failures(checks)] == ["d"]
    assert contract.probe_rows().shape[1] == N_FEATURES


def test_behaviour_file_imports_only_numpy_and_onnxruntime():
    """It runs as a script inside the onnxruntime 1.22 environment, without this package."""
    tree = ast.parse(Path(validate_behaviour.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "argparse", "json", "re", "sys", "collections", "typing",
                     "numpy", "onnxruntime"}
    assert (validate_behaviour.N_FEATURES, validate_behaviour.N_CLASSES) == (N_FEATURES, N_CLASSES)


def test_short_error_drops_source_paths_and_signatures():
    msg = ("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model.cc:181 "
           "onnxruntime::Model::Model(onnx::ModelProto&&, const onnxruntime::PathString&) "
           "Unsupported model IR version: 11, max supported IR version: 10")
    assert validate_behaviour.short_error(RuntimeError(msg)) == \
        "Unsupported model IR version: 11, max supported IR version: 10"


def test_parity_rows_cover_patterns_all_nan_and_edges():
    x = contract.probe_blocks(32)["plausible"]
    rows, names = parity_rows(x, pattern_rows=16)
    blocks = dict(names)
    assert {"held-out", "no tof", "no tpc+tof+bayes", "all NaN", "edge: zeros", "edge: large",
            "edge: small", "edge: negative"} <= set(blocks)
    assert np.isnan(rows[blocks["all NaN"]]).all()
    large = rows[blocks["edge: large"]]
    assert (large == 1e6).any() and np.isfinite(large[:, [17, 20, 21]]).all()
    neg = rows[blocks["edge: negative"]]
    assert (neg[:, 0] >= 0).all(), "pt is |pT|: never swept negative"
    assert (neg[:, [4, 9, 18]] < 0).any()


# --------------------------------------------------------------------------- our models


@pytest.fixture(scope="module")
def mc_dataset(mc_file):
    from pid_export.pipeline import load_dataset

    return load_dataset([mc_file])


@pytest.fixture(scope="module")
def xgb_artefact(mc_dataset, tmp_path_factory):
    from pid_export.pipeline import train_and_export

    out = tmp_path_factory.mktemp("xgb") / "pid.onnx"
    res = train_and_export(mc_dataset, "xgb", out)
    assert res.passed
    return out


def test_xgboost_from_the_main_job_passes_with_parity(xgb_artefact, mc_file, tmp_path):
    native = xgb_artefact.with_name("pid.xgb.ubj")
    out = tmp_path / "report.json"
    res = run_cli(["validate", str(xgb_artefact), "--native", str(native), "--data", str(mc_file),
                   "--no-o2-runtime", "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    par = report["parity"]
    assert par["passed"] and par["max_abs_diff"] <= 1e-6 and par["argmax_agreement"] == 1.0
    assert par["bound"] == 1e-6
    assert {"no tof", "all NaN", "edge: large", "edge: negative"} <= set(par["patterns"])
    assert "test split of" in report["data"]["description"]


def test_missing_native_is_pointed_out(xgb_artefact):
    report = validate_model(xgb_artefact, ValidateOptions(o2_runtime=False))
    parity = next(c for c in report.checks if c.name == "parity")
    assert parity.status == "SKIP" and "pid.xgb.ubj" in parity.reason


def test_wrong_native_fails_parity_with_worst_rows(xgb_artefact, mc_dataset, mc_file, tmp_path):
    import xgboost as xgb

    train = mc_dataset.subset(0)
    other = xgb.XGBClassifier(objective="multi:softprob", n_estimators=5, max_depth=2)
    other.fit(train.x, train.y)
    path = tmp_path / "other.json"
    other.get_booster().save_model(str(path))
    report = validate_model(xgb_artefact, ValidateOptions(native=path, data=(mc_file,), o2_runtime=False))
    assert failed_names(report) == {"parity"}
    worst = report.as_dict()["parity"]["worst_rows"]
    assert worst and worst[0]["abs_diff"] > 1e-3 and len(worst[0]["features"]) == N_FEATURES
    assert "block" in worst[0]


def test_parity_is_skipped_when_the_model_cannot_be_fed(case_dir, xgb_artefact):
    native = xgb_artefact.with_name("pid.xgb.ubj")
    report = validate_model(case_dir["features_21"], ValidateOptions(native=native, o2_runtime=False))
    parity = next(c for c in report.checks if c.name == "parity")
    assert parity.status == "SKIP" and "input_shape" in parity.reason
    assert failed_names(report) == {"input_shape"}


def test_softmax_objective_is_refused_with_a_hint(mc_dataset, xgb_artefact, tmp_path):
    import xgboost as xgb

    train = mc_dataset.subset(0)
    booster = xgb.train({"objective": "multi:softmax", "num_class": 4}, xgb.DMatrix(train.x, train.y), 2)
    path = tmp_path / "softmax.ubj"
    booster.save_model(str(path))
    with pytest.raises(InputError, match="multi:softprob"):
        validate_model(xgb_artefact, ValidateOptions(native=path, o2_runtime=False))


@pytest.fixture(scope="module")
def rf_parts(mc_dataset, tmp_path_factory):
    """The RF family's pipeline, exported by the main job and kept as a joblib file."""
    import joblib

    from pid_export.models import FitOptions, get_family
    from pid_export.pipeline import train_and_export

    folder = tmp_path_factory.mktemp("rf")
    res = train_and_export(mc_dataset, "rf", folder / "pid.onnx")
    assert res.passed
    family = get_family("rf")
    pipe = family.fit(mc_dataset.subset(0), mc_dataset.subset(1), FitOptions(seed=mc_dataset.seed))
    joblib.dump(pipe, folder / "rf.joblib")
    return res.out, folder / "rf.joblib"


def test_random_forest_from_the_main_job_passes(rf_parts, mc_file):
    onnx_path, pickle_path = rf_parts
    report = validate_model(onnx_path, ValidateOptions(native=pickle_path, trust_pickle=True,
                                                       data=(mc_file,), o2_runtime=False))
    assert report.passed, "\n".join(report.summary_lines())
    assert report.native["kind"] == "sklearn" and "SimpleImputer" in report.native["description"]


def test_pickles_need_trust(rf_parts, tmp_path):
    onnx_path, pickle_path = rf_parts
    res = CliRunner().invoke(main, ["validate", str(onnx_path), "--native", str(pickle_path),
                                    "--no-o2-runtime"])
    assert res.exit_code == 2 and "--trust-pickle" in res.output

    # A pickle under a harmless-looking name is still recognised, and nothing in it runs.
    marker = tmp_path / "pickle-ran"
    sneaky = tmp_path / "model.json"
    import pickle

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    sneaky.write_bytes(pickle.dumps(Payload(), protocol=4))
    with pytest.raises(InputError, match="pickle"):
        validate_model(onnx_path, ValidateOptions(native=sneaky, o2_runtime=False))
    assert not marker.exists()


def test_unknown_native_format(case_dir, tmp_path):
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00\x01binary")
    with pytest.raises(InputError, match="unknown format"):
        validate_model(case_dir["good"], ValidateOptions(native=junk, o2_runtime=False))


def test_gate_catches_the_skl2onnx_nan_fault(mc_dataset):
    """A plain forest trained on NaN loses its NaN routing in skl2onnx (sklearn-onnx#1253)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier

    from pid_export.export import model_bytes, normalise

    train, test = mc_dataset.subset(0), mc_dataset.subset(2)
    assert np.isnan(train.x).any()
    forest = RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0).fit(train.x, train.y)
    onx = normalise(to_onnx(forest, initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
                            target_opset={"": 17, "ai.onnx.ml": 3},
                            options={RandomForestClassifier: {"zipmap": False}}))
    result = parity_gate(model_bytes(onx), forest.predict_proba, test.x, 1e-6)
    assert not result.passed
    assert result.argmax_disagreements > 0
    assert result.patterns["no tpc+tof+bayes"]["argmax_disagreements"] > 0
    # Rows without NaN agree: the fault is the NaN routing only.
    assert result.patterns["edge: large"]["max_abs_diff"] < 1e-6


# --------------------------------------------------------------------------- nets


class _LinearNet:
    """A stand-in net family: proves the checkpoint path through the family registry."""

    kind = "net"
    parity_bound = 1e-5
    description = "stand-in linear net"

    def load_native(self, path):
        return np.load(Path(path) / "weights.npy")

    def predict_proba(self, weights, x):
        z = np.where(np.isnan(x), 0, x).astype(np.float64) @ weights
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def test_checkpoint_folder_goes_through_the_family_registry(tmp_path, mc_file, monkeypatch):
    from pid_export import models

    models.families()  # load the built-in families first
    monkeypatch.setitem(models._REGISTRY, "linearnet", _LinearNet())
    model = cases.linear_model(metadata={"model_kind": "linearnet"})
    import onnx

    onnx.save_model(model, str(tmp_path / "net.onnx"))
    ckpt = tmp_path / "net.ckpt"
    ckpt.mkdir()
    weights = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "weights"))
    np.save(ckpt / "weights.npy", weights)

    report = validate_model(tmp_path / "net.onnx", ValidateOptions(native=ckpt, data=(mc_file,),
                                                                  o2_runtime=False))
    assert report.passed, "\n".join(report.summary_lines())
    assert report.native["kind"] == "net:linearnet" and report.native["bound"] == 1e-5


def test_checkpoint_of_an_unknown_family_is_a_clear_error(case_dir, tmp_path):
    ckpt = tmp_path / "x.ckpt"
    ckpt.mkdir()
    with pytest.raises(InputError, match="not available|checkpoint"):
        validate_model(case_dir["good"], ValidateOptions(native=ckpt, native_kind="nosuchnet",
                                                         o2_runtime=False))


@pytest.mark.parametrize("kind", ["simplenn", "dnn", "fse0", "fse1"])
def test_nets_from_the_main_job_pass(kind, mc_dataset, mc_file, tmp_path):
    """One epoch is enough: the harness checks the export, not the accuracy."""
    from pid_export.models import FitOptions, families
    from pid_export.pipeline import train_and_export

    if kind not in families():
        pytest.skip(f"the {kind} family is not registered (pid_export/models/nets, extra 'nets')")
    out = tmp_path / "pid.onnx"
    res = train_and_export(mc_dataset, kind, out, fit_options=FitOptions(seed=1, epochs=1, batch_size=256))
    assert res.passed, res.report["parity"]
    ckpt = out.with_name("pid.ckpt")
    assert ckpt.is_dir(), f"the {kind} family wrote no checkpoint beside the model"
    # Checkpoint kind from the ONNX metadata; behaviour under O2's onnxruntime too.
    report = validate_model(out, ValidateOptions(native=ckpt, data=(mc_file,), o2_runtime=True))
    assert report.passed, "\n".join(report.summary_lines())
    assert report.native["kind"] == f"net:{kind}" and report.native["bound"] == 1e-5


# --------------------------------------------------------------------------- O2's runtime


def test_o2_runtime_env_that_cannot_be_made_is_a_failure(case_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PID_EXPORT_ORT_ENV", str(blocker / "env"))
    report = validate_model(case_dir["good"], ValidateOptions(o2_runtime=True))
    o2 = next(c for c in report.checks if c.name == "o2_runtime")
    assert o2.status == "FAIL" and "NOT checked under O2's runtime" in o2.reason
    assert not report.passed


def test_foreign_env_without_onnxruntime_is_a_failure(case_dir, tmp_path, monkeypatch):
    (tmp_path / "env" / "bin").mkdir(parents=True)
    monkeypatch.setenv("PID_EXPORT_ORT_ENV", str(tmp_path / "env"))
    report = validate_model(case_dir["good"], ValidateOptions(o2_runtime=True))
    assert "o2_runtime" in failed_names(report)
    assert not (tmp_path / "env" / "pid-export-env.json").exists(), "never rebuilds a foreign folder"


def test_under_onnxruntime_1_22(case_dir):
    """Creates (once, cached) the onnxruntime 1.22.0 environment with pip; CI runs this."""
    from pid_export.validate_o2 import ensure_env

    env = ensure_env()
    assert env.onnxruntime == "1.22.0"
    checks = {"good": set(), "ir_11": {"ir_version", "o2_runtime"},
              "opset_23": {"opsets", "o2_runtime"},
              "logits": {"rows_sum_to_one", "o2_runtime.rows_sum_to_one"},
              "nan_for_nan": {"finite_outputs", "o2_runtime.finite_outputs"},
              "external_data": {"no_external_data", "o2_runtime"}}
    for name, expect in checks.items():
        report = validate_model(case_dir[name], ValidateOptions(o2_runtime=True))
        assert failed_names(report) == expect, "\n".join(report.summary_lines())
    good = validate_model(case_dir["good"], ValidateOptions(o2_runtime=True))
    ran = [c for c in good.checks if c.name.startswith("o2_runtime")]
    assert len(ran) == len(validate_behaviour.CHECK_NAMES) and all(c.status == "PASS" for c in ran)
    ir11 = validate_model(case_dir["ir_11"], ValidateOptions(o2_runtime=True))
    assert "Unsupported model IR version" in next(c.reason for c in ir11.checks if c.name == "o2_runtime")


def test_our_xgboost_under_onnxruntime_1_22(xgb_artefact):
    report = validate_model(xgb_artefact, ValidateOptions(o2_runtime=True))
    assert report.passed, "\n".join(report.summary_lines())
    assert any(c.name == "o2_runtime.batch_consistency" and c.status == "PASS" for c in report.checks)
