import json

import numpy as np
import pytest

from pid_export import features as F


def test_order_names_and_accessors_match_design():
    assert F.N_FEATURES == 22
    assert F.FEATURE_NAMES[:3] == ("pt", "eta", "phi")
    assert F.FEATURE_NAMES[3] == "tpc_signal"
    assert F.FEATURE_NAMES[8] == "tof_beta"
    assert F.FEATURE_NAMES[13:18] == ("bayes_prob_pi", "bayes_prob_ka", "bayes_prob_pr",
                                      "bayes_prob_el", "bayes_available")
    assert F.FEATURE_NAMES[18:] == ("dca_xy", "dca_z", "has_tpc", "has_tof")
    assert [f.index for f in F.FEATURES] == list(range(22))
    assert F.FEATURES[8].accessor == "beta"
    assert F.FEATURES[4].accessor == "tpcNSigmaPi"


def test_classes_and_pdg():
    assert F.CLASS_NAMES == ("pion", "kaon", "proton", "electron")
    assert F.CLASS_PDG == (211, 321, 2212, 11)
    got = F.pdg_to_class(np.array([211, -211, 321, -321, 2212, -2212, 11, -11, 13, 1000010020, 0]))
    assert got.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1]


def test_groups_partition_the_features():
    cols = []
    for g in F.GROUPS.values():
        cols.extend(g["values"])
        if g["flag"] is not None:
            cols.append(g["flag"])
    assert sorted(cols) == list(range(22))


def _raw(n=3):
    return {
        "pt": np.array([0.5, 1.5, 3.0]), "eta": np.array([0.1, -0.2, 0.7]),
        "phi": np.array([0.1, 3.0, 6.0]), "tpcSignal": np.array([55.0, 80.0, 0.0]),
        "tpcNSigmaPi": np.array([0.3, -999.0, 1.0]), "tpcNSigmaKa": np.ones(n),
        "tpcNSigmaPr": np.ones(n), "tpcNSigmaEl": np.ones(n),
        "beta": np.array([0.99, -999.0, 0.8]), "tofNSigmaPi": np.array([0.1, -999.0, 2.0]),
        "tofNSigmaKa": np.ones(n), "tofNSigmaPr": np.ones(n), "tofNSigmaEl": np.ones(n),
        "bayesPi": np.array([90, -1, 50], dtype=np.int8), "bayesKa": np.array([5, -1, 20], dtype=np.int8),
        "bayesPr": np.array([3, -1, 20], dtype=np.int8), "bayesEl": np.array([2, -1, -1], dtype=np.int8),
        "dcaXY": np.array([0.001, 0.002, -0.01]), "dcaZ": np.array([0.0, 0.01, 0.02]),
        "hasTPC": np.array([1, 1, 0]), "hasTOF": np.array([1, 0, 1]),
    }


def test_encode_rules():
    x = F.encode(_raw())
    assert x.dtype == np.float32 and x.shape == (3, 22)
    # row 0: everything present; Bayes percent -> probability in float32
    assert x[0, 13] == np.float32(90) / np.float32(100)
    assert x[0, 17] == 1 and x[0, 20] == 1 and x[0, 21] == 1
    # row 1: sentinel in TPC n-sigma -> NaN, TOF absent -> whole group NaN, Bayes -1 -> absent
    assert np.isnan(x[1, 4]) and x[1, 3] == 80
    assert np.isnan(x[1, 8:13]).all() and x[1, 21] == 0
    assert np.isnan(x[1, 13:17]).all() and x[1, 17] == 0
    # row 2: no TPC flag -> all TPC values NaN even if numbers were given; one Bayes < 0 -> absent
    assert np.isnan(x[2, 3:8]).all() and x[2, 20] == 0
    assert np.isnan(x[2, 13:17]).all() and x[2, 17] == 0
    assert x[2, 8] == np.float32(0.8)


def test_encode_missing_inputs_are_nan_and_flags_zero():
    x = F.encode({"pt": np.array([1.0, 2.0])})
    assert x[:, 0].tolist() == [1.0, 2.0]
    assert np.isnan(x[:, 1:20][:, [i for i in range(19) if i != 16]]).all()
    assert (x[:, [17, 20, 21]] == 0).all()


def test_encode_rejects_wrong_length():
    with pytest.raises(ValueError, match="tpcSignal"):
        F.encode({"pt": np.ones(3), "tpcSignal": np.ones(2)})


def test_mask_groups():
    x = F.encode(_raw())
    m = F.mask_groups(x, ["tof", "bayes"])
    assert np.isnan(m[:, 8:17]).all() and (m[:, [17, 21]] == 0).all()
    np.testing.assert_array_equal(m[:, :8], x[:, :8])
    with pytest.raises(ValueError, match="unknown detector group"):
        F.mask_groups(x, ["trd"])


def test_spec_digest_is_stable_and_json():
    d = F.spec_dict()
    json.dumps(d)
    assert F.spec_digest() == F.spec_digest()
    assert len(F.spec_digest()) == 16
