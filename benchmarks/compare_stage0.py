"""Compare the stage-0 experts of two run directories task by task (for example the same seed made by two
versions of stage 0, or on two machines): each expert's best checkpoint return and the mean return of its
last 20 checkpoints at its own velocity or task, whether the checkpoints are equal bit for bit, and the
paired difference of that mean (B - A) over the
tasks the two share, in `stage0/` and `oracle/`.

    python benchmarks/compare_stage0.py runs/cheetah-vel-quick-seed1 /tmp/old-stage0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import artifacts  # noqa: E402


@dataclass
class Args:
    a: tyro.conf.Positional[str]
    """run directory A"""
    b: tyro.conf.Positional[str]
    """run directory B"""


def main(args: Args) -> None:
    print("| shards | task | A: best | B: best | A: last 20 | B: last 20 | checkpoints bit for bit equal |\n"
          "|---|---|---|---|---|---|---|")
    diffs = []
    for d in ("stage0", "oracle"):
        for pa in sorted(Path(args.a, d).glob("*.pt")):
            pb = Path(args.b, d, pa.name)
            if pa.name.endswith(".partial.pt") or not pb.exists():
                continue
            sa, sb = (artifacts.load_artifact(p, artifacts.STAGE0_FORMAT, ("return", "task", "params")) for p in (pa, pb))
            same = sa["params"].shape == sb["params"].shape and bool((sa["params"] == sb["params"]).all())
            la, lb = float(sa["return"][-20:].mean()), float(sb["return"][-20:].mean())
            diffs.append(lb - la)
            print(f"| {d} | {sa['task']} | {float(sa['return'].max()):.1f} | {float(sb['return'].max()):.1f} | "
                  f"{la:.1f} | {lb:.1f} | {'yes' if same else 'no'} |")
    if not diffs:
        raise SystemExit(f"error: {args.a} and {args.b} share no stage-0 shard")
    d = np.array(diffs)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    print(f"\nB - A, mean return of the last 20 checkpoints, over {len(d)} experts: {d.mean():+.2f} +- {half:.2f} "
          f"(normal 95% interval; sd {d.std(ddof=1) if len(d) > 1 else float('nan'):.2f})")


if __name__ == "__main__":
    main(tyro.cli(Args))
