"""The four Flax nets: training, in-graph preprocessing, export, parity, checkpoints.

Small networks, a few epochs and a few thousand simulated tracks, so the file runs in a
couple of minutes on two cores. Parity is tested with trained weights (not only fresh
ones), on the parity gate's rows: held-out tracks, every absent-detector pattern, all-NaN
rows and edge values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("jax2onnx")

from click.testing import CliRunner  # noqa: E402

from pid_export.cli import main  # noqa: E402
from pid_export.contract import check_contract, failures  # noqa: E402
from pid_export.errors import ConfigError, InputError  # noqa: E402
from pid_export.export import base_metadata, model_bytes, normalise, set_metadata  # noqa: E402
from pid_export.features import N_FEATURES, mask_groups, spec_digest  # noqa: E402
from pid_export.models import FitOptions, TrainingData, get_family  # noqa: E402
from pid_export.parity import onnx_proba, onnx_session, parity_gate, parity_rows  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NETS = ("simplenn", "dnn", "fse0", "fse1")
SMALL = {
    "simplenn": {"hidden": [16, 16]},
    "dnn": {"hidden": [32, 16], "dropout": 0.2},
    "fse0": {"dim": 16, "heads": 2, "blocks": 1, "ff": 32, "head_hidden": 16},
    "fse1": {"dim": 16, "heads": 2, "blocks": 1, "ff": 32, "head_hidden": 16},
}
EPOCHS = 3


def _opts(kind: str, **kw) -> FitOptions:
    extra = {"hyper": SMALL[kind], "progress": False}
    extra.update(kw.pop("extra", {}))
    return FitOptions(seed=5, epochs=kw.pop("epochs", EPOCHS), batch_size=128, extra=extra, **kw)


@pytest.fixture(scope="module")
def sample():
    from pid_export.pipeline import load_builtin_sample

    ds = load_builtin_sample(9000, seed=7)
    return ds.subset(0), ds.subset(1), ds.subset(2)


@pytest.fixture(scope="module")
def trained(sample):
    """Each net trained for a few epochs, with its ONNX export (normalised, with metadata)."""
    train, val, _ = sample
    out = {}
    for kind in NETS:
        family = get_family(kind)
        native = family.fit(train, val, _opts(kind))
        onx = normalise(family.to_onnx(native))
        meta = base_metadata()
        meta["model_kind"] = kind
        set_metadata(onx, meta)
        out[kind] = (family, native, model_bytes(onx))
    return out


def _ort(blob: bytes, x: np.ndarray) -> np.ndarray:
    return onnx_proba(onnx_session(blob), np.asarray(x, dtype=np.float32))


# --------------------------------------------------------------------------- registry


def test_registered_as_nets():
    for kind in NETS:
        family = get_family(kind)
        assert family.kind == "net"
        assert family.parity_bound == 1e-5
    with pytest.raises(ConfigError, match="unknown model"):
        get_family("transformer")


def test_bad_training_options():
    family = get_family("simplenn")
    with pytest.raises(ConfigError, match="class_weight"):
        family.train_config(FitOptions(extra={"class_weight": "inverse"}))
    with pytest.raises(ConfigError, match="unknown training option"):
        family.train_config(FitOptions(extra={"warmup": 3}))


# --------------------------------------------------------------------------- loss, weights


def test_focal_loss_matches_formula():
    import jax.numpy as jnp

    from pid_export.models.nets._train import focal_loss

    logits = jnp.asarray([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    y = jnp.asarray([0, 3])
    w = jnp.asarray([1.0, 2.0])
    got = np.asarray(focal_loss(logits, y, w, alpha=0.5, gamma=2.5))
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(axis=1, keepdims=True)
    pt = p[[0, 1], [0, 3]]
    want = -np.asarray(w) * 0.5 * (1 - pt) ** 2.5 * np.log(pt)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_balanced_class_weights():
    from pid_export.models.nets._train import class_weights

    y = np.array([0] * 6 + [1] * 2 + [2] * 4)
    w = class_weights(y, "balanced")
    np.testing.assert_allclose(w, [12 / 24, 12 / 8, 12 / 16, 0.0])
    np.testing.assert_array_equal(class_weights(y, "none"), np.ones(4))


# --------------------------------------------------------------------------- preprocessing


def test_presence_from_flags_and_nan():
    """A value counts only if finite and its group's flag is 1 (a NaN flag counts as 0)."""
    import jax.numpy as jnp

    from pid_export.models.nets._layers import (
        VALUE_COLUMNS,
        Preprocess,
        Standardisation,
        present_values_np,
    )

    x = np.ones((4, N_FEATURES), dtype=np.float32)
    x[1, 21] = 0.0  # TOF flag off, values still there: TOF must count as absent
    x[2, 8] = np.inf  # one TOF value not finite
    x[3, 20] = np.nan  # NaN TPC flag
    present = present_values_np(x)
    tof = [VALUE_COLUMNS.index(c) for c in (8, 9, 10, 11, 12)]
    tpc = [VALUE_COLUMNS.index(c) for c in (3, 4, 5, 6, 7)]
    assert present[0].all()
    assert not present[1, tof].any() and present[1, tpc].all()
    assert not present[2, tof[0]] and present[2, tof[1:]].all()
    assert not present[3, tpc].any()

    z, graph_present, groups = Preprocess(Standardisation.identity())(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(graph_present), present)
    # groups: tracking, tpc, tof, bayes
    np.testing.assert_array_equal(np.asarray(groups)[:, 1], [1, 1, 1, 0])
    np.testing.assert_array_equal(np.asarray(groups)[:, 2], [1, 0, 1, 1])
    assert np.isfinite(np.asarray(z)).all()


