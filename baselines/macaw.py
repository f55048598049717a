"""MACAW (Mitchell et al., ICML 2021), the offline meta-RL row of the paper's Table IV, trained here on the same
offline data as every other method (`offline_data.py`: episodes of the stage-0 checkpoints that train stages
1-3; DESIGN.md section 16). Cheetah-Vel only.

MAML with one inner step per task, on a value function V_phi and a policy pi_theta with an advantage head:

    R(s_t)          = sum_k gamma^k r_{t+k} to the episode's end, divided by the data's return scale
                                                          (Monte Carlo targets: the authors' `no_bootstrap`)
    L_V(phi, D)     = E_D (V_phi(s) - R(s))^2                                         (MACAW's value loss)
    A               = R(s) - V_phi(s),  w = exp(min(norm(A) / T, 20))    (not differentiated; norm over D)
    L_AWR(theta, phi, D) = -E_D w log N(a; tanh(mu_theta(s)), sigma^2)               (MACAW's policy loss)
    L_ADV(theta, phi, D) = E_D (A_theta(s, a) - A)^2          (the advantage head; inner loop only)

    inner, task i:  phi_i   = phi   - alpha_V  grad_phi   L_V(phi, D_i)
                    theta_i = theta - alpha_pi grad_theta [L_AWR(theta, phi_i, D_i) + c L_ADV(theta, phi_i, D_i)]
    outer:          L_V(phi_i, D'_i) + L_AWR(theta_i, phi_i, D'_i), mean over a batch of tasks; Adam on phi,
                    theta and the step sizes alpha (one learned scalar per parameter tensor)

D_i and D'_i are two batches of task i's steps. The outer gradient flows through the inner step
(second order). At a test velocity (evaluate.py), one inner step on one episode of the oracle expert at that
velocity (the episode Prompt-DT takes its prompt from: MACAW sees test-task data, which no generator does),
then the adapted policy acts deterministically, tanh(mu), like every other row; before adaptation the
meta-learned policy is one policy for every velocity (the `macaw-unadapted` row).

Settings of the authors' code (config/alg/standard.json): inner step sizes 1e-3 learned with Adam at 1e-3,
batch 256 (inner and outer), 5 tasks per outer step, one inner step at training and at test time,
advantage-head weight c = 0.01, advantage clip 20, T = 1, sigma = 0.2, gamma = 0.99. Departures, stated: the
policy is the generated policies' network (2 x 128, ELU then ReLU, tanh mean; theirs 3 x 100 with
weight-transform layers), so its adapted parameters run in the same lockstep as every other row; the value
function is 3 x 100 as theirs, without weight transforms; the value targets are divided by the data's return
standard deviation; the value function's outer learning rate 1e-3 (theirs 1e-5, over up to a million outer
steps; the policy's is theirs, 1e-4) for the quick scale's 2,000 steps.

    python baselines/macaw.py --run-dir runs/cheetah-vel-quick           # -> <run_dir>/macaw.pt
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

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import artifacts  # noqa: E402
import common  # noqa: E402
import training  # noqa: E402
from offline_data import load_offline_data  # noqa: E402

FORMAT = "amt-hyp/macaw v1"


@dataclass
class Args:
    suite: Literal["cheetah-vel"] = "cheetah-vel"
    """task family (MACAW runs on Cheetah-Vel)"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads offline_data.pt, writes macaw.pt (default: runs/<suite>-<scale>)"""
    seed: int = 1
    steps: int = 2_000
    """outer (meta-training) steps"""
    task_batch: int = 5
    """training tasks per outer step"""
    batch_size: int = 256
    """steps in each inner and each outer batch of a task"""
    inner_lr: float = 1e-3
    """initial inner step size of every parameter tensor (then learned)"""
    lr_lr: float = 1e-3
    """Adam learning rate of the inner step sizes"""
    value_lr: float = 1e-3
    """outer Adam learning rate of the value function"""
    policy_lr: float = 1e-4
    """outer Adam learning rate of the policy and its advantage head (the authors')"""
    gamma: float = 0.99
    """discount of the Monte Carlo value targets"""
    temperature: float = 1.0
    """T of the advantage weights"""
    advantage_clip: float = 20.0
    """the normalised advantage over T is clipped at this before exp"""
    advantage_head: float = 0.01
    """c: weight of the advantage head's regression in the inner policy loss"""
    sigma: float = 0.2
    """the policy's fixed action standard deviation"""
    value_width: int = 100
    skip_done: bool = False
    """do nothing if macaw.pt was made with these settings from this offline data by this code"""
    device: str = "auto"
    threads: int = 2
    progress: bool = True


