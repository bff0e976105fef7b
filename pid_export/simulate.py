"""The built-in fast simulation: labelled Run 3 Pb-Pb tracks in the AO2D layout.

Takes a seed (and a track count) and hands on what the O2Physics PID-ML producer writes
for Monte Carlo (tree ``O2pidtracksmc``, Tools/PIDML/pidMl.h, plus the Bayesian
probabilities): either arrays in memory (:func:`simulate_arrays`) or a ROOT file with
``DF_<n>`` folders (:func:`simulate_to_file`) that :mod:`pid_export.reader` reads like a
real file. The physics follows DESIGN §6; ``docs/simulation.md`` gives every number and
its source.

The track stream of a seed is cut into fixed blocks of :data:`BLOCK_SIZE` tracks, block
``b`` drawn from ``numpy.random.default_rng([seed, b])``. Track ``i`` of a seed is
therefore the same whatever slice or DF folder size asks for it: the DF folders of a file,
put end to end, are ``simulate_arrays(n_tracks, seed=seed)``.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError

__all__ = [
    "BLOCK_SIZE",
    "BRANCHES",
    "TREE_NAME",
    "bethe_bloch_aleph",
    "simulate_arrays",
    "simulate_to_file",
    "species_counts",
]

log = logging.getLogger(__name__)

#: Tree written inside each DF folder (the PID-ML producer's MC table).
TREE_NAME = "O2pidtracksmc"

#: Tracks per random-number block; the unit that makes the stream independent of chunking.
BLOCK_SIZE = 16_384

#: Branches of ``O2pidtracksmc`` and their types, in the order they are written.
BRANCHES: dict[str, np.dtype] = {
    name: np.dtype(kind)
    for name, kind in (
        ("fPt", "f4"), ("fP", "f4"), ("fPx", "f4"), ("fPy", "f4"), ("fPz", "f4"),
        ("fSign", "f4"), ("fTPCSignal", "f4"),
        ("fTPCNSigmaPi", "f4"), ("fTPCNSigmaKa", "f4"), ("fTPCNSigmaPr", "f4"),
        ("fTPCNSigmaEl", "f4"), ("fTOFSignal", "f4"), ("fBeta", "f4"),
        ("fTOFNSigmaPi", "f4"), ("fTOFNSigmaKa", "f4"), ("fTOFNSigmaPr", "f4"),
        ("fTOFNSigmaEl", "f4"),
        ("fBayesPi", "i1"), ("fBayesKa", "i1"), ("fBayesPr", "i1"), ("fBayesEl", "i1"),
        ("fDcaXY", "f4"), ("fDcaZ", "f4"), ("fTpcNClsFound", "i2"),
        ("fITSClusterMap", "u1"), ("fPdgCode", "i4"), ("fIsPhysicalPrimary", "u1"),
    )
}  # fmt: skip

#: Value AO2D writes for a measurement the track does not have.
SENTINEL = -999.0

# --------------------------------------------------------------------------- species
# Internal species index: 0 pion, 1 kaon, 2 proton, 3 electron, 4 muon. The first four
# are also the PID hypotheses, in the branch order Pi, Ka, Pr, El.
SPECIES = ("pion", "kaon", "proton", "electron", "muon")
PDG = np.array([211, 321, 2212, 11, 13])
MASS = np.array([0.13957039, 0.493677, 0.93827208816, 0.00051099895, 0.1056583755])  # GeV
# Leptons with a positive PDG code are negative (e-, mu-); hadrons are the reverse.
PDG_CHARGE = np.array([1, 1, 1, -1, -1])
HYPOTHESES = ("Pi", "Ka", "Pr", "El")

# Integrated yields relative to pions, central Pb-Pb (arXiv:1303.0737, arXiv:1910.07678).
YIELD_RATIO = {"pion": 1.0, "kaon": 0.15, "proton": 0.05}
ELECTRON_FRACTION = 0.01  # of generated tracks
MUON_FRACTION = 0.005  # of generated tracks: decays in flight, the "other species" path

# Blast-wave (Schnedermann-Sollfrank-Heinz) freeze-out: T, mean transverse flow, profile.
BW_TEMPERATURE = 0.090  # GeV
BW_MEAN_BETA = 0.65
BW_PROFILE_N = 0.71
# Hard (power-law) component the blast-wave leaves out, as a share of each hadron's yield:
# pions 10 %, kaons and protons 20 % (hard yields K/pi = 0.3, p/pi = 0.1, as from jet
# fragmentation), shape pT (1 + (mT - m) / (n T))^-n.
HARD_SHARE = {"pion": 0.10, "kaon": 0.20, "proton": 0.20}
HARD_N, HARD_T = 7.0, 0.25  # exponent, GeV
ELECTRON_SLOPE = 0.20  # GeV: soft (conversion and Dalitz) electron component
ELECTRON_SOFT_SHARE = 0.75  # the rest follows the pion shape
PT_MIN, PT_MAX = 0.10, 10.0  # GeV/c, generated range
ETA_MAX = 0.9  # generated |eta|: a little wider than the |eta| < 0.8 selection

# --------------------------------------------------------------------------- tracking
ITS_RADIUS = np.array([2.24, 3.01, 3.78, 19.605, 24.55, 34.39, 39.34])  # cm, ITS2 layers
ITS_LAYER_EFF = np.array([0.97, 0.97, 0.97, 0.95, 0.95, 0.95, 0.95])
FRACTION_NO_TPC = 0.03  # ITS standalone tracks
FRACTION_TPC_ONLY = 0.06  # not matched to the ITS
FRACTION_FEW_ITS = 0.02  # matched with outer-barrel clusters only, each layer 35 %
FEW_ITS_LAYER_EFF = 0.35
TPC_MAX_CLUSTERS = 159
TPC_MISSING_SCALE = 18.0  # clusters: exponential shortfall below the maximum
TPC_SHORT_FRACTION = 0.05  # tracks with a short TPC segment: 40-100 clusters, flat
# Relative 1/pT resolution of ITS-TPC tracks, sigma(pT)/pT = sqrt(a^2 + (b pT)^2).
PT_RESOLUTION = (0.008, 0.004)
PT_RESOLUTION_FACTOR_POOR = 3.0  # TPC-only or ITS-only tracks

# DCA resolution of ITS-TPC tracks with an inner-barrel cluster (DESIGN §6), in cm:
# a + b / (pT beta); the quoted 5.7 um + 18.6 um / pT is for pions, beta ~ 1.
DCA_XY_RES = (0.00057, 0.00186)
DCA_Z_FACTOR = 1.1
DCA_OB_ONLY_FACTOR = 10.0  # innermost cluster at 19.6 cm
DCA_TPC_ONLY = (0.04, 0.06)  # cm, no ITS cluster at all
DCA_TAIL_FRACTION = 0.03  # primaries with a wrongly attached cluster: 3x the width
MUON_DCA_FACTOR = 2.0
# Weak-decay and conversion secondaries.
SECONDARY_FRACTION = {"pion": 0.07, "proton": 0.25, "electron": 0.40}
DECAY_LENGTH = {"pion": 3.0, "proton": 6.0}  # cm, mean transverse decay radius
DECAY_ANGLE = {"pion": 0.15, "proton": 0.04}  # rad, spread of the daughter's miss angle
DECAY_RADIUS_MAX = 80.0  # cm
CONVERSION_RADIUS = np.array([1.8, 2.24, 3.01, 3.78])  # cm: beam pipe, ITS inner barrel
CONVERSION_WEIGHT = np.array([0.4, 0.2, 0.2, 0.2])

# --------------------------------------------------------------------------- TPC
# ALEPH Bethe-Bloch (AliceO2 BetheBlochAleph.h), O2Physics default parameters.
ALEPH_PARAMS = (0.03209809958934784, 19.9768009185791, 2.5266601063857674e-16,
                2.7212300300598145, 6.080920219421387)  # fmt: skip
TPC_MIP = 50.0
TPC_CHARGE_EXPONENT = 2.3
TPC_RESOLUTION = 0.07  # relative, at TPC_NCL_REF clusters; scales as 1/sqrt(clusters)
TPC_NCL_REF = 145
# Measured signal / default-parameter expectation: real LHC22s pions at 0.3-0.6 GeV/c
# sit at 1.05 (DESIGN §6), so the simulated detector has that gain, on every species.
TPC_GAIN = 1.05

# --------------------------------------------------------------------------- TOF
SPEED_OF_LIGHT = 0.0299792458  # cm/ps
MAGNETIC_FIELD = 0.5  # T
TOF_RADIUS = 370.0  # cm
TOF_RESOLUTION = 80.0  # ps, including the event time
TOF_TAIL = 1.1  # sigma: the simulated time has an exponential tail beyond this
TOF_PLATEAU = 0.65
TOF_TURN_ON = 0.15  # GeV/c, exponential approach to the plateau above reach
TOF_MISMATCH = 0.03  # matched tracks given a hit of another particle
TOF_MISMATCH_BETA = (0.35, 1.1)

# --------------------------------------------------------------------------- Bayes
# O2Physics Common/TableProducer/PID/pidBayes.cxx: TPC Gaussian without normalisation,
# a hypothesis beyond 5 sigma gets 1 / PID::NIDs; TOF Gaussian with an exponential tail
# beyond 0.9 sigma after a mean shift of 0.07 / 0.9, divided by the expected sigma.
BAYES_TPC_RANGE = 5.0
BAYES_N_IDS = 9  # species known to o2::track::PID
BAYES_TOF_TAIL = 0.9
BAYES_TOF_SHIFT = 0.07 / 0.9
# Share of tracks with Bayes values, below and above pT = 1 GeV/c: the seed study's
# 6.5 % below 1 GeV/c and 8 % overall, given this simulation's pT spectrum.
BAYES_AVAILABLE = (0.065, 0.15)


# --------------------------------------------------------------------------- public API


def bethe_bloch_aleph(bg: np.ndarray, params: tuple[float, ...] = ALEPH_PARAMS) -> np.ndarray:
    """ALEPH parametrisation of the mean energy loss as a function of beta*gamma.

    Multiplied by the MIP value (50) and ``charge ** 2.3`` it is O2's expected TPC signal.
    """
    p1, p2, p3, p4, p5 = params
    bg = np.asarray(bg, dtype=np.float64)
    beta = bg / np.sqrt(1.0 + bg * bg)
    aa = beta**p4
    bb = np.log(p3 + (1.0 / bg) ** p5)
    return (p2 - aa - bb) * p1 / aa


def simulate_arrays(n_tracks: int, *, seed: int = 231, start: int = 0) -> dict[str, np.ndarray]:
    """Tracks ``start .. start + n_tracks`` of the simulated stream of ``seed``.

    Returns branch name -> array, with the names and types of :data:`BRANCHES`. The
    result depends only on ``seed`` and the track numbers, not on how a caller slices
    the stream.
    """
    _check_count("n_tracks", n_tracks, minimum=0)
    _check_count("start", start, minimum=0)
    _check_seed(seed)
    if n_tracks == 0:
        return {name: np.empty(0, dtype=dtype) for name, dtype in BRANCHES.items()}
    return next(_iter_chunks(seed, start, start + n_tracks, n_tracks))


def simulate_to_file(
    path: str | os.PathLike[str],
    *,
    n_tracks: int = 300_000,
    seed: int = 231,
    tracks_per_df: int = 50_000,
) -> dict:
    """Write ``n_tracks`` simulated tracks as an AO2D-style ROOT file.

    The file holds folders ``DF_1``, ``DF_2``, ... of at most ``tracks_per_df`` tracks,
    each with one tree :data:`TREE_NAME`. One folder is generated and written at a time,
    so memory does not grow with ``n_tracks``. The file is written under a temporary name
    in the target folder and renamed over ``path`` at the end: on any error the temporary
    file is removed and an existing ``path`` is left as it was.

    Returns ``{"n_tracks", "n_df", "species": {name: count}, "seed", "path"}``, with
    species pion, kaon, proton, electron and other (muons), counted from the PDG codes.
    """
    _check_count("n_tracks", n_tracks, minimum=1)
    _check_count("tracks_per_df", tracks_per_df, minimum=1)
    _check_seed(seed)
    import uproot

    target = Path(path)
    tmp = _create_temporary(target)
    counts = dict.fromkeys((*SPECIES[:4], "other"), 0)
    n_df = 0
    try:
        with uproot.recreate(tmp) as out:
            for arrays in _iter_chunks(seed, 0, n_tracks, tracks_per_df):
                n_df += 1
                _write_df(out, n_df, arrays)
                for name, count in species_counts(arrays["fPdgCode"]).items():
                    counts[name] += count
                log.debug("DF_%d: %d tracks", n_df, len(arrays["fPdgCode"]))
        os.replace(tmp, target)
    except BaseException as err:
        _remove_quietly(tmp)
        if isinstance(err, OSError):
            raise InputError(f"simulate_to_file: could not write {target}: {err}") from err
        raise

    log.info("simulated %d tracks (seed %d) in %d DF folders to %s", n_tracks, seed, n_df, target)
    return {"n_tracks": n_tracks, "n_df": n_df, "species": counts, "seed": seed,
            "path": str(target)}  # fmt: skip


def species_counts(pdg: np.ndarray) -> dict[str, int]:
    """Tracks per class (charge conjugates together) and the rest as ``other``."""
    apdg = np.abs(np.asarray(pdg, dtype=np.int64))
    counts = {name: int(np.count_nonzero(apdg == code)) for name, code in zip(SPECIES[:4], PDG[:4])}
    counts["other"] = int(apdg.size - sum(counts.values()))
    return counts


# --------------------------------------------------------------------------- file writing


def _check_count(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"simulate: {name} must be an integer >= {minimum}, got {value!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"simulate: seed must be an integer >= 0, got {seed!r}; "
                          "choose a non-negative seed (default 231)")


def _create_temporary(target: Path) -> Path:
    """Create an empty temporary file beside ``target`` (same file system, so rename is atomic)."""
    folder = target.parent
    if target.is_dir():
        raise InputError(f"simulate_to_file: {target} is a folder; give a file name such as "
                         f"{target / 'sim.root'}")
    if not folder.is_dir():
        raise InputError(f"simulate_to_file: output folder {folder} does not exist; "
                         "create it or choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"simulate_to_file: output folder {folder} is not writable; "
                         "choose a folder you can write to")
    tmp = folder / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        # 0o666 and O_EXCL: the umask sets the final file's mode, and nothing is clobbered.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise InputError(f"simulate_to_file: cannot create a file in {folder} ({err}); "
                         "choose a folder you can write to") from err
    os.close(fd)
    return tmp


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:  # the original error matters more; say what is left behind
        log.warning("could not remove temporary file %s: %s", path, err)


def _write_df(out, index: int, arrays: dict[str, np.ndarray]) -> None:
    tree = out.mktree(f"DF_{index}/{TREE_NAME}", dict(BRANCHES))
    tree.extend(arrays)


# --------------------------------------------------------------------------- the stream


def _iter_chunks(seed: int, start: int, stop: int, size: int) -> Iterator[dict[str, np.ndarray]]:
    """Tracks ``start .. stop`` of the stream in chunks of ``size`` (the last may be short)."""
    pending: list[dict[str, np.ndarray]] = []
    n_pending = 0
    for part in _iter_block_slices(seed, start, stop):
        pending.append(part)
        n_pending += len(part["fPdgCode"])
        if n_pending < size:
            continue
        merged = _concatenate(pending)
        first = 0
        while n_pending - first >= size:
            yield {k: v[first:first + size] for k, v in merged.items()}
            first += size
        n_pending -= first
        pending = [{k: v[first:] for k, v in merged.items()}] if n_pending else []
    if n_pending:
        yield _concatenate(pending)


def _iter_block_slices(seed: int, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
    """The parts of the blocks that cover tracks ``start .. stop``, in order."""
    position = start
    while position < stop:
        block, offset = divmod(position, BLOCK_SIZE)
        take = min(BLOCK_SIZE - offset, stop - position)
        arrays = _generate_block(seed, block)
        yield {k: v[offset:offset + take] for k, v in arrays.items()}
        position += take


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in BRANCHES}


def _generate_block(seed: int, block: int) -> dict[str, np.ndarray]:
    """All branches for one block of BLOCK_SIZE tracks (float64 inside, cast at the end)."""
    rng = np.random.default_rng([seed, block])
    n = BLOCK_SIZE
    t = _sample_particles(rng, n)
    _sample_tracking(rng, t)
    out: dict[str, np.ndarray] = {}
    out.update(_tpc_response(rng, t))
    out.update(_tof_response(rng, t))
    out.update(_bayes(rng, t, out))
    out.update(_dca(rng, t))

    out["fPt"] = t["pt"]
    out["fP"] = t["p"]
    out["fPx"] = t["pt"] * np.cos(t["phi"])
    out["fPy"] = t["pt"] * np.sin(t["phi"])
    out["fPz"] = t["pt"] * np.sinh(t["eta"])
    out["fSign"] = t["charge"]
    out["fTpcNClsFound"] = t["tpc_ncls"]
    out["fITSClusterMap"] = t["its_map"]
    out["fPdgCode"] = t["pdg"]
    out["fIsPhysicalPrimary"] = t["primary"]
    return {name: np.asarray(out[name]).astype(dtype) for name, dtype in BRANCHES.items()}


# --------------------------------------------------------------------------- particles


def _sample_particles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Species, charge, true kinematics and origin (primary or secondary) of n tracks."""
    fractions, tables = _spectra()
    species = rng.choice(len(SPECIES), size=n, p=fractions)
    positive = rng.random(n) < 0.5
    charge = np.where(positive, 1.0, -1.0)
    pdg = PDG[species] * np.where(positive, 1, -1) * PDG_CHARGE[species]

    u = rng.random(n)
    pt_true = np.empty(n)
    for s, (grid, cdf) in enumerate(tables):
        sel = species == s
        pt_true[sel] = np.interp(u[sel], cdf, grid)
    eta = rng.uniform(-ETA_MAX, ETA_MAX, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)

    # Origin: transverse radius of the production point (0 for primaries).
    u_sec = rng.random(n)
    u_len = rng.exponential(1.0, n)
    conv = rng.choice(len(CONVERSION_RADIUS), size=n, p=CONVERSION_WEIGHT)
    radius = np.zeros(n)
    secondary = np.zeros(n, dtype=bool)
    for name, frac in SECONDARY_FRACTION.items():
        s = SPECIES.index(name)
        sel = (species == s) & (u_sec < frac)
        secondary |= sel
        if name == "electron":
            radius[sel] = CONVERSION_RADIUS[conv[sel]]
        else:
            radius[sel] = np.minimum(u_len[sel] * DECAY_LENGTH[name], DECAY_RADIUS_MAX)
    primary = ~secondary & (species != SPECIES.index("muon"))
    return {"species": species, "charge": charge, "pdg": pdg, "pt_true": pt_true, "eta": eta,
            "phi": phi, "radius": radius, "secondary": secondary,
            "primary": primary.astype(np.uint8)}  # fmt: skip


