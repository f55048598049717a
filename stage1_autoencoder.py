"""Stage 1a: the policy-parameter autoencoder (paper Sec. III-A, Eq. 1; DESIGN.md section 5).

An encoder E maps a flat policy X (the SAC actor of common.py) to a latent Z, a decoder D maps it back,
X_hat = D(E(X)). As in Make-An-Agent (MAA), X is cut into the first layer and the rest; each part goes
through its own bias-free linear map to a token of `token_dim` values, then LayerNorm: Z is 2 tokens.
The decoder maps each token back to its part with one bias-free linear map. Training adds Gaussian noise
to the input (0.001) and to the latent (0.01).

    L_autoencoder = lambda / M * sum_i (X_hat^i - X^i)^2,  lambda = 1e3          (Eq. 1)

Data: every checkpoint of the training tasks' stage-0 shards; a random `holdout` fraction of each task's
checkpoints is kept out of training. Besides the reconstruction error, the check that matters is
functional: the decoded held-out policies are run in the environment next to the originals.

Writes `<run_dir>/autoencoder.pt`: the model, its settings, the shards it was made from, and the latent of
every checkpoint. Later stages import `PolicyAutoencoder` and `load_autoencoder` from this file.

    python stage1_autoencoder.py                          # quick Cheetah-Vel
    python stage1_autoencoder.py --suite metaworld
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn

import artifacts
import common
import training


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads <run_dir>/stage0/*.pt, writes <run_dir>/autoencoder.pt (default: runs/<suite>-<scale>)"""
    seed: int = 1
    token_dim: int = 256
    """width of each of the 2 latent tokens (MAA and the paper scale: 1024)"""
    steps: int = 1500
    """gradient steps"""
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 2e-6
    input_noise: float = 0.001
    """std of the Gaussian noise added to the raw parameters before encoding (MAA's input noise)"""
    latent_noise: float = 0.01
    """std of the Gaussian noise added to the latent tokens (after their LayerNorm) before decoding"""
    lam: float = 1e3
    """lambda of Eq. 1"""
    normalize: bool = True
    """standardise every parameter with the training set's mean and std before encoding (saved with the
    model); off = raw parameters as in MAA"""
    train_tasks: Optional[list[str]] = None
    """tasks whose checkpoints train the model (None: Cheetah-Vel every shard but the test velocities',
    MetaWorld the seen tasks); the checkpoints of the others are encoded too"""
    holdout: float = 0.1
    """fraction of each task's checkpoints kept out of training"""
    eval_policies: int = 50
    """held-out checkpoints run in the environment, original and decoded (0 = skip the functional check)"""
    skip_done: bool = False
    """do nothing if autoencoder.pt was made with these settings from these shards (pipeline.sh sets it)"""
    device: str = "auto"
    """where to train: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ..."""
    threads: int = 2
    """torch threads (CPU)"""
    progress: bool = True


SCALES = {"smoke": dict(token_dim=64, steps=60, eval_policies=4), "metaworld:quick": dict(eval_policies=48),
          "paper": dict(token_dim=1024, steps=50_000, eval_policies=100)}
FORMAT = "amt-hyp/autoencoder v2"


class PolicyAutoencoder(nn.Module):
    """E: two bias-free linear maps (first layer, rest) to tokens, LayerNorm; D: one linear map per token.
    Works on standardised parameters (`mean`, `std`: the training set's, saved with the model)."""

    def __init__(self, spec: dict, token_dim: int):
        super().__init__()
        first = spec["hidden"] * spec["obs_dim"] + spec["hidden"]  # fc1 weight and bias
        self.sizes = [first, common.num_params(spec) - first]
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


def autoencoder_loss(x_hat: torch.Tensor, x: torch.Tensor, lam: float = 1e3) -> torch.Tensor:
    """lambda / M * sum_i (X_hat^i - X^i)^2 over the M policies of the batch."""
    return lam / x.shape[0] * (x_hat - x).pow(2).sum()  # Eq. 1


