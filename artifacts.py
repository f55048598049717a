"""Provenance of a run directory: what made it, where and when (DESIGN.md section 10).

`pipeline.sh` appends one JSON line per chain start and one per stage to `<run>/provenance.jsonl`:

    {"event": "chain", "command": "bash pipeline.sh quick", "env": {"SEED": "2"}, "commit": ..., "date": ...,
     "machine": {"host": ..., "cores": 2, "torch": "2.13.0", "mujoco": "3.3.0", ..., "device": "cpu"}}
    {"event": "stage", "stage": "stage 0 (SAC experts)", "command": "python stage0_collect_sac.py ...",
     "seconds": 1001, "commit": ..., "date": ...}

`aggregate.py --publish` reads these lines to write the provenance block of a result page: the commits,
the commands, the dates, the machine and the wall time of each stage (summed over the invocations of a
stage, so a chain that was interrupted and resumed counts the time of every part).

    python artifacts.py chain RUN_DIR COMMAND...    # append the chain line (pipeline.sh does this)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PROVENANCE = "provenance.jsonl"
PACKAGES = ("torch", "numpy", "mujoco", "gymnasium", "metaworld")


def git_commit(repo: str | Path | None = None) -> str:
    """The short commit of the checkout the code runs from, `+dirty` when tracked files differ from it;
    `unknown` outside a git checkout."""
    repo = Path(repo or Path(__file__).parent)
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Host, cores, CPU, the versions that move RL numbers, and the accelerator torch sees."""
    info = {"host": platform.node(), "cores": os.cpu_count(), "cpu": cpu_model(), "os": platform.platform(),
            "python": platform.python_version()}
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


ENV_KEYS = ("SEED", "SEEDS", "VELOCITIES", "FROM_STAGE", "RUN_DIR", "RUNS", "MW_SEEDS", "TOKENS")

if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "chain":
        raise SystemExit("usage: python artifacts.py chain RUN_DIR COMMAND...")
    append_record(sys.argv[2], {"event": "chain", "command": " ".join(sys.argv[3:]),
                                "env": {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)},
                                "commit": git_commit(), "date": utc_now(), "machine": machine()})
