"""The O2 contract checks (DESIGN §3) on any ONNX model.

Takes a path, bytes or an ``onnx.ModelProto`` and hands on a list of named
:class:`Check` results, each PASS, FAIL, WARN (an optional check that failed) or SKIP
(could not run, or not asked for), with a one-line reason. Static checks read the graph;
behaviour checks (:mod:`.validate_behaviour`) load it in onnxruntime and feed probe rows:
plausible tracks, every absent-detector pattern, all-NaN rows and edge values. With
``o2_runtime=True`` the behaviour checks run a second time under onnxruntime 1.22, the
version O2 builds (:mod:`.validate_o2`). :func:`assert_contract` raises
:class:`ContractError` listing every failure; the export gate, ``pid-export validate``,
``predict`` and the CCDB upload all use these same checks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import validate_behaviour
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
SUM_TOLERANCE = validate_behaviour.SUM_TOLERANCE
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


@dataclass
class Check:
    """One named verdict. ``required`` checks decide the exit code; a skipped check is never
    required (it did not run: either another check's failure stopped it, or it was not
    asked for)."""

    name: str
    passed: bool
    reason: str
    required: bool = True
    skipped: bool = False

    @property
    def status(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.passed:
            return "PASS"
        return "FAIL" if self.required else "WARN"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(name=d["name"], passed=bool(d["passed"]), reason=d["reason"],
                   required=bool(d.get("required", True)), skipped=bool(d.get("skipped", False)))


def skipped(name: str, reason: str) -> Check:
    return Check(name, False, reason, required=False, skipped=True)


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
        f"IR {ir} <= {MAX_IR_VERSION}" if ir <= MAX_IR_VERSION else
        f"IR {ir} > {MAX_IR_VERSION}: onnxruntime 1.22 refuses it ('Unsupported model IR "
        "version'); export with a lower IR version"))

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
    if outputs and not outputs[-1].type.HasField("tensor_type"):
        checks.append(skipped("last_output_probabilities",
                              f"last output {outputs[-1].name!r} is not a tensor (see no_map_outputs)"))
    elif outputs:
        last = outputs[-1]
        ok_type = last.type.HasField("tensor_type") and last.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = _dims(last) if last.type.HasField("tensor_type") else []
        # A fixed batch is the input check's verdict; here only rank and class count count.
        shape_ok = len(dims) == 2 and dims[1] in (N_CLASSES, None)
        reason = f"last output {last.name!r} {dims}"
        if ok_type and not dims:
            shape_ok = True
            reason = f"last output {last.name!r} float32, no static shape (probabilities_shape runs it)"
        elif not ok_type:
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
    checks.append(provenance_check(model))
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
        return Check("metadata", False, f"missing keys {missing} (the O2 contract, see README 'What the checks mean'); "
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


#: Metadata a person needs to trust an artefact without the training code (DESIGN §3).
PROVENANCE_METADATA = ("model_kind", "momentum_range", "training_data_digest", "package_version",
                       "creation_time")


def provenance_check(model) -> Check:
    """Optional: the descriptive metadata keys the main job writes."""
    props = {p.key for p in model.metadata_props}
    missing = [k for k in PROVENANCE_METADATA if k not in props]
    return Check("metadata_provenance", not missing,
                 "model kind, momentum range, data digest, version and time recorded"
                 if not missing else f"no {', '.join(missing)} in the metadata: readers cannot tell "
                 "what the model is or how it was checked", required=False)


def probe_blocks(n: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Named probe rows: plausible tracks, each absent-detector pattern, all NaN, edges."""
    from .features import mask_groups
    from .parity import absent_patterns, edge_blocks

    rng = np.random.default_rng(seed)
    x = np.empty((n, N_FEATURES), dtype=np.float32)
    x[:, 0] = rng.uniform(0.1, 5.0, n)
    x[:, 1] = rng.uniform(-0.8, 0.8, n)
    x[:, 2] = rng.uniform(0, 2 * np.pi, n)
    x[:, 3] = rng.uniform(30, 200, n)
    x[:, 4:8] = rng.normal(0, 3, (n, 4))
    x[:, 8] = rng.uniform(0.3, 1.0, n)
    x[:, 9:13] = rng.normal(0, 3, (n, 4))
    x[:, 13:17] = rng.dirichlet(np.ones(4), n)
    x[:, 17] = 1
    x[:, 18:20] = rng.normal(0, 0.01, (n, 2))
    x[:, 20:22] = 1
    blocks = {"plausible": x}
    for combo in absent_patterns():
        blocks["no " + "+".join(combo)] = mask_groups(x[:16], combo)
    blocks["all NaN"] = np.full((4, N_FEATURES), np.nan, dtype=np.float32)
    blocks.update(edge_blocks(x))
    return blocks


