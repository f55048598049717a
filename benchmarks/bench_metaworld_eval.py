"""Benchmark (not a test): MetaWorld evaluation speed, environment steps per second, back to back on the
same machine:
1. bare: the evaluation's environments (same tasks, goals and number of processes, `MAX_ENVS` per
   process) stepped with random actions and nothing else: the ceiling;
2. lockstep: `evaluate_metaworld.run_episodes` on the same episodes with random flat policies (one batched forward
   per step per process, early stopping on; random policies rarely succeed, so nearly every episode runs
   its 500 steps and the step counts of 1 and 2 match).
Both include starting the processes and building the environments. The target: 2 at >= 70% of 1.

    python benchmarks/bench_metaworld_eval.py --episodes 256 --workers 2
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import evaluate_metaworld  # noqa: E402


@dataclass
class Args:
    episodes: int = 256
    """episodes in all (spread over the workers in chunks of at most evaluate_metaworld.MAX_ENVS)"""
    workers: int = 2
    tasks: tuple[str, ...] = ("door-open-v3", "drawer-open-v3", "button-press-v3", "reach-wall-v3")


def bare_chunk(jobs: list, seed: int) -> int:
    """Step the chunk's envs with random actions to the end of their episodes; returns steps taken."""
    envs = [common.make_eval_env("metaworld", t, episode=i, goal_seed=s) for t, s, i in jobs]
    for e in envs:
        e.reset()
    rng, steps, done = np.random.default_rng(seed), 0, np.zeros(len(envs), bool)
    while not done.all():
        for j in np.flatnonzero(~done):
            *_, term, trunc, _ = envs[j].step(rng.uniform(-1, 1, common.MW_ACT))
            steps, done[j] = steps + 1, term or trunc
    return steps


def main(args: Args) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(args.tasks[i % len(args.tasks)], common.EVAL_GOAL_SEED, i % common.MW_GOALS) for i in range(args.episodes)]
    n_chunks = args.workers * -(-len(jobs) // (args.workers * evaluate_metaworld.MAX_ENVS))
    chunks = [[jobs[i] for i in c] for c in np.array_split(np.arange(len(jobs)), n_chunks)]

    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        bare_steps = sum(pool.map(bare_chunk, chunks, range(len(chunks))))
    bare = bare_steps / (time.perf_counter() - t0)

    torch.manual_seed(0)
    params = torch.randn(len(jobs), common.num_params(common.suite_spec("metaworld"))) * 0.1
    t0 = time.perf_counter()
    out = evaluate_metaworld.run_episodes(params, jobs, args.workers)
    seconds = time.perf_counter() - t0
    lock_steps = bare_steps  # the same episodes; random policies: successes end a few early (printed)
    lock = lock_steps / seconds
    print(f"{args.episodes} MetaWorld episodes, {args.workers} processes, {len(chunks)} chunks")
    print(f"bare environments, random actions: {bare:,.0f} steps/s ({bare_steps:,} steps)")
    print(f"lockstep evaluation (run_episodes): {lock:,.0f} steps/s ({int(out['success'].sum())} of "
          f"{len(jobs)} episodes succeeded and stopped early; counted as full)")
    print(f"lockstep / bare: {lock / bare:.0%}")


if __name__ == "__main__":
    main(tyro.cli(Args))
