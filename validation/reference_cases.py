"""Reference cases of the validation harness: small ONNX models that break O2 one way each.

Each case is built here, on the fly, by a few ONNX graph-building calls (nothing binary is
committed): one good model that passes every check, and broken models each of which must
fail with the named check and no other required one. ``tests/test_validate.py`` runs all
of them; run this file to write them to a folder and validate each from the shell::

    python validation/reference_cases.py OUT_DIR            # write the models
    python validation/reference_cases.py OUT_DIR --validate # ... and run the harness

The model behind every case is a linear classifier over the 22 features with the
metadata pid-export writes, so the one fault of each case is the only thing wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_FEATURES = 22
N_CLASSES = 4


@dataclass(frozen=True)
class Case:
    name: str
    fault: str
    #: Required checks that must fail (in-process run; the O2-runtime copies come on top).
    expect: frozenset[str]
    build: Callable[[Path], Path]


def linear_model(*, n_features: int = N_FEATURES, n_classes: int = N_CLASSES,
                 input_type: str = "float", batch: int | str = "N", softmax: bool = True,
                 clean_nan: bool = True, extra_input: bool = False, zipmap: bool = False,
                 batch_mean: bool = False, noise: bool = False, opset: int = 17,
                 ir_version: int = 8, metadata: dict | None = None, seed: int = 0):
    """A linear classifier with one switch per fault; the defaults give a valid model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pid_export.export import base_metadata, set_metadata

    elem = {"float": TensorProto.FLOAT, "double": TensorProto.DOUBLE}[input_type]
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.3, (n_features, n_classes)).astype(np.float32)
    inits = [numpy_helper.from_array(weights, "weights"),
             numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    nodes = []
    x = "input"
    if input_type != "float":
        nodes.append(helper.make_node("Cast", [x], ["as_float"], to=TensorProto.FLOAT))
        x = "as_float"
    if clean_nan:
        # NaN (an absent detector) -> 0 before the product, as a trained model would encode it.
        nodes += [helper.make_node("IsNaN", [x], ["missing"]),
                  helper.make_node("Where", ["missing", "zero", x], ["clean"])]
        x = "clean"
    nodes.append(helper.make_node("MatMul", [x, "weights"], ["scores"]))
    scores = "scores"
    if extra_input:
        nodes.append(helper.make_node("Add", [scores, "offset"], ["scores_offset"]))
        scores = "scores_offset"
    if batch_mean:
        # Subtracting the batch mean makes a row's answer depend on its neighbours.
        nodes += [helper.make_node("ReduceMean", [scores], ["batch_mean"], axes=[0], keepdims=1),
                  helper.make_node("Sub", [scores, "batch_mean"], ["centred"])]
        scores = "centred"
    if noise:
        nodes += [helper.make_node("RandomUniformLike", [scores], ["jitter"], low=0.0, high=1.0),
                  helper.make_node("Add", [scores, "jitter"], ["noisy"])]
        scores = "noisy"
    proba = "probabilities"
    if softmax:
        nodes.append(helper.make_node("Softmax", [scores], [proba], axis=1))
    else:
        nodes.append(helper.make_node("Identity", [scores], [proba]))

    inputs = [helper.make_tensor_value_info("input", elem, [batch, n_features])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("offset", TensorProto.FLOAT, [batch, n_classes]))
    opsets = [helper.make_opsetid("", opset)]
    if zipmap:
        nodes += [helper.make_node("ArgMax", [proba], ["label"], axis=1, keepdims=0),
                  helper.make_node("ZipMap", [proba], ["output_probability"], domain="ai.onnx.ml",
                                   classlabels_int64s=list(range(n_classes)))]
        opsets.append(helper.make_opsetid("ai.onnx.ml", 1))
        outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, [batch]),
                   helper.make_value_info("output_probability", helper.make_sequence_type_proto(
                       helper.make_map_type_proto(TensorProto.INT64,
                                                  helper.make_tensor_type_proto(TensorProto.FLOAT, []))))]
    else:
        outputs = [helper.make_tensor_value_info(proba, TensorProto.FLOAT, [batch, n_classes])]

    graph = helper.make_graph(nodes, "reference_case", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version
    meta = base_metadata()
    meta.update({"model_kind": "reference-linear", "momentum_range": "full",
                 "training_data_digest": "none (reference case)"})
    if metadata is not None:
        meta.update(metadata)
    set_metadata(model, meta)
    return model


def _save(model, folder: Path, name: str, *, external: bool = False) -> Path:
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{name}.onnx.data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def _case(name: str, fault: str, expect: set[str] | frozenset[str], *, external: bool = False,
          **switches) -> Case:
    return Case(name, fault, frozenset(expect),
                lambda folder: _save(linear_model(**switches), folder, name, external=external))


def _without_metadata(folder: Path) -> Path:
    model = linear_model()
    del model.metadata_props[:]
    return _save(model, folder, "no_metadata")


CASES: dict[str, Case] = {c.name: c for c in (
    _case("good", "none: a valid model", set()),
    _case("fixed_batch_1", "none: batch fixed at 1 is allowed (Tools/PIDML runs batch 1)", set(),
          batch=1),
    _case("fixed_batch_64", "input and output batch fixed at 64", {"input_shape"}, batch=64),
    _case("ir_11", "IR version 11", {"ir_version"}, ir_version=11),
    _case("opset_23", "ai.onnx opset 23", {"opsets"}, opset=23, ir_version=10),
    _case("zipmap", "ZipMap output (a sequence of maps)", {"no_map_outputs"}, zipmap=True),
    _case("logits", "logits without softmax", {"rows_sum_to_one"}, softmax=False),
    _case("features_21", "21 input features", {"input_shape"}, n_features=21),
    _case("two_inputs", "two inputs", {"single_input"}, extra_input=True),
    _case("float64_input", "float64 input", {"input_float32"}, input_type="double"),
    _case("external_data", "weights in an external-data sidecar", {"no_external_data"}, external=True),
    _case("nan_for_nan", "NaN output for NaN input", {"finite_outputs"}, clean_nan=False),
    _case("batch_dependent", "output depends on the rest of the batch", {"batch_consistency"},
          batch_mean=True),
    _case("nondeterministic", "random noise in the output", {"batch_consistency", "deterministic"},
          noise=True),
    _case("three_classes", "three classes instead of four",
          {"last_output_probabilities", "probabilities_shape", "metadata"}, n_classes=3,
          metadata={"class_names": ["pion", "kaon", "proton"], "class_pdg": [211, 321, 2212]}),
    _case("wrong_class_order", "metadata classes in another order", {"metadata"},
          metadata={"class_names": ["kaon", "pion", "proton", "electron"]}),
    Case("no_metadata", "no metadata at all", frozenset({"metadata"}), _without_metadata),
)}


def write_all(folder: str | Path) -> dict[str, Path]:
    """Write every case into ``folder``; returns case name -> model path."""
    return {name: case.build(Path(folder)) for name, case in CASES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the models into")
    parser.add_argument("--validate", action="store_true", help="run the harness on each case")
    parser.add_argument("--o2-runtime", action="store_true",
                        help="with --validate: also run under onnxruntime 1.22")
    args = parser.parse_args(argv)

    paths = write_all(args.out)
    if not args.validate:
        for name, path in paths.items():
            print(f"{name:<18} {path}  ({CASES[name].fault})")
        return 0

    from pid_export.validate import ValidateOptions, validate_model

    wrong = 0
    for name, path in paths.items():
        report = validate_model(path, ValidateOptions(o2_runtime=args.o2_runtime))
        failed = {c.name for c in report.failed}
        in_process = {n for n in failed if not n.startswith("o2_runtime")}
        ok = in_process == CASES[name].expect
        wrong += not ok
        print(f"{'ok ' if ok else 'BAD'} {name:<18} fails: {', '.join(sorted(failed)) or '-'}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
