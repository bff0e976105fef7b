"""C++ generation: from an exported ONNX model to the files an O2Physics task needs.

Takes an ONNX model (its ``metadata_props`` as :mod:`.export` writes them, or a feature
list the user supplies for someone else's model) and hands on three files:

* ``<name>Features.h``: standalone C++17 (no O2 includes) with the feature and class
  facts and ``fillFeatures()``, which builds the model input from an O2 track row through
  its accessors with exactly the rules of :func:`.features.encode` (the C++ check in
  ``cpp_stubs/`` proves the two agree bit for bit), plus ``fillFeaturesNoBayes()`` for
  analyses without the Bayesian PID tables;
* ``<name>Task.cxx``: an example O2Physics task that loads the model from the CCDB (or a
  local file) and fills a table with the class probabilities and the predicted class;
* ``<name>Task.cmake``: the ``o2physics_add_dpl_workflow`` lines that build the task.

``<name>`` is the model file name in camelCase, so two models can share a folder. The
generated text holds no timestamp: generating twice from one model gives the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError
from .export import REQUIRED_METADATA, load_model, read_metadata
from .features import (
    CLASS_NAMES,
    CLASS_PDG,
    FEATURE_NAMES,
    FEATURES,
    GROUPS,
    SENTINEL_CUT,
    Feature,
    spec_digest,
)

__all__ = ["cpp_identifier", "generate_cpp"]

log = logging.getLogger(__name__)

#: How the generated C++ reads each detector group (the rules of ``features.encode``).
#: A group missing here makes generation fail loudly rather than guess.
_FLAG_FROM_ACCESSOR = ("tpc", "tof")  # flag = accessor value > 0; values NaN when unset
_FLAG_FROM_VALUES = ("bayes",)  # flag = all values in [0, 100]; values arrive in percent
_ALWAYS_PRESENT = ("tracking",)
_LOCAL_FLAG = {"tpc": "hasTpc", "tof": "hasTof", "bayes": "hasBayes"}

_CPP_KEYWORDS = frozenset(
    "alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t "
    "char16_t char32_t class compl concept const consteval constexpr constinit const_cast "
    "continue co_await co_return co_yield decltype default delete do double dynamic_cast "
    "else enum explicit export extern false float for friend goto if inline int long "
    "mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected "
    "public register reinterpret_cast requires return short signed sizeof static "
    "static_assert static_cast struct switch template this thread_local throw true try "
    "typedef typeid typename union unsigned using virtual void volatile wchar_t while xor "
    "xor_eq o2 std".split()
)


@dataclass(frozen=True)
class _ModelFacts:
    """What the generated files need to know about one model."""

    model_file: str
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    class_pdg: tuple[int, ...]
    input_name: str
    output_name: str
    digest: str  # feature_spec_digest of the model, "" when it carries none
    source: str  # where the feature list came from, for the header comment
    notes: tuple[str, ...]  # model facts for the comments (kind, range, ...)


@dataclass(frozen=True)
class _Names:
    """C++ and file names derived from the model file name."""

    ident: str  # camelCase: namespace and file prefix
    pascal: str  # task struct and table
    kebab: str  # workflow name
    header: str
    task: str
    cmake: str
    table_desc: str  # O2 data description, at most 16 characters


def cpp_identifier(model_path: str | Path) -> str:
    """The camelCase name used for the files and the C++ namespace of a model.

    ``pid_xgb_0-1.onnx`` gives ``pidXgb01``; a name that would start with a digit or be a
    C++ keyword gets a ``pid`` prefix or a ``Model`` suffix.
    """
    parts = [p.lower() for p in re.findall(r"[A-Za-z0-9]+", Path(model_path).stem)]
    if not parts:
        return "pidModel"
    ident = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    if ident[0].isdigit():
        ident = "pid" + ident
    if ident in _CPP_KEYWORDS:
        ident += "Model"
    return ident


def generate_cpp(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    features_file: str | Path | None = None,
    force: bool = False,
) -> list[Path]:
    """Write the C++ header, example task and CMake lines for ``model_path``.

    The feature order and classes come from the model's metadata; ``features_file`` (a
    JSON list, or text with one name a line) supplies the feature order for a model that
    lacks it. Refuses to replace files already in ``out_dir`` unless ``force``. Returns
    the paths written (header, task, CMake lines).
    """
    model_path = Path(model_path)
    out_dir = Path(out_dir)
    facts = _model_facts(model_path, features_file)
    names = _names(model_path)

    texts = {
        out_dir / names.header: _render_header(facts, names),
        out_dir / names.task: _render_task(facts, names),
        out_dir / names.cmake: _render_cmake(names),
    }

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir}: exists and is not a folder; choose a folder")
    existing = [p for p in texts if p.exists() or p.is_symlink()]
    if existing and not force:
        listed = ", ".join(p.name for p in existing)
        raise InputError(
            f"--out-dir {out_dir}: already holds {listed}; pass --force to replace "
            "them or choose another folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in texts.items():
        _write_text_atomic(path, text)
        log.debug("wrote %s", path)
        written.append(path)
    return written


# --- reading the model -----------------------------------------------------------------


def _model_facts(model_path: Path, features_file: str | Path | None) -> _ModelFacts:
    model = load_model(model_path)
    meta = read_metadata(model)
    input_name, n_inputs = _graph_input(model, model_path)
    output_name, n_outputs = _graph_output(model, model_path)

    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if features_file is None:
        if missing:
            raise InputError(
                f"{model_path}: the ONNX metadata lacks {', '.join(missing)} (keys that "
                "pid-export writes on export), so the feature order is unknown; "
                "pass --features FILE listing the model's input features in order"
            )
        names = _checked_names(meta["feature_names"], f"{model_path} metadata feature_names")
        source = "the model's metadata (feature_names)"
    else:
        names = _read_features_file(Path(features_file))
        if "feature_names" in meta and list(meta["feature_names"]) != list(names):
            raise InputError(
                f"--features {features_file}: lists {len(names)} features that differ from "
                f"the {len(meta['feature_names'])} in the model's metadata "
                f"({_short(meta['feature_names'])}); the metadata is what the model was "
                "trained on: drop --features or fix the file"
            )
        source = f"the file {_comment(Path(features_file).name)} given with --features"

    if n_inputs is not None and n_inputs != len(names):
        raise InputError(
            f"{model_path}: input {input_name!r} takes {n_inputs} features but "
            f"{len(names)} are named ({source}); the list must match the model"
        )

    digest = str(meta.get("feature_spec_digest", ""))
    if digest and digest != spec_digest():
        msg = (
            f"{model_path}: exported with feature specification {digest}, but this "
            f"pid-export {__version__} encodes specification {spec_digest()}"
        )
        if features_file is None:
            raise InputError(
                msg + "; the C++ would not build the inputs the model was trained on: "
                "generate with the pid-export version that exported the model"
            )
        warnings.warn(msg + "; going on with --features", UserWarning, stacklevel=2)

    class_names, class_pdg = _classes(meta, model_path, n_outputs)
    notes = _notes(meta)
    if "class_names" not in meta:
        notes += (f"class order assumed, not in metadata: {', '.join(class_names)}",)
    if meta.get("missing_value", "nan") != "nan":
        raise InputError(
            f"{model_path}: metadata missing_value is {meta['missing_value']!r}, but the "
            "generated C++ feeds NaN for absent values; export the model "
            "with NaN as its missing value"
        )
    return _ModelFacts(
        model_file=model_path.name,
        feature_names=tuple(names),
        class_names=class_names,
        class_pdg=class_pdg,
        input_name=input_name,
        output_name=output_name,
        digest=digest,
        source=source,
        notes=notes,
    )


def _graph_input(model: Any, model_path: Path) -> tuple[str, int | None]:
    import onnx

    initialisers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise InputError(
            f"{model_path}: graph inputs {[i.name for i in inputs]}; the C++ feeds one "
            "float32 [N, F] input: export the model with a single float input"
        )
    return inputs[0].name, _dim(inputs[0], 1)


def _graph_output(model: Any, model_path: Path) -> tuple[str, int | None]:
    import onnx

    # o2::analysis::MlResponse reads the last output; so does the generated task.
    last = model.graph.output[-1]
    if last.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise InputError(
            f"{model_path}: the last output {last.name!r} is not a float tensor; O2 reads "
            "the class probabilities from the last output: export them last"
        )
    return last.name, _dim(last, -1)


def _dim(value_info: Any, axis: int) -> int | None:
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) < 2:
        return None
    dim = dims[axis]
    return dim.dim_value if dim.HasField("dim_value") else None


def _classes(meta: dict, model_path: Path, n_outputs: int | None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    names = meta.get("class_names", list(CLASS_NAMES))
    pdg = meta.get("class_pdg", list(CLASS_PDG))
    ok = (
        isinstance(names, list) and isinstance(pdg, list) and len(names) == len(pdg) > 0
        and all(isinstance(n, str) and n for n in names)
        and all(isinstance(p, int) and not isinstance(p, bool) for p in pdg)
    )
    if not ok:
        raise InputError(
            f"{model_path}: metadata class_names {_short(names)} and class_pdg "
            f"{_short(pdg)} must be lists of names and integer PDG codes of one length"
        )
    if n_outputs is not None and n_outputs != len(names):
        raise InputError(
            f"{model_path}: last output gives {n_outputs} values per track but "
            f"{len(names)} classes are named ({', '.join(names)})"
        )
    return tuple(names), tuple(pdg)


def _checked_names(names: Any, where: str) -> list[str]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"{where}: expected a non-empty list of feature names, got {_short(names)}")
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise InputError(
            f"{where}: unknown feature names {', '.join(map(repr, unknown))}; the C++ "
            f"can fill only the specification's features: {', '.join(FEATURE_NAMES)}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{where}: features listed more than once: {', '.join(twice)}")
    return list(names)


def _read_features_file(path: Path) -> list[str]:
    """A JSON list (or object with ``feature_names``), or text with one name a line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--features {path}: cannot read it ({err})") from err
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise InputError(f"--features {path}: not valid JSON ({err})") from err
        if isinstance(data, dict):
            data = data.get("feature_names")
        return _checked_names(data, f"--features {path}")
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        names.extend(t for t in re.split(r"[\s,]+", line) if t)
    return _checked_names(names, f"--features {path}")


