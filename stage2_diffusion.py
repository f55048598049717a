"""Stage 2, the diffusion alternative: Make-An-Agent's conditional latent diffusion (MAA; Liang et al., 2024),
the generator AMT-Hyp is compared with in the paper's Tables I-III (DESIGN.md section 6).

MAA generates the same stage-1 latents from the same condition tau_e as HypLatent (MetaWorld: the behaviour
embedding h of a rollout; Cheetah-Vel: the target velocity), but by denoising: a 1D convolutional UNet over
the latent Z [2 tokens, token_dim] (as in MAA's code: token_dim values as channels, the 2 tokens as the
sequence the convolutions run along), conditioned by FiLM on an embedding of the diffusion step and of
tau_e, predicts the clean latent x_0 from a noised one x_t:

    abar_t = prod_{s <= t} (1 - beta_s),  beta_t from the squared-cosine schedule      (Nichol & Dhariwal, 2021)
    x_t    = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,    eps ~ N(0, I)                   forward process q(x_t | x_0)
    L      = E_{t, eps} || f(x_t, t, tau_e) - x_0 ||^2                                   MAA's loss (x_0-prediction)
    x_t'   = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
                                                                                       DDIM step (eta = 0), t' < t

x0_hat is clipped to [-1, 1] before the step and the noise re-estimated from the clipped x0_hat (diffusers'
`use_clipped_model_output=True`); MAA's diffusers default re-estimates it from the unclipped prediction. The
two differ only at steps where the prediction leaves [-1, 1], and the last step returns the clipped x0_hat
in both.

MAA's settings (its policy_generator/config/policy_generator.yaml; used at paper scale): down widths
512/1024/2048, kernel 5, 8 groups, step embedding 128; 100 training steps, 10 DDIM sampling steps, samples
clipped to [-1, 1]; AdamW lr 1e-4, betas (0.95, 0.999), weight decay 3e-4, cosine schedule after 500 warm-up
steps, batch 128; sampling uses an EMA of the weights with the constants of MAA's config.yaml (the EMA block
is commented out in policy_generator.yaml). The quick scale keeps all of these but the widths, 64/128/256
(5.0M parameters, near the 6.6M of HypLatent's generator; MAA's widths would take a 2-core CPU hours for
3000 steps). The levels keep the sequence length 2 (MAA's stride-2 down/up convolutions, padding 1, keep
it too): the "UNet" is the stack of levels with a skip from each level down to the same level up.

Differences from MAA's published code (DESIGN.md section 6 lists each, with the file and function of
theirs): a third up level takes the first down level's output (MAA has two up levels, and its first-level
skip is pushed but never used); no down/up-sampling convolutions; the condition passes an MLP before FiLM
(MAA feeds it raw); 3000 gradient steps where MAA trains 3000 epochs (about 422 epochs over quick
Cheetah-Vel's 910 pairs, 1,297 over quick MetaWorld's 296); warm-up and cosine decay as MAA's configs name
them, where its train.py runs cosine warm restarts; sampling with the EMA, where MAA saves and evaluates the
raw weights (its best-validation checkpoint); and different latent and condition normalisation.

Latents are scaled to [-1, 1] per dimension with the training set's range (so that clipping keeps every
training latent), and conditions are standardised; the statistics are saved in the artifact, in the form
`latents.decode_generated` reads (`latent_mean`, `latent_std`).

Writes `<run_dir>/diffusion.pt` once, at the end; every `save_every` steps the training state goes to
`diffusion.partial.pt`, from which a re-run resumes. The evaluation imports `load_diffusion` and
`diffusion_sample` from this file.

    python stage2_diffusion.py                                    # quick Cheetah-Vel
    python stage2_diffusion.py --suite metaworld
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
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
    """reads autoencoder.pt (and behavior_embed.pt for MetaWorld), writes diffusion.pt (default:
    runs/<suite>-<scale>)"""
    out: str = "diffusion.pt"
    """file name of the artifact inside run_dir"""
    seed: int = 1
    steps: int = 3000
    """gradient steps"""
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 3e-4
    warmup: int = 500
    """linear warm-up steps of the learning rate, then a cosine decay to 0"""
    widths: tuple[int, ...] = (64, 128, 256)
    """channels of the UNet's levels, down (MAA: 512, 1024, 2048)"""
    kernel: int = 5
    groups: int = 8
    """GroupNorm groups"""
    step_embed: int = 128
    """size of the diffusion-step embedding (the condition's embedding has the same size)"""
    train_timesteps: int = 100
    sample_steps: int = 10
    """DDIM steps at sampling"""
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