def probe_rows(n: int = 256, seed: int = 0) -> np.ndarray:
    """All probe rows of :func:`probe_blocks` in one array."""
    return np.concatenate(list(probe_blocks(n, seed).values()))


def runtime_checks(model_bytes_: bytes) -> list[Check]:
    """The behaviour checks under this environment's onnxruntime."""
    rows, _ = validate_behaviour.run_checks(model_bytes_, probe_blocks())
    checks = [Check.from_dict(r) for r in rows]
    ran_clean = all(c.passed or c.skipped for c in checks)
    for c in checks:
        if ran_clean and c.skipped:
            # The graph looked right to the static checks, yet onnxruntime sees a signature
            # the rows cannot be fed to: that disagreement is itself a fault.
            c.skipped, c.required = False, True
            c.reason = c.reason.replace("skipped: ", "cannot run: ", 1)
    return checks


#: Static checks whose failure means the probe rows cannot be fed as O2 feeds them.
RUNTIME_PRECONDITIONS = ("single_input", "input_float32", "input_shape", "no_map_outputs",
                         "no_external_data")


def _model_bytes(model_or_path, model) -> bytes:
    if isinstance(model_or_path, (bytes, bytearray)):
        return bytes(model_or_path)
    if isinstance(model_or_path, (str, Path)):
        return Path(model_or_path).read_bytes()
    return model.SerializeToString()


def check_contract(model_or_path, *, runtime: bool = True, o2_runtime: bool = False) -> list[Check]:
    """All contract checks on a model given as a path, bytes or ModelProto.

    ``runtime`` adds the behaviour checks under the installed onnxruntime; ``o2_runtime``
    adds them under onnxruntime 1.22 in its own cached environment (slow the first time:
    it installs that environment from the package index).
    """
    model = _as_model(model_or_path)
    checks = static_checks(model)
    if not (runtime or o2_runtime):
        return checks
    data = _model_bytes(model_or_path, model)
    blocked = [c.name for c in checks if c.name in RUNTIME_PRECONDITIONS and not c.passed]
    if runtime:
        if blocked:
            why = f"skipped: the model cannot be fed as O2 feeds it (see {', '.join(blocked)})"
            checks.extend(skipped(name, why) for name in validate_behaviour.CHECK_NAMES)
        else:
            checks.extend(runtime_checks(data))
    if o2_runtime:
        from .validate_o2 import o2_runtime_checks

        checks.extend(o2_runtime_checks(data, probe_blocks()))
    return checks


def failures(checks: list[Check]) -> list[Check]:
    """Required checks that did not pass (skipped checks are never required)."""
    return [c for c in checks if c.required and not c.passed and not c.skipped]


def assert_contract(model_or_path, *, runtime: bool = True, o2_runtime: bool = False) -> list[Check]:
    """Run :func:`check_contract`; raise :class:`ContractError` naming every failure."""
    checks = check_contract(model_or_path, runtime=runtime, o2_runtime=o2_runtime)
    bad = failures(checks)
    if bad:
        where = f"{model_or_path}: " if isinstance(model_or_path, (str, Path)) else ""
        lines = "; ".join(f"{c.name}: {c.reason}" for c in bad)
        raise ContractError(f"{where}model breaks the O2 contract: {lines}")
    return checks


def format_checks(checks: list[Check]) -> list[str]:
    """One line per check, marked PASS, FAIL, WARN (optional, failed) or SKIP.

    Consecutive checks skipped for the same reason share one line.
    """
    groups: list[list[Check]] = []
    for c in checks:
        prev = groups[-1][-1] if groups else None
        if prev is not None and c.skipped and prev.skipped and c.reason == prev.reason:
            groups[-1].append(c)
        else:
            groups.append([c])

    def label(g: list[Check]) -> str:
        return g[0].name if len(g) == 1 else f"{g[0].name} +{len(g) - 1} more"

    width = max([28, *(len(label(g)) + 1 for g in groups)])
    return [f"  [{g[0].status}] {label(g):<{width}} {g[0].reason}" for g in groups]
