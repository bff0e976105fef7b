"""Reading tracks: AO2D-style ROOT (``DF_*`` folders), flat ROOT trees and Parquet.

Takes file paths and a :class:`Layout` (which trees to read side by side and which
branch holds which quantity) and hands on :class:`Chunk` objects: the encoded float32
``[n, 22]`` features (:func:`pid_export.features.encode`), class labels where the file has
PDG codes, and the quantities the DPG selections need. It reads one DF folder (or one
slice of a flat tree) at a time, so memory does not grow with the number of folders.

Branch names follow the O2Physics PID-ML producer (Tools/PIDML/pidMl.h, table
``PidTracksMc`` written as tree ``O2pidtracksmc``) and the ultra-peripheral derived tables
(``O2udtrack`` + ``O2udtrackextra`` + ``O2udtrackpid``). A TOML column map chooses another
layout.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError
from .features import RAW_INPUTS, encode, pdg_to_class

log = logging.getLogger(__name__)

#: Quantities a layout can map besides the encoder's inputs.
EXTRA_INPUTS = (
    "px", "py", "pz", "sign", "pdg", "tpcNCls", "itsNCls", "itsClusterMap", "detectorMap",
)  # fmt: skip
KNOWN_INPUTS = frozenset(RAW_INPUTS) | frozenset(EXTRA_INPUTS)

#: Bits of the UD tables' fDetectorMap.
DETECTOR_BITS = {"its": 1, "tpc": 2, "trd": 4, "tof": 8}

DEFAULT_STEP = 200_000


@dataclass(frozen=True)
class Layout:
    """Which trees hold the tracks and which branch holds which quantity."""

    name: str
    trees: tuple[str, ...]
    columns: dict[str, str]
    optional: frozenset[str] = field(default_factory=frozenset)

    def branches_for(self, available: set[str]) -> dict[str, str]:
        """The mapped quantities whose branch exists; error for a required one missing."""
        found, missing = {}, []
        for quantity, branch in self.columns.items():
            if branch in available:
                found[quantity] = branch
            elif quantity not in self.optional:
                missing.append(f"{branch} ({quantity})")
        if missing:
            raise KeyError(", ".join(missing))
        return found


def _pidml_columns() -> dict[str, str]:
    cols = {
        "pt": "fPt", "px": "fPx", "py": "fPy", "pz": "fPz", "sign": "fSign",
        "tpcSignal": "fTPCSignal", "beta": "fBeta", "dcaXY": "fDcaXY", "dcaZ": "fDcaZ",
        "pdg": "fPdgCode", "tpcNCls": "fTpcNClsFound", "itsClusterMap": "fITSClusterMap",
    }  # fmt: skip
    for sp in ("Pi", "Ka", "Pr", "El"):
        cols[f"tpcNSigma{sp}"] = f"fTPCNSigma{sp}"
        cols[f"tofNSigma{sp}"] = f"fTOFNSigma{sp}"
        cols[f"bayes{sp}"] = f"fBayes{sp}"
    return cols


_PIDML_OPTIONAL = frozenset(
    {"pt", "sign", "dcaXY", "dcaZ", "pdg", "tpcNCls", "itsClusterMap", "beta", "px", "py", "pz"}
    | {f"bayes{sp}" for sp in ("Pi", "Ka", "Pr", "El")}
)


def _ud_columns() -> dict[str, str]:
    cols = {
        "px": "fPx", "py": "fPy", "pz": "fPz", "sign": "fSign", "tpcSignal": "fTPCSignal",
        "detectorMap": "fDetectorMap", "itsClusterMap": "fITSClusterMap",
    }  # fmt: skip
    for sp in ("Pi", "Ka", "Pr", "El"):
        cols[f"tpcNSigma{sp}"] = f"fTPCNSigma{sp}"
        cols[f"tofNSigma{sp}"] = f"fTOFNSigma{sp}"
    return cols


#: Built-in layouts. The first tree of a layout identifies it in a file.
LAYOUTS: dict[str, Layout] = {
    "pidml-mc": Layout("pidml-mc", ("O2pidtracksmc",), _pidml_columns(), _PIDML_OPTIONAL),
    "pidml-data": Layout("pidml-data", ("O2pidtracksdata",), _pidml_columns(), _PIDML_OPTIONAL),
    "ud": Layout("ud", ("O2udtrack", "O2udtrackextra", "O2udtrackpid"), _ud_columns(),
                 frozenset({"sign", "itsClusterMap"})),
}
DEFAULT_TREE = "O2pidtracksmc"


def load_column_map(path: str | Path) -> Layout:
    """Read a user's TOML column map.

    ``trees = ["MyTree"]`` (read side by side), a ``[columns]`` table mapping quantities
    (O2 accessor names such as ``tpcSignal``, plus ``px``/``py``/``pz``, ``pdg``,
    ``tpcNCls``, ``itsClusterMap``, ``detectorMap``) to branch names, and optionally
    ``optional = [...]`` quantities that may be absent from a file.
    """
    path = Path(path)
    try:
        cfg = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the column map: {err}") from err
    unknown_keys = set(cfg) - {"trees", "columns", "optional", "name"}
    if unknown_keys:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown_keys)}; expected trees, columns, optional")
    trees = cfg.get("trees")
    if isinstance(trees, str):
        trees = [trees]
    if not trees or not all(isinstance(t, str) for t in trees):
        raise ConfigError(f"{path}: 'trees' must name at least one tree, e.g. trees = [\"O2pidtracksmc\"]")
    columns = cfg.get("columns", {})
    if not isinstance(columns, dict) or not columns:
        raise ConfigError(f"{path}: a [columns] table mapping quantities to branches is required")
    bad = sorted(set(columns) - KNOWN_INPUTS)
    if bad:
        raise ConfigError(f"{path}: unknown quantities {bad}; known: {', '.join(sorted(KNOWN_INPUTS))}")
    optional = cfg.get("optional", [])
    bad = sorted(set(optional) - set(columns))
    if bad:
        raise ConfigError(f"{path}: 'optional' lists {bad}, which [columns] does not map")
    return Layout(cfg.get("name", path.stem), tuple(trees), dict(columns), frozenset(optional))


@dataclass
class Chunk:
    """Tracks of one slice of one file, encoded."""

    x: np.ndarray  # float32 [n, 22]
    pdg: np.ndarray | None  # int64 [n] or None when the file has no PDG codes
    tpc_ncls: np.ndarray | None
    its_ncls: np.ndarray | None
    file_index: int
    row: np.ndarray  # int64 running track number inside the file (all DF folders)
    entry: np.ndarray  # int64 entry number inside the DF folder's tree
    source: str  # "file:DF_x/tree"
    folder: str  # "DF_x", or "" for flat trees and Parquet

    def __len__(self) -> int:
        return len(self.x)


# --------------------------------------------------------------------------- files


def _open_root(path: Path):
    import uproot

    remote = "://" in str(path)
    if not remote and not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return uproot.open(str(path) if remote else path)
    except Exception as err:  # uproot raises several types for non-ROOT input
        raise InputError(f"{path}: not a ROOT file uproot can read ({type(err).__name__}: {err})") from err


def _df_folders(f) -> list[str]:
    names = []
    for key, classname in f.classnames(recursive=False).items():
        name = key.split(";")[0]
        if name.startswith("DF_") and classname == "TDirectory":
            names.append(name)
    return sorted(set(names), key=lambda s: (len(s), s))


def _trees_in(directory) -> list[str]:
    names = directory.classnames(recursive=False)
    rntuples = sorted({k.split(";")[0] for k, c in names.items() if "RNTuple" in c})
    if rntuples:
        raise InputError(f"{directory.file.file_path}: {', '.join(rntuples)} is an RNTuple, not a "
                         "TTree; AO2D files hold TTrees: write the tree with uproot's mktree "
                         "(or ROOT's TTree) and try again")
    return sorted({k.split(";")[0] for k, c in names.items() if c == "TTree"})


def detect_layout(path: Path, tree: str | None = None) -> Layout:
    """Choose a built-in layout from the trees a file holds (or the tree asked for)."""
    if Path(str(path)).suffix.lower() in (".parquet", ".pq"):
        base = LAYOUTS["pidml-mc"]
        return Layout("parquet", ("",), base.columns, base.optional)
    f = _open_root(path)
    dfs = _df_folders(f)
    trees = _trees_in(f[dfs[0]]) if dfs else _trees_in(f)
    if tree is not None:
        for layout in LAYOUTS.values():
            if layout.trees[0] == tree:
                return layout
        if tree not in trees:
            where = f"{dfs[0]}/" if dfs else ""
            raise InputError(f"{path}: no tree {tree!r} in {where or 'the file'} (trees there: "
                             f"{', '.join(trees) or 'none'}); pass --tree with one of them")
        base = LAYOUTS["pidml-mc"]
        return Layout(f"flat:{tree}", (tree,), base.columns, base.optional)
    for layout in LAYOUTS.values():
        if all(t in trees for t in layout.trees):
            return layout
    if len(trees) == 1:
        base = LAYOUTS["pidml-mc"]
        return Layout(f"flat:{trees[0]}", (trees[0],), base.columns, base.optional)
    raise InputError(
        f"{path}: cannot tell which tree holds the tracks (trees: {', '.join(trees) or 'none'}; "
        f"known: {', '.join(lay.trees[0] for lay in LAYOUTS.values())}); pass --tree or --column-map")


def _slices(path: Path, layout: Layout, step: int) -> Iterator[tuple[str, str, dict[str, np.ndarray], int]]:
    """Yield (source, folder, quantity arrays, first entry in the folder) for each slice."""
    if layout.name == "parquet":
        yield from _parquet_slices(path, layout, step)
        return
    f = _open_root(path)
    dfs = _df_folders(f) or [""]
    for df in dfs:
        directory = f[df] if df else f
        present = _trees_in(directory)
        missing = [t for t in layout.trees if t not in present]
        if missing:
            where = df or "the top level"
            raise InputError(f"{path}: tree {missing[0]!r} is missing in {where} "
                             f"(trees there: {', '.join(present) or 'none'})")
        trees = [directory[t] for t in layout.trees]
        sizes = {t.name: t.num_entries for t in trees}
        if len(set(sizes.values())) != 1:
            raise InputError(f"{path}:{df}: trees read side by side have different lengths {sizes}")
        branch_of_tree: dict[str, list[str]] = {}
        available = {b: t.name for t in trees for b in t.keys()}
        try:
            mapped = layout.branches_for(set(available))
        except KeyError as err:
            hint = ("fix that entry of the column map" if layout.name not in LAYOUTS and
                    not layout.name.startswith("flat:") else "pass --column-map to map it")
            if "(pt)" in err.args[0]:
                hint += " (or map px, py and pz, from which pT is derived)"
            raise InputError(f"{path}:{df}/{'+'.join(layout.trees)}: missing branch {err.args[0]}; "
                             f"{hint}") from None
        for branch in set(mapped.values()):
            branch_of_tree.setdefault(available[branch], []).append(branch)
        n = next(iter(sizes.values()))
        for start in range(0, n, step):
            stop = min(n, start + step)
            arrays: dict[str, np.ndarray] = {}
            for t in trees:
                names = branch_of_tree.get(t.name)
                if names:
                    got = t.arrays(names, entry_start=start, entry_stop=stop, library="np")
                    arrays.update(got)
            yield f"{Path(str(path)).name}:{df + '/' if df else ''}{layout.trees[0]}", df, {
                q: arrays[b] for q, b in mapped.items()}, start
        if n == 0:
            log.debug("%s:%s is empty", path, df)


def _parquet_slices(path: Path, layout: Layout, step: int):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:
        raise InputError(f"{path}: not a Parquet file pyarrow can read ({err})") from err
    names = set(pf.schema_arrow.names)
    try:
        mapped = layout.branches_for(names)
    except KeyError as err:
        raise InputError(f"{path}: missing column {err.args[0]}; pass --column-map to map it") from None
    start = 0
    for batch in pf.iter_batches(batch_size=step, columns=sorted(set(mapped.values()))):
        cols = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.schema.names}
        yield f"{Path(str(path)).name}", "", {q: cols[b] for q, b in mapped.items()}, start
        start += batch.num_rows


# --------------------------------------------------------------------------- derivation


def derive_raw(q: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Complete the encoder's inputs: pt/eta/phi from px/py/pz, detector flags."""
    raw = {k: v for k, v in q.items() if k in RAW_INPUTS}
    if {"px", "py"} <= q.keys():
        px, py = q["px"].astype(np.float64), q["py"].astype(np.float64)
        pt = np.hypot(px, py)
        if "pt" not in raw:
            raw["pt"] = pt
        if "phi" not in raw:
            raw["phi"] = np.mod(np.arctan2(py, px), 2 * np.pi)
        if "eta" not in raw and "pz" in q:
            with np.errstate(divide="ignore", invalid="ignore"):
                raw["eta"] = np.arcsinh(q["pz"].astype(np.float64) / pt)
    if "detectorMap" in q:
        dm = q["detectorMap"].astype(np.int64)
        raw.setdefault("hasTPC", (dm & DETECTOR_BITS["tpc"]) > 0)
        raw.setdefault("hasTOF", (dm & DETECTOR_BITS["tof"]) > 0)
    if "hasTPC" not in raw:
        sig = np.asarray(q.get("tpcSignal", np.zeros(n)), dtype=np.float64)
        has = np.isfinite(sig) & (sig > 0)
        if "tpcNCls" in q:
            has &= q["tpcNCls"] > 0
        raw["hasTPC"] = has
    if "hasTOF" not in raw:
        has = np.zeros(n, dtype=bool)
        for name in ("beta", "tofNSigmaPi", "tofNSigmaKa", "tofNSigmaPr", "tofNSigmaEl"):
            if name in q:
                v = np.asarray(q[name], dtype=np.float64)
                ok = np.isfinite(v) & (v > -998.0)
                if name == "beta":
                    ok &= v > 0
                has |= ok
        raw["hasTOF"] = has
    return {k: np.asarray(v) for k, v in raw.items()}


