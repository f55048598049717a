"""Benchmark (not a test): how long `bash pipeline.sh paper` and `bash pipeline.sh mw-paper` would take on
this machine. Times a few hundred training steps of every stage at the paper's sizes, with each stage's
own models and losses on synthetic data of the right shapes (stage 0: real SAC steps in the simulator),
and multiplies by the step counts of the paper scale. Stage 0's experts are independent runs after the
parent, so they divide over the cores given by `--cores` (or a job array, slurm/); stages 1-3
train in one process (a GPU makes them much faster: not measured here).

    python benchmarks/paper_scale.py --steps 300 --cores 2 64
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import stage0_collect_sac as s0  # noqa: E402
import stage1_autoencoder as s1  # noqa: E402
import stage1_behavior_embed as s1b  # noqa: E402
import stage2_diffusion as sd  # noqa: E402
import stage2_hyplatent as s2  # noqa: E402
import stage3_hypformer as s3  # noqa: E402


@dataclass
class Args:
    steps: int = 300
    """training steps timed per stage (stage 0: SAC steps after a short warm-up)"""
    cores: list[int] = field(default_factory=lambda: [2, 16, 64])
    """core counts to project stage 0 onto (its experts run in parallel)"""
    threads: int = 1
    """torch threads while timing"""


def per_step(fn, steps: int, warmup: int = 10) -> float:
    fn(warmup)  # allocation, first-call costs
    t = time.perf_counter()
    fn(steps)
    return (time.perf_counter() - t) / steps


def sac_seconds_per_step(suite: str, steps: int) -> tuple[float, float]:
    """Seconds per SAC step (environment step + update, paper critic width) and per checkpoint episode."""
    a = common.scale_defaults(s0.Args, s0.SCALES, suite, "paper")
    a = replace(a, learning_starts=0, save_every=1e9, demo_episodes=0)
    task = 1.35 if suite == "cheetah-vel" else "door-open-v3"
    spec = common.suite_spec(suite)
    agent = s0.new_agent(a, spec["obs_dim"], spec["act_dim"], [a.seed])  # one expert: a 1-member ensemble
    with tempfile.TemporaryDirectory() as tmp:
        def train(n):
            s0.run_sac(a, agent, [task], [a.seed], total_steps=n, checkpoints=[], from_parent=True, tags=["bench"],
                       state_path=Path(tmp) / "none.partial.pt", made_from={})
        sac = per_step(train, steps)
    env = s0.make_env(a, task, seed=1)
    t = time.perf_counter()
    common.run_lockstep(agent["actor"].flat(0)[None], [env], spec, record=True)
    return sac, time.perf_counter() - t


def autoencoder_step(suite: str, args_batch: int, token_dim: int):
    spec = common.suite_spec(suite)
    model = s1.PolicyAutoencoder(spec, token_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args_batch, common.num_params(spec))

    def run(n):
        for _ in range(n):
            loss = s1.autoencoder_loss(model(x, 0.001, 0.01), x)  # Eq. 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def embed_step(batch: int):
    spec = common.suite_spec("metaworld")
    phi = s1b.Phi(common.traj_dim(spec["obs_dim"], spec["act_dim"]))
    psi = s1b.Psi(3 * spec["obs_dim"])
    W = torch.nn.Parameter(torch.eye(128))
    opt = torch.optim.Adam([*phi.parameters(), *psi.parameters(), W], lr=1e-4)
    traj, post = torch.randn(batch, common.traj_dim(39, 4)), torch.randn(batch, 3 * 39)

    def run(n):
        for _ in range(n):
            loss = s1b.behaviour_loss(phi(traj), psi(post), W)  # Eq. 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def hyplatent_step(cond_dim: int, noise_dim: int, latent_dim: int, batch: int):
    G, D = s2.Generator(cond_dim, noise_dim, latent_dim), s2.Discriminator(latent_dim, cond_dim)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    z, c = torch.randn(batch, latent_dim), torch.randn(batch, cond_dim)

    def run(n):
        for _ in range(n):
            fake = G(c, torch.randn(batch, noise_dim))
            s2.discriminator_step(D, opt_d, z, fake, c, 1.0)  # Eqs. 4, 5
            s2.generator_step(D, opt_g, fake, z, c, 1.0, 1e3)  # Eqs. 3, 5 + paired term
    return run


def diffusion_step(a, cond_dim: int, token_dim: int, batch: int):
    """MAA's UNet at `a`'s widths on latents of 2 tokens, AdamW as stage2_diffusion.py."""
    model = sd.LatentUNet(token_dim, cond_dim, a.widths, a.kernel, a.groups, a.step_embed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.95, 0.999), weight_decay=a.weight_decay)
    abar = sd.squared_cosine_alphas_cumprod(a.train_timesteps)
    x0, c = torch.rand(batch, 2, token_dim) * 2 - 1, torch.randn(batch, cond_dim)

    def run(n):
        for _ in range(n):
            loss = sd.denoising_loss(model, x0, c, abar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def hypformer_step(cond_dim: int, noise_dim: int, latent_dim: int, batch: int, tokens: int):
    """A stage-3 step: `tokens` samples per condition from the frozen generator, then HypFormer's step."""
    G = s2.Generator(cond_dim, noise_dim, latent_dim).eval().requires_grad_(False)
    model = s3.HypFormer(latent_dim, cond_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    c, z = torch.randn(batch, cond_dim), torch.randn(batch, latent_dim)

    def run(n):
        for _ in range(n):
            with torch.no_grad():
                z_hat = s3.sample_latents(G, c, tokens)
            z_pred, grad_pred = model(z_hat, c)
            loss = s3.hypformer_loss(z_pred, grad_pred, z)["total"]  # Eq. 9
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def fmt_time(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    for suite in ("cheetah-vel", "metaworld"):
        a0 = common.scale_defaults(s0.Args, s0.SCALES, suite, "paper")
        a1 = common.scale_defaults(s1.Args, s1.SCALES, suite, "paper")
        a2 = common.scale_defaults(s2.Args, s2.SCALES, suite, "paper")
        a3 = common.scale_defaults(s3.Args, s3.SCALES, suite, "paper")
        sac, episode = sac_seconds_per_step(suite, args.steps)
        child = a0.first_checkpoint + (a0.num_checkpoints - 1) * a0.checkpoint_every
        n_children = len(a0.velocities) + len(common.CHEETAH_TEST) if suite == "cheetah-vel" else len(a0.tasks)
        parent = a0.parent_steps * sac if suite == "cheetah-vel" else 0.0  # MetaWorld: behaviour cloning, seconds
        one_child = child * sac + a0.num_checkpoints * episode
        cond_dim = 1 if suite == "cheetah-vel" else 128
        latent = 2 * a1.token_dim
        rows = [("stage 1 autoencoder (Eq. 1)", a1.steps, per_step(autoencoder_step(suite, a1.batch_size, a1.token_dim), args.steps))]
        if suite == "metaworld":
            ab = common.scale_defaults(s1b.Args, s1b.SCALES, suite, "paper")
            rows.append(("stage 1 behaviour embedding (Eq. 2)", ab.steps, per_step(embed_step(ab.batch_size), args.steps)))
        rows.append(("stage 2 HypLatent (Eqs. 3-5)", a2.steps,
                     per_step(hyplatent_step(cond_dim, a2.noise_dim, latent, a2.batch_size), args.steps)))
        ad = common.scale_defaults(sd.Args, sd.SCALES, suite, "paper")
        rows.append(("stage 2 MAA's diffusion (the baseline)", ad.steps,
                     per_step(diffusion_step(ad, cond_dim, a1.token_dim, ad.batch_size), max(args.steps // 100, 2), 1)))  # slow on a CPU
        rows.append(("stage 3 HypFormer (Eqs. 6-9)", a3.steps,
                     per_step(hypformer_step(cond_dim, a2.noise_dim, latent, a3.batch_size, a3.num_tokens), args.steps)))
        print(f"\n## {suite}: `bash pipeline.sh {'paper' if suite == 'cheetah-vel' else 'mw-paper'}` "
              f"(measured per step on this machine, {args.threads} torch thread(s))\n")
        print("| stage | steps at paper scale | seconds per step | " + " | ".join(f"{c} cores" for c in args.cores) + " |")
        print("|---|---|---|" + "---|" * len(args.cores))
        # experts in waves of c; Cheetah-Vel's two stage-0 calls (training velocities, then the oracles) wait
        # for each other, so their waves add
        pools = [len(a0.velocities), len(common.CHEETAH_TEST)] if suite == "cheetah-vel" else [len(a0.tasks)]
        stage0 = lambda c: parent + sum(-(-n // c) for n in pools) * one_child  # noqa: E731
        print(f"| stage 0: parent + {n_children} experts x ({child:,} SAC steps + {a0.num_checkpoints} checkpoint "
              f"episodes) | {(a0.parent_steps if suite == 'cheetah-vel' else 0) + n_children * child:,} | {sac:.4f} (+ {episode:.2f} s per episode) | "
              + " | ".join(fmt_time(stage0(c)) for c in args.cores) + " |")
        total = {c: stage0(c) for c in args.cores}
        for name, steps, s in rows:
            print(f"| {name} | {steps:,} | {s:.4f} | " + " | ".join(fmt_time(steps * s) for _ in args.cores) + " |")
            for c in args.cores:
                total[c] += steps * s
        print("| total (evaluation not included) | | | " + " | ".join(fmt_time(total[c]) for c in args.cores) + " |")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
