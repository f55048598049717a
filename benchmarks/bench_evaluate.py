"""Benchmark (not a test): evaluation in lockstep (one batched forward of all policies per step, as
evaluate.py does) against one policy at a time with a plain per-step module forward, on the same
policies and episodes (Cheetah-Vel, 200 steps), and the environment alone (zero actions) as the ceiling.
Returns of the two ways are checked equal. One torch thread.

    python benchmarks/bench_evaluate.py --policies 60 --episodes 2
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


@dataclass
class Args:
    policies: int = 60
    episodes: int = 2


def main(args: Args) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = common.policy_spec(17, 6)
    actors = [common.Actor(17, 6) for _ in range(args.policies)]
    params = torch.stack([common.flatten(a) for a in actors])
    vels = [common.CHEETAH_TEST[i % 5] for i in range(args.policies)]
    n = args.policies * args.episodes
    make = lambda: [common.make_eval_env("cheetah-vel", v, episode=e) for e in range(args.episodes) for v in vels]  # noqa: E731

    envs = make()
    t0 = time.perf_counter()
    lock = common.run_lockstep(params.repeat(args.episodes, 1), envs, spec)["return"]
    t_lock = time.perf_counter() - t0

    envs = make()
    t0 = time.perf_counter()
    plain = []
    for i, env in enumerate(envs):
        actor = actors[i % args.policies]
        obs, _ = env.reset()
        ret, done = 0.0, False
        while not done:
            with torch.no_grad():
                a = actor.act(torch.as_tensor(obs)).numpy()
            obs, r, term, trunc, _ = env.step(a)
            ret, done = ret + r, term or trunc
        plain.append(ret)
    t_plain = time.perf_counter() - t0
    assert np.allclose(lock, plain, atol=1e-3), "lockstep and one-at-a-time returns differ"

    envs = make()
    zero = np.zeros(6, np.float32)
    t0 = time.perf_counter()
    for env in envs:
        env.reset()
        for _ in range(common.CHEETAH_STEPS):
            env.step(zero)
    t_env = time.perf_counter() - t0

    steps = n * common.CHEETAH_STEPS
    print(f"{args.policies} policies x {args.episodes} episodes x {common.CHEETAH_STEPS} steps = {steps} env steps")
    print(f"lockstep:          {t_lock:6.2f}s  {steps / t_lock:8.0f} steps/s")
    print(f"one at a time:     {t_plain:6.2f}s  {steps / t_plain:8.0f} steps/s")
    print(f"environment only:  {t_env:6.2f}s  {steps / t_env:8.0f} steps/s (the ceiling)")
    print(f"lockstep / one at a time = {t_plain / t_lock:.2f}x; lockstep reaches {100 * t_env / t_lock:.0f}% of "
          "the environment-only rate")


if __name__ == "__main__":
    main(tyro.cli(Args))