def split_holdout(shards: list[dict], frac: float, seed: int) -> torch.Tensor:
    """A boolean mask over all checkpoints (shards concatenated): True = held out, `frac` of each task."""
    g = torch.Generator().manual_seed(seed)
    masks = []
    for s in shards:
        n = len(s["step"])
        m = torch.zeros(n, dtype=torch.bool)
        k = max(1, round(frac * n)) if frac > 0 and n > 1 else 0  # at least one per task
        m[torch.randperm(n, generator=g)[:k]] = True
        masks.append(m)
    return torch.cat(masks)


def functional_check(suite: str, params: torch.Tensor, decoded: torch.Tensor, tasks: list) -> dict:
    """Run original and decoded policies in lockstep, one episode each on the same env seed / goal (the
    i-th policy on evaluation goal i mod 50: MetaWorld has 50 goal configurations per seed)."""
    envs = [common.make_eval_env(suite, t, episode=i % common.MW_GOALS) for _ in range(2) for i, t in enumerate(tasks)]
    out = common.run_lockstep(torch.cat([params, decoded]), envs, common.suite_spec(suite))
    key = "return" if suite == "cheetah-vel" else "success"
    n = len(tasks)
    return {"metric": key, "original": out[key][:n].tolist(), "decoded": out[key][n:].tolist()}


def default_train_tasks(suite: str, names: list[str]) -> list[str]:
    """Cheetah-Vel: every shard but those of the test velocities; MetaWorld: the seen tasks."""
    if suite == "cheetah-vel":
        return [t for t in names if t not in {common.task_name(suite, v) for v in common.CHEETAH_TEST}]
    return [t for t in names if t in common.MW_SEEN]


def validate(args: Args) -> None:
    common.check_options(args, positive=("token_dim", "steps", "batch_size", "lr", "threads"),
                         nonnegative=("weight_decay", "input_noise", "latent_noise", "lam", "eval_policies"),
                         fraction=("holdout",), seeds=("seed",))
    if args.holdout == 0 and args.suite == "metaworld":
        raise SystemExit("error: --holdout 0 holds out no checkpoint, and the MetaWorld evaluation conditions seen "
                         "tasks on the rollouts of held-out ones")
    if args.holdout == 0 and args.eval_policies:
        raise SystemExit("error: --holdout 0 holds out no checkpoint for the functional check; give --eval-policies 0 "
                         "with it")


