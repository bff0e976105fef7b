"""Applying an exported model to tracks, labelled or not.

Takes an ONNX file and AO2D-style ROOT or Parquet files and hands on a Parquet table with
one row per track (where it came from, pT/eta, the four class probabilities and the
predicted class) and the predicted class fractions. No selections are applied: every
track read gets a prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .contract import assert_contract
from .errors import InputError
from .export import write_atomic
from .features import CLASS_NAMES, CLASS_PDG, INDEX
from .parity import onnx_proba, onnx_session
from .reader import iter_chunks, load_column_map

log = logging.getLogger(__name__)


def predict_files(model_path: str | Path, paths: Sequence[str | Path], *, tree: str | None = None,
                  column_map: str | Path | None = None):
    """A pandas DataFrame with one row per track read."""
    import pandas as pd

    model_path = Path(model_path)
    assert_contract(model_path)
    sess = onnx_session(model_path.read_bytes(), threads=0)
    from .streaming import expand_inputs

    layout = load_column_map(column_map) if column_map else None
    paths = expand_inputs(paths)
    frames = []
    for chunk in iter_chunks(paths, tree=tree, layout=layout):
        proba = onnx_proba(sess, chunk.x)
        pred = np.argmax(proba, axis=1)
        cols = {
            "file": np.full(len(chunk), Path(paths[chunk.file_index]).name),
            "folder": np.full(len(chunk), chunk.folder),
            "entry": chunk.entry,
            "pt": chunk.x[:, INDEX["pt"]],
            "eta": chunk.x[:, INDEX["eta"]],
            "has_tpc": chunk.x[:, INDEX["has_tpc"]].astype(np.int8),
            "has_tof": chunk.x[:, INDEX["has_tof"]].astype(np.int8),
        }
        for i, name in enumerate(CLASS_NAMES):
            cols[f"prob_{name}"] = proba[:, i]
        cols["predicted_class"] = pred.astype(np.int8)
        cols["predicted_pdg"] = np.asarray(CLASS_PDG, dtype=np.int32)[pred]
        if chunk.pdg is not None:
            cols["true_pdg"] = chunk.pdg.astype(np.int32)
        frames.append(pd.DataFrame(cols))
    if not frames:
        raise InputError(f"no tracks in {', '.join(map(str, paths))}")
    return pd.concat(frames, ignore_index=True)


def _trained_with_tpc_only(model_path) -> bool:
    """Whether the model's metadata says its training tracks all had TPC."""
    from .export import read_metadata

    meta = read_metadata(model_path)
    sel = meta.get("selections") or {}
    skipped = meta.get("selections_skipped") or {}
    if not isinstance(sel, dict) or sel.get("min_tpc_clusters") in (None, 0):
        return False
    return not any("TPC clusters" in k for k in skipped)


def run_predict(model_path, paths, out, *, tree=None, column_map=None,
                echo: Callable[[str], None] = print):
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: output folder {parent} does not exist; create it first")
    df = predict_files(model_path, paths, tree=tree, column_map=column_map)
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_atomic(buf.getvalue(), out)
    n = len(df)
    echo(f"predicted {n} tracks from {', '.join(map(str, paths))}")
    frac = np.bincount(df["predicted_class"].to_numpy(), minlength=len(CLASS_NAMES)) / max(n, 1)
    for name, f, c in zip(CLASS_NAMES, frac, np.bincount(df["predicted_class"], minlength=4)):
        echo(f"  {name:<10} {100 * f:6.2f}%  ({c} tracks)")
    echo(f"  with TPC {int(df['has_tpc'].sum())}, with TOF {int(df['has_tof'].sum())} of {n}")
    no_tpc = int((df["has_tpc"] == 0).sum())
    if no_tpc and _trained_with_tpc_only(model_path):
        echo(f"WARNING: {no_tpc} tracks have no TPC, but the model was trained on tracks that all "
             "had TPC (>= 70 TPC clusters): their predictions are extrapolations; select "
             "has_tpc == 1 or train without the TPC-cluster cut")
    echo(f"wrote {out}")
    return df