def test_standardisation_uses_present_values(sample):
    from pid_export.models.nets._layers import VALUE_COLUMNS, Standardisation

    train, _, _ = sample
    stats = Standardisation.from_training(train.x)
    assert all(np.isfinite(stats.mean)) and all(s > 0 for s in stats.std)
    beta = VALUE_COLUMNS.index(8)
    tof_beta = train.x[:, 8]
    assert stats.fill[beta] == pytest.approx(float(np.nanmedian(tof_beta[train.x[:, 21] > 0.5])))
    assert stats.fill[VALUE_COLUMNS.index(13)] == -0.25  # the seed's missing-Bayes token


# --------------------------------------------------------------------------- export and parity


@pytest.mark.parametrize("kind", NETS)
def test_parity_with_trained_weights(trained, sample, kind):
    family, native, blob = trained[kind]
    _, _, test = sample
    result = parity_gate(blob, lambda x: family.predict_proba(native, x), test.x,
                         family.parity_bound)
    assert result.passed, result.summary()
    assert result.patterns["all NaN"]["rows"] > 0
    for name in ("no tpc", "no tof", "no bayes", "no tpc+tof+bayes", "all NaN"):
        assert result.patterns[name]["max_abs_diff"] <= 1e-5, name
    assert len(native.history.val_loss) == EPOCHS  # trained weights, not fresh ones