def _notes(meta: dict) -> tuple[str, ...]:
    """Model facts worth a comment line, in a fixed order (the first three always)."""
    always = (
        ("model_kind", "model kind"),
        ("momentum_range", "momentum range (GeV/c)"),
        ("feature_spec_digest", "feature specification digest of the model"),
    )
    if_present = (
        ("model_description", "description"),
        ("training_data_digest", "training data digest"),
        ("package_version", "exported by pid-export"),
        ("creation_time", "created"),
        ("test_accuracy", "test accuracy"),
    )
    notes = [f"{label}: {_comment(meta.get(key, 'not in metadata'))}" for key, label in always]
    notes += [f"{label}: {_comment(meta[key])}" for key, label in if_present if key in meta]
    parity = meta.get("parity")
    if isinstance(parity, dict):
        notes.append(
            f"parity onnxruntime vs native: passed {parity.get('passed')}, "
            f"max |diff| {parity.get('max_abs_diff')}"
        )
    return tuple(notes)


# --- names and text helpers ------------------------------------------------------------


def _names(model_path: Path) -> _Names:
    ident = cpp_identifier(model_path)
    pascal = ident[0].upper() + ident[1:]
    kebab = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", ident).lower() + "-task"
    desc = ident.upper()
    if len(desc) > 16:
        desc = desc[:11] + hashlib.sha1(ident.encode()).hexdigest()[:5].upper()
    return _Names(
        ident=ident, pascal=pascal, kebab=kebab, header=f"{ident}Features.h",
        task=f"{ident}Task.cxx", cmake=f"{ident}Task.cmake", table_desc=desc,
    )


