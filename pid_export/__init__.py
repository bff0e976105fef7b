"""pid-export: ALICE PID classifiers from training to an O2Physics task.

The package follows the pipeline: :mod:`.features` (the 22-feature contract),
:mod:`.reader` (AO2D/flat ROOT/Parquet to features), :mod:`.simulate` (the built-in fast
simulation), :mod:`.selection` (DPG cuts, momentum range, split), :mod:`.models` (training),
:mod:`.export` (ONNX), :mod:`.contract` and :mod:`.parity` (the gate), :mod:`.pipeline`
(the main job) and :mod:`.cli` (the ``pid-export`` command).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CCDBError,
    ConfigError,
    ContractError,
    InputError,
    ParityError,
    PidExportError,
    SelectionError,
)

__all__ = [
    "CCDBError",
    "ConfigError",
    "ContractError",
    "InputError",
    "ParityError",
    "PidExportError",
    "SelectionError",
    "__version__",
]
