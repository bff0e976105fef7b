"""The 6 x 3 study (train/fit_all.py): fits, resume, refusal, bad input, and the report's
numbers checked against metrics computed here from the saved predictions."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pid_export.cli import main
from pid_export.contract import check_contract, failures
from pid_export.errors import ConfigError
from pid_export.evaluation import Predictions, class_thresholds, threshold_metadata
from pid_export.export import read_metadata
from pid_export.features import CLASS_NAMES
from pid_export.models import families
from pid_export.study import check_output, load_config, plan_fits, run_study
from pid_export.testing import pidml_branches, write_ao2d

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train" / "fit_all.py"
TRACKS = 12000

TREES = f"""
[study]
name = "test"
models = ["rf", "xgb"]
ranges = ["0-1", "1-3", "full"]
purity_target = 0.8
[data]
builtin_tracks = {TRACKS}
[models.xgb]
max_depth = 3
n_estimators = 15
early_stopping_rounds = 5
[models.rf]
n_estimators = 8
max_depth = 6
[output]
pt_bins = 6
"""

NET_SIZES = {
    "simplenn": "hidden = [8]",
    "dnn": "hidden = [8, 8]",
    "fse0": "dim = 8\nheads = 2\nblocks = 1\nff = 8\nhead_hidden = 8",
    "fse1": "dim = 8\nheads = 2\nblocks = 1\nff = 8\nhead_hidden = 8",
}


def write_config(folder: Path, text: str, name: str = "study.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


class Spy:
    """Wraps train_and_export: counts calls, and can interrupt the n-th one."""

    def __init__(self, real, interrupt_at=None):
        self.real, self.interrupt_at, self.calls = real, interrupt_at, []

    def __call__(self, ds, model, out, **kw):
        self.calls.append((model, ds.prange))
        if self.interrupt_at == len(self.calls):
            raise KeyboardInterrupt
        return self.real(ds, model, out, **kw)


@pytest.fixture
def spy(monkeypatch):
    import pid_export.pipeline as pipeline

    def make(interrupt_at=None):
        s = Spy(pipeline.train_and_export, interrupt_at)
        monkeypatch.setattr(pipeline, "train_and_export", s)
        return s

    return make


@pytest.fixture(scope="module")
def trees_study(tmp_path_factory):
    """The script on a tiny sample: RF and XGBoost over the three ranges."""
    tmp = tmp_path_factory.mktemp("trees")
    cfg = write_config(tmp, TREES)
    out = tmp / "out"
    res = run_script("--config", cfg, "--out", out)
    assert res.returncode == 0, res.stdout + res.stderr
    return cfg, out, res.stdout


def copy_study(trees_study, tmp_path):
    cfg, out, _ = trees_study
    dst = tmp_path / "out"
    shutil.copytree(out, dst)
    return cfg, dst


# --------------------------------------------------------------------------- the report's numbers


def independent_summary(y, proba):
    """What the report must say, computed with scikit-learn."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    pred = proba.argmax(axis=1)
    labels = list(range(len(CLASS_NAMES)))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels,
                                                             zero_division=0)
    aucs = [roc_auc_score(y == c, proba[:, c]) for c in labels if 0 < (y == c).sum() < len(y)]
    return {"accuracy": float((pred == y).mean()), "macro_auc": float(np.mean(aucs)),
            "precision": prec, "recall": rec, "f1": f1, "support": support,
            "confusion": confusion_matrix(y, pred, labels=labels)}


