"""The provenance of a run directory (DESIGN.md section 10): `pipeline.sh` appends one JSON line per chain
start (command, commit, machine) and one per stage (command, seconds) to `<run>/provenance.jsonl`;
`aggregate.py --publish` reads them for a page's provenance block. No torch needed (it is asked for its
version and device only when installed).

    python provenance.py chain RUN_DIR COMMAND...    # append the chain line (pipeline.sh does this)
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROVENANCE = "provenance.jsonl"
PACKAGES = ("torch", "numpy", "mujoco", "gymnasium", "metaworld")


def git_commit(repo: str | Path | None = None, outputs: tuple[str, ...] = ()) -> str:
    """The short commit of the checkout the code runs from, `+dirty` when tracked files differ from it
    (changes under `outputs`, paths relative to the checkout, aside); `unknown` outside a git checkout."""
    repo = Path(repo or Path(__file__).parent)
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){o}" for o in outputs)], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def project_imports(path: Path) -> set[Path]:
    """The project's modules that the file at `path` imports, anywhere in it (inside functions too): top-level
    files and those of the `baselines/` package (`from baselines.prompt_dt import ...`, `from baselines import
    mt_bc`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # a module imported from a package
    files = {ROOT / (n.split(".")[0] + ".py") for n in names}
    files |= {ROOT.joinpath(*n.split(".")[:2]).with_suffix(".py") for n in names if "." in n}
    return {f for f in files if f.is_file()}


@functools.lru_cache(maxsize=None)
def code_fingerprint(script: str | Path) -> str:
    """The code a stage runs: 12 hex digits of sha256 over the project files `script` imports, itself
    included, followed through their own imports. Two runs whose stage has one fingerprint ran the same
    code, whatever commit they were made at; a change to any file the stage reads changes it."""
    files, todo = {}, [Path(script).resolve()]
    while todo:
        f = todo.pop()
        name = f.relative_to(ROOT).as_posix() if f.is_relative_to(ROOT) else f.name
        if name in files:
            continue
        files[name] = hashlib.sha256(f.read_bytes()).hexdigest()
        todo += project_imports(f)
    return hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(files.items())).encode()).hexdigest()[:12]


SCRIPT_DIRS = (ROOT, ROOT / "baselines")  # where the project's runnable files lie


def running_script() -> Path | None:
    """The project script whose code is running: the main program when it is one of the project's files,
    else (a stage's main() called from a test) the innermost caller that is a project file (top level or
    baselines/) other than the shared plumbing (artifacts, provenance, common, training, latents)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main and Path(main).resolve().parent in SCRIPT_DIRS and Path(main).is_file():
        return Path(main).resolve()
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename  # `<string>`, `<frozen runpy>`: no file
        f = Path(name).resolve()
        if not name.startswith("<") and f.parent in SCRIPT_DIRS and f.is_file() and f.name not in (
                "artifacts.py", "provenance.py", "common.py", "training.py", "latents.py", "__init__.py"):
            return f
        frame = frame.f_back
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Host, the cores this process may use, CPU, the versions that move RL numbers, and the accelerator torch
    sees."""
    info = {"host": platform.node(), "cores": len(os.sched_getaffinity(0)), "cpu": cpu_model(),
            "os": platform.platform(), "python": platform.python_version()}
    for p in PACKAGES:
        try:
            info[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            info[p] = None
    try:
        import torch

        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["device"] = "cpu"
    return info


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def append_record(run_dir: str | Path, record: dict) -> None:
    """Append one JSON line to `<run_dir>/provenance.jsonl` (one short write: lines of concurrent writers
    do not interleave)."""
    path = Path(run_dir) / PROVENANCE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(run_dir: str | Path) -> list[dict]:
    """The provenance lines of a run directory ([] when it has none); a broken line is skipped."""
    try:
        lines = Path(run_dir, PROVENANCE).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


ENV_KEYS = ("SEED", "VELOCITIES", "FROM_STAGE", "STAGE0_DONE", "RUN_DIR", "RUNS", "TOKENS", "THREADS")

if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "chain":
        raise SystemExit("usage: python provenance.py chain RUN_DIR COMMAND...")
    append_record(sys.argv[2], {"event": "chain", "command": " ".join(sys.argv[3:]),
                                "env": {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)},
                                "commit": git_commit(), "date": utc_now(), "machine": machine()})
