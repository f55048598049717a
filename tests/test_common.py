"""common.py: the policy layout, the batched forward, the environments, the rollout features, artifacts."""

import numpy as np
import pytest
import torch

import artifacts
import common


def test_policy_sizes_match_design():
    assert common.num_params(common.policy_spec(39, 4)) == 22_664
    assert common.num_params(common.policy_spec(17, 6)) == 20_364


def test_flatten_unflatten_round_trip():
    torch.manual_seed(0)
    a, b = common.Actor(17, 6), common.Actor(17, 6)
    vec = common.flatten(a)
    assert vec.shape == (20_364,) and vec.dtype == torch.float32
    common.unflatten(vec, b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(common.flatten(b), vec)
    with torch.no_grad():
        b.fc1.weight.add_(1.0)  # the actor holds a copy: changing it leaves the vector as it was
    assert torch.equal(vec, common.flatten(a))
    # the layout is fc1.weight [out, in] row-major first, then fc1.bias, ...
    assert torch.equal(vec[:17], a.fc1.weight[0])
    assert torch.equal(vec[128 * 17 : 128 * 17 + 128], a.fc1.bias)
    with pytest.raises(ValueError, match="20363 values"):
        common.unflatten(vec[:-1], b)


def test_batched_act_equals_module_for_several_policies():
    torch.manual_seed(1)
    spec = common.policy_spec(39, 4)
    actors = [common.Actor(39, 4) for _ in range(5)]
    for i, a in enumerate(actors):  # make them differ beyond the init scale
        with torch.no_grad():
            a.fc_mean.weight.mul_(1 + i)
    params = torch.stack([common.flatten(a) for a in actors])
    obs = torch.randn(5, 7, 39) * 2
    out = common.batched_act(params, obs, spec)
    assert out.shape == (5, 7, 4)
    for i, a in enumerate(actors):
        with torch.no_grad():
            ref = a.act(obs[i])
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)
    # policies are not mixed up: policy 0 on policy 1's observations differs from policy 1's actions
    assert not torch.allclose(out[1], actors[0].act(obs[1]).detach(), atol=1e-3)


def test_cheetah_vel_reward_on_real_steps():
    env = common.CheetahVel(1.2, seed=0)
    obs, _ = env.reset()
    assert obs.shape == (17,) and obs.dtype == np.float32
    rng = np.random.default_rng(0)
    dt = env.env.dt
    for t in range(200):
        x_before = float(env.env.data.qpos[0])
        a = rng.uniform(-1, 1, 6).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        v = (float(env.env.data.qpos[0]) - x_before) / dt  # x velocity measured independently of info
        assert r == pytest.approx(-abs(v - 1.2) - 0.05 * float(np.sum(a.astype(np.float64) ** 2)), abs=1e-5)
        assert not term
        assert trunc == (t == 199)
    # hand-computed numbers: v = 1.0, v* = 1.2, a = (0.5, 0, ..., 0, -1) -> -0.2 - 0.05 * 1.25
    assert common.cheetah_vel_reward(1.0, np.array([0.5, 0, 0, 0, 0, -1.0]), 1.2) == pytest.approx(-0.2625)


def test_upside_down_is_the_torso_pitch():
    env = common.CheetahVel(1.2, seed=0)
    env.reset()
    assert not env.upside_down()
    qpos, qvel = env.env.data.qpos.copy(), env.env.data.qvel.copy()
    for pitch, flipped in ((1.5, False), (1.6, True), (-3.1, True), (0.2, False)):  # pi / 2 = 1.5708
        qpos[2] = pitch
        env.env.set_state(qpos, qvel)
        assert env.upside_down() == flipped, pitch


def test_velocity_grid_and_split():
    assert len(common.CHEETAH_GRID) == 40 and common.CHEETAH_GRID[0] == 0.075 and common.CHEETAH_GRID[-1] == 3.0
    assert common.CHEETAH_TEST == [0.225, 0.6, 1.2, 1.8, 2.025]
    assert len(common.CHEETAH_TRAIN) == 35 and not set(common.CHEETAH_TEST) & set(common.CHEETAH_TRAIN)
    quick = common.cheetah_quick_velocities(seed=0)
    assert len(quick) == 10 and set(quick) <= set(common.CHEETAH_TRAIN)
    assert quick == common.cheetah_quick_velocities(seed=0)