SCALES = {"smoke": dict(steps=40, widths=(16, 32), warmup=10, save_every=10),
          "paper": dict(steps=50_000, widths=(512, 1024, 2048))}
FORMAT = "amt-hyp/diffusion v1"
PARTIAL_FORMAT = "amt-hyp/diffusion-partial v1"
EMA_POWER, EMA_MAX = 0.75, 0.9999  # MAA's EMA: decay 1 - (1 + step)^-0.75, at most 0.9999


# ----------------------------------------------------------------------------------------------------
# The noise schedule and the DDIM sampler
# ----------------------------------------------------------------------------------------------------


def squared_cosine_alphas_cumprod(T: int, max_beta: float = 0.999) -> torch.Tensor:
    """abar_t for t = 0 .. T-1: beta_t = min(1 - f(t + 1) / f(t), max_beta), f(t) = cos((t/T + 0.008) /
    1.008 * pi/2)^2 (the squared-cosine schedule; it has no beta_start/beta_end)."""
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def ddim_timesteps(T: int, n: int) -> list[tuple[int, int]]:
    """(t, t') pairs of an n-step DDIM pass over T training steps, evenly spaced from the start:
    (90, 80), (80, 70), ..., (0, -1) for T = 100, n = 10; t' = -1 is the clean end (abar = 1)."""
    ts = list(range(0, T, T // n))[::-1]
    return [(t, max(t - T // n, -1)) for t in ts]


def noised(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    a = abar[t].view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps  # forward process q(x_t | x_0)


def ddim_step(x_t: torch.Tensor, x0_hat: torch.Tensor, abar_t: float, abar_prev: float) -> torch.Tensor:
    """One deterministic DDIM step from t to t' given the predicted clean sample, clipped to [-1, 1] before the
    noise is re-estimated from it (see the module docstring for how this differs from MAA's sampler)."""
    x0_hat = x0_hat.clamp(-1, 1)
    eps = (x_t - abar_t ** 0.5 * x0_hat) / (1 - abar_t) ** 0.5
    return abar_prev ** 0.5 * x0_hat + (1 - abar_prev) ** 0.5 * eps  # DDIM, eta = 0


def denoising_loss(model: nn.Module, x0: torch.Tensor, cond: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """MAA's loss: noise x_0 to a random step t, predict x_0 back (mean squared error)."""
    t = torch.randint(0, len(abar), (len(x0),), device=x0.device)
    x_t = noised(x0, t, torch.randn_like(x0), abar)
    return F.mse_loss(model(x_t, t, cond), x0)  # L = E || f(x_t, t, tau_e) - x_0 ||^2


# ----------------------------------------------------------------------------------------------------
# The conditional 1D UNet
# ----------------------------------------------------------------------------------------------------


def conv_block(c_in: int, c_out: int, kernel: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMBlock(nn.Module):
    """Two conv blocks with a residual connection; between them the condition embedding sets a per-channel
    scale and bias (FiLM)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv1, self.conv2 = conv_block(c_in, c_out, kernel, groups), conv_block(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(c).unsqueeze(-1).chunk(2, dim=1)
        return self.conv2(scale * self.conv1(x) + bias) + self.skip(x)


class LatentUNet(nn.Module):
    """f(x_t, t, tau_e) -> x0_hat over latents [B, tokens, token_dim] (convolved as [B, token_dim, tokens]):
    levels of `widths` (two FiLM blocks each) down, two middle blocks, and back up, each level up taking the
    output of the same level down beside its input. Unlike MAA's `ConditionalUnet1D`: one up level more (MAA
    has len(widths) - 1 and never uses its first level's output), no down/up-sampling convolutions between
    levels, and `cond_mlp` on the condition before FiLM (DESIGN.md section 6)."""

    def __init__(self, token_dim: int, cond_dim: int, widths=(64, 128, 256), kernel: int = 5, groups: int = 8,
                 step_embed: int = 128):
        super().__init__()
        self.step_embed = step_embed
        self.step_mlp = nn.Sequential(nn.Linear(step_embed, 4 * step_embed), nn.Mish(), nn.Linear(4 * step_embed, step_embed))
        self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, step_embed), nn.Mish(), nn.Linear(step_embed, step_embed))
        e, w = 2 * step_embed, list(widths)
        block = lambda i, o: FiLMBlock(i, o, e, kernel, groups)  # noqa: E731
        self.down = nn.ModuleList([nn.ModuleList([block(([token_dim] + w)[i], w[i]), block(w[i], w[i])])
                                   for i in range(len(w))])
        self.mid = nn.ModuleList([block(w[-1], w[-1]), block(w[-1], w[-1])])
        self.up = nn.ModuleList([nn.ModuleList([block(2 * w[i], w[max(i - 1, 0)]), block(w[max(i - 1, 0)], w[max(i - 1, 0)])])
                                 for i in reversed(range(len(w)))])
        self.out = nn.Sequential(conv_block(w[0], w[0], kernel, groups), nn.Conv1d(w[0], token_dim, 1))

    def embed_step(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embedding of the diffusion step, then an MLP."""
        half = self.step_embed // 2
        freq = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / (half - 1))
        angle = t.float()[:, None] * freq[None]
        return self.step_mlp(torch.cat([angle.sin(), angle.cos()], dim=-1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = torch.cat([self.embed_step(t), self.cond_mlp(cond)], dim=-1)
        x, skips = x.transpose(1, 2), []  # [B, token_dim, tokens]
        for a, b in self.down:
            x = b(a(x, c), c)
            skips.append(x)
        for blk in self.mid:
            x = blk(x, c)
        for a, b in self.up:
            x = b(a(torch.cat([x, skips.pop()], dim=1), c), c)
        return self.out(x).transpose(1, 2)


@torch.no_grad()
def diffusion_sample(model: LatentUNet, art: dict, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents [n, tokens * token_dim] in the artifact's normalised space (`decode_generated` maps them to
    policies) for raw conditions `cond` [n, c]: DDIM from pure noise in `sample_steps` steps."""
    c = (cond - art["cond_mean"]) / art["cond_std"]
    abar = squared_cosine_alphas_cumprod(art["settings"]["train_timesteps"])
    x = torch.randn(len(c), *art["latent_shape"], generator=generator)
    for t, prev in ddim_timesteps(len(abar), art["settings"]["sample_steps"]):
        x0_hat = model(x, torch.full((len(c),), t), c)
        x = ddim_step(x, x0_hat, float(abar[t]), float(abar[prev]) if prev >= 0 else 1.0)
    return x.flatten(1)


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def ema_decay(step: int) -> float:
    return 0.0 if step <= 0 else min(EMA_MAX, 1 - (1 + step) ** -EMA_POWER)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, weight by weight; buffers copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then a cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def validate(args: Args) -> None:
    common.check_options(args, positive=("steps", "batch_size", "lr", "kernel", "groups", "step_embed",
                                         "train_timesteps", "sample_steps", "save_every", "threads"),
                         nonnegative=("weight_decay", "warmup", "check_per_task"), seeds=("seed",))
    if not args.widths or min(args.widths) <= 0 or any(w % args.groups for w in args.widths):
        raise SystemExit(f"error: --widths must be positive multiples of --groups {args.groups}; got {args.widths}")
    if args.train_timesteps % args.sample_steps:
        raise SystemExit(f"error: --sample-steps {args.sample_steps} must divide --train-timesteps {args.train_timesteps}")
    if args.step_embed % 2 or args.step_embed < 4:
        raise SystemExit(f"error: --step-embed must be even and at least 4; got {args.step_embed}")
    if args.kernel % 2 == 0:
        raise SystemExit(f"error: --kernel must be odd; got {args.kernel}")


def main(args: Args) -> None:
    validate(args)
    dev = common.pick_device(args.device)
    run, lock = artifacts.open_run_dir(args.run_dir, "stage 2 (diffusion)")  # noqa: F841 - held till exit
    path, partial = run / args.out, (run / args.out).with_suffix(".partial.pt")
    data = load_inputs(run, args.suite, args.scale)
    settings = artifacts.settings(args)
    if args.skip_done and artifacts.up_to_date(path, FORMAT, settings, data["made_from"]):
        print(f"stage 2 diffusion: {path} is up to date (same settings, inputs and code); skipped")
        return
    shape = (2, data["token_dim"])
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    Z, cond = data["Z"], data["cond"]
    lo, hi = Z.min(0).values, Z.max(0).values
    z_mean, z_std = (hi + lo) / 2, ((hi - lo) / 2).clamp_min(1e-6)  # [-1, 1] per dimension
    c_mean, c_std = cond.mean(0), cond.std(0).clamp_min(1e-6)
    X, C = ((Z - z_mean) / z_std).view(-1, *shape).to(dev), ((cond - c_mean) / c_std).to(dev)
    arch = {"token_dim": shape[1], "cond_dim": cond.shape[1], "widths": list(args.widths), "kernel": args.kernel,
            "groups": args.groups, "step_embed": args.step_embed}
    model = LatentUNet(**arch).to(dev)
    ema = LatentUNet(**arch).to(dev).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.warmup, args.steps))
    abar = squared_cosine_alphas_cumprod(args.train_timesteps).to(dev)
    states = {"model": model, "ema": ema, "opt": opt, "sched": sched}  # what a partial state holds
    n_params = sum(p.numel() for p in model.parameters())
    print(f"stage 2 diffusion: {len(Z)} (latent, condition) pairs, latent {shape[0]} x {shape[1]}, condition "
          f"{cond.shape[1]}; UNet widths {list(args.widths)}, {n_params / 1e6:.2f}M parameters")

    log = training.TrainingLog("stage 2 diffusion", run / "tb" / f"stage2_{path.stem}", args.steps,
                               tag="stage2_diffusion/", progress=args.progress, partial=partial,
                               partial_format=PARTIAL_FORMAT, settings=settings, made_from=data["made_from"],
                               states=states, save_every=args.save_every)
    for step in range(log.start, args.steps):
        idx = torch.randint(len(X), (args.batch_size,), device=dev)
        loss = denoising_loss(model, X[idx], C[idx], abar)  # L = E || f(x_t, t, tau_e) - x_0 ||^2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema_update(ema, model, ema_decay(step))  # the weights sampling uses
        log.step(step, {"loss": loss}, lr=sched.get_last_lr()[0])
    log.close()
    history = log.history
    print(f"final: denoising loss {history['loss'][-1]:.4f} (x_0-prediction MSE, latents in [-1, 1])")
    art = {"format": FORMAT, "suite": args.suite, "settings": settings, "made_from": data["made_from"],
           "config": asdict(args), "arch": arch, "step": args.steps, "latent_mean": z_mean, "latent_std": z_std,
           "latent_shape": list(shape), "cond_mean": c_mean, "cond_std": c_std, "token_dim": data["token_dim"],
           "history": history, "model": artifacts.cpu_state(ema)}
    ema = ema.cpu().eval()
    if args.check_per_task:  # decode sampled latents for training conditions and run them
        idx, env_tasks = check_conditions(data, args.check_per_task, args.seed)
        z = diffusion_sample(ema, art, cond[idx], torch.Generator().manual_seed(args.seed))
        score = run_generated(z, art, data["ae"], args.suite, env_tasks, episodes=2)
        truth = run_generated(((Z[idx] - z_mean) / z_std), art, data["ae"], args.suite, env_tasks, episodes=2)
        history["check"] = {"generated": float(score.mean()), "paired_decoded": float(truth.mean()), "n": len(idx)}
        print(f"functional check, {len(idx)} training conditions: generated policies {score.mean():.2f}, "
              f"the decoded checkpoints of those conditions {truth.mean():.2f} "
              f"({'mean return' if args.suite == 'cheetah-vel' else 'success rate'})")
    art["seconds"] = time.time() - t0
    artifacts.save_artifact(art, path)  # the finished artifact, written once
    partial.unlink(missing_ok=True)
    print(f"stage 2 diffusion: saved {path} in {art['seconds']:.0f}s")


def load_diffusion(path, suite: str, scale: str) -> tuple[LatentUNet, dict]:
    """The trained model (its EMA weights), frozen in eval mode, and its artifact."""
    art = artifacts.load_artifact(path, FORMAT, ("model", "arch", "latent_mean", "latent_std", "cond_mean", "cond_std",
                                                 "latent_shape", "step", "settings", "made_from"), suite=suite, scale=scale)
    if art["step"] != art["settings"]["steps"]:
        raise SystemExit(f"error: {path}: trained {art['step']} of {art['settings']['steps']} steps (unfinished)")
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: the global stream stays as it was
        model = LatentUNet(**art["arch"])
    model.load_state_dict(art["model"])
    return model.eval().requires_grad_(False), art


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
