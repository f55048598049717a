"""Stages 1-3: every loss against its equation on hand-computed tensors, model properties, the training
steps, and the smoke chains of both suites run from the defaults through pipeline.sh."""

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import artifacts
import common
import latents
import stage1_autoencoder as s1a
import stage1_behavior_embed as s1b
import stage2_hyplatent as s2
import stage3_hypformer as s3
from conftest import run_chain

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------- equations -------------------------------------------------


def test_eq1_autoencoder_loss():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x_hat = torch.tensor([[1.0, 3.0], [2.0, 4.0]])
    # lambda / M * sum (x_hat - x)^2 = 1e3 / 2 * (0 + 1 + 1 + 0)
    assert s1a.autoencoder_loss(x_hat, x, lam=1e3).item() == pytest.approx(1000.0)
    assert s1a.autoencoder_loss(x, x).item() == 0.0


def test_eq2_behaviour_loss():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    W = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # logits h_i^T W v_j = [[2, 0], [0, 1]]; rows: -log(e^2 / (e^2 + 1)), -log(e / (e + 1))
    ref = (-math.log(math.e**2 / (math.e**2 + 1)) - math.log(math.e / (math.e + 1))) / 2
    assert s1b.behaviour_loss(h, v, W).item() == pytest.approx(ref, abs=1e-6)
    W2 = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # logits [[0, 1], [0, 0]]: row 0 prefers the wrong pair
    ref2 = (-math.log(1 / (1 + math.e)) - math.log(0.5)) / 2
    assert s1b.behaviour_loss(h, v, W2).item() == pytest.approx(ref2, abs=1e-6)


def test_eq3_eq4_gan_objectives():
    fake = torch.tensor([0.0, math.log(3.0)])  # F = 0.5, 0.75
    # Eq. 3: mean log(1 - F(Z_hat)) = (log 0.5 + log 0.25) / 2
    assert s2.generator_loss(fake).item() == pytest.approx((math.log(0.5) + math.log(0.25)) / 2, abs=1e-6)
    real = torch.tensor([math.log(3.0)])  # F = 0.75
    # Eq. 4: mean [log F(Z) + log(1 - F(Z_hat))] = log 0.75 + log 0.5
    assert s2.discriminator_objective(real, torch.tensor([0.0])).item() == pytest.approx(
        math.log(0.75) + math.log(0.5), abs=1e-6)
    # stable at extreme logits (no NaN/inf where sigmoid saturates)
    assert math.isfinite(s2.generator_loss(torch.tensor([80.0])).item())
    assert math.isfinite(s2.discriminator_objective(torch.tensor([-80.0]), torch.tensor([80.0])).item())


def test_eq5_reg_loss():
    q = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    c = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    # lambda_reg / N * sum ||q - c||^2 = 0.5 / 2 * (5 + 9)
    assert s2.reg_loss(q, c, lambda_reg=0.5).item() == pytest.approx(3.5)


def test_eq6_to_eq9_hypformer_losses():
    z_pred = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    z_gt = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    assert s3.sim_loss(z_pred, z_gt).item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 2) / 2, abs=1e-6)  # Eq. 6

    zp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    gp = torch.tensor([[1.0, 1.0]], requires_grad=True)
    zg = torch.tensor([[1.0, 3.0]])
    res = s3.res_loss(gp, zp, zg)  # Eq. 7: target zg - zp = (1, 3); ((1-1)^2 + (1-3)^2) / 2
    assert res.item() == pytest.approx(2.0)
    res.backward()
    assert zp.grad is None or torch.all(zp.grad == 0)  # the residue target carries no gradient
    assert torch.equal(gp.grad, torch.tensor([[0.0, -2.0]]))

    zp2, gp2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    assert s3.consistency_loss(zp2, gp2, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.5)  # Eq. 8: (0 + 1)/2
    parts = s3.hypformer_loss(zp2, gp2, torch.tensor([[1.0, 1.0]]), 1e3, 2e3, 3e3)
    ref = 1e3 * parts["sim"] + 2e3 * parts["res"] + 3e3 * parts["c"]  # Eq. 9
    assert parts["total"].item() == pytest.approx(ref.item())
    assert parts["c"].item() == pytest.approx(0.5) and parts["res"].item() == pytest.approx(0.5)
    assert parts["sim"].item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)  # cos((0, 1), (1, 1)) = 1/sqrt(2)


