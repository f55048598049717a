"""What every stage of AMT-Hyp needs (DESIGN.md sections 2, 3, 9-11): the generated policy (the SAC actor,
its flat layout, a batched forward of P policies), the environments, the lockstep runner and MAA's rollout
features, command lines and scales, seeding and devices. Each model lives in the stage file that trains it;
artifacts, run directories and worker processes are in artifacts.py.
"""

from __future__ import annotations

import argparse
import functools
import random
import re
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from names import task_name  # noqa: F401 - shard and row names (names.py: no torch, no row names)

# ----------------------------------------------------------------------------------------------------
# The generated policy (DESIGN.md section 2)
# x -> Linear(obs,128) -> ELU -> Linear(128,128) -> ReLU -> {mean: Linear(128,act), log_std: Linear(128,act)}
# ----------------------------------------------------------------------------------------------------

HIDDEN = 128


class Actor(nn.Module):
    """The SAC actor, which is also the network that the hypernetwork generates."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = HIDDEN):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc_mean = nn.Linear(hidden, act_dim)
        self.fc_logstd = nn.Linear(hidden, act_dim)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.elu(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.fc_mean(h), self.fc_logstd(h)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic action tanh(mean), in [-1, 1]."""
        return torch.tanh(self.fc_mean(self.trunk(x)))


def policy_spec(obs_dim: int, act_dim: int, hidden: int = HIDDEN) -> dict:
    return {"obs_dim": int(obs_dim), "act_dim": int(act_dim), "hidden": int(hidden)}


def param_shapes(spec: dict) -> list[tuple[int, ...]]:
    """Shapes of the flat layout, in order: each layer's weight [out, in] then its bias."""
    o, a, h = spec["obs_dim"], spec["act_dim"], spec["hidden"]
    return [(h, o), (h,), (h, h), (h,), (a, h), (a,), (a, h), (a,)]


def num_params(spec: dict) -> int:
    return sum(int(np.prod(s)) for s in param_shapes(spec))


def flatten(actor: Actor) -> torch.Tensor:
    """The actor's parameters as one float32 vector in the layout of `param_shapes`."""
    return torch.cat([p.detach().reshape(-1) for p in actor.parameters()]).float()


def unflatten(vec: torch.Tensor, actor: Actor) -> Actor:
    """Load a copy of a flat vector into `actor` (in place) and return it (training it leaves `vec` as it is)."""
    n = sum(p.numel() for p in actor.parameters())
    if vec.numel() != n:
        raise ValueError(f"flat policy has {vec.numel()} values, the actor needs {n}")
    torch.nn.utils.vector_to_parameters(vec.to(next(actor.parameters()), copy=True), actor.parameters())
    return actor


def batched_act(params: torch.Tensor, obs: torch.Tensor, spec: dict) -> torch.Tensor:
    """Deterministic actions tanh(mean) of N flat policies on N observation batches, one batched matmul per
    layer: params [N, P], obs [N, B, obs_dim] -> [N, B, act_dim], equal to `Actor.act` after `unflatten`."""
    views, i = [], 0
    for s in param_shapes(spec):  # [N, *shape] views of the flat vectors, no copy
        views.append(params[:, i : i + int(np.prod(s))].view(params.shape[0], *s))
        i += int(np.prod(s))
    w1, b1, w2, b2, wm, bm, _, _ = views
    h = F.elu(torch.baddbmm(b1.unsqueeze(1), obs, w1.transpose(1, 2)))
    h = F.relu(torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2)))
    return torch.tanh(torch.baddbmm(bm.unsqueeze(1), h, wm.transpose(1, 2)))


# ----------------------------------------------------------------------------------------------------
# Environments (DESIGN.md section 3)
# ----------------------------------------------------------------------------------------------------

CHEETAH_STEPS = 200
CHEETAH_OBS, CHEETAH_ACT = 17, 6
# v_i = 0.075 (i + 1), i = 0..39; test tasks are indices 2, 7, 15, 23, 26; the other 35 are training tasks.
CHEETAH_GRID = [round(0.075 * (i + 1), 3) for i in range(40)]
CHEETAH_TEST = [CHEETAH_GRID[i] for i in (2, 7, 15, 23, 26)]
CHEETAH_TRAIN = [v for v in CHEETAH_GRID if v not in CHEETAH_TEST]


def cheetah_quick_velocities(seed: int = 0, n: int = 10) -> list[float]:
    """The paper's 10-seed setting: n of the 35 training velocities, drawn once with a fixed seed."""
    idx = np.random.default_rng(seed).choice(len(CHEETAH_TRAIN), size=n, replace=False)
    return sorted(CHEETAH_TRAIN[i] for i in idx)