@lru_cache(maxsize=1)
def _spectra() -> tuple[np.ndarray, tuple[tuple[np.ndarray, np.ndarray], ...]]:
    """Species fractions of generated tracks and inverse-CDF tables of pT per species."""
    grid = np.geomspace(PT_MIN, PT_MAX, 4000)
    below = np.linspace(0.0, PT_MIN, 400)
    full = np.concatenate([below, grid[1:]])
    shapes, accepted = [], []
    for s, name in enumerate(SPECIES[:3]):
        soft, hard = _blast_wave(full, MASS[s]), _power_law(full, MASS[s])
        shape = ((1.0 - HARD_SHARE[name]) * soft / np.trapezoid(soft, full)
                 + HARD_SHARE[name] * hard / np.trapezoid(hard, full))
        inside = shape[len(below) - 1:]
        shapes.append(inside)
        accepted.append(np.trapezoid(inside, grid))
    pion = shapes[0] / np.trapezoid(shapes[0], grid)
    soft = grid * np.exp(-grid / ELECTRON_SLOPE)
    soft /= np.trapezoid(soft, grid)
    shapes.append(ELECTRON_SOFT_SHARE * soft + (1.0 - ELECTRON_SOFT_SHARE) * pion)
    shapes.append(pion)  # muons from pion and kaon decays: the pion shape

    hadrons = np.array([YIELD_RATIO[name] for name in SPECIES[:3]]) * np.array(accepted)
    hadrons *= (1.0 - ELECTRON_FRACTION - MUON_FRACTION) / hadrons.sum()
    fractions = np.append(hadrons, [ELECTRON_FRACTION, MUON_FRACTION])

    tables = []
    for shape in shapes:
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (shape[1:] + shape[:-1]) * np.diff(grid))])
        tables.append((grid, cdf / cdf[-1]))
    return fractions, tuple(tables)


