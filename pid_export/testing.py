"""Helpers for tests and benchmarks: small AO2D-style files and tiny ONNX models.

Nothing here is used by the command itself; tests of this package and of downstream
code import it to build inputs that follow the same layout as real files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .features import N_CLASSES, N_FEATURES


def write_ao2d(path: str | Path, folders: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
               *, folder_names: Sequence[str] | None = None) -> Path:
    """Write ``DF_<n>`` folders, each a mapping tree name -> {branch: array}."""
    import uproot

    path = Path(path)
    names = folder_names or [f"DF_{1000 + i}" for i in range(len(folders))]
    with uproot.recreate(path) as f:
        for name, trees in zip(names, folders):
            for tree, branches in trees.items():
                arrays = {k: np.asarray(v) for k, v in branches.items()}
                # mktree: AO2D files hold TTrees (plain assignment would write an RNTuple).
                t = f.mktree(f"{name}/{tree}", {k: v.dtype for k, v in arrays.items()})
                t.extend(arrays)
    return path


def pidml_branches(n: int, seed: int = 0, *, pdg: Sequence[int] = (211, 321, 2212, 11)) -> dict[str, np.ndarray]:
    """Random but class-dependent branches of the PID-ML producer's MC table."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(np.asarray(pdg), size=n) * rng.choice([-1, 1], size=n)
    cls = np.searchsorted(np.sort(np.abs(np.asarray(pdg))), np.abs(codes))
    pt = rng.uniform(0.2, 3.0, n).astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi, n)
    eta = rng.uniform(-0.9, 0.9, n)
    has_tof = rng.random(n) < 0.6
    has_bayes = rng.random(n) < 0.1
    out = {
        "fPt": pt,
        "fPx": (pt * np.cos(phi)).astype(np.float32),
        "fPy": (pt * np.sin(phi)).astype(np.float32),
        "fPz": (pt * np.sinh(eta)).astype(np.float32),
        "fSign": np.sign(codes).astype(np.float32),
        "fTPCSignal": (50 + 20 * cls + rng.normal(0, 3, n)).astype(np.float32),
        "fBeta": np.where(has_tof, 0.9 - 0.1 * cls, -999).astype(np.float32),
        "fDcaXY": rng.normal(0, 0.01, n).astype(np.float32),
        "fDcaZ": rng.normal(0, 0.01, n).astype(np.float32),
        "fTpcNClsFound": rng.integers(60, 160, n).astype(np.int16),
        "fITSClusterMap": rng.integers(0, 128, n).astype(np.uint8),
        "fPdgCode": codes.astype(np.int32),
    }
    for i, sp in enumerate(("Pi", "Ka", "Pr", "El")):
        out[f"fTPCNSigma{sp}"] = (rng.normal(0, 1, n) + 3 * (cls - i)).astype(np.float32)
        out[f"fTOFNSigma{sp}"] = np.where(has_tof, rng.normal(0, 1, n) + 3 * (cls - i), -999).astype(np.float32)
        out[f"fBayes{sp}"] = np.where(has_bayes, np.where(cls == i, 70, 10), -1).astype(np.int8)
    return out


def tiny_onnx(*, n_features: int = N_FEATURES, n_classes: int = N_CLASSES, softmax: bool = True,
              seed: int = 0, metadata: Mapping[str, object] | None = None, opset: int = 17,
              ir_version: int = 8):
    """A linear model (NaN -> 0, MatMul, optional Softmax) with the contract's names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, (n_features, n_classes)).astype(np.float32)
    nodes = [
        helper.make_node("IsNaN", ["input"], ["isnan"]),
        helper.make_node("Where", ["isnan", "zero", "input"], ["clean"]),
        helper.make_node("MatMul", ["clean", "w"], ["logits" if softmax else "probabilities"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    if metadata is not None:
        from .export import set_metadata

        set_metadata(model, dict(metadata))
    onnx.checker.check_model(model)
    return model
