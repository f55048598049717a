"""stage0_collect_sac.py: SAC pieces, rollouts, shard schema at smoke scale, resume, bad inputs."""

import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import artifacts
import common
import stage0_collect_sac as s0

ROOT = Path(__file__).resolve().parents[1]


def run_stage0(*flags, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "stage0_collect_sac.py"), "--no-progress", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


class FakeEnv:
    """Succeeds at steps 5..6 only, then undoes it (as some scripted experts do); 10 steps."""

    def reset(self):
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, a):
        self.t += 1
        obs = np.full(3, self.t, np.float32)
        return obs, 1.0, False, self.t >= 70, {"success": float(self.t in (5, 6))}


def test_checkpoint_rollout_counts_success_at_any_step():
    """Stage 0 records a checkpoint's episode with run_lockstep(record=True): success at any step (FakeEnv
    succeeds at steps 5 and 6 only), the first success step, the post-success states."""
    spec = common.policy_spec(3, 2)
    r = common.run_lockstep(torch.zeros(1, common.num_params(spec)), [FakeEnv()], spec, record=True)
    assert r["success"][0] == 1.0 and r["return"][0] == 70.0
    assert r["first_success"][0] == 5  # s_5 is the first state reached with success
    np.testing.assert_array_equal(r["post_success"][0], np.repeat([5.0, 6.0, 7.0], 3))
    assert r["traj"].shape == (1, common.traj_dim(3, 2))


def test_twin_q_is_two_independent_critics_per_member():
    torch.manual_seed(0)
    q = s0.TwinQ(5, 2, 16, members=3)
    obs, act = torch.randn(3, 4, 5), torch.randn(3, 4, 2)
    out = q(obs, act)
    assert out.shape == (3, 2, 4)
    for k in range(3):
        x = torch.cat([obs[k], act[k]], 1)
        for i in range(2):
            h = torch.relu(x @ q.w1[k, i] + q.b1[k, i])
            h = torch.relu(h @ q.w2[k, i] + q.b2[k, i])
            torch.testing.assert_close(out[k, i], (h @ q.w3[k, i] + q.b3[k, i]).squeeze(-1))


def test_numpy_actor_matches_torch_and_tracks_updates():
    actor = s0.new_agent(s0.Args(), 17, 6, [0, 1, 2])["actor"]
    np_actor = s0.NumpyActor(actor)
    obs = np.random.default_rng(0).standard_normal((3, 17)).astype(np.float32)
    for _ in range(2):
        mean, log_std = actor(torch.as_tensor(obs)[:, None])
        np.testing.assert_allclose(np_actor(obs)[0], mean[:, 0].detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np_actor(obs)[1], log_std[:, 0].detach().numpy(), rtol=1e-5, atol=1e-6)
        opt = torch.optim.Adam(actor.parameters(), lr=0.1, fused=True)
        torch.tanh(actor(torch.as_tensor(obs)[:, None])[0]).sum().backward()
        opt.step()  # in-place update: the numpy views see it


def test_ensemble_actor_member_is_common_actor_in_the_flat_layout():
    """Member k's slice of the ensemble's state dict loads into common.Actor, and its flat vector is
    common.flatten of that actor: the layout stages 1-3 and the evaluation read."""
    agent = s0.new_agent(s0.Args(), 17, 6, [4, 5])
    torch.manual_seed(5)  # new_agent starts member k as a single expert seeded init_seeds[k]
    single = common.Actor(17, 6)
    member = s0.member_of(agent["actor"].state_dict(), 1)
    for key, v in single.state_dict().items():
        assert torch.equal(member[key], v), key
    torch.testing.assert_close(agent["actor"].flat(1), common.flatten(single), rtol=0, atol=0)
    obs = torch.randn(2, 9, 17)
    torch.testing.assert_close(agent["actor"](obs)[0][1], single(obs[1])[0])


def test_replay_member_samples_only_its_own_rows_with_its_own_generator():
    rb = s0.Replay(3, 10, 2, 1)  # rows of 2 + 1 + 1 + 1 + 2 = 7 values
    for t in range(6):  # member k's transition t holds 10 k + t everywhere
        v = np.array([10.0 * k + t for k in range(3)], np.float32)
        rb.add(np.stack([v, v], 1), v[:, None], v, v, np.stack([v, v], 1))  # obs, act, reward, term, next obs
    batch = rb.sample(50, [torch.Generator().manual_seed(s) for s in (0, 1, 0)])
    assert batch.shape == (3, 50, 7)
    for k in range(3):
        rows = batch[k, :, 0]
        assert ((rows >= 10 * k) & (rows < 10 * k + 6)).all()  # its own 6 rows only, none beyond the size
        assert (batch[k] == rows[:, None]).all()
    torch.testing.assert_close(batch[2] - 20, batch[0])  # members 0 and 2: one seed, so the same row draws
    assert not torch.equal(batch[1, :, 0] - 10, batch[0, :, 0])


