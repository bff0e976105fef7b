"""The built-in fast simulation: layout, determinism, physics and the atomic file writer."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from pid_export import simulate as sim
from pid_export.errors import ConfigError, InputError

EXPECTED_BRANCHES = {
    "fPt": "float32", "fP": "float32", "fPx": "float32", "fPy": "float32", "fPz": "float32",
    "fSign": "float32", "fTPCSignal": "float32",
    "fTPCNSigmaPi": "float32", "fTPCNSigmaKa": "float32", "fTPCNSigmaPr": "float32",
    "fTPCNSigmaEl": "float32", "fTOFSignal": "float32", "fBeta": "float32",
    "fTOFNSigmaPi": "float32", "fTOFNSigmaKa": "float32", "fTOFNSigmaPr": "float32",
    "fTOFNSigmaEl": "float32",
    "fBayesPi": "int8", "fBayesKa": "int8", "fBayesPr": "int8", "fBayesEl": "int8",
    "fDcaXY": "float32", "fDcaZ": "float32", "fTpcNClsFound": "int16",
    "fITSClusterMap": "uint8", "fPdgCode": "int32", "fIsPhysicalPrimary": "uint8",
}  # fmt: skip
HYP = ("Pi", "Ka", "Pr", "El")
TPC_BRANCHES = ("fTPCNSigmaPi", "fTPCNSigmaKa", "fTPCNSigmaPr", "fTPCNSigmaEl")
TOF_BRANCHES = ("fTOFSignal", "fBeta", "fTOFNSigmaPi", "fTOFNSigmaKa", "fTOFNSigmaPr",
                "fTOFNSigmaEl")  # fmt: skip
MASS_PI, MASS_P = 0.13957039, 0.93827208816


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    return sim.simulate_arrays(120_000, seed=7)


def _apdg(a):
    return np.abs(a["fPdgCode"].astype(np.int64))


def _eta(a):
    return np.arcsinh(a["fPz"].astype(np.float64) / a["fPt"])


def _its_layers(a):
    return np.unpackbits(a["fITSClusterMap"][:, None], axis=1).sum(axis=1)


# --------------------------------------------------------------------------- layout


def test_branch_names_and_types(sample):
    assert {k: str(v.dtype) for k, v in sample.items()} == EXPECTED_BRANCHES
    assert {k: str(v) for k, v in sim.BRANCHES.items()} == EXPECTED_BRANCHES
    assert all(len(v) == 120_000 for v in sample.values())
    assert not any(name in sample for name in ("fEta", "fPhi"))


def test_kinematics_are_consistent(sample):
    pt = np.hypot(sample["fPx"], sample["fPy"])
    np.testing.assert_allclose(pt, sample["fPt"], rtol=1e-5)
    p = np.sqrt(pt.astype(np.float64) ** 2 + sample["fPz"].astype(np.float64) ** 2)
    np.testing.assert_allclose(p, sample["fP"], rtol=1e-5)
    eta = _eta(sample)
    assert np.abs(eta).max() <= 0.9 + 1e-4
    assert 0.05 < np.mean(np.abs(eta) > 0.8) < 0.2  # the |eta| < 0.8 cut removes some
    assert sample["fPt"].min() > 0.05


def test_charge_and_pdg_conventions(sample):
    pdg = sample["fPdgCode"]
    sign = sample["fSign"]
    assert set(np.unique(sign)) == {-1.0, 1.0}
    hadron = np.isin(np.abs(pdg), (211, 321, 2212))
    lepton = np.isin(np.abs(pdg), (11, 13))
    assert np.all(hadron | lepton)
    assert np.all(np.sign(pdg[hadron]) == sign[hadron])
    assert np.all(np.sign(pdg[lepton]) == -sign[lepton])  # e- is +11
    assert 0.45 < np.mean(pdg > 0) < 0.55


# --------------------------------------------------------------------------- stream


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = sim.simulate_arrays(3000, seed=11)
    b = sim.simulate_arrays(3000, seed=11)
    c = sim.simulate_arrays(3000, seed=12)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["fPt"], c["fPt"])
    assert not np.array_equal(a["fTPCSignal"], c["fTPCSignal"])


@pytest.mark.parametrize("start, n", [(0, 10), (5, 1000), (sim.BLOCK_SIZE - 3, 7), (20_000, 500)])
def test_slices_do_not_depend_on_the_cut(start, n):
    whole = sim.simulate_arrays(21_000, seed=3)
    part = sim.simulate_arrays(n, seed=3, start=start)
    for name in whole:
        np.testing.assert_array_equal(whole[name][start:start + n], part[name])


def test_zero_tracks_and_bad_arguments():
    empty = sim.simulate_arrays(0)
    assert {k: str(v.dtype) for k, v in empty.items()} == EXPECTED_BRANCHES
    assert all(len(v) == 0 for v in empty.values())
    with pytest.raises(ConfigError, match="seed"):
        sim.simulate_arrays(10, seed=-1)
    with pytest.raises(ConfigError, match="n_tracks"):
        sim.simulate_arrays(-5)
    with pytest.raises(ConfigError, match="start"):
        sim.simulate_arrays(5, start=-1)


# --------------------------------------------------------------------------- sentinels


def test_absent_tpc_gives_sentinels(sample):
    no_tpc = sample["fTpcNClsFound"] == 0
    assert 0.01 < no_tpc.mean() < 0.05
    assert np.all((sample["fTPCSignal"] == 0) == no_tpc)
    for name in TPC_BRANCHES:
        assert np.all(sample[name][no_tpc] == -999.0)
        assert np.all(sample[name][~no_tpc] > -998.0)
    # TOF matching and Bayes need a TPC track.
    assert np.all(sample["fBeta"][no_tpc] == -999.0)
    assert np.all(sample["fBayesPi"][no_tpc] == -1)
    # ITS standalone tracks have at least four ITS clusters.
    assert _its_layers(sample)[no_tpc].min() >= 4


def test_absent_tof_gives_sentinels_in_every_tof_branch(sample):
    no_tof = sample["fTOFSignal"] == -999.0
    for name in TOF_BRANCHES:
        assert np.array_equal(sample[name] == -999.0, no_tof), name
        assert np.all(sample[name][~no_tof] > -998.0), name
    assert np.all(sample["fTOFSignal"][~no_tof] > 0)
    assert np.all(sample["fBeta"][~no_tof] > 0)


def test_bayes_percent_and_availability(sample):
    bayes = np.stack([sample[f"fBayes{h}"] for h in HYP], axis=1).astype(np.int64)
    available = bayes[:, 0] >= 0
    # All four are -1 together, or all four are percentages.
    assert np.all((bayes >= 0).all(axis=1) == available)
    assert np.all(bayes[~available] == -1)
    assert bayes[available].min() >= 0 and bayes[available].max() <= 100
    total = bayes[available].sum(axis=1)
    assert total.max() <= 100
    # Truncation loses at most 3 points; pidBayes' flat fallback (1/9 each) gives 44.
    assert np.all((total >= 97) | (total == 44))
    assert np.mean(total == 44) < 0.01

    low = sample["fPt"] < 1.0
    assert available.mean() == pytest.approx(0.08, abs=0.01)
    assert available[low].mean() == pytest.approx(0.065, abs=0.01)
    assert available[~low].mean() > available[low].mean()


def test_bayes_probabilities_point_at_the_true_species(sample):
    bayes = np.stack([sample[f"fBayes{h}"] for h in HYP], axis=1)
    available = bayes[:, 0] >= 0
    truth = np.searchsorted([11, 211, 321, 2212], _apdg(sample))  # e, pi, K, p
    best = np.array([3, 0, 1, 2])[truth]  # hypothesis index of the true species
    known = available & (_apdg(sample) != 13)
    agree = np.argmax(bayes[known], axis=1) == best[known]
    assert 0.7 < agree.mean() < 0.99


# --------------------------------------------------------------------------- TPC


def test_bethe_bloch_shape():
    bg = np.array([0.5, 1.0, 3.5, 4.0, 100.0, 1e4])
    bb = sim.bethe_bloch_aleph(bg)
    assert bb[0] > bb[1] > bb[2]  # 1/beta^2 rise at low beta*gamma
    assert 0.9 < bb[2] < 1.0 and 0.9 < bb[3] < 1.0  # minimum ionising, default parameters
    assert bb[5] > bb[4] > 1.3  # relativistic rise towards the electron plateau


def test_pion_tpc_signal_at_minimum_ionisation(sample):
    bg = sample["fP"] / MASS_PI
    sel = (_apdg(sample) == 211) & (bg > 3) & (bg < 4) & (sample["fTpcNClsFound"] > 0)
    assert sel.sum() > 1000
    assert np.median(sample["fTPCSignal"][sel]) == pytest.approx(50.0, rel=0.02)


@pytest.mark.parametrize("pdg, hyp", [(211, "Pi"), (321, "Ka"), (2212, "Pr"), (11, "El")])
def test_tpc_nsigma_of_the_true_hypothesis(sample, pdg, hyp):
    sel = (_apdg(sample) == pdg) & (sample["fTpcNClsFound"] > 0)
    nsigma = sample[f"fTPCNSigma{hyp}"][sel]
    # Centred at (1.05 - 1) / 0.07 = 0.7 by the simulated gain; unit width.
    assert np.median(nsigma) == pytest.approx(0.7, abs=0.15)
    width = np.subtract(*np.percentile(nsigma, [84.1, 15.9])) / 2
    assert 0.85 < width < 1.2


def test_tpc_clusters_and_its_map(sample):
    ncls = sample["fTpcNClsFound"]
    with_tpc = ncls > 0
    assert ncls.max() <= 159
    assert np.mean((ncls[with_tpc] >= 80) & (ncls[with_tpc] <= 159)) > 0.9
    assert 0.01 < np.mean(ncls[with_tpc] < 70) < 0.08
    layers = _its_layers(sample)
    assert sample["fITSClusterMap"].max() < 128
    assert np.mean(layers >= 3) > 0.85
    assert 0.03 < np.mean(layers < 3) < 0.15


# --------------------------------------------------------------------------- TOF


def test_tof_beta_orders_species_at_the_same_momentum(sample):
    p = sample["fP"]
    has_tof = sample["fBeta"] > 0
    window = (p > 0.9) & (p < 1.1) & has_tof
    pion = sample["fBeta"][window & (_apdg(sample) == 211)]
    proton = sample["fBeta"][window & (_apdg(sample) == 2212)]
    assert len(pion) > 500 and len(proton) > 50
    assert np.median(proton) < np.median(pion) - 0.15
    expected_pion = 1.0 / np.sqrt(1.0 + (MASS_PI / 1.0) ** 2)
    expected_proton = 1.0 / np.sqrt(1.0 + (MASS_P / 1.0) ** 2)
    assert np.median(pion) == pytest.approx(expected_pion, abs=0.01)
    assert np.median(proton) == pytest.approx(expected_proton, abs=0.02)


def test_tof_nsigma_of_the_true_hypothesis(sample):
    sel = (_apdg(sample) == 211) & (sample["fBeta"] > 0) & (sample["fPt"] > 0.5)
    nsigma = sample["fTOFNSigmaPi"][sel]
    assert np.median(nsigma) == pytest.approx(0.0, abs=0.25)
    core = np.subtract(*np.percentile(nsigma, [75, 25])) / 1.349
    assert 0.8 < core < 1.4


def test_tof_matching_efficiency(sample):
    pt = sample["fPt"]
    has_tof = sample["fBeta"] > 0
    assert has_tof[pt < 0.3].mean() < 0.05
    assert has_tof[(pt > 0.5) & (pt < 1.0)].mean() > 0.3
    plateau = has_tof[pt > 1.0].mean()
    assert 0.55 < plateau < 0.7


# --------------------------------------------------------------------------- composition


def test_composition(sample):
    counts = sim.species_counts(sample["fPdgCode"])
    n = len(sample["fPdgCode"])
    assert sum(counts.values()) == n
    assert 0.12 < counts["kaon"] / counts["pion"] < 0.19
    assert 0.035 < counts["proton"] / counts["pion"] < 0.07
    assert 0.007 < counts["electron"] / n < 0.013
    assert 0.002 < counts["other"] / n < 0.008
    assert set(np.unique(_apdg(sample)[~np.isin(_apdg(sample), (211, 321, 2212, 11))])) == {13}


def test_spectra_heavier_species_are_harder_and_electrons_fall(sample):
    pt, apdg = sample["fPt"], _apdg(sample)
    mean = {code: pt[apdg == code].mean() for code in (211, 321, 2212)}
    assert mean[211] < mean[321] < mean[2212]
    low, high = pt < 0.5, (pt > 1.0)
    assert (apdg[low] == 11).mean() > 2 * (apdg[high] == 11).mean()


# --------------------------------------------------------------------------- DCA, primaries


def test_dca_resolution_of_primaries(sample):
    primary = sample["fIsPhysicalPrimary"] == 1
    inner = (sample["fITSClusterMap"] & 0b111) > 0
    pt = sample["fPt"]
    sel = primary & inner & (_apdg(sample) == 211) & (pt > 1.0) & (pt < 2.0)
    expected = 0.00057 + 0.00186 / pt[sel]
    pull = sample["fDcaXY"][sel] / expected
    # Median |pull| of a unit Gaussian is 0.674; a few % carry 3x tails.
    assert np.median(np.abs(pull)) == pytest.approx(0.674, rel=0.1)


def test_secondaries_have_wide_dca_tails_and_no_primary_flag(sample):
    apdg = _apdg(sample)
    primary = sample["fIsPhysicalPrimary"] == 1
    assert np.all(~primary[apdg == 13])
    assert np.all(primary[apdg == 321])
    secondary_pions = (apdg == 211) & ~primary
    secondary_protons = (apdg == 2212) & ~primary
    assert 0.04 < secondary_pions.sum() / (apdg == 211).sum() < 0.1
    assert 0.15 < secondary_protons.sum() / (apdg == 2212).sum() < 0.35
    wide = np.abs(sample["fDcaXY"]) > 0.105
    assert wide[secondary_pions].mean() > 0.5
    assert wide[primary & (sample["fITSClusterMap"] > 0)].mean() < 0.02


def test_each_dpg_cut_removes_something(sample):
    cuts = {
        "eta": np.abs(_eta(sample)) < 0.8,
        "dcaxy": np.abs(sample["fDcaXY"]) < 0.105,
        "dcaz": np.abs(sample["fDcaZ"]) < 0.12,
        "tpc": sample["fTpcNClsFound"] >= 70,
        "its": _its_layers(sample) >= 3,
    }
    for name, passed in cuts.items():
        assert 0.005 < 1.0 - passed.mean() < 0.2, name
    kept = np.logical_and.reduce(list(cuts.values()))
    assert 0.6 < kept.mean() < 0.85
    primary = sample["fIsPhysicalPrimary"] == 1
    assert (~primary[kept]).mean() < (~primary).mean() / 2  # the cuts favour primaries


def test_classes_are_learnable_but_not_trivially():
    xgb = pytest.importorskip("xgboost")
    from pid_export.features import encode, pdg_to_class

    a = sim.simulate_arrays(40_000, seed=231)
    eta = _eta(a)
    raw = {"pt": a["fPt"], "eta": eta, "phi": np.mod(np.arctan2(a["fPy"], a["fPx"]), 2 * np.pi),
           "tpcSignal": a["fTPCSignal"], "beta": a["fBeta"], "dcaXY": a["fDcaXY"],
           "dcaZ": a["fDcaZ"], "hasTPC": a["fTpcNClsFound"] > 0, "hasTOF": a["fBeta"] > 0}
    for h in HYP:
        raw[f"tpcNSigma{h}"] = a[f"fTPCNSigma{h}"]
        raw[f"tofNSigma{h}"] = a[f"fTOFNSigma{h}"]
        raw[f"bayes{h}"] = a[f"fBayes{h}"]
    x, y = encode(raw), pdg_to_class(a["fPdgCode"])
    keep = ((np.abs(eta) < 0.8) & (np.abs(a["fDcaXY"]) < 0.105) & (np.abs(a["fDcaZ"]) < 0.12)
            & (a["fTpcNClsFound"] >= 70) & (_its_layers(a) >= 3) & (y >= 0))
    x, y = x[keep], y[keep]
    test = np.arange(len(y)) % 5 == 0
    clf = xgb.XGBClassifier(n_estimators=40, max_depth=5, learning_rate=0.3, n_jobs=1,
                            tree_method="hist", max_bin=64, objective="multi:softprob")
    clf.fit(x[~test], y[~test])
    accuracy = np.mean(clf.predict(x[test]) == y[test])
    majority = np.mean(y[test] == 0)
    assert majority + 0.05 < accuracy < 0.99


# --------------------------------------------------------------------------- file


def test_file_round_trip(tmp_path, caplog):
    uproot = pytest.importorskip("uproot")
    path = tmp_path / "sim.root"
    with caplog.at_level(logging.INFO, logger="pid_export.simulate"):
        summary = sim.simulate_to_file(path, n_tracks=2500, seed=5, tracks_per_df=1000)
    assert any("2500" in r.getMessage() for r in caplog.records)
    assert summary["n_tracks"] == 2500 and summary["n_df"] == 3
    assert summary["seed"] == 5 and summary["path"] == str(path)
    assert set(summary["species"]) == {"pion", "kaon", "proton", "electron", "other"}
    assert sum(summary["species"].values()) == 2500
    assert [p.name for p in tmp_path.iterdir()] == ["sim.root"]  # no temporary left

    expected = sim.simulate_arrays(2500, seed=5)
    assert summary["species"] == sim.species_counts(expected["fPdgCode"])
    with uproot.open(path) as f:
        folders = sorted(k.split(";")[0] for k, c in f.classnames(recursive=False).items()
                         if c == "TDirectory")
        assert folders == ["DF_1", "DF_2", "DF_3"]
        trees = [f[f"{df}/O2pidtracksmc"] for df in folders]
        assert [t.num_entries for t in trees] == [1000, 1000, 500]
        got = {k: np.concatenate([t[k].array(library="np") for t in trees]) for k in expected}
    for name, values in expected.items():
        assert got[name].dtype == values.dtype, name
        np.testing.assert_array_equal(got[name], values)


def test_the_reader_reads_the_file(tmp_path):
    reader = pytest.importorskip("pid_export.reader")
    path = tmp_path / "sim.root"
    sim.simulate_to_file(path, n_tracks=3000, seed=9, tracks_per_df=1200)
    chunks = list(reader.iter_chunks([path]))
    x = np.concatenate([c.x for c in chunks])
    pdg = np.concatenate([c.pdg for c in chunks])
    a = sim.simulate_arrays(3000, seed=9)
    assert len(x) == 3000
    np.testing.assert_array_equal(pdg, a["fPdgCode"])
    has_tof = a["fBeta"] > 0
    assert np.all(np.isnan(x[~has_tof, 8:13])) and not np.any(np.isnan(x[has_tof, 8:13]))
    available = a["fBayesPi"] >= 0
    np.testing.assert_allclose(x[available, 13], a["fBayesPi"][available] / 100.0, rtol=1e-6)


def test_file_independent_of_tracks_per_df(tmp_path):
    uproot = pytest.importorskip("uproot")
    one, many = tmp_path / "one.root", tmp_path / "many.root"
    sim.simulate_to_file(one, n_tracks=1500, seed=2, tracks_per_df=1500)
    sim.simulate_to_file(many, n_tracks=1500, seed=2, tracks_per_df=333)
    with uproot.open(one) as f1, uproot.open(many) as f2:
        a = f1["DF_1/O2pidtracksmc"]["fTPCSignal"].array(library="np")
        dfs = sorted((k.split(";")[0] for k in f2.keys(recursive=False)), key=lambda s: int(s[3:]))
        assert len(dfs) == 5
        b = np.concatenate([f2[f"{d}/O2pidtracksmc"]["fTPCSignal"].array(library="np") for d in dfs])
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- atomic writing


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        sim.simulate_to_file(tmp_path / "nope" / "sim.root", n_tracks=10)
    assert list(tmp_path.iterdir()) == []


def test_target_that_is_a_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        sim.simulate_to_file(tmp_path, n_tracks=10)


def test_unwritable_folder_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sim.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(InputError, match="not writable"):
        sim.simulate_to_file(tmp_path / "sim.root", n_tracks=10)
    assert list(tmp_path.iterdir()) == []


def test_refused_temporary_file_is_an_input_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sim.os, "open", refuse)
    with pytest.raises(InputError, match="cannot create"):
        sim.simulate_to_file(tmp_path / "sim.root", n_tracks=10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write to a read-only folder")
def test_read_only_folder_for_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError):
            sim.simulate_to_file(folder / "sim.root", n_tracks=10)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("error", [RuntimeError("injected"), OSError(28, "No space left")])
def test_error_while_writing_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch, error):
    target = tmp_path / "sim.root"
    target.write_bytes(b"previous content")
    real_write = sim._write_df

    def fail_on_second(out, index, arrays):
        if index == 2:
            raise error
        real_write(out, index, arrays)

    monkeypatch.setattr(sim, "_write_df", fail_on_second)
    expected = InputError if isinstance(error, OSError) else RuntimeError
    with pytest.raises(expected):
        sim.simulate_to_file(target, n_tracks=300, tracks_per_df=100)
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["sim.root"]


def test_error_before_any_file_exists_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sim, "_write_df", boom)
    with pytest.raises(KeyboardInterrupt):
        sim.simulate_to_file(tmp_path / "sim.root", n_tracks=50)
    assert list(tmp_path.iterdir()) == []


def test_written_file_mode_follows_the_umask(tmp_path):
    path = tmp_path / "sim.root"
    sim.simulate_to_file(path, n_tracks=20)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_file_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="n_tracks"):
        sim.simulate_to_file(tmp_path / "a.root", n_tracks=0)
    with pytest.raises(ConfigError, match="tracks_per_df"):
        sim.simulate_to_file(tmp_path / "a.root", n_tracks=10, tracks_per_df=0)
    assert list(tmp_path.iterdir()) == []