def _its_ncls(q: dict[str, np.ndarray]) -> np.ndarray | None:
    if "itsNCls" in q:
        return q["itsNCls"].astype(np.int64)
    if "itsClusterMap" in q:
        m = q["itsClusterMap"].astype(np.uint8) & 0x7F
        return np.unpackbits(m[:, None], axis=1).sum(axis=1).astype(np.int64)
    return None


def _labels(path: Path, source: str, layout: Layout, pdg: np.ndarray) -> np.ndarray:
    arr = np.asarray(pdg)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{source}: label branch {layout.columns.get('pdg', 'pdg')!r} has "
                             f"{int(bad.sum())} NaN/inf values; fix or drop those tracks")
    return arr.astype(np.int64)


def iter_chunks(
    paths: Sequence[str | Path],
    *,
    tree: str | None = None,
    layout: Layout | None = None,
    step: int = DEFAULT_STEP,
) -> Iterator[Chunk]:
    """Encoded chunks of all files in order, one DF folder slice at a time."""
    if not paths:
        raise InputError("no input files given")
    for file_index, p in enumerate(paths):
        path = p if "://" in str(p) else Path(p)
        lay = layout or detect_layout(path, tree)
        log.info("reading %s (layout %s, trees %s)", path, lay.name, "+".join(lay.trees))
        row0 = 0
        for source, folder, q, start in _slices(path, lay, step):
            n = len(next(iter(q.values()))) if q else 0
            if n == 0:
                continue
            raw = derive_raw(q, n)
            if "pt" not in raw:
                raise InputError(f"{source}: no transverse momentum: map 'pt' or 'px'/'py' in the column map")
            x = encode(raw, n)
            pdg = _labels(path, source, lay, q["pdg"]) if "pdg" in q else None
            yield Chunk(
                x=x,
                pdg=pdg,
                tpc_ncls=q["tpcNCls"].astype(np.int64) if "tpcNCls" in q else None,
                its_ncls=_its_ncls(q),
                file_index=file_index,
                row=np.arange(row0, row0 + n, dtype=np.int64),
                entry=np.arange(start, start + n, dtype=np.int64),
                source=source,
                folder=folder,
            )
            row0 += n


def file_layouts(paths: Sequence[str | Path], tree: str | None, column_map: str | Path | None) -> Layout | None:
    """The user's column map, if any (None: detect per file)."""
    return load_column_map(column_map) if column_map else None