def main(args: Args) -> None:
    validate(args)
    dev = common.pick_device(args.device)
    run, lock = artifacts.open_run_dir(args.run_dir, "stage 1 (autoencoder)")  # noqa: F841 - the lock is held till exit
    path = run / "autoencoder.pt"
    shards = artifacts.load_stage0(run, args.suite, args.scale)
    made_from = artifacts.shard_ids(shards)
    if args.skip_done and artifacts.up_to_date(path, FORMAT, artifacts.settings(args), made_from):
        print(f"stage 1 autoencoder: {path} is up to date (same settings, shards and code); skipped")
        return
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    spec = common.suite_spec(args.suite)
    X = torch.cat([s["params"] for s in shards])
    task_of = torch.cat([torch.full((len(s["step"]),), i) for i, s in enumerate(shards)])
    names = [s["task"] for s in shards]
    train_tasks = args.train_tasks or default_train_tasks(args.suite, names)
    test = [t for t in train_tasks if t in {common.task_name(args.suite, v) for v in common.CHEETAH_TEST}]
    if args.suite == "cheetah-vel" and test:
        raise SystemExit(f"error: --train-tasks {', '.join(test)}: test velocities; no stage trains on them")
    missing = [t for t in train_tasks if t not in names]
    if missing or not train_tasks:
        raise SystemExit(f"error: {run / 'stage0'}: no shard for training task(s) "
                         f"{', '.join(missing) or '(none)'}; shards: {', '.join(names)}")
    in_train_task = torch.tensor([names[i] in train_tasks for i in task_of.tolist()])
    heldout = split_holdout(shards, args.holdout, args.seed) & in_train_task
    is_train = in_train_task & ~heldout
    train = X[is_train]
    print(f"stage 1 autoencoder: {len(X)} checkpoints of {len(shards)} tasks; training on {len(train)} of "
          f"{len(train_tasks)} tasks, {int(heldout.sum())} held out; policy size {X.shape[1]}, latent 2 x "
          f"{args.token_dim}")

    model = PolicyAutoencoder(spec, args.token_dim)
    if args.normalize:
        model.mean.copy_(train.mean(0))
        model.std.copy_(train.std(0).clamp_min(1e-3 * train.std(0).mean()))
    model, train = model.to(dev), train.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    # the loss is taken in the normalised space the model works in (every parameter on one scale)
    norm = lambda x: (x - model.mean) / model.std  # noqa: E731
    log = training.TrainingLog("stage 1 autoencoder", run / "tb" / "stage1_autoencoder", args.steps, tag="loss/",
                               every=50, progress=args.progress)
    for step in range(args.steps):
        x = train[torch.randint(len(train), (args.batch_size,), device=dev)]
        x_hat = model(x, args.input_noise, args.latent_noise)
        loss = autoencoder_loss(norm(x_hat), norm(x), args.lam)  # Eq. 1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.step(step, {"eq1": loss})

    model = model.cpu().eval()  # encoding every checkpoint and the functional check run on the CPU
    with torch.no_grad():
        Z = torch.cat([model.encode(x) for x in X.split(256)])
        X_hat = torch.cat([model.decode(z) for z in Z.split(256)])
    mse = (X_hat - X).pow(2).mean(1)
    metrics = {"train_mse": float(mse[is_train].mean()), "heldout_mse": float(mse[heldout].mean()),
               "param_var": float(X.var(0).mean())}
    print(f"reconstruction MSE per parameter: train {metrics['train_mse']:.3g}, held out "
          f"{metrics['heldout_mse']:.3g} (variance of the parameters across checkpoints: {metrics['param_var']:.3g})")

    if args.eval_policies:
        idx = heldout.nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(args.seed))][: args.eval_policies]
        tasks = [shards[int(task_of[i])]["target_velocity"] if args.suite == "cheetah-vel"
                 else shards[int(task_of[i])]["task"] for i in idx]
        fc = functional_check(args.suite, X[idx], X_hat[idx], tasks)
        o, d = np.array(fc["original"]), np.array(fc["decoded"])
        metrics["functional"] = fc
        print(f"functional check on {len(idx)} held-out checkpoints: mean {fc['metric']} original {o.mean():.2f}, "
              f"decoded {d.mean():.2f} (mean |decoded - original| per policy {np.abs(d - o).mean():.2f})")
    log.close({"mse/train": metrics["train_mse"], "mse/heldout": metrics["heldout_mse"]})

    art = {"format": FORMAT, "suite": args.suite, "policy": spec, "settings": artifacts.settings(args),
           "made_from": made_from, "config": asdict(args), "token_dim": args.token_dim, "model": model.state_dict(),
           "latents": Z, "task_index": task_of, "tasks": names, "train_tasks": train_tasks,
           "checkpoint_step": torch.cat([s["step"] for s in shards]), "heldout": heldout, "train": is_train,
           "metrics": metrics, "seconds": time.time() - t0}
    artifacts.save_artifact(art, path)
    print(f"stage 1 autoencoder: saved {path} in {art['seconds']:.0f}s")


def load_autoencoder(path: str | Path, suite: str, scale: str) -> tuple[PolicyAutoencoder, dict]:
    """The trained autoencoder (eval mode) and its artifact; used by the later stages."""
    spec = common.suite_spec(suite)
    art = artifacts.load_artifact(path, FORMAT, ("model", "token_dim", "latents", "made_from"), spec=spec,
                               suite=suite, scale=scale)
    model = PolicyAutoencoder(spec, art["token_dim"])
    model.load_state_dict(art["model"])
    return model.eval(), art


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