def _power_law(pt: np.ndarray, mass: float) -> np.ndarray:
    """Unnormalised Tsallis-like dN/dpT for the hard component."""
    mt = np.sqrt(pt**2 + mass**2)
    return pt * (1.0 + (mt - mass) / (HARD_N * HARD_T)) ** (-HARD_N)


def _blast_wave(pt: np.ndarray, mass: float) -> np.ndarray:
    """Unnormalised blast-wave dN/dpT on a pT grid (integral over the freeze-out radius)."""
    from scipy.special import i0e, k1e

    beta_surface = BW_MEAN_BETA * (BW_PROFILE_N + 2.0) / 2.0
    r = (np.arange(200) + 0.5) / 200.0  # r / R, midpoints
    rho = np.arctanh(beta_surface * r**BW_PROFILE_N)
    pt_ = pt[:, None]
    mt = np.sqrt(pt_**2 + mass**2)
    a = pt_ * np.sinh(rho) / BW_TEMPERATURE
    b = mt * np.cosh(rho) / BW_TEMPERATURE
    # I0(a) K1(b) with the exponentials taken out, so neither overflows.
    integrand = r * mt * i0e(a) * k1e(b) * np.exp(a - b)
    return pt * integrand.mean(axis=1)


# --------------------------------------------------------------------------- tracking


