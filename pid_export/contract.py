"""The O2 contract checks (DESIGN §3) on any ONNX model.

Takes a path, bytes or an ``onnx.ModelProto`` and hands on a list of named
:class:`Check` results, each with pass/fail and a one-line reason. Static checks read the
graph; runtime checks load it in onnxruntime and feed rows (random, and with absent
detectors as NaN). :func:`assert_contract` raises :class:`ContractError` listing every
failure; the export gate, ``pid-export validate`` and the CCDB upload all use it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ContractError
from .export import (
    MAX_IR_VERSION,
    MAX_ML_OPSET,
    MAX_OPSET,
    REQUIRED_METADATA,
    load_model,
)
from .features import CLASS_NAMES, CLASS_PDG, FEATURE_NAMES, N_CLASSES, N_FEATURES

log = logging.getLogger(__name__)

#: How far a probability row may sum from 1 (float32 softmax/averaging round-off).
SUM_TOLERANCE = 1e-4
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


@dataclass
class Check:
    name: str
    passed: bool
    reason: str
    required: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_model(model_or_path):
    import onnx

    if isinstance(model_or_path, (str, Path)):
        return load_model(model_or_path)
    if isinstance(model_or_path, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model_or_path))
    return model_or_path


def _dims(value_info) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def static_checks(model) -> list[Check]:
    """Checks that need only the graph."""
    import onnx

    checks: list[Check] = []
    ir = model.ir_version
    checks.append(Check(
        "ir_version", ir <= MAX_IR_VERSION,
        f"IR {ir}" + ("" if ir <= MAX_IR_VERSION else f" > {MAX_IR_VERSION}: onnxruntime 1.22 "
                      "refuses it ('Unsupported model IR version')")))

    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    bad = []
    if opsets.get("ai.onnx", 0) > MAX_OPSET:
        bad.append(f"ai.onnx opset {opsets['ai.onnx']} > {MAX_OPSET}")
    if opsets.get("ai.onnx.ml", 0) > MAX_ML_OPSET:
        bad.append(f"ai.onnx.ml opset {opsets['ai.onnx.ml']} > {MAX_ML_OPSET}")
    unknown = sorted(d for d in opsets if d not in KNOWN_DOMAINS)
    if unknown:
        bad.append(f"custom domains {unknown} that O2's onnxruntime does not provide")
    desc = ", ".join(f"{k} {v}" for k, v in sorted(opsets.items()))
    checks.append(Check("opsets", not bad, "; ".join(bad) if bad else desc))

    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        checks.append(Check("single_input", False,
                            f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                            "O2 feeds exactly one tensor"))
    else:
        checks.append(Check("single_input", True, f"input {inputs[0].name!r}"))
    if inputs:
        inp = inputs[0]
        etype = inp.type.tensor_type.elem_type if inp.type.HasField("tensor_type") else None
        checks.append(Check(
            "input_float32", etype == onnx.TensorProto.FLOAT,
            "float32" if etype == onnx.TensorProto.FLOAT else
            f"input element type {onnx.TensorProto.DataType.Name(etype) if etype else 'not a tensor'}; "
            "O2 feeds float32"))
        dims = _dims(inp)
        if len(dims) != 2:
            checks.append(Check("input_shape", False, f"input rank {len(dims)} {dims}; expected [N, 22]"))
        else:
            n, f = dims
            problems = []
            if isinstance(n, int) and n != 1:
                problems.append(f"batch dimension fixed at {n} (Tools/PIDML runs batch 1: make it dynamic)")
            if f != N_FEATURES:
                problems.append(f"feature dimension {f}, expected the literal {N_FEATURES} "
                                "(o2::ml::OnnxModel reads it from dim 1)")
            checks.append(Check("input_shape", not problems,
                                "; ".join(problems) if problems else f"[{n}, {f}]"))

    outputs = list(model.graph.output)
    non_tensor = [o.name for o in outputs if not o.type.HasField("tensor_type")]
    zipmap = [n.name or n.op_type for n in model.graph.node if n.op_type == "ZipMap"]
    checks.append(Check(
        "no_map_outputs", not non_tensor and not zipmap,
        "all outputs are tensors" if not non_tensor and not zipmap else
        f"non-tensor outputs {non_tensor} / ZipMap nodes {zipmap}: O2 reads plain tensors"))
    if outputs:
        last = outputs[-1]
        ok_type = last.type.HasField("tensor_type") and last.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = _dims(last) if last.type.HasField("tensor_type") else []
        shape_ok = len(dims) == 2 and dims[1] in (N_CLASSES, None) and not (
            isinstance(dims[0], int) and dims[0] not in (1,))
        reason = f"last output {last.name!r} {dims}"
        if not ok_type:
            reason += ": not float32"
        elif not shape_ok:
            reason += f": expected [N, {N_CLASSES}] (MlResponse reads the last output)"
        checks.append(Check("last_output_probabilities", ok_type and shape_ok, reason))
    else:
        checks.append(Check("last_output_probabilities", False, "model has no outputs"))

    external = _external_tensors(model)
    checks.append(Check("no_external_data", not external,
                        "self-contained" if not external else
                        f"{len(external)} tensors in external files ({external[0]}...): "
                        "the CCDB holds one blob"))
    checks.append(metadata_check(model))
    return checks


def _external_tensors(model) -> list[str]:
    import onnx

    found = []

    def visit(graph) -> None:
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                found.append(t.name)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                    found.append(f"{node.name}.{attr.name}")
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    return found


def metadata_check(model) -> Check:
    props = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in REQUIRED_METADATA if k not in props]
    if missing:
        return Check("metadata", False, f"missing keys {missing} (DESIGN §3); "
                     "export with pid-export or add them")
    try:
        meta = {k: json.loads(props[k]) for k in REQUIRED_METADATA}
    except json.JSONDecodeError as err:
        return Check("metadata", False, f"metadata values are not JSON: {err}")
    problems = []
    if meta["feature_names"] != list(FEATURE_NAMES):
        problems.append("feature_names differ from the 22-feature specification")
    if meta["class_names"] != list(CLASS_NAMES):
        problems.append(f"class_names {meta['class_names']} != {list(CLASS_NAMES)}")
    if meta["class_pdg"] != list(CLASS_PDG):
        problems.append(f"class_pdg {meta['class_pdg']} != {list(CLASS_PDG)}")
    if meta["missing_value"] != "nan":
        problems.append(f"missing_value {meta['missing_value']!r} != 'nan'")
    return Check("metadata", not problems, "; ".join(problems) if problems else
                 "feature names, classes, PDG codes and missing value match the specification")


def probe_rows(n: int = 256, seed: int = 0) -> np.ndarray:
    """Plausible rows plus every absent-detector pattern plus an all-NaN row."""
    from .features import ABSENT_GROUPS, mask_groups

    rng = np.random.default_rng(seed)
    x = np.empty((n, N_FEATURES), dtype=np.float32)
    x[:, 0] = rng.uniform(0.1, 5.0, n)
    x[:, 1] = rng.uniform(-0.8, 0.8, n)
    x[:, 2] = rng.uniform(0, 2 * np.pi, n)
    x[:, 3] = rng.uniform(30, 200, n)
    x[:, 4:8] = rng.normal(0, 3, (n, 4))
    x[:, 8] = rng.uniform(0.3, 1.0, n)
    x[:, 9:13] = rng.normal(0, 3, (n, 4))
    p = rng.dirichlet(np.ones(4), n)
    x[:, 13:17] = p
    x[:, 17] = 1
    x[:, 18:20] = rng.normal(0, 0.01, (n, 2))
    x[:, 20:22] = 1
    parts = [x]
    import itertools

    for k in range(1, len(ABSENT_GROUPS) + 1):
        for combo in itertools.combinations(ABSENT_GROUPS, k):
            parts.append(mask_groups(x[:16], combo))
    parts.append(np.full((1, N_FEATURES), np.nan, dtype=np.float32))
    return np.concatenate(parts)


def runtime_checks(model_bytes_: bytes) -> list[Check]:
    """Load with onnxruntime and check the last output on probe rows."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model_bytes_, opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        return [Check("loads_in_onnxruntime", False, f"onnxruntime refused the model: {err}")]
    checks = [Check("loads_in_onnxruntime", True, f"onnxruntime {ort.__version__}")]
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        return checks
    rows = probe_rows()
    try:
        out = sess.run(None, {inputs[0].name: rows})[-1]
    except Exception as err:
        checks.append(Check("runs_on_probe_rows", False, f"inference failed on [N, 22] float32 rows: {err}"))
        return checks
    out = np.asarray(out)
    if out.shape != (len(rows), N_CLASSES):
        checks.append(Check("probabilities_shape", False,
                            f"last output has shape {out.shape} for {len(rows)} rows, expected "
                            f"({len(rows)}, {N_CLASSES})"))
        return checks
    checks.append(Check("probabilities_shape", True, f"[N, {N_CLASSES}] for N = {len(rows)}"))
    finite = np.isfinite(out).all(axis=1)
    checks.append(Check("finite_with_nan_inputs", bool(finite.all()),
                        "finite for all rows incl. absent detectors and an all-NaN row" if finite.all()
                        else f"{int((~finite).sum())} of {len(rows)} rows give NaN/inf "
                        "(absent-detector or all-NaN rows)"))
    sums = out.sum(axis=1)
    dev = float(np.nanmax(np.abs(sums - 1.0))) if finite.any() else float("nan")
    in_range = bool(((out >= -1e-6) & (out <= 1 + 1e-6))[finite].all())
    ok = bool(finite.any()) and dev <= SUM_TOLERANCE and in_range
    checks.append(Check("rows_sum_to_one", ok,
                        f"max |sum - 1| = {dev:.2e}" + ("" if ok else
                        " : the last output is not class probabilities (missing softmax?)")))
    return checks


