"""Stage 2: HypLatent, a conditional adversarial generator of policy latents (paper Sec. III-B, Eqs. 3-5;
DESIGN.md section 6).

The generator G maps a condition tau_e (MetaWorld: the behaviour embedding h of a rollout; Cheetah-Vel:
the target velocity) and noise n ~ N(0, I) to a latent Z_hat = G(tau_e, n) of the stage-1 autoencoder.
A discriminator (the paper's F; `D` in the code, since F is torch.nn.functional) tells autoencoder
latents Z from generated ones, and an auxiliary head Q reconstructs tau_e from its features of Z_hat:

    V_zeta = 1/N sum_i log(1 - F(Z_hat^i))                       minimised by G      (Eq. 3)
    V_mu   = 1/N sum_i [log F(Z^i) + log(1 - F(Z_hat^i))]         maximised by F      (Eq. 4)
    L_reg  = lambda_reg / N sum_i (Q(F(Z_hat^i)) - tau_e^i)^2     minimised by G, F, Q (Eq. 5)

The authors' code also adds `paired_weight * MSE(G(tau_e, n), Z)` (Z: the latent paired with that
condition) to G's loss, which the paper does not print: `--paired-weight 0` turns it off.
Latents and conditions are normalised per dimension with training statistics saved beside the model.

Writes `<run_dir>/hyplatent.pt` once, at the end; every `save_every` steps the training state goes to
`hyplatent.partial.pt`, from which a re-run resumes. If a loss becomes NaN the run stops and the partial
state of the last good step stays. Stage 3 and evaluation import `Generator` and `load_generator` from this
file; the (Z, tau_e) pairs and the decoding of generated latents are in latents.py.

    python stage2_hyplatent.py                                    # quick Cheetah-Vel
    python stage2_hyplatent.py --suite metaworld
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


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads autoencoder.pt (and behavior_embed.pt for MetaWorld), writes hyplatent.pt (default:
    runs/<suite>-<scale>)"""
    out: str = "hyplatent.pt"
    """file name of the artifact inside run_dir"""
    seed: int = 1
    steps: int = 3000
    """gradient steps (one discriminator and one generator update each)"""
    batch_size: int = 128
    lr: float = 2e-4
    noise_dim: int = 4
    """size of n (paper: 128 MetaWorld, 4 Cheetah-Vel; 0 = a deterministic regressor of Z on tau_e)"""
    widths: tuple[int, ...] = (2048, 1024, 512, 256)
    """generator widths, down then back up (the authors' code)"""
    lambda_reg: float = 1.0
    """weight of Eq. 5 (the paper gives none)"""
    paired_weight: float = 1e3
    """weight of the authors' extra MSE(G(tau_e, n), Z) term in G's loss (0 = the paper's losses only)"""
    adversarial: bool = True
    """train the discriminator and use Eqs. 3-5 in G's loss; --no-adversarial: G learns from the paired term
    alone, no discriminator (the component ablation, pipeline.sh components)"""
    check_per_task: int = 5
    """functional check at the end: this many training conditions per task, one generated policy each,
    decoded and run for 2 episodes (0 = skip)"""
    save_every: int = 500
    """steps between saves of the resumable training state"""
    skip_done: bool = False
    """do nothing if the artifact was made with these settings from these inputs (pipeline.sh sets it)"""
    device: str = "auto"
    """where to train: auto (CUDA if available, else CPU), cpu, cuda, ..."""
    threads: int = 2
    progress: bool = True


SCALES = {"smoke": dict(steps=40, widths=(64, 32), save_every=10), "paper": dict(steps=50_000),
          **{f"metaworld:{s}": dict(noise_dim=128) for s in ("smoke", "quick", "paper")}}
FORMAT = "amt-hyp/hyplatent v2"
PARTIAL_FORMAT = "amt-hyp/hyplatent-partial v2"


def _block(i: int, o: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.GELU(), nn.Dropout(dropout))


class Generator(nn.Module):
    """G(tau_e, n) -> Z_hat: the paper's "1D UNet", as in the authors' code an MLP encoder-decoder with
    additive skip connections (widths 2048, 1024, 512, 256 and back; BatchNorm, GELU, dropout 0.1).
    Works on normalised conditions and latents (statistics saved in the artifact). Stage 3 and evaluation
    use it frozen, in eval mode (BatchNorm's running statistics, no dropout)."""

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


class Discriminator(nn.Module):
    """The paper's F: a 3-layer MLP on the (flattened, normalised) latent; `logit` gives realness
    F = sigmoid(logit), `features` feed the auxiliary head Q, a 2-layer MLP back to tau_e (Eq. 5)."""

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