def cheetah_nested_velocities() -> list[float]:
    """The 35 training velocities in the order of the paper's nested ablation (10, 20, 25, 35): the quick 10
    first, then the other 25 in a fixed random order; the first n are the n-velocity training set."""
    first = cheetah_quick_velocities()
    rest = [v for v in CHEETAH_TRAIN if v not in first]
    return first + [rest[i] for i in np.random.default_rng(0).permutation(len(rest))]


def cheetah_vel_reward(x_velocity: float, action: np.ndarray, target: float) -> float:
    """r = -|v_x - v*| - 0.05 ||a||^2 (MACAW / Prompt-DT Cheetah-Vel)."""
    return -abs(x_velocity - target) - 0.05 * float(np.square(action).sum())


class CheetahVel:
    """HalfCheetah-v5 dynamics, 17-d observation (no x position), target-velocity reward, 200 steps,
    no termination. Same reset/step signature as a gymnasium env."""

    obs_dim, act_dim, max_steps = CHEETAH_OBS, CHEETAH_ACT, CHEETAH_STEPS

    def __init__(self, target_velocity: float, seed: int | None = None, render: bool = False):
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv  # the env class, no wrappers

        # rendering through the model's "track" camera, which follows the centre of mass: a fast policy stays in view
        self.env = (HalfCheetahEnv(render_mode="rgb_array", width=320, height=240, camera_name="track")
                    if render else HalfCheetahEnv())
        self.target = float(target_velocity)
        self.seed, self.t = seed, 0

    def reset(self, seed: int | None = None):
        self.t = 0
        obs, info = self.env.reset(seed=self.seed if seed is None else seed)
        self.seed = None  # seed only the first reset, as gymnasium does
        return obs.astype(np.float32), info

    def step(self, action: np.ndarray):
        action = np.clip(action, -1.0, 1.0)
        obs, _, _, _, info = self.env.step(action)
        self.t += 1
        reward = cheetah_vel_reward(info["x_velocity"], action, self.target)
        return obs.astype(np.float32), reward, False, self.t >= self.max_steps, info

    def render(self) -> np.ndarray:
        return self.env.render()

    def upside_down(self) -> bool:
        """The torso pitched more than 90 degrees (qpos[2]): HalfCheetah's known SAC failure, running on its back."""
        return abs(float(self.env.data.qpos[2])) > np.pi / 2


MW_SEEN = ["window-open-v3", "door-open-v3", "drawer-open-v3", "dial-turn-v3",
           "plate-slide-v3", "button-press-v3", "handle-press-v3", "faucet-close-v3"]
MW_UNSEEN = ["drawer-close-v3", "handle-press-side-v3", "door-lock-v3", "window-close-v3",
             "reach-wall-v3", "coffee-button-v3", "button-press-wall-v3", "faucet-open-v3"]
MW_TASKS = MW_SEEN + MW_UNSEEN
MW_OBS, MW_ACT, MW_STEPS = 39, 4, 500
MW_GOALS = 50  # goal configurations metaworld.MT1 draws per task and seed
# Goal seeds that stage 0 never trains or records on (it refuses a --seed whose goal seeds would equal one):
EVAL_GOAL_SEED = 2024  # the evaluation's goals, so they never appear in training or conditioning
SELECT_GOAL_SEED = 2025  # the goals on which evaluate.py's top-k picks its k best policies (never scored)
# The seeds whose goals are candidates for top-k's selection goals, in this order (goal 0..49 of each):
# evaluate_metaworld.selection_goals keeps those far enough from every scored goal; at most 400 candidates
SELECT_GOAL_SEEDS = tuple(SELECT_GOAL_SEED + 100_000 * k for k in range(8))
VALIDATION_GOAL_SEED = 2026  # the goals on which stage 0's settings are chosen (benchmarks/stage0_goals.py)


def check_metaworld_tasks(tasks: list[str]) -> list[str]:
    if bad := [t for t in tasks if t not in MW_TASKS]:
        raise SystemExit(f"error: unknown MetaWorld task(s) {', '.join(bad)}; valid: {', '.join(MW_TASKS)}")
    return list(tasks)


def check_velocities(vels: list) -> list[float]:
    """Target velocities (numbers or the strings of a command line) as floats in [0, 3], else one-line error."""
    try:
        vels = [float(v) for v in vels]
    except ValueError:
        raise SystemExit(f"error: --velocities takes numbers in [0, 3]; got {' '.join(map(str, vels))}") from None
    if not vels:
        raise SystemExit("error: --velocities needs at least one velocity")
    if bad := [v for v in vels if not (0.0 <= v <= 3.0)]:
        raise SystemExit(f"error: target velocities must lie in [0, 3]; got {', '.join(map(str, bad))}")
    return vels


