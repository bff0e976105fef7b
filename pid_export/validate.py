"""``pid-export validate``: every check on one ONNX model, a summary and a JSON report.

Takes an ONNX file (ours or anyone's) and, optionally, the native model it came from and
data; hands on a :class:`ValidationReport`:

1. the contract and behaviour checks of :func:`pid_export.contract.check_contract`, the
   very function the export gate of ``pid-export --model`` runs;
2. the same behaviour checks under onnxruntime 1.22, the version O2 builds
   (:mod:`.validate_o2`), unless switched off;
3. parity against the native model (:mod:`.validate_native`) through
   :func:`pid_export.parity.parity_gate`, again the gate's own function, on held-out rows
   from ``--data`` (or the built-in simulation), every absent-detector pattern, all-NaN
   rows and edge values.

The report passes only if every required check passed; SKIP and WARN lines never fail it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .contract import Check, check_contract, failures, format_checks, skipped
from .errors import ContractError, InputError, ParityError
from .export import load_model, read_metadata, write_json_atomic
from .parity import ParityResult, parity_gate

log = logging.getLogger(__name__)

Echo = Callable[[str], None]

#: Held-out rows used for parity at most (a random sample of them beyond that).
DEFAULT_ROWS = 20_000
#: Size of the built-in simulated sample when no ``--data`` is given.
DEFAULT_TRACKS = 20_000
DEFAULT_SEED = 231
RANGES = ("0-1", "1-3", "full")


@dataclass
class ValidateOptions:
    native: Path | None = None
    native_kind: str | None = None
    data: tuple[Path, ...] = ()
    tree: str | None = None
    rows: int = DEFAULT_ROWS
    tracks: int = DEFAULT_TRACKS
    seed: int | None = None
    bound: float | None = None
    o2_runtime: bool = True
    trust_pickle: bool = False


@dataclass
class ValidationReport:
    model: Path
    sha256: str
    size_bytes: int
    checks: list[Check]
    metadata: dict[str, Any]
    parity: ParityResult | None = None
    native: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return failures(self.checks)

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else ContractError.exit_code

    def counts(self) -> dict[str, int]:
        out = {"PASS": 0, "FAIL": 0, "WARN": 0, "SKIP": 0}
        for c in self.checks:
            out[c.status] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        import onnxruntime as ort

        from .validate_o2 import O2_ORT_VERSION

        return _json_safe({
            "model": str(self.model),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "failed": [c.name for c in self.failed],
            "checks": [{**c.as_dict(), "status": c.status} for c in self.checks],
            "parity": self.parity.as_dict() if self.parity else None,
            "native": self.native,
            "data": self.data,
            "metadata": self.metadata,
            "notes": self.notes,
            "environment": {
                "package_version": __version__,
                "python": sys.version.split()[0],
                "onnxruntime": ort.__version__,
                "o2_onnxruntime": O2_ORT_VERSION,
            },
            "seconds": round(self.seconds, 2),
        })

    def summary_lines(self) -> list[str]:
        kind = self.metadata.get("model_kind", "no model_kind in metadata")
        lines = [f"validate {self.model} ({self.size_bytes / 1e6:.2f} MB, sha256 {self.sha256[:12]}, "
                 f"{kind})"]
        lines += format_checks(self.checks)
        if self.parity is not None:
            lines.append(f"  parity rows by block (native: {self.native['description']}; "
                         f"data: {self.data['description']})")
            for name, pat in self.parity.patterns.items():
                lines.append(f"    {name:<22} rows {pat['rows']:>7}  max diff {pat['max_abs_diff']:.2e}  "
                             f"argmax flips {pat['argmax_disagreements']}")
            for w in self.parity.worst_rows[:3]:
                lines.append(f"    worst row {w['row']} ({w.get('block', '?')}): |diff| {w['abs_diff']:.2e}"
                             f"  native {_fmt(w['native'])}  onnx {_fmt(w['onnx'])}")
        lines += [f"  note: {n}" for n in self.notes]
        c = self.counts()
        tally = f"{c['PASS']} passed, {c['FAIL']} failed, {c['WARN']} warnings, {c['SKIP']} skipped"
        if self.passed:
            lines.append(f"VALID for O2: every required check passed ({tally})")
        else:
            lines.append(f"NOT VALID for O2: {', '.join(x.name for x in self.failed)} ({tally})")
        return lines


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join("nan" if v is None or not math.isfinite(v) else f"{v:.4f}" for v in values) + "]"


def _json_safe(obj: Any) -> Any:
    """Strict JSON: non-finite floats become the strings 'inf', '-inf' and 'nan'."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


# --------------------------------------------------------------------------- data