def test_sample_action_log_prob_matches_torch_distributions():
    actor = s0.new_agent(s0.Args(), 4, 3, [0, 1])["actor"]
    obs = torch.randn(2, 6, 4)
    y, logp, mean = s0.sample_action(actor, obs, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    m, ls = actor(obs)
    ls = s0.LOG_STD_MIN + 0.5 * (s0.LOG_STD_MAX - s0.LOG_STD_MIN) * (torch.tanh(ls) + 1)
    normal = torch.distributions.Normal(m, ls.exp())
    eps = torch.stack([torch.randn(6, 3, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])  # each own stream
    x = m + ls.exp() * eps
    ref = (normal.log_prob(x) - torch.log(1 - torch.tanh(x).pow(2) + 1e-6)).sum(-1)
    torch.testing.assert_close(y, torch.tanh(x))
    torch.testing.assert_close(logp, ref)


def test_parent_velocity_is_middle_of_range():
    assert s0.parent_velocity([0.075, 0.15, 0.3, 0.525, 0.75, 0.9, 1.35, 1.575, 2.1, 2.55]) == 1.35
    assert s0.parent_velocity([0.3, 1.5]) == 0.3


def check_shard(path, suite, spec, n, task):
    shard = artifacts.load_artifact(path, artifacts.STAGE0_FORMAT, spec=spec, suite=suite)
    P, T, O = common.num_params(spec), common.traj_dim(spec["obs_dim"], spec["act_dim"]), 3 * spec["obs_dim"]
    assert shard["params"].shape == (n, P) and shard["params"].dtype == torch.float32
    for k, dt in (("step", torch.int64), ("return", torch.float32), ("success", torch.float32),
                  ("first_success", torch.int64)):
        assert shard[k].shape == (n,) and shard[k].dtype == dt, k
    assert shard["traj"].shape == (n, T) and shard["post_success"].shape == (n, O)
    assert shard["task"] == task and shard["suite"] == suite
    assert torch.isfinite(shard["params"]).all() and torch.isfinite(shard["return"]).all()
    assert ((shard["success"] == 1) == (shard["first_success"] >= 0)).all()
    return shard


def test_cheetah_smoke_shards(cheetah_chain, tmp_path):
    """The shards stage 0 wrote for the smoke chain (two workers): schema, the stored return is the stored
    policy's, children near the parent; a re-run skips finished shards."""
    run, _ = cheetah_chain
    shutil.copytree(run / "stage0", tmp_path / "stage0")
    shutil.copy(run / "parent.pt", tmp_path / "parent.pt")
    spec = common.policy_spec(17, 6)
    for v in (0.3, 1.5):
        shard = check_shard(tmp_path / "stage0" / f"vel-{v:g}.pt", "cheetah-vel", spec, 4, f"vel-{v:g}")
        assert shard["step"].tolist() == [300, 400, 500, 600]
        assert shard["target_velocity"] == v and (shard["success"] == 0).all()
        # the stored return is the return of the stored policy: re-run checkpoint 0 on the first episode of
        # stage 0's rollout env
        args = s0.Args(seed=1)
        again = common.run_lockstep(shard["params"][:1], [s0.make_env(args, v, seed=args.seed + 1)], spec, record=True)
        assert float(again["return"][0]) == pytest.approx(float(shard["return"][0]), abs=1e-4)
        np.testing.assert_allclose(again["traj"][0], shard["traj"][0].numpy(), atol=1e-6)
    parent = artifacts.load_artifact(tmp_path / "parent.pt", artifacts.PARENT_FORMAT, ("agent",), spec=spec)
    assert parent["task"] == "vel-0.3" and parent["trained_with_sac"]
    # children start from the parent: both differ from it, yet stay close to it in parameter space
    p0 = artifacts.load_artifact(tmp_path / "stage0" / "vel-0.3.pt", artifacts.STAGE0_FORMAT)["params"][0]
    assert 0 < (p0 - parent["params"]).norm() < 0.5 * parent["params"].norm()
    # a re-run skips finished shards
    r = run_stage0("--scale", "smoke", "--run-dir", str(tmp_path))
    assert r.returncode == 0 and "2 tasks (2 done already)" in r.stdout


@pytest.mark.slow
def test_metaworld_smoke_all_16_tasks(tmp_path):
    # every task's environment, scripted expert and checkpoint episode, at the smallest settings that use them
    r = run_stage0("--suite", "metaworld", "--scale", "smoke", "--run-dir", str(tmp_path), "--jobs", "2",
                   "--first-checkpoint", "150", "--num-checkpoints", "1", "--learning-starts", "100",
                   "--demo-steps", "50", "--parent-bc-steps", "100")
    assert r.returncode == 0, r.stderr
    spec = common.policy_spec(39, 4)
    assert len(list((tmp_path / "stage0").glob("*-v3.pt"))) == 16
    for task in common.MW_TASKS:
        shard = check_shard(tmp_path / "stage0" / f"{task}.pt", "metaworld", spec, 1, task)
        assert shard["step"].tolist() == [150] and "target_velocity" not in shard
    parent = artifacts.load_artifact(tmp_path / "parent.pt", artifacts.PARENT_FORMAT, ("agent",), spec=spec)
    assert parent["task"] == "bc:window-open-v3,door-open-v3" and not parent["trained_with_sac"]


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL `proc` as soon as `ready()` holds; fail if it finished first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -9, "the run finished before it could be killed"


def partial_with(path: Path, checkpoints: int) -> bool:
    try:
        return len(torch.load(path, weights_only=True)["history"]["members"][0]["step"]) >= checkpoints
    except Exception:  # noqa: BLE001 - not there yet, or being replaced
        return False


@pytest.mark.slow
def test_resume_after_kills_gives_the_uninterrupted_run_bit_for_bit(tmp_path):
    """Killed after a periodic save of the parent, then of a 2-member ensemble, then after the ensemble's
    first shard is written, the re-runs resume (the ensemble as the same ensemble) and end with the parent
    and the shards of a run that was never interrupted, bit for bit, and say where they resumed."""
    flags = ["--scale", "smoke", "--velocities", "0.6", "1.2", "--save-every", "0", "--num-checkpoints", "12",
             "--checkpoint-every", "50", "--first-checkpoint", "200", "--jobs", "1"]
    r = run_stage0("--run-dir", str(tmp_path / "whole"), *flags)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "stage0_collect_sac.py"), "--no-progress", "--run-dir", str(run), *flags]
    start = lambda: subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: E731
    kill_when(start(), lambda: (run / "parent.partial.pt").exists())
    assert not (run / "parent.pt").exists()
    partial = run / "stage0" / "vel-0.6+1.partial.pt"  # one state for the ensemble of vel-0.6 and vel-1.2
    kill_when(start(), lambda: partial_with(partial, 4))
    saved = torch.load(partial, weights_only=True)
    assert saved["extra"]["members"] == ["vel-0.6", "vel-1.2"]
    assert not (run / "stage0" / "vel-0.6.pt").exists() and not (run / "stage0" / "vel-1.2.pt").exists()
    r = run_stage0("--run-dir", str(run), *flags)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {partial} at step {saved['step']}" in r.stdout
    checkpoints = len(saved["history"]["members"][0]["step"])
    assert f"vel-0.6+vel-1.2: {checkpoints} checkpoints saved before step {saved['step']}" in r.stdout
    whole = {p: torch.load(tmp_path / "whole" / p, weights_only=True)
             for p in ("parent.pt", "stage0/vel-0.6.pt", "stage0/vel-1.2.pt")}
    again = {p: torch.load(run / p, weights_only=True) for p in whole}
    assert torch.equal(whole["parent.pt"]["params"], again["parent.pt"]["params"])
    assert again["parent.pt"]["resumed_at"] and not whole["parent.pt"]["resumed_at"]
    for shard in ("stage0/vel-0.6.pt", "stage0/vel-1.2.pt"):
        assert again[shard]["resumed_at"] == [saved["step"]] and again[shard]["ensemble"] == ["vel-0.6", "vel-1.2"]
        for k in s0.RECORD_KEYS:
            assert torch.equal(whole[shard][k], again[shard][k]), (shard, k)
    assert not partial.exists()


