"""Diagnostic (not a test, not a timing): do the Cheetah-Vel experts of one parent share a basin of parameter
space? For each pair of neighbouring training velocities, the best checkpoints of the two experts mixed
50/50 in parameter space run at the midpoint velocity, next to each of the two experts and the parent
(mean of a few deterministic episodes). Experts fine-tuned from one parent are expected to mix well; experts
trained from separate random starts (stage 0's --experts independent, no parent) not (DESIGN.md section 4).
The last line: the mixed policies' mean return against the mean of the two experts' at the midpoints.

    python benchmarks/stage0_midpoints.py runs/cheetah-vel-quick-seed1 --scale quick
    python benchmarks/stage0_midpoints.py runs/cheetah-vel-quick-independent-seed1 --scale quick
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import artifacts  # noqa: E402
import common  # noqa: E402


@dataclass
class Args:
    run_dir: tyro.conf.Positional[str]
    """a Cheetah-Vel run directory with stage0/ (and parent.pt, in the one-parent regime)"""
    scale: str = "quick"
    """the scale its artifacts were made at"""
    episodes: int = 3
    """deterministic episodes per policy and midpoint"""


def main(args: Args) -> None:
    shards = artifacts.load_stage0(args.run_dir, "cheetah-vel", args.scale)
    spec = common.suite_spec("cheetah-vel")
    path = Path(args.run_dir) / "parent.pt"
    parent = artifacts.load_artifact(path, artifacts.PARENT_FORMAT, ("params",), spec=spec) if path.exists() else None
    vs = [s["target_velocity"] for s in shards]
    best = [s["params"][s["return"].argmax()] for s in shards]
    pairs = list(range(len(vs) - 1))
    if not pairs:
        raise SystemExit("error: needs at least two training velocities")
    extra = [parent["params"]] if parent is not None else []
    k = 3 + len(extra)  # policies per midpoint
    cands = [p for i in pairs for p in (0.5 * (best[i] + best[i + 1]), best[i], best[i + 1], *extra)]
    envs = [common.make_eval_env("cheetah-vel", (vs[i] + vs[i + 1]) / 2, episode=e)
            for e in range(args.episodes) for i in pairs for _ in range(k)]
    ret = common.run_lockstep(torch.stack(cands).repeat(args.episodes, 1), envs, spec)["return"]
    ret = ret.reshape(args.episodes, len(pairs), k).mean(0)
    regime = "experts from one parent" if parent is not None else "independent experts (no parent)"
    print(f"Midpoints of neighbouring training velocities, {regime} (mean return of {args.episodes} deterministic "
          "episodes):\n")
    print("| v_a | v_b | midpoint | experts mixed 50/50 | expert v_a | expert v_b |" + (" parent |" if extra else ""))
    print("|---" * (6 + len(extra)) + "|")
    for i, r in zip(pairs, ret):
        print(f"| {vs[i]:g} | {vs[i + 1]:g} | {(vs[i] + vs[i + 1]) / 2:g} | " + " | ".join(f"{x:.1f}" for x in r) + " |")
    mixed, experts = float(ret[:, 0].mean()), float(ret[:, 1:3].mean())
    print(f"\n{regime}: mixed 50/50 {mixed:.1f}, the two experts {experts:.1f} (mean over {len(pairs)} midpoints); "
          f"mixed - experts {mixed - experts:+.1f}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
