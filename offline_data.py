"""The offline data of the conditioned-policy baselines (Prompt-DT, MT-BC; DESIGN.md section 15): whole
episodes of the stage-0 checkpoints whose parameters train stages 1-3 (the autoencoder's training rows), so
that every method of the evaluation learns from one source. Each checkpoint runs its deterministic policy
for `episodes_per_checkpoint` episodes:

- Cheetah-Vel: 200 steps at its own target velocity, reset seeds 10_000_000 + k (the evaluation's are
  100_000 + e, the test prompts' 20_000_000 + k);
- MetaWorld: 500 steps on one of stage 0's training goal configurations (drawn with stage 0's seed: never the
  evaluation's), the goal of each episode drawn with this step's seed.

Every step is kept: observation, action, reward, and the episode's end (done at its last step: neither suite
terminates early). With each episode, the condition the generators and MT-BC read: the target velocity, or
on MetaWorld the behaviour embedding h of the checkpoint's stage-0 rollout (stage 1's).

    python offline_data.py --run-dir runs/cheetah-vel-quick           # -> <run_dir>/offline_data.pt
    python offline_data.py --suite metaworld --run-dir runs/metaworld-quick

Prompt-DT (baselines/prompt_dt.py) and MT-BC (baselines/mt_bc.py) read it with `load_offline_data`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

import artifacts
import common
from latents import load_inputs

FORMAT = "amt-hyp/offline-data v1"
KEYS = ("obs", "act", "rew", "done", "return", "success", "task", "tasks", "cond", "checkpoint_step", "settings",
        "made_from")
DATA_SEED = 10_000_000  # Cheetah-Vel reset seeds of the data episodes: DATA_SEED + k
PROMPT_SEED = 20_000_000  # Cheetah-Vel reset seeds of the test prompts' oracle episodes (evaluate.py)


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """the run's scale (the artifacts it reads were made at it)"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads stages 0-1's artifacts, writes offline_data.pt (default: runs/<suite>-<scale>)"""
    seed: int = 1
    """draws MetaWorld's goal of each episode"""
    episodes_per_checkpoint: int = 1
    """deterministic episodes of each checkpoint (Cheetah-Vel: different reset seeds; MetaWorld: goals)"""
    skip_done: bool = False
    """do nothing if offline_data.pt was made with these settings from these artifacts by this code"""
    progress: bool = True


SCALES: dict = {}


def record_episodes(params: torch.Tensor, envs: list, spec: dict, steps: int) -> dict:
    """One episode of `steps` steps of each of N flat policies (deterministic actions tanh(mean)), policy i in
    envs[i], in lockstep. Returns obs [N, T, obs_dim] (the state each action was taken in), act [N, T,
    act_dim], rew [N, T] and success [N] (MetaWorld's info["success"] at any step)."""
    n = len(envs)
    obs = np.zeros((n, steps, spec["obs_dim"]), np.float32)
    act = np.zeros((n, steps, spec["act_dim"]), np.float32)
    rew, success = np.zeros((n, steps), np.float32), np.zeros(n, np.float32)
    o = np.stack([e.reset()[0] for e in envs]).astype(np.float32)
    with torch.no_grad():
        for t in range(steps):
            obs[:, t] = o
            act[:, t] = common.batched_act(params, torch.from_numpy(o).unsqueeze(1), spec).squeeze(1).numpy()
            for i, env in enumerate(envs):
                o[i], rew[i, t], _, _, info = env.step(act[i, t])
                success[i] = max(success[i], float(info.get("success", 0.0)))
    return {"obs": obs, "act": act, "rew": rew, "success": success}


