"""Model families: training, native prediction and conversion to ONNX.

Each family is a :class:`Family` registered under the ``--model`` name. All share one
shape: ``fit`` takes the training and validation parts and returns a native model,
``predict_proba`` gives the native probabilities (what parity compares against), and
``to_onnx`` returns an ``onnx.ModelProto`` whose last output is the probabilities.
:mod:`pid_export.export` then brings every converter's output to the one O2 contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError


@dataclass
class TrainingData:
    """Encoded features and class labels of one part of the split."""

    x: np.ndarray  # float32 [n, 22], NaN where absent
    y: np.ndarray  # int64 [n]


@dataclass
class FitOptions:
    seed: int = 231
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    checkpoint: Path | None = None  # nets: export this checkpoint instead of training
    out_stem: Path | None = None  # where a family may write its native model / checkpoint
    extra: dict[str, Any] = field(default_factory=dict)


class Family(Protocol):
    kind: str  # "tree" or "net"
    parity_bound: float
    description: str

    def fit(self, train: TrainingData, val: TrainingData, opts: FitOptions) -> Any: ...

    def predict_proba(self, native: Any, x: np.ndarray) -> np.ndarray: ...

    def to_onnx(self, native: Any) -> Any: ...

    def save_native(self, native: Any, stem: Path) -> list[Path]: ...

    def info(self, native: Any) -> dict: ...


_REGISTRY: dict[str, Family] = {}


def register(name: str, family: Family) -> None:
    _REGISTRY[name] = family


def get_family(name: str) -> Family:
    if not _REGISTRY:
        _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def families() -> list[str]:
    if not _REGISTRY:
        _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    from . import trees

    trees.register_all()
    try:
        from . import nets
    except ImportError:  # the nets are an optional extra (pip install .[nets])
        return
    nets.register_all()
