"""What two or more stages of AMT-Hyp share (DESIGN.md sections 2, 3, 10, 11).

- the generated policy: the SAC actor of section 2, its flat parameter layout, and a batched forward that
  runs P flat policies on P observation batches at once;
- the environments: Cheetah-Vel (HalfCheetah-v5 with a target-velocity reward) and MetaWorld v3 tasks;
- the MAA rollout features `traj` and `post_success` (section 4);
- artifacts: atomic save, validated load (section 10), the stage-0 shards of a suite;
- the networks that a later stage runs again: the stage-1 autoencoder, the stage-2 generator G and the
  stage-3 HypFormer (their losses and training loops stay in the stage files), and the (Z, tau_e) pairs
  that stages 2 and 3 learn from;
- scales and seeding (section 11).
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------
# The generated policy (DESIGN section 2)
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
    """Load a flat vector into `actor` (in place) and return it."""
    n = sum(p.numel() for p in actor.parameters())
    if vec.numel() != n:
        raise ValueError(f"flat policy has {vec.numel()} values, the actor needs {n}")
    torch.nn.utils.vector_to_parameters(vec.to(next(actor.parameters())), actor.parameters())
    return actor


def split_params(params: torch.Tensor, spec: dict) -> list[torch.Tensor]:
    """[N, P] flat policies -> list of views [N, *shape], one per tensor of the layout (no copy)."""
    out, i = [], 0
    for s in param_shapes(spec):
        n = int(np.prod(s))
        out.append(params[:, i : i + n].view(params.shape[0], *s))
        i += n
    return out


def batched_act(params: torch.Tensor, obs: torch.Tensor, spec: dict) -> torch.Tensor:
    """Deterministic actions of N flat policies on N observation batches: one batched matmul per layer.

    params [N, P], obs [N, B, obs_dim] -> actions [N, B, act_dim] = tanh(mean), the same as
    `Actor.act` of each policy loaded with `unflatten`.
    """
    w1, b1, w2, b2, wm, bm, _, _ = split_params(params, spec)
    h = F.elu(torch.baddbmm(b1.unsqueeze(1), obs, w1.transpose(1, 2)))
    h = F.relu(torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2)))
    return torch.tanh(torch.baddbmm(bm.unsqueeze(1), h, wm.transpose(1, 2)))


# ----------------------------------------------------------------------------------------------------
# Environments (DESIGN section 3)
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


def cheetah_vel_reward(x_velocity: float, action: np.ndarray, target: float) -> float:
    """r = -|v_x - v*| - 0.05 ||a||^2 (MACAW / Prompt-DT Cheetah-Vel)."""
    return -abs(x_velocity - target) - 0.05 * float(np.square(action).sum())


class CheetahVel:
    """HalfCheetah-v5 dynamics, 17-d observation (no x position), target-velocity reward, 200 steps,
    no termination. Same reset/step signature as a gymnasium env."""

    obs_dim, act_dim, max_steps = CHEETAH_OBS, CHEETAH_ACT, CHEETAH_STEPS

    def __init__(self, target_velocity: float, seed: int | None = None):
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv  # the env class, no wrappers

        self.env = HalfCheetahEnv()
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


MW_SEEN = ["window-open-v3", "door-open-v3", "drawer-open-v3", "dial-turn-v3",
           "plate-slide-v3", "button-press-v3", "handle-press-v3", "faucet-close-v3"]
MW_UNSEEN = ["drawer-close-v3", "handle-press-side-v3", "door-lock-v3", "window-close-v3",
             "reach-wall-v3", "coffee-button-v3", "button-press-wall-v3", "faucet-open-v3"]
MW_TASKS = MW_SEEN + MW_UNSEEN
MW_OBS, MW_ACT, MW_STEPS = 39, 4, 500


def check_metaworld_tasks(tasks: list[str]) -> list[str]:
    bad = [t for t in tasks if t not in MW_TASKS]
    if bad:
        raise SystemExit(f"error: unknown MetaWorld task(s) {', '.join(bad)}; valid: {', '.join(MW_TASKS)}")
    return list(tasks)


def check_velocities(vels: list) -> list[float]:
    """Target velocities (numbers or the strings of a command line) as floats in [0, 3], else one-line error."""
    try:
        vels = [float(v) for v in vels]
    except ValueError:
        raise SystemExit(f"error: --velocities takes numbers in [0, 3]; got {' '.join(map(str, vels))}") from None
    bad = [v for v in vels if not (0.0 <= v <= 3.0)]
    if bad:
        raise SystemExit(f"error: target velocities must lie in [0, 3]; got {', '.join(map(str, bad))}")
    return [float(v) for v in vels]


@functools.lru_cache(maxsize=None)
def metaworld_goals(task: str, seed: int, n: int | None = None) -> list:
    """Goal configurations (metaworld `Task`s) of one task, fixed by `seed` (cached: building them takes
    about a second). MetaWorld ignores `reset(seed=)`; a goal is fixed with `env.set_task(goal)` before
    `reset()`. Do not modify the returned list."""
    import metaworld

    goals = metaworld.MT1(task, seed=seed).train_tasks
    return goals if n is None else goals[:n]


def make_metaworld(task: str):
    """The raw metaworld v3 env (goal observable, 39-d obs, 4-d action, 500 steps): call
    `env.set_task(goal)` then `env.reset()`; success is `info["success"]` at any step."""
    import warnings

    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    warnings.filterwarnings("ignore", message=".*Constant\\(s\\) may be too high.*")
    check_metaworld_tasks([task])
    return ALL_V3_ENVIRONMENTS[task]()


def task_name(suite: str, task) -> str:
    """Shard name of a task: `vel-0.225` for Cheetah-Vel, the metaworld name for MetaWorld."""
    return f"vel-{float(task):g}" if suite == "cheetah-vel" else str(task)


def suite_spec(suite: str) -> dict:
    return policy_spec(CHEETAH_OBS, CHEETAH_ACT) if suite == "cheetah-vel" else policy_spec(MW_OBS, MW_ACT)


EVAL_GOAL_SEED = 2024  # MetaWorld evaluation goals: not among the training goals (stage 0 seeds 1, 2)


def make_eval_env(suite: str, task, episode: int = 0, goal_seed: int = EVAL_GOAL_SEED):
    """An env for evaluating a policy on `task` (velocity or metaworld name), fixed by `episode`:
    Cheetah-Vel seeds its reset with it; MetaWorld sets goal number `episode` of the goal configurations
    drawn with `goal_seed` (default: the evaluation goals; stage 0's rollouts drew from seed + 1 = 2)."""
    if suite == "cheetah-vel":
        return CheetahVel(float(task), seed=100_000 + episode)
    env = make_metaworld(task)
    env.set_task(metaworld_goals(task, goal_seed)[episode])
    return env


def run_lockstep(params: torch.Tensor, envs: list, spec: dict, record: bool = False) -> dict:
    """One episode of each of N flat policies (deterministic actions), policy i in envs[i], all in
    lockstep: every step is one batched forward of all N policies. The envs must be reset-ready (for
    MetaWorld: goal already set) and have equal episode lengths. Returns per-policy `return` and `success`
    (MetaWorld: info["success"] at any step) as float arrays [N]; with `record`, also each episode's MAA
    features `traj` [N, traj_dim] and `post_success` [N, 3 * obs_dim] (see `rollout_features`)."""
    n = len(envs)
    assert params.shape[0] == n, f"{params.shape[0]} policies for {n} envs"
    obs = np.stack([e.reset()[0] for e in envs]).astype(np.float32)
    ret, success, done = np.zeros(n), np.zeros(n), np.zeros(n, bool)
    states, actions, first, t = [obs.copy()], [], [None] * n, 0
    with torch.no_grad():
        while not done.all():
            act = batched_act(params, torch.from_numpy(obs).unsqueeze(1), spec).squeeze(1).numpy()
            t += 1
            for i, e in enumerate(envs):
                o, r, term, trunc, info = e.step(act[i])
                obs[i], ret[i] = o, ret[i] + r
                if info.get("success", 0.0) > 0 and first[i] is None:
                    first[i] = t  # index of the first state reached with success
                success[i] = max(success[i], float(info.get("success", 0.0)))
                done[i] = term or trunc
            if record:
                states.append(obs.copy()), actions.append(act)
    out = {"return": ret, "success": success}
    if record:
        S, A = np.stack(states, 1), np.stack(actions, 1)  # [N, T+1, obs], [N, T, act]
        feats = [rollout_features(S[i], A[i], first[i]) for i in range(n)]
        out["traj"], out["post_success"] = (np.stack(f) for f in zip(*feats))
    return out


# ----------------------------------------------------------------------------------------------------
# Rollout features of MAA (DESIGN section 4)
# ----------------------------------------------------------------------------------------------------

TRAJ_STEPS, TRAJ_EVERY, POST_STATES = 60, 3, 3


def traj_dim(obs_dim: int, act_dim: int) -> int:
    return (TRAJ_STEPS // TRAJ_EVERY) * (obs_dim + TRAJ_EVERY * act_dim)


def rollout_features(obs: np.ndarray, acts: np.ndarray, first_success: int | None):
    """`traj`: (s0, a0, a1, a2, s3, a3, a4, a5, ...) over the first 60 steps;
    `post_success`: the 3 states from the first success step on, or the last 3 states if none.

    obs [T+1, obs_dim] (states s_0..s_T), acts [T, act_dim]."""
    parts = []
    for t in range(0, TRAJ_STEPS, TRAJ_EVERY):
        parts.append(obs[t])
        parts.append(acts[t : t + TRAJ_EVERY].reshape(-1))
    traj = np.concatenate(parts)
    start = len(obs) - POST_STATES if first_success is None else min(first_success, len(obs) - POST_STATES)
    post = obs[start : start + POST_STATES].reshape(-1)
    return traj.astype(np.float32), post.astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Artifacts (DESIGN section 10)
# ----------------------------------------------------------------------------------------------------


def save_artifact(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_artifact(path: str | Path, fmt: str, keys: tuple[str, ...] = (), spec: dict | None = None,
                  suite: str | None = None) -> dict:
    """Load a `.pt` artifact with weights_only=True and check it. Any problem stops the program with
    one line naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"error: {path}: file not found (run the stage that writes it first)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise SystemExit(f"error: {path}: not a readable artifact ({type(e).__name__})") from None
    if not isinstance(obj, dict) or "format" not in obj:
        raise SystemExit(f"error: {path}: no 'format' key; expected a '{fmt}' artifact")
    if obj["format"] != fmt:
        raise SystemExit(f"error: {path}: format is '{obj['format']}', expected '{fmt}'")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise SystemExit(f"error: {path}: missing key(s) {', '.join(missing)}")
    if suite is not None and obj.get("suite") != suite:
        raise SystemExit(f"error: {path}: suite is '{obj.get('suite')}', expected '{suite}'")
    if spec is not None:
        if obj.get("policy") != spec:
            raise SystemExit(f"error: {path}: policy is {obj.get('policy')}, expected {spec}")
        if "params" in obj and obj["params"].shape[-1] != num_params(spec):
            raise SystemExit(f"error: {path}: params have {obj['params'].shape[-1]} values per policy, "
                             f"expected {num_params(spec)}")
    return obj


STAGE0_FORMAT = "amt-hyp/stage0-shard v1"
PARENT_FORMAT = "amt-hyp/stage0-parent v1"


def load_stage0(run_dir: str | Path, suite: str) -> list[dict]:
    """Every stage-0 shard of a suite, sorted by task name (Cheetah-Vel: by velocity)."""
    paths = sorted(Path(run_dir, "stage0").glob("*.pt"))
    paths = [p for p in paths if not p.name.endswith(".partial.pt")]
    if not paths:
        raise SystemExit(f"error: {Path(run_dir, 'stage0')}: no stage-0 shards (run stage0_collect_sac.py first)")
    shards = [load_artifact(p, STAGE0_FORMAT, ("params", "step", "return", "success", "traj", "post_success"),
                            spec=suite_spec(suite), suite=suite) for p in paths]
    if suite == "cheetah-vel":
        shards.sort(key=lambda s: s["target_velocity"])
    return shards


# ----------------------------------------------------------------------------------------------------
# Stage 1 autoencoder (paper Sec. III-A; trained by stage1_autoencoder.py, used by every later stage)
# ----------------------------------------------------------------------------------------------------

AUTOENCODER_FORMAT = "amt-hyp/autoencoder v1"
BEHAVIOR_FORMAT = "amt-hyp/behavior-embed v1"


class PolicyAutoencoder(nn.Module):
    """E: two bias-free linear maps (first layer, rest) to tokens, LayerNorm; D: one linear map per token."""

    def __init__(self, spec: dict, token_dim: int):
        super().__init__()
        first = spec["hidden"] * spec["obs_dim"] + spec["hidden"]  # fc1 weight and bias
        self.sizes = [first, num_params(spec) - first]
        self.enc = nn.ModuleList([nn.Linear(n, token_dim, bias=False) for n in self.sizes])
        self.norm = nn.LayerNorm(token_dim)
        self.dec = nn.ModuleList([nn.Linear(token_dim, n, bias=False) for n in self.sizes])
        self.register_buffer("mean", torch.zeros(sum(self.sizes)))
        self.register_buffer("std", torch.ones(sum(self.sizes)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, P] flat policies -> Z [B, 2, token_dim]."""
        parts = ((x - self.mean) / self.std).split(self.sizes, dim=-1)
        return torch.stack([self.norm(e(p)) for e, p in zip(self.enc, parts)], dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Z [B, 2, token_dim] -> [B, P] flat policies."""
        return torch.cat([d(z[:, i]) for i, d in enumerate(self.dec)], dim=-1) * self.std + self.mean

    def forward(self, x: torch.Tensor, input_noise: float = 0.0, latent_noise: float = 0.0) -> torch.Tensor:
        z = self.encode(x + input_noise * torch.randn_like(x))
        return self.decode(z + latent_noise * torch.randn_like(z))


def load_autoencoder(path: str | Path, suite: str) -> tuple[PolicyAutoencoder, dict]:
    """The trained autoencoder (eval mode) and its artifact; used by the later stages."""
    spec = suite_spec(suite)
    art = load_artifact(path, AUTOENCODER_FORMAT, ("model", "token_dim", "latents"), spec=spec, suite=suite)
    model = PolicyAutoencoder(spec, art["token_dim"])
    model.load_state_dict(art["model"])
    return model.eval(), art


class Phi(nn.Module):
    """The behaviour embedding's phi (Eq. 2): trajectory features (20 x (obs + 3 act)) -> 1024 -> 1024 -> h."""

    def __init__(self, in_dim: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                 nn.Linear(1024, out_dim))

    def forward(self, x):
        return self.net(x)


def scale_to_unit(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Map [lo, hi] to [-1, 1] (values outside the training range go beyond it)."""
    return 2 * (x - lo) / (hi - lo) - 1


def load_behavior_embed(path: str | Path, suite: str) -> tuple[Phi, dict]:
    """phi with the input scaling it was trained with: `embed_trajectories(phi, art, traj)` gives h."""
    art = load_artifact(path, BEHAVIOR_FORMAT, ("phi", "scaling", "h", "tasks", "success", "train_tasks"),
                        suite=suite)
    phi = Phi(art["scaling"]["traj_lo"].numel(), art["h"].shape[1])
    phi.load_state_dict(art["phi"])
    return phi.eval(), art


@torch.no_grad()
def embed_trajectories(phi: Phi, art: dict, traj: torch.Tensor) -> torch.Tensor:
    """h = phi(scaled traj), with the scaling fit on stage 1's training rollouts (DESIGN section 5)."""
    return phi(scale_to_unit(traj, art["scaling"]["traj_lo"], art["scaling"]["traj_hi"]))


def training_pairs(run_dir: str | Path, suite: str) -> dict:
    """Stages 2 and 3 learn from (Z, tau_e) pairs: the latents of the autoencoder's training checkpoints and
    their raw conditions (Cheetah-Vel: the target velocity; MetaWorld: the rollout's behaviour embedding h)."""
    run = Path(run_dir)
    _, ae = load_autoencoder(run / "autoencoder.pt", suite)
    Z = ae["latents"].flatten(1)
    if suite == "cheetah-vel":
        vel = torch.tensor([s["target_velocity"] for s in load_stage0(run, suite)])
        cond = vel[ae["task_index"]].unsqueeze(1)
    else:
        be = load_artifact(run / "behavior_embed.pt", BEHAVIOR_FORMAT, ("h", "tasks", "checkpoint_step"), suite=suite)
        if be["tasks"] != ae["tasks"] or not torch.equal(be["checkpoint_step"], ae["checkpoint_step"]):
            raise SystemExit(f"error: {run / 'behavior_embed.pt'}: its checkpoints differ from autoencoder.pt's "
                             "(re-run both stage-1 scripts on the same stage-0 shards)")
        cond = be["h"]
    train = ae["train"]
    return {"Z": Z[train], "cond": cond[train], "task_index": ae["task_index"][train], "tasks": ae["tasks"],
            "token_dim": ae["token_dim"]}


# ----------------------------------------------------------------------------------------------------
# Stage 2 generator G (paper Sec. III-B; trained by stage2_hyplatent.py, sampled by stage 3 and evaluation)
# ----------------------------------------------------------------------------------------------------

HYPLATENT_FORMAT = "amt-hyp/hyplatent v1"


def _block(i: int, o: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.GELU(), nn.Dropout(dropout))


class Generator(nn.Module):
    """G(tau_e, n) -> Z_hat: the paper's "1D UNet", as in the authors' code an MLP encoder-decoder with
    additive skip connections (widths 2048, 1024, 512, 256 and back; BatchNorm, GELU, dropout 0.1).
    Works on normalised conditions and latents (statistics saved in the stage-2 artifact)."""

    def __init__(self, cond_dim: int, noise_dim: int, latent_dim: int, widths=(2048, 1024, 512, 256),
                 dropout: float = 0.1):
        super().__init__()
        self.noise_dim = noise_dim
        dims = [cond_dim + noise_dim, *widths]
        self.down = nn.ModuleList([_block(dims[i], dims[i + 1], dropout) for i in range(len(widths))])
        self.up = nn.ModuleList([_block(widths[i + 1], widths[i], dropout) for i in reversed(range(len(widths) - 1))])
        self.out = nn.Linear(widths[0], latent_dim)

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = torch.cat([cond, noise], dim=-1)
        skips = []
        for blk in self.down:
            x = blk(x)
            skips.append(x)
        for blk, skip in zip(self.up, reversed(skips[:-1])):
            x = blk(x) + skip
        return self.out(x)


def load_generator(path: str | Path, suite: str) -> tuple[Generator, dict]:
    """The trained generator (eval mode) and its artifact (normalisation statistics included)."""
    art = load_artifact(path, HYPLATENT_FORMAT, ("generator", "arch", "latent_mean", "latent_std",
                                                 "cond_mean", "cond_std"), suite=suite)
    G = Generator(**art["arch"])
    G.load_state_dict(art["generator"])
    return G.eval(), art


def decode_generated(latents: torch.Tensor, gen: dict, ae: "PolicyAutoencoder") -> torch.Tensor:
    """Normalised generated latents [N, 2 * token_dim] -> flat policies [N, P]: undo stage 2's latent
    normalisation (statistics in its artifact `gen`), then the autoencoder's decoder."""
    z = latents * gen["latent_std"] + gen["latent_mean"]
    return ae.decode(z.view(len(latents), 2, -1))


def run_generated(latents: torch.Tensor, gen: dict, ae: "PolicyAutoencoder", suite: str, tasks: list,
                  episodes: int = 1) -> np.ndarray:
    """Decode normalised generated latents [N, latent] (statistics from the stage-2 artifact `gen`) and run
    policy i on tasks[i] (velocity or metaworld name), `episodes` times each, in lockstep. Returns the
    mean return (Cheetah-Vel) or success (MetaWorld) of each policy, [N]."""
    with torch.no_grad():
        params = decode_generated(latents, gen, ae).repeat(episodes, 1)
    envs = [make_eval_env(suite, t, episode=e) for e in range(episodes) for t in tasks]
    out = run_lockstep(params, envs, suite_spec(suite))
    key = "return" if suite == "cheetah-vel" else "success"
    return out[key].reshape(episodes, len(tasks)).mean(0)


def check_conditions(data: dict, per_task: int, seed: int) -> tuple[torch.Tensor, list, list]:
    """Up to `per_task` training pairs per task for a functional check: (indices, task of each as an env
    argument, task names)."""
    g = torch.Generator().manual_seed(seed)
    idx = []
    for t in range(len(data["tasks"])):
        rows = (data["task_index"] == t).nonzero().squeeze(1)
        idx.append(rows[torch.randperm(len(rows), generator=g)[:per_task]])
    idx = torch.cat(idx)
    names = [data["tasks"][int(t)] for t in data["task_index"][idx]]
    env_tasks = [float(c) for c in data["cond"][idx, 0]] if data["cond"].shape[1] == 1 else names
    return idx, env_tasks, names


# ----------------------------------------------------------------------------------------------------
# Stage 3 HypFormer (paper Sec. III-C; trained by stage3_hypformer.py, run by evaluation)
# ----------------------------------------------------------------------------------------------------

HYPFORMER_FORMAT = "amt-hyp/hypformer v1"


class HypFormer(nn.Module):
    """Tokens [Z_token (learned), proj(Z_hat_1..Z_hat_L), proj(tau_e)] -> one TransformerEncoderLayer (no
    positional encoding; attention runs over the L + 2 tokens of one sample, never across the batch) ->
    shared MLP -> latent head and residue head, each averaged over the tokens: (Z_pred, grad_pred).
    The refined latent is Z_pred + grad_pred. Works in the normalised latent space of stage 2."""

    def __init__(self, latent_dim: int, cond_dim: int, width: int = 256, heads: int = 128, dropout: float = 0.1):
        super().__init__()
        self.z_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.proj_z = nn.Linear(latent_dim, width)
        self.proj_c = nn.Linear(cond_dim, width)
        self.layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=dropout,
                                                batch_first=True)  # input (batch, tokens, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU())
        self.latent_head = nn.Linear(width, latent_dim)
        self.residue_head = nn.Linear(width, latent_dim)

    def forward(self, z_hat: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_hat [B, L, latent] (normalised), cond [B, cond] (normalised) -> Z_pred, grad_pred [B, latent]."""
        b = z_hat.shape[0]
        tokens = torch.cat([self.z_token.expand(b, 1, -1), self.proj_z(z_hat), self.proj_c(cond).unsqueeze(1)], 1)
        h = self.mlp(self.layer(tokens))
        return self.latent_head(h).mean(1), self.residue_head(h).mean(1)


def load_hypformer(path: str | Path, suite: str) -> tuple[HypFormer, dict]:
    art = load_artifact(path, HYPFORMER_FORMAT, ("model", "arch", "num_tokens"), suite=suite)
    model = HypFormer(**art["arch"])
    model.load_state_dict(art["model"])
    return model.eval(), art


# ----------------------------------------------------------------------------------------------------
# Scales, seeding (DESIGN sections 9, 11)
# ----------------------------------------------------------------------------------------------------


def apply_scale(args, table: dict) -> None:
    """Fill every field of `args` left at None from `table` (the defaults of the chosen scale);
    a flag given on the command line wins."""
    for f in fields(args):
        if getattr(args, f.name) is None and f.name in table:
            setattr(args, f.name, table[f.name])


def cpu_state(module: nn.Module) -> dict:
    """A state dict on the CPU, whatever device the module trained on (artifacts load anywhere)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def pick_device(name: str) -> torch.device:
    """`auto`: the first CUDA GPU if torch sees one, else the CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
