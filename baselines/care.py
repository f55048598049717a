"""CARE (Sodhani et al., ICML 2021), the multi-task row of the paper's Table II, trained here online on the seen
MetaWorld tasks with what stage 0's experts get (DESIGN.md section 16): the same environment steps per task,
the same scripted demonstrations and behaviour-cloning anchor, the same training goals.

Multi-task SAC whose observation encoder is a mixture of k encoders, combined by attention weights computed
from a task context; shared actor and critics, one entropy temperature per task:

    z_c   = f(c)                                  task encoder: MLP on the context c (2 x 50 -> 50)
    w     = softmax(g(z_c))                        attention over the k encoders (z_c not differentiated)
    z_s   = sum_j w_j E_j(s)                       k encoders, each an MLP (2 x 50 -> 50)
    x     = [z_s, z_c];   Q_1, Q_2 (x, a), pi(a | x): MLPs of 3 x `hidden`, tanh-Gaussian policy
    SAC: L_Q = E (Q_i(x, a) - r - gamma (min_i Q'_i(x', a') - alpha_task log pi(a' | x')))^2,
         L_pi = E alpha_task log pi(a | x) - min_i Q_i(x, a) + bc_weight mean|Q| ||tanh(mu) - a_demo||^2 (demos),
         L_alpha = -E log alpha_task (log pi(a | x) + target entropy)

The encoders (mixture, task encoder, attention) learn with the critic; the actor reads them without
changing them (the authors' tied encoders). Context: CARE encodes a written task description with a
pretrained language model, which cannot be downloaded here; c is instead the behaviour embedding h of a
stage-0 checkpoint's rollout, what HypLatent conditions on (each training episode of a task draws one of its
training rows' h; at evaluation the j-th CARE policy of a task reads the task's j-th conditioning embedding,
as HypLatent's j-th policy does). Unseen tasks: zero-shot with their conditions.

Settings of the authors' mtrl code (CARE on MT10): k = 4 encoders, encoder and context widths 50, actor and
critics 3 x 400, Adam 3e-4 for all, initial temperature 1, gamma 0.99, critic tau 0.005, encoder tau 0.05,
log-std bounds [-20, 2]. From stage 0's own settings (read from its shards): steps per task, batch per task
(half demonstrations), learning starts, the BC weight, and a warm start of `parent_bc_steps` of cloning on the
tasks' demonstrations (what the pooled parent gives the experts). Quick scale keeps the widths.

    python baselines/care.py --run-dir runs/metaworld-quick           # -> <run_dir>/care.pt
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project's modules

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import artifacts  # noqa: E402
import common  # noqa: E402
import training  # noqa: E402
from latents import load_inputs  # noqa: E402
from stage0_collect_sac import MetaWorldTraining, goal_seeds, scripted_episodes  # noqa: E402 - stage 0's data

FORMAT = "amt-hyp/care v1"


@dataclass
class Args:
    suite: Literal["metaworld"] = "metaworld"
    """task family (CARE runs on MetaWorld)"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/metaworld-quick"
    """reads stages 0-1 (shards, behaviour embeddings), writes care.pt"""
    seed: int = 1
    encoders: int = 4
    """k: encoders mixed by attention"""
    encoder_width: int = 50
    """width of each encoder, of the task encoder and of their outputs"""
    hidden: int = 400
    """width of the actor's and critics' 3 layers"""
    lr: float = 3e-4
    """Adam learning rate of critics, actor and temperatures"""
    init_temperature: float = 1.0
    tau: float = 0.005
    """Polyak rate of the target critics' heads"""
    encoder_tau: float = 0.05
    """Polyak rate of the target critics' encoders"""
    skip_done: bool = False
    """do nothing if care.pt was made with these settings from these artifacts by this code"""
    threads: int = 2
    progress: bool = True


SCALES = {"smoke": dict(hidden=32, encoder_width=16)}


# ----------------------------------------------------------------------------------------------------
# The networks
# ----------------------------------------------------------------------------------------------------


