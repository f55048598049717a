"""Stage 1b: the behaviour embedding (paper Sec. III-A, Eq. 2; DESIGN.md section 5), MetaWorld only.

From each stage-0 rollout, MAA's n-step trajectory tau^n = (s_0, a_0, a_1, a_2, s_3, ...) (`traj`) and the
post-success states tau_hat (`post_success`) are embedded: h = phi(tau^n), v = psi(tau_hat). A learned
matrix W scores pairs, and a contrastive loss makes each trajectory pick its own post-success states:

    L_behaviour = -1/N sum_i log softmax_j(h_i^T W v_j)[i]                            (Eq. 2)

Eq. 2 as printed has no exponential; the softmax (cross-entropy) form is what MAA trains. The conditioning
tau_e that HypLatent sees is h (128-d). Inputs are scaled to [-1, 1] with per-feature min/max fit on the
training rollouts; the same scaling is saved and applied whenever embeddings are computed (MAA fits it for
training only and forgets it at inference).

Cheetah-Vel conditions on the target velocity, so this stage has nothing to do there and says so.

Trains on the stage-0 rollouts of exactly the checkpoints the autoencoder trained on (its `train` mask in
`autoencoder.pt`, so stage 1a runs first): the seen tasks' checkpoints less the autoencoder's held-out
ones. No stage sees a held-out checkpoint or its rollout, which is what lets the evaluation condition on
them. Writes h and v for the rollout of every checkpoint of every shard (seen, held-out and unseen) to
`<run_dir>/behavior_embed.pt`. Later stages import `Phi`, `load_behavior_embed` and `embed_trajectories`.

    python stage1_behavior_embed.py --suite metaworld
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

import artifacts
import common
import training
from stage1_autoencoder import load_autoencoder


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family (Cheetah-Vel needs no behaviour embedding)"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads <run_dir>/stage0/*.pt and autoencoder.pt, writes <run_dir>/behavior_embed.pt (default:
    runs/<suite>-<scale>)"""
    seed: int = 1
    embed_dim: int = 128
    steps: int = 2000
    """gradient steps"""
    batch_size: int = 128
    lr: float = 3e-4
    skip_done: bool = False
    """do nothing if behavior_embed.pt was made with these settings from these inputs (pipeline.sh sets it)"""
    device: str = "auto"
    """where to train: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ..."""
    threads: int = 2
    """torch threads (CPU)"""
    progress: bool = True


SCALES = {"smoke": dict(steps=50), "paper": dict(steps=20_000)}
FORMAT = "amt-hyp/behavior-embed v3"  # trained on the autoencoder's training checkpoints only


class Phi(nn.Module):
    """phi: trajectory features (20 x (obs + 3 act)) -> 1024 -> 1024 -> h (the condition tau_e)."""

    def __init__(self, in_dim: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                 nn.Linear(1024, out_dim))

    def forward(self, x):
        return self.net(x)


class Psi(nn.Module):
    """psi: post-success states (3 x obs) -> 256 -> LayerNorm -> Tanh -> v."""

    def __init__(self, in_dim: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 256), nn.LayerNorm(256), nn.Tanh(), nn.Linear(256, out_dim))

    def forward(self, x):
        return self.net(x)