@pytest.mark.parametrize("kind", NETS)
def test_all_nan_rows_give_finite_probabilities(trained, kind):
    family, native, blob = trained[kind]
    rows = np.full((3, N_FEATURES), np.nan, dtype=np.float32)
    rows[1, [17, 20, 21]] = 0.0  # flags written, every value absent
    for out in (_ort(blob, rows), family.predict_proba(native, rows)):
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", NETS)
def test_batch_one_equals_row_in_batch(trained, sample, kind):
    family, native, blob = trained[kind]
    _, _, test = sample
    rows, _ = parity_rows(test.x[:300], pattern_rows=40)
    sess = onnx_session(blob)
    big = onnx_proba(sess, rows)
    picks = np.linspace(0, len(rows) - 1, 60).astype(int)
    single = np.concatenate([onnx_proba(sess, rows[i:i + 1]) for i in picks])
    np.testing.assert_allclose(single, big[picks], rtol=0, atol=1e-6)
    native_single = np.concatenate([family.predict_proba(native, rows[i:i + 1]) for i in picks])
    np.testing.assert_allclose(native_single, family.predict_proba(native, rows)[picks],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", NETS)
def test_contract_passes(trained, kind):
    _, _, blob = trained[kind]
    bad = failures(check_contract(blob))
    assert not bad, [f"{c.name}: {c.reason}" for c in bad]


@pytest.mark.parametrize("kind", NETS)
def test_exported_graph_shape_and_opset(trained, kind):
    import onnx

    _, _, blob = trained[kind]
    model = onnx.load_from_string(blob)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["probabilities"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == N_FEATURES
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 22
    assert model.ir_version <= 10


def test_dnn_exports_in_inference_mode(trained, sample):
    """No Dropout and no batch-statistics BatchNorm in the graph of the DNN."""
    import onnx

    _, native, blob = trained["dnn"]
    graph = onnx.load_from_string(blob).graph
    ops = [n.op_type for n in graph.node]
    assert "Dropout" not in ops
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.get("training_mode", 0) == 0
            assert len(node.output) == 1  # running mean/var outputs exist only in training mode
    # Batch statistics would make a row's output depend on its batch-mates.
    _, _, test = sample
    x = test.x[:64]
    shuffled = np.concatenate([x[:8], test.x[500:564]])
    np.testing.assert_allclose(_ort(blob, x)[:8], _ort(blob, shuffled)[:8], atol=1e-6)
    # The running statistics moved during training (so BatchNorm is not an identity).
    from flax import nnx

    means = [np.asarray(m) for m in
             __import__("jax").tree_util.tree_leaves(nnx.state(native.model, nnx.BatchStat))]
    assert any(np.abs(m).max() > 0 for m in means)


def test_fse1_gates(trained, sample):
    family, native, blob = trained["fse1"]
    _, _, test = sample
    gates = family.gates(native, test.x[:200])
    assert gates.shape == (200, 4)
    assert ((gates >= 0) & (gates <= 1)).all()
    no_tof = family.gates(native, mask_groups(test.x[:200], ["tof"]))
    np.testing.assert_array_equal(no_tof[:, 2], 0.0)  # order: tracking, tpc, tof, bayes
    no_bayes = test.x[:200][test.x[:200, 17] == 0]
    assert (family.gates(native, no_bayes)[:, 3] == 0).all()
    with pytest.raises(ValueError, match="only fse1"):
        get_family("fse0").gates(trained["fse0"][1], test.x[:5])


def test_best_epoch_weights_are_restored(sample):
    """After training the model holds the weights of the lowest validation loss."""
    from pid_export.models.nets._native import fit
    from pid_export.models.nets._train import TrainConfig, _evaluate, class_weights, make_eval_fn

    train, val, _ = sample
    cfg = TrainConfig(epochs=4, batch_size=64, learning_rate=3e-2, patience=2, seed=1,
                      progress=False)
    native = fit("simplenn", {"hidden": [8]}, train.x, train.y, val.x, val.y, cfg)
    h = native.history
    assert h.best_epoch == int(np.argmin(h.val_loss))
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(native.model)
    w = jnp.asarray(class_weights(train.y, cfg.class_weight))[jnp.asarray(val.y)]
    loss, _ = _evaluate(make_eval_fn(graphdef, cfg), state, jnp.asarray(val.x),
                        jnp.asarray(val.y), w)
    assert loss == pytest.approx(h.val_loss[h.best_epoch], rel=1e-4)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("kind", NETS)
def test_checkpoint_round_trip(trained, sample, tmp_path, kind):
    family, native, blob = trained[kind]
    _, _, test = sample
    (folder,) = family.save_native(native, tmp_path / "model")
    assert folder == tmp_path / "model.ckpt"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model"] == kind and cfg["feature_spec_digest"] == spec_digest()
    assert "mean" in cfg["standardisation"] and cfg["hyper"]

    again = family.fit(TrainingData(test.x[:0], test.y[:0]), TrainingData(test.x[:0], test.y[:0]),
                       _opts(kind, checkpoint=folder))
    blob2 = model_bytes(normalise(family.to_onnx(again)))
    rows, _ = parity_rows(test.x[:500], pattern_rows=100)
    np.testing.assert_array_equal(_ort(blob2, rows), _ort(blob, rows))
    np.testing.assert_array_equal(family.predict_proba(again, rows),
                                  family.predict_proba(native, rows))


def test_checkpoint_write_is_atomic_and_spares_foreign_folders(trained, tmp_path):
    family, native, _ = trained["simplenn"]
    foreign = tmp_path / "m.ckpt"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (written,) = family.save_native(native, tmp_path / "m")
    assert written == tmp_path / "m-2.ckpt"
    assert (foreign / "notes.txt").read_text() == "mine"
    # Our own checkpoint is replaced in place; no temporary folders are left behind.
    (again,) = family.save_native(native, tmp_path / "m")
    assert again == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-2.ckpt", "m.ckpt"]


def test_resume_training_from_checkpoint(trained, sample, tmp_path):
    family, native, _ = trained["simplenn"]
    train, val, _ = sample
    (folder,) = family.save_native(native, tmp_path / "r")
    more = family.fit(train, val, _opts("simplenn", checkpoint=folder, epochs=1,
                                        extra={"resume": True}))
    assert more.resumed and len(more.history.val_loss) == 1
    assert more.stats == native.stats
    with pytest.raises(ConfigError, match="resume needs a checkpoint"):
        family.fit(train, val, _opts("simplenn", extra={"resume": True}))


def _broken_checkpoints(trained, root: Path) -> dict[str, tuple[Path, str]]:
    family, native, _ = trained["fse0"]
    (good,) = family.save_native(native, root / "good")
    cases = {}

    cases["missing"] = (root / "nowhere.ckpt", "no such folder")
    cases["wrong kind"] = (good, "holds a 'fse0' net")

    digest = root / "digest.ckpt"
    (digest_src,) = get_family("simplenn").save_native(trained["simplenn"][1], root / "digest")
    cfg = json.loads((digest_src / "config.json").read_text())
    cfg["feature_spec_digest"] = "0123456789abcdef"
    (digest / "config.json").write_text(json.dumps(cfg))
    cases["wrong digest"] = (digest, "feature specification")

    (trunc,) = get_family("simplenn").save_native(trained["simplenn"][1], root / "trunc")
    state = trunc / "state.msgpack"
    state.write_bytes(state.read_bytes()[:100])
    cases["truncated state"] = (trunc, "corrupt")

    (garbage,) = get_family("simplenn").save_native(trained["simplenn"][1], root / "garbage")
    (garbage / "config.json").write_text("{not json")
    cases["corrupt config"] = (garbage, "corrupt")

    empty = root / "empty.ckpt"
    empty.mkdir()
    cases["not a checkpoint"] = (empty, "no config.json")
    return cases


def test_bad_checkpoints_raise_clear_errors(trained, tmp_path):
    family = get_family("simplenn")
    for name, (folder, message) in _broken_checkpoints(trained, tmp_path).items():
        with pytest.raises((InputError, ConfigError), match=message):
            family.check_checkpoint(folder)


def test_bad_checkpoints_through_the_cli(trained, tmp_path):
    runner = CliRunner()
    for name, (folder, message) in _broken_checkpoints(trained, tmp_path).items():
        out = tmp_path / f"{name.replace(' ', '_')}.onnx"
        res = runner.invoke(main, ["--model", "simplenn", "--checkpoint", str(folder),
                                   "--out", str(out), "--tracks", "2000"])
        assert res.exit_code == 2, (name, res.output)
        assert message in res.output, (name, res.output)
        assert not out.exists() and not out.with_suffix(".report.json").exists()
        assert not list(tmp_path.glob(f"{out.stem}*")), name


def test_cli_trains_exports_and_reexports_from_checkpoint(tmp_path):
    from pid_export.simulate import simulate_to_file

    data = tmp_path / "sim.root"
    simulate_to_file(data, n_tracks=6000, seed=3)
    runner = CliRunner()
    out = tmp_path / "s.onnx"
    res = runner.invoke(main, ["--model", "simplenn", "--data", str(data), "--out", str(out),
                               "--epochs", "2", "--batch-size", "128"])
    assert res.exit_code == 0, res.output
    assert "parity PASS" in res.output and "O2 contract: PASS" in res.output
    ckpt = tmp_path / "s.ckpt"
    assert (ckpt / "config.json").is_file()
    report = json.loads((tmp_path / "s.report.json").read_text())
    assert report["training"]["native_files"] == [str(ckpt)]
    assert report["training"]["info"]["epochs_run"] == 2

    out2 = tmp_path / "again.onnx"
    res = runner.invoke(main, ["--model", "simplenn", "--data", str(data), "--out", str(out2),
                               "--checkpoint", str(ckpt)])
    assert res.exit_code == 0, res.output
    rows, _ = parity_rows(np.random.default_rng(0).normal(size=(50, N_FEATURES)).astype(np.float32))
    np.testing.assert_array_equal(_ort(out2.read_bytes(), rows), _ort(out.read_bytes(), rows))
    assert (tmp_path / "again.ckpt" / "config.json").is_file()  # a copy beside the new model
