"""Benchmark (not a test): stage 0's experts trained one task per process against the same experts trained as
ensembles, on the same tasks, steps, seeds and number of worker processes, back to back.

- per-task: each task is a 1-member ensemble, the single expert (a 1-member run equals, bit for bit, the
  one-process-per-task code stage 0 had before the ensemble); the tasks are shared out over `--jobs` worker
  processes, one task at a time each, as `stage0_collect_sac.py` ran them.
- ensemble: the tasks split into `--jobs` ensembles, one per worker process (stage 0's `--jobs`).

Quick-scale settings of the suite (critics 128 wide on Cheetah-Vel, batch 256, one torch thread per worker),
`--steps` SAC steps per task from a fresh init (random actions for the first `--learning-starts`), no
checkpoints; MetaWorld without the demonstration buffer. The worker processes are started before the clock
runs. Prints steps per second of each, per repeat, and as its last line the ratio of the medians:

    python benchmarks/bench_stage0_sac.py                      # Cheetah-Vel: the 10 quick velocities
    python benchmarks/bench_stage0_sac.py --suite metaworld    # the 16 MetaWorld tasks
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import stage0_collect_sac as s0  # noqa: E402


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    tasks: int = 0
    """how many of the suite's quick-scale tasks (0: all: 10 velocities, or 16 MetaWorld tasks)"""
    steps: int = 2000
    """SAC steps per task per measurement"""
    learning_starts: int = 500
    jobs: int = 2
    """worker processes in both modes"""
    repeats: int = 2


def train(suite: str, tasks: list, steps: int, learning_starts: int) -> float:
    """One ensemble of `tasks` for `steps` SAC steps each, in this worker; returns its seconds."""
    torch.set_num_threads(1)
    a = replace(common.scale_defaults(s0.Args, s0.SCALES, suite, "quick"), learning_starts=learning_starts,
                save_every=1e9, demo_episodes=0)
    spec = common.suite_spec(suite)
    agent = s0.new_agent(a, spec["obs_dim"], spec["act_dim"], [a.seed] * len(tasks))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s0.run_sac(a, agent, tasks, [a.seed] * len(tasks), total_steps=steps, checkpoints=[], from_parent=False,
                   tags=[f"bench {t}" for t in tasks], state_path=Path(tmp) / "none.partial.pt", made_from={})
        return time.perf_counter() - t0


def warm(_: int) -> None:
    """Started before the clock: the worker imports torch, the environments and stage 0."""
    torch.set_num_threads(1)


def measure(pool, groups: list[list], args: Args) -> float:
    """Wall seconds for every group to train (each a worker job), from the first submission to the last result."""
    t0 = time.perf_counter()
    for f in [pool.submit(train, args.suite, g, args.steps, args.learning_starts) for g in groups]:
        f.result()
    return time.perf_counter() - t0


def main(args: Args) -> None:
    tasks = common.cheetah_quick_velocities() if args.suite == "cheetah-vel" else list(common.MW_TASKS)
    tasks = tasks[: args.tasks or len(tasks)]
    per_task = [[t] for t in tasks]
    ensembles = [list(p) for p in np.array_split(np.array(tasks, dtype=object), min(args.jobs, len(tasks)))]
    total = len(tasks) * args.steps
    print(f"{args.suite}: {len(tasks)} tasks x {args.steps} SAC steps (updates from step {args.learning_starts}), "
          f"{args.jobs} worker processes of one torch thread; ensembles of {'/'.join(str(len(e)) for e in ensembles)}")
    rates = {"per-task": [], "ensemble": []}
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(warm, range(args.jobs)))
        for r in range(args.repeats):
            rates["per-task"].append(total / measure(pool, per_task, args))
            rates["ensemble"].append(total / measure(pool, ensembles, args))
            print(f"repeat {r}: per-task {rates['per-task'][-1]:.0f} steps/s, ensemble {rates['ensemble'][-1]:.0f} steps/s")
    p, e = np.median(rates["per-task"]), np.median(rates["ensemble"])
    print(f"median: per-task {p:.0f} steps/s, ensemble {e:.0f} steps/s")
    print(f"ensemble / per-task throughput: {e / p:.2f}x")


if __name__ == "__main__":
    main(tyro.cli(Args))