def discriminator_step(D: Discriminator, opt_d, z_real: torch.Tensor, z_fake: torch.Tensor, c: torch.Tensor,
                       lambda_reg: float) -> tuple[torch.Tensor, ...]:
    """Update D and its head Q: maximise Eq. 4, minimise Eq. 5. `z_fake` is detached: G does not move."""
    real_logit, _ = D(z_real)
    fake_logit, fake_feat = D(z_fake.detach())
    d_obj = discriminator_objective(real_logit, fake_logit)  # Eq. 4
    d_reg = reg_loss(D.q(fake_feat), c, lambda_reg)  # Eq. 5
    opt_d.zero_grad(set_to_none=True)
    (-d_obj + d_reg).backward()
    opt_d.step()
    return d_obj, real_logit, fake_logit


def generator_step(D: Discriminator, opt_g, z_fake: torch.Tensor, z_paired: torch.Tensor, c: torch.Tensor,
                   lambda_reg: float, paired_weight: float) -> tuple[torch.Tensor, ...]:
    """Update G (opt_g holds G's parameters only): minimise Eq. 3 + Eq. 5 (+ the authors' paired term)."""
    fake_logit, fake_feat = D(z_fake)
    g_loss = generator_loss(fake_logit)  # Eq. 3
    g_reg = reg_loss(D.q(fake_feat), c, lambda_reg)  # Eq. 5
    paired = F.mse_loss(z_fake, z_paired)
    opt_g.zero_grad(set_to_none=True)
    (g_loss + g_reg + paired_weight * paired).backward()
    opt_g.step()
    return g_loss, g_reg, paired


def paired_only_step(opt_g, z_fake: torch.Tensor, z_paired: torch.Tensor, paired_weight: float) -> torch.Tensor:
    """--no-adversarial: minimise the authors' paired term alone (no Eqs. 3-5); its minimiser is
    E[Z | tau_e], so with noise_dim 0 this is a plain regressor of the latent on the condition."""
    paired = F.mse_loss(z_fake, z_paired)
    opt_g.zero_grad(set_to_none=True)
    (paired_weight * paired).backward()
    opt_g.step()
    return paired


# Two numbers to follow during training, not losses.


