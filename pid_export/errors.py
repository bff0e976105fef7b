"""One exception tree for the whole toolkit.

Every error a user can cause derives from :class:`PidExportError`. Each class carries
the exit code that the ``pid-export`` command returns for it, so scripts driving the
command can tell a bad input (2) from a failed parity gate (3) or a server fault (4).
"""

from __future__ import annotations


class PidExportError(Exception):
    """Base class: a problem the user can act on. The message says what to do."""

    exit_code = 1


class InputError(PidExportError):
    """A file, tree, branch, column or value that cannot be used as given."""

    exit_code = 2


class ConfigError(PidExportError):
    """An option, a configuration key or a combination of them that is not valid."""

    exit_code = 2


class SelectionError(InputError):
    """Nothing (or too little) is left after selections, ranges or the split."""


class ContractError(PidExportError):
    """An ONNX model breaks the contract that O2's runtime needs (DESIGN §3)."""

    exit_code = 3


class ParityError(PidExportError):
    """onnxruntime and the native model disagree beyond the bound."""

    exit_code = 3


class CCDBError(PidExportError):
    """A CCDB request failed: server down, refused, or the round trip did not match."""

    exit_code = 4


class CCDBUploadError(CCDBError):
    """The upload itself was refused or could not be confirmed."""