@functools.lru_cache(maxsize=None)
def metaworld_goals(task: str, seed: int) -> list:
    """The 50 goal configurations of `task` drawn with `seed` (cached; do not modify). MetaWorld ignores
    `reset(seed=)`: a goal is fixed with `env.set_task(goal)` before `reset()`."""
    import metaworld

    return metaworld.MT1(task, seed=seed).train_tasks


@functools.lru_cache(maxsize=None)
def metaworld_goal_vectors(task: str, seed: int) -> np.ndarray:
    """The vector each goal configuration of `metaworld_goals(task, seed)` fixes [50, d] (MetaWorld's
    `rand_vec`, drawn in the task's `_random_reset_space`): the object's position (d = 3; the goal is then
    a fixed offset from it), or the object's and the goal's (d = 6: plate-slide, reach-wall), in metres."""
    import pickle

    out = np.array([pickle.loads(g.data)["rand_vec"] for g in metaworld_goals(task, seed)], dtype=np.float64)
    out.flags.writeable = False
    return out


def make_metaworld(task: str, render: bool = False):
    """The raw metaworld v3 env (goal observable, 39-d obs, 4-d action, 500 steps; success is
    `info["success"]` at any step); `render`: `env.render()` gives 320x240 RGB frames."""
    import warnings

    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    warnings.filterwarnings("ignore", message=".*Constant\\(s\\) may be too high.*")
    check_metaworld_tasks([task])
    view = dict(render_mode="rgb_array", camera_name="corner", width=320, height=240) if render else {}
    return ALL_V3_ENVIRONMENTS[task](**view)


def suite_spec(suite: str) -> dict:
    return policy_spec(CHEETAH_OBS, CHEETAH_ACT) if suite == "cheetah-vel" else policy_spec(MW_OBS, MW_ACT)


def make_eval_env(suite: str, task, episode: int = 0, goal_seed: int = EVAL_GOAL_SEED, render: bool = False):
    """An env for evaluating a policy on `task`, fixed by `episode`: Cheetah-Vel seeds its reset with it;
    MetaWorld sets goal number `episode` (0..49) of those drawn with `goal_seed` (default: evaluation's)."""
    if suite == "cheetah-vel":
        return CheetahVel(float(task), seed=100_000 + episode, render=render)
    if not 0 <= episode < MW_GOALS:
        raise SystemExit(f"error: MetaWorld has {MW_GOALS} goal configurations per seed; goal {episode} asked for")
    env = make_metaworld(task, render=render)
    env.set_task(metaworld_goals(task, goal_seed)[episode])
    return env


def run_lockstep(params: torch.Tensor, envs: list, spec: dict, record: bool = False,
                 stop_when_decided: bool = False) -> dict:
    """One episode of each of N flat policies (deterministic actions), policy i in envs[i] (reset-ready;
    MetaWorld: goal set), in lockstep: each step is one batched forward of the policies still running.
    Returns float arrays [N] `return`, `success` (info["success"] at any step) and `first_success` (index of
    the first state with success, -1 if none); with `record`, also MAA's features `traj` and `post_success`.
    `stop_when_decided`: an episode ends once its outcome is decided (its first success; with `record`,
    once its features are complete), so success and features equal the full episode's, `return` not."""
    n = len(envs)
    assert params.shape[0] == n, f"{params.shape[0]} policies for {n} envs"
    obs = np.stack([e.reset()[0] for e in envs]).astype(np.float32)
    ret, success = np.zeros(n), np.zeros(n)
    states, actions, first, t = [[o.copy()] for o in obs], [[] for _ in range(n)], [None] * n, 0
    active, p_active = np.arange(n), params  # the episodes still running and their policies
    with torch.no_grad():
        while len(active):
            act = batched_act(p_active, torch.from_numpy(obs[active]).unsqueeze(1), spec).squeeze(1).numpy()
            t += 1
            done = np.zeros(len(active), bool)
            for j, i in enumerate(active):
                o, r, term, trunc, info = envs[i].step(act[j])
                obs[i], ret[i] = o, ret[i] + r
                if info.get("success", 0.0) > 0 and first[i] is None:
                    first[i] = t  # index of the first state reached with success
                success[i] = max(success[i], float(info.get("success", 0.0)))
                if record:
                    states[i].append(obs[i].copy()), actions[i].append(act[j])
                decided = first[i] is not None and (not record or t >= max(TRAJ_STEPS, first[i] + POST_STATES - 1))
                done[j] = term or trunc or (stop_when_decided and decided)
            if done.any():  # shrink the batch (one copy of the remaining policies per change)
                active, p_active = active[~done], p_active[torch.from_numpy(~done)]
    out = {"return": ret, "success": success, "first_success": np.array([-1 if f is None else f for f in first])}
    if record:
        feats = [rollout_features(np.stack(states[i]), np.stack(actions[i]), first[i]) for i in range(n)]
        out["traj"], out["post_success"] = (np.stack(f) for f in zip(*feats))
    return out


