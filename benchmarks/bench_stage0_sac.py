"""Benchmark (not a test): SAC steps per second (environment step + update) of stage 0 against the same
algorithm written as a plain CleanRL-style loop: separate critic modules, torch.distributions, a numpy
replay buffer converted to tensors at every sample, torch forward for acting, a Python loop for the
target update, non-fused Adam. Same environment (Cheetah-Vel), network sizes, batch and update ratio.
Both run in this process on one thread, back to back, alternating, `--repeats` times each.

    python benchmarks/bench_stage0_sac.py --steps 4000 --repeats 2
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import stage0_collect_sac as s0  # noqa: E402


@dataclass
class Args:
    steps: int = 4000
    """SAC steps per measurement (the first `learning_starts` act randomly without updates)"""
    learning_starts: int = 500
    repeats: int = 2
    velocity: float = 1.35


# ---------------------------- the plain CleanRL-style reference ----------------------------


class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + act_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def get_action(actor, x):
    mean, log_std = actor(x)
    log_std = torch.tanh(log_std)
    log_std = s0.LOG_STD_MIN + 0.5 * (s0.LOG_STD_MAX - s0.LOG_STD_MIN) * (log_std + 1)
    normal = torch.distributions.Normal(mean, log_std.exp())
    x_t = normal.rsample()
    y_t = torch.tanh(x_t)
    log_prob = normal.log_prob(x_t) - torch.log(1 - y_t.pow(2) + 1e-6)
    return y_t, log_prob.sum(1, keepdim=True), torch.tanh(mean)


def plain_cleanrl(args: Args, a: s0.Args) -> float:
    torch.manual_seed(0)
    env = common.CheetahVel(args.velocity, seed=0)
    od, ad = env.obs_dim, env.act_dim
    actor = common.Actor(od, ad)
    qf1, qf2 = SoftQNetwork(od, ad, a.critic_hidden), SoftQNetwork(od, ad, a.critic_hidden)
    qf1_t, qf2_t = SoftQNetwork(od, ad, a.critic_hidden), SoftQNetwork(od, ad, a.critic_hidden)
    qf1_t.load_state_dict(qf1.state_dict()), qf2_t.load_state_dict(qf2.state_dict())
    q_opt = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=a.q_lr)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=a.policy_lr)
    log_alpha = torch.zeros(1, requires_grad=True)
    a_opt = torch.optim.Adam([log_alpha], lr=a.q_lr)
    alpha, target_entropy = log_alpha.exp().item(), -float(ad)
    n = args.steps
    B_obs, B_act = np.zeros((n, od), np.float32), np.zeros((n, ad), np.float32)
    B_rew, B_next, B_done = np.zeros((n, 1), np.float32), np.zeros((n, od), np.float32), np.zeros((n, 1), np.float32)
    obs, _ = env.reset()
    t0 = time.perf_counter()
    for step in range(n):
        if step < args.learning_starts:
            action = np.random.uniform(-1, 1, ad).astype(np.float32)
        else:
            action, _, _ = get_action(actor, torch.Tensor(obs).unsqueeze(0))
            action = action.detach().cpu().numpy()[0]
        next_obs, reward, term, trunc, _ = env.step(action)
        B_obs[step], B_act[step], B_rew[step], B_next[step], B_done[step] = obs, action, reward, next_obs, term
        obs = next_obs
        if term or trunc:
            obs, _ = env.reset()
        if step >= args.learning_starts:
            idx = np.random.randint(0, step + 1, a.batch_size)
            d_obs, d_act, d_rew = torch.tensor(B_obs[idx]), torch.tensor(B_act[idx]), torch.tensor(B_rew[idx])
            d_next, d_done = torch.tensor(B_next[idx]), torch.tensor(B_done[idx])
            with torch.no_grad():
                na, nlp, _ = get_action(actor, d_next)
                min_q = torch.min(qf1_t(d_next, na), qf2_t(d_next, na)) - alpha * nlp
                next_q = d_rew.flatten() + (1 - d_done.flatten()) * a.gamma * min_q.view(-1)
            q1, q2 = qf1(d_obs, d_act).view(-1), qf2(d_obs, d_act).view(-1)
            qf_loss = F.mse_loss(q1, next_q) + F.mse_loss(q2, next_q)
            q_opt.zero_grad()
            qf_loss.backward()
            q_opt.step()
            if step % a.policy_frequency == 0:
                for _ in range(a.policy_frequency):
                    pi, log_pi, _ = get_action(actor, d_obs)
                    min_q_pi = torch.min(qf1(d_obs, pi), qf2(d_obs, pi))
                    actor_loss = ((alpha * log_pi) - min_q_pi).mean()
                    actor_opt.zero_grad()
                    actor_loss.backward()
                    actor_opt.step()
                    with torch.no_grad():
                        _, log_pi, _ = get_action(actor, d_obs)
                    alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
                    a_opt.zero_grad()
                    alpha_loss.backward()
                    a_opt.step()
                    alpha = log_alpha.exp().item()
            for p, tp in zip(qf1.parameters(), qf1_t.parameters()):
                tp.data.copy_(a.tau * p.data + (1 - a.tau) * tp.data)
            for p, tp in zip(qf2.parameters(), qf2_t.parameters()):
                tp.data.copy_(a.tau * p.data + (1 - a.tau) * tp.data)
    return n / (time.perf_counter() - t0)


# ---------------------------- stage 0 ----------------------------


def stage0(args: Args, a: s0.Args) -> float:
    agent = s0.new_agent(a, common.CHEETAH_OBS, common.CHEETAH_ACT)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s0.run_sac(a, agent, args.velocity, total_steps=args.steps, checkpoints=[], from_parent=False,
                   tag="bench", state_path=Path(d) / "state.pt", made_from={})
        return args.steps / (time.perf_counter() - t0)


def main(args: Args) -> None:
    torch.set_num_threads(1)
    a = s0.Args(learning_starts=args.learning_starts, save_every=1e9)  # the quick Cheetah-Vel defaults
    print(f"Cheetah-Vel SAC at quick settings: critics {a.critic_hidden} wide, actor {common.HIDDEN} wide, "
          f"batch {a.batch_size}, policy_frequency {a.policy_frequency}; {args.steps} steps, "
          f"updates from step {args.learning_starts}; 1 thread")
    rates = {"stage0": [], "plain": []}
    for r in range(args.repeats):
        rates["plain"].append(plain_cleanrl(args, a))
        rates["stage0"].append(stage0(args, a))
        print(f"repeat {r}: plain CleanRL-style {rates['plain'][-1]:.0f} steps/s, "
              f"stage 0 {rates['stage0'][-1]:.0f} steps/s")
    p, s = np.median(rates["plain"]), np.median(rates["stage0"])
    print(f"median: plain {p:.0f} steps/s, stage 0 {s:.0f} steps/s, ratio stage0/plain = {s / p:.2f}x")


if __name__ == "__main__":
    main(tyro.cli(Args))