def _sample_tracking(rng: np.random.Generator, t: dict[str, np.ndarray]) -> None:
    """Detector coverage (ITS map, TPC clusters) and measured momentum, into ``t``."""
    n = len(t["pt_true"])
    u_kind = rng.random(n)
    layer_hit = rng.random((n, 7)) < ITS_LAYER_EFF
    few_hit = rng.random((n, 7)) < FEW_ITS_LAYER_EFF

    # Only layers outside the production point can have a cluster.
    reachable = ITS_RADIUS[None, :] > t["radius"][:, None]
    no_tpc = (u_kind < FRACTION_NO_TPC) & (reachable.sum(axis=1) >= 4)
    tpc_only = (u_kind >= FRACTION_NO_TPC) & (u_kind < FRACTION_NO_TPC + FRACTION_TPC_ONLY)
    few = (u_kind >= FRACTION_NO_TPC + FRACTION_TPC_ONLY) & (
        u_kind < FRACTION_NO_TPC + FRACTION_TPC_ONLY + FRACTION_FEW_ITS)
    hits = layer_hit & reachable
    hits[no_tpc] = reachable[no_tpc]  # ITS standalone tracks need (and have) every layer
    hits[tpc_only] = False
    hits[few] = few_hit[few] & reachable[few]
    hits[few, :3] = False
    t["its_map"] = (hits * (1 << np.arange(7))).sum(axis=1).astype(np.uint8)
    t["its_inner"] = hits[:, :3].any(axis=1)
    t["its_any"] = hits.any(axis=1)

    missing = np.floor(rng.exponential(TPC_MISSING_SCALE, n))
    short = rng.random(n) < TPC_SHORT_FRACTION
    short_ncls = rng.integers(40, 101, n)
    ncls = np.where(short, short_ncls, TPC_MAX_CLUSTERS - missing)
    ncls = np.clip(ncls, 40, TPC_MAX_CLUSTERS)
    t["has_tpc"] = ~no_tpc
    t["tpc_ncls"] = np.where(no_tpc, 0, ncls).astype(np.int16)

    # Measured pT: Gaussian in 1/pT, worse without the ITS-TPC lever arm.
    a, b = PT_RESOLUTION
    rel = np.sqrt(a**2 + (b * t["pt_true"]) ** 2)
    rel = np.where(no_tpc | ~t["its_any"], rel * PT_RESOLUTION_FACTOR_POOR, rel)
    smear = 1.0 + rel * rng.standard_normal(n)
    t["pt_rel_res"] = rel
    t["pt"] = t["pt_true"] / np.clip(smear, 0.5, None)
    t["p"] = t["pt"] * np.cosh(t["eta"])
    t["p_true"] = t["pt_true"] * np.cosh(t["eta"])


