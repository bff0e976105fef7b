"""O2's runtime itself: the behaviour checks under onnxruntime 1.22, in an environment of its own.

Takes a serialised model and the probe rows and hands on :class:`~pid_export.contract.Check`
results named ``o2_runtime`` (did onnxruntime 1.22 load the model) and
``o2_runtime.<check>`` (each behaviour check of :mod:`.validate_behaviour`, run by that
same file as a script inside the 1.22 environment).

O2 builds onnxruntime 1.22.0 (DESIGN §3), while this package's environment needs a much
newer one (jax2onnx and the converters ask for it), so the two cannot share a Python
environment. The first call creates a virtual environment with ``pip install
onnxruntime==1.22.0 numpy`` from the package index and caches it:

* ``$PID_EXPORT_ORT_ENV`` if set: the folder of the environment (created when missing;
  an existing one that pid-export did not create is used as it is, never rebuilt);
* otherwise ``$XDG_CACHE_HOME/pid-export/ort-1.22.0-py3.X`` (``~/.cache`` by default).

Creating it is the only network access of the harness. When it cannot be created or run,
the check FAILs and says why; it never passes silently.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import validate_behaviour
from .contract import Check, skipped

log = logging.getLogger(__name__)

#: The onnxruntime release that O2 builds (alidist onnxruntime.sh, tag v1.22.0).
O2_ORT_VERSION = "1.22.0"
ENV_VAR = "PID_EXPORT_ORT_ENV"
#: File that marks an environment as created (and rebuildable) by pid-export.
MARKER = "pid-export-env.json"
PIP_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 600
CHECK_NAME = "o2_runtime"


class O2EnvError(RuntimeError):
    """The onnxruntime 1.22 environment could not be created or used."""


@dataclass(frozen=True)
class O2Env:
    root: Path
    python: Path
    onnxruntime: str
    created_now: bool


def default_env_dir() -> Path:
    """Where the environment lives: ``$PID_EXPORT_ORT_ENV`` or the user cache folder."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return cache / "pid-export" / f"ort-{O2_ORT_VERSION}-{tag}"


def _python_in(root: Path) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _probe(python: Path) -> str:
    """The onnxruntime version importable by ``python``; O2EnvError if none."""
    code = "import numpy, onnxruntime; print(onnxruntime.__version__)"
    try:
        res = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True,
                             timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise O2EnvError(f"{python} does not run: {err}") from err
    if res.returncode != 0:
        raise O2EnvError(f"{python} cannot import onnxruntime and numpy: {_tail(res.stderr)}")
    return res.stdout.strip()


def _tail(text: str, n: int = 1) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def _run(cmd: list[str], what: str, timeout: int) -> None:
    log.info("%s: %s", what, " ".join(cmd))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise O2EnvError(f"{what} took longer than {timeout} s") from err
    except OSError as err:
        raise O2EnvError(f"{what} could not start: {err}") from err
    if res.returncode != 0:
        raise O2EnvError(f"{what} failed (exit {res.returncode}): {_tail(res.stderr or res.stdout, 2)}")


