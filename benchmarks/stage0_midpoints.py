"""Diagnostic (not a test, not a timing): do the Cheetah-Vel experts of one parent share a basin of parameter
space? For each pair of neighbouring training velocities, the best checkpoints of the two experts mixed
50/50 in parameter space run at the midpoint velocity, next to each of the two experts and the parent
(mean of a few deterministic episodes). Experts fine-tuned from one parent mix well; experts trained from
separate random starts do not (DESIGN.md section 4).

    python benchmarks/stage0_midpoints.py runs/cheetah-vel-quick-seed1 --scale quick
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
    """a Cheetah-Vel run directory with stage0/ and parent.pt"""
    scale: str = "quick"
    """the scale its artifacts were made at"""
    episodes: int = 3
    """deterministic episodes per policy and midpoint"""


def main(args: Args) -> None:
    shards = artifacts.load_stage0(args.run_dir, "cheetah-vel", args.scale)
    spec = common.suite_spec("cheetah-vel")
    parent = artifacts.load_artifact(Path(args.run_dir) / "parent.pt", artifacts.PARENT_FORMAT, ("params",), spec=spec)
    vs = [s["target_velocity"] for s in shards]
    best = [s["params"][s["return"].argmax()] for s in shards]
    pairs = list(range(len(vs) - 1))
    if not pairs:
        raise SystemExit("error: needs at least two training velocities")
    cands = [p for i in pairs for p in (0.5 * (best[i] + best[i + 1]), best[i], best[i + 1], parent["params"])]
    envs = [common.make_eval_env("cheetah-vel", (vs[i] + vs[i + 1]) / 2, episode=e)
            for e in range(args.episodes) for i in pairs for _ in range(4)]
    ret = common.run_lockstep(torch.stack(cands).repeat(args.episodes, 1), envs, spec)["return"]
    ret = ret.reshape(args.episodes, len(pairs), 4).mean(0)
    print(f"Midpoints of neighbouring training velocities (mean return of {args.episodes} deterministic episodes):\n")
    print("| v_a | v_b | midpoint | experts mixed 50/50 | expert v_a | expert v_b | parent |")
    print("|---|---|---|---|---|---|---|")
    for i, r in zip(pairs, ret):
        print(f"| {vs[i]:g} | {vs[i + 1]:g} | {(vs[i] + vs[i + 1]) / 2:g} | " + " | ".join(f"{x:.1f}" for x in r) + " |")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
