"""Stage 3: HypFormer, soft-weighted aggregation of HypLatent's samples (paper Sec. III-C, Eqs. 6-9;
DESIGN.md section 7).

For each condition tau_e, the frozen generator G of stage 2 draws L latents Z_hat_1..Z_hat_L with
independent noise. HypFormer reads the tokens [Z_token, Z_hat_1..Z_hat_L, tau_e]
with one transformer encoder layer (no positional encoding: the L samples are a set) and predicts, through
a latent head and a residue head averaged over tokens, Z_pred and grad_pred. With the ground-truth latent
Z_gt paired with tau_e:

    L_sim = 1/N sum_i (1 - cos(Z_pred^i, Z_gt^i))                                      (Eq. 6)
    L_res = 1/N sum_i (grad_pred^i - grad_gt^i)^2,  grad_gt = Z_gt - Z_pred (no gradient)  (Eq. 7)
    L_c   = 1/N sum_i (Z_pred^i + grad_pred^i - Z_gt^i)^2                                 (Eq. 8)
    L     = lambda_sim L_sim + lambda_res L_res + lambda_c L_c,  all lambdas 1e3           (Eq. 9)

Eq. 6 as printed divides by max(||Z_pred||, ||Z_gt||, eps); we use the cosine similarity it names
(product of the norms). The squared errors of Eqs. 7-8 are averaged over the latent dimensions too.
Since grad_gt = Z_gt - Z_pred, Eqs. 7 and 8 have the same value; they differ in where gradients flow:
Eq. 7 trains the residue head alone, Eq. 8 both heads.
The generated policy is decode(Z_pred + grad_pred). The authors' code feeds (batch, tokens, width) to a
layer built with batch_first=False, so its attention mixes the samples of a batch; here it does not.

Writes `<run_dir>/hypformer.pt`; evaluation imports `HypFormer`, `load_hypformer` and `sample_latents`.

    python stage3_hypformer.py                          # quick Cheetah-Vel, L = 8
    python stage3_hypformer.py --num-tokens 32 --out hypformer_L32.pt   # the paper's token ablation (Fig. 5)
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
from latents import check_conditions, load_inputs, run_generated
from stage2_hyplatent import Generator, load_generator


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads autoencoder.pt, hyplatent.pt (and behavior_embed.pt), writes hypformer.pt (default:
    runs/<suite>-<scale>)"""
    hyplatent: str = "hyplatent.pt"
    """file name of the stage-2 artifact inside run_dir"""
    out: str = "hypformer.pt"
    """file name of the artifact inside run_dir"""
    seed: int = 1
    num_tokens: int = 8
    """L, the number of generated latents per condition (paper: 2^3)"""
    width: int = 256
    """token size"""
    heads: int = 128
    """attention heads (as printed; the head size is then width / heads = 2)"""
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    lambda_sim: float = 1e3
    lambda_res: float = 1e3
    lambda_c: float = 1e3
    check_per_task: int = 5
    """functional check at the end: this many training conditions per task; HypLatent alone and HypFormer
    policies decoded and run for 2 episodes each (0 = skip)"""
    skip_done: bool = False
    """do nothing if the artifact was made with these settings from these inputs (pipeline.sh sets it)"""
    device: str = "auto"
    """where to train: auto (CUDA if available, else CPU), cpu, cuda, ..."""
    threads: int = 2
    progress: bool = True


SCALES = {"smoke": dict(steps=30), "paper": dict(steps=30_000)}
FORMAT = "amt-hyp/hypformer v2"


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
        x = self.mlp(self.layer(tokens))
        return self.latent_head(x).mean(1), self.residue_head(x).mean(1)