def make_offline_data(args: Args, chain: dict, chunk: int = 128) -> dict:
    """The episodes of every training checkpoint of `chain` (`latents.load_inputs`), in the autoencoder's
    row order, `episodes_per_checkpoint` per checkpoint, in lockstep chunks of `chunk` episodes."""
    shards, ae = chain["shards"], chain["ae_art"]
    spec = common.suite_spec(args.suite)
    rows = ae["train"].nonzero().squeeze(1)
    params = torch.cat([s["params"] for s in shards])[rows].float()
    step = ae["checkpoint_step"][rows]
    task_index = chain["task_index"]
    E = args.episodes_per_checkpoint
    rng = np.random.default_rng(args.seed)
    jobs = []  # (row in params, env maker) per episode
    for e in range(E):
        for i in range(len(rows)):
            name = chain["tasks"][int(task_index[i])]
            if args.suite == "cheetah-vel":
                v = chain["cond"][i, 0].item()
                jobs.append((i, lambda v=v, k=len(jobs): common.CheetahVel(v, seed=DATA_SEED + k)))
            else:
                goal_seed = shards[0]["settings"]["seed"]  # stage 0's training goals (stage0_collect_sac.goal_seeds)
                g = int(rng.integers(common.MW_GOALS))
                jobs.append((i, lambda n=name, g=g, s=goal_seed: common.make_eval_env("metaworld", n, g, goal_seed=s)))
    steps = common.CHEETAH_STEPS if args.suite == "cheetah-vel" else common.MW_STEPS
    parts, t0 = [], time.time()
    for a in range(0, len(jobs), chunk):
        part = jobs[a : a + chunk]
        parts.append(record_episodes(params[[i for i, _ in part]], [make() for _, make in part], spec, steps))
        if args.progress:
            print(f"offline data: {a + len(part)}/{len(jobs)} episodes, {time.time() - t0:.0f}s", flush=True)
    data = {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in parts[0]}
    which = torch.tensor([i for i, _ in jobs])
    done = torch.zeros(data["rew"].shape, dtype=torch.bool)
    done[:, -1] = True  # neither suite ends an episode early: each ends at its last step (a time limit)
    return {"format": FORMAT, "suite": args.suite, "policy": spec, **data, "done": done,
            "return": data["rew"].sum(1), "task": task_index[which].clone(), "tasks": list(chain["tasks"]),
            "cond": chain["cond"][which].float().clone(), "checkpoint_step": step[which].clone()}


def load_offline_data(path: str | Path, suite: str, scale: str) -> dict:
    """offline_data.pt, checked (format, keys, suite, scale, checksum, one row of every field per episode)."""
    d = artifacts.load_artifact(path, FORMAT, KEYS, spec=common.suite_spec(suite), suite=suite, scale=scale)
    n = len(d["obs"])
    bad = [k for k in ("act", "rew", "done", "return", "success", "task", "cond", "checkpoint_step") if len(d[k]) != n]
    if bad or n == 0:
        raise SystemExit(f"error: {path}: {n} episodes" + "".join(f", {len(d[k])} {k} rows" for k in bad)
                         + "; make it again (offline_data.py)")
    return d


def returns_to_go(rew: torch.Tensor) -> torch.Tensor:
    """R_t = r_t + r_{t+1} + ... + r_T (undiscounted, Prompt-DT's), along the last dimension."""
    return rew.flip(-1).cumsum(-1).flip(-1)


def main(args: Args) -> None:
    common.check_options(args, positive=("episodes_per_checkpoint",), seeds=("seed",))
    run, lock = artifacts.open_run_dir(args.run_dir, "offline data")  # noqa: F841 - held till exit
    chain = load_inputs(run, args.suite, args.scale)
    path, settings = run / "offline_data.pt", artifacts.settings(args)
    if args.skip_done and artifacts.up_to_date(path, FORMAT, settings, chain["made_from"]):
        print(f"offline data: {path} is up to date (same settings, artifacts and code); skipped")
        return
    t0 = time.time()
    data = make_offline_data(args, chain)
    data |= {"settings": settings, "made_from": chain["made_from"], "seconds": time.time() - t0}
    artifacts.save_artifact(data, path)
    mb = sum(v.numel() * v.element_size() for v in data.values() if isinstance(v, torch.Tensor)) / 2**20
    per_task = [data["return"][data["task"] == t] for t in range(len(data["tasks"]))]
    print(f"offline data: {len(data['obs'])} episodes x {data['obs'].shape[1]} steps of {len(data['tasks'])} tasks "
          f"({mb:.1f} MiB) in {time.time() - t0:.0f}s; return per task (min / max): "
          + ", ".join(f"{n} {r.min():.1f}/{r.max():.1f}" for n, r in zip(data["tasks"], per_task) if len(r))
          + f"; wrote {path}")


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