def behaviour_loss(h: torch.Tensor, v: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the logits h_i^T W v_j with the matching pair j = i as the label."""
    logits = h @ W @ v.T  # logits[i, j] = h_i^T W v_j
    return F.cross_entropy(logits, torch.arange(len(h), device=h.device))  # Eq. 2


def fit_scaling(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature (lo, hi) of the training data; constant features get a unit range."""
    lo, hi = x.min(0).values, x.max(0).values
    return lo, torch.where(hi - lo > 1e-6, hi, lo + 1)


def scale_to_unit(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Map [lo, hi] to [-1, 1] (values outside the training range go beyond it)."""
    return 2 * (x - lo) / (hi - lo) - 1


def validate(args: Args) -> None:
    common.check_options(args, positive=("embed_dim", "steps", "batch_size", "lr", "threads"), seeds=("seed",))


def main(args: Args) -> None:
    validate(args)
    dev = common.pick_device(args.device)
    if args.suite == "cheetah-vel":
        print("stage 1 behaviour embedding: not needed for Cheetah-Vel (HypLatent conditions on the target "
              "velocity); nothing to do.")
        return
    run, lock = artifacts.open_run_dir(args.run_dir, "stage 1 (behaviour embedding)")  # noqa: F841 - the lock is held till exit
    path = run / "behavior_embed.pt"
    shards = artifacts.load_stage0(run, args.suite, args.scale)
    _, ae = load_autoencoder(run / "autoencoder.pt", args.suite, args.scale)
    artifacts.check_made_from(run / "autoencoder.pt", ae, artifacts.shard_ids(shards))
    made_from = {**artifacts.shard_ids(shards), "autoencoder.pt": ae["uid"]}
    if args.skip_done and artifacts.up_to_date(path, FORMAT, artifacts.settings(args), made_from):
        print(f"stage 1 behaviour embedding: {path} is up to date (same settings, inputs and code); skipped")
        return
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    names = [s["task"] for s in shards]
    traj = torch.cat([s["traj"] for s in shards])
    post = torch.cat([s["post_success"] for s in shards])
    task_of = torch.cat([torch.full((len(s["step"]),), i) for i, s in enumerate(shards)])
    if ae["tasks"] != names or not torch.equal(ae["task_index"], task_of):
        raise SystemExit(f"error: {run / 'autoencoder.pt'}: lists other checkpoints than {run / 'stage0'}; re-run stage 1")
    is_train = ae["train"]  # the autoencoder's training checkpoints: seen tasks, its hold-out removed
    train_tasks = ae["train_tasks"]
    t_lo, t_hi = fit_scaling(traj[is_train])
    p_lo, p_hi = fit_scaling(post[is_train])
    traj_s, post_s = scale_to_unit(traj, t_lo, t_hi), scale_to_unit(post, p_lo, p_hi)
    print(f"stage 1 behaviour embedding: trains on the rollouts of the autoencoder's {int(is_train.sum())} training "
          f"checkpoints ({len(train_tasks)} tasks; its {int(ae['heldout'].sum())} held-out ones left out); "
          f"embedding {len(traj)} rollouts of {len(shards)} tasks")

    phi, psi = Phi(traj.shape[1], args.embed_dim).to(dev), Psi(post.shape[1], args.embed_dim).to(dev)
    W = nn.Parameter(torch.eye(args.embed_dim, device=dev))
    traj_d, post_d = traj_s.to(dev), post_s.to(dev)
    opt = torch.optim.Adam([*phi.parameters(), *psi.parameters(), W], lr=args.lr)
    train_idx = is_train.nonzero().squeeze(1).to(dev)
    log = training.TrainingLog("stage 1 behaviour embedding", run / "tb" / "stage1_behavior_embed", args.steps,
                               tag="loss/", every=50, progress=args.progress)
    for step in range(args.steps):
        idx = train_idx[torch.randperm(len(train_idx), device=dev)[: args.batch_size]]
        loss = behaviour_loss(phi(traj_d[idx]), psi(post_d[idx]), W)  # Eq. 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.step(step, {"eq2": loss})
    log.close()

    with torch.no_grad():
        h, v = phi(traj_d).cpu(), psi(post_d).cpu()
        W_cpu = W.detach().cpu()
        # how often a rollout's h scores its own task's v highest among the tasks' mean v (a sanity check)
        v_task = torch.stack([v[task_of == i].mean(0) for i in range(len(shards))])
        pred = (h @ W_cpu @ v_task.T).argmax(1)
        acc = {names[i]: float((pred[task_of == i] == i).float().mean()) for i in range(len(shards))}
    print(f"final loss {loss.item():.3f} (chance: {torch.log(torch.tensor(float(min(args.batch_size, len(train_idx))))):.3f}); "
          "task retrieval from h: " + ", ".join(f"{k} {100 * a:.0f}%" for k, a in acc.items()))
    art = {"format": FORMAT, "suite": args.suite, "settings": artifacts.settings(args), "made_from": made_from,
           "config": asdict(args), "train_tasks": train_tasks,
           "phi": artifacts.cpu_state(phi), "psi": artifacts.cpu_state(psi), "W": W_cpu,
           "scaling": {"traj_lo": t_lo, "traj_hi": t_hi, "post_lo": p_lo, "post_hi": p_hi},
           "h": h, "v": v, "task_index": task_of, "tasks": names, "train": is_train,
           "checkpoint_step": torch.cat([s["step"] for s in shards]),
           "success": torch.cat([s["success"] for s in shards]),
           "metrics": {"final_loss": loss.item(), "task_retrieval": acc}, "seconds": time.time() - t0}
    artifacts.save_artifact(art, path)
    print(f"stage 1 behaviour embedding: saved {path} in {art['seconds']:.0f}s")


def load_behavior_embed(path: str | Path, suite: str, scale: str) -> tuple[Phi, dict]:
    """phi (eval mode) with its artifact: `embed_trajectories(phi, art, traj)` gives h."""
    art = artifacts.load_artifact(path, FORMAT, ("phi", "scaling", "h", "tasks", "success", "train_tasks", "made_from"),
                               suite=suite, scale=scale)
    phi = Phi(art["scaling"]["traj_lo"].numel(), art["h"].shape[1])
    phi.load_state_dict(art["phi"])
    return phi.eval(), art


@torch.no_grad()
def embed_trajectories(phi: Phi, art: dict, traj: torch.Tensor) -> torch.Tensor:
    """h = phi(scaled traj), with the scaling fit on this stage's training rollouts (never refit)."""
    return phi(scale_to_unit(traj, art["scaling"]["traj_lo"], art["scaling"]["traj_hi"]))


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
