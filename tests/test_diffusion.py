"""Stage 2's diffusion alternative (MAA): the noise schedule against hand-computed values, the DDIM step,
the loss, the UNet's shapes and conditioning, learning two conditions, and resume on a smoke chain."""

import json
import math
from dataclasses import replace

import pytest
import torch

import common
import stage2_diffusion as sd


def test_squared_cosine_schedule_by_hand():
    # beta_t = 1 - f(t+1)/f(t), so abar_t = f(t+1)/f(0) while no beta is capped (the product telescopes);
    # f(t) = cos((t/100 + 0.008)/1.008 * pi/2)^2: f(0) = 0.99984459, f(1) = 0.99921341, f(50) = 0.49376685
    abar = sd.squared_cosine_alphas_cumprod(100)
    assert abar.shape == (100,)
    assert abar[0].item() == pytest.approx(0.99921341 / 0.99984459, rel=1e-6)  # 0.99936872
    assert abar[1].item() == pytest.approx(0.99825249, rel=1e-6)
    assert abar[49].item() == pytest.approx(0.49376685 / 0.99984459, rel=1e-5)  # 0.49384359
    # the last beta, 1 - f(100)/f(99) = 1 - 0, is capped at 0.999
    assert abar[99].item() == pytest.approx(abar[98].item() * 0.001, rel=1e-5)
    assert (abar[1:] < abar[:-1]).all()


def test_ddim_steps_and_the_step_itself():
    assert sd.ddim_timesteps(100, 10) == [(90, 80), (80, 70), (70, 60), (60, 50), (50, 40), (40, 30), (30, 20),
                                          (20, 10), (10, 0), (0, -1)]
    abar = sd.squared_cosine_alphas_cumprod(100)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(3, 2, 8, generator=g) * 2 - 1, torch.randn(3, 2, 8, generator=g)
    t = torch.full((3,), 90)
    x_t = sd.noised(x0, t, eps, abar)
    assert torch.allclose(x_t, abar[90].sqrt() * x0 + (1 - abar[90]).sqrt() * eps)
    # given the true x_0, a deterministic DDIM step lands on x_t' made with the same noise
    x_prev = sd.ddim_step(x_t, x0, float(abar[90]), float(abar[80]))
    assert torch.allclose(x_prev, sd.noised(x0, torch.full((3,), 80), eps, abar), atol=1e-5)
    # the last step (t' = -1, abar = 1) returns the predicted clean sample, clipped to [-1, 1]
    assert torch.equal(sd.ddim_step(x_t, 3 * x0, float(abar[0]), 1.0), (3 * x0).clamp(-1, 1))


