"""Stage 0: SAC experts and their policy checkpoints (paper Sec. IV-A "Datasets"; DESIGN.md section 4).

The paper trains SAC [32] per task and saves a policy every 500 steps after the first 150k. The hypernetwork
later learns the distribution of these checkpoints. By default (`--experts one-parent`) all experts of a
suite descend from one parent:

1. parent: Cheetah-Vel, SAC at the middle training velocity (`parent_steps`; 0: independent runs from one
   init seed), trained again from seed + 1000 k (up to 5 tries) if its deterministic episode ends upside
   down; MetaWorld, behaviour cloning of metaworld's scripted experts pooled over the training tasks.
2. children: each task's expert is fine-tuned from the parent with SAC on that task's reward; from
   `first_checkpoint` on, every `checkpoint_every` steps, the actor's flat vector is saved and one
   deterministic episode recorded (return, success, first-success step, MAA's `traj` and `post_success`).
3. MetaWorld quick: half of each batch comes from 50 noisy scripted-expert episodes, with a behaviour-
   cloning term on that half weighted by `bc_weight` (2.5) x the batch's mean |Q|: TD3+BC's normalisation,
   with more weight on cloning (TD3+BC's alpha = 2.5 is `bc_weight` 0.4; docs/metaworld-experts.md).

`--experts independent` (the paper's data) has no parent: each expert starts from its own initialisation and
seeds (`expert_seed`); Cheetah-Vel, SAC for `parent_steps` + the children's span, checkpoints over the last
part; MetaWorld, `parent_bc_steps` of cloning its own demonstrations, then the children's span and anchor.

Each worker process trains its share of the tasks as one ensemble: every weight has a leading member
dimension, and each member keeps its own environment, replay rows, random streams and temperature.
The file reads, one headed section each: options, environments, SAC (networks, `sac_update`, the training
loop, set beside CleanRL's `sac_continuous_action.py`, with the member dimension), then MetaWorld's
demonstrations and resume (which a Cheetah-Vel reader may skip), parent and children, summary and report
queue, the process pool. One shard per task, `<run_dir>/stage0/<task>.pt`, written atomically; every
`save_every` seconds, between two episodes, the ensemble's whole training state goes to one
`<task>.partial.pt` (`<first task>+<K - 1>.partial.pt` for K members), from which a re-run resumes to the
same result.
Parent, shards and partial states record their scale and settings; a run directory holding any made
otherwise stops the run with one line.

    python stage0_collect_sac.py                                  # quick Cheetah-Vel, 10 velocities
    python stage0_collect_sac.py --suite metaworld --tasks door-open-v3
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import artifacts
import common


# ----------------------------------------------------------------------------------------------------
# Options, scales and their checks
# ----------------------------------------------------------------------------------------------------


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """where artifacts go (default: runs/<suite>-<scale>)"""
    seed: int = 1
    velocities: list[str] = field(default_factory=lambda: [f"{v:g}" for v in common.cheetah_quick_velocities()])
    """Cheetah-Vel training velocities (quick: 10 of the 35 training velocities drawn with seed 0)"""
    tasks: list[str] = field(default_factory=lambda: list(common.MW_TASKS))
    """MetaWorld tasks (the 8 seen train stages 1-3; the 8 unseen give conditioning rollouts only)"""
    shard_dir: Literal["stage0", "oracle"] = "stage0"
    """stage0: the shards stages 1-3 learn from; oracle: experts at velocities no stage trains on, trained
    the same way from the same parent (evaluate.py's upper bound, `<run_dir>/oracle/`)"""
    jobs: int = 0
    """worker processes, each training its share of the tasks as one ensemble (0 = all cores); a member's
    numbers depend on its ensemble within float rounding, so the split is part of the result"""
    experts: Literal["one-parent", "independent"] = "one-parent"
    """one-parent: every expert fine-tuned from one parent (DESIGN.md section 4); independent: no parent, each
    expert SAC from its own random initialisation and seeds (the paper's data): Cheetah-Vel for parent_steps +
    the children's span; MetaWorld parent_bc_steps of cloning its own demonstrations, then the children's span"""
    parent_only: bool = False
    """train (or check) the parent and stop: the first job of a job array (slurm/), whose tasks then each
    run one --velocities / --tasks entry in the same run directory at once"""

    # parent (DESIGN.md section 4)
    parent_steps: int = 30_000
    """Cheetah-Vel: SAC steps of the parent at the middle velocity (0 = independent runs, shared init)"""
    parent_tasks: list[str] = field(default_factory=lambda: list(common.MW_SEEN))
    """MetaWorld: tasks whose scripted demonstrations the parent clones"""
    parent_demo_episodes: int = 10
    """MetaWorld: scripted episodes per parent task for behaviour cloning"""
    parent_bc_steps: int = 3000
    """MetaWorld: gradient steps of parent behaviour cloning (batch `batch_size`)"""

    # checkpoint schedule (paper: 150k, 500, 800)
    first_checkpoint: int = 10_000
    checkpoint_every: int = 100
    num_checkpoints: int = 101

    # SAC (CleanRL defaults unless noted)
    learning_starts: int = 1_000
    """steps before updates start (random actions only when there is no parent)"""
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    policy_lr: float = 3e-4
    q_lr: float = 1e-3
    policy_frequency: int = 2
    """actor updates happen every this many steps, this many at once (CleanRL's delayed update)"""
    critic_hidden: int = 128
    """width of the twin critics (CleanRL and the paper scale: 256; quick: 128, 3.7x fewer multiply-adds)"""
    alpha: float = 0.2
    """initial entropy temperature, tuned automatically towards -act_dim entropy (CleanRL's autotune starts at 1)"""

    # scripted demonstrations (MetaWorld, DESIGN.md section 4)
    demo_episodes: int = 0
    """MetaWorld: scripted-expert episodes per task in the demonstration buffer (0 = off)"""
    demo_steps: int = 200
    """steps kept of each scripted episode"""
    demo_noise: float = 0.1
    """std of the Gaussian noise added to scripted actions"""
    bc_weight: float = 0.0
    """BC term weight, times the batch's mean |Q| (TD3+BC's alpha = 2.5 is 0.4 here)"""

    save_every: float = 60.0
    """seconds between saves of the resumable training state"""
    torch_threads: int = 1
    """torch threads per worker"""
    progress: bool = True
    """show a progress bar"""


SCALES = {
    "smoke": dict(velocities=["0.3", "1.5"], parent_steps=600, learning_starts=200, first_checkpoint=300,
                  checkpoint_every=100, num_checkpoints=4, save_every=0.0),  # save_every 0: after every episode
    "paper": dict(velocities=[f"{v:g}" for v in common.CHEETAH_TRAIN], parent_steps=200_000, learning_starts=5_000,
                  critic_hidden=256, first_checkpoint=150_000, checkpoint_every=500, num_checkpoints=800),
    "metaworld:smoke": dict(parent_tasks=common.MW_SEEN[:2], parent_demo_episodes=1, demo_episodes=1,
                            learning_starts=100, first_checkpoint=200, checkpoint_every=100, num_checkpoints=2,
                            bc_weight=1.0),
    "metaworld:quick": dict(demo_episodes=50, checkpoint_every=250, num_checkpoints=41, bc_weight=2.5),
    # MAA's size: about 1,500 checkpoints per task, SAC alone; all 16 tasks (the unseen give conditions)
    "metaworld:paper": dict(first_checkpoint=500_000, num_checkpoints=1500),
}


def shard_settings(args: Args) -> dict:
    """What a parent, shard or partial state must share with this run (the task list may grow)."""
    return artifacts.settings(args, ignore=("velocities", "tasks", "shard_dir", "parent_only"))


def goal_seeds(args: Args) -> dict:
    """MetaWorld goal-configuration seeds stage 0 trains and records on (none may be the evaluation's)."""
    return {"training": args.seed, "checkpoint rollouts (later: conditioning)": args.seed + 1,
            "demonstrations": args.seed + 7919,
            **{f"parent demonstrations of {t}": args.seed + 1000 * i for i, t in enumerate(args.parent_tasks)}}


def validate(args: Args) -> list:
    """Every option checked before any work starts; returns the tasks (velocities or metaworld names)."""
    common.check_options(args, positive=("first_checkpoint", "checkpoint_every", "num_checkpoints", "batch_size",
                                         "policy_frequency", "critic_hidden", "policy_lr", "q_lr", "alpha", "tau",
                                         "demo_steps", "torch_threads"),
                         nonnegative=("jobs", "parent_steps", "parent_demo_episodes", "parent_bc_steps",
                                      "learning_starts", "demo_episodes", "demo_noise", "bc_weight",
                                      "save_every"),
                         fraction=("gamma",), seeds=("seed",))
    if args.tau > 1 or (args.demo_episodes and args.batch_size < 2):
        raise SystemExit(f"error: need --tau <= 1 (got {args.tau}) and, with demonstrations, --batch-size >= 2")
    if args.suite == "cheetah-vel":
        return common.check_velocities(args.velocities)
    if args.parent_demo_episodes == 0 or not args.parent_tasks:
        raise SystemExit("error: the MetaWorld parent needs --parent-demo-episodes > 0 and --parent-tasks")
    common.check_metaworld_tasks(args.parent_tasks)
    reserved = (common.EVAL_GOAL_SEED, *common.SELECT_GOAL_SEEDS, common.VALIDATION_GOAL_SEED)
    clash = [k for k, s in goal_seeds(args).items() if s in reserved]
    if clash:
        raise SystemExit(f"error: --seed {args.seed} would draw the {', '.join(clash)} goals with seed "
                         f"{', '.join(map(str, reserved))}: the evaluation, top-k selection and validation goals' "
                         "seeds; choose another --seed")
    if (top := max(goal_seeds(args).values())) >= 2**32:  # MetaWorld draws goals with numpy's global seed
        raise SystemExit(f"error: --seed {args.seed}: stage 0 draws goals with seeds up to --seed + {top - args.seed}, "
                         "which must stay below 2**32")
    return common.check_metaworld_tasks(args.tasks)


# ----------------------------------------------------------------------------------------------------
# Environments of both suites: Cheetah-Vel (common.CheetahVel) and MetaWorld (a goal drawn per reset)
# ----------------------------------------------------------------------------------------------------


def make_env(args: Args, task, seed: int):
    """A reset/step env for `task`. MetaWorld picks one of 50 goals (drawn with `seed`) at each reset,
    as gym.make("Meta-World/MT1", seed=...) does."""
    return common.CheetahVel(task, seed=seed) if args.suite == "cheetah-vel" else MetaWorldTraining(task, seed)


class MetaWorldTraining:
    obs_dim, act_dim, max_steps = common.MW_OBS, common.MW_ACT, common.MW_STEPS

    def __init__(self, task: str, seed: int):
        self.env, self.goals = common.make_metaworld(task), common.metaworld_goals(task, seed)
        self.rng = np.random.default_rng(seed)

    def reset(self):
        self.env.set_task(self.goals[self.rng.integers(len(self.goals))])
        obs, info = self.env.reset()
        return obs.astype(np.float32), info

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(np.clip(action, -1.0, 1.0))
        return obs.astype(np.float32), float(r), bool(term), bool(trunc), info


# ----------------------------------------------------------------------------------------------------
# SAC, as CleanRL's sac_continuous_action.py, for K experts trained side by side as one ensemble
# ----------------------------------------------------------------------------------------------------
# Twin critics with targets, a tanh-Gaussian actor (the generated policy, common.Actor), automatic entropy
# tuning, delayed actor updates. The experts of a run train in one process: every weight carries a leading
# member dimension (as CORL's VectorizedLinear), so one batched matmul serves all K members. Each member
# keeps its own environment, replay rows, random streams (numpy and torch) and entropy temperature; the
# members' losses are summed, so member k's gradient is its own loss's, and Adam works element by element.
# A 1-member ensemble is a single CleanRL-style expert (tests/test_stage0.py). Further speed-ups, each
# named where it is: stacked twin critics, numpy acting, a preallocated replay tensor, fused Adam and one
# foreach target update.

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class EnsembleLinear(nn.Module):
    """K independent nn.Linear(i, o) layers in one batched matmul: weight [K, o, i], bias [K, o]."""

    def __init__(self, members: int, i: int, o: int):
        super().__init__()
        bound = 1.0 / math.sqrt(i)  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(members, o, i).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, o).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[K, B, i] -> [K, B, o]."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class EnsembleActor(nn.Module):
    """K actors of common.Actor's shape; member k's slice of the state dict is a common.Actor state dict."""

    def __init__(self, members: int, obs_dim: int, act_dim: int, hidden: int = common.HIDDEN):
        super().__init__()
        self.fc1, self.fc2 = EnsembleLinear(members, obs_dim, hidden), EnsembleLinear(members, hidden, hidden)
        self.fc_mean, self.fc_logstd = EnsembleLinear(members, hidden, act_dim), EnsembleLinear(members, hidden, act_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[K, B, obs] -> mean, log_std [K, B, act] (common.Actor's layers: ELU, then ReLU)."""
        h = F.relu(self.fc2(F.elu(self.fc1(x))))
        return self.fc_mean(h), self.fc_logstd(h)

    def flat(self, k: int) -> torch.Tensor:
        """Member k as one flat policy in common.param_shapes' layout (what a checkpoint saves)."""
        return torch.cat([p[k].detach().reshape(-1) for p in self.parameters()]).float()


class TwinQ(nn.Module):
    """Both SAC critics of each of K members in one network, weights [K, 2, in, out] (speed-up: one
    batched matmul per layer for all 2K critics)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, members: int = 1):
        super().__init__()

        def linear(i, o):  # nn.Linear's default init, for the stacked layers
            bound = 1.0 / math.sqrt(i)
            return (nn.Parameter(torch.empty(members, 2, i, o).uniform_(-bound, bound)),
                    nn.Parameter(torch.empty(members, 2, 1, o).uniform_(-bound, bound)))

        self.w1, self.b1 = linear(obs_dim + act_dim, hidden)
        self.w2, self.b2 = linear(hidden, hidden)
        self.w3, self.b3 = linear(hidden, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """[K, B, obs], [K, B, act] -> Q values [K, 2, B]."""
        k, b = obs.shape[:2]
        x = torch.cat([obs, act], -1).unsqueeze(1).expand(-1, 2, -1, -1).reshape(2 * k, b, -1)
        h = F.relu(torch.baddbmm(self.b1.flatten(0, 1), x, self.w1.flatten(0, 1)))
        h = F.relu(torch.baddbmm(self.b2.flatten(0, 1), h, self.w2.flatten(0, 1)))
        return torch.baddbmm(self.b3.flatten(0, 1), h, self.w3.flatten(0, 1)).view(k, 2, b)


def sample_action(actor: EnsembleActor, obs: torch.Tensor, gens: list):
    """Reparameterised tanh-Gaussian sample and its log-probability (CleanRL's SAC actor), member k's noise
    from its own generator gens[k]: obs [K, B, obs] -> action [K, B, act], log-prob [K, B], mean."""
    mean, log_std = actor(obs)
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
    eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
    y = torch.tanh(mean + log_std.exp() * eps)
    log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
                - torch.log(1 - y.pow(2) + 1e-6)).sum(-1)
    return y, log_prob, mean


class NumpyActor:
    """Speed-up for acting: the actors' forward in numpy on views that share memory with the torch
    parameters (the optimizer updates them in place), with no torch call per environment step."""

    def __init__(self, actor: EnsembleActor):
        self.w = [p.detach().numpy() for p in actor.parameters()]

    def __call__(self, obs: np.ndarray):
        """One observation per member, [K, obs] -> mean, log_std [K, act]."""
        w1, b1, w2, b2, wm, bm, ws, bs = self.w
        h = (w1 @ obs[:, :, None])[..., 0] + b1
        h = np.where(h > 0, h, np.expm1(np.minimum(h, 0)))  # ELU
        h = np.maximum((w2 @ h[:, :, None])[..., 0] + b2, 0)
        return (wm @ h[:, :, None])[..., 0] + bm, (ws @ h[:, :, None])[..., 0] + bs

    def sample(self, obs: np.ndarray, rngs: list) -> np.ndarray:
        """[K, obs] -> actions [K, act]; member k's noise from rngs[k]."""
        mean, log_std = self(obs)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (np.tanh(log_std) + 1)
        noise = np.stack([rng.standard_normal(mean.shape[1]).astype(np.float32) for rng in rngs])
        return np.tanh(mean + np.exp(log_std) * noise)


class Replay:
    """The K members' replay buffers, one preallocated float32 tensor [K, capacity, obs + act + 1 + 1 + obs]
    (speed-up: a step's K transitions are one write through a numpy view, a batch one gather). Member k
    samples its own rows only, with its own generator."""

    def __init__(self, members: int, capacity: int, obs_dim: int, act_dim: int):
        self.o, self.a = obs_dim, act_dim
        self.data = torch.zeros(members, capacity, 2 * obs_dim + act_dim + 2)
        self.np = self.data.numpy()
        self.size = self.pos = 0

    def add(self, obs, act, rew, term, next_obs):
        """One transition per member: [K, obs], [K, act], [K], [K], [K, obs]."""
        o, a = self.o, self.a
        row = self.np[:, self.pos]
        row[:, :o], row[:, o : o + a], row[:, o + a], row[:, o + a + 1], row[:, o + a + 2 :] = \
            obs, act, rew, term, next_obs
        self.pos = (self.pos + 1) % self.data.shape[1]
        self.size = min(self.size + 1, self.data.shape[1])

    def sample(self, n: int, gens: list) -> torch.Tensor:
        """n rows of each member's own buffer, drawn with its generator: [K, n, row]."""
        idx = torch.stack([torch.randint(self.size, (n,), generator=g) for g in gens])
        rows = idx + torch.arange(len(gens))[:, None] * self.data.shape[1]  # speed-up: one index_select
        return self.data.view(-1, self.data.shape[2]).index_select(0, rows.view(-1)).view(len(gens), n, -1)

    def split(self, batch: torch.Tensor):
        o, a = self.o, self.a
        return (batch[..., :o], batch[..., o : o + a], batch[..., o + a], batch[..., o + a + 1],
                batch[..., o + a + 2 :])


def new_agent(args: Args, obs_dim: int, act_dim: int, init_seeds: list[int]) -> dict:
    """Actors, twin critics, their targets, log alpha [K, 1] and the optimizers of K = len(init_seeds)
    members; member k starts as a single expert seeded init_seeds[k] would (speed-up: fused Adam)."""
    members = []
    for s in init_seeds:
        torch.manual_seed(s)
        members.append({"actor": common.Actor(obs_dim, act_dim).state_dict(),
                        "qf": member_of(TwinQ(obs_dim, act_dim, args.critic_hidden).state_dict(), 0)})
    k = len(init_seeds)
    actor, qf = EnsembleActor(k, obs_dim, act_dim), TwinQ(obs_dim, act_dim, args.critic_hidden, k)
    qf_target = TwinQ(obs_dim, act_dim, args.critic_hidden, k)
    actor.load_state_dict(stack_members([m["actor"] for m in members]))
    qf.load_state_dict(stack_members([m["qf"] for m in members]))
    qf_target.load_state_dict(qf.state_dict())
    log_alpha = torch.full((k, 1), math.log(args.alpha), requires_grad=True)
    return {"actor": actor, "qf": qf, "qf_target": qf_target, "log_alpha": log_alpha,
            "actor_opt": torch.optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True),
            "q_opt": torch.optim.Adam(qf.parameters(), lr=args.q_lr, fused=True),
            "alpha_opt": torch.optim.Adam([log_alpha], lr=args.q_lr), "target_entropy": -float(act_dim)}


def sac_update(agent: dict, args: Args, batch: tuple, step: int, alpha: torch.Tensor, gens: list,
               n_demo: int = 0) -> dict:
    """One SAC update of every member: the body of CleanRL's loop with a leading member dimension. `batch` =
    (obs, act, rew, term, next_obs), each [K, B, ...]; `alpha` [K, 1]; member k's noise from gens[k]; the
    first `n_demo` rows of each member's batch are demonstrations for the behaviour-cloning term (MetaWorld
    quick). Returns each member's losses, [K]."""
    actor, qf, qf_target, log_alpha = agent["actor"], agent["qf"], agent["qf_target"], agent["log_alpha"]
    obs, act, rew, term, next_obs = batch
    with torch.no_grad():  # soft Bellman target with the smaller target critic
        next_a, next_logp, _ = sample_action(actor, next_obs, gens)
        q_next = qf_target(next_obs, next_a).min(1).values - alpha * next_logp
        q_target = rew + args.gamma * (1 - term) * q_next
    q_loss = (qf(obs, act) - q_target.unsqueeze(1)).pow(2).mean(2).sum(1)  # MSE of both critics, summed
    agent["q_opt"].zero_grad(set_to_none=True)
    q_loss.sum().backward()  # summed over members: each member's gradient is its own loss's
    agent["q_opt"].step()

    out = {"q_loss": q_loss.detach()}
    if step % args.policy_frequency == 0:  # delayed actor updates, policy_frequency of them at once
        qf.requires_grad_(False)  # speed-up: the actor's backward needs no critic weight gradients
        for _ in range(args.policy_frequency):
            a, logp, mean = sample_action(actor, obs, gens)
            q = qf(obs, a).min(1).values
            actor_loss = (alpha * logp - q).mean(1)
            if n_demo:  # BC on the demonstrations, scaled by the batch's mean |Q| as in TD3+BC
                w = args.bc_weight * q.abs().mean(1).detach()
                actor_loss = actor_loss + w * (torch.tanh(mean[:, :n_demo]) - act[:, :n_demo]).pow(2).mean((1, 2))
            agent["actor_opt"].zero_grad(set_to_none=True)
            actor_loss.sum().backward()
            agent["actor_opt"].step()
            # entropy tuning, on log alpha with the actor step's own sample (CleanRL: alpha, a fresh sample)
            alpha_loss = -(log_alpha * (logp.detach() + agent["target_entropy"])).mean(1)
            agent["alpha_opt"].zero_grad(set_to_none=True)
            alpha_loss.sum().backward()
            agent["alpha_opt"].step()
            alpha = log_alpha.detach().exp()  # the next actor update uses the new temperature (as CleanRL)
        qf.requires_grad_(True)
        out["actor_loss"] = actor_loss.detach()
    with torch.no_grad():  # Polyak averaging of the target critics (speed-up: one foreach call)
        torch._foreach_lerp_(list(qf_target.parameters()), list(qf.parameters()), args.tau)
    return out


RECORD_KEYS = ("params", "step", "return", "success", "first_success", "traj", "post_success")


def run_sac(args: Args, agent: dict, tasks: list, seeds: list[int], total_steps: int, checkpoints: list[int],
            from_parent: bool, tags: list[str], state_path: Path, made_from: dict,
            demos: list | None = None, report=None, writers: list | None = None) -> list[dict]:
    """SAC for `total_steps`, member k on tasks[k], the members in lockstep. Member k's training environment,
    numpy and torch streams are seeded seeds[k] and its checkpoint-episode environment seeds[k] + 1, as a
    single expert's would be. At each step in `checkpoints` every actor is saved and one deterministic episode
    recorded. Every `args.save_every` seconds, between two episodes, and once more at the end, the whole state
    goes to `state_path` (`save_state`); a re-run resumes from it to the same result. Returns each member's
    records (and `resumed_at`, the steps it was resumed at)."""
    actor, k_members = agent["actor"], len(tasks)
    spec = common.policy_spec(actor.fc1.weight.shape[2], actor.fc_mean.weight.shape[1])
    rb, demo_rb = Replay(k_members, total_steps, spec["obs_dim"], spec["act_dim"]), demo_replay(demos, spec)
    envs = [make_env(args, t, seed=s) for t, s in zip(tasks, seeds)]
    eval_envs = [make_env(args, t, seed=s + 1) for t, s in zip(tasks, seeds)]
    rngs, gens = [np.random.default_rng(s) for s in seeds], [torch.Generator().manual_seed(s) for s in seeds]
    records = [{k: [] for k in RECORD_KEYS} | {"resumed_at": []} for _ in tasks]
    start = resume_state(state_path, args, made_from, agent, rb, rngs, gens, envs, eval_envs, records, tags)
    np_actor, alpha = NumpyActor(actor), agent["log_alpha"].detach().exp()
    ckpt_set, next_save, last_report, t_start = set(checkpoints), time.time() + args.save_every, start, time.time()
    obs, ep_ret = [None] * k_members, [0.0] * k_members  # None: no episode running, the next step starts one
    for step in range(start, total_steps):
        for k in range(k_members):
            if obs[k] is None:
                (obs[k], _), ep_ret[k] = envs[k].reset(), 0.0
        if step < args.learning_starts and not from_parent:
            action = np.stack([rng.uniform(-1, 1, spec["act_dim"]).astype(np.float32) for rng in rngs])
        else:
            action = np_actor.sample(np.stack(obs), rngs)
        steps = [env.step(a) for env, a in zip(envs, action)]  # (next_obs, reward, term, trunc, info) each
        rb.add(np.stack(obs), action, [s[1] for s in steps], [float(s[2]) for s in steps], np.stack([s[0] for s in steps]))
        for k, (next_obs, reward, term, trunc, _) in enumerate(steps):
            obs[k], ep_ret[k] = next_obs, ep_ret[k] + reward
            if term or trunc:
                if writers:
                    writers[k].add_scalar("train/episode_return", ep_ret[k], step)
                obs[k] = None

        if step >= args.learning_starts:
            batch = rb.sample(args.batch_size if demo_rb is None else args.batch_size // 2, gens)
            n_demo = 0 if demo_rb is None else args.batch_size - batch.shape[1]
            if n_demo:  # half demonstrations, half online data
                batch = torch.cat([demo_rb.sample(n_demo, gens), batch], 1)
            losses = sac_update(agent, args, rb.split(batch), step, alpha, gens, n_demo)
            alpha = agent["log_alpha"].detach().exp()
            if writers and step % 1000 == 0:
                for k, w in enumerate(writers):
                    for name, v in losses.items():
                        w.add_scalar(f"losses/{name}", v[k].item(), step)
                    w.add_scalar("losses/alpha", alpha[k].item(), step)
                    w.add_scalar("charts/SPS", (step - start) / (time.time() - t_start + 1e-9), step)

        if step + 1 in ckpt_set:  # checkpoint: save the actors, record one deterministic episode each
            flat = torch.stack([actor.flat(k) for k in range(k_members)])
            r = common.run_lockstep(flat, eval_envs, spec, record=True)
            for k, rec in enumerate(records):
                rec["params"].append(flat[k].clone())  # clone: a view would save the whole stack
                rec["step"].append(step + 1)
                for key in ("return", "success", "first_success"):
                    rec[key].append(r[key][k].item())
                for key in ("traj", "post_success"):  # tensors: the resumable state must load with weights_only
                    rec[key].append(torch.from_numpy(r[key][k].copy()))
                if writers:
                    writers[k].add_scalar("checkpoint/return", rec["return"][-1], step + 1)
                    writers[k].add_scalar("checkpoint/success", rec["success"][-1], step + 1)
        if all(o is None for o in obs) and time.time() > next_save and step + 1 < total_steps:
            save_state(state_path, args, made_from, step + 1, agent, rb, rngs, gens, envs, eval_envs, records, tags)
            next_save = time.time() + args.save_every
        if report is not None and step + 1 - last_report >= 500:
            report(k_members * (step + 1 - last_report))
            last_report = step + 1
    if report is not None:
        report(k_members * (total_steps - last_report))
    if checkpoints and start < total_steps:  # the finished state: a kill while the shards are written resumes here
        save_state(state_path, args, made_from, total_steps, agent, rb, rngs, gens, envs, eval_envs, records, tags)
    return records


# ----------------------------------------------------------------------------------------------------
# MetaWorld only: scripted-expert demonstrations (cloned by train_parent; BC term: sac_update's n_demo)
# ----------------------------------------------------------------------------------------------------


def scripted_episodes(task: str, n: int, steps: int, noise: float, seed: int) -> list[tuple]:
    """`n` episodes of metaworld's scripted expert with Gaussian action noise, `steps` long each:
    a list of (obs [T+1, 39], act [T, 4], rew [T])."""
    from metaworld.policies import ENV_POLICY_MAP

    env, policy = MetaWorldTraining(task, seed), ENV_POLICY_MAP[task]()
    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        obs, _ = env.reset()
        O, A, R = [obs], [], []
        for _ in range(steps):
            a = np.clip(policy.get_action(obs) + noise * rng.standard_normal(4), -1, 1).astype(np.float32)
            obs, r, _, _, _ = env.step(a)
            O.append(obs), A.append(a), R.append(r)
        out.append((np.stack(O), np.stack(A), np.array(R, np.float32)))
    return out


def demo_replay(demos: list | None, spec: dict) -> Replay | None:
    """The demonstration buffers of the members (demos[k]: member k's episodes, as many steps for each
    member), or None without demonstrations."""
    if not demos:
        return None
    rb = Replay(len(demos), sum(len(A) for _, A, _ in demos[0]), spec["obs_dim"], spec["act_dim"])
    for episodes in zip(*demos):  # the i-th episode of every member
        for t in range(len(episodes[0][1])):
            rb.add(*(np.stack([e[j][t] for e in episodes]) for j in (0, 1, 2)), np.zeros(len(demos)),
                   np.stack([e[0][t + 1] for e in episodes]))
    return rb


# ----------------------------------------------------------------------------------------------------
# Resume: the whole training state between two episodes, saved and restored, one file per ensemble
# ----------------------------------------------------------------------------------------------------

PARTIAL_FORMAT = "amt-hyp/stage0-partial v5"  # artifacts.save_partial's layout, made_from: the parent
NETS, OPTIMIZERS = ("actor", "qf", "qf_target"), ("actor_opt", "q_opt", "alpha_opt")


def member_of(state, k: int):
    """Member k's slice of an ensemble's state (networks, log alpha, optimizer states): every tensor with a
    dimension is indexed on its leading, member dimension; 0-dim tensors (Adam's step count) are shared."""
    if isinstance(state, dict):
        return {key: member_of(v, k) for key, v in state.items()}
    return state[k].clone() if isinstance(state, torch.Tensor) and state.dim() > 0 else state


def stack_members(members: list):
    """The inverse of `member_of`: the members' slices stacked into one ensemble state."""
    if isinstance(members[0], dict):
        return {key: stack_members([m[key] for m in members]) for key in members[0]}
    return torch.stack(members) if isinstance(members[0], torch.Tensor) and members[0].dim() > 0 else members[0]


def agent_state(agent: dict, optimizers: bool = False) -> dict:
    """The networks and log alpha (and with `optimizers`, their states): a parent's is what a child starts from."""
    return ({k: agent[k].state_dict() for k in NETS + (OPTIMIZERS if optimizers else ())}
            | {"log_alpha": agent["log_alpha"].detach().clone()})


def load_agent_state(agent: dict, state: dict) -> None:
    for k in NETS + OPTIMIZERS:
        if k in state:
            agent[k].load_state_dict(state[k])
    with torch.no_grad():
        agent["log_alpha"].copy_(state["log_alpha"])


def env_rng_state(env) -> dict:
    """The random state that decides an env's next reset (saved with the resumable state): gymnasium's
    generator, and the goal draw (MetaWorld) or the seed of the first reset (Cheetah-Vel)."""
    extra = {"goal_rng": env.rng.bit_generator.state} if isinstance(env, MetaWorldTraining) else {"seed": env.seed}
    return {"np_random": env.env.np_random.bit_generator.state, **extra}


def set_env_rng_state(env, state: dict) -> None:
    env.env.np_random = np.random.Generator(np.random.PCG64())
    env.env.np_random.bit_generator.state = state["np_random"]
    if "goal_rng" in state:
        env.rng.bit_generator.state = state["goal_rng"]
    else:
        env.seed = state["seed"]


def partial_path(stage_dir: Path, names: list[str]) -> Path:
    """Where an ensemble's resumable state goes: `<task>.partial.pt` for one member, `<first task>+<K - 1>.partial.pt`
    for K; the file lists its members, which decide (the name is for reading)."""
    return stage_dir / (f"{names[0]}.partial.pt" if len(names) == 1 else f"{names[0]}+{len(names) - 1}.partial.pt")


def save_state(path: Path, args: Args, made_from: dict, step: int, agent: dict, rb: Replay, rngs, gens, envs,
               eval_envs, records: list[dict], members: list[str]) -> None:
    """Everything the rest of the run depends on, taken between two episodes (so no episode is cut), in one file
    written atomically: the members' names, the networks with their optimizer states, log alpha, the replay
    rows, each member's numpy and torch random states and its environments', the records so far. One file for
    the whole ensemble: a member's numbers depend (within float rounding) on the ensemble it trains in, so it
    resumes in the same one."""
    extra = {"members": members, "agent": agent_state(agent, optimizers=True), "replay": rb.data[:, : rb.size].clone(),
             "np_rng": [r.bit_generator.state for r in rngs], "torch_gen": [g.get_state() for g in gens],
             "env_rng": [env_rng_state(e) for e in envs], "eval_env_rng": [env_rng_state(e) for e in eval_envs]}
    artifacts.save_partial(path, PARTIAL_FORMAT, step, shard_settings(args), made_from, {}, {"members": records}, extra)


def resume_state(path: Path, args: Args, made_from: dict, agent: dict, rb: Replay, rngs, gens, envs, eval_envs,
                 records: list[dict], members: list[str]) -> int:
    """Restore what `save_state` wrote (in place) and return the step to go on from (0: nothing to resume)."""
    extra = {}
    step, saved = artifacts.resume_partial(path, PARTIAL_FORMAT, shard_settings(args), made_from, {},
                                           "+".join(members), extra)
    if saved is None:
        return 0
    if extra["members"] != members:
        raise SystemExit(f"error: {path}: the resumable state of {', '.join(extra['members'])}, not of "
                         f"{', '.join(members)} (delete it to start those tasks afresh)")
    load_agent_state(agent, extra["agent"])
    rb.data[:, : extra["replay"].shape[1]] = extra["replay"]
    rb.size = rb.pos = extra["replay"].shape[1]
    for k, rec in enumerate(records):
        rec.update(saved["members"][k])
        rec["resumed_at"].append(step)
        rngs[k].bit_generator.state = extra["np_rng"][k]
        gens[k].set_state(extra["torch_gen"][k])
        set_env_rng_state(envs[k], extra["env_rng"][k])
        set_env_rng_state(eval_envs[k], extra["eval_env_rng"][k])
    print(f"{'+'.join(members)}: {len(records[0]['step'])} checkpoints saved before step {step}")
    return step


# ----------------------------------------------------------------------------------------------------
# The parent (upright, or tried again), and the children: one ensemble of experts per worker
# ----------------------------------------------------------------------------------------------------

PARENT_TRIES = 5  # Cheetah-Vel: a parent ending upside down is trained again from seed + 1000 k, k < 5


def expert_seed(args: Args, task) -> int:
    """An independent expert's own seed (init, noise, environments): the run's seed + 10,000 x (its index in
    the grid of the 40 Cheetah-Vel velocities, or in common.MW_TASKS, + 1), so no two experts or oracles of a
    run share one."""
    if args.suite == "cheetah-vel":
        return args.seed + 10_000 * (1 + common.CHEETAH_GRID.index(round(float(task), 3)))
    return args.seed + 10_000 * (1 + common.MW_TASKS.index(task))


def bc_warm_start(args: Args, agent: dict, demos: list, seeds: list[int]) -> float:
    """MetaWorld independent experts: what the pooled parent gives the children, each member from its own
    demonstrations only: `parent_bc_steps` of behaviour cloning (MSE between tanh(mean) and the scripted
    actions), each member its own batches. Returns the last step's mean MSE over members."""
    obs = [torch.as_tensor(np.concatenate([O[:-1] for O, _, _ in eps])) for eps in demos]
    act = [torch.as_tensor(np.concatenate([A for _, A, _ in eps])) for eps in demos]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    opt, loss = torch.optim.Adam(agent["actor"].parameters(), lr=1e-3), torch.tensor(float("nan"))
    for _ in range(args.parent_bc_steps):
        idx = [torch.randint(len(o), (args.batch_size,), generator=g) for o, g in zip(obs, gens)]
        mean = agent["actor"](torch.stack([o[i] for o, i in zip(obs, idx)]))[0]
        loss = F.mse_loss(torch.tanh(mean), torch.stack([a[i] for a, i in zip(act, idx)]), reduction="none")
        loss = loss.mean((1, 2))  # per member; their sum gives each member its own gradient
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return float(loss.mean())


def parent_velocity(velocities: list[float]) -> float:
    """The training velocity nearest the middle of their range (the lower one on a tie)."""
    mid = (min(velocities) + max(velocities)) / 2
    return min(velocities, key=lambda v: (round(abs(v - mid), 9), v))


def deterministic_episode(params: torch.Tensor, velocities: list[float], spec: dict) -> list[tuple[float, bool]]:
    """(return, upright at the end) of one deterministic Cheetah-Vel episode of each flat policy at its velocity."""
    envs = [common.make_eval_env("cheetah-vel", v) for v in velocities]
    ret = common.run_lockstep(params, envs, spec)["return"]
    return [(float(r), not e.upside_down()) for r, e in zip(ret, envs)]


def parent_member(parent: dict) -> dict:
    """The parent's agent state as one ensemble member's (log alpha [1]; parents of older code kept a scalar)."""
    return parent["agent"] | {"log_alpha": parent["agent"]["log_alpha"].reshape(1)}


def train_parent(args: Args, tasks: list, spec: dict, path: Path) -> dict:
    """Train the parent and save its whole SAC state, or load it if `path` holds one of these settings.
    Cheetah-Vel: the parent is kept only if its deterministic episode at v* ends upright; otherwise it is
    trained again from seed + 1000 k (k = 1..4), each try logged. The rule reads the parent alone, before any
    child exists (DESIGN.md section 4). A re-run after a kill during a later try goes through the earlier ones
    again (each resumed from its last saved state) to the same tries."""
    if path.exists():
        parent = artifacts.load_artifact(path, artifacts.PARENT_FORMAT, ("agent", "params", "settings"), spec=spec,
                                         suite=args.suite, scale=args.scale)
        artifacts.check_settings(path, parent["settings"], shard_settings(args))
        print(f"parent: using {path} ({parent['task']})")
        return parent
    t0, resumed_at, tries = time.time(), [], []
    agent = new_agent(args, spec["obs_dim"], spec["act_dim"], [args.seed])
    if args.suite == "cheetah-vel":
        task = parent_velocity(tasks)
        for k in range(PARENT_TRIES if args.parent_steps > 0 else 0):
            seed = args.seed + 1000 * k
            agent = new_agent(args, spec["obs_dim"], spec["act_dim"], [seed])
            print(f"parent: SAC for {args.parent_steps} steps at v* = {task}, try {k + 1} (seed {seed})")
            partial = path.with_suffix(".partial.pt" if k == 0 else f".try{k + 1}.partial.pt")
            resumed_at = run_sac(args, agent, [task], [seed], total_steps=args.parent_steps, checkpoints=[],
                                 from_parent=False, tags=["parent"], state_path=partial, made_from={})[0]["resumed_at"]
            ret, upright = deterministic_episode(agent["actor"].flat(0)[None], [task], spec)[0]
            tries.append({"seed": seed, "return": ret, "upright": upright})
            print(f"parent try {k + 1} (seed {seed}): deterministic return {ret:.1f} at v* = {task}, "
                  + ("upright at the end" if upright else "UPSIDE DOWN at the end"))
            if upright:
                break
        if tries and not tries[-1]["upright"]:
            print(f"parent: no upright parent in {PARENT_TRIES} tries; keeping the last (every expert inherits its gait)")
        name = common.task_name(args.suite, task)
    else:  # behaviour cloning: MSE between tanh(mean) and noisy scripted actions, pooled over tasks
        obs, act = [], []
        for t in args.parent_tasks:
            for O, A, _ in scripted_episodes(t, args.parent_demo_episodes, args.demo_steps, args.demo_noise,
                                             seed=goal_seeds(args)[f"parent demonstrations of {t}"]):
                obs.append(O[:-1]), act.append(A)
        obs, act = torch.as_tensor(np.concatenate(obs)), torch.as_tensor(np.concatenate(act))
        opt, gen = torch.optim.Adam(agent["actor"].parameters(), lr=1e-3), torch.Generator().manual_seed(args.seed)
        for _ in range(args.parent_bc_steps):
            idx = torch.randint(len(obs), (args.batch_size,), generator=gen)
            loss = F.mse_loss(torch.tanh(agent["actor"](obs[idx][None])[0][0]), act[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"parent: behaviour cloning of {len(obs)} scripted samples of {len(args.parent_tasks)} tasks, "
              f"final MSE {loss.item() if args.parent_bc_steps else float('nan'):.4f}")
        name = "bc:" + ",".join(args.parent_tasks)
    parent = {"format": artifacts.PARENT_FORMAT, "suite": args.suite, "task": name, "policy": spec,
              "params": agent["actor"].flat(0), "agent": member_of(agent_state(agent), 0), "tries": tries,
              "trained_with_sac": args.suite == "cheetah-vel" and args.parent_steps > 0, "resumed_at": resumed_at,
              "settings": shard_settings(args), "config": asdict(args), "seconds": time.time() - t0}
    artifacts.save_artifact(parent, path)
    for partial in path.parent.glob(f"{path.stem}*.partial.pt"):
        partial.unlink()
    print(f"parent: saved {path} in {parent['seconds']:.0f}s")
    return parent


def made_from_parent(parent: dict | None) -> dict:
    """What every expert is made from: the parent (one-parent regime), nothing (independent experts)."""
    return {"parent.pt": parent["uid"]} if parent is not None else {}


def check_shard(args: Args, path: Path, parent: dict | None) -> dict:
    """A finished shard must pass every shard check, be of these settings and a child of this parent."""
    try:
        shard = artifacts.load_shard(path, args.suite, args.scale)
    except SystemExit as e:
        raise SystemExit(f"{e} (delete it to retrain that task)") from None
    artifacts.check_settings(path, shard["settings"], shard_settings(args))
    if shard["made_from"] != made_from_parent(parent):
        raise SystemExit(f"error: {path}: fine-tuned from another parent than {path.parent.parent / 'parent.pt'} "
                         "(delete it to retrain that task, or use another --run-dir)")
    return shard


def train_experts(args: Args, tasks: list, parent: dict | None, spec: dict, stage_dir: Path, report=None) -> list[str]:
    """Fine-tune one expert per task from the parent (None: independent experts, each from its own
    initialisation), all of them as one ensemble, and write each one's shard.
    Returns a one-line summary per task."""
    torch.set_num_threads(args.torch_threads)
    names = [common.task_name(args.suite, t) for t in tasks]
    with contextlib.ExitStack() as locks:  # one process per task
        for name in names:
            locks.enter_context(artifacts.lock_run_dir(stage_dir, f"stage 0 ({name})", name=f".{name}.lock"))
        lines = []
        if not partial_path(stage_dir, names).exists():  # a fresh ensemble: tasks finished meanwhile are left out
            done = [n for n in names if (stage_dir / f"{n}.pt").exists()]
            for n in done:
                check_shard(args, stage_dir / f"{n}.pt", parent)
                lines.append(f"{n}: finished by another process")
            tasks, names = [t for t, n in zip(tasks, names) if n not in done], [n for n in names if n not in done]
            if not tasks:
                return lines
        t0 = time.time()
        if parent is not None:  # every expert's streams seeded as a single expert's were; weights from the parent
            seeds = [args.seed] * len(tasks)
            agent = new_agent(args, spec["obs_dim"], spec["act_dim"], seeds)
            load_agent_state(agent, stack_members([parent_member(parent)] * len(tasks)))
        else:  # independent experts: each its own initialisation and streams
            seeds = [expert_seed(args, t) for t in tasks]
            agent = new_agent(args, spec["obs_dim"], spec["act_dim"], seeds)
        demos = None
        if args.suite == "metaworld" and args.demo_episodes > 0:
            demos = [scripted_episodes(t, args.demo_episodes, args.demo_steps, args.demo_noise,
                                       seed=goal_seeds(args)["demonstrations"]) for t in tasks]
        if parent is None and demos:  # independent MetaWorld experts: their own demonstrations instead of a parent
            mse = bc_warm_start(args, agent, demos, seeds)
            print(f"stage 0: behaviour cloning of {len(tasks)} independent experts on their own demonstrations, "
                  f"{args.parent_bc_steps} steps, final MSE {mse:.4f}")
        start = args.parent_steps if parent is None and args.suite == "cheetah-vel" else 0  # the parent's SAC steps first
        checkpoints = [start + args.first_checkpoint + i * args.checkpoint_every for i in range(args.num_checkpoints)]
        from torch.utils.tensorboard import SummaryWriter

        writers = [SummaryWriter(str(Path(args.run_dir) / "tb" / "stage0" / name)) for name in names]
        made_from = made_from_parent(parent)
        from_parent = args.suite == "metaworld" or (parent is not None and parent["trained_with_sac"])  # act from step 0
        recs = run_sac(args, agent, tasks, seeds, total_steps=checkpoints[-1], checkpoints=checkpoints,
                       from_parent=from_parent, tags=names,
                       state_path=partial_path(stage_dir, names), made_from=made_from,
                       demos=demos, report=report, writers=writers)
        for w in writers:
            w.close()
        seconds = time.time() - t0  # the ensemble's wall time, in each member's shard
        for t, name, rec in zip(tasks, names, recs):
            if (stage_dir / f"{name}.pt").exists():  # written before a kill; the ensemble resumed at its end
                lines.append(f"{name}: written before the re-run")
                continue
            shard = {"format": artifacts.STAGE0_FORMAT, "suite": args.suite, "task": name, "policy": spec,
                     "params": torch.stack(rec["params"]), "step": torch.tensor(rec["step"], dtype=torch.int64),
                     "return": torch.tensor(rec["return"], dtype=torch.float32),
                     "success": torch.tensor(rec["success"], dtype=torch.float32),
                     "first_success": torch.tensor(rec["first_success"], dtype=torch.int64),
                     "traj": torch.stack(rec["traj"]), "post_success": torch.stack(rec["post_success"]),
                     "resumed_at": rec["resumed_at"], "settings": shard_settings(args), "made_from": made_from,
                     "ensemble": names, "config": asdict(args), "seconds": seconds}
            if args.suite == "cheetah-vel":
                shard["target_velocity"] = float(t)
            artifacts.save_artifact(shard, stage_dir / f"{name}.pt")
            best = int(shard["return"].argmax())
            line = (f"{name}: {len(rec['step'])} checkpoints in {seconds:.0f}s (ensemble of {len(tasks)}); best "
                    f"return {shard['return'][best]:.1f} at step {int(shard['step'][best])}")
            if rec["resumed_at"]:
                line += f"; resumed at step {', '.join(map(str, rec['resumed_at']))}"
            if args.suite == "metaworld":
                line += f"; success rate of the last 20 checkpoints {100 * shard['success'][-20:].mean():.0f}%"
            lines.append(line)
        partial_path(stage_dir, names).unlink(missing_ok=True)
    return lines


# ----------------------------------------------------------------------------------------------------
# Summary (parent tries, shard table, experts ending upside down) and the queue workers report steps on
# ----------------------------------------------------------------------------------------------------


def parent_report(parent: dict, spec: dict) -> str:
    """The Cheetah-Vel parent's tries and the kept parent's deterministic episode at its velocity: a gait
    that ends upside down is inherited by every expert fine-tuned from it."""
    v = float(parent["task"].removeprefix("vel-"))
    ret, upright = deterministic_episode(parent["params"][None], [v], spec)[0]
    lines = [f"parent try {i + 1} (seed {t['seed']}): deterministic return {t['return']:.1f}, "
             + ("upright" if t["upright"] else "upside down") + " at the end" for i, t in enumerate(parent.get("tries", []))]
    lines.append(f"parent at v* = {v:g}: deterministic return {ret:.1f}, " + (
        "upright at the end" if upright else "UPSIDE DOWN at the end (running on its back; every expert of this "
        "run descends from it)"))
    return "\n\n".join(lines)


def summarize(args: Args, shards: dict, spec: dict) -> str:
    """A markdown table of the shards ({task: shard}). Cheetah-Vel: the best checkpoint per velocity and
    whether the last checkpoint's deterministic episode ends upright; MetaWorld: success of all and of the
    last 20 checkpoints. (How well neighbouring experts mix: benchmarks/stage0_midpoints.py.)"""
    if args.suite == "metaworld":
        rows = ["| task | checkpoints | steps | success, all checkpoints | success, last 20 | first success at step |",
                "|---|---|---|---|---|---|"]
        for t, s in shards.items():
            hit = s["step"][s["success"] > 0]
            rows.append(f"| {t} | {len(s['step'])} | {int(s['step'][0])}-{int(s['step'][-1])} | "
                        f"{100 * s['success'].mean():.0f}% | {100 * s['success'][-20:].mean():.0f}% | "
                        f"{int(hit[0]) if len(hit) else '-'} |")
        return "\n".join(rows)
    velocities = sorted(shards)
    last = deterministic_episode(torch.stack([shards[v]["params"][-1] for v in velocities]), velocities, spec)
    rows = ["| v* | best checkpoint return | at step | last checkpoint: return, end |", "|---|---|---|---|"]
    for v, (ret, upright) in zip(velocities, last):
        s = shards[v]
        rows.append(f"| {v:g} | {float(s['return'].max()):.1f} | {int(s['step'][s['return'].argmax()])} | "
                    f"{ret:.1f}, {'upright' if upright else 'UPSIDE DOWN'} |")
    down = sum(not u for _, u in last)
    return "\n".join(rows) + f"\n\nexperts whose last checkpoint ends upside down: {down} of {len(last)}"


_report_queue = None


def _set_report_queue(q) -> None:
    global _report_queue
    _report_queue = q


def _worker(args, tasks, parent, spec, stage_dir):
    return train_experts(args, tasks, parent, spec, stage_dir, report=_report_queue.put)


# ----------------------------------------------------------------------------------------------------
# Main: the parent, then the children as ensembles, one per worker process
# ----------------------------------------------------------------------------------------------------


def resumable_ensembles(args: Args, stage_dir: Path, tasks: list, parent: dict) -> list[list]:
    """The ensembles with a resumable state in `stage_dir` whose members are all tasks of this run (each is
    resumed whole, as it was saved); states of finished ensembles are deleted, other processes' left alone."""
    by_name, out = {common.task_name(args.suite, t): t for t in tasks}, []
    for p in sorted(stage_dir.glob("*.partial.pt")):
        st = artifacts.check_partial(p, PARTIAL_FORMAT, shard_settings(args), made_from_parent(parent))
        if not (members := st.get("extra", {}).get("members")):
            raise SystemExit(f"error: {p}: lists no ensemble members (delete it to start its tasks afresh)")
        if not set(members) <= set(by_name):
            if set(members) & set(by_name):
                raise SystemExit(f"error: {p}: the resumable state of an ensemble of {', '.join(members)}; run those "
                                 "tasks together to resume it, or delete it to start them afresh")
            continue  # another process's (a job array's other tasks)
        if all((stage_dir / f"{n}.pt").exists() for n in members):
            p.unlink()  # finished: the kill came after the shards, before this state was deleted
            continue
        out.append([by_name[n] for n in members])
    return out


def split(tasks: list, parts: int) -> list[list]:
    """`tasks` in `parts` near-equal consecutive ensembles (fewer when there are fewer tasks)."""
    return [list(p) for p in np.array_split(np.array(tasks, dtype=object), min(parts, len(tasks)))] if tasks else []


def main(args: Args) -> None:
    tasks = validate(args)
    spec = common.suite_spec(args.suite)
    jobs = args.jobs or os.cpu_count() or 1
    torch.set_num_threads(args.torch_threads)
    # shared: other stage-0 processes (a job array's tasks) may work here too, each task under its own lock;
    # stages 1-3 and the evaluation, which take the lock exclusively, are kept out
    run = artifacts.prepare_run_dir(args.run_dir)
    lock = artifacts.lock_run_dir(run, "stage 0", shared=True)  # noqa: F841 - held till exit
    stage_dir = artifacts.prepare_run_dir(run / args.shard_dir)
    t0 = time.time()
    if args.experts == "independent" or not (run / "parent.pt").exists():  # shards made otherwise (another scale,
        for p in sorted(stage_dir.glob("*.pt")):  # setting or regime) stop the run before any training
            if not p.name.endswith(".partial.pt"):
                try:
                    made = artifacts.load_artifact(p, artifacts.STAGE0_FORMAT, ("settings",))["settings"]
                except SystemExit as e:
                    raise SystemExit(f"{e} (delete it to retrain that task)") from None
                artifacts.check_settings(p, made, shard_settings(args))
    if args.experts == "independent":
        if (run / "parent.pt").exists():
            raise SystemExit(f"error: {run / 'parent.pt'}: this run directory is of experts from one parent; give "
                             "--experts independent its own --run-dir")
        parent = None
    elif (run / "parent.pt").exists():
        parent = train_parent(args, tasks, spec, run / "parent.pt")  # loads and checks it
    else:  # one process trains it; another one started meanwhile stops with one line
        with artifacts.lock_run_dir(run, "stage 0 (parent)", name=".parent.lock"):
            parent = train_parent(args, tasks, spec, run / "parent.pt")
    parent_line = parent_report(parent, spec) if parent is not None and parent["trained_with_sac"] else ""
    if parent_line:
        print(parent_line)
    if args.parent_only:
        return
    resumed = resumable_ensembles(args, stage_dir, tasks, parent)  # each goes on as the ensemble it was
    todo = []  # the other tasks to train; finished shards are checked before the work starts
    for t in tasks:
        path = stage_dir / f"{common.task_name(args.suite, t)}.pt"
        if path.exists():
            check_shard(args, path, parent)  # finished: it must belong to this run
        elif not any(t in e for e in resumed):
            todo.append(t)
    parts = resumed + split(todo, jobs)
    todo = [t for p in parts for t in p]
    steps_per_task = (args.first_checkpoint + (args.num_checkpoints - 1) * args.checkpoint_every
                      + (args.parent_steps if parent is None and args.suite == "cheetah-vel" else 0))
    print(f"stage 0: {len(tasks)} tasks ({len(tasks) - len(todo)} done already), {steps_per_task} SAC steps "
          f"and {args.num_checkpoints} checkpoints each, in {len(parts)} ensemble(s) of "
          f"{'/'.join(str(len(p)) for p in parts) or 0} on {min(jobs, max(len(parts), 1))} worker(s)")
    from tqdm import tqdm

    bar = tqdm(total=len(todo) * steps_per_task, unit="step", disable=not args.progress, smoothing=0.05)
    if jobs == 1 or len(parts) <= 1:
        for p in parts:
            for line in train_experts(args, p, parent, spec, stage_dir, report=bar.update):
                bar.write(line)
    else:
        import multiprocessing as mp

        q = mp.get_context("spawn").Queue()
        with artifacts.process_pool(min(jobs, len(parts)), _set_report_queue, (q,)) as pool:
            pending = {pool.submit(_worker, args, p, parent, spec, stage_dir) for p in parts}
            while pending:
                try:
                    bar.update(q.get(timeout=0.5))
                except queue.Empty:
                    pass
                for f in [f for f in pending if f.done()]:
                    pending.discard(f)
                    for line in f.result():  # a failed ensemble raises here: process_pool kills the others
                        bar.write(line)
        while not q.empty():
            bar.update(q.get())
    bar.close()
    print(f"stage 0 finished in {time.time() - t0:.0f}s; shards in {stage_dir}")
    shards = {}  # every finished shard of the directory (a job array's tasks each add theirs)
    for p in sorted(stage_dir.glob("*.pt")):
        if not p.name.endswith(".partial.pt"):
            s = check_shard(args, p, parent)
            shards[s.get("target_velocity", s["task"])] = s
    summary = (parent_line + "\n\n" if parent_line else "") + summarize(args, shards, spec)
    artifacts.write_atomic(run / f"{args.shard_dir}_summary.md", lambda p: p.write_text(summary + "\n"))
    print(summary)


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