# MAA's rollout features (DESIGN.md section 4), recorded by run_lockstep
TRAJ_STEPS, TRAJ_EVERY, POST_STATES = 60, 3, 3


def traj_dim(obs_dim: int, act_dim: int) -> int:
    return (TRAJ_STEPS // TRAJ_EVERY) * (obs_dim + TRAJ_EVERY * act_dim)


def rollout_features(obs: np.ndarray, acts: np.ndarray, first_success: int | None):
    """`traj`: (s0, a0, a1, a2, s3, a3, a4, a5, ...) over the first 60 steps;
    `post_success`: the 3 states from the first success step on, or the last 3 states if none.
    obs [T+1, obs_dim] (states s_0..s_T), acts [T, act_dim]."""
    traj = np.concatenate([x for t in range(0, TRAJ_STEPS, TRAJ_EVERY) for x in (obs[t], acts[t : t + TRAJ_EVERY].ravel())])
    start = len(obs) - POST_STATES if first_success is None else min(first_success, len(obs) - POST_STATES)
    post = obs[start : start + POST_STATES].reshape(-1)
    return traj.astype(np.float32), post.astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Command lines, scales, seeding (DESIGN.md sections 9, 11)
# ----------------------------------------------------------------------------------------------------

SUITES = ("cheetah-vel", "metaworld")
SCALE_NAMES = ("smoke", "quick", "paper")


def scale_defaults(Args, scales: dict, suite: str, scale: str):
    """Args with the defaults of `suite` at `scale`: the dataclass holds quick Cheetah-Vel; `scales` maps a
    scale ("smoke") or a suite and scale ("metaworld:quick") to the options it changes."""
    table = {**scales.get(scale, {}), **scales.get(f"{suite}:{scale}", {})}
    return replace(Args(), suite=suite, scale=scale, run_dir=f"runs/{suite}-{scale}", **table)


def parse_args(Args, scales: dict, doc: str, argv: list[str] | None = None):
    """tyro.cli(Args) with the defaults of the --suite and --scale given (any flag given explicitly wins).
    `--help` shows the defaults of that suite and scale, and lists what the other scales change."""
    import tyro

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--suite", default=Args.suite)
    pre.add_argument("--scale", default=Args.scale)
    known, _ = pre.parse_known_args(argv)
    for flag, value, valid in (("--suite", known.suite, SUITES), ("--scale", known.scale, SCALE_NAMES)):
        if value not in valid:
            raise SystemExit(f"error: {flag} {value}: unknown; valid: {', '.join(valid)}")
    rows = [f"  {k}: " + ", ".join(f"{f}={v}" for f, v in t.items()) for k, t in scales.items()]
    doc = (f"{doc.strip()}\n\nDefaults below: --suite {known.suite} --scale {known.scale}. What the other scales "
           "change (the quick Cheetah-Vel defaults otherwise; 'metaworld:quick' = --suite metaworld --scale quick):\n"
           + "\n".join(rows))
    return tyro.cli(Args, default=scale_defaults(Args, scales, known.suite, known.scale), description=doc, args=argv)


def check_options(args, positive: tuple[str, ...] = (), nonnegative: tuple[str, ...] = (),
                  fraction: tuple[str, ...] = (), seeds: tuple[str, ...] = ()) -> None:
    """One-line errors for numeric options out of range, before any work starts; `seeds`: what numpy's
    global seed takes, [0, 2**32)."""
    for kind, names, ok in (("> 0", positive, lambda v: v > 0), (">= 0", nonnegative, lambda v: v >= 0),
                            ("in [0, 1)", fraction, lambda v: 0 <= v < 1),
                            ("in [0, 2**32)", seeds, lambda v: 0 <= v < 2**32)):
        for name in names:
            v = getattr(args, name)
            if v is None or not ok(v):
                raise SystemExit(f"error: --{name.replace('_', '-')} must be {kind}; got {v}")


def check_tag(tag: str) -> str:
    """A name for outputs (results-<tag>.json, videos-<tag>/): letters, digits, '.', '_' and '-', no '..'."""
    if tag and (not re.fullmatch(r"[A-Za-z0-9._-]+", tag) or ".." in tag):
        raise SystemExit(f"error: --tag {tag!r}: use letters, digits, '.', '_' and '-' only (no '..'); it names files")
    return tag


def pick_device(name: str) -> torch.device:
    """`auto`: the first CUDA GPU if torch sees one, else the CPU; a device torch cannot use stops with one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: --device {name}: not a device name (cpu, cuda, cuda:N or auto)") from None
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {name}: this code runs on cpu or cuda devices")
    if dev.type == "cuda" and (dev.index or 0) >= n:
        raise SystemExit(f"error: --device {name} asked for, but torch {torch.__version__} sees {n} CUDA device(s); "
                         "use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