def test_every_equation_runs_off_the_cpu():
    """Each loss on tensors of another device (meta: shapes only) makes no tensor of its own on the CPU, so it
    runs where --device puts the models."""
    t = lambda *shape: torch.randn(*shape, device="meta")  # noqa: E731
    losses = [s1a.autoencoder_loss(t(4, 3), t(4, 3)), s1b.behaviour_loss(t(4, 2), t(4, 2), t(2, 2)),  # Eq. 1, 2
              s2.generator_loss(t(4)), s2.discriminator_objective(t(4), t(4)), s2.reg_loss(t(4, 2), t(4, 2), 0.5),
              s3.hypformer_loss(t(4, 3), t(4, 3), t(4, 3))["total"]]  # Eq. 3, 4, 5, 9 (6-8 inside)
    assert all(x.device.type == "meta" and x.shape == () for x in losses)


# ------------------------------------------------- models -------------------------------------------------


def test_autoencoder_shapes_and_loss_falls():
    torch.manual_seed(0)
    spec = common.policy_spec(17, 6)
    ae = s1a.PolicyAutoencoder(spec, token_dim=32)
    assert ae.sizes == [128 * 17 + 128, 20_364 - 128 * 17 - 128]
    base = torch.randn(20_364) * 0.1
    X = base + 0.01 * torch.randn(64, 4) @ torch.randn(4, 20_364)  # policies on a 4-d subspace
    ae.mean.copy_(X.mean(0)), ae.std.copy_(X.std(0))
    z = ae.encode(X)
    assert z.shape == (64, 2, 32) and ae.decode(z).shape == X.shape
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = s1a.autoencoder_loss((ae(X, 0.001, 0.01) - ae.mean) / ae.std, (X - ae.mean) / ae.std)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_holdout_split_per_task():
    shards = [{"step": torch.arange(20)}, {"step": torch.arange(3)}]
    m = s1a.split_holdout(shards, 0.1, seed=0)
    assert m.shape == (23,) and int(m[:20].sum()) == 2 and int(m[20:].sum()) == 1
    assert torch.equal(m, s1a.split_holdout(shards, 0.1, seed=0))


def make_hypformer():
    torch.manual_seed(0)
    return s3.HypFormer(latent_dim=12, cond_dim=3, width=16, heads=4).eval()


def test_hypformer_sample_does_not_depend_on_its_batch():
    model = make_hypformer()
    z, c = torch.randn(5, 8, 12), torch.randn(5, 3)
    with torch.no_grad():
        alone = model(z[:1], c[:1])
        in_batch = model(z, c)
        z2, c2 = z.clone(), c.clone()
        z2[1:], c2[1:] = torch.randn(4, 8, 12) * 3, torch.randn(4, 3)
        replaced = model(z2, c2)
        perm = torch.tensor([3, 0, 4, 2, 1])
        permuted = model(z[perm], c[perm])
    for out in (in_batch, replaced):
        torch.testing.assert_close(out[0][:1], alone[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1][:1], alone[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(permuted[0][1], in_batch[0][0], atol=1e-5, rtol=0)


def test_hypformer_is_invariant_to_token_order():
    model = make_hypformer()
    z, c = torch.randn(2, 8, 12), torch.randn(2, 3)
    with torch.no_grad():
        a = model(z, c)
        b = model(z[:, torch.randperm(8)], c)
        other = model(z + 1, c)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=0)
    assert not torch.allclose(a[0], other[0], atol=1e-3)  # and it does read the latents


def args_at(module, suite="cheetah-vel", scale="smoke", **kw):
    """A stage's Args with the defaults of a suite and scale, as its command line builds them."""
    return replace(common.scale_defaults(module.Args, module.SCALES, suite, scale), progress=False, **kw)


def small_gan(seed=0):
    torch.manual_seed(seed)
    G = s2.Generator(cond_dim=1, noise_dim=4, latent_dim=8, widths=(64, 32))
    D = s2.Discriminator(latent_dim=8, cond_dim=1, hidden=32)
    return G, D, torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999)), \
        torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))