def check_summary(summary, y, proba):
    ref = independent_summary(y, proba)
    assert summary["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert summary["macro_auc"] == pytest.approx(ref["macro_auc"], abs=1e-9)
    assert np.array_equal(np.asarray(summary["confusion"]), ref["confusion"])
    for c, name in enumerate(CLASS_NAMES):
        pc = summary["per_class"][name]
        assert pc["support"] == ref["support"][c]
        if ref["support"][c] == 0:
            assert pc["absent"] is True
            continue
        assert pc["efficiency"] == pytest.approx(ref["recall"][c], abs=1e-12)
        assert pc["purity"] == pytest.approx(ref["precision"][c], abs=1e-12)
        assert pc["f1"] == pytest.approx(ref["f1"][c], abs=1e-12)


def check_thresholds(th, y, proba, target):
    from sklearn.metrics import precision_recall_curve

    for c, name in enumerate(CLASS_NAMES):
        if not (y == c).any():
            assert th[name] == {"absent": True}
            continue
        precision, recall, _ = precision_recall_curve(y == c, proba[:, c])
        with np.errstate(invalid="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        assert th[name]["max_f1"]["f1"] == pytest.approx(f1.max(), abs=1e-9)
        # the stored threshold gives that F1 when applied directly
        sel = proba[:, c] >= th[name]["max_f1"]["threshold"]
        tp = (sel & (y == c)).sum()
        assert 2 * tp / (sel.sum() + (y == c).sum()) == pytest.approx(f1.max(), abs=1e-9)
        reach = precision[:-1] >= target
        hit = th[name]["at_purity_target"]
        if reach.any():
            assert hit["efficiency"] == pytest.approx(recall[:-1][reach].max(), abs=1e-12)
            sel = proba[:, c] >= hit["threshold"]
            assert (sel & (y == c)).sum() / sel.sum() >= target
        else:
            assert hit is None


def test_script_writes_everything(trees_study):
    cfg, out, stdout = trees_study
    assert "[1/6] rf 0-1" in stdout and "[6/6] xgb full" in stdout
    assert "6 of 6 fits passed" in stdout
    for fit in plan_fits(load_config(cfg)):
        folder = out / fit.name
        for name in (f"{fit.name}.onnx", f"{fit.name}.report.json", "predictions.npz",
                     "evaluation.json", "fit.json"):
            assert (folder / name).is_file(), folder / name
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert len(plots) == 13 and "summary_accuracy.png" in plots
    assert all((out / "plots" / p).stat().st_size > 20_000 for p in plots)
    md = (out / "report.md").read_text()
    assert "| range | metric | Random Forest | XGBoost |" in md
    assert "plots/roc_full.png" in md and "Bayes baseline" in md
    for name in ("report.json", "comparison.csv", "per_class.csv", "per_class_best.csv",
                 "bayes_tier.csv", "study.json", "config.toml"):
        assert (out / name).is_file()


def test_report_numbers_match_sklearn(trees_study):
    cfg_path, out, _ = trees_study
    cfg = load_config(cfg_path)
    report = json.loads((out / "report.json").read_text())
    comparison = {(r["range"], r["metric"]): r["values"] for r in report["comparison"]["rows"]}
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    for fit in plan_fits(cfg):
        folder = out / fit.name
        with np.load(folder / "predictions.npz", allow_pickle=False) as f:
            y, proba = f["y"].astype(int), f["proba"]
            bayes, avail, pt = f["bayes"], f["bayes_available"], f["pt"]
        ev = json.loads((folder / "evaluation.json").read_text())
        check_summary(ev["tiers"]["all"], y, proba)
        ref = independent_summary(y, proba)
        acc = comparison[(fit.prange, "test_accuracy")][fit.model]
        assert acc == pytest.approx(ref["accuracy"])
        assert comparison[(fit.prange, "macro_auc")][fit.model] == pytest.approx(ref["macro_auc"])
        row = next(r for r in rows if r["range"] == fit.prange and r["metric"] == "test_accuracy")
        assert float(row[fit.model]) == pytest.approx(ref["accuracy"])
        pipeline_rep = json.loads((folder / f"{fit.name}.report.json").read_text())
        assert comparison[(fit.prange, "train_accuracy")][fit.model] == \
            pipeline_rep["training"]["train_accuracy"]
        # the exported model agrees with the native one on these rows: same accuracy
        assert pipeline_rep["test"]["accuracy"] == pytest.approx(ref["accuracy"])

        # second tier: only tracks with Bayesian probabilities, and the Bayes baseline
        tier = ev["tiers"]["bayes"]
        assert tier["n"] == int(avail.sum()) > 0
        check_summary(tier["model"], y[avail], proba[avail])
        assert tier["baseline"]["accuracy"] == pytest.approx(
            float((bayes[avail].argmax(axis=1) == y[avail]).mean()))

        check_thresholds(ev["thresholds"], y, proba, cfg.purity_target)

        # efficiency vs pT of the pions, bin by bin
        edges = np.asarray(ev["pt_bins"]["edges"])
        pion = y == 0
        n_true, _ = np.histogram(pt[pion], edges)
        n_ok, _ = np.histogram(pt[pion & (proba.argmax(1) == 0)], edges)
        got = ev["pt_bins"]["per_class"]["pion"]["efficiency"]
        for k in range(len(edges) - 1):
            if n_true[k] >= 10:
                assert got[k] == pytest.approx(n_ok[k] / n_true[k])
            else:
                assert got[k] is None

    best = report["best_model"]["model"]
    full = comparison[("full", "test_accuracy")]
    assert full[best] == max(full.values())


def test_onnx_carries_thresholds_and_unchanged_outputs(trees_study):
    import onnxruntime as ort

    from pid_export.pipeline import load_builtin_sample

    _, out, _ = trees_study
    folder = out / "xgb_full"
    ev = json.loads((folder / "evaluation.json").read_text())
    meta = read_metadata(folder / "xgb_full.onnx")
    assert meta["pid_thresholds"] == threshold_metadata(ev["thresholds"])
    assert meta["parity"]["passed"] is True and meta["momentum_range"] == "full"
    assert not failures(check_contract(folder / "xgb_full.onnx"))
    # the rewritten file still gives the saved predictions on the same test split
    ds = load_builtin_sample(TRACKS, seed=231, prange="full")
    test = ds.subset(2)
    sess = ort.InferenceSession(str(folder / "xgb_full.onnx"), providers=["CPUExecutionProvider"])
    proba = sess.run(None, {"input": test.x})[-1]
    saved = Predictions.load(folder / "predictions.npz")
    assert np.array_equal(saved.y, test.y)
    assert np.max(np.abs(proba - saved.proba)) < 1e-6


# --------------------------------------------------------------------------- resume and force


def test_rerun_skips_finished_fits(trees_study, tmp_path, spy):
    cfg_path, out = copy_study(trees_study, tmp_path)
    onnx = out / "rf_0-1" / "rf_0-1.onnx"
    before = onnx.stat().st_mtime_ns
    # an output-only change (no plots) is the same configuration
    text = cfg_path.read_text().replace("pt_bins = 6", "pt_bins = 6\nplots = false")
    cfg = write_config(tmp_path, text)
    # a fit made when the family's code built another model: kept, but said
    record = json.loads((out / "xgb_full" / "fit.json").read_text())
    record["description"] = "XGBoost of an older version"
    (out / "xgb_full" / "fit.json").write_text(json.dumps(record))
    s = spy()
    lines = []
    result = run_study(load_config(cfg), out, echo=lines.append)
    assert s.calls == [] and result.exit_code == 0
    assert sum("not refitted" in line for line in lines) == 6
    assert [line for line in lines if "note: fitted as 'XGBoost of an older version'" in line]
    assert onnx.stat().st_mtime_ns == before  # same thresholds: the ONNX is left alone


def test_force_refits_finished_fits(trees_study, tmp_path, spy):
    cfg_path, out = copy_study(trees_study, tmp_path)
    small = cfg_path.read_text().replace('models = ["rf", "xgb"]', 'models = ["xgb"]') \
        .replace('ranges = ["0-1", "1-3", "full"]', 'ranges = ["1-3"]') + "plots = false\n"
    cfg = load_config(write_config(tmp_path, small))
    s = spy()
    assert run_study(cfg, out, echo=lambda m: None).exit_code == 0
    assert s.calls == []
    assert run_study(cfg, out, force=True, echo=lambda m: None).exit_code == 0
    assert s.calls == [("xgb", "1-3")]


def test_interrupted_run_resumes(tmp_path, spy):
    text = TREES.replace('ranges = ["0-1", "1-3", "full"]', 'ranges = ["1-3"]') + "plots = false\n"
    cfg = load_config(write_config(tmp_path, text))
    out = tmp_path / "out"
    s = spy(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, out, echo=lambda m: None)
    assert (out / "rf_1-3" / "fit.json").is_file() and not (out / "report.md").exists()
    assert not (out / "xgb_1-3" / "fit.json").exists()
    s = spy()
    result = run_study(cfg, out, echo=lambda m: None)
    assert s.calls == [("xgb", "1-3")]
    assert result.exit_code == 0 and (out / "report.md").is_file()


# --------------------------------------------------------------------------- refusals, bad input


def test_refuses_results_of_another_configuration(trees_study, tmp_path):
    cfg_path, out = copy_study(trees_study, tmp_path)
    other = write_config(tmp_path, cfg_path.read_text().replace("max_depth = 3", "max_depth = 4"))
    res = CliRunner().invoke(main, ["study", "--config", str(other), "--out", str(out)])
    assert res.exit_code == 2
    assert "different configuration" in res.output and "models.xgb.max_depth: 3 -> 4" in res.output
    assert "--force" in res.output

    cfg = load_config(write_config(tmp_path, cfg_path.read_text().replace(
        f"builtin_tracks = {TRACKS}", "builtin_tracks = 5000"), "data.toml"))
    with pytest.raises(ConfigError, match="data, selections or seed differ"):
        check_output(cfg, out, plan_fits(cfg), force=False)
    check_output(cfg, out, plan_fits(cfg), force=True)  # --force lets it through

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a study"):
        check_output(cfg, stranger, plan_fits(cfg), force=False)


@pytest.mark.parametrize("text, message", [
    ("[study]\nmodels = ['xgb', 'bdt']\n", "unknown model 'bdt'"),
    ("[study]\nranges = ['0-2']\n", "unknown range '0-2'"),
    ("[study]\nmodel = ['xgb']\n", "unknown key study.model"),
    ("[studies]\n", r"unknown section \[studies\]"),
    ("[models.bdt]\ndepth = 3\n", "unknown model 'bdt'"),
    ("[models.xgb]\ndepth = 3\n", "unknown key models.xgb.depth"),
    ("[models.simplenn]\nhidden = 'big'\n", "models.simplenn.hidden: expected list"),
    ("[models.dnn]\nclass_weight = 'auto'\n", "class_weight: expected one of"),
    ("[models.rf]\nn_estimators = 0\n", "must be positive"),
    ("[models.xgb]\nparity_bound = 0\n", "models.xgb.parity_bound: must be positive"),
    ("[study]\nseed = 1.5\n", "study.seed: expected int"),
    ("[study]\npurity_target = 90\n", "purity between 0 and 1"),
    ("[data]\nfiles = ['nowhere.root']\n", "nowhere.root does not exist"),
    ("[selections]\neta_max = true\n", "false to switch the cut off"),
    ("[study\n", "not valid TOML"),
])
def test_bad_configuration(tmp_path, text, message):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_bad_configuration_exit_code(tmp_path):
    path = write_config(tmp_path, "[study]\nmodels = ['xgb', 'bdt']\n")
    res = run_script("--config", path, "--out", tmp_path / "out")
    assert res.returncode == 2
    assert "unknown model 'bdt'" in res.stderr and not (tmp_path / "out").exists()


def few_electrons_above(n: int, seed: int, pt_cut: float, keep: int) -> dict:
    """PID-ML MC branches in which only ``keep`` electrons have pT >= pt_cut."""
    b = pidml_branches(n, seed)
    high = np.flatnonzero((np.abs(b["fPdgCode"]) == 11) & (b["fPt"] >= pt_cut))
    rows = np.ones(len(b["fPt"]), dtype=bool)
    rows[high[keep:]] = False
    return {k: v[rows] for k, v in b.items()}


MISSING = """
[study]
models = ["xgb"]
ranges = ["0-1", "1-3"]
[data]
files = ["{name}"]
[selections]
dpg = false
[models.xgb]
max_depth = 3
n_estimators = 10
[output]
pt_bins = 5
plots = {plots}
"""


def test_class_missing_from_the_test_split(tmp_path):
    # two electrons above 1 GeV/c: both land in the training split, none in the test split
    write_ao2d(tmp_path / "mc.root", [{"O2pidtracksmc": few_electrons_above(3000, s, 1.0, 1)}
                                      for s in range(2)])
    cfg = load_config(write_config(tmp_path, MISSING.format(name="mc.root", plots="true")))
    lines = []
    result = run_study(cfg, tmp_path / "out", echo=lines.append)
    assert result.exit_code == 0, lines
    folder = tmp_path / "out" / "xgb_1-3"
    ev = json.loads((folder / "evaluation.json").read_text())
    assert ev["absent_classes"] == ["electron"]
    assert ev["tiers"]["all"]["per_class"]["electron"] == {"support": 0, "absent": True}
    assert ev["thresholds"]["electron"] == {"absent": True}
    assert read_metadata(folder / "xgb_1-3.onnx")["pid_thresholds"]["max_f1"]["electron"] is None
    pred = Predictions.load(folder / "predictions.npz")
    check_summary(ev["tiers"]["all"], pred.y, pred.proba)
    check_thresholds(ev["thresholds"], pred.y, pred.proba, cfg.purity_target)
    low = json.loads((tmp_path / "out" / "xgb_0-1" / "evaluation.json").read_text())
    assert low["absent_classes"] == []
    md = (tmp_path / "out" / "report.md").read_text()
    assert "range 1-3: no electron in the test split" in md
    assert any("no electron in the test split of range 1-3" in line for line in lines)
    assert (tmp_path / "out" / "plots" / "efficiency_vs_pt_1-3.png").is_file()


def test_class_missing_from_a_range_and_empty_range(tmp_path):
    # no electron at all above 1 GeV/c: said, and the other range goes on
    write_ao2d(tmp_path / "mc.root", [{"O2pidtracksmc": few_electrons_above(3000, 3, 1.0, 0)}])
    cfg = load_config(write_config(tmp_path, MISSING.format(name="mc.root", plots="false")))
    lines = []
    result = run_study(cfg, tmp_path / "out", echo=lines.append)
    assert result.fits["xgb_0-1"]["passed"]
    assert any("no electron in the training split of range 1-3" in line for line in lines)
    rec = result.fits["xgb_1-3"]
    if rec["passed"]:  # a family that trains without a class: evaluated, electron absent
        ev = json.loads((tmp_path / "out" / "xgb_1-3" / "evaluation.json").read_text())
        assert ev["absent_classes"] == ["electron"]
    else:  # a family that cannot: the failure names the missing class, the study goes on
        assert result.exit_code == 1
        assert "training split of range 1-3 has no electron" in rec["error"]
        assert "has no electron" in (tmp_path / "out" / "report.md").read_text()

    # a range without tracks: said, and the study goes on with the others (exit 2)
    write_ao2d(tmp_path / "low.root", [{"O2pidtracksmc": {
        k: v[pidml_branches(3000, 9)["fPt"] < 1.0] for k, v in pidml_branches(3000, 9).items()}}])
    text = MISSING.format(name="low.root", plots="false").replace('"0-1", "1-3"', '"1-3", "0-1"')
    cfg = load_config(write_config(tmp_path, text, "low.toml"))
    result = run_study(cfg, tmp_path / "empty", echo=lambda m: None)
    assert result.exit_code == 2 and list(result.range_errors) == ["1-3"]
    assert result.fits["xgb_0-1"]["passed"] and not result.fits["xgb_1-3"]["passed"]
    assert "no tracks left after the selections" in result.range_errors["1-3"]
    assert "range 1-3: no tracks" in (tmp_path / "empty" / "report.md").read_text()


def test_thresholds_on_ties_and_unreachable_purity():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.zeros((6, 4), np.float32)
    p[:, 0] = [0.9, 0.5, 0.5, 0.2, 0.1, 0.1]
    p[:, 1] = [0.05, 0.4, 0.4, 0.7, 0.8, 0.3]
    p[:, 2] = 1 - p[:, 0] - p[:, 1]
    th = class_thresholds(y, p, 0.99)
    # pion: the cut 0.5 takes a tied pion and kaon together (never one of them alone)
    assert th["pion"]["max_f1"] == pytest.approx(
        {"threshold": 0.5, "efficiency": 1.0, "purity": 2 / 3, "f1": 0.8, "selected": 3})
    assert th["pion"]["at_purity_target"]["threshold"] == pytest.approx(0.9)
    assert th["electron"] == {"absent": True}
    check_thresholds(th, y, p, 0.99)
    th = class_thresholds(np.array([0, 1, 0, 1]), np.tile([[0.5, 0.5, 0, 0]], (4, 1)), 0.9)
    assert th["pion"]["at_purity_target"] is None and th["pion"]["best_purity"] == 0.5


# --------------------------------------------------------------------------- the nets


@pytest.mark.skipif(not {"simplenn", "dnn", "fse0", "fse1"} <= set(families()),
                    reason="the net families are not registered")
def test_nets_study(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("jax2onnx")
    sections = "".join(f"[models.{m}]\nepochs = 1\nbatch_size = 128\nlearning_rate = 3e-3\n"
                       f"{sizes}\n" for m, sizes in NET_SIZES.items())
    text = f"""
[study]
models = ["simplenn", "dnn", "fse0", "fse1"]
ranges = ["full"]
[data]
builtin_tracks = 6000
{sections}
[output]
pt_bins = 5
"""
    cfg = load_config(write_config(tmp_path, text))
    result = run_study(cfg, tmp_path / "out", echo=lambda m: None)
    assert result.exit_code == 0, result.fits
    ev = json.loads((tmp_path / "out" / "fse1_full" / "evaluation.json").read_text())
    groups = ev["gates"]
    assert set(groups) == {"tracking", "tpc", "tof", "bayes"}
    assert all(0 <= v <= 1 for per_class in groups.values() for v in per_class.values()
               if v is not None)
    assert ev["net_training"]["epochs_run"] == 1
    for model in ("simplenn", "fse1"):
        folder = tmp_path / "out" / f"{model}_full"
        with np.load(folder / "predictions.npz") as f:
            y, proba = f["y"].astype(int), f["proba"]
        e = json.loads((folder / "evaluation.json").read_text())
        check_summary(e["tiers"]["all"], y, proba)
        assert read_metadata(folder / f"{model}_full.onnx")["parity"]["passed"] is True
    md = (tmp_path / "out" / "report.md").read_text()
    assert "FSE Phase 1: mean gate per detector group" in md
    assert "| range | metric | SimpleNN | DNN | FSE0 | FSE1 |" in md