def test_rollout_features_layout():
    T, o, a = 100, 2, 1
    obs = np.arange((T + 1) * o, dtype=np.float32).reshape(T + 1, o)  # s_t = (2t, 2t+1)
    acts = 1000 + np.arange(T, dtype=np.float32).reshape(T, a)  # a_t = 1000 + t
    traj, post = common.rollout_features(obs, acts, first_success=10)
    assert traj.shape == (common.traj_dim(o, a),) == (20 * (2 + 3),)
    np.testing.assert_array_equal(traj[:10], [0, 1, 1000, 1001, 1002, 6, 7, 1003, 1004, 1005])
    np.testing.assert_array_equal(traj[-5:], [114, 115, 1057, 1058, 1059])
    np.testing.assert_array_equal(post, [20, 21, 22, 23, 24, 25])  # s_10, s_11, s_12
    _, post = common.rollout_features(obs, acts, first_success=None)  # never succeeded: the last 3 states
    np.testing.assert_array_equal(post, obs[-3:].reshape(-1))
    _, post = common.rollout_features(obs, acts, first_success=T)  # success at the very end
    np.testing.assert_array_equal(post, obs[-3:].reshape(-1))
    assert common.traj_dim(39, 4) == 1020


def test_metaworld_goals_fixed_by_set_task():
    env = common.make_metaworld("door-open-v3")
    goals_a = common.metaworld_goals("door-open-v3", seed=123)
    goals_b = common.metaworld_goals("door-open-v3", seed=123)
    assert len(goals_a) == common.MW_GOALS
    env.set_task(goals_a[0])
    o1, _ = env.reset()
    env.set_task(goals_b[0])
    o2, _ = env.reset()
    env.set_task(goals_a[1])
    o3, _ = env.reset()
    assert o1.shape == (39,)
    np.testing.assert_array_equal(o1, o2)
    assert np.abs(o1 - o3).max() > 1e-3


def test_bad_task_and_velocity_errors():
    with pytest.raises(SystemExit, match=r"unknown MetaWorld task\(s\) door-open-v2; valid: window-open-v3, "):
        common.check_metaworld_tasks(["door-open-v3", "door-open-v2"])
    with pytest.raises(SystemExit, match=r"must lie in \[0, 3\]; got 3.5"):
        common.check_velocities([1.0, 3.5])


def test_artifact_errors(tmp_path):
    spec = common.policy_spec(17, 6)
    good = {"format": "x v1", "suite": "cheetah-vel", "policy": spec, "params": torch.zeros(2, 20_364)}
    artifacts.save_artifact(good, tmp_path / "a.pt")
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed away
    obj = artifacts.load_artifact(tmp_path / "a.pt", "x v1", ("params",), spec=spec, suite="cheetah-vel")
    assert torch.equal(obj["params"], good["params"])

    def err(path, **kw):
        with pytest.raises(SystemExit) as e:
            artifacts.load_artifact(path, **kw)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg
        return msg

    assert "file not found" in err(tmp_path / "nope.pt", fmt="x v1")
    assert "format is 'x v1', expected 'y v1'" in err(tmp_path / "a.pt", fmt="y v1")
    assert "missing key(s) traj" in err(tmp_path / "a.pt", fmt="x v1", keys=("params", "traj"))
    assert "suite is 'cheetah-vel', expected 'metaworld'" in err(tmp_path / "a.pt", fmt="x v1", suite="metaworld")
    assert "policy is" in err(tmp_path / "a.pt", fmt="x v1", spec=common.policy_spec(39, 4))
    bad = dict(good, params=torch.zeros(2, 100))
    artifacts.save_artifact(bad, tmp_path / "b.pt")
    assert "100 values per policy, expected 20364" in err(tmp_path / "b.pt", fmt="x v1", spec=spec)
    (tmp_path / "c.pt").write_text("not a torch file")
    assert "not a readable artifact" in err(tmp_path / "c.pt", fmt="x v1")
    torch.save([1, 2], tmp_path / "d.pt")
    assert "no 'format' key" in err(tmp_path / "d.pt", fmt="x v1")
