"""Benchmark (not a test): wall time of the fast test tier (`-m "not slow"`) and of the full suite, each
run as pytest in a fresh process, one after the other, on this machine. Run it alone on the machine: a
busy core moves both numbers.

    python benchmarks/test_tiers.py             # both tiers
    python benchmarks/test_tiers.py --tiers fast
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"fast": ["-m", "not slow"], "full": []}


@dataclass
class Args:
    tiers: list[str] = field(default_factory=lambda: ["fast", "full"])
    """which tiers to time: fast, full"""


def main(args: Args) -> None:
    for tier in args.tiers:
        if tier not in TIERS:
            raise SystemExit(f"error: unknown tier {tier}; valid: {', '.join(TIERS)}")
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TIERS[tier]], cwd=ROOT,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t
        # the last summary line that counts tests (pytest.ini's --durations adds a "slowest" header line)
        counts = [m for m in re.findall(r"^=* ?(.*(?:passed|failed|error).*?) ?=*$", r.stdout, re.M)]
        summary = (counts or r.stdout.strip().splitlines()[-1:] or ["no output"])[-1]
        print(f"{tier}: {wall:.0f} s ({wall / 60:.1f} min), exit {r.returncode}: {summary}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