def test_discriminator_step_moves_only_d_and_q_generator_step_only_g():
    G, D, opt_g, opt_d = small_gan()
    c, z_real = torch.randn(16, 1), torch.randn(16, 8)
    z_fake = G(c, torch.randn(16, 4))
    g0, d0 = [p.clone() for p in G.parameters()], [p.clone() for p in D.parameters()]
    s2.discriminator_step(D, opt_d, z_real, z_fake, c, lambda_reg=1.0)
    assert all(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    d1 = [p.clone() for p in D.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(d0, d1))  # trunk, realness head and Q all moved
    s2.generator_step(D, opt_g, z_fake, z_real, c, lambda_reg=1.0, paired_weight=1e3)
    assert all(torch.equal(a, b) for a, b in zip(d1, D.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(g0, G.parameters()))


def test_generator_step_descends_eq3_eq5_and_the_paired_term():
    """G's update is plain gradient descent (SGD here) on Eq. 3 + Eq. 5 + w * MSE(G, Z), the gradient
    computed by hand from the formulas: with Eq. 3 alone (the other weights 0) G still moves, and the step
    is the one each term gives."""
    import copy

    for lambda_reg, paired_weight in ((0.0, 0.0), (1.0, 0.0), (1.0, 1e3)):
        G, D, _, _ = small_gan(2)
        opt = torch.optim.SGD(G.parameters(), lr=0.05)
        c, z_real, noise = torch.randn(16, 1), torch.randn(16, 8), torch.randn(16, 4)
        G_ref = copy.deepcopy(G)
        torch.manual_seed(7)  # the same dropout masks in both forward passes
        z_fake = G(c, noise)
        torch.manual_seed(7)
        z_ref = G_ref(c, noise)
        logit, feat = D(z_ref)
        loss = (torch.log(1 - torch.sigmoid(logit)).mean()  # Eq. 3, log(1 - F(Z_hat)), written out
                + lambda_reg / 16 * ((D.q(feat) - c) ** 2).sum()  # Eq. 5
                + paired_weight * ((z_ref - z_real) ** 2).mean())
        grads = torch.autograd.grad(loss, list(G_ref.parameters()), allow_unused=True)
        before = [p.clone() for p in G.parameters()]
        s2.generator_step(D, opt, z_fake, z_real, c, lambda_reg, paired_weight)
        moved = 0.0
        for p0, p1, g in zip(before, G.parameters(), grads):
            expected = p0 if g is None else p0 - 0.05 * g
            torch.testing.assert_close(p1, expected, atol=1e-5, rtol=1e-4)
            moved += (p1 - p0).abs().sum().item()
        assert moved > 1e-3  # Eq. 3 alone moves G


def test_paired_only_step_is_the_regression_step():
    """--no-adversarial: G descends w * MSE(G(c, n), Z) alone, with the same SGD check."""
    G, _, _, _ = small_gan(3)
    opt = torch.optim.SGD(G.parameters(), lr=0.05)
    c, z_real, noise = torch.randn(16, 1), torch.randn(16, 8), torch.randn(16, 4)
    import copy

    G_ref = copy.deepcopy(G)
    torch.manual_seed(7)
    z_fake = G(c, noise)
    torch.manual_seed(7)
    grads = torch.autograd.grad(10.0 * ((G_ref(c, noise) - z_real) ** 2).mean(), list(G_ref.parameters()))
    before = [p.clone() for p in G.parameters()]
    s2.paired_only_step(opt, z_fake, z_real, 10.0)
    for p0, p1, g in zip(before, G.parameters(), grads):
        torch.testing.assert_close(p1, p0 - 0.05 * g, atol=1e-5, rtol=1e-4)


def test_hyplatent_maps_each_condition_to_its_own_latents():
    """What the method needs of G: trained on two conditions with different latents, G(c, n) lands near
    the latents of c for any noise n (and not near those of the other condition)."""
    G, D, opt_g, opt_d = small_gan(1)
    z_a, z_b = torch.full((8,), 1.0), torch.full((8,), -1.0)
    for _ in range(150):
        c = torch.randint(0, 2, (32, 1)).float() * 2 - 1  # -1 -> z_a, +1 -> z_b, plus a little spread
        z_real = torch.where(c < 0, z_a, z_b) + 0.1 * torch.randn(32, 8)
        z_fake = G(c, torch.randn(32, 4))
        s2.discriminator_step(D, opt_d, z_real, z_fake, c, 1.0)
        s2.generator_step(D, opt_g, z_fake, z_real, c, 1.0, 1e3)
    G.eval()
    with torch.no_grad():
        n = torch.randn(20, 4)
        out_a, out_b = G(torch.full((20, 1), -1.0), n), G(torch.full((20, 1), 1.0), n)
    assert ((out_a - z_a).norm(dim=1) < 0.5 * (out_a - z_b).norm(dim=1)).all()
    assert ((out_b - z_b).norm(dim=1) < 0.5 * (out_b - z_a).norm(dim=1)).all()


# ------------------------------------------------- chains -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["cheetah_chain", "metaworld_chain"])
def test_smoke_chain_runs_and_removes_partial_states(chain, request):
    run, r = request.getfixturevalue(chain)
    for f in ("autoencoder.pt", "hyplatent.pt", "diffusion.pt", "hypformer.pt", "results.json"):
        assert (run / f).exists()
    for f in ("hyplatent.partial.pt", "diffusion.partial.pt"):  # removed once the finished artifact is written
        assert not (run / f).exists()
    assert "stage 3 (HypFormer, Eqs. 6-9): done" in r.stdout


def test_a_rerun_skips_every_up_to_date_stage(metaworld_chain):
    """The MetaWorld chain has every stage (the behaviour embedding too); the Cheetah-Vel chain's re-run is
    the job-array test's last step."""
    run, _ = metaworld_chain
    r2 = run_chain("mw-smoke", run.parent)
    for f in ("autoencoder.pt", "behavior_embed.pt", "hyplatent.pt", "diffusion.pt", "hypformer.pt", "results.json"):
        assert f"{run / f} is up to date" in r2.stdout


def test_cheetah_chain_artifacts(cheetah_chain):
    run, _ = cheetah_chain
    ae, art = s1a.load_autoencoder(run / "autoencoder.pt", "cheetah-vel", "smoke")
    n = sum(len(s["step"]) for s in artifacts.load_stage0(run, "cheetah-vel", "smoke"))
    assert art["latents"].shape == (n, 2, art["token_dim"]) and art["heldout"].sum() >= 2
    assert not (art["train"] & art["heldout"]).any()
    G, hl_art = s2.load_generator(run / "hyplatent.pt", "cheetah-vel", "smoke")
    assert hl_art["arch"]["cond_dim"] == 1 and hl_art["arch"]["noise_dim"] == 4
    hf, hf_art = s3.load_hypformer(run / "hypformer.pt", "cheetah-vel", "smoke")
    assert hf_art["num_tokens"] == 8
    # the chain's pieces fit: generate, refine, decode to a flat policy of the right size
    with torch.no_grad():
        c = torch.zeros(3, 1)
        zp, gp = hf(s3.sample_latents(G, c, 8), c)
        x = latents.decode_generated(zp + gp, hl_art, ae)
    assert x.shape == (3, 20_364) and torch.isfinite(x).all()
    # the decoded held-out checkpoints act like their originals: each decoded return is far closer to its
    # own original's than the two originals (of different velocities) are to each other
    fc = art["metrics"]["functional"]
    o, d = torch.tensor(fc["original"]), torch.tensor(fc["decoded"])
    assert len(o) == 2 and (d - o).abs().max() < 0.1 * (o[0] - o[1]).abs()
    # no Cheetah-Vel test velocity among the training conditions
    pairs = latents.load_inputs(run, "cheetah-vel", "smoke")
    assert not set(pairs["cond"].flatten().tolist()) & set(common.CHEETAH_TEST)


def test_metaworld_chain_artifacts(metaworld_chain):
    run, _ = metaworld_chain
    _, be = s1b.load_behavior_embed(run / "behavior_embed.pt", "metaworld", "smoke")
    assert be["train_tasks"] == ["door-open-v3", "drawer-open-v3"]  # seen tasks only; drawer-close is unseen
    assert be["h"].shape[1] == 128 and be["h"].shape == be["v"].shape
    _, art = s1a.load_autoencoder(run / "autoencoder.pt", "metaworld", "smoke")
    unseen = torch.tensor([art["tasks"][i] == "drawer-close-v3" for i in art["task_index"].tolist()])
    assert unseen.any() and not art["train"][unseen].any()
    # phi trains on the rollouts of the autoencoder's training checkpoints only: its held-out checkpoints
    # (the evaluation's conditioning rollouts come from them) and the unseen tasks stay out, scaling included
    assert torch.equal(be["train"], art["train"]) and art["heldout"].any() and not be["train"][art["heldout"]].any()
    traj = torch.cat([s["traj"] for s in artifacts.load_stage0(run, "metaworld", "smoke")])
    lo = traj[art["train"]].min(0).values
    assert torch.equal(be["scaling"]["traj_lo"], lo) and not torch.equal(lo, traj.min(0).values)


def test_generator_stays_frozen_in_stage3_and_evaluation(cheetah_chain, tmp_path, monkeypatch):
    run, _ = cheetah_chain
    for f in ("parent.pt", "autoencoder.pt", "hyplatent.pt", "hypformer.pt", "diffusion.pt", "offline_data.pt",
              "mt_bc.pt", "prompt_dt.pt", "macaw.pt"):
        (tmp_path / f).write_bytes((run / f).read_bytes())
    (tmp_path / "stage0").symlink_to(run / "stage0")
    seen = {}

    def spy(*a, **kw):
        seen["G"], art = s2.load_generator(*a, **kw)
        seen["before"] = {k: v.clone() for k, v in seen["G"].state_dict().items()}
        return seen["G"], art

    monkeypatch.setattr(s3, "load_generator", spy)
    s3.main(args_at(s3, run_dir=str(tmp_path), out="hf2.pt", threads=1))
    G = seen["G"]
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    for k, v in G.state_dict().items():  # BatchNorm running statistics included: never in train mode
        assert torch.equal(v, seen["before"][k]), k
    import evaluate as ev

    chain = ev.load_chain(args_at(ev, run_dir=str(tmp_path)))
    before = {k: v.clone() for k, v in chain["G"].state_dict().items()}
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        outs.append(ev.generate(args_at(ev, run_dir=str(tmp_path)), chain, [0.6])["params"])
    assert torch.equal(outs[0], outs[1])  # deterministic given the noise
    assert not chain["G"].training  # generating left G in eval mode, its state (running statistics) unchanged
    assert all(torch.equal(v, before[k]) for k, v in chain["G"].state_dict().items())
    # MAA is sampled last, with its own generator: the other methods' policies are the same without it
    torch.manual_seed(0)
    gen = ev.generate(args_at(ev, run_dir=str(tmp_path)), chain, [0.6])
    torch.manual_seed(0)
    no_maa = ev.generate(args_at(ev, run_dir=str(tmp_path)), {**chain, "maa": None}, [0.6])
    assert "maa" in gen["method"] and "maa" not in no_maa["method"]
    keep = [i for i, m in enumerate(gen["method"]) if m != "maa"]
    assert no_maa["method"] == [gen["method"][i] for i in keep] and torch.equal(no_maa["params"], gen["params"][keep])
    # loading the conditioned-policy baselines draws nothing from the stream the generators sample from: the
    # evaluation seeds it, then loads the chain, then generates
    torch.manual_seed(0)
    gen = ev.generate(args_at(ev, run_dir=str(tmp_path)), ev.load_chain(args_at(ev, run_dir=str(tmp_path))), [0.6])
    torch.manual_seed(0)
    bare = args_at(ev, run_dir=str(tmp_path), mt_bc="", prompt_dt="", macaw="")
    no_bl = ev.generate(bare, ev.load_chain(bare), [0.6])
    keep = [i for i, m in enumerate(gen["method"]) if m != "mt-bc"]
    assert "mt-bc" in gen["method"] and torch.equal(no_bl["params"], gen["params"][keep])


def test_hyplatent_short_run(cheetah_chain, tmp_path):
    """With a fixed seed: Q's reconstruction error falls; the artifact records every step it was asked for."""
    run, _ = cheetah_chain
    (tmp_path / "autoencoder.pt").write_bytes((run / "autoencoder.pt").read_bytes())
    (tmp_path / "stage0").symlink_to(run / "stage0")
    s2.main(args_at(s2, run_dir=str(tmp_path), steps=300, threads=1))
    _, hl_art = s2.load_generator(tmp_path / "hyplatent.pt", "cheetah-vel", "smoke")
    q = hl_art["history"]["q_mse"]
    assert sum(q[-3:]) / 3 < 0.5 * q[0] and hl_art["step"] == 300


def test_wrong_suite_or_policy_size_one_line_error(cheetah_chain, tmp_path):
    run, _ = cheetah_chain
    with pytest.raises(SystemExit, match=r"autoencoder.pt: suite is 'cheetah-vel', expected 'metaworld'"):
        s1a.load_autoencoder(run / "autoencoder.pt", "metaworld", "smoke")
    art = torch.load(run / "autoencoder.pt", weights_only=True)
    art["policy"] = common.policy_spec(17, 6, hidden=64)
    artifacts.save_artifact(art, tmp_path / "autoencoder.pt")
    (tmp_path / "stage0").symlink_to(run / "stage0")
    with pytest.raises(SystemExit, match=r"autoencoder.pt: policy is .*'hidden': 64.*expected"):
        s1a.load_autoencoder(tmp_path / "autoencoder.pt", "cheetah-vel", "smoke")
    r = subprocess.run([sys.executable, str(ROOT / "stage2_hyplatent.py"), "--scale", "smoke", "--run-dir",
                        str(tmp_path), "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "policy is" in r.stderr


def test_hyplatent_stops_on_nan_keeping_a_partial_state_and_resumes(cheetah_chain, tmp_path, monkeypatch, capsys):
    """A NaN stop leaves hyplatent.partial.pt, never hyplatent.pt; a re-run resumes from it and finishes."""
    run, _ = cheetah_chain
    (tmp_path / "autoencoder.pt").write_bytes((run / "autoencoder.pt").read_bytes())
    (tmp_path / "stage0").symlink_to(run / "stage0")
    calls = {"n": 0}
    real = s2.generator_loss

    def flaky(logit):  # the 6th generator loss is NaN
        calls["n"] += 1
        return real(logit) * (float("nan") if calls["n"] == 6 else 1.0)

    monkeypatch.setattr(s2, "generator_loss", flaky)
    args = args_at(s2, run_dir=str(tmp_path), steps=20, save_every=2, threads=1, check_per_task=0)
    with pytest.raises(SystemExit, match=r"NaN/inf at step 5 .*kept the state of step 4 in .*hyplatent.partial.pt"):
        s2.main(args)
    assert not (tmp_path / "hyplatent.pt").exists()
    assert torch.load(tmp_path / "hyplatent.partial.pt", weights_only=True)["step"] == 4
    with pytest.raises(SystemExit, match="hyplatent.pt: file not found"):  # later stages cannot use it
        s2.load_generator(tmp_path / "hyplatent.pt", "cheetah-vel", "smoke")
    monkeypatch.setattr(s2, "generator_loss", real)
    capsys.readouterr()
    s2.main(args)
    assert "hyplatent.partial.pt at step 4" in capsys.readouterr().out  # resumed there, not started over
    _, hl_art = s2.load_generator(tmp_path / "hyplatent.pt", "cheetah-vel", "smoke")
    assert hl_art["step"] == 20 and hl_art["history"]["step"][0] == 0 and not (tmp_path / "hyplatent.partial.pt").exists()
    hl_art["step"] = 12  # an artifact that records fewer steps than it was asked for is refused
    artifacts.save_artifact(hl_art, tmp_path / "short.pt")
    with pytest.raises(SystemExit, match=r"short.pt: trained 12 of 20 steps \(unfinished\)"):
        s2.load_generator(tmp_path / "short.pt", "cheetah-vel", "smoke")
