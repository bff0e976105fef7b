import numpy as np
import pytest

from pid_export.errors import ConfigError, InputError
from pid_export.features import INDEX
from pid_export.reader import detect_layout, iter_chunks, load_column_map
from pid_export.testing import pidml_branches, write_ao2d


def test_walks_df_folders_in_chunks(tmp_path):
    path = write_ao2d(tmp_path / "a.root", [{"O2pidtracksmc": pidml_branches(n, s)} for s, n in
                                            enumerate((100, 250, 30))])
    chunks = list(iter_chunks([path], step=100))
    assert [len(c) for c in chunks] == [100, 100, 100, 50, 30]
    assert {c.folder for c in chunks} == {"DF_1000", "DF_1001", "DF_1002"}
    rows = np.concatenate([c.row for c in chunks])
    assert rows.tolist() == list(range(380))
    assert chunks[1].entry[0] == 0 and chunks[2].entry[0] == 100


def test_derives_pt_eta_phi_and_turns_sentinels_into_nan(tmp_path):
    b = pidml_branches(500, 1)
    path = write_ao2d(tmp_path / "a.root", [{"O2pidtracksmc": b}])
    (chunk,) = iter_chunks([path])
    x = chunk.x
    pt = np.hypot(b["fPx"].astype(float), b["fPy"].astype(float))
    np.testing.assert_allclose(x[:, INDEX["pt"]], b["fPt"], rtol=1e-6)
    np.testing.assert_allclose(x[:, INDEX["eta"]], np.arcsinh(b["fPz"] / pt), rtol=1e-5, atol=1e-6)
    phi = x[:, INDEX["phi"]]
    assert (phi >= 0).all() and (phi < 2 * np.pi).all()
    no_tof = b["fBeta"] == -999
    assert no_tof.any()
    assert np.isnan(x[no_tof, 8:13]).all() and (x[no_tof, INDEX["has_tof"]] == 0).all()
    assert (x[~no_tof, INDEX["has_tof"]] == 1).all()
    no_bayes = b["fBayesPi"] < 0
    assert np.isnan(x[no_bayes, 13:17]).all()
    assert np.allclose(x[~no_bayes, 13], b["fBayesPi"][~no_bayes] / 100.0)
    assert chunk.pdg.tolist() == b["fPdgCode"].tolist()
    its = np.array([bin(v).count("1") for v in b["fITSClusterMap"]])
    assert chunk.its_ncls.tolist() == its.tolist()


def test_optional_branches_missing_give_nan(tmp_path):
    b = pidml_branches(50, 2)
    for k in ("fDcaXY", "fDcaZ", "fBayesPi", "fBayesKa", "fBayesPr", "fBayesEl"):
        del b[k]
    path = write_ao2d(tmp_path / "a.root", [{"O2pidtracksmc": b}])
    (chunk,) = iter_chunks([path])
    assert np.isnan(chunk.x[:, 18:20]).all() and (chunk.x[:, 17] == 0).all()


def test_missing_required_branch_names_it(tmp_path):
    b = pidml_branches(50, 2)
    del b["fTPCNSigmaKa"]
    path = write_ao2d(tmp_path / "a.root", [{"O2pidtracksmc": b}])
    with pytest.raises(InputError, match="fTPCNSigmaKa"):
        list(iter_chunks([path]))


def test_missing_tree_in_a_later_folder(tmp_path):
    path = write_ao2d(tmp_path / "a.root", [{"O2pidtracksmc": pidml_branches(20, 0)},
                                            {"Other": {"fX": np.zeros(3)}}])
    with pytest.raises(InputError, match=r"O2pidtracksmc.*DF_1001"):
        list(iter_chunks([path]))


def test_unknown_tree_asked_for(tmp_path):
    path = write_ao2d(tmp_path / "a.root", [{"O2pidtracksmc": pidml_branches(20, 0)}])
    with pytest.raises(InputError, match="no tree 'Nope'.*O2pidtracksmc"):
        detect_layout(path, "Nope")


def test_not_a_root_file(tmp_path):
    p = tmp_path / "fake.root"
    p.write_text("hello")
    with pytest.raises(InputError, match="fake.root: not a ROOT file"):
        list(iter_chunks([p]))
    with pytest.raises(InputError, match="no such file"):
        list(iter_chunks([tmp_path / "absent.root"]))


def test_label_with_nan_is_an_error(tmp_path):
    b = pidml_branches(30, 0)
    b["fPdgCode"] = b["fPdgCode"].astype(np.float32)
    b["fPdgCode"][3] = np.nan
    path = write_ao2d(tmp_path / "a.root", [{"O2pidtracksmc": b}])
    with pytest.raises(InputError, match="fPdgCode.*1 NaN"):
        list(iter_chunks([path]))


def test_flat_tree_and_parquet(tmp_path):
    import pandas as pd
    import uproot

    b = pidml_branches(40, 3)
    flat = tmp_path / "flat.root"
    with uproot.recreate(flat) as f:
        t = f.mktree("tracks", {k: v.dtype for k, v in b.items()})
        t.extend(b)
    (c1,) = iter_chunks([flat])
    pq = tmp_path / "t.parquet"
    pd.DataFrame(b).to_parquet(pq)
    (c2,) = iter_chunks([pq])
    np.testing.assert_array_equal(c1.x, c2.x)
    assert c1.folder == ""


def test_column_map(tmp_path):
    b = pidml_branches(40, 3)
    renamed = {("pT" if k == "fPt" else k): v for k, v in b.items()}
    path = write_ao2d(tmp_path / "a.root", [{"MyTracks": renamed}])
    cmap = tmp_path / "map.toml"
    lines = ['trees = ["MyTracks"]', "optional = []", "[columns]", 'pt = "pT"',
             'px = "fPx"', 'py = "fPy"', 'pz = "fPz"', 'tpcSignal = "fTPCSignal"', 'pdg = "fPdgCode"']
    cmap.write_text("\n".join(lines) + "\n")
    (chunk,) = iter_chunks([path], layout=load_column_map(cmap))
    np.testing.assert_allclose(chunk.x[:, 0], b["fPt"])
    assert np.isnan(chunk.x[:, 4]).all()  # n-sigma not mapped
    cmap.write_text(cmap.read_text().replace('pt = "pT"', 'ptt = "pT"'))
    with pytest.raises(ConfigError, match="unknown quantities.*ptt"):
        load_column_map(cmap)


def test_real_run3_ud_file(real_ao2d):
    chunks = list(iter_chunks([real_ao2d]))
    x = np.concatenate([c.x for c in chunks])
    assert len(x) == 551 and len({c.folder for c in chunks}) == 42  # 43 folders, one empty
    assert all(c.pdg is None for c in chunks)
    # ITS-only tracks (detector map 1) have no TPC values; TOF -999 everywhere -> NaN
    assert set(np.unique(x[:, 20])) == {0.0, 1.0}
    assert np.isnan(x[x[:, 20] == 0, 3:8]).all()
    assert np.isnan(x[:, 8:17]).all() and (x[:, 21] == 0).all()
    assert np.isnan(x[:, 18:20]).all()  # no DCA in the UD tables
    assert np.isfinite(x[:, :3]).all()
