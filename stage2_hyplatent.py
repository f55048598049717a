"""Stage 2: HypLatent, a conditional adversarial generator of policy latents (paper Sec. III-B, Eqs. 3-5;
DESIGN.md section 6).

The generator G (common.Generator) maps a condition tau_e (MetaWorld: the behaviour embedding h of a
rollout; Cheetah-Vel: the target velocity) and noise n ~ N(0, I) to a latent Z_hat = G(tau_e, n) of the
stage-1 autoencoder. A discriminator F tells autoencoder latents Z from generated ones, and an auxiliary
head Q reconstructs tau_e from F's features of Z_hat:

    V_zeta = 1/N sum_i log(1 - F(Z_hat^i))                       minimised by G      (Eq. 3)
    V_mu   = 1/N sum_i [log F(Z^i) + log(1 - F(Z_hat^i))]         maximised by F      (Eq. 4)
    L_reg  = lambda_reg / N sum_i (Q(F(Z_hat^i)) - tau_e^i)^2     minimised by G, F, Q (Eq. 5)

The authors' code also adds `paired_weight * MSE(G(tau_e, n), Z)` (Z: the latent paired with that
condition) to G's loss, which the paper does not print: `--paired-weight 0` turns it off.
Latents and conditions are normalised per dimension with training statistics saved beside the model.

Writes `runs/<suite>/hyplatent.pt` (every `save_every` steps, and at the end); if a loss becomes NaN the
run stops and the last good checkpoint stays.

    python stage2_hyplatent.py                                    # quick Cheetah-Vel
    python stage2_hyplatent.py --suite metaworld --scale mw-quick
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

import common


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "mw-quick", "paper"] = "quick"
    """sets the defaults of every option left unset (DESIGN section 9)"""
    run_dir: Optional[str] = None
    """reads autoencoder.pt (and behavior_embed.pt for MetaWorld), writes hyplatent.pt (default runs/<suite>)"""
    out: str = "hyplatent.pt"
    """file name of the artifact inside run_dir"""
    seed: int = 1
    steps: Optional[int] = None
    """gradient steps (one discriminator and one generator update each)"""
    batch_size: int = 128
    lr: float = 2e-4
    noise_dim: Optional[int] = None
    """size of n (paper: 128 MetaWorld, 4 Cheetah-Vel)"""
    widths: Optional[tuple[int, ...]] = None
    """generator widths, down then back up (DESIGN: 2048 1024 512 256)"""
    lambda_reg: float = 1.0
    """weight of Eq. 5 (the paper gives none)"""
    paired_weight: float = 1e3
    """weight of the authors' extra MSE(G(tau_e, n), Z) term in G's loss (0 = the paper's losses only)"""
    check_per_task: int = 5
    """functional check at the end: this many training conditions per task, one generated policy each,
    decoded and run for 2 episodes (0 = skip)"""
    save_every: int = 500
    device: str = "auto"
    """where to train: auto (CUDA if available, else CPU), cpu, cuda, ..."""
    threads: int = 2
    progress: bool = True


SCALES = {
    "smoke": dict(steps=40, widths=(64, 32), noise_dim=None),
    "quick": dict(steps=3000, widths=(2048, 1024, 512, 256)),
    "mw-quick": dict(steps=3000, widths=(2048, 1024, 512, 256)),
    "paper": dict(steps=50_000, widths=(2048, 1024, 512, 256)),
}
NOISE_DIM = {"cheetah-vel": 4, "metaworld": 128}


class Discriminator(nn.Module):
    """F: a 3-layer MLP on the (flattened, normalised) latent; `logit` gives realness F = sigmoid(logit),
    `features` feed the auxiliary head Q, a 2-layer MLP back to tau_e (Eq. 5)."""

    def __init__(self, latent_dim: int, cond_dim: int, hidden: int = 512):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2),
                                   nn.Linear(hidden, hidden // 2), nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden // 2, 1)
        self.q = nn.Sequential(nn.Linear(hidden // 2, hidden // 2), nn.LeakyReLU(0.2), nn.Linear(hidden // 2, cond_dim))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.trunk(z)
        return self.head(f).squeeze(-1), f


# The losses take discriminator logits: log F = -softplus(-logit), log(1 - F) = -softplus(logit), exactly.


def generator_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """V_zeta = 1/N sum log(1 - F(Z_hat)), minimised by G."""
    return -F.softplus(fake_logit).mean()  # Eq. 3


def discriminator_objective(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """V_mu = 1/N sum [log F(Z) + log(1 - F(Z_hat))], maximised by F (we minimise its negative)."""
    return (-F.softplus(-real_logit) - F.softplus(fake_logit)).mean()  # Eq. 4


def reg_loss(q_out: torch.Tensor, cond: torch.Tensor, lambda_reg: float) -> torch.Tensor:
    """L_reg = lambda_reg / N sum_i ||Q(F(Z_hat^i)) - tau_e^i||^2."""
    return lambda_reg / len(cond) * (q_out - cond).pow(2).sum()  # Eq. 5


def main(args: Args) -> None:
    common.apply_scale(args, SCALES[args.scale])
    args.noise_dim = args.noise_dim or NOISE_DIM[args.suite]
    args.run_dir = args.run_dir or f"runs/{args.suite}"
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    data = common.training_pairs(args.run_dir, args.suite)
    Z, cond = data["Z"], data["cond"]
    z_mean, z_std = Z.mean(0), Z.std(0).clamp_min(1e-6)
    c_mean, c_std = cond.mean(0), cond.std(0).clamp_min(1e-6)
    Zn, Cn = (Z - z_mean) / z_std, (cond - c_mean) / c_std
    arch = {"cond_dim": cond.shape[1], "noise_dim": args.noise_dim, "latent_dim": Z.shape[1],
            "widths": list(args.widths)}
    dev = common.pick_device(args.device)
    G = common.Generator(**arch).to(dev)
    D = Discriminator(Z.shape[1], cond.shape[1]).to(dev)
    Zd, Cd = Zn.to(dev), Cn.to(dev)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
    print(f"stage 2 HypLatent: {len(Z)} (latent, condition) pairs, latent {Z.shape[1]}, condition "
          f"{cond.shape[1]}, noise {args.noise_dim}; paired-latent term weight {args.paired_weight:g}")

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    path = Path(args.run_dir) / args.out
    writer = SummaryWriter(str(Path(args.run_dir) / "tb" / f"stage2_{path.stem}"))
    history = {k: [] for k in ("step", "g", "d", "reg", "paired", "d_acc", "q_mse")}

    def save(step):
        common.save_artifact({
            "format": common.HYPLATENT_FORMAT, "suite": args.suite, "config": asdict(args), "arch": arch,
            "generator": common.cpu_state(G), "discriminator": common.cpu_state(D), "step": step,
            "latent_mean": z_mean, "latent_std": z_std, "cond_mean": c_mean, "cond_std": c_std,
            "token_dim": data["token_dim"], "history": history, "seconds": time.time() - t0}, path)

    bar = tqdm(range(args.steps), disable=not args.progress, desc="HypLatent")
    last_good = None
    for step in bar:
        idx = torch.randint(len(Zd), (args.batch_size,), device=dev)
        z_real, c = Zd[idx], Cd[idx]
        z_fake = G(c, torch.randn(len(c), args.noise_dim, device=dev))

        # discriminator and Q: maximise Eq. 4, minimise Eq. 5
        real_logit, _ = D(z_real)
        fake_logit, fake_feat = D(z_fake.detach())
        d_obj = discriminator_objective(real_logit, fake_logit)  # Eq. 4
        d_reg = reg_loss(D.q(fake_feat), c, args.lambda_reg)  # Eq. 5
        opt_d.zero_grad(set_to_none=True)
        (-d_obj + d_reg).backward()
        opt_d.step()

        # generator: minimise Eq. 3 + Eq. 5 (+ the authors' paired-latent term)
        fake_logit_g, fake_feat_g = D(z_fake)
        g_loss = generator_loss(fake_logit_g)  # Eq. 3
        g_reg = reg_loss(D.q(fake_feat_g), c, args.lambda_reg)  # Eq. 5
        paired = F.mse_loss(z_fake, z_real)
        opt_g.zero_grad(set_to_none=True)
        (g_loss + g_reg + args.paired_weight * paired).backward()
        opt_g.step()

        losses = [g_loss.item(), d_obj.item(), g_reg.item()]
        if not all(math.isfinite(x) for x in losses):
            msg = (f"error: stage 2: a loss became NaN/inf at step {step} (G {losses[0]}, D {losses[1]}, "
                   f"reg {losses[2]}); ")
            raise SystemExit(msg + (f"kept the last good checkpoint (step {last_good}) in {path}"
                                    if last_good is not None else "no checkpoint was saved"))
        if step % 25 == 0 or step == args.steps - 1:
            d_acc = 0.5 * ((real_logit > 0).float().mean() + (fake_logit < 0).float().mean()).item()
            for k, val in zip(history, (step, losses[0], losses[1], losses[2], paired.item(), d_acc,
                                        g_reg.item() / args.lambda_reg / cond.shape[1] if args.lambda_reg else 0.0)):
                history[k].append(val)
                if k != "step":
                    writer.add_scalar(f"stage2/{k}", val, step)
            bar.set_postfix(G=f"{losses[0]:.3f}", D=f"{losses[1]:.3f}", reg=f"{losses[2]:.3f}",
                            paired=f"{paired.item():.3f}", acc=f"{d_acc:.2f}")
        if (step + 1) % args.save_every == 0:
            save(step + 1)
            last_good = step + 1
    writer.close()
    h = {k: v[-1] for k, v in history.items()}
    print(f"final: Eq.3 (G) {h['g']:.4f}, Eq.4 (D objective) {h['d']:.4f}, Eq.5 (reg) {h['reg']:.4f}, paired MSE "
          f"{h['paired']:.4f}, D accuracy {h['d_acc']:.2f}")
    check = None
    G, D = G.cpu(), D.cpu()
    if args.check_per_task:  # decode generated latents for training conditions and run them
        G.eval()
        ae, _ = common.load_autoencoder(Path(args.run_dir) / "autoencoder.pt", args.suite)
        idx, env_tasks, names = common.check_conditions(data, args.check_per_task, args.seed)
        with torch.no_grad():
            z = G(Cn[idx], torch.randn(len(idx), args.noise_dim))
        gen_stats = {"latent_mean": z_mean, "latent_std": z_std}
        score = common.run_generated(z, gen_stats, ae, args.suite, env_tasks, episodes=2)
        truth = common.run_generated(Zn[idx], gen_stats, ae, args.suite, env_tasks, episodes=2)
        check = {"generated": float(score.mean()), "paired_decoded": float(truth.mean()), "n": len(idx)}
        print(f"functional check, {len(idx)} training conditions: generated policies {check['generated']:.2f}, "
              f"the decoded checkpoints they were paired with {check['paired_decoded']:.2f} "
              f"({'mean return' if args.suite == 'cheetah-vel' else 'success rate'})")
    history["check"] = check
    save(args.steps)
    print(f"stage 2 HypLatent: saved {path} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main(tyro.cli(Args))
