"""The conditioned-policy baselines (baselines/prompt_dt.py, baselines/mt_bc.py) and their data
(offline_data.py): the transformer's token layout and causal mask, returns-to-go, segments and prompts, the
losses by hand, MT-BC's folded policies, and tiny runs that fit."""

import numpy as np
import pytest
import torch

import common
from baselines.mt_bc import ConditionedPolicy, bc_loss, fold_condition
from baselines.prompt_dt import (PromptDT, action_loss, attention_allowed, interleave, prompt_segment, run_prompted,
                                 segment)
from offline_data import record_episodes, returns_to_go


def sequence(B: int, T: int, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(B, T, obs_dim, generator=g), "act": torch.rand(B, T, act_dim, generator=g) * 2 - 1,
            "rtg": torch.randn(B, T, 1, generator=g), "t": torch.arange(T).expand(B, -1).clone(),
            "mask": torch.ones(B, T, dtype=torch.bool)}


def test_tokens_interleave_return_state_action():
    r = torch.tensor([[[1.0], [4.0]]])
    s, a = r + 1, r + 2  # step 1: R=1, s=2, a=3; step 2: R=4, s=5, a=6
    assert interleave(r, s, a)[0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_attention_allowed_by_hand():
    allowed = attention_allowed(torch.tensor([[False, True, True, True]]))[0, 0]
    expected = [[1, 0, 0, 0],  # a padding query: itself only
                [0, 1, 0, 0],  # the first real token: itself (the padding key is never seen)
                [0, 1, 1, 0],
                [0, 1, 1, 1]]
    assert allowed.int().tolist() == expected


def test_no_action_prediction_sees_the_future():
    """The prediction at step t must not move when anything after s_t changes (a_t, then every token of later
    steps), and must move when s_t or an earlier token changes: the test that fails if the mask lets a token
    see the future."""
    torch.manual_seed(0)
    model = PromptDT(3, 2, max_steps=16, embed=16, layers=2, heads=2, dropout=0.0).eval()
    seq, prompt = sequence(1, 6), sequence(1, 2, seed=1)
    base = model(seq, prompt)
    for t in range(6):
        later = {k: v.clone() for k, v in seq.items()}
        later["act"][:, t:] += 5.0  # a_t and later actions
        later["obs"][:, t + 1:] += 5.0
        later["rtg"][:, t + 1:] += 5.0
        assert torch.allclose(model(later, prompt)[:, : t + 1], base[:, : t + 1], atol=1e-6), f"step {t} saw the future"
        now = {k: v.clone() for k, v in seq.items()}
        now["obs"][:, t] += 5.0
        assert not torch.allclose(model(now, prompt)[:, t], base[:, t]), f"step {t} does not see its own state"
    other = {k: v.clone() for k, v in prompt.items()}
    other["obs"] += 5.0
    assert not torch.allclose(model(seq, other)[:, 0], base[:, 0]), "the first step does not see the prompt"


def test_padding_is_invisible():
    """Left padding: whatever the padded steps hold, the real steps' predictions are the same."""
    torch.manual_seed(0)
    model = PromptDT(3, 2, max_steps=16, embed=16, layers=2, heads=1, dropout=0.0).eval()
    seq, prompt = sequence(1, 5), sequence(1, 2, seed=1)
    seq["mask"][:, :2] = False
    other = {k: v.clone() for k, v in seq.items()}
    other["obs"][:, :2] += 100.0
    other["act"][:, :2] -= 3.0
    assert torch.allclose(model(other, prompt)[:, 2:], model(seq, prompt)[:, 2:], atol=1e-6)


def test_returns_to_go_by_hand():
    assert returns_to_go(torch.tensor([1.0, 2.0, 3.0])).tolist() == [6.0, 5.0, 3.0]
    assert returns_to_go(torch.tensor([[1.0, -1.0], [0.5, 0.5]])).tolist() == [[0.0, -1.0], [1.0, 0.5]]


def test_segment_pads_on_the_left_and_prompt_takes_the_end():
    ep = {"obs": torch.arange(10.0)[:, None], "act": torch.arange(10.0)[:, None] * 10,
          "rtg": torch.arange(10.0) * 100}
    s = segment(ep, start=8, length=4, scale=2.0, obs_mean=torch.zeros(1), obs_std=torch.ones(1))
    assert s["mask"].tolist() == [False, False, True, True]
    assert s["t"].tolist() == [0, 0, 8, 9]
    assert s["obs"][:, 0].tolist() == [0.0, 0.0, 8.0, 9.0]
    assert s["rtg"][:, 0].tolist() == [0.0, 0.0, 400.0, 450.0]  # divided by the scale
    p = prompt_segment(ep, 5, 1.0, torch.zeros(1), torch.ones(1))  # Prompt-DT's fixed prompt: start T - 5 - 1 = 4
    assert p["t"].tolist() == [4, 5, 6, 7, 8] and p["mask"].all()


def test_action_loss_counts_real_steps_only():
    pred, act = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    act[0, :2] = 1000.0  # padding: ignored
    mask = torch.tensor([[False, False, True, True]])
    assert action_loss(pred, act, mask).item() == pytest.approx(1.0)


def test_bc_loss_by_hand():
    policy = ConditionedPolicy(2, 1, 2, hidden=4)
    torch.nn.init.zeros_(policy.fc_mean.weight), torch.nn.init.zeros_(policy.fc_mean.bias)  # a_hat = tanh(0) = 0
    act = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # mean over the batch of the squared error summed over action dimensions: (1 + 4) / 2
    assert bc_loss(policy, torch.randn(2, 2), torch.randn(2, 1), act).item() == pytest.approx(2.5)


def test_mt_bc_folds_into_the_generated_layout():
    torch.manual_seed(0)
    policy = ConditionedPolicy(17, 3, 6)
    policy.obs_mean.uniform_(-1, 1), policy.obs_std.uniform_(0.5, 2)
    policy.cond_mean.uniform_(-1, 1), policy.cond_std.uniform_(0.5, 2)
    cond, obs = torch.randn(4, 3), torch.randn(4, 7, 17)
    spec = common.policy_spec(17, 6)
    flat = fold_condition(policy, cond)
    assert flat.shape == (4, common.num_params(spec))
    expected = policy(obs, cond[:, None].expand(-1, 7, -1))
    assert torch.allclose(common.batched_act(flat, obs, spec), expected, atol=1e-5)


def test_loading_a_baseline_leaves_the_global_random_stream_alone(tmp_path):
    """The evaluation seeds torch's stream, loads the chain, then samples HypLatent's noise from it: loading
    MT-BC or Prompt-DT must not draw from it, or their presence would change HypLatent's policies."""
    import artifacts
    from baselines import mt_bc, prompt_dt

    spec = common.suite_spec("cheetah-vel")
    arch = {"obs_dim": 17, "act_dim": 6, "max_steps": 200, "embed": 16, "layers": 1, "heads": 1, "dropout": 0.0}
    arts = {"mt_bc.pt": {"format": mt_bc.FORMAT, "cond_dim": 1, "model": mt_bc.ConditionedPolicy(17, 1, 6).state_dict()},
            "prompt_dt.pt": {"format": prompt_dt.FORMAT, "arch": arch, "model": prompt_dt.PromptDT(**arch).state_dict(),
                             "obs_mean": torch.zeros(17), "obs_std": torch.ones(17), "tasks": ["vel-0.3"],
                             "task_best_return": [-10.0], "step": 1}}
    for name, art in arts.items():
        art |= {"suite": "cheetah-vel", "policy": spec, "settings": {"scale": "smoke", "steps": 1}, "made_from": {}}
        artifacts.save_artifact(art, tmp_path / name)
    torch.manual_seed(0)
    expected = torch.rand(3)
    for load, name in ((mt_bc.load_mt_bc, "mt_bc.pt"), (prompt_dt.load_prompt_dt, "prompt_dt.pt")):
        torch.manual_seed(0)
        load(tmp_path / name, "cheetah-vel", "smoke")
        assert torch.equal(torch.rand(3), expected), f"loading {name} drew from the global stream"


def test_prompt_dt_fits_one_trajectory():
    """A tiny Prompt-DT on one 8-step episode whose action is a function of the state: the action loss falls
    below 1% of its start, and the trained model reproduces the actions."""
    torch.manual_seed(0)
    T = 8
    obs = torch.randn(T, 3)
    ep = {"obs": obs, "act": torch.tanh(obs[:, :2] * 2), "rtg": returns_to_go(torch.ones(T))}
    zero, one = torch.zeros(3), torch.ones(3)
    seq = {k: v[None] for k, v in segment(ep, 0, T, 10.0, zero, one).items()}
    prompt = {k: v[None] for k, v in prompt_segment(ep, 2, 10.0, zero, one).items()}
    model = PromptDT(3, 2, max_steps=T, embed=32, layers=1, heads=1, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for _ in range(150):
        loss = action_loss(model(seq, prompt), seq["act"], seq["mask"])
        first = first if first is not None else loss.item()
        opt.zero_grad(), loss.backward(), opt.step()
    assert loss.item() < 0.01 * first
    assert torch.allclose(model.eval()(seq, prompt), seq["act"], atol=0.1)


class CountingEnv:
    """reward 1 per step; observation: the step count."""

    def __init__(self):
        self.t = 0

    def reset(self):
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(3, self.t, np.float32), 1.0, False, False, {"success": float(self.t >= 3)}


class Recorder(torch.nn.Module):
    """A stand-in model: remembers the return-to-go the policy is given at the newest step, acts 0."""

    def __init__(self):
        super().__init__()
        self.rtg = []

    def forward(self, seq, prompt):
        self.rtg.append(seq["rtg"][:, -1, 0].clone())
        return torch.zeros(*seq["act"].shape)


def test_run_prompted_decrements_the_target_return():
    model, art = Recorder(), {"settings": {"context": 3, "return_scale": 10.0}, "obs_mean": torch.zeros(3),
                              "obs_std": torch.ones(3), "policy": {"act_dim": 2}}
    prompt = {"obs": torch.zeros(2, 3), "act": torch.zeros(2, 2), "rtg": torch.zeros(2, 1),
              "t": torch.zeros(2, dtype=torch.long), "mask": torch.ones(2, dtype=torch.bool)}
    out = run_prompted(model, art, [CountingEnv(), CountingEnv()], [prompt, prompt], [50.0, 20.0], steps=5)
    # R_t = target - (rewards so far), divided by the scale
    expected = [[5.0, 2.0], [4.9, 1.9], [4.8, 1.8], [4.7, 1.7], [4.6, 1.6]]
    assert torch.allclose(torch.stack(model.rtg), torch.tensor(expected))
    assert out["return"].tolist() == [5.0, 5.0] and out["success"].tolist() == [1.0, 1.0]
    stopped = run_prompted(Recorder(), art, [CountingEnv()], [prompt], [50.0], steps=5, stop_on_success=True)
    assert stopped["return"].tolist() == [3.0]  # not stepped after its success at step 3


def test_record_episodes_keeps_every_step():
    spec = common.policy_spec(3, 2, hidden=4)
    params = torch.zeros(2, common.num_params(spec))  # tanh(0): action 0
    out = record_episodes(params, [CountingEnv(), CountingEnv()], spec, steps=4)
    assert out["obs"][0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # the state each action was taken in
    assert out["rew"].sum(1).tolist() == [4.0, 4.0] and out["success"].tolist() == [1.0, 1.0]
    assert (out["act"] == 0).all()


# ------------------------------------------------- chains -------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("chain", ["cheetah_chain", "metaworld_chain"])
def test_the_chain_trains_and_scores_both_baselines(chain, request):
    """In each smoke chain: the offline data is the episodes of the autoencoder's training checkpoints, with
    their conditions, each episode's return the sum of its rewards; both baselines get rows in the same
    results.json as the generated methods, over the same tasks; the evaluation records their artifacts."""
    import json

    import latents
    from offline_data import load_offline_data

    run, r = request.getfixturevalue(chain)
    suite = "cheetah-vel" if chain == "cheetah_chain" else "metaworld"
    data = load_offline_data(run / "offline_data.pt", suite, "smoke")
    inputs = latents.load_inputs(run, suite, "smoke")
    assert len(data["obs"]) == int(inputs["ae_art"]["train"].sum())  # one episode per training checkpoint
    assert torch.equal(data["cond"], inputs["cond"].float()) and torch.equal(data["task"], inputs["task_index"])
    assert torch.allclose(data["return"], data["rew"].sum(1))
    assert data["obs"].shape[1] == (common.CHEETAH_STEPS if suite == "cheetah-vel" else common.MW_STEPS)
    res = json.loads((run / "results.json").read_text())
    tasks = lambda m: {row["task"] for row in res["rows"] if row["method"] == m}  # noqa: E731
    assert tasks("mt-bc") == tasks("hyplatent") and tasks("prompt-dt") == tasks("hyplatent")
    if suite == "metaworld":  # CARE: one policy per condition, on every task (seen: trained on; unseen: zero-shot)
        assert tasks("care") == tasks("hyplatent") and "care.pt" in res["made_from"] and "care" in res["code"]
    else:  # MACAW at every test velocity (each has an oracle episode to adapt on), before and after adaptation
        assert tasks("macaw") == tasks("macaw-unadapted") == tasks("oracle-expert") and "macaw.pt" in res["made_from"]
    assert {"offline_data.pt", "mt_bc.pt", "prompt_dt.pt"} <= set(res["made_from"])
    assert {"mt_bc", "prompt_dt", "offline_data.pt"} <= set(res["code"])
    from baselines.mt_bc import load_mt_bc
    from baselines.prompt_dt import load_prompt_dt

    for load, name in ((load_mt_bc, "mt_bc.pt"), (load_prompt_dt, "prompt_dt.pt")):
        assert load(run / name, suite, "smoke")[1]["made_from"] == {"offline_data.pt": data["uid"]}
    assert not (run / "prompt_dt.partial.pt").exists()


# MACAW (baselines/macaw.py)

def macaw_case(seed: int = 0):
    """A tiny MACAW (obs 3, act 2, policy hidden 4, value width 5) and one hand-made task batch of 6 steps."""
    from baselines.macaw import Macaw

    torch.manual_seed(seed)
    model = Macaw(3, 2, hidden=4, value_width=5, inner_lr=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    batch = {"obs": torch.randn(6, 3, generator=g), "act": torch.rand(6, 2, generator=g) * 1.6 - 0.8,
             "ret": torch.randn(6, generator=g)}
    hp = type("S", (), {"temperature": 1.0, "advantage_clip": 20.0, "sigma": 0.2, "advantage_head": 0.01})
    return model, batch, hp


def test_macaw_inner_step_equals_the_hand_written_value_and_awr_updates():
    """The inner step's change of each output layer, against the gradients written out by hand in numpy:
    value  dL_V/db = 2 mean(V - R), dL_V/dW = 2/N sum (V - R) h_V;
    policy dL/db_mu = -mean_n w_n (a_n - m_n) / sigma^2 (1 - m_n^2) (m = tanh(mu), w from phi_i's advantages),
           dL/db_A = c 2 mean(A_theta - A)."""
    from baselines.macaw import adapt

    model, b, hp = macaw_case()
    phi_i, theta_i = adapt(model, b, hp)
    P = [p.detach().numpy().astype(np.float64) for p in model.value]
    T = [p.detach().numpy().astype(np.float64) for p in model.policy]
    s, a, R, lr = b["obs"].numpy().astype(np.float64), b["act"].numpy().astype(np.float64), b["ret"].numpy().astype(np.float64), 0.1
    relu, elu = lambda x: np.maximum(x, 0), lambda x: np.where(x > 0, x, np.exp(x) - 1)
    h_v = relu(relu(s @ P[0].T + P[1]) @ P[2].T + P[3])
    err = h_v @ P[4][0] + P[5][0] - R
    assert np.allclose(phi_i[5].detach().numpy(), P[5] - lr * 2 * err.mean(), atol=1e-6)
    assert np.allclose(phi_i[4].detach().numpy(), P[4] - lr * 2 * (err[:, None] * h_v).mean(0), atol=1e-6)
    # the advantages of the adapted value function, normalised, T = 1, exp
    P2 = [p.detach().numpy().astype(np.float64) for p in phi_i]
    A = R - (relu(relu(s @ P2[0].T + P2[1]) @ P2[2].T + P2[3]) @ P2[4][0] + P2[5][0])
    w = np.exp(np.minimum((A - A.mean()) / (A.std(ddof=1) + 1e-8), 20.0))
    h = relu(elu(s @ T[0].T + T[1]) @ T[2].T + T[3])
    m = np.tanh(h @ T[4].T + T[5])
    g_bmu = -(w[:, None] * (a - m) / 0.2 ** 2 * (1 - m ** 2)).mean(0)
    assert np.allclose(theta_i[5].detach().numpy(), T[5] - lr * g_bmu, atol=1e-5)
    adv_pred = np.concatenate([h, a], 1) @ T[6][0] + T[7][0]
    assert np.allclose(theta_i[7].detach().numpy(), T[7] - lr * 0.01 * 2 * (adv_pred - A).mean(), atol=1e-6)


def test_macaw_outer_gradient_flows_through_the_inner_step():
    """The meta-gradient reaches the learned step sizes only through the inner step: it is non-zero and equals
    the finite difference of the outer loss in the value step size (a detached inner step gives none)."""
    from baselines.macaw import outer_loss

    model, b, hp = macaw_case(seed=3)
    g = torch.Generator().manual_seed(9)
    outer = {"obs": torch.randn(6, 3, generator=g), "act": torch.rand(6, 2, generator=g) * 1.6 - 0.8,
             "ret": torch.randn(6, generator=g)}
    loss_v, loss_pi = outer_loss(model, b, outer, hp)
    (loss_v + loss_pi).backward()
    assert model.value_lrs.grad.abs().min() > 0 and model.policy_lrs.grad.abs().sum() > 0
    eps, k = 1e-3, 4  # the value function's output weight
    vals = []
    for d in (eps, -eps):
        with torch.no_grad():
            model.value_lrs[k] += d
        vals.append(float(outer_loss(model, b, outer, hp)[0]))
        with torch.no_grad():
            model.value_lrs[k] -= d
    assert float(model.value_lrs.grad[k]) == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-2, abs=1e-6)
    # second order: the gradient in a policy weight holds the inner step's Hessian term, which dominates it here
    # (first-order MAML, create_graph=False, misses it and fails)
    w = model.policy[2]
    vals = []
    for d in (eps, -eps):
        with torch.no_grad():
            w[1, 2] += d
        vals.append(float(sum(outer_loss(model, b, outer, hp))))
        with torch.no_grad():
            w[1, 2] -= d
    assert float(w.grad[1, 2]) == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=2e-2, abs=1e-5)


def test_care_attention_sums_to_one_and_routes_by_context():
    """Two hand-set encoders, E_0 = u0 and E_1 = u1 (constant), and a context path that maps context
    (1, 0) to attention logits (10, 0) and (0, 1) to (0, 10): the weights sum to one for any context, and the
    mixed state code is u0 for the first context and u1 for the second."""
    from baselines.care import Encoder

    enc = Encoder(obs_dim=3, cond_dim=2, k=2, width=2)
    with torch.no_grad():
        for lin, scale in ((enc.task[0], 1.0), (enc.task[2], 1.0), (enc.task[4], 1.0), (enc.attention[0], 1.0),
                           (enc.attention[2], 1.0), (enc.attention[4], 10.0)):
            lin.weight.copy_(scale * torch.eye(2)), lin.bias.zero_()
        for e, u in zip(enc.encoders, ([1.0, -2.0], [3.0, 0.5])):
            e[4].weight.zero_(), e[4].bias.copy_(torch.tensor(u))
    w = enc.weights(enc.task(torch.rand(100, 2) * 4 - 2))
    assert torch.allclose(w.sum(-1), torch.ones(100)) and (w >= 0).all()
    x = enc(torch.randn(2, 3), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    e10 = 1 / (1 + np.exp(10))  # the other encoder's weight
    assert torch.allclose(x[0, :2], (1 - e10) * torch.tensor([1.0, -2.0]) + e10 * torch.tensor([3.0, 0.5]), atol=1e-6)
    assert torch.allclose(x[1, :2], e10 * torch.tensor([1.0, -2.0]) + (1 - e10) * torch.tensor([3.0, 0.5]), atol=1e-6)
    assert torch.allclose(x[:, 2:], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # z_c beside the state code
