"""ONNX artefacts: metadata, normalisation to the O2 contract, and atomic writing.

Takes an ``onnx.ModelProto`` from a converter (:mod:`.models`) and hands on a file that
O2 can load: input ``input`` float32 ``[N, 22]``, last output the class probabilities,
IR and opsets within what onnxruntime 1.22 runs, metadata as DESIGN §3 lists, written
whole or not at all.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError
from .features import CLASS_NAMES, CLASS_PDG, FEATURE_NAMES, N_FEATURES, spec_digest

log = logging.getLogger(__name__)

#: Highest versions that O2's onnxruntime 1.22 (ONNX 1.17) loads (DESIGN §3).
MAX_IR_VERSION = 10
MAX_OPSET = 22
MAX_ML_OPSET = 4

INPUT_NAME = "input"
PROBA_NAME = "probabilities"

#: Keys every artefact carries; values are JSON.
REQUIRED_METADATA = ("feature_names", "class_names", "class_pdg", "missing_value")


def base_metadata() -> dict[str, Any]:
    """The fixed part of the metadata, taken from the feature specification."""
    return {
        "feature_names": list(FEATURE_NAMES),
        "class_names": list(CLASS_NAMES),
        "class_pdg": list(CLASS_PDG),
        "missing_value": "nan",
        "feature_spec_digest": spec_digest(),
        "package_version": __version__,
        "creation_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def set_metadata(model, meta: dict[str, Any]) -> None:
    """Store ``meta`` as ``metadata_props`` (values JSON-encoded), replacing same keys."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        text = json.dumps(value, sort_keys=True)
        if key in existing:
            existing[key].value = text
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, text


def read_metadata(model_or_path) -> dict[str, Any]:
    """The model's ``metadata_props``; JSON values decoded, other values as text."""
    model = load_model(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except (json.JSONDecodeError, TypeError):
            out[prop.key] = prop.value
    return out


def load_model(path: str | Path):
    """Load an ONNX file without its external data; a clear error if it is not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    data = path.read_bytes()
    if not data:
        raise InputError(f"{path}: the file is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        # Parse the bytes ourselves: onnx.load picks a text parser from a .json/.txt suffix.
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from err
    if not model.graph.node and not model.graph.input:
        raise InputError(f"{path}: not an ONNX model (no graph inside)")
    return model


def normalise(model, *, proba_output: str | None = None):
    """Bring a converter's model to the contract's names and versions, in place.

    Renames the single input to ``input`` with shape ``[N, 22]``, makes the probability
    output the last one and names it ``probabilities`` with shape ``[N, 4]``, and lowers
    the IR version to :data:`MAX_IR_VERSION` when the converter wrote a newer one.
    """
    import onnx

    graph = model.graph
    if len(graph.input) != 1:
        raise ValueError(f"normalise: converter gave {len(graph.input)} inputs, expected 1")
    old_in = graph.input[0].name
    if old_in != INPUT_NAME:
        _rename_value(graph, old_in, INPUT_NAME)
    dims = graph.input[0].type.tensor_type.shape.dim
    del dims[:]
    dims.add().dim_param = "N"
    dims.add().dim_value = N_FEATURES

    names = [o.name for o in graph.output]
    src = proba_output or names[-1]
    if src not in names:
        raise ValueError(f"normalise: no output {src!r} among {names}")
    if src != PROBA_NAME:
        if PROBA_NAME in names:
            raise ValueError(f"normalise: outputs already hold a {PROBA_NAME!r} that is not {src!r}")
        _rename_value(graph, src, PROBA_NAME)
    out = next(o for o in graph.output if o.name == PROBA_NAME)
    keep = [o for o in graph.output if o.name != PROBA_NAME]
    ordered = [*keep, out]
    copies = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in ordered]
    del graph.output[:]
    graph.output.extend(copies)
    pdims = graph.output[-1].type.tensor_type.shape.dim
    del pdims[:]
    pdims.add().dim_param = "N"
    pdims.add().dim_value = len(CLASS_NAMES)

    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    return model


def _rename_value(graph, old: str, new: str) -> None:
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def model_bytes(model) -> bytes:
    """Serialise in one blob (O2 loads a single object from the CCDB: no external data)."""
    data = model.SerializeToString()
    if len(data) >= 2**31:
        raise InputError("model is larger than 2 GB: ONNX cannot hold it in one file")
    return data


def write_atomic(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    The target appears only complete; on any failure the temporary file is removed
    and the target is left as it was.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: output folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: output folder {parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return write_atomic(text.encode(), path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