SCALES = {"smoke": dict(steps=20, batch_size=32, task_batch=2), "paper": dict(steps=20_000)}


# ----------------------------------------------------------------------------------------------------
# The networks, as explicit parameter lists (the inner step makes new lists)
# ----------------------------------------------------------------------------------------------------


def linear_init(n_in: int, n_out: int) -> list[nn.Parameter]:
    """nn.Linear's default initialisation: weight [out, in] and bias, uniform in +-1/sqrt(in)."""
    b = 1.0 / math.sqrt(n_in)
    return [nn.Parameter(torch.empty(n_out, n_in).uniform_(-b, b)), nn.Parameter(torch.empty(n_out).uniform_(-b, b))]


class Macaw(nn.Module):
    """V_phi (3 x `value_width`, ReLU), pi_theta (the generated policies' layout without its log-std head:
    fc1, fc2, fc_mean), the advantage head A_theta(s, a) = W_a [h(s), a] + b_a on the policy's last hidden
    layer, and the learned inner step sizes, one per parameter tensor."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = common.HIDDEN, value_width: int = 100,
                 inner_lr: float = 1e-3):
        super().__init__()
        self.value = nn.ParameterList(linear_init(obs_dim, value_width) + linear_init(value_width, value_width)
                                      + linear_init(value_width, 1))
        self.policy = nn.ParameterList(linear_init(obs_dim, hidden) + linear_init(hidden, hidden)
                                       + linear_init(hidden, act_dim) + linear_init(hidden + act_dim, 1))
        self.value_lrs = nn.Parameter(torch.full((len(self.value),), inner_lr))
        self.policy_lrs = nn.Parameter(torch.full((len(self.policy),), inner_lr))


def value_fn(phi: list, obs: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.linear(F.relu(F.linear(obs, phi[0], phi[1])), phi[2], phi[3]))
    return F.linear(h, phi[4], phi[5]).squeeze(-1)


def policy_fn(theta: list, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tanh(mu_theta(s)) and the last hidden layer h(s) (common.Actor's trunk: ELU, then ReLU)."""
    h = F.relu(F.linear(F.elu(F.linear(obs, theta[0], theta[1])), theta[2], theta[3]))
    return torch.tanh(F.linear(h, theta[4], theta[5])), h