def heldout_rows(opts: ValidateOptions, meta: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows for parity and a description of where they came from.

    Labelled files give their test split, made exactly as the main job makes it (seed and
    momentum range from the model's metadata when it has them), so a model trained on the
    same files is compared on tracks it never saw. Unlabelled files give all their tracks
    as an O2 task would see them. Without files, the built-in simulation's test split.
    """
    seed = opts.seed if opts.seed is not None else int(meta.get("seed", DEFAULT_SEED))
    prange = meta.get("momentum_range") if meta.get("momentum_range") in RANGES else "full"
    if opts.data:
        from .pipeline import load_dataset
        from .reader import iter_chunks

        first = next(iter_chunks(list(opts.data), tree=opts.tree), None)
        if first is not None and first.pdg is not None:
            ds = load_dataset(list(opts.data), tree=opts.tree, prange=prange, seed=seed,
                              selections=_selections(meta))
            x = ds.subset(2).x
            desc = f"test split of {', '.join(map(str, opts.data))} (seed {seed}, range {prange})"
        else:
            x = np.concatenate([c.x for c in iter_chunks(list(opts.data), tree=opts.tree)])
            desc = f"all tracks of {', '.join(map(str, opts.data))} (unlabelled)"
    else:
        from .pipeline import load_builtin_sample

        ds = load_builtin_sample(opts.tracks, seed=seed, prange=prange)
        x = ds.subset(2).x
        desc = f"test split of the built-in simulation ({opts.tracks} tracks, seed {seed}, range {prange})"
    if len(x) == 0:
        raise InputError(f"parity: no rows to compare on ({desc}); give --data with tracks")
    if len(x) > opts.rows:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), size=opts.rows, replace=False))
        desc += f", {opts.rows} of {len(x)} rows sampled"
        x = x[pick]
    return np.asarray(x, dtype=np.float32), {"description": desc, "rows": int(len(x)), "seed": seed,
                                             "momentum_range": prange}


def _selections(meta: dict[str, Any]):
    """The model's training selections from its metadata, else the DPG defaults."""
    from dataclasses import fields

    from .selection import Selections

    stored = meta.get("selections")
    names = {f.name for f in fields(Selections)}
    if isinstance(stored, dict) and set(stored) <= names:
        return Selections(**stored)
    return Selections()


# --------------------------------------------------------------------------- checks


def _parity_check(result: ParityResult) -> Check:
    reason = (f"max |ORT - native| {result.max_abs_diff:.2e} (bound {result.bound:.0e}), "
              f"99.9% {result.p999_abs_diff:.2e}, argmax agreement "
              f"{100 * result.argmax_agreement:.3f}% on {result.n_rows} rows")
    if not result.passed:
        bad = [(name, p) for name, p in result.patterns.items()
               if p["max_abs_diff"] > result.bound or p["argmax_disagreements"]]
        if result.argmax_disagreements:
            reason += f"; {result.argmax_disagreements} argmax flips"
        if result.nonfinite_rows_onnx:
            reason += f"; {result.nonfinite_rows_onnx} rows non-finite in ONNX"
        if bad:
            reason += "; worst in: " + ", ".join(
                f"{n} ({p['max_abs_diff']:.1e}, {p['argmax_disagreements']} flips)" for n, p in bad[:4])
    return Check("parity", result.passed, reason)


def validate_model(model_path: str | Path, opts: ValidateOptions | None = None) -> ValidationReport:
    """Run every check that applies to ``model_path``; see the module docstring."""
    from .validate_native import load_native, native_beside
    from .validate_o2 import disabled_checks

    opts = opts or ValidateOptions()
    t0 = time.perf_counter()
    model_path = Path(model_path)
    model = load_model(model_path)  # InputError if missing or not ONNX
    blob = model_path.read_bytes()
    meta = read_metadata(model)
    if opts.bound is not None and not opts.bound > 0:
        raise InputError(f"--bound must be positive, got {opts.bound}")

    checks = check_contract(blob, runtime=True, o2_runtime=opts.o2_runtime)
    if not opts.o2_runtime:
        checks.extend(disabled_checks())
    report = ValidationReport(model=model_path, sha256=hashlib.sha256(blob).hexdigest(),
                              size_bytes=len(blob), checks=checks, metadata=meta)

    if opts.native is None:
        beside = native_beside(model_path)
        found = ", ".join(p.name for p in beside)
        hint = f" (found {found} beside the model: pass it as --native)" if beside else ""
        checks.append(skipped("parity", "no --native model given: onnxruntime was not compared "
                                        "with the training framework" + hint))
        report.seconds = time.perf_counter() - t0
        return report

    kind = opts.native_kind or (meta.get("model_kind") if isinstance(meta.get("model_kind"), str) else None)
    native = load_native(opts.native, native_kind=kind, trust_pickle=opts.trust_pickle)
    bound = opts.bound if opts.bound is not None else native.bound
    report.native = {"kind": native.kind, "source": native.source, "description": native.description,
                     "bound": bound}
    blocked = [c.name for c in checks if c.name in ("single_input", "input_float32", "input_shape",
                                                      "no_map_outputs", "no_external_data",
                                                      "loads_in_onnxruntime", "probabilities_shape")
               and not c.passed and not c.skipped]
    if blocked:
        checks.append(skipped("parity", f"skipped: onnxruntime cannot run the model on [N, 22] "
                                        f"float32 rows (see {', '.join(blocked)})"))
        report.seconds = time.perf_counter() - t0
        return report

    x, report.data = heldout_rows(opts, meta)
    try:
        result = parity_gate(blob, native.predict_proba, x, bound, seed=report.data["seed"])
    except ParityError as err:  # the native model's output does not have the ONNX shape
        checks.append(Check("parity", False, str(err)))
    else:
        report.parity = result
        checks.append(_parity_check(result))
    report.seconds = time.perf_counter() - t0
    return report


def run_validate(model_path: str | Path, opts: ValidateOptions | None = None, *,
                 json_out: str | Path | None = None, echo: Echo = print) -> ValidationReport:
    """``pid-export validate``: run, print the summary, write the JSON report."""
    report = validate_model(model_path, opts)
    for line in report.summary_lines():
        echo(line)
    if json_out is not None:
        write_json_atomic(report.as_dict(), json_out)
        echo(f"wrote {json_out}")
    log.info("validate took %.1f s", report.seconds)
    return report