@pytest.mark.slow
def test_a_failure_while_the_shards_are_written_resumes_from_the_finished_state(tmp_path, monkeypatch, one_thread):
    """The ensemble saves its finished state before it writes the shards; a failure after the first shard
    leaves that state, and the re-run writes the second shard from it, without training, equal bit for bit
    to the shard of a run that never failed."""
    argv = ["--scale", "smoke", "--velocities", "0.3", "1.5", "--num-checkpoints", "2", "--first-checkpoint", "250",
            "--checkpoint-every", "50", "--parent-steps", "200", "--learning-starts", "100"]
    spec, shards = common.suite_spec("cheetah-vel"), {}
    for name in ("whole", "failed"):
        args = common.parse_args(s0.Args, s0.SCALES, "", argv=[*argv, "--run-dir", str(tmp_path / name)])
        (tmp_path / name / "stage0").mkdir(parents=True)
        parent = s0.train_parent(args, [0.3, 1.5], spec, tmp_path / name / "parent.pt")
        parent = artifacts.load_artifact(tmp_path / name / "parent.pt", artifacts.PARENT_FORMAT)  # with its uid
        if name == "failed":
            real, written = artifacts.save_artifact, []

            def fail_on_the_second_shard(obj, path):
                if obj.get("format") == artifacts.STAGE0_FORMAT:
                    if written:
                        raise OSError("disk full")
                    written.append(path)
                real(obj, path)

            monkeypatch.setattr(artifacts, "save_artifact", fail_on_the_second_shard)
            with pytest.raises(OSError):
                s0.train_experts(args, [0.3, 1.5], parent, spec, tmp_path / name / "stage0")
            monkeypatch.setattr(artifacts, "save_artifact", real)
            state = torch.load(tmp_path / name / "stage0" / "vel-0.3+1.partial.pt", weights_only=True)
            assert state["step"] == 300 and (tmp_path / name / "stage0" / "vel-0.3.pt").exists()
        lines = s0.train_experts(args, [0.3, 1.5], parent, spec, tmp_path / name / "stage0")
        shards[name] = torch.load(tmp_path / name / "stage0" / "vel-1.5.pt", weights_only=True)
    assert lines[0] == "vel-0.3: written before the re-run" and "resumed at step 300" in lines[1]
    for k in s0.RECORD_KEYS:
        assert torch.equal(shards["whole"][k], shards["failed"][k]), k
    assert not list((tmp_path / "failed" / "stage0").glob("*.partial.pt"))