@torch.no_grad()
def sample_latents(G: Generator, cond: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`num` latents per (normalised) condition from the frozen generator (eval mode): [B, num, latent]."""
    b = cond.shape[0]
    noise = torch.randn(b * num, G.noise_dim, device=cond.device, generator=generator)
    return G(cond.repeat_interleave(num, 0), noise).view(b, num, -1)


def sim_loss(z_pred: torch.Tensor, z_gt: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1/N sum_i (1 - cos(Z_pred^i, Z_gt^i))."""
    return (1 - F.cosine_similarity(z_pred, z_gt, dim=-1, eps=eps)).mean()  # Eq. 6


def res_loss(grad_pred: torch.Tensor, z_pred: torch.Tensor, z_gt: torch.Tensor) -> torch.Tensor:
    """The residue head predicts grad_gt = Z_gt - Z_pred (a target: no gradient flows into Z_pred)."""
    return (grad_pred - (z_gt - z_pred).detach()).pow(2).mean()  # Eq. 7


def consistency_loss(z_pred: torch.Tensor, grad_pred: torch.Tensor, z_gt: torch.Tensor) -> torch.Tensor:
    """The refined latent Z_pred + grad_pred against Z_gt."""
    return (z_pred + grad_pred - z_gt).pow(2).mean()  # Eq. 8


def hypformer_loss(z_pred, grad_pred, z_gt, lambda_sim=1e3, lambda_res=1e3, lambda_c=1e3) -> dict:
    """L (`total`) and its parts L_sim, L_res, L_c (`sim`, `res`, `c`)."""
    sim, res, c = sim_loss(z_pred, z_gt), res_loss(grad_pred, z_pred, z_gt), consistency_loss(z_pred, grad_pred, z_gt)
    return {"total": lambda_sim * sim + lambda_res * res + lambda_c * c, "sim": sim, "res": res, "c": c}  # Eq. 9


@torch.no_grad()
def latent_mse(z: torch.Tensor, z_gt: torch.Tensor) -> float:
    """Mean squared distance of latents to Z_gt, followed during training (not a loss): of one HypLatent sample
    (`mse_hyplatent`) and of HypFormer's refined latent (`mse_refined`)."""
    return (z - z_gt).pow(2).mean().item()


def validate(args: Args) -> None:
    common.check_options(args, positive=("num_tokens", "width", "heads", "steps", "batch_size", "lr", "threads"),
                         nonnegative=("lambda_sim", "lambda_res", "lambda_c", "check_per_task"), seeds=("seed",))
    if args.width % args.heads:
        raise SystemExit(f"error: --width {args.width} is not a multiple of --heads {args.heads}")


def main(args: Args) -> None:
    validate(args)
    dev = common.pick_device(args.device)
    run, lock = artifacts.open_run_dir(args.run_dir, "stage 3")  # noqa: F841 - the lock is held till exit
    path = run / args.out
    G, hl_art = load_generator(run / args.hyplatent, args.suite, args.scale)  # frozen, eval mode
    data = load_inputs(run, args.suite, args.scale)
    artifacts.check_made_from(run / args.hyplatent, hl_art, data["made_from"])
    made_from = {args.hyplatent: hl_art["uid"], **data["made_from"]}
    if args.skip_done and artifacts.up_to_date(path, FORMAT, artifacts.settings(args), made_from):
        print(f"stage 3 HypFormer: {path} is up to date (same settings, inputs and code); skipped")
        return
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    Zn = (data["Z"] - hl_art["latent_mean"]) / hl_art["latent_std"]
    Cn = (data["cond"] - hl_art["cond_mean"]) / hl_art["cond_std"]
    arch = {"latent_dim": Zn.shape[1], "cond_dim": Cn.shape[1], "width": args.width, "heads": args.heads}
    model, G, Zd, Cd = HypFormer(**arch).to(dev), G.to(dev), Zn.to(dev), Cn.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    print(f"stage 3 HypFormer: {len(Zn)} (latent, condition) pairs, L = {args.num_tokens} generated latents "
          f"per condition, width {args.width}, {args.heads} heads")

    log = training.TrainingLog("stage 3 HypFormer", run / "tb" / f"stage3_{path.stem}", args.steps, tag="stage3/",
                               progress=args.progress)
    for step in range(args.steps):
        idx = torch.randint(len(Zd), (args.batch_size,), device=dev)
        z_gt, c = Zd[idx], Cd[idx]
        z_hat = sample_latents(G, c, args.num_tokens)  # Z_hat_1..Z_hat_L from the frozen G
        z_pred, grad_pred = model(z_hat, c)
        loss = hypformer_loss(z_pred, grad_pred, z_gt, args.lambda_sim, args.lambda_res, args.lambda_c)  # Eqs. 6-8
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()  # Eq. 9
        opt.step()
        sched.step()
        log.step(step, loss, mse_hyplatent=lambda: latent_mse(z_hat[:, 0], z_gt),  # evaluated when logged
                 mse_refined=lambda: latent_mse(z_pred + grad_pred, z_gt))
    log.close()
    history = log.history
    last = {k: v[-1] for k, v in history.items()}
    print(f"final: Eq.9 {last['total']:.3f} = 1e3 x (Eq.6 {last['sim']:.4f} + Eq.7 {last['res']:.4f} + Eq.8 "
          f"{last['c']:.4f}); MSE to Z_gt (normalised latents): one HypLatent sample {last['mse_hyplatent']:.4f}, "
          f"HypFormer {last['mse_refined']:.4f}")
    model, G = model.cpu().eval(), G.cpu()
    if args.check_per_task:  # HypLatent alone vs HypFormer on training conditions, decoded and run
        ae = data["ae"]
        idx, env_tasks = check_conditions(data, args.check_per_task, args.seed)
        z_hat = sample_latents(G, Cn[idx], args.num_tokens)
        with torch.no_grad():
            z_pred, grad_pred = model(z_hat, Cn[idx])
        alone = run_generated(z_hat[:, 0], hl_art, ae, args.suite, env_tasks, episodes=2)
        refined = run_generated(z_pred + grad_pred, hl_art, ae, args.suite, env_tasks, episodes=2)
        history["check"] = {"hyplatent": float(alone.mean()), "hypformer": float(refined.mean()), "n": len(idx)}
        print(f"functional check, {len(idx)} training conditions ({'mean return' if args.suite == 'cheetah-vel' else 'success rate'}): "
              f"HypLatent alone {alone.mean():.2f}, HypFormer {refined.mean():.2f}")
    art = {"format": FORMAT, "suite": args.suite, "settings": artifacts.settings(args), "made_from": made_from,
           "config": asdict(args), "arch": arch, "model": artifacts.cpu_state(model), "num_tokens": args.num_tokens,
           "hyplatent": args.hyplatent, "history": history, "seconds": time.time() - t0}
    artifacts.save_artifact(art, path)
    print(f"stage 3 HypFormer: saved {path} in {art['seconds']:.0f}s")


def load_hypformer(path: str | Path, suite: str, scale: str) -> tuple[HypFormer, dict]:
    art = artifacts.load_artifact(path, FORMAT, ("model", "arch", "num_tokens", "made_from"), suite=suite, scale=scale)
    model = HypFormer(**art["arch"])
    model.load_state_dict(art["model"])
    return model.eval(), art


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