def test_denoising_loss_is_the_x0_prediction_mse():
    abar = sd.squared_cosine_alphas_cumprod(100)
    model = lambda x_t, t, c: 0.5 * x_t + c[:, :, None]  # noqa: E731 - any function of the inputs
    x0, cond = torch.randn(6, 2, 4), torch.randn(6, 1)
    torch.manual_seed(3)
    loss = sd.denoising_loss(model, x0, cond, abar)
    torch.manual_seed(3)  # the same t and eps, written out
    t = torch.randint(0, 100, (6,))
    eps = torch.randn_like(x0)
    a = abar[t].view(-1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert loss.item() == pytest.approx(((0.5 * x_t + cond[:, :, None] - x0) ** 2).mean().item(), rel=1e-6)


def test_unet_shapes_film_conditioning_and_schedules():
    torch.manual_seed(0)
    net = sd.LatentUNet(token_dim=16, cond_dim=3, widths=(8, 16), kernel=5, groups=4, step_embed=8)
    x, t = torch.randn(5, 2, 16), torch.tensor([0, 10, 50, 90, 99])
    out = net(x, t, torch.zeros(5, 3))
    assert out.shape == (5, 2, 16)
    assert not torch.allclose(out, net(x, t, torch.ones(5, 3)))  # the condition reaches the output
    assert not torch.allclose(out, net(x, t + 1, torch.zeros(5, 3)))  # so does the step
    assert sd.ema_decay(0) == 0.0 and sd.ema_decay(1) == pytest.approx(1 - 2 ** -0.75)
    assert sd.ema_decay(10 ** 9) == 0.9999
    assert sd.lr_factor(0, 500, 3000) == pytest.approx(1 / 500) and sd.lr_factor(499, 500, 3000) == 1.0
    assert sd.lr_factor(1750, 500, 3000) == pytest.approx(0.5) and sd.lr_factor(3000, 500, 3000) == pytest.approx(0.0)




def test_diffusion_learns_two_conditions(one_thread):
    """Trained on two conditions with different latents, DDIM samples land near the latents of their own
    condition."""
    torch.manual_seed(1)
    net = sd.LatentUNet(token_dim=8, cond_dim=1, widths=(8, 16), kernel=5, groups=4, step_embed=16)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    abar = sd.squared_cosine_alphas_cumprod(100)
    z_a, z_b = torch.full((2, 8), 0.6), torch.full((2, 8), -0.6)
    for _ in range(150):
        c = torch.randint(0, 2, (32, 1)).float() * 2 - 1
        x0 = torch.where(c[:, :, None] < 0, z_a, z_b) + 0.05 * torch.randn(32, 2, 8)
        loss = sd.denoising_loss(net, x0, c, abar)
        opt.zero_grad()
        loss.backward()
        opt.step()
    art = {"cond_mean": torch.zeros(1), "cond_std": torch.ones(1), "latent_shape": [2, 8],
           "settings": {"train_timesteps": 100, "sample_steps": 10}}
    net.eval()
    out_a = sd.diffusion_sample(net, art, torch.full((20, 1), -1.0), torch.Generator().manual_seed(0)).view(20, 2, 8)
    out_b = sd.diffusion_sample(net, art, torch.full((20, 1), 1.0), torch.Generator().manual_seed(0)).view(20, 2, 8)
    assert ((out_a - z_a).flatten(1).norm(dim=1) < 0.5 * (out_a - z_b).flatten(1).norm(dim=1)).all()
    assert ((out_b - z_b).flatten(1).norm(dim=1) < 0.5 * (out_b - z_a).flatten(1).norm(dim=1)).all()


def test_diffusion_stage_resumes_to_the_uninterrupted_result(cheetah_chain, tmp_path, monkeypatch, capsys):
    """Stopped after its step-20 save, stage 2 (diffusion) resumes there and ends with the weights of an
    uninterrupted run; the chain's artifact and its MAA row exist."""
    run, _ = cheetah_chain
    assert (run / "diffusion.pt").exists()
    res = json.loads((run / "results.json").read_text())
    assert any(r["method"] == "maa" and r["task"] == "average" for r in res["rows"])
    assert "diffusion" in res["upstream"] and "diffusion.pt" in res["made_from"]
    smoke = common.scale_defaults(sd.Args, sd.SCALES, "cheetah-vel", "smoke")  # the smoke UNet, as the chain's
    args = dict(run_dir=str(run), steps=40, save_every=10, check_per_task=0, progress=False)
    sd.main(replace(smoke, **args, out="d-full.pt"))
    calls = {"n": 0}
    real = sd.denoising_loss

    def stop_after_25(*a):
        calls["n"] += 1
        if calls["n"] > 25:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(sd, "denoising_loss", stop_after_25)
    with pytest.raises(KeyboardInterrupt):
        sd.main(replace(smoke, **args, out="d-cut.pt"))
    assert torch.load(run / "d-cut.partial.pt", weights_only=True)["step"] == 20  # the last save before the stop
    resumed = {"n": 0}

    def count(*a):
        resumed["n"] += 1
        return real(*a)

    monkeypatch.setattr(sd, "denoising_loss", count)
    capsys.readouterr()
    sd.main(replace(smoke, **args, out="d-cut.pt"))
    assert "at step 20" in capsys.readouterr().out and resumed["n"] == 20  # steps 20-39 only, not 0-39 again
    full, cut = (torch.load(run / f, weights_only=True) for f in ("d-full.pt", "d-cut.pt"))
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k
    assert not (run / "d-cut.partial.pt").exists() and math.isfinite(cut["history"]["loss"][-1])
