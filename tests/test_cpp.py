"""The generated C++ against the Python feature builder, and the ``cpp`` command.

The parity tests compile ``cpp_stubs/driver.cpp`` with the system g++ against a header
that ``generate_cpp`` writes, feed it track rows as float32 bit patterns, and compare the
feature vectors it returns with ``features.encode`` bit for bit (uint32 views; two NaNs
count as equal whatever their payload). The ONNX models are built here with
``onnx.helper``: a MatMul and a Softmax carrying the metadata the exporter writes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from pid_export import features as F
from pid_export.cli import main
from pid_export.cppgen import cpp_identifier, generate_cpp
from pid_export.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "cpp_stubs" / "driver.cpp"
CXXFLAGS = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
BAYES_KEYS = ("bayesPi", "bayesKa", "bayesPr", "bayesEl")
MODEL_KINDS = ("xgb", "rf", "simplenn", "dnn", "fse0", "fse1")


# --- models ----------------------------------------------------------------------------


def make_model(path: Path, *, meta: dict | None = None, n_features: int = F.N_FEATURES,
               label_output: bool = False) -> Path:
    """A MatMul + Softmax classifier; ``meta`` goes to metadata_props as JSON values."""
    weights = np.random.default_rng(1).normal(size=(n_features, F.N_CLASSES)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", F.N_CLASSES])]
    if label_output:  # as tree converters do: label first, probabilities last
        nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
        outputs.insert(0, helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    graph = helper.make_graph(
        nodes, "pid", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_features])],
        outputs, [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in (meta or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    onnx.save(model, str(path))
    return path


def full_meta(**extra) -> dict:
    meta = {
        "feature_names": list(F.FEATURE_NAMES),
        "class_names": list(F.CLASS_NAMES),
        "class_pdg": list(F.CLASS_PDG),
        "missing_value": "nan",
        "feature_spec_digest": F.spec_digest(),
        "model_kind": "xgb",
        "momentum_range": "0-1",
        "package_version": "0.1.0",
    }
    meta.update(extra)
    return meta


# --- rows ------------------------------------------------------------------------------

F32 = np.float32
CUT = F32(F.SENTINEL_CUT)


def _nan_bits(bits: int) -> np.float32:
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


SPECIAL = np.array(
    [
        0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 99.5, 100.0, 127.0, -128.0, 33.3,
        1e30, -1e30, np.finfo(F32).max, -np.finfo(F32).max, np.inf, -np.inf,
        1e-45, -1e-45, 1e-40, np.finfo(F32).tiny, np.nextafter(np.finfo(F32).tiny, F32(0)),
        CUT, np.nextafter(CUT, F32(0)), np.nextafter(CUT, F32(-np.inf)),
        -997.5, -999.0, -1000.0, -1e4,
        np.nan, _nan_bits(0xFFC00000), _nan_bits(0x7F800001), _nan_bits(0x7FC12345),
    ],
    dtype=F32,
)

BASELINE = {
    "pt": 0.7, "eta": 0.1, "phi": 2.0, "tpcSignal": 55.0,
    "tpcNSigmaPi": -0.5, "tpcNSigmaKa": 3.0, "tpcNSigmaPr": 8.0, "tpcNSigmaEl": 2.0,
    "beta": 0.98, "tofNSigmaPi": 0.2, "tofNSigmaKa": -4.0, "tofNSigmaPr": -9.0, "tofNSigmaEl": 5.0,
    "bayesPi": 90.0, "bayesKa": 5.0, "bayesPr": 3.0, "bayesEl": 2.0,
    "dcaXY": 0.001, "dcaZ": -0.002, "hasTPC": 1.0, "hasTOF": 1.0,
}
TPC_KEYS = ("tpcSignal", "tpcNSigmaPi", "tpcNSigmaKa", "tpcNSigmaPr", "tpcNSigmaEl")
TOF_KEYS = ("beta", "tofNSigmaPi", "tofNSigmaKa", "tofNSigmaPr", "tofNSigmaEl")


def parity_rows(n_random: int = 3000, seed: int = 231) -> dict[str, np.ndarray]:
    """Track rows (float32, keyed by O2 accessor) that probe every rule of encode."""
    rows: list[dict[str, float]] = []

    def add(**changes: float) -> None:
        rows.append({**BASELINE, **changes})

    add()
    # Named cases: detectors absent with AO2D sentinels or with plausible leftovers.
    add(hasTOF=0.0, **{k: -999.0 for k in TOF_KEYS})
    add(hasTOF=0.0)
    add(hasTPC=0.0, **{k: -999.0 for k in TPC_KEYS})
    add(hasTPC=0.0)
    add(hasTPC=0.0, hasTOF=0.0, **{k: -999.0 for k in TPC_KEYS + TOF_KEYS})
    add(hasTOF=1.0, **{k: -999.0 for k in TOF_KEYS})  # flag set, values sentinel
    add(hasTPC=np.nan, hasTOF=np.nan)
    # Bayes: none, partial (one negative, one NaN), -0 counts as available, all zero.
    for none in (-1.0, np.nan, -999.0):
        add(**{k: none for k in BAYES_KEYS})
    for i, key in enumerate(BAYES_KEYS):
        add(**{key: -1.0})
        add(**{key: np.nan})
        add(**{key: -0.0})
        add(**{key: -1e-45, BAYES_KEYS[(i + 1) % 4]: 1e-45})
    add(**{k: 0.0 for k in BAYES_KEYS})
    add(bayesPi=100.0, bayesKa=0.0, bayesPr=0.0, bayesEl=0.0)
    add(**{k: np.inf for k in BAYES_KEYS})
    # NaN and sentinel everywhere.
    add(**{k: np.nan for k in F.RAW_INPUTS})
    add(**{k: -999.0 for k in F.RAW_INPUTS})
    # Each special value in each column, the others at the baseline.
    for key in F.RAW_INPUTS:
        for value in SPECIAL:
            add(**{key: value})

    table = {k: np.array([r[k] for r in rows], dtype=F32) for k in F.RAW_INPUTS}
    # Special bit patterns (NaN payloads) must survive the list of Python floats above.
    for key in F.RAW_INPUTS:
        start = len(rows) - len(SPECIAL) * (len(F.RAW_INPUTS) - F.RAW_INPUTS.index(key))
        table[key][start:start + len(SPECIAL)] = SPECIAL

    rng = np.random.default_rng(seed)
    rand = {}
    for key in F.RAW_INPUTS:
        if key.startswith("has"):
            col = rng.choice(np.array([0, 1, 1, 1, np.nan, 0.5, -1, 2], dtype=F32), n_random)
        elif key.startswith("bayes"):
            col = np.round(rng.uniform(-5, 101, n_random)).astype(F32)
        else:
            col = (rng.normal(size=n_random) * rng.choice([1e-3, 1.0, 50.0], n_random)).astype(F32)
        special = rng.random(n_random) < 0.15
        col[special] = rng.choice(SPECIAL, int(special.sum()))
        rand[key] = col
    return {k: np.concatenate([table[k], rand[k]]) for k in F.RAW_INPUTS}


def encode(raw: dict[str, np.ndarray], n: int | None = None) -> np.ndarray:
    """features.encode, quiet about the signalling NaNs among the rows."""
    with np.errstate(invalid="ignore"):
        return F.encode(raw, n)


def write_rows(path: Path, raw: dict[str, np.ndarray]) -> None:
    names = list(raw)
    words = np.stack([np.asarray(raw[k], dtype=F32).view(np.uint32) for k in names], axis=1)
    with open(path, "w") as fh:
        fh.write("pid-export-rows 1\n" + " ".join(names) + "\n")
        np.savetxt(fh, words, fmt="%08x")


def read_features(path: Path, n_features: int) -> np.ndarray:
    words = Path(path).read_text().split()
    bits = np.array([int(w, 16) for w in words], dtype=np.uint32)
    return bits.reshape(-1, n_features).view(np.float32)


def assert_bits_equal(got: np.ndarray, want: np.ndarray, names, raw) -> None:
    assert got.shape == want.shape
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        rows, cols = np.nonzero(~same)
        lines = []
        for r, c in list(zip(rows, cols))[:10]:
            inputs = {k: float(v[r]) for k, v in raw.items()}
            lines.append(f"row {r} {names[c]}: C++ {got[r, c]!r} "
                         f"({got[r, c:c + 1].view(np.uint32)[0]:08x}) vs Python {want[r, c]!r} "
                         f"({want[r, c:c + 1].view(np.uint32)[0]:08x}); inputs {inputs}")
        pytest.fail(f"{(~same).sum()} feature values differ:\n" + "\n".join(lines))


# --- building and running the driver -------------------------------------------------


@pytest.fixture(scope="module")
def gxx() -> str:
    path = shutil.which("g++")
    if path is None:
        pytest.skip("no g++ on PATH: the C++ parity check needs the system g++ (C++17)")
    return path


def build_driver(gxx: str, header: Path, namespace: str, exe: Path) -> Path:
    cmd = [gxx, *CXXFLAGS, f'-DPIDEXPORT_HEADER="{header}"', f"-DPIDEXPORT_NS={namespace}",
           "-o", str(exe), str(DRIVER)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"g++ failed:\n{' '.join(cmd)}\n{proc.stderr}"
    return exe


def run_driver(exe: Path, raw: dict[str, np.ndarray], workdir: Path, n_features: int):
    rows, full, no_bayes = workdir / "rows.txt", workdir / "full.txt", workdir / "nobayes.txt"
    write_rows(rows, raw)
    proc = subprocess.run([str(exe), str(rows), str(full), str(no_bayes)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return read_features(full, n_features), read_features(no_bayes, n_features)


@pytest.fixture(scope="module")
def spec_run(gxx, tmp_path_factory):
    """Header from a model with full metadata, driver built and run on parity_rows()."""
    work = tmp_path_factory.mktemp("cpp_spec")
    model = make_model(work / "pid_xgb_full.onnx", meta=full_meta())
    header = generate_cpp(model, work / "gen")[0]
    exe = build_driver(gxx, header, f"pidexport::{cpp_identifier(model)}", work / "driver")
    raw = parity_rows()
    full, no_bayes = run_driver(exe, raw, work, F.N_FEATURES)
    return raw, full, no_bayes


# --- parity --------------------------------------------------------------------------


def test_header_matches_encode_bit_for_bit(spec_run):
    raw, full, _ = spec_run
    assert len(full) > 3000
    assert_bits_equal(full, encode(raw), F.FEATURE_NAMES, raw)


def test_no_bayes_variant_matches_encode_without_bayes_inputs(spec_run):
    raw, _, no_bayes = spec_run
    without = {k: v for k, v in raw.items() if k not in BAYES_KEYS}
    assert_bits_equal(no_bayes, encode(without, len(raw["pt"])), F.FEATURE_NAMES, raw)
    assert (no_bayes[:, 17] == 0).all()


def test_rows_probe_the_encoding_rules(spec_run):
    # Guards the row set itself: each rule must be exercised, in both directions.
    raw, full, _ = spec_run
    x = encode(raw)
    tpc_vals = raw["tpcSignal"][raw["hasTPC"] == 1]
    assert (tpc_vals == CUT).any() and (tpc_vals == np.nextafter(CUT, F32(0))).any()
    assert np.isnan(x[raw["hasTOF"] == 0, 8:13]).all() and (raw["hasTOF"] == 0).sum() > 100
    assert np.isnan(x[raw["hasTPC"] == 0, 3:8]).all() and (raw["hasTPC"] == 0).sum() > 100
    ge = np.stack([(raw[k] >= 0) & (raw[k] <= 100) for k in BAYES_KEYS], axis=1)
    partial = ge.any(axis=1) & ~ge.all(axis=1)
    assert (np.stack([raw[k] > 100 for k in BAYES_KEYS], axis=1).any(axis=1)).any()  # +inf, 1e30
    assert partial.sum() > 100 and (x[partial, 17] == 0).all()
    assert (x[ge.all(axis=1), 17] == 1).all()
    assert (np.signbit(x[:, 0]) & (x[:, 0] == 0)).any()  # -0.0 kept
    sub = np.abs(x[:, 0]) < np.finfo(F32).tiny
    assert (sub & (x[:, 0] != 0)).any()  # denormals kept
    assert np.array_equal(np.isnan(full), np.isnan(x))


def test_custom_feature_order_matches_encode(gxx, tmp_path):
    names = list(reversed(F.FEATURE_NAMES))
    names.remove("phi")
    names.remove("has_tof")
    feats = tmp_path / "features.txt"
    feats.write_text("# my model's inputs\n" + "\n".join(names) + "\n")
    model = make_model(tmp_path / "theirs.onnx", n_features=len(names))
    header = generate_cpp(model, tmp_path / "gen", features_file=feats)[0]
    assert f"kNFeatures = {len(names)};" in header.read_text()

    exe = build_driver(gxx, header, "pidexport::theirs", tmp_path / "driver")
    raw = parity_rows(n_random=500)
    full, no_bayes = run_driver(exe, raw, tmp_path, len(names))
    cols = [F.FEATURE_NAMES.index(n) for n in names]
    assert_bits_equal(full, encode(raw)[:, cols], names, raw)
    without = {k: v for k, v in raw.items() if k not in BAYES_KEYS}
    assert_bits_equal(no_bayes, encode(without, len(raw["pt"]))[:, cols], names, raw)


def test_header_with_only_bayes_features_compiles_cleanly(gxx, tmp_path):
    # fillFeaturesNoBayes then reads nothing from the row: no unused-parameter warning.
    feats = tmp_path / "features.json"
    feats.write_text(json.dumps(["bayes_prob_ka", "bayes_available"]))
    model = make_model(tmp_path / "bayes_only.onnx", n_features=2)
    header = generate_cpp(model, tmp_path / "gen", features_file=feats)[0]
    build_driver(gxx, header, "pidexport::bayesOnly", tmp_path / "driver")


def test_header_compiles_on_its_own(gxx, tmp_path):
    header = generate_cpp(make_model(tmp_path / "pid.onnx", meta=full_meta()), tmp_path / "gen")[0]
    src = tmp_path / "only.cpp"
    src.write_text(f'#include "{header}"\nint main() {{ return pidexport::pid::kNFeatures == 22 ? 0 : 1; }}\n')
    proc = subprocess.run([gxx, *CXXFLAGS, "-fsyntax-only", str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- generated text ------------------------------------------------------------------


def test_task_and_cmake_use_the_generated_names(tmp_path):
    model = make_model(tmp_path / "pid_xgb_0-1.onnx", meta=full_meta())
    header, task, cmake = generate_cpp(model, tmp_path / "gen")
    assert [p.name for p in (header, task, cmake)] == [
        "pidXgb01Features.h", "pidXgb01Task.cxx", "pidXgb01Task.cmake"]
    h, t, c = header.read_text(), task.read_text(), cmake.read_text()

    namespace = re.search(r"^namespace (pidexport::\w+)$", h, re.M).group(1)
    assert namespace == "pidexport::pidXgb01"
    assert f'#include "{header.name}"' in t
    assert f"namespace features = {namespace};" in t
    declared = set(re.findall(r"\b(k\w+)(?: =|\{)", h)) | set(re.findall(r"inline void (\w+)\(", h))
    used = set(re.findall(r"features::(\w+)", t))
    assert used and used <= declared, used - declared
    assert {"fillFeatures", "fillFeaturesNoBayes", "kNFeatures", "kNClasses", "kClassPdg",
            "kInputName", "kOutputName", "kSpecDigest"} <= used
    for name in F.CLASS_NAMES:
        assert f"Prob{name.capitalize()}" in t
    assert "struct PidXgb01Task" in t and "adaptAnalysisTask<PidXgb01Task>" in t
    assert "o2::ml::OnnxModel" in t and "retrieveBlob" in t
    for accessor in {f.accessor for f in F.FEATURES if f.accessor}:
        assert f"track.{accessor}()" in h
    assert "o2physics_add_dpl_workflow(pid-xgb01-task" in c and f"SOURCES {task.name}" in c
    # No feature count or name is hard-coded in the task: everything comes from the header.
    assert not re.search(r"\b22\b", t) and "tpc_signal" not in t
    assert F.spec_digest() in h and "momentum range (GeV/c): 0-1" in h


def test_task_joins_only_the_tables_the_features_need(tmp_path):
    feats = tmp_path / "features.txt"
    feats.write_text("pt\ntpc_signal\n")
    model = make_model(tmp_path / "small.onnx", n_features=2)
    task = generate_cpp(model, tmp_path / "gen", features_file=feats)[1].read_text()
    assert "using TracksNoBayes = soa::Join<aod::Tracks, aod::TracksExtra>;" in task
    assert "using TracksWithBayes = soa::Join<aod::Tracks, aod::TracksExtra>;" in task
    assert "cannot be checked here" in task and "LookupCustomMetadataMapAllocated" not in task


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_generated_for_every_model_kind(tmp_path, kind):
    model = make_model(tmp_path / f"pid_{kind}.onnx", meta=full_meta(model_kind=kind),
                       label_output=kind in ("xgb", "rf"))
    header, task, _ = generate_cpp(model, tmp_path / "gen")
    h = header.read_text()
    assert f"// model kind: {kind}" in h and f"// model kind: {kind}" in task.read_text()
    assert 'kOutputName = "probabilities";' in h  # the last output, after any label


def test_generation_is_deterministic(tmp_path):
    model = make_model(tmp_path / "pid.onnx", meta=full_meta())
    first = [p.read_bytes() for p in generate_cpp(model, tmp_path / "a")]
    second = [p.read_bytes() for p in generate_cpp(model, tmp_path / "b")]
    assert first == second


def test_odd_metadata_stays_valid_cpp(gxx, tmp_path):
    meta = full_meta(class_names=["pi+/-", 'k"aon', "p\n", "électron"],
                     model_description="line\nbreak, then a trailing backslash \\")
    header, task, _ = generate_cpp(make_model(tmp_path / "odd.onnx", meta=meta), tmp_path / "gen")
    h = header.read_text()
    src = tmp_path / "odd.cpp"
    src.write_text(f'#include "{header}"\nint main() {{ return pidexport::odd::kNClasses == 4 ? 0 : 1; }}\n')
    proc = subprocess.run([gxx, *CXXFLAGS, "-fsyntax-only", str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "// description: line break, then a trailing backslash\n" in h
    assert r'"k\"aon"' in h and r'"p\012"' in h and r'"\303\251lectron"' in h
    t = task.read_text()
    assert all(f"DECLARE_SOA_COLUMN({c}," in t for c in ("ProbPi", "ProbClass1", "ProbClass2", "ProbClass3"))


# --- bad input, through the command --------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(main, ["cpp", *map(str, args)])


def test_cli_writes_and_lists_the_files(tmp_path):
    model = make_model(tmp_path / "pid.onnx", meta=full_meta())
    result = invoke(model, "--out-dir", tmp_path / "gen")
    assert result.exit_code == 0, result.output
    listed = result.stdout.split()
    assert [Path(p).name for p in listed] == ["pidFeatures.h", "pidTask.cxx", "pidTask.cmake"]
    assert all(Path(p).is_file() for p in listed)
    assert not list((tmp_path / "gen").glob(".*")), "temporary files left behind"


def test_cli_model_without_metadata_names_missing_keys(tmp_path):
    model = make_model(tmp_path / "theirs.onnx")
    result = invoke(model, "--out-dir", tmp_path / "gen")
    assert result.exit_code == 2
    for key in ("feature_names", "class_names", "class_pdg", "missing_value"):
        assert key in result.output
    assert "--features" in result.output
    assert not (tmp_path / "gen").exists()


def test_cli_partial_metadata_names_only_what_is_missing(tmp_path):
    meta = full_meta()
    del meta["class_pdg"]
    result = invoke(make_model(tmp_path / "m.onnx", meta=meta), "--out-dir", tmp_path / "gen")
    assert result.exit_code == 2
    assert "lacks class_pdg" in result.output and "feature_names" not in result.output


@pytest.mark.parametrize("style", ["json", "text"])
def test_cli_features_file_for_a_foreign_model(tmp_path, style):
    names = list(F.FEATURE_NAMES)
    feats = tmp_path / f"features.{style}"
    feats.write_text(json.dumps(names) if style == "json" else ", ".join(names) + "\n")
    model = make_model(tmp_path / "theirs.onnx")
    result = invoke(model, "--out-dir", tmp_path / "gen", "--features", feats)
    assert result.exit_code == 0, result.output
    h = (tmp_path / "gen" / "theirsFeatures.h").read_text()
    assert f"feature order from the file {feats.name}" in h
    assert 'kSpecDigest = "";' in h and "model kind: not in metadata" in h
    assert "class order assumed, not in metadata: pion, kaon, proton, electron" in h


@pytest.mark.parametrize(
    ("content", "n_features", "message"),
    [
        ('["pt", "eta", "warp_factor"]', 3, "'warp_factor'"),
        ('["pt", "pt"]', 2, "more than once"),
        ("[]", 0, "non-empty list"),
        ("[1, 2", 2, "not valid JSON"),
        ('["pt", "eta"]', 22, "takes 22 features but 2 are named"),
    ],
)
def test_cli_bad_features_file(tmp_path, content, n_features, message):
    feats = tmp_path / "features.json"
    feats.write_text(content)
    model = make_model(tmp_path / "theirs.onnx", n_features=max(n_features, 1))
    result = invoke(model, "--out-dir", tmp_path / "gen", "--features", feats)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_features_file_contradicting_metadata(tmp_path):
    feats = tmp_path / "features.json"
    feats.write_text(json.dumps(list(reversed(F.FEATURE_NAMES))))
    model = make_model(tmp_path / "pid.onnx", meta=full_meta())
    result = invoke(model, "--out-dir", tmp_path / "gen", "--features", feats)
    assert result.exit_code == 2 and "differ from the 22" in result.output


def test_cli_other_feature_spec_is_refused(tmp_path):
    model = make_model(tmp_path / "old.onnx", meta=full_meta(feature_spec_digest="0123456789abcdef"))
    result = invoke(model, "--out-dir", tmp_path / "gen")
    assert result.exit_code == 2
    assert "0123456789abcdef" in result.output and F.spec_digest() in result.output


def test_cli_class_count_must_match_output(tmp_path):
    meta = full_meta(class_names=["pion", "kaon", "proton"], class_pdg=[211, 321, 2212])
    result = invoke(make_model(tmp_path / "m.onnx", meta=meta), "--out-dir", tmp_path / "gen")
    assert result.exit_code == 2 and "4 values per track but 3 classes" in result.output


def test_cli_existing_files_need_force(tmp_path):
    model = make_model(tmp_path / "pid.onnx", meta=full_meta())
    out = tmp_path / "gen"
    out.mkdir()
    (out / "pidTask.cxx").write_text("// my edits\n")

    refused = invoke(model, "--out-dir", out)
    assert refused.exit_code == 2
    assert "pidTask.cxx" in refused.output and "--force" in refused.output
    assert (out / "pidTask.cxx").read_text() == "// my edits\n"
    assert not (out / "pidFeatures.h").exists()  # all or nothing

    forced = invoke(model, "--out-dir", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert "struct PidTask" in (out / "pidTask.cxx").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["pidFeatures.h", "pidTask.cmake", "pidTask.cxx"]


def test_cli_missing_or_broken_model(tmp_path):
    assert invoke(tmp_path / "nope.onnx", "--out-dir", tmp_path / "gen").exit_code == 2
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all \x00\xff")
    result = invoke(broken, "--out-dir", tmp_path / "gen")
    assert result.exit_code == 2 and "broken.onnx" in result.output


def test_cli_last_output_must_be_probabilities(tmp_path):
    model = onnx.load(str(make_model(tmp_path / "m.onnx", meta=full_meta(), label_output=True)))
    model.graph.output.append(model.graph.output[0])  # the int64 label last
    del model.graph.output[0]
    onnx.save(model, str(tmp_path / "label_last.onnx"))
    result = invoke(tmp_path / "label_last.onnx", "--out-dir", tmp_path / "gen")
    assert result.exit_code == 2 and "'label' is not a float tensor" in result.output


def test_out_dir_that_is_a_file(tmp_path):
    model = make_model(tmp_path / "pid.onnx", meta=full_meta())
    (tmp_path / "gen").write_text("")
    with pytest.raises(InputError, match="not a folder"):
        generate_cpp(model, tmp_path / "gen")


@pytest.mark.parametrize(
    ("stem", "ident"),
    [("pid_xgb_0-1", "pidXgb01"), ("PID", "pid"), ("3models", "pid3models"), ("new", "newModel"),
     ("---", "pidModel")],
)
def test_cpp_identifier(stem, ident):
    assert cpp_identifier(f"/x/{stem}.onnx") == ident
