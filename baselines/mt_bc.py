"""MT-BC, the simplest conditioned multi-task policy (the comparison "parameters vs inputs", DESIGN.md section
15): one MLP with the generated policy's hidden sizes that takes the observation and the condition HypLatent
gets (Cheetah-Vel: the target velocity; MetaWorld: the behaviour embedding h of a rollout), trained by
behaviour cloning on the offline data of every training checkpoint (`offline_data.py`: all of them, each
episode weighted alike, not return-weighted), as Prompt-DT's code trains its multi-task BC baseline:

    a_hat = tanh(W_m relu(W_2 elu(W_1 [norm(s), norm(tau_e)] + b_1) + b_2) + b_m)
    L_BC  = E_{(s, a, tau_e) ~ D} || a_hat(s, tau_e) - a ||^2                                    (MT-BC)

The input standardisation and the condition fold into the first layer, so the policy MT-BC gives one
condition is a flat policy of the generated policies' own layout (`fold_condition`: W_1's observation
columns over the observation std, the condition's columns times the standardised condition into the bias;
a zero log-std head, which the deterministic policy never uses). The evaluation runs it beside the generated
policies, in the same lockstep, on the same episodes and goals.

    python baselines/mt_bc.py --run-dir runs/cheetah-vel-quick          # -> <run_dir>/mt_bc.pt
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project's modules

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import artifacts  # noqa: E402
import common  # noqa: E402
import training  # noqa: E402
from offline_data import load_offline_data  # noqa: E402

FORMAT = "amt-hyp/mt-bc v1"


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads offline_data.pt, writes mt_bc.pt (default: runs/<suite>-<scale>)"""
    seed: int = 1
    steps: int = 20_000
    """gradient steps"""
    batch_size: int = 256
    """(state, action) pairs per step, drawn uniformly from every step of every episode"""
    lr: float = 3e-4
    """Adam learning rate (the SAC actor's)"""
    skip_done: bool = False
    """do nothing if mt_bc.pt was made with these settings from this offline data by this code"""
    device: str = "auto"
    threads: int = 2
    progress: bool = True


SCALES = {"smoke": dict(steps=200), "paper": dict(steps=100_000)}


