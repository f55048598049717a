"""Diagnostic (not a test, not a timing): how often the checkpoints of one MetaWorld stage-0 shard succeed
on the validation goal configurations (common.VALIDATION_GOAL_SEED: never seen by stage 0, never used by
the evaluation), next to their own recorded rollouts on stage 0's training goals. Stage 0's MetaWorld
settings are chosen on it (docs/metaworld-experts.md): a generated policy can only be as good as the data
it learns from, and settings picked on the evaluation goals would flatter the results scored there.

    python stage0_collect_sac.py --suite metaworld --run-dir /tmp/dial --tasks dial-turn-v3 --jobs 1
    python benchmarks/stage0_goals.py /tmp/dial/stage0/dial-turn-v3.pt --goals 10
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
import evaluate_metaworld  # noqa: E402


@dataclass
class Args:
    shard: tyro.conf.Positional[str]
    """a MetaWorld stage-0 shard, <run_dir>/stage0/<task>.pt"""
    goals: int = 10
    """validation goal configurations each checkpoint runs on"""
    workers: int = 1


def main(args: Args) -> None:
    shard = artifacts.load_artifact(args.shard, artifacts.STAGE0_FORMAT, ("params", "success", "task", "step"),
                                 suite="metaworld")
    params, task = shard["params"], shard["task"]
    n = len(params)
    jobs = [(task, common.VALIDATION_GOAL_SEED, g) for g in range(args.goals) for _ in range(n)]
    success = evaluate_metaworld.run_episodes(params.repeat(args.goals, 1), jobs, args.workers)["success"]
    success = torch.as_tensor(success).reshape(args.goals, n).T  # [checkpoint, goal]
    own = shard["success"].float()
    print(f"{task}: {n} checkpoints (steps {int(shard['step'][0])}-{int(shard['step'][-1])})")
    print(f"  own rollouts (training goals): all {own.mean():.1%}, last 20 {own[-20:].mean():.1%}")
    print(f"  {args.goals} validation goals: all {success.mean():.1%}, last 20 {success[-20:].mean():.1%}")
    print("  per checkpoint %:", (100 * success.mean(1)).round().int().tolist())
    print("  per goal %:      ", (100 * success.mean(0)).round().int().tolist())


if __name__ == "__main__":
    main(tyro.cli(Args))