def mlp(n_in: int, width: int, n_out: int, layers: int) -> nn.Sequential:
    """`layers` hidden layers of `width` (ReLU), then a linear output."""
    mods, d = [], n_in
    for _ in range(layers):
        mods += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*mods, nn.Linear(d, n_out))


class Encoder(nn.Module):
    """CARE's context-routed state encoder: x = [sum_j w_j E_j(s), z_c], w = softmax(g(z_c)) over k encoders;
    the context c standardised with the statistics of the training contexts."""

    def __init__(self, obs_dim: int, cond_dim: int, k: int, width: int):
        super().__init__()
        self.task = mlp(cond_dim, width, width, 2)  # f: context -> z_c
        self.attention = mlp(width, width, k, 2)  # g: z_c -> k logits
        self.encoders = nn.ModuleList(mlp(obs_dim, width, width, 2) for _ in range(k))
        self.register_buffer("cond_mean", torch.zeros(cond_dim))
        self.register_buffer("cond_std", torch.ones(cond_dim))
        self.out_dim = 2 * width

    def weights(self, z_c: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.attention(z_c.detach()), -1)  # w = softmax(g(z_c)), z_c not differentiated

    def forward(self, obs: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        z_c = self.task((cond - self.cond_mean) / self.cond_std)
        w = self.weights(z_c)
        z_s = (w.unsqueeze(-1) * torch.stack([e(obs) for e in self.encoders], -2)).sum(-2)
        return torch.cat([z_s, z_c], -1)


class Critic(nn.Module):
    """The encoder and twin Q heads (3 x hidden) on [x, a]."""

    def __init__(self, obs_dim: int, cond_dim: int, act_dim: int, args):
        super().__init__()
        self.encoder = Encoder(obs_dim, cond_dim, args.encoders, args.encoder_width)
        self.q = nn.ModuleList(mlp(self.encoder.out_dim + act_dim, args.hidden, 1, 3) for _ in range(2))

    def forward(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """[..., 2]: both critics on the encoded state x."""
        xa = torch.cat([x, act], -1)
        return torch.cat([q(xa) for q in self.q], -1)


class Actor(nn.Module):
    """pi(a | x): 3 x hidden -> mean and log-std (bounded to [-20, 2] by tanh scaling, as mtrl)."""

    def __init__(self, x_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(x_dim, hidden, 2 * act_dim, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(x).chunk(2, -1)
        return mean, -20 + 0.5 * (2 - -20) * (torch.tanh(log_std) + 1)

    def sample(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A tanh-Gaussian action, its log-probability and the mean (CleanRL's)."""
        mean, log_std = self(x)
        u = mean + log_std.exp() * torch.randn_like(mean)
        a = torch.tanh(u)
        logp = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log(1 - a.pow(2) + 1e-6)).sum(-1)
        return a, logp, mean


# ----------------------------------------------------------------------------------------------------
# Losses (SAC with a temperature per task, the BC anchor on demonstrations)
# ----------------------------------------------------------------------------------------------------


def critic_loss(model: dict, batch: dict, alpha: torch.Tensor, gamma: float) -> torch.Tensor:
    """L_Q: both critics against the soft Bellman target of the smaller target critic, alpha per task."""
    with torch.no_grad():
        x_next = model["critic_target"].encoder(batch["next_obs"], batch["cond"])
        a_next, logp_next, _ = model["actor"].sample(model["critic"].encoder(batch["next_obs"], batch["cond"]))
        q_next = model["critic_target"](x_next, a_next).min(-1).values - alpha[batch["task"]] * logp_next
        target = batch["rew"] + gamma * (1 - batch["term"]) * q_next
    q = model["critic"](model["critic"].encoder(batch["obs"], batch["cond"]), batch["act"])
    return (q - target.unsqueeze(-1)).pow(2).mean(0).sum()  # L_Q, both critics


def actor_loss(model: dict, batch: dict, alpha: torch.Tensor, bc_weight: float, n_demo: int, n_tasks: int):
    """L_pi with the BC anchor on each task's demonstration rows (the first n_demo of each task's block of
    the batch), weighted per task by bc_weight x the task's mean |Q| (stage 0's TD3+BC normalisation); also
    log pi for the temperatures."""
    x = model["critic"].encoder(batch["obs"], batch["cond"]).detach()  # the actor reads the critic's encoder
    a, logp, mean = model["actor"].sample(x)
    q = model["critic"](x, a).min(-1).values
    loss = (alpha[batch["task"]] * logp - q).mean()
    if n_demo:
        per_task = lambda v: v.view(n_tasks, -1, *v.shape[1:])  # noqa: E731 - [tasks, rows of a task, ...]
        w = bc_weight * per_task(q).abs().mean(1).detach()  # [tasks]
        bc = (torch.tanh(per_task(mean)[:, :n_demo]) - per_task(batch["act"])[:, :n_demo]).pow(2).mean((1, 2))
        loss = loss + (w * bc).sum() / n_tasks
    return loss, logp


def temperature_loss(log_alpha: torch.Tensor, logp: torch.Tensor, task: torch.Tensor, target_entropy: float):
    return -(log_alpha[task] * (logp.detach() + target_entropy)).mean()  # L_alpha, per task's alpha


# ----------------------------------------------------------------------------------------------------
# Training: every seen task steps once per iteration; one update per iteration on each task's batch
# ----------------------------------------------------------------------------------------------------


def task_contexts(chain: dict, tasks: list[str]) -> list[torch.Tensor]:
    """Each task's contexts: the behaviour embeddings h of its training rows (what HypLatent learns from)."""
    names = list(chain["tasks"])
    return [chain["cond"][chain["task_index"] == names.index(t)].float() for t in tasks]


def main(args: Args) -> None:
    common.check_options(args, positive=("encoders", "encoder_width", "hidden", "lr", "init_temperature", "tau",
                                         "encoder_tau", "threads"), seeds=("seed",))
    run, lock = artifacts.open_run_dir(args.run_dir, "CARE")  # noqa: F841 - held till exit
    path = run / "care.pt"
    chain = load_inputs(run, args.suite, args.scale)
    settings = artifacts.settings(args)
    made_from = {**artifacts.shard_ids(chain["shards"]), **chain["made_from"]}
    if args.skip_done and artifacts.up_to_date(path, FORMAT, settings, made_from):
        print(f"CARE: {path} is up to date (same settings, inputs and code); skipped")
        return
    s0 = SimpleNamespace(**chain["shards"][0]["config"])  # stage 0's settings: the experts' budget and data
    tasks = list(chain["be"]["train_tasks"])
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0, T = time.time(), len(tasks)
    steps = s0.first_checkpoint + (s0.num_checkpoints - 1) * s0.checkpoint_every  # a stage-0 expert's SAC steps
    contexts = task_contexts(chain, tasks)
    spec = common.suite_spec("metaworld")
    o, a_dim, c_dim = spec["obs_dim"], spec["act_dim"], contexts[0].shape[1]
    critic = Critic(o, c_dim, a_dim, args)
    allc = torch.cat(contexts)
    critic.encoder.cond_mean.copy_(allc.mean(0)), critic.encoder.cond_std.copy_(allc.std(0).clamp_min(1e-6))
    critic_target = Critic(o, c_dim, a_dim, args)
    critic_target.load_state_dict(critic.state_dict())
    actor = Actor(critic.encoder.out_dim, a_dim, args.hidden)
    log_alpha = torch.full((T,), math.log(args.init_temperature), requires_grad=True)
    model = {"critic": critic, "critic_target": critic_target, "actor": actor}
    opts = {"critic": torch.optim.Adam(critic.parameters(), lr=args.lr),
            "actor": torch.optim.Adam(actor.parameters(), lr=args.lr), "alpha": torch.optim.Adam([log_alpha], lr=args.lr)}
    seeds = goal_seeds(s0)
    demos = [scripted_episodes(t, s0.demo_episodes, s0.demo_steps, s0.demo_noise, seed=seeds["demonstrations"])
             for t in tasks] if s0.demo_episodes > 0 else None
    rng, g = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)

    def demo_rows(eps):  # a task's demonstration episodes as transitions
        cat = lambda j, sl=slice(None): torch.as_tensor(np.concatenate([e[j][sl] for e in eps])).float()  # noqa: E731
        return {"obs": cat(0, slice(None, -1)), "act": cat(1), "rew": cat(2), "term": torch.zeros(sum(len(e[1]) for e in eps)),
                "next_obs": cat(0, slice(1, None))}

    demo_data = [demo_rows(eps) for eps in demos] if demos else None
    if demo_data and s0.parent_bc_steps:  # the warm start the pooled parent gives the experts: cloning the demos
        bc_opt = torch.optim.Adam([*critic.encoder.parameters(), *actor.parameters()], lr=1e-3)
        n = max(1, s0.batch_size // T)  # the parent's batch of `batch_size` rows, pooled over the tasks
        for _ in range(s0.parent_bc_steps):
            rows = [torch.randint(len(d["obs"]), (n,), generator=g) for d in demo_data]
            obs = torch.cat([d["obs"][j] for d, j in zip(demo_data, rows)])
            cond = torch.cat([c[torch.randint(len(c), (n,), generator=g)] for c in contexts])
            act = torch.cat([d["act"][j] for d, j in zip(demo_data, rows)])
            loss = F.mse_loss(torch.tanh(actor(critic.encoder(obs, cond))[0]), act)
            bc_opt.zero_grad(set_to_none=True)
            loss.backward()
            bc_opt.step()
        critic_target.load_state_dict(critic.state_dict())

    cap = steps
    buf = {"obs": torch.zeros(T, cap, o), "act": torch.zeros(T, cap, a_dim), "rew": torch.zeros(T, cap),
           "term": torch.zeros(T, cap), "next_obs": torch.zeros(T, cap, o), "ctx": torch.zeros(T, cap, dtype=torch.long)}
    envs = [MetaWorldTraining(t, seeds["training"]) for t in tasks]
    obs, ctx, ep_ret, returns = [None] * T, [0] * T, [0.0] * T, [[] for _ in range(T)]
    n_demo = s0.batch_size // 2 if demo_data else 0
    n_online = s0.batch_size - n_demo
    print(f"CARE: {T} seen tasks, {steps} environment steps each (a stage-0 expert's), batch {s0.batch_size} per task"
          f"{' (half demonstrations)' if n_demo else ''}; k = {args.encoders} encoders, context {c_dim}-d (behaviour "
          f"embeddings), actor and critics 3 x {args.hidden}")
    log = training.TrainingLog("CARE", run / "tb" / "care", steps, tag="care/", progress=args.progress,
                               every=max(1, steps // 200))
    task_col = torch.arange(T).repeat_interleave(s0.batch_size)
    for step in range(steps):
        for i in range(T):
            if obs[i] is None:
                obs[i], _ = envs[i].reset()
                ctx[i], ep_ret[i] = int(rng.integers(len(contexts[i]))), 0.0
        with torch.no_grad():
            x = critic.encoder(torch.as_tensor(np.stack(obs)), torch.stack([contexts[i][ctx[i]] for i in range(T)]))
            action = actor.sample(x)[0].numpy()
        for i in range(T):
            nxt, r, term, trunc, _ = envs[i].step(action[i])
            for k, v in (("obs", obs[i]), ("act", action[i]), ("next_obs", nxt)):
                buf[k][i, step] = torch.as_tensor(v)
            buf["rew"][i, step], buf["term"][i, step], buf["ctx"][i, step] = r, float(term), ctx[i]
            obs[i], ep_ret[i] = nxt, ep_ret[i] + r
            if term or trunc:
                returns[i].append(ep_ret[i])
                obs[i] = None
        if step < s0.learning_starts:
            continue
        idx = torch.randint(step + 1, (T, n_online), generator=g)
        parts = []
        for i in range(T):
            rows = {k: buf[k][i, idx[i]] for k in ("obs", "act", "rew", "term", "next_obs")}
            rows["cond"] = contexts[i][buf["ctx"][i, idx[i]]]
            if n_demo:
                j = torch.randint(len(demo_data[i]["obs"]), (n_demo,), generator=g)
                demo = {k: v[j] for k, v in demo_data[i].items()}
                demo["cond"] = contexts[i][torch.randint(len(contexts[i]), (n_demo,), generator=g)]
                rows = {k: torch.cat([demo[k], rows[k]]) for k in rows}  # demonstrations first
            parts.append(rows)
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} | {"task": task_col}
        alpha = log_alpha.detach().exp()
        loss_q = critic_loss(model, batch, alpha, s0.gamma)
        opts["critic"].zero_grad(set_to_none=True)
        loss_q.backward()
        opts["critic"].step()
        loss_pi, logp = actor_loss(model, batch, alpha, s0.bc_weight, n_demo, T)
        opts["actor"].zero_grad(set_to_none=True)
        loss_pi.backward()
        opts["actor"].step()
        loss_alpha = temperature_loss(log_alpha, logp, batch["task"], -float(a_dim))
        opts["alpha"].zero_grad(set_to_none=True)
        loss_alpha.backward()
        opts["alpha"].step()
        with torch.no_grad():  # target critics: heads at tau, encoders at encoder_tau
            torch._foreach_lerp_(list(critic_target.q.parameters()), list(critic.q.parameters()), args.tau)
            torch._foreach_lerp_(list(critic_target.encoder.parameters()), list(critic.encoder.parameters()),
                                 args.encoder_tau)
        log.step(step, {"critic_loss": loss_q, "actor_loss": loss_pi},
                 mean_return=lambda: float(np.mean([r[-1] for r in returns if r] or [0.0])))
    log.close()
    print("CARE: last training episode return per task: "
          + ", ".join(f"{t} {r[-1]:.0f}" if r else f"{t} -" for t, r in zip(tasks, returns)))
    art = {"format": FORMAT, "suite": args.suite, "policy": spec, "settings": settings, "made_from": made_from,
           "config": asdict(args), "tasks": tasks, "cond_dim": c_dim, "step": steps, "history": log.history,
           "critic": artifacts.cpu_state(critic), "actor": artifacts.cpu_state(actor), "log_alpha": log_alpha.detach(),
           "train_returns": returns, "seconds": time.time() - t0}
    artifacts.save_artifact(art, path)
    print(f"CARE: saved {path} in {art['seconds']:.0f}s")


def load_care(path, suite: str, scale: str) -> tuple[dict, dict]:
    """The trained encoder and actor ({"encoder", "actor"}, frozen) and the artifact."""
    art = artifacts.load_artifact(path, FORMAT, ("critic", "actor", "cond_dim", "settings", "made_from"),
                                  spec=common.suite_spec(suite), suite=suite, scale=scale)
    spec, s = art["policy"], SimpleNamespace(**art["settings"])
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: the global stream stays as it was
        critic = Critic(spec["obs_dim"], art["cond_dim"], spec["act_dim"], s)
        actor = Actor(critic.encoder.out_dim, spec["act_dim"], s.hidden)
    critic.load_state_dict(art["critic"])
    actor.load_state_dict(art["actor"])
    return {"encoder": critic.encoder.eval().requires_grad_(False), "actor": actor.eval().requires_grad_(False)}, art


@torch.no_grad()
def care_act(model: dict, obs: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Deterministic actions tanh(mean) for observations [N, obs] with their contexts [N, c]."""
    return torch.tanh(model["actor"](model["encoder"](obs, cond))[0])


@torch.no_grad()
def run_care(model: dict, envs: list, cond: torch.Tensor, steps: int) -> np.ndarray:
    """One episode in each of `envs` (reset-ready), env i with context cond[i], in lockstep; an env that has
    succeeded is not stepped again. Returns success [N] (info["success"] at any step)."""
    o = np.stack([e.reset()[0] for e in envs]).astype(np.float32)
    success = np.zeros(len(envs))
    for _ in range(steps):
        act = care_act(model, torch.from_numpy(o), cond).numpy()
        for i, env in enumerate(envs):
            if success[i]:
                continue
            o_i, _, _, _, info = env.step(act[i])
            o[i] = o_i
            success[i] = max(success[i], float(info.get("success", 0.0)))
        if success.all():
            break
    return success


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