class ConditionedPolicy(nn.Module):
    """The generated policy's trunk with the condition as input: [obs, cond] -> 128 (ELU) -> 128 (ReLU) -> tanh."""

    def __init__(self, obs_dim: int, cond_dim: int, act_dim: int, hidden: int = common.HIDDEN):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + cond_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc_mean = nn.Linear(hidden, act_dim)
        for name, dim in (("obs", obs_dim), ("cond", cond_dim)):  # input standardisation, set from the data
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def forward(self, obs: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = torch.cat([(obs - self.obs_mean) / self.obs_std, (cond - self.cond_mean) / self.cond_std], -1)
        return torch.tanh(self.fc_mean(F.relu(self.fc2(F.elu(self.fc1(x))))))


def input_std(x: torch.Tensor) -> torch.Tensor:
    """Per-dimension std of the inputs [N, d], 1 where a dimension never varies in the data (MetaWorld's second
    object, absent from every training task): scaling it up would amplify whatever a test task puts there."""
    std = x.std(0)
    return torch.where(std > 1e-6, std, torch.ones_like(std))


def bc_loss(policy: ConditionedPolicy, obs: torch.Tensor, cond: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    return (policy(obs, cond) - act).square().sum(-1).mean()  # L_BC = E || a_hat(s, tau_e) - a ||^2


@torch.no_grad()
def fold_condition(policy: ConditionedPolicy, cond: torch.Tensor) -> torch.Tensor:
    """The policy for each condition in `cond` [N, cond_dim] as flat policies [N, P] of the generated policies'
    layout (common.param_shapes): `common.batched_act` on them equals `policy(obs, cond)`."""
    o = policy.obs_mean.numel()
    w1, b1 = policy.fc1.weight, policy.fc1.bias
    w_obs, w_cond = w1[:, :o] / policy.obs_std, w1[:, o:]
    bias = b1 - w_obs @ policy.obs_mean + ((cond - policy.cond_mean) / policy.cond_std) @ w_cond.T  # [N, hidden]
    n, a, h = len(cond), policy.fc_mean.out_features, policy.fc2.out_features
    same = [t.reshape(1, -1).expand(n, -1) for t in (policy.fc2.weight, policy.fc2.bias, policy.fc_mean.weight,
                                                     policy.fc_mean.bias)]
    log_std_head = torch.zeros(n, a * h + a)
    return torch.cat([w_obs.reshape(1, -1).expand(n, -1), bias, *same, log_std_head], 1).float().contiguous()


def main(args: Args) -> None:
    common.check_options(args, positive=("steps", "batch_size", "lr", "threads"), seeds=("seed",))
    dev = common.pick_device(args.device)
    run, lock = artifacts.open_run_dir(args.run_dir, "MT-BC")  # noqa: F841 - held till exit
    path = run / "mt_bc.pt"
    data = load_offline_data(run / "offline_data.pt", args.suite, args.scale)
    settings, made_from = artifacts.settings(args), {"offline_data.pt": data["uid"]}
    if args.skip_done and artifacts.up_to_date(path, FORMAT, settings, made_from):
        print(f"MT-BC: {path} is up to date (same settings, data and code); skipped")
        return
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    T = data["obs"].shape[1]
    obs, act = data["obs"].flatten(0, 1), data["act"].flatten(0, 1)  # every step of every episode
    cond = data["cond"].repeat_interleave(T, 0)  # each step with its episode's condition
    policy = ConditionedPolicy(obs.shape[1], cond.shape[1], act.shape[1])
    policy.obs_mean.copy_(obs.mean(0)), policy.obs_std.copy_(input_std(obs))
    policy.cond_mean.copy_(cond.mean(0)), policy.cond_std.copy_(input_std(cond))
    policy, obs, cond, act = policy.to(dev), obs.to(dev), cond.to(dev), act.to(dev)
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    print(f"MT-BC: {len(obs)} (state, condition, action) triples of {len(data['obs'])} episodes, "
          f"{len(data['tasks'])} tasks; condition {cond.shape[1]}-d; {args.steps} steps of batch {args.batch_size}")

    log = training.TrainingLog("MT-BC", run / "tb" / "mt_bc", args.steps, tag="mt_bc/", progress=args.progress,
                               every=max(1, args.steps // 200))
    for step in range(args.steps):
        idx = torch.randint(len(obs), (args.batch_size,), device=dev)
        loss = bc_loss(policy, obs[idx], cond[idx], act[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.step(step, {"bc_loss": loss})
    log.close()
    print(f"final: BC loss {log.history['bc_loss'][-1]:.4f} (squared action error, summed over "
          f"{act.shape[1]} dimensions)")
    art = {"format": FORMAT, "suite": args.suite, "policy": common.suite_spec(args.suite), "settings": settings,
           "made_from": made_from, "config": asdict(args), "cond_dim": cond.shape[1], "step": args.steps,
           "history": log.history, "model": artifacts.cpu_state(policy), "seconds": time.time() - t0}
    artifacts.save_artifact(art, path)
    print(f"MT-BC: saved {path} in {art['seconds']:.0f}s")


def load_mt_bc(path, suite: str, scale: str) -> tuple[ConditionedPolicy, dict]:
    """The trained policy, frozen in eval mode, and its artifact."""
    art = artifacts.load_artifact(path, FORMAT, ("model", "cond_dim", "settings", "made_from"),
                                  spec=common.suite_spec(suite), suite=suite, scale=scale)
    spec = art["policy"]
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: the global stream stays as it was
        policy = ConditionedPolicy(spec["obs_dim"], art["cond_dim"], spec["act_dim"], spec["hidden"])
    policy.load_state_dict(art["model"])
    return policy.eval().requires_grad_(False), art


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