@pytest.mark.parametrize("flags, message", [
    (["--suite", "metaworld", "--tasks", "door-open-v3", "open-door"], "unknown MetaWorld task(s) open-door; valid: "),
    (["--velocities", "0.5", "4.0"], "target velocities must lie in [0, 3]; got 4.0"),
    (["--velocities", "0.5", "abc"], "--velocities takes numbers in [0, 3]; got 0.5 abc"),
    (["--checkpoint-every", "-5"], "--checkpoint-every must be > 0; got -5"),
])
def test_bad_input_one_line_error(tmp_path, flags, message):
    r = run_stage0("--scale", "smoke", "--run-dir", str(tmp_path), *flags, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr
    if "valid" in message:
        assert all(t in r.stderr for t in common.MW_TASKS)


def test_bad_parent_artifact_one_line_error(tmp_path):
    spec = common.policy_spec(39, 4)  # a MetaWorld-sized parent where Cheetah-Vel is expected
    artifacts.save_artifact({"format": artifacts.PARENT_FORMAT, "suite": "cheetah-vel", "policy": spec, "settings": {"scale": "smoke"},
                          "params": torch.zeros(22_664), "agent": {}}, tmp_path / "parent.pt")
    r = run_stage0("--scale", "smoke", "--run-dir", str(tmp_path), timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
    assert "parent.pt: policy is" in r.stderr


def test_sac_update_moves_q_to_the_bellman_target_and_each_alpha_its_own_way():
    """One update of a 2-member ensemble on a hand-made batch: with gamma = 0 the target is the reward, and
    Q moves towards it; each member's log alpha rises when its policy's entropy is below the target
    (-act_dim) and falls when above: member 0 is set far below, member 1 above, in the same update."""
    args = s0.Args(gamma=0.0, critic_hidden=16, q_lr=1e-2, policy_lr=1e-3)
    torch.manual_seed(0)
    obs, act = torch.randn(2, 32, 3), torch.rand(2, 32, 2) * 2 - 1
    rew, term, nxt = torch.full((2, 32), 5.0), torch.zeros(2, 32), torch.randn(2, 32, 3)
    # log_std = -5 + 3.5 (tanh(bias) + 1): bias -20 gives std e^-5 (entropy far below -2), 0.458 gives std 1
    # (about -1.2 nats per sample after the tanh squash: above the target -2)
    agent = s0.new_agent(args, 3, 2, [0, 0])
    with torch.no_grad():
        agent["actor"].fc_logstd.weight.zero_()
        agent["actor"].fc_logstd.bias[0].fill_(-20.0), agent["actor"].fc_logstd.bias[1].fill_(0.458)
    q0 = agent["qf"](obs, act).detach()
    la0 = agent["log_alpha"].detach().clone()
    target0 = [p.detach().clone() for p in agent["qf_target"].parameters()]
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    out = s0.sac_update(agent, args, (obs, act, rew, term, nxt), step=0, alpha=torch.full((2, 1), 0.2), gens=gens)
    q1 = agent["qf"](obs, act).detach()
    assert (q1 - 5.0).abs().mean() < (q0 - 5.0).abs().mean()  # both critics of both members moved towards r = 5
    assert ((q1 - 5.0).abs() < (q0 - 5.0).abs()).float().mean() > 0.9
    moved = (agent["log_alpha"].detach() - la0).squeeze(1)
    assert moved[0] > 0 and moved[1] < 0
    assert set(out) == {"q_loss", "actor_loss"} and out["q_loss"].shape == (2,)  # step 0: the actor update ran
    # the target critics moved by tau of the way to the critics (Polyak)
    for t0, t1, p in zip(target0, agent["qf_target"].parameters(), agent["qf"].parameters()):
        torch.testing.assert_close(t1, t0 + args.tau * (p.detach() - t0))


def test_behaviour_cloning_term_on_the_demonstration_rows(monkeypatch):
    """With demonstrations (MetaWorld quick) the actor loss adds bc_weight x mean |Q| x the MSE between
    tanh(mean) and the demonstrated action, on the first n_demo rows only; here the sample is made
    deterministic (the tanh of the mean, log-probability 0) so the loss can be written out by hand."""
    import copy

    args = s0.Args(critic_hidden=16, policy_frequency=1, bc_weight=2.5)
    torch.manual_seed(0)
    obs, act = torch.randn(1, 8, 3), torch.rand(1, 8, 2) * 2 - 1
    batch = (obs, act, torch.randn(1, 8), torch.zeros(1, 8), torch.randn(1, 8, 3))
    monkeypatch.setattr(s0, "sample_action", lambda actor, o, gens: (torch.tanh(actor(o)[0]), torch.zeros(o.shape[:2]),
                                                                       actor(o)[0]))
    agent = s0.new_agent(args, 3, 2, [0])
    actor_before = copy.deepcopy(agent["actor"])
    out = s0.sac_update(agent, args, batch, step=0, alpha=torch.full((1, 1), 0.2), gens=[None], n_demo=3)
    with torch.no_grad():  # the critics the actor step saw are the updated ones (its own step changes only the actor)
        mean = actor_before(obs)[0][0]
        q = agent["qf"](obs, torch.tanh(mean)[None]).min(1).values[0]
        want = -q.mean() + 2.5 * q.abs().mean() * (torch.tanh(mean[:3]) - act[0, :3]).pow(2).mean()
    assert out["actor_loss"].item() == pytest.approx(want.item(), rel=1e-5)


def single_expert_update(actor, critics, critic_targets, log_alpha, opts, args, batch, step, gen):
    """The reference: one SAC update of one expert written plainly (CleanRL's loop: common.Actor, two critics
    as separate MLPs given by weight lists, python float alpha), drawing its noise from `gen`."""
    obs, act, rew, term, nxt = batch

    def q_of(w, o, a):
        h = torch.relu(torch.cat([o, a], 1) @ w[0] + w[1][0])
        h = torch.relu(h @ w[2] + w[3][0])
        return (h @ w[4] + w[5][0]).squeeze(-1)

    def sample(o):
        mean, log_std = actor(o)
        log_std = s0.LOG_STD_MIN + 0.5 * (s0.LOG_STD_MAX - s0.LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        eps = torch.randn(mean.shape, generator=gen)
        y = torch.tanh(mean + log_std.exp() * eps)
        return y, (-0.5 * eps.pow(2) - log_std - 0.5 * np.log(2 * np.pi) - torch.log(1 - y.pow(2) + 1e-6)).sum(1)

    alpha = log_alpha.exp().item()
    with torch.no_grad():
        na, nlp = sample(nxt)
        target = rew + args.gamma * (1 - term) * (torch.min(q_of(critic_targets[0], nxt, na),
                                                            q_of(critic_targets[1], nxt, na)) - alpha * nlp)
    q_loss = sum(((q_of(c, obs, act) - target) ** 2).mean() for c in critics)
    opts["q"].zero_grad()
    q_loss.backward()
    opts["q"].step()
    if step % args.policy_frequency == 0:
        for _ in range(args.policy_frequency):
            a, logp = sample(obs)
            actor_loss = (alpha * logp - torch.min(q_of(critics[0], obs, a), q_of(critics[1], obs, a))).mean()
            opts["actor"].zero_grad()
            actor_loss.backward()
            opts["actor"].step()
            alpha_loss = -(log_alpha * (logp.detach() - act.shape[1])).mean()
            opts["alpha"].zero_grad()
            alpha_loss.backward()
            opts["alpha"].step()
            alpha = log_alpha.exp().item()
    with torch.no_grad():
        for c, t in zip(critics, critic_targets):
            for p, tp in zip(c, t):
                tp.mul_(1 - args.tau).add_(args.tau * p)


def test_a_member_of_the_ensemble_is_a_single_expert():
    """Member 1 of a 3-member ensemble and a plainly written single expert (the reference above), started
    from the same weights, updated on the same batches with noise from the same seed: after 6 updates (3 of
    them with the delayed actor steps) their actors, critics, targets and temperatures agree within float
    tolerance (rtol 1e-5: the batched kernels may round differently; a whole 1-member smoke run of stage 0
    equals the single-expert code it replaced bit for bit, docs/speed.md)."""
    args = s0.Args(critic_hidden=32)
    agent = s0.new_agent(args, 5, 2, [3, 4, 5])
    torch.manual_seed(4)  # member 1's init
    actor = common.Actor(5, 2)
    member = s0.member_of(agent["qf"].state_dict(), 1)
    critics = [[member[k][i].clone().requires_grad_(True) for k in ("w1", "b1", "w2", "b2", "w3", "b3")] for i in range(2)]
    critic_targets = [[p.detach().clone() for p in c] for c in critics]
    log_alpha = torch.tensor(np.log(args.alpha), dtype=torch.float32, requires_grad=True)
    opts = {"q": torch.optim.Adam([p for c in critics for p in c], lr=args.q_lr),
            "actor": torch.optim.Adam(actor.parameters(), lr=args.policy_lr),
            "alpha": torch.optim.Adam([log_alpha], lr=args.q_lr)}
    gens, gen = [torch.Generator().manual_seed(s) for s in (7, 8, 9)], torch.Generator().manual_seed(8)
    data = torch.Generator().manual_seed(0)
    for step in range(6):
        obs, act = torch.randn(3, 64, 5, generator=data), torch.rand(3, 64, 2, generator=data) * 2 - 1
        rew, nxt = torch.randn(3, 64, generator=data), torch.randn(3, 64, 5, generator=data)
        term = (torch.rand(3, 64, generator=data) < 0.1).float()
        s0.sac_update(agent, args, (obs, act, rew, term, nxt), step, agent["log_alpha"].detach().exp(), gens)
        single_expert_update(actor, critics, critic_targets, log_alpha, opts, args,
                             (obs[1], act[1], rew[1], term[1], nxt[1]), step, gen)
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(agent["actor"].flat(1), common.flatten(actor), **tol)
    for name, ref in (("qf", critics), ("qf_target", critic_targets)):
        got = s0.member_of(agent[name].state_dict(), 1)
        for j, k in enumerate(("w1", "b1", "w2", "b2", "w3", "b3")):
            for i in range(2):
                torch.testing.assert_close(got[k][i], ref[i][j].detach(), **tol)
    torch.testing.assert_close(agent["log_alpha"][1, 0].detach(), log_alpha.detach(), **tol)
    assert not torch.allclose(agent["actor"].flat(1), agent["actor"].flat(0))  # the members did train apart


def test_no_member_reaches_another():
    """Two copies of a 3-member ensemble, updated on the same batches, except that in the second member 0's
    weights, temperature, batch and noise are all changed: members 1 and 2 end equal bit for bit."""
    import copy

    args = s0.Args(critic_hidden=32, bc_weight=2.5)
    agents = [s0.new_agent(args, 5, 2, [3, 4, 5])]
    agents.append(copy.deepcopy(agents[0]))
    with torch.no_grad():
        for p in list(agents[1]["actor"].parameters()) + list(agents[1]["qf"].parameters()):
            p[0].mul_(3.0)
        agents[1]["log_alpha"][0] += 1.0
    for ag in agents:  # fresh optimizers over the (possibly perturbed) weights
        ag["actor_opt"] = torch.optim.Adam(ag["actor"].parameters(), lr=args.policy_lr, fused=True)
        ag["q_opt"] = torch.optim.Adam(ag["qf"].parameters(), lr=args.q_lr, fused=True)
        ag["alpha_opt"] = torch.optim.Adam([ag["log_alpha"]], lr=args.q_lr)
    data = torch.Generator().manual_seed(0)
    for step in range(6):
        batch = [torch.randn(3, 64, 5, generator=data), torch.rand(3, 64, 2, generator=data) * 2 - 1,
                 torch.randn(3, 64, generator=data), torch.zeros(3, 64), torch.randn(3, 64, 5, generator=data)]
        for i, ag in enumerate(agents):
            b = [x.clone() for x in batch]
            if i:
                for x in b:
                    x[0] = x[0] * 5 + 1  # member 0's data changed
            gens = [torch.Generator().manual_seed(s + 100 * i * (k == 0)) for k, s in enumerate((7, 8, 9))]
            s0.sac_update(ag, args, tuple(b), step, ag["log_alpha"].detach().exp(), gens, n_demo=16)
    for name in ("actor", "qf", "qf_target"):
        for p, q in zip(agents[0][name].parameters(), agents[1][name].parameters()):
            assert torch.equal(p[1:], q[1:]), name
            assert not torch.equal(p[0], q[0])
    assert torch.equal(agents[0]["log_alpha"][1:], agents[1]["log_alpha"][1:])


def test_goal_seeds_of_training_never_equal_the_evaluation_seed():
    args = s0.Args(suite="metaworld", seed=1)
    seeds = s0.goal_seeds(args)
    assert common.EVAL_GOAL_SEED not in seeds.values() and seeds["checkpoint rollouts (later: conditioning)"] == 2
    # and the goals themselves differ: no evaluation goal equals a training or conditioning goal
    def goal_obs(seed):  # a goal configuration is the random vector set_task fixes (object or goal positions)
        return {pickle.loads(g.data)["rand_vec"].round(6).tobytes() for g in common.metaworld_goals("drawer-close-v3", seed)}
    evaluation, selection = goal_obs(common.EVAL_GOAL_SEED), goal_obs(common.SELECT_GOAL_SEED)
    validation = goal_obs(common.VALIDATION_GOAL_SEED)
    assert len(evaluation) > 40 and len(selection) > 40 and len(validation) > 40  # 50 mostly different goals
    assert not evaluation & selection  # top-k never picks on a scored goal
    assert not validation & (evaluation | selection)  # stage 0's settings are never chosen on them either
    for name in ("training", "checkpoint rollouts (later: conditioning)", "demonstrations"):
        assert not evaluation & goal_obs(seeds[name]), name
        assert not selection & goal_obs(seeds[name]), name
        assert not validation & goal_obs(seeds[name]), name
    # a seed whose goal seeds would be the selection or validation goals' is refused like the evaluation's
    for seed in (1025, 1026):  # parent demonstrations of the 2nd task: seed + 1000
        with pytest.raises(SystemExit, match=f"goals with seed 2024, 2025, 2026.*{seed + 1000}|seed {seed} would"):
            s0.validate(s0.Args(suite="metaworld", seed=seed))


def test_stage0_refuses_another_scale_or_setting_in_its_run_directory(cheetah_chain, tmp_path):
    run, _ = cheetah_chain  # its parent and one shard: stage 0 finds its work done
    (tmp_path / "stage0").mkdir()
    shutil.copy(run / "parent.pt", tmp_path / "parent.pt")
    shutil.copy(run / "stage0" / "vel-0.3.pt", tmp_path / "stage0" / "vel-0.3.pt")
    r = run_stage0("--scale", "smoke", "--run-dir", str(tmp_path), "--velocities", "0.3")
    assert r.returncode == 0 and "1 tasks (1 done already)" in r.stdout, r.stderr
    for flags, message in ((["--scale", "quick"], "parent.pt: made at scale 'smoke', this run is at scale 'quick'"),
                           (["--scale", "smoke", "--checkpoint-every", "50"],
                            "parent.pt: made with checkpoint_every = 100, this run has checkpoint_every = 50")):
        r = run_stage0(*flags, "--run-dir", str(tmp_path), "--velocities", "0.3", timeout=120)
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr
    shard = torch.load(tmp_path / "stage0" / "vel-0.3.pt", weights_only=True)
    # a resumable state of another parent is refused before any work starts
    artifacts.save_artifact({"format": s0.PARTIAL_FORMAT, "settings": shard["settings"],
                             "made_from": {"parent.pt": "0" * 32}}, tmp_path / "stage0" / "vel-1.5.partial.pt")
    r = run_stage0("--scale", "smoke", "--run-dir", str(tmp_path), "--velocities", "0.3", "1.5", timeout=120)
    assert r.returncode == 1 and "vel-1.5.partial.pt: made from other inputs" in r.stderr, r.stderr
    assert "remade since: parent.pt" in r.stderr
    (tmp_path / "stage0" / "vel-1.5.partial.pt").unlink()
    # a shard of another parent (here: a parent remade after the shard) is refused, with what to do
    shard["made_from"] = {"parent.pt": "0" * 32}
    artifacts.save_artifact(shard, tmp_path / "stage0" / "vel-0.3.pt")
    r = run_stage0("--scale", "smoke", "--run-dir", str(tmp_path), "--velocities", "0.3", timeout=120)
    assert r.returncode == 1 and "vel-0.3.pt: fine-tuned from another parent" in r.stderr
    (tmp_path / "stage0" / "vel-0.3.pt").write_bytes(b"truncated")
    r = run_stage0("--scale", "smoke", "--run-dir", str(tmp_path), "--velocities", "0.3", timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
    assert "not a readable artifact" in r.stderr and "delete it to retrain that task" in r.stderr


@pytest.mark.slow
def test_stage0_benchmark_runs():
    """The speed benchmark runs against stage 0's code (no timing is asserted)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_stage0_sac.py"), "--tasks", "3", "--steps",
                        "300", "--learning-starts", "200", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 tasks x 300 SAC steps" in r.stdout and "ensembles of 2/1" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("ensemble / per-task throughput: ")


@pytest.mark.parametrize("flags, message", [
    (["--velocities"], "--velocities needs at least one velocity"),
    (["--num-checkpoints", "0"], "--num-checkpoints must be > 0; got 0"),
    (["--batch-size", "0"], "--batch-size must be > 0; got 0"),
    (["--jobs", "-3"], "--jobs must be >= 0; got -3"),
    (["--gamma", "1.5"], "--gamma must be in [0, 1); got 1.5"),
    (["--suite", "metaworld", "--seed", "2023"], "would draw the checkpoint rollouts (later: conditioning) goals with seed 2024"),
    (["--suite", "metaworld", "--seed", "1024"], "would draw the parent demonstrations of door-open-v3 goals with seed 2024"),
])
def test_bad_options_refused_before_any_work(flags, message):
    """The same validation the command line runs first (one subprocess case above checks the one-line stderr)."""
    args = common.parse_args(s0.Args, s0.SCALES, "", argv=["--scale", "smoke", *flags])
    with pytest.raises(SystemExit) as e:
        s0.validate(args)
    assert message in str(e.value) and "\n" not in str(e.value)




def test_a_k_member_run_gives_the_k_single_runs_checkpoints(tmp_path, one_thread):
    """Stage 0's loop with two velocities as one 2-member ensemble, and each velocity alone (a 1-member
    ensemble is the single expert): same seeds, same schedule; the saved checkpoints agree within float
    tolerance and their recorded returns within 0.5 (the batched kernels may round differently, and
    rounding grows over training; nothing else differs)."""
    args = common.parse_args(s0.Args, s0.SCALES, "", argv=["--scale", "smoke", "--learning-starts", "100"])

    def run(tasks):
        agent = s0.new_agent(args, 17, 6, [args.seed] * len(tasks))
        return s0.run_sac(args, agent, tasks, [args.seed] * len(tasks), 220, [160, 220], False,
                          [f"v{t}" for t in tasks], tmp_path / f"{len(tasks)}-{tasks[0]}.partial.pt", {})

    both, alone = run([0.3, 1.5]), [run([0.3])[0], run([1.5])[0]]
    for b, a in zip(both, alone):
        assert b["step"] == a["step"] == [160, 220]
        for x, y in zip(b["params"], a["params"]):
            torch.testing.assert_close(x, y, rtol=0, atol=2e-3)
        np.testing.assert_allclose(b["return"], a["return"], atol=0.5)
    assert abs(both[0]["return"][-1] - both[1]["return"][-1]) > 5  # the members are different experts


def test_an_upside_down_parent_is_trained_again_from_the_next_seed(tmp_path, monkeypatch, capsys, one_thread):
    """The parent rule reads the parent alone: here the first two tries are made to end upside down, so the
    third, from seed + 2000, is kept; every try is logged in the parent artifact and on stdout, and the kept
    parent is what a run started at seed + 2000 trains."""
    argv = ["--scale", "smoke", "--parent-steps", "120", "--learning-starts", "60"]
    args = common.parse_args(s0.Args, s0.SCALES, "", argv=argv)
    real, seen = s0.deterministic_episode, []

    def two_upside_down(params, velocities, spec):
        seen.append(params.clone())
        return [(r, len(seen) >= 3) for r, _ in real(params, velocities, spec)]

    monkeypatch.setattr(s0, "deterministic_episode", two_upside_down)
    spec = common.suite_spec("cheetah-vel")
    parent = s0.train_parent(args, [0.3, 1.5], spec, tmp_path / "parent.pt")
    assert [t["seed"] for t in parent["tries"]] == [1, 1001, 2001]
    assert [t["upright"] for t in parent["tries"]] == [False, False, True]
    assert torch.equal(parent["params"], seen[2][0]) and not torch.equal(seen[0], seen[1])
    out = capsys.readouterr().out
    assert "parent try 2 (seed 1001): deterministic return" in out and "UPSIDE DOWN at the end" in out
    assert not list(tmp_path.glob("*.partial.pt"))
    monkeypatch.setattr(s0, "deterministic_episode", real)
    again = s0.train_parent(common.parse_args(s0.Args, s0.SCALES, "", argv=[*argv, "--seed", "2001"]), [0.3, 1.5], spec,
                            tmp_path / "seed2001.pt")
    assert torch.equal(again["params"], parent["params"])


def test_compare_stage0_finds_equal_and_changed_checkpoints(cheetah_chain, tmp_path):
    """benchmarks/compare_stage0.py: a run against a copy of itself is equal bit for bit with difference 0;
    against a copy whose vel-0.3 expert returns 2 more at every checkpoint and has one changed weight, that
    expert is 'no' and the mean difference is 2 / 2 experts = +1.00."""
    run, _ = cheetah_chain
    shutil.copytree(run / "stage0", tmp_path / "stage0")
    bench = [sys.executable, str(ROOT / "benchmarks" / "compare_stage0.py"), str(run), str(tmp_path)]
    r = subprocess.run(bench, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| yes |") == 2 and "over 2 experts: +0.00" in r.stdout
    shard = torch.load(tmp_path / "stage0" / "vel-0.3.pt", weights_only=True)
    shard["return"] = shard["return"] + 2.0
    shard["params"][0, 0] += 1e-6
    artifacts.save_artifact(shard, tmp_path / "stage0" / "vel-0.3.pt")
    r = subprocess.run(bench, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "| stage0 | vel-0.3 |" in r.stdout and r.stdout.count("| yes |") == 1 and r.stdout.count("| no |") == 1
    assert "over 2 experts: +1.00" in r.stdout


def test_independent_experts_share_no_initial_weights_and_keep_to_their_regime(tmp_path, one_thread):
    """--experts independent: no parent; each expert its own seed (run seed + 10,000 x (grid index + 1)), so
    two experts' initial weights share nothing; checkpoints start after the parent's steps; a run directory
    of one regime refuses the other before any training."""
    args = common.parse_args(s0.Args, s0.SCALES, "", argv=["--scale", "smoke", "--experts", "independent"])
    assert [s0.expert_seed(args, v) for v in (0.075, 0.3, 1.5)] == [10_001, 40_001, 200_001]
    agent = s0.new_agent(args, 17, 6, [s0.expert_seed(args, v) for v in (0.3, 1.5)])
    for p in list(agent["actor"].parameters()) + list(agent["qf"].parameters()):
        assert not torch.isclose(p[0], p[1]).any()  # no weight equal between the two members
    run = tmp_path / "independent"
    flags = ["--scale", "smoke", "--velocities", "0.3", "1.5", "--num-checkpoints", "2", "--parent-steps", "150",
             "--learning-starts", "100", "--first-checkpoint", "100", "--checkpoint-every", "50", "--jobs", "1"]
    r = run_stage0("--run-dir", str(run), "--experts", "independent", *flags)
    assert r.returncode == 0, r.stderr
    assert not (run / "parent.pt").exists() and "parent" not in r.stdout.split("stage 0:")[0]
    shard = torch.load(run / "stage0" / "vel-0.3.pt", weights_only=True)
    assert shard["made_from"] == {} and shard["step"].tolist() == [250, 300]
    assert shard["settings"]["experts"] == "independent"
    r = run_stage0("--run-dir", str(run), *flags)  # the one-parent regime in the independent run's directory
    assert r.returncode == 1 and "made with experts = 'independent', this run has experts = 'one-parent'" in r.stderr
    assert not (run / "parent.pt").exists()  # refused before the parent was trained
    (run / "parent.pt").write_bytes(b"")
    r = run_stage0("--run-dir", str(run), "--experts", "independent", *flags)
    assert r.returncode == 1 and "this run directory is of experts from one parent" in r.stderr


def test_metaworld_independent_warm_start_clones_each_members_own_demonstrations(one_thread):
    """MetaWorld's independent experts start from cloning their own demonstrations alone: member 0's
    scripted actions are all +0.5, member 1's all -0.5; after the warm start each acts as its own."""
    args = common.parse_args(s0.Args, s0.SCALES, "", argv=["--suite", "metaworld", "--scale", "smoke",
                                                            "--experts", "independent", "--parent-bc-steps", "300"])
    assert [s0.expert_seed(args, t) for t in ("window-open-v3", common.MW_UNSEEN[0])] == [10_001, 90_001]
    rng = np.random.default_rng(0)
    demos = [[(rng.standard_normal((11, 39)).astype(np.float32), np.full((10, 4), a, np.float32), np.zeros(10))]
             for a in (0.5, -0.5)]
    agent = s0.new_agent(args, 39, 4, [1, 2])
    s0.bc_warm_start(args, agent, demos, [1, 2])
    obs = torch.as_tensor(np.stack([d[0][0][:10] for d in demos]))  # each member on its demonstrations' states
    act = torch.tanh(agent["actor"](obs)[0])
    assert torch.allclose(act[0], torch.full((10, 4), 0.5), atol=0.05)
    assert torch.allclose(act[1], torch.full((10, 4), -0.5), atol=0.05)