def _cpp_string(text: str) -> str:
    """A C++ string literal; octal escapes (at most three digits) for anything odd."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _comment(value: Any, limit: int = 120) -> str:
    """One line of comment text: no line breaks, no control characters, bounded length."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    # A // comment that ends in a backslash would swallow the next line of code.
    return text.rstrip("\\ ")


def _short(value: Any) -> str:
    return _comment(value, 80)


def _float_literal(value: float) -> str:
    text = repr(float(np.float32(value)))
    if np.float32(text) != np.float32(value):  # pragma: no cover - repr round-trips
        raise ValueError(f"cannot write {value!r} as an exact float literal")
    return text + "f"


def _class_column(names: tuple[str, ...]) -> list[str]:
    """Column names ``ProbPion``... from the class names; ``ProbClass<i>`` if unusable."""
    cols = []
    for i, name in enumerate(names):
        parts = re.findall(r"[A-Za-z0-9]+", name)
        plain = re.fullmatch(r"[A-Za-z0-9 _.+/-]+", name) is not None and parts
        col = "Prob" + "".join(p[:1].upper() + p[1:].lower() for p in parts)
        cols.append(col if plain else f"ProbClass{i}")
    if len(set(cols)) != len(cols):
        cols = [f"ProbClass{i}" for i in range(len(names))]
    return cols


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private; sources are meant to be shared (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the header ------------------------------------------------------------------------

_HEADER = Template("""\
// $header: model input for $model_file.
// Generated by pid-export $version (`pid-export cpp`); do not edit, regenerate.
//
$notes
// feature order from $source
// this header encodes feature specification $our_digest
//
// Standalone C++17, no O2 includes. fillFeatures() builds the model input from one
// track row through its O2 accessors, with the encoding used in training
// (pid_export.features.encode), bit for bit in float:
//  - every value of an absent detector (hasTPC() or hasTOF() not > 0) is a quiet NaN,
//    and so is a TPC or TOF value that is NaN or at or below kSentinelCut (AO2D writes
//    -999 for missing values);
//  - Bayesian probabilities arrive in percent and become percent / 100.f; they count
//    only when all four lie in [0, 100] (else all four are NaN and the flag is 0);
//  - the flags are 1.f or 0.f; the tracking values are passed as they are.
// fillFeaturesNoBayes() is for analyses without the pidBayes tables: it never calls
// the bayes*() accessors and fills the Bayesian group as absent.
// Do not build with -ffast-math: it lets the compiler drop the NaN tests.

#ifndef $guard
#define $guard

#include <array>
#include <cstddef>
#include <limits>
#include <string_view>

#ifdef __FAST_MATH__
#warning "pid-export features: -ffast-math breaks the NaN encoding of absent detectors"
#endif

namespace pidexport::$ident
{

inline constexpr std::size_t kNFeatures = $n_features;
inline constexpr std::size_t kNClasses = $n_classes;
/// TPC and TOF values at or below this are sentinels of a missing measurement.
inline constexpr float kSentinelCut = $sentinel;
/// feature_spec_digest the model carries (empty if none); the task checks it.
inline constexpr const char* kSpecDigest = $digest;
/// Names of the model's input and of its last output (the class probabilities).
inline constexpr const char* kInputName = $input_name;
inline constexpr const char* kOutputName = $output_name;

/// Input features in model order: name, // position, O2 accessor [group, unit].
inline constexpr std::array<std::string_view, kNFeatures> kFeatureNames{{
$feature_rows
}};
/// Output classes in model order and their PDG codes (charge conjugates included).
inline constexpr std::array<std::string_view, kNClasses> kClassNames{{$class_names}};
inline constexpr std::array<int, kNClasses> kClassPdg{{$class_pdg}};

namespace detail
{
inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// A detector flag counts when its value is > 0 (a NaN flag does not count).
template <typename T>
inline bool isSet(T flag)
{
  return static_cast<double>(flag) > 0.0;
}

/// The value as float, or NaN when it is NaN or a sentinel (<= kSentinelCut).
template <typename T>
inline float measured(T value)
{
  const float v = static_cast<float>(value);
  return v > kSentinelCut ? v : kNaN;
}
} // namespace detail

/// Fill the model input x from a track row (tracks joined with the PID tables).
template <typename TTrack>
inline void fillFeatures(const TTrack& track, std::array<float, kNFeatures>& x)
{
$fill_body
}

/// As fillFeatures, for rows without the pidBayes tables: the Bayesian group is absent.
template <typename TTrack>
inline void fillFeaturesNoBayes(const TTrack& track, std::array<float, kNFeatures>& x)
{
$fill_no_bayes_body
}

} // namespace pidexport::$ident

#endif // $guard
""")


def _feature_statement(feature: Feature, with_bayes: bool) -> str:
    """The C++ expression that gives one feature, following ``features.encode``."""
    group = feature.group
    spec = GROUPS[group]
    if group in _ALWAYS_PRESENT:
        return f"static_cast<float>(track.{feature.accessor}())"
    if group in _FLAG_FROM_ACCESSOR:
        flag = _LOCAL_FLAG[group]
        if feature.index == spec["flag"]:
            return f"{flag} ? 1.f : 0.f"
        return f"{flag} ? detail::measured(track.{feature.accessor}()) : detail::kNaN"
    if group in _FLAG_FROM_VALUES:
        if not with_bayes:
            return "0.f" if feature.index == spec["flag"] else "detail::kNaN"
        if feature.index == spec["flag"]:
            return "hasBayes ? 1.f : 0.f"
        k = list(spec["values"]).index(feature.index)  # type: ignore[arg-type]
        return f"hasBayes ? bayesPercent[{k}] / 100.f : detail::kNaN"
    raise NotImplementedError(
        f"cppgen: feature {feature.name!r} is in group {group!r}, which the C++ generator "
        "has no rule for; add the rule in pid_export/cppgen.py next to features.encode's"
    )


def _fill_body(features: list[Feature], with_bayes: bool) -> str:
    """Statements of a fill function: group flags first, then one line per feature."""
    groups = {f.group for f in features}
    lines = []
    for group in _FLAG_FROM_ACCESSOR:
        if group in groups:
            accessor = FEATURES[GROUPS[group]["flag"]].accessor  # type: ignore[index]
            lines.append(f"  const bool {_LOCAL_FLAG[group]} = detail::isSet(track.{accessor}());")
    if with_bayes and "bayes" in groups:
        accessors = [FEATURES[i].accessor for i in GROUPS["bayes"]["values"]]  # type: ignore[union-attr]
        checks = " && ".join(f"bayesPercent[{k}] >= 0.f && bayesPercent[{k}] <= 100.f"
                             for k in range(len(accessors)))
        lines += [
            "  // O2 stores Bayesian probabilities in percent (binned, int8).",
            f"  const std::array<float, {len(accessors)}> bayesPercent{{{{",
            *[f"    static_cast<float>(track.{a}())," for a in accessors],
            "  }};",
            f"  const bool hasBayes = {checks};",
        ]
    lines += [f"  x[{pos}] = {_feature_statement(f, with_bayes)};" for pos, f in enumerate(features)]
    if not any("track." in line for line in lines):
        lines.insert(0, "  static_cast<void>(track); // no feature of this list reads the row")
    return "\n".join(lines)


def _render_header(facts: _ModelFacts, names: _Names) -> str:
    features = [FEATURES[FEATURE_NAMES.index(n)] for n in facts.feature_names]
    width = max(len(_cpp_string(n)) for n in facts.feature_names) + 1
    rows = []
    for pos, f in enumerate(features):
        how = f"{f.accessor}()" if f.accessor else "derived"
        unit = f", {f.unit}" if f.unit else ""
        rows.append(f"  {(_cpp_string(f.name) + ','):<{width}} // {pos:>2}  {how} [{f.group}{unit}]")
    return _HEADER.substitute(
        header=names.header,
        model_file=_comment(facts.model_file),
        version=__version__,
        notes="\n".join(f"// {n}" for n in facts.notes),
        source=facts.source,
        our_digest=spec_digest(),
        guard=f"PIDEXPORT_{names.ident.upper()}_FEATURES_H_",
        ident=names.ident,
        n_features=len(features),
        n_classes=len(facts.class_names),
        sentinel=_float_literal(SENTINEL_CUT),
        digest=_cpp_string(facts.digest),
        input_name=_cpp_string(facts.input_name),
        output_name=_cpp_string(facts.output_name),
        feature_rows="\n".join(rows),
        class_names=", ".join(_cpp_string(c) for c in facts.class_names),
        class_pdg=", ".join(str(p) for p in facts.class_pdg),
        fill_body=_fill_body(features, with_bayes=True),
        fill_no_bayes_body=_fill_body(features, with_bayes=False),
    )


# --- the example task ------------------------------------------------------------------

#: O2 table that provides each accessor (O2Physics Common/DataModel, AnalysisDataModel).
_O2_TABLE = {
    "pt": "aod::Tracks", "eta": "aod::Tracks", "phi": "aod::Tracks",
    "tpcSignal": "aod::TracksExtra", "hasTPC": "aod::TracksExtra", "hasTOF": "aod::TracksExtra",
    "dcaXY": "aod::TracksDCA", "dcaZ": "aod::TracksDCA",
    **{f"tpcNSigma{s}": f"aod::pidTPCFull{s}" for s in ("Pi", "Ka", "Pr", "El")},
    "beta": "aod::pidTOFbeta",
    **{f"tofNSigma{s}": f"aod::pidTOFFull{s}" for s in ("Pi", "Ka", "Pr", "El")},
    **{f"bayes{s}": f"aod::pidBayes{s}" for s in ("Pi", "Ka", "Pr", "El")},
}

_TASK = Template("""\
// $task: example O2Physics task running $model_file.
// Generated by pid-export $version (`pid-export cpp`) with $header;
// adapt it freely (track selection, table content, model reloading per run).
//
$notes
//
// The model comes from the CCDB (ccdbUrl, ccdbPath, modelFileName, ccdbTimestamp;
// -1 takes the timestamp of the first bunch crossing) or from localModel. The tracks of
// each collision go to onnxruntime in batches of at most batchSize rows; every track gets
// one row of the table: the class probabilities, the predicted class and its PDG code.
// processWithBayes needs the pidBayes tables; processNoBayes runs without them.
// Tracks not assigned to a collision are not classified.

#include "$header" // adjust to its path inside O2Physics

#include "Common/DataModel/PIDResponseCombined.h" // pidBayes (older O2Physics: PIDResponse.h)
#include "Common/DataModel/PIDResponseTOF.h"
#include "Common/DataModel/PIDResponseTPC.h"
#include "Tools/ML/model.h"

#include <CCDB/CcdbApi.h>
#include <Framework/AnalysisDataModel.h>
#include <Framework/AnalysisTask.h>
#include <Framework/runDataProcessing.h>

#include <onnxruntime_cxx_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace o2::aod
{
namespace $table_ns
{
DECLARE_SOA_INDEX_COLUMN(Track, track); //! the classified track
$columns
DECLARE_SOA_COLUMN(PredictedClass, predictedClass, int8_t); //! index of the most probable class
DECLARE_SOA_COLUMN(PredictedPdg, predictedPdg, int);         //! its PDG code
} // namespace $table_ns
DECLARE_SOA_TABLE(${pascal}Results, "AOD", "$table_desc", //! one row per classified track
                  $table_columns);
} // namespace o2::aod

using namespace o2;
using namespace o2::framework;
namespace features = pidexport::$ident;

struct ${pascal}Task {
  Produces<aod::${pascal}Results> results;

  Configurable<std::string> ccdbUrl{"ccdbUrl", "http://alice-ccdb.cern.ch", "CCDB server"};
  Configurable<std::string> ccdbPath{"ccdbPath", "Users/x/xlogin/PIDML/$ident", "CCDB folder of the model (one model per folder)"};
  Configurable<std::string> modelFileName{"modelFileName", $model_file_literal, "Name of the local copy of the model fetched from the CCDB"};
  Configurable<int64_t> ccdbTimestamp{"ccdbTimestamp", -1, "Model validity timestamp (ms); -1: timestamp of the first bunch crossing"};
  Configurable<std::string> localModel{"localModel", "", "Local ONNX file; if set, the CCDB is not used"};
  Configurable<int> batchSize{"batchSize", 1024, "Tracks per onnxruntime call"};
  Configurable<int> nThreads{"nThreads", 1, "onnxruntime threads"};

  using TracksNoBayes = soa::Join<$join_no_bayes>;
  using TracksWithBayes = soa::Join<$join_with_bayes>;

  o2::ccdb::CcdbApi ccdbApi;
  o2::ml::OnnxModel model;
  bool modelReady = false;
  std::vector<float> inputs;     // batch rows, kNFeatures floats each
  std::vector<int64_t> trackIds; // global index of the track of each batch row

  void init(InitContext&)
  {
    if (localModel.value.empty()) {
      ccdbApi.init(ccdbUrl.value);
    }
    inputs.reserve(static_cast<std::size_t>(batchSize.value) * features::kNFeatures);
  }

  void loadModel(int64_t timestamp)
  {
    std::string path = localModel.value;
    if (path.empty()) {
      std::map<std::string, std::string> metadata;
      // Downloads the object of ccdbPath valid at timestamp to ./modelFileName.
      if (!ccdbApi.retrieveBlob(ccdbPath.value, ".", metadata, timestamp, false, modelFileName.value)) {
        LOG(fatal) << "No model in " << ccdbPath.value << " at timestamp " << timestamp;
      }
      path = modelFileName.value;
    }
    model.initModel(path, false, nThreads.value);
    if (model.getNumInputNodes() != static_cast<int>(features::kNFeatures)) {
      LOG(fatal) << "Model " << path << " takes " << model.getNumInputNodes() << " features, "
                 << "$header fills " << features::kNFeatures;
    }
$digest_check
    modelReady = true;
  }

  /// Runs the model on the batch and fills one table row per track.
  void flush()
  {
    const auto nRows = static_cast<int64_t>(trackIds.size());
    if (nRows == 0) {
      return;
    }
    const std::array<int64_t, 2> shape{nRows, static_cast<int64_t>(features::kNFeatures)};
    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    auto input = Ort::Value::CreateTensor<float>(memory, inputs.data(), inputs.size(), shape.data(), shape.size());
    const char* inputNames[] = {features::kInputName};
    const char* outputNames[] = {features::kOutputName};
    // The session is run here rather than through OnnxModel::evalModel so that the
    // output tensor stays alive while it is read.
    auto outputs = model.getSession()->Run(Ort::RunOptions{nullptr}, inputNames, &input, 1, outputNames, 1);
    const float* prob = outputs[0].GetTensorData<float>();
    for (int64_t i = 0; i < nRows; ++i) {
      const float* p = prob + i * static_cast<int64_t>(features::kNClasses);
      std::size_t best = 0;
      for (std::size_t c = 1; c < features::kNClasses; ++c) {
        best = p[c] > p[best] ? c : best;
      }
      results(trackIds[i], $probabilities, static_cast<int8_t>(best), features::kClassPdg[best]);
    }
    inputs.clear();
    trackIds.clear();
  }

  template <bool withBayes, typename TTracks>
  void classify(aod::Collision const& collision, TTracks const& tracks)
  {
    if (!modelReady) {
      const int64_t timestamp = ccdbTimestamp.value >= 0 ? ccdbTimestamp.value
                                                         : collision.bc_as<aod::BCsWithTimestamps>().timestamp();
      loadModel(timestamp);
    }
    std::array<float, features::kNFeatures> x{};
    for (const auto& track : tracks) {
      if constexpr (withBayes) {
        features::fillFeatures(track, x);
      } else {
        features::fillFeaturesNoBayes(track, x);
      }
      inputs.insert(inputs.end(), x.begin(), x.end());
      trackIds.push_back(track.globalIndex());
      if (static_cast<int>(trackIds.size()) >= batchSize.value) {
        flush();
      }
    }
    flush();
  }

  void processWithBayes(aod::Collision const& collision, aod::BCsWithTimestamps const&, TracksWithBayes const& tracks)
  {
    classify<true>(collision, tracks);
  }
  PROCESS_SWITCH(${pascal}Task, processWithBayes, "Classify tracks, with the pidBayes tables", true);

  void processNoBayes(aod::Collision const& collision, aod::BCsWithTimestamps const&, TracksNoBayes const& tracks)
  {
    classify<false>(collision, tracks);
  }
  PROCESS_SWITCH(${pascal}Task, processNoBayes, "Classify tracks, without Bayesian PID", false);
};

WorkflowSpec defineDataProcessing(ConfigContext const& cfgc)
{
  return WorkflowSpec{adaptAnalysisTask<${pascal}Task>(cfgc)};
}
""")

_DIGEST_CHECK = """\
    // The model must have been trained on the inputs the header builds.
    Ort::AllocatorWithDefaultOptions allocator;
    auto digest = model.getSession()->GetModelMetadata().LookupCustomMetadataMapAllocated("feature_spec_digest", allocator);
    if (!digest || std::string(digest.get()).find(features::kSpecDigest) == std::string::npos) {
      LOG(fatal) << "Model " << path << " lacks feature_spec_digest " << features::kSpecDigest
                 << ": generate the C++ again with pid-export cpp for this model";
    }"""

_NO_DIGEST = """\
    // The model carries no feature_spec_digest: the feature order given to
    // pid-export cpp with --features cannot be checked here."""


def _render_task(facts: _ModelFacts, names: _Names) -> str:
    cols = _class_column(facts.class_names)
    table_ns = names.ident.lower()
    columns = [
        f"DECLARE_SOA_COLUMN({c}, {_lower_first(c)}, float); "
        f"//! probability of {_comment(n, 40)} (PDG {p})"
        for c, n, p in zip(cols, facts.class_names, facts.class_pdg)
    ]
    table_columns = [f"{table_ns}::{c}" for c in ("TrackId", *cols, "PredictedClass", "PredictedPdg")]

    # Join only the tables whose accessors the feature list reads; Tracks always (index).
    used = [FEATURES[FEATURE_NAMES.index(n)] for n in facts.feature_names]
    accessors = {f.accessor for f in used}
    for group in {f.group for f in used}:
        flag = GROUPS[group]["flag"]
        if group in _FLAG_FROM_ACCESSOR:
            accessors.add(FEATURES[flag].accessor)  # type: ignore[index]
        if group in _FLAG_FROM_VALUES:
            accessors |= {FEATURES[i].accessor for i in GROUPS[group]["values"]}  # type: ignore[union-attr]
    tables = ["aod::Tracks"] + sorted(
        {_O2_TABLE[a] for a in accessors if a} - {"aod::Tracks"}, key=list(_O2_TABLE.values()).index
    )
    no_bayes = [t for t in tables if not t.startswith("aod::pidBayes")]

    return _TASK.substitute(
        task=names.task,
        header=names.header,
        model_file=_comment(facts.model_file),
        model_file_literal=_cpp_string(facts.model_file),
        version=__version__,
        notes="\n".join(f"// {n}" for n in facts.notes),
        table_ns=table_ns,
        columns="\n".join(columns),
        pascal=names.pascal,
        table_desc=names.table_desc,
        table_columns=", ".join(table_columns),
        ident=names.ident,
        join_no_bayes=", ".join(no_bayes),
        join_with_bayes=", ".join(tables),
        digest_check=_DIGEST_CHECK if facts.digest else _NO_DIGEST,
        probabilities=", ".join(f"p[{i}]" for i in range(len(cols))),
    )


_CMAKE = Template("""\
# $cmake: generated by pid-export $version (`pid-export cpp`).
# Paste into the CMakeLists.txt of the folder holding $task and $header;
# the workflow then runs as o2-analysis-$kebab.
o2physics_add_dpl_workflow($kebab
                           SOURCES $task
                           PUBLIC_LINK_LIBRARIES O2::Framework O2::CCDB O2Physics::AnalysisCore
                                                 O2Physics::MLCore ONNXRuntime::ONNXRuntime
                           COMPONENT_NAME Analysis)
""")


def _render_cmake(names: _Names) -> str:
    return _CMAKE.substitute(
        cmake=names.cmake, version=__version__, task=names.task, header=names.header,
        kebab=names.kebab,
    )
