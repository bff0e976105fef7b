"""The feature specification: the single source of truth for the model input.

It takes nothing in and hands on the 22 features (order, O2 accessor, detector group),
the four classes (order, PDG code) and :func:`encode`, the one function that turns
detector-level values (as an O2 task sees them through its accessors) into the float32
vector a model is fed. The reader, the ONNX metadata, the parity gate and the C++
generator all take their facts from here (DESIGN §2).

Encoding rules, identical in Python and in the generated C++ header:

* every value of an absent detector is a quiet NaN, and so is any value at or below
  ``SENTINEL_CUT`` (AO2D writes -999 for absent TOF and TPC values);
* Bayesian probabilities arrive in percent and become probabilities (``percent / 100``
  in float32); they count as available only when all four lie in [0, 100];
* the three flags (``bayes_available``, ``has_tpc``, ``has_tof``) are 1.0 or 0.0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "CLASSES",
    "CLASS_NAMES",
    "CLASS_PDG",
    "FEATURES",
    "FEATURE_NAMES",
    "GROUPS",
    "N_CLASSES",
    "N_FEATURES",
    "SENTINEL_CUT",
    "Feature",
    "ParticleClass",
    "encode",
    "pdg_to_class",
    "spec_digest",
    "spec_dict",
]

#: Values at or below this are sentinels of an absent measurement (AO2D uses -999).
SENTINEL_CUT = -998.0


@dataclass(frozen=True)
class Feature:
    index: int
    name: str
    accessor: str  # O2 accessor (C++), or "" for derived flags
    unit: str
    group: str  # tracking, tpc, tof or bayes


@dataclass(frozen=True)
class ParticleClass:
    index: int
    name: str
    pdg: int


def _f(index: int, name: str, accessor: str, unit: str, group: str) -> Feature:
    return Feature(index, name, accessor, unit, group)


FEATURES: tuple[Feature, ...] = (
    _f(0, "pt", "pt", "GeV/c", "tracking"),
    _f(1, "eta", "eta", "", "tracking"),
    _f(2, "phi", "phi", "rad, [0, 2pi)", "tracking"),
    _f(3, "tpc_signal", "tpcSignal", "dE/dx a.u. (MIP ~ 50)", "tpc"),
    _f(4, "tpc_nsigma_pi", "tpcNSigmaPi", "", "tpc"),
    _f(5, "tpc_nsigma_ka", "tpcNSigmaKa", "", "tpc"),
    _f(6, "tpc_nsigma_pr", "tpcNSigmaPr", "", "tpc"),
    _f(7, "tpc_nsigma_el", "tpcNSigmaEl", "", "tpc"),
    _f(8, "tof_beta", "beta", "", "tof"),
    _f(9, "tof_nsigma_pi", "tofNSigmaPi", "", "tof"),
    _f(10, "tof_nsigma_ka", "tofNSigmaKa", "", "tof"),
    _f(11, "tof_nsigma_pr", "tofNSigmaPr", "", "tof"),
    _f(12, "tof_nsigma_el", "tofNSigmaEl", "", "tof"),
    _f(13, "bayes_prob_pi", "bayesPi", "probability (O2 stores percent)", "bayes"),
    _f(14, "bayes_prob_ka", "bayesKa", "probability (O2 stores percent)", "bayes"),
    _f(15, "bayes_prob_pr", "bayesPr", "probability (O2 stores percent)", "bayes"),
    _f(16, "bayes_prob_el", "bayesEl", "probability (O2 stores percent)", "bayes"),
    _f(17, "bayes_available", "", "1 or 0", "bayes"),
    _f(18, "dca_xy", "dcaXY", "cm", "tracking"),
    _f(19, "dca_z", "dcaZ", "cm", "tracking"),
    _f(20, "has_tpc", "hasTPC", "1 or 0", "tpc"),
    _f(21, "has_tof", "hasTOF", "1 or 0", "tof"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)
INDEX = {f.name: f.index for f in FEATURES}

CLASSES: tuple[ParticleClass, ...] = (
    ParticleClass(0, "pion", 211),
    ParticleClass(1, "kaon", 321),
    ParticleClass(2, "proton", 2212),
    ParticleClass(3, "electron", 11),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CLASS_PDG: tuple[int, ...] = tuple(c.pdg for c in CLASSES)
N_CLASSES = len(CLASSES)

#: Measured values of each detector group, and the flag that says the group is present.
GROUPS: dict[str, dict[str, tuple[int, ...] | int | None]] = {
    "tpc": {"values": (3, 4, 5, 6, 7), "flag": 20},
    "tof": {"values": (8, 9, 10, 11, 12), "flag": 21},
    "bayes": {"values": (13, 14, 15, 16), "flag": 17},
    "tracking": {"values": (0, 1, 2, 18, 19), "flag": None},
}
#: Groups that a detector can be missing from (tracking is always there).
ABSENT_GROUPS: tuple[str, ...] = ("tpc", "tof", "bayes")

#: Detector-level inputs of :func:`encode`, named after the O2 accessors.
RAW_INPUTS: tuple[str, ...] = (
    "pt", "eta", "phi", "tpcSignal",
    "tpcNSigmaPi", "tpcNSigmaKa", "tpcNSigmaPr", "tpcNSigmaEl",
    "beta", "tofNSigmaPi", "tofNSigmaKa", "tofNSigmaPr", "tofNSigmaEl",
    "bayesPi", "bayesKa", "bayesPr", "bayesEl",
    "dcaXY", "dcaZ", "hasTPC", "hasTOF",
)  # fmt: skip


def pdg_to_class(pdg: np.ndarray) -> np.ndarray:
    """Map PDG codes to class indices (charge conjugates share a class); -1 elsewhere."""
    apdg = np.abs(np.asarray(pdg).astype(np.int64))
    out = np.full(apdg.shape, -1, dtype=np.int64)
    for cls in CLASSES:
        out[apdg == cls.pdg] = cls.index
    return out


def _measured(values: np.ndarray) -> np.ndarray:
    """float32 copy with sentinels and non-finite values turned into NaN."""
    v = np.array(values, dtype=np.float32, copy=True)
    v[~(v > np.float32(SENTINEL_CUT))] = np.nan
    return v


def encode(raw: Mapping[str, np.ndarray], n: int | None = None) -> np.ndarray:
    """Build the float32 ``[N, 22]`` model input from detector-level values.

    ``raw`` maps the names in :data:`RAW_INPUTS` (O2 accessor names) to arrays of one
    length. A missing key means the file has no such measurement: the feature is NaN
    (for ``hasTPC``/``hasTOF``, the flag is 0 and the whole group is NaN). Bayesian
    values are in percent, as O2 stores them.
    """
    if n is None:
        n = len(next(iter(raw.values())))
    nan = np.full(n, np.nan, dtype=np.float32)

    def get(name: str) -> np.ndarray:
        if name not in raw:
            return nan.copy()
        arr = np.asarray(raw[name])
        if arr.shape != (n,):
            raise ValueError(f"encode: input {name!r} has shape {arr.shape}, expected ({n},)")
        return arr

    x = np.empty((n, N_FEATURES), dtype=np.float32)
    x[:, 0] = np.asarray(get("pt"), dtype=np.float32)
    x[:, 1] = np.asarray(get("eta"), dtype=np.float32)
    x[:, 2] = np.asarray(get("phi"), dtype=np.float32)
    x[:, 18] = np.asarray(get("dcaXY"), dtype=np.float32)
    x[:, 19] = np.asarray(get("dcaZ"), dtype=np.float32)

    has_tpc = np.nan_to_num(np.asarray(get("hasTPC"), dtype=np.float64)) > 0
    has_tof = np.nan_to_num(np.asarray(get("hasTOF"), dtype=np.float64)) > 0
    tpc = ("tpcSignal", "tpcNSigmaPi", "tpcNSigmaKa", "tpcNSigmaPr", "tpcNSigmaEl")
    tof = ("beta", "tofNSigmaPi", "tofNSigmaKa", "tofNSigmaPr", "tofNSigmaEl")
    for col, name in zip(GROUPS["tpc"]["values"], tpc):  # type: ignore[arg-type]
        v = _measured(get(name))
        v[~has_tpc] = np.nan
        x[:, col] = v
    for col, name in zip(GROUPS["tof"]["values"], tof):  # type: ignore[arg-type]
        v = _measured(get(name))
        v[~has_tof] = np.nan
        x[:, col] = v

    percent = np.stack(
        [np.asarray(get(k), dtype=np.float32) for k in ("bayesPi", "bayesKa", "bayesPr", "bayesEl")],
        axis=1,
    )
    available = np.all((percent >= 0) & (percent <= 100), axis=1)  # False for NaN and inf
    prob = percent / np.float32(100.0)
    prob[~available] = np.nan
    x[:, 13:17] = prob
    x[:, 17] = available.astype(np.float32)
    x[:, 20] = has_tpc.astype(np.float32)
    x[:, 21] = has_tof.astype(np.float32)
    return x


def mask_groups(x: np.ndarray, groups: tuple[str, ...] | list[str]) -> np.ndarray:
    """Copy of ``x`` with the named detector groups absent: values NaN, flag 0."""
    out = np.array(x, dtype=np.float32, copy=True)
    for g in groups:
        if g not in ABSENT_GROUPS:
            raise ValueError(f"unknown detector group {g!r}; choose from {', '.join(ABSENT_GROUPS)}")
        out[:, list(GROUPS[g]["values"])] = np.nan  # type: ignore[arg-type]
        out[:, GROUPS[g]["flag"]] = 0.0
    return out


def spec_dict() -> dict:
    """The specification as plain data (for metadata, reports and the C++ generator)."""
    return {
        "features": [asdict(f) for f in FEATURES],
        "classes": [asdict(c) for c in CLASSES],
        "groups": {k: {"values": list(v["values"]), "flag": v["flag"]} for k, v in GROUPS.items()},  # type: ignore[arg-type]
        "missing_value": "nan",
        "sentinel_cut": SENTINEL_CUT,
    }


def spec_digest() -> str:
    """Short SHA-256 of the specification: two artefacts with the same digest agree."""
    blob = json.dumps(spec_dict(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