def _dca(rng: np.random.Generator, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Distances of closest approach to the primary vertex (cm)."""
    n = len(t["pt_true"])
    species = t["species"]
    mass = MASS[species]
    beta = t["p_true"] / np.sqrt(t["p_true"] ** 2 + mass**2)
    pt_beta = t["pt_true"] * beta

    a, b = DCA_XY_RES
    sigma = a + b / pt_beta
    sigma = np.where(t["its_inner"], sigma, sigma * DCA_OB_ONLY_FACTOR)
    a_tpc, b_tpc = DCA_TPC_ONLY
    sigma = np.where(t["its_any"], sigma, a_tpc + b_tpc / pt_beta)
    sigma = np.where(rng.random(n) < DCA_TAIL_FRACTION, 3.0 * sigma, sigma)
    sigma = np.where(species == SPECIES.index("muon"), MUON_DCA_FACTOR * sigma, sigma)
    sigma_z = np.where(t["its_any"], DCA_Z_FACTOR * sigma, sigma)
    dca_xy = sigma * rng.standard_normal(n)
    dca_z = sigma_z * rng.standard_normal(n)

    # Secondaries miss the vertex by about (production radius) x (miss angle); a
    # conversion electron, born along the photon, by the sagitta R^2 / (2 x curvature radius).
    g_xy, g_z = rng.standard_normal(n), rng.standard_normal(n)
    radius = t["radius"]
    angle = np.zeros(n)
    for name, spread in DECAY_ANGLE.items():
        angle[species == SPECIES.index(name)] = spread
    conversion = t["secondary"] & (species == SPECIES.index("electron"))
    angle[conversion] = 0.005
    curvature = t["pt_true"] / (0.299792458 * MAGNETIC_FIELD) * 100.0  # cm
    sagitta = np.where(conversion, t["charge"] * radius**2 / (2.0 * curvature), 0.0)
    sec = t["secondary"]
    dca_xy = np.where(sec, dca_xy + sagitta + radius * angle * g_xy, dca_xy)
    dca_z = np.where(sec, dca_z + radius * angle * g_z * np.cosh(t["eta"]), dca_z)
    return {"fDcaXY": dca_xy, "fDcaZ": dca_z}


# --------------------------------------------------------------------------- TPC


def _tpc_response(rng: np.random.Generator, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """dE/dx and n-sigma for the four hypotheses (sentinels without TPC)."""
    n = len(t["pt_true"])
    charge_factor = np.abs(t["charge"]) ** TPC_CHARGE_EXPONENT  # 1 for every species here
    ncls = np.maximum(t["tpc_ncls"].astype(np.float64), 1.0)
    rel_res = TPC_RESOLUTION * np.sqrt(TPC_NCL_REF / ncls)

    true_bg = t["p_true"] / MASS[t["species"]]
    mean = TPC_GAIN * TPC_MIP * charge_factor * bethe_bloch_aleph(true_bg)
    signal = mean * (1.0 + rel_res * rng.standard_normal(n))
    has = t["has_tpc"]
    out = {"fTPCSignal": np.where(has, signal, 0.0)}
    for h, name in enumerate(HYPOTHESES):
        expected = TPC_MIP * charge_factor * bethe_bloch_aleph(t["p"] / MASS[h])
        expected = np.maximum(expected, 1e-3)
        nsigma = (signal - expected) / (rel_res * expected)
        out[f"fTPCNSigma{name}"] = np.where(has, nsigma, SENTINEL)
    return out


# --------------------------------------------------------------------------- TOF


def _track_length(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Helix length (cm) from the vertex to the TOF radius; NaN when the track curls up first."""
    curvature = pt / (0.299792458 * MAGNETIC_FIELD) * 100.0  # cm
    ratio = TOF_RADIUS / (2.0 * curvature)
    with np.errstate(invalid="ignore"):
        arc = 2.0 * curvature * np.arcsin(np.where(ratio <= 1.0, ratio, np.nan))
    return arc * np.cosh(eta)


def _tof_response(rng: np.random.Generator, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Time of flight (ps), beta and n-sigma for the four hypotheses (sentinels unmatched)."""
    n = len(t["pt_true"])
    reach = TOF_RADIUS * 0.299792458 * MAGNETIC_FIELD / 200.0  # GeV/c: 2 rho = R
    above = np.clip(t["pt_true"] - reach, 0.0, None)
    efficiency = TOF_PLATEAU * (1.0 - np.exp(-above / TOF_TURN_ON))
    matched = t["has_tpc"] & (t["pt_true"] > reach) & (rng.random(n) < efficiency)
    mismatched = rng.random(n) < TOF_MISMATCH
    beta_random = rng.uniform(*TOF_MISMATCH_BETA, n)
    x = _gauss_with_tail(rng, n, TOF_TAIL)

    # The integrated length along the fitted track is precise: one length serves the
    # flight and the expectation; momentum errors enter through p only.
    length = _track_length(t["pt_true"], t["eta"])
    matched &= np.isfinite(length)
    length = np.where(matched, length, TOF_RADIUS)

    mass = MASS[t["species"]]
    true_beta = t["p_true"] / np.sqrt(t["p_true"] ** 2 + mass**2)
    time = length / (true_beta * SPEED_OF_LIGHT) + TOF_RESOLUTION * x
    time = np.where(mismatched, length / (beta_random * SPEED_OF_LIGHT), time)
    beta = length / (time * SPEED_OF_LIGHT)

    out = {"fTOFSignal": np.where(matched, time, SENTINEL),
           "fBeta": np.where(matched, beta, SENTINEL)}  # fmt: skip
    sigmas = []
    for h, name in enumerate(HYPOTHESES):
        energy_over_p = np.sqrt(1.0 + (MASS[h] / t["p"]) ** 2)
        expected = length * energy_over_p / SPEED_OF_LIGHT
        # Momentum resolution: dt/t = -(m^2 / E^2) dp/p.
        sigma_p = expected * (MASS[h] / t["p"]) ** 2 / energy_over_p**2 * t["pt_rel_res"]
        sigma = np.sqrt(TOF_RESOLUTION**2 + sigma_p**2)
        sigmas.append(sigma)
        out[f"fTOFNSigma{name}"] = np.where(matched, (time - expected) / sigma, SENTINEL)
    t["tof_matched"] = matched
    t["tof_sigma"] = np.stack(sigmas, axis=1)
    return out


def _gauss_with_tail(rng: np.random.Generator, n: int, tail: float) -> np.ndarray:
    """Unit Gaussian up to ``tail``, continued by the exponential that joins it smoothly."""
    from scipy.special import ndtri

    core_mass = math.sqrt(2.0 * math.pi) * 0.5 * (1.0 + math.erf(tail / math.sqrt(2.0)))
    tail_mass = math.exp(-0.5 * tail * tail) / tail
    in_tail = rng.random(n) < tail_mass / (core_mass + tail_mass)
    u = 1.0 - rng.random(n)  # in (0, 1]: ndtri(0) would be -inf
    core = ndtri(u * 0.5 * (1.0 + math.erf(tail / math.sqrt(2.0))))
    beyond = tail + rng.exponential(1.0 / tail, n)
    return np.where(in_tail, beyond, core)


# --------------------------------------------------------------------------- Bayes


def _bayes(rng: np.random.Generator, t: dict[str, np.ndarray], out: dict[str, np.ndarray]
           ) -> dict[str, np.ndarray]:
    """Bayesian probabilities in percent (int8), -1 where the track has none."""
    n = len(t["pt_true"])
    share = np.where(t["pt"] < 1.0, BAYES_AVAILABLE[0], BAYES_AVAILABLE[1])
    available = t["has_tpc"] & (rng.random(n) < share / (1.0 - FRACTION_NO_TPC))

    # float32 as in the C++ task, so underflow happens where it happens there.
    f32 = np.float32
    tpc = np.stack([out[f"fTPCNSigma{h}"] for h in HYPOTHESES], axis=1).astype(f32)
    like = np.where(np.abs(tpc) > BAYES_TPC_RANGE, f32(1.0 / BAYES_N_IDS),
                    np.exp(f32(-0.5) * tpc * tpc))  # fmt: skip
    tof = np.stack([out[f"fTOFNSigma{h}"] for h in HYPOTHESES], axis=1).astype(f32)
    tof = tof + f32(BAYES_TOF_SHIFT)
    with np.errstate(over="ignore"):
        tof_like = np.where(
            tof < BAYES_TOF_TAIL,
            np.exp(f32(-0.5) * tof * tof),
            np.exp(-(tof - f32(BAYES_TOF_TAIL * 0.5)) * f32(BAYES_TOF_TAIL)),
        ) / t["tof_sigma"].astype(f32)
    like = np.where(t["tof_matched"][:, None], like * tof_like, like)

    total = like.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.where(total > 0, like / total, f32(1.0 / BAYES_N_IDS))
    # The task stores prob * 100 in an int8 column: the conversion truncates.
    percent = np.trunc(prob * f32(100.0)).astype(np.int8)
    percent[~available] = -1
    return {f"fBayes{h}": percent[:, i] for i, h in enumerate(HYPOTHESES)}