def advantage_fn(theta: list, h: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    return F.linear(torch.cat([h, act], -1), theta[6], theta[7]).squeeze(-1)


# ----------------------------------------------------------------------------------------------------
# MACAW's losses and the inner step
# ----------------------------------------------------------------------------------------------------


def value_loss(phi: list, obs: torch.Tensor, ret: torch.Tensor) -> torch.Tensor:
    return (value_fn(phi, obs) - ret).square().mean()  # L_V = E (V_phi(s) - R(s))^2


def advantages(phi: list, obs: torch.Tensor, ret: torch.Tensor, temperature: float, clip: float):
    """A = R - V_phi(s) and the AWR weights exp(min(norm(A) / T, clip)), norm over the batch; not differentiated."""
    with torch.no_grad():
        adv = ret - value_fn(phi, obs)
        norm = (adv - adv.mean()) / (adv.std() + 1e-8)
        return adv, (norm / temperature).clamp(max=clip).exp()


def awr_loss(theta: list, obs: torch.Tensor, act: torch.Tensor, weights: torch.Tensor, sigma: float):
    """L_AWR = -E w log N(a; tanh(mu_theta(s)), sigma^2); also returns h(s) for the advantage head."""
    mean, h = policy_fn(theta, obs)
    log_prob = torch.distributions.Normal(mean, sigma).log_prob(act).sum(-1)
    return -(weights * log_prob).mean(), h  # L_AWR


def advantage_loss(theta: list, h: torch.Tensor, act: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    return (advantage_fn(theta, h, act) - adv).square().mean()  # L_ADV = E (A_theta(s, a) - A)^2


def inner_step(params: list, lrs: torch.Tensor, loss: torch.Tensor, create_graph: bool) -> list:
    """One SGD step with a learned step size per tensor: p - alpha_p grad_p loss (differentiable in p and alpha
    when `create_graph`: the outer gradient flows through it)."""
    grads = torch.autograd.grad(loss, list(params), create_graph=create_graph)
    return [p - lr * g for p, lr, g in zip(params, lrs, grads)]


def adapt(model: Macaw, batch: dict, args, create_graph: bool = False) -> tuple[list, list]:
    """MACAW's inner loop on one task's batch {obs, act, ret}: phi_i, then theta_i with phi_i's advantages."""
    phi = inner_step(model.value, model.value_lrs, value_loss(list(model.value), batch["obs"], batch["ret"]),
                     create_graph)
    adv, w = advantages(phi, batch["obs"], batch["ret"], args.temperature, args.advantage_clip)
    theta = list(model.policy)
    loss, h = awr_loss(theta, batch["obs"], batch["act"], w, args.sigma)
    loss = loss + args.advantage_head * advantage_loss(theta, h, batch["act"], adv)
    return phi, inner_step(theta, model.policy_lrs, loss, create_graph)


def outer_loss(model: Macaw, inner: dict, outer: dict, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The meta-objective of one task: L_V(phi_i, D') and L_AWR(theta_i, phi_i, D'), phi_i and theta_i adapted
    on D (`adapt`, differentiable)."""
    phi, theta = adapt(model, inner, args, create_graph=True)
    _, w = advantages(phi, outer["obs"], outer["ret"], args.temperature, args.advantage_clip)
    return value_loss(phi, outer["obs"], outer["ret"]), awr_loss(theta, outer["obs"], outer["act"], w, args.sigma)[0]


def flat_policy(theta: list, spec: dict) -> torch.Tensor:
    """theta as one flat policy of the generated policies' layout (common.param_shapes), with a zero log-std
    head (never used by a deterministic policy): `common.batched_act` on it equals tanh(mu_theta(s))."""
    a, h = spec["act_dim"], spec["hidden"]
    return torch.cat([p.detach().reshape(-1) for p in theta[:6]] + [torch.zeros(a * h + a)]).float()


# ----------------------------------------------------------------------------------------------------
# Data and training
# ----------------------------------------------------------------------------------------------------


def discounted_returns(rew: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = sum_k gamma^k r_{t+k} to the episode's end, along the last dimension."""
    out, run = torch.zeros_like(rew), torch.zeros(rew.shape[:-1])
    for t in range(rew.shape[-1] - 1, -1, -1):
        run = rew[..., t] + gamma * run
        out[..., t] = run
    return out


def task_steps(data: dict, gamma: float) -> tuple[list[dict], float]:
    """Every step of each training task's episodes {obs, act, ret}, the returns divided by their std over the
    whole data (returned)."""
    ret = discounted_returns(data["rew"], gamma)
    scale = float(ret.std())
    tasks = []
    for t in range(len(data["tasks"])):
        rows = (data["task"] == t).nonzero().squeeze(1)
        if len(rows):
            tasks.append({"obs": data["obs"][rows].flatten(0, 1), "act": data["act"][rows].flatten(0, 1),
                          "ret": ret[rows].flatten(0, 1) / scale, "task": data["tasks"][t]})
    return tasks, scale


def sample(task: dict, n: int, g: torch.Generator, dev) -> dict:
    idx = torch.randint(len(task["obs"]), (n,), generator=g)
    return {k: task[k][idx].to(dev) for k in ("obs", "act", "ret")}


def main(args: Args) -> None:
    common.check_options(args, positive=("steps", "task_batch", "batch_size", "inner_lr", "lr_lr", "value_lr",
                                         "policy_lr", "temperature", "advantage_clip", "sigma", "value_width",
                                         "threads"),
                         nonnegative=("advantage_head",), fraction=("gamma",), seeds=("seed",))
    dev = common.pick_device(args.device)
    run, lock = artifacts.open_run_dir(args.run_dir, "MACAW")  # noqa: F841 - held till exit
    path = run / "macaw.pt"
    data = load_offline_data(run / "offline_data.pt", args.suite, args.scale)
    settings, made_from = artifacts.settings(args), {"offline_data.pt": data["uid"]}
    if args.skip_done and artifacts.up_to_date(path, FORMAT, settings, made_from):
        print(f"MACAW: {path} is up to date (same settings, data and code); skipped")
        return
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tasks, scale = task_steps(data, args.gamma)
    if len(tasks) < args.task_batch:
        raise SystemExit(f"error: --task-batch {args.task_batch}: the data holds {len(tasks)} training tasks")
    spec = common.suite_spec(args.suite)
    model = Macaw(spec["obs_dim"], spec["act_dim"], spec["hidden"], args.value_width, args.inner_lr).to(dev)
    opt = torch.optim.Adam([{"params": model.value.parameters(), "lr": args.value_lr},
                            {"params": model.policy.parameters(), "lr": args.policy_lr},
                            {"params": [model.value_lrs, model.policy_lrs], "lr": args.lr_lr}])
    g = torch.Generator().manual_seed(args.seed)
    print(f"MACAW: {sum(len(t['obs']) for t in tasks)} steps of {len(tasks)} training tasks; return scale "
          f"{scale:.2f}; {args.steps} outer steps of {args.task_batch} tasks x 2 batches of {args.batch_size}")

    log = training.TrainingLog("MACAW", run / "tb" / "macaw", args.steps, tag="macaw/", progress=args.progress,
                               every=max(1, args.steps // 200))
    for step in range(args.steps):
        picked = torch.randperm(len(tasks), generator=g)[: args.task_batch].tolist()
        losses = [outer_loss(model, sample(tasks[i], args.batch_size, g, dev), sample(tasks[i], args.batch_size, g, dev),
                             args) for i in picked]
        loss_v = torch.stack([v for v, _ in losses]).mean()
        loss_pi = torch.stack([p for _, p in losses]).mean()
        opt.zero_grad(set_to_none=True)
        (loss_v + loss_pi).backward()
        opt.step()
        log.step(step, {"value_loss": loss_v, "awr_loss": loss_pi},
                 inner_lr_value=lambda: model.value_lrs.mean(), inner_lr_policy=lambda: model.policy_lrs.mean())
    log.close()
    print(f"final: outer value loss {log.history['value_loss'][-1]:.4f}, AWR loss {log.history['awr_loss'][-1]:.4f}")
    art = {"format": FORMAT, "suite": args.suite, "policy": spec, "settings": settings, "made_from": made_from,
           "config": asdict(args), "return_scale": scale, "step": args.steps, "history": log.history,
           "model": artifacts.cpu_state(model), "seconds": time.time() - t0}
    artifacts.save_artifact(art, path)
    print(f"MACAW: saved {path} in {art['seconds']:.0f}s")


def load_macaw(path, suite: str, scale: str) -> tuple[Macaw, dict]:
    """The meta-trained model (eval mode; its inner step still differentiates) and its artifact."""
    art = artifacts.load_artifact(path, FORMAT, ("model", "return_scale", "step", "settings", "made_from"),
                                  spec=common.suite_spec(suite), suite=suite, scale=scale)
    s, spec = art["settings"], art["policy"]
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: the global stream stays as it was
        model = Macaw(spec["obs_dim"], spec["act_dim"], spec["hidden"], s["value_width"], s["inner_lr"])
    model.load_state_dict(art["model"])
    return model.eval(), art


def adapted_policies(model: Macaw, art: dict, episodes: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Test time: for each episode {obs [T, d], act, rew [T]} of a test task, one inner step (the learned step
    sizes) on all its steps; returns the adapted flat policies [N, P] and the unadapted one [P]."""
    s = SimpleNamespace(**art["settings"])
    out = []
    for ep in episodes:
        ret = discounted_returns(ep["rew"], s.gamma) / art["return_scale"]
        _, theta = adapt(model, {"obs": ep["obs"], "act": ep["act"], "ret": ret}, s)
        out.append(flat_policy(theta, art["policy"]))
    return torch.stack(out), flat_policy(list(model.policy), art["policy"])


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