def _create(root: Path) -> None:
    """Build the environment in a sibling folder, then move it into place."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _run([sys.executable, "-m", "venv", str(tmp)], "creating a virtual environment", 300)
        _run([str(_python_in(tmp)), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
              f"onnxruntime=={O2_ORT_VERSION}", "numpy"],
             f"pip install onnxruntime=={O2_ORT_VERSION} numpy", PIP_TIMEOUT_S)
        version = _probe(_python_in(tmp))
        (tmp / MARKER).write_text(json.dumps({
            "onnxruntime": version, "python": sys.version.split()[0],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": "pid-export validate"}))
        if root.exists():
            if not (root / MARKER).is_file():
                raise O2EnvError(f"{root} exists and pid-export did not create it; not replacing it")
            shutil.rmtree(root)
        # A venv finds its packages relative to its own pyvenv.cfg, so it survives the move.
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_env(root: Path | None = None, *, create: bool = True) -> O2Env:
    """The cached onnxruntime 1.22 environment, created on first use."""
    root = Path(root) if root is not None else default_env_dir()
    python = _python_in(root)
    ours = (root / MARKER).is_file()
    if root.exists() and not ours:
        # Someone else's environment (e.g. one with O2's own Python): use, never rebuild.
        version = _probe(python)
        if not version.startswith(O2_ORT_VERSION.rsplit(".", 1)[0] + "."):
            raise O2EnvError(f"{root} (${ENV_VAR}) has onnxruntime {version}, not "
                             f"{O2_ORT_VERSION}: point {ENV_VAR} elsewhere or unset it")
        return O2Env(root, python, version, created_now=False)

    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        lock_path = root.parent / f".{root.name}.lock"
        lock = open(lock_path, "w")
    except OSError as err:
        raise O2EnvError(f"cannot create the cache folder {root.parent}: {err}") from err
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if (root / MARKER).is_file():
            try:
                return O2Env(root, python, _probe(python), created_now=False)
            except O2EnvError as err:
                if not create:
                    raise
                log.warning("rebuilding the onnxruntime %s environment %s: %s", O2_ORT_VERSION, root, err)
        elif not create:
            raise O2EnvError(f"no onnxruntime {O2_ORT_VERSION} environment at {root}")
        log.warning("creating the onnxruntime %s environment in %s (once; needs the package index)",
                    O2_ORT_VERSION, root)
        _create(root)
        return O2Env(root, python, _probe(python), created_now=True)


def o2_runtime_checks(model: bytes, blocks: dict[str, np.ndarray], *,
                      env_dir: Path | None = None) -> list[Check]:
    """Run the behaviour checks under onnxruntime 1.22; one Check per result."""
    t0 = time.perf_counter()
    try:
        env = ensure_env(env_dir)
    except O2EnvError as err:
        return [Check(CHECK_NAME, False,
                      f"could not set up onnxruntime {O2_ORT_VERSION} ({err}); the model is NOT "
                      f"checked under O2's runtime. Run once with access to the package index, "
                      f"point ${ENV_VAR} at an environment that has it, or pass --no-o2-runtime")]

    script = Path(validate_behaviour.__file__)
    with tempfile.TemporaryDirectory(prefix="pid-export-o2-") as tmp:
        model_path, rows_path, out_path = (Path(tmp) / n for n in ("model.onnx", "rows.npz", "out.json"))
        model_path.write_bytes(model)
        validate_behaviour.save_blocks(rows_path, blocks)
        cmd = [str(env.python), "-I", str(script), "--model", str(model_path),
               "--rows", str(rows_path), "--out", str(out_path)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return [Check(CHECK_NAME, False, f"onnxruntime {env.onnxruntime} did not finish in "
                                             f"{RUN_TIMEOUT_S} s")]
        if res.returncode != 0 or not out_path.is_file():
            how = (f"crashed with signal {-res.returncode}" if res.returncode < 0
                   else f"exited with {res.returncode}")
            return [Check(CHECK_NAME, False, f"the check under onnxruntime {env.onnxruntime} {how}: "
                                             f"{_tail(res.stderr, 2)}")]
        result = json.loads(out_path.read_text())

    log.info("o2 runtime checks took %.1f s (environment %s)", time.perf_counter() - t0, env.root)
    checks = []
    for row in result["checks"]:
        c = Check.from_dict(row)
        if c.name == "loads_in_onnxruntime":
            c.name = CHECK_NAME
            c.reason = (f"O2's onnxruntime {result['onnxruntime']} loads it" if c.passed else c.reason)
        else:
            c.name = f"{CHECK_NAME}.{c.name}"
            if not c.passed and not c.skipped:
                c.reason = f"under onnxruntime {result['onnxruntime']}: {c.reason}"
        checks.append(c)
    return checks


def disabled_checks() -> list[Check]:
    """What the report shows for ``--no-o2-runtime``: a SKIP, not a pass."""
    return [skipped(CHECK_NAME, f"not run (--no-o2-runtime): the model was not loaded by "
                                f"onnxruntime {O2_ORT_VERSION}, the version O2 builds")]