def discriminator_accuracy(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> float:
    """How often F tells Z (logit > 0) from Z_hat (logit < 0) in a batch."""
    return 0.5 * ((real_logit > 0).float().mean() + (fake_logit < 0).float().mean()).item()


def q_error(reg: torch.Tensor, lambda_reg: float, cond_dim: int) -> float:
    """Q's squared error per condition dimension: Eq. 5 without its weight (0 when the weight is 0)."""
    return reg.item() / lambda_reg / cond_dim if lambda_reg else 0.0


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def validate(args: Args) -> None:
    common.check_options(args, positive=("steps", "batch_size", "lr", "save_every", "threads"),
                         nonnegative=("noise_dim", "lambda_reg", "paired_weight", "check_per_task"), seeds=("seed",))
    if not args.adversarial and args.paired_weight == 0:
        raise SystemExit("error: --no-adversarial --paired-weight 0 leaves the generator no loss")
    if len(args.widths) < 2 or min(args.widths) <= 0:
        raise SystemExit(f"error: --widths needs at least two positive widths; got {args.widths}")


def main(args: Args) -> None:
    validate(args)
    dev = common.pick_device(args.device)
    run, lock = artifacts.open_run_dir(args.run_dir, "stage 2")  # noqa: F841 - the lock is held till exit
    path, partial = run / args.out, (run / args.out).with_suffix(".partial.pt")
    data = load_inputs(run, args.suite, args.scale)
    # the default --adversarial is left out of the recorded settings: only a departure from Eqs. 3-5 is named
    settings = artifacts.settings(args, ignore=("adversarial",) if args.adversarial else ())
    if args.skip_done and artifacts.up_to_date(path, FORMAT, settings, data["made_from"]):
        print(f"stage 2 HypLatent: {path} is up to date (same settings, inputs and code); skipped")
        return
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    Z, cond = data["Z"], data["cond"]
    z_mean, z_std = Z.mean(0), Z.std(0).clamp_min(1e-6)
    c_mean, c_std = cond.mean(0), cond.std(0).clamp_min(1e-6)
    Zn, Cn = (Z - z_mean) / z_std, (cond - c_mean) / c_std
    arch = {"cond_dim": cond.shape[1], "noise_dim": args.noise_dim, "latent_dim": Z.shape[1],
            "widths": list(args.widths)}
    G, D = Generator(**arch).to(dev), Discriminator(Z.shape[1], cond.shape[1]).to(dev)
    Zd, Cd = Zn.to(dev), Cn.to(dev)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
    states = {"generator": G, "discriminator": D, "opt_g": opt_g, "opt_d": opt_d}  # what a partial state holds
    print(f"stage 2 HypLatent: {len(Z)} (latent, condition) pairs, latent {Z.shape[1]}, condition "
          f"{cond.shape[1]}, noise {args.noise_dim}; paired-latent term weight {args.paired_weight:g}"
          + ("" if args.adversarial else "; no discriminator (--no-adversarial): the paired term alone"))

    log = training.TrainingLog("stage 2 HypLatent", run / "tb" / f"stage2_{path.stem}", args.steps, tag="stage2/",
                               progress=args.progress, partial=partial, partial_format=PARTIAL_FORMAT,
                               settings=settings, made_from=data["made_from"], states=states, save_every=args.save_every)
    for step in range(log.start, args.steps):
        idx = torch.randint(len(Zd), (args.batch_size,), device=dev)
        z_real, c = Zd[idx], Cd[idx]
        z_fake = G(c, torch.randn(len(c), args.noise_dim, device=dev))  # Z_hat = G(tau_e, n)
        if args.adversarial:
            d_obj, real_logit, fake_logit = discriminator_step(D, opt_d, z_real, z_fake, c, args.lambda_reg)  # Eqs. 4, 5
            g_loss, g_reg, paired = generator_step(D, opt_g, z_fake, z_real, c, args.lambda_reg,
                                                   args.paired_weight)  # Eqs. 3, 5 (+ the paired term)
        else:  # --no-adversarial: the paired term alone
            paired = paired_only_step(opt_g, z_fake, z_real, args.paired_weight)
            g_loss = d_obj = g_reg = torch.zeros(())
        log.step(step, {"g": g_loss, "d": d_obj, "reg": g_reg, "paired": paired},
                 d_acc=lambda: discriminator_accuracy(real_logit, fake_logit) if args.adversarial else float("nan"),
                 q_mse=lambda: q_error(g_reg, args.lambda_reg, cond.shape[1]))  # evaluated when logged
    log.close()
    history = log.history
    last = {k: v[-1] for k, v in history.items()}
    print(f"final: Eq.3 (G) {last['g']:.4f}, Eq.4 (D objective) {last['d']:.4f}, Eq.5 (reg) {last['reg']:.4f}, "
          f"paired MSE {last['paired']:.4f}, D accuracy {last['d_acc']:.2f}")
    art = {"format": FORMAT, "suite": args.suite, "settings": settings, "made_from": data["made_from"],
           "config": asdict(args), "arch": arch, "step": args.steps, "latent_mean": z_mean, "latent_std": z_std,
           "cond_mean": c_mean, "cond_std": c_std, "token_dim": data["token_dim"], "history": history}
    G, D = G.cpu().eval(), D.cpu()
    if args.check_per_task:  # decode generated latents for training conditions and run them
        ae = data["ae"]
        idx, env_tasks = check_conditions(data, args.check_per_task, args.seed)
        with torch.no_grad():
            z = G(Cn[idx], torch.randn(len(idx), args.noise_dim))
        score = run_generated(z, art, ae, args.suite, env_tasks, episodes=2)
        truth = run_generated(Zn[idx], art, ae, args.suite, env_tasks, episodes=2)
        history["check"] = {"generated": float(score.mean()), "paired_decoded": float(truth.mean()), "n": len(idx)}
        print(f"functional check, {len(idx)} training conditions: generated policies {score.mean():.2f}, "
              f"the decoded checkpoints they were paired with {truth.mean():.2f} "
              f"({'mean return' if args.suite == 'cheetah-vel' else 'success rate'})")
    art |= {"generator": artifacts.cpu_state(G), "discriminator": artifacts.cpu_state(D), "seconds": time.time() - t0}
    artifacts.save_artifact(art, path)  # the finished artifact, written once
    partial.unlink(missing_ok=True)
    print(f"stage 2 HypLatent: saved {path} in {art['seconds']:.0f}s")


def load_generator(path: str | Path, suite: str, scale: str) -> tuple[Generator, dict]:
    """The trained generator, frozen in eval mode, and its artifact (normalisation statistics included).
    Refuses an artifact that records fewer steps than it was asked to train."""
    art = artifacts.load_artifact(path, FORMAT, ("generator", "arch", "latent_mean", "latent_std", "cond_mean",
                                              "cond_std", "step", "settings", "made_from"), suite=suite, scale=scale)
    if art["step"] != art["settings"]["steps"]:
        raise SystemExit(f"error: {path}: trained {art['step']} of {art['settings']['steps']} steps (unfinished)")
    G = Generator(**art["arch"])
    G.load_state_dict(art["generator"])
    return G.eval().requires_grad_(False), art


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