def check_contract(model_or_path, *, runtime: bool = True) -> list[Check]:
    """All contract checks on a model given as a path, bytes or ModelProto."""
    model = _as_model(model_or_path)
    checks = static_checks(model)
    if runtime:
        if isinstance(model_or_path, (bytes, bytearray)):
            data = bytes(model_or_path)
        elif isinstance(model_or_path, (str, Path)):
            data = Path(model_or_path).read_bytes()
        else:
            data = model.SerializeToString()
        checks.extend(runtime_checks(data))
    return checks


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.required and not c.passed]


def assert_contract(model_or_path, *, runtime: bool = True) -> list[Check]:
    """Run :func:`check_contract`; raise :class:`ContractError` naming every failure."""
    checks = check_contract(model_or_path, runtime=runtime)
    bad = failures(checks)
    if bad:
        where = f"{model_or_path}: " if isinstance(model_or_path, (str, Path)) else ""
        lines = "; ".join(f"{c.name}: {c.reason}" for c in bad)
        raise ContractError(f"{where}model breaks the O2 contract: {lines}")
    return checks


def format_checks(checks: list[Check]) -> list[str]:
    """One line per check, marked PASS/FAIL (or WARN for optional ones)."""
    lines = []
    for c in checks:
        mark = "PASS" if c.passed else ("FAIL" if c.required else "WARN")
        lines.append(f"  [{mark}] {c.name:<28} {c.reason}")
    return lines
