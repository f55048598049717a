"""evaluate.py: lockstep against one-at-a-time rollouts, the baselines, the contract of its outputs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import artifacts
import common
import evaluate as ev
import evaluate_metaworld as mw

ROOT = Path(__file__).resolve().parents[1]


def test_lockstep_equals_one_policy_at_a_time():
    torch.manual_seed(0)
    spec = common.policy_spec(17, 6)
    actors = [common.Actor(17, 6) for _ in range(4)]
    params = torch.stack([common.flatten(a) for a in actors])
    tasks, episodes = [0.3, 1.2, 2.0, 1.2], [0, 1, 2, 1]
    envs = [common.make_eval_env("cheetah-vel", v, episode=e) for v, e in zip(tasks, episodes)]
    together = common.run_lockstep(params, envs, spec)["return"]
    for i, actor in enumerate(actors):  # the plain way: one policy, its own env, a module forward per step
        env = common.make_eval_env("cheetah-vel", tasks[i], episode=episodes[i])
        obs, _ = env.reset()
        ret, done = 0.0, False
        while not done:
            with torch.no_grad():
                a = actor.act(torch.as_tensor(obs)).numpy()
            obs, r, term, trunc, _ = env.step(a)
            ret, done = ret + r, term or trunc
        assert together[i] == pytest.approx(ret, abs=1e-3)
    assert len(set(np.round(together, 3))) >= 3


def test_nearest_and_interpolated_expert():
    train = [0.9, 0.3, 1.5]  # unsorted on purpose, as shards could be
    assert train[ev.nearest_expert(train, 1.3)] == 1.5
    assert train[ev.nearest_expert(train, 0.0)] == 0.3
    assert train[ev.nearest_expert(train, 0.6)] == 0.3  # a tie goes to the lower velocity
    best = torch.tensor([[9.0], [3.0], [15.0]])  # "parameters" = 10 x velocity
    assert ev.interpolate_experts(train, best, 0.6).item() == pytest.approx(6.0)
    assert ev.interpolate_experts(train, best, 1.35).item() == pytest.approx(13.5)
    assert ev.interpolate_experts(train, best, 2.5).item() == pytest.approx(15.0)  # outside: the nearest
    assert ev.interpolate_experts(train, best, 0.1).item() == pytest.approx(3.0)


@pytest.mark.parametrize("values, message", [(["0.5", "abc"], "takes numbers in [0, 3]; got 0.5 abc"),
                                             (["0.5", "3.2"], "must lie in [0, 3]; got 3.2"),
                                             (["-0.1"], "must lie in [0, 3]; got -0.1")])
def test_bad_velocities_one_line_error(values, message):
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        common.check_velocities(values)
    assert common.check_velocities(["0.35", "3"]) == [0.35, 3.0]
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--velocities", *values], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and message in r.stderr


def test_results_follow_the_contract_and_reproduce(cheetah_chain):
    run, r = cheetah_chain
    assert "== evaluation (Table IV or Tables I-III): done" in r.stdout
    res = json.loads((run / "results.json").read_text())
    assert res["suite"] == "cheetah-vel"
    rows = res["rows"]
    for row in rows:
        assert set(row) == {"method", "task", "score", "n_policies", "n_episodes"}
    measured = [x for x in rows if not x["method"].startswith("paper:")]
    assert {x["method"] for x in measured} == set(ev.METHODS)
    assert {x["task"] for x in measured} == {"vel-0.225", "vel-0.6", "vel-1.2", "vel-1.8", "vel-2.025", "average"}
    for m in ev.METHODS:  # the average is the mean over the velocities
        per_v = [x["score"] for x in measured if x["method"] == m and x["task"] != "average"]
        avg = next(x["score"] for x in measured if x["method"] == m and x["task"] == "average")
        assert avg == pytest.approx(np.mean(per_v))
    assert {x["method"] for x in rows if x["method"].startswith("paper:")} == {n for n, _ in ev.PAPER_ROWS}

    gen = artifacts.load_artifact(run / "generated.pt", artifacts.GENERATED_FORMAT, ("params", "method", "task", "target_velocity"),
                               spec=common.policy_spec(17, 6), suite="cheetah-vel")
    k = len(gen["method"])
    assert gen["params"].shape == (k, 20_364) and len(gen["task"]) == k and gen["target_velocity"].shape == (k,)
    assert gen["method"].count("hyplatent") == 5 * 2  # smoke: K = 2 per velocity
    assert (run / "results.md").read_text().count("(printed in the paper)") == 5
    assert (run / "return_vs_velocity.png").stat().st_size > 10_000

    # re-evaluating generated.pt gives the reported scores
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--scale", "smoke", "--run-dir", str(run),
                        "--from-generated", str(run / "generated.pt")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    for row in measured:
        if row["task"] == "average":
            assert f"{row['score']:.2f} |" in r.stdout


def test_top_k_on_a_hand_made_list():
    rates = [0.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.25]
    assert mw.top_k(rates, 1) == 1.0
    assert mw.top_k(rates, 3) == pytest.approx((1 + 1 + 0.5) / 3)
    assert mw.top_k(rates, 5) == pytest.approx((1 + 1 + 0.5 + 0.5 + 0.25) / 5)
    assert mw.top_k(rates, 10) == pytest.approx(np.mean(rates))  # fewer than k: all of them
    # honest: the k are picked on other goals; here those rank the two perfect policies last
    select = [1.0, 0.0, 1.0, 0.5, 0.0, 0.5, 0.5]
    assert mw.top_k(rates, 1, select) == 0.0  # policy 0 (tie with policy 2: the earlier one)
    assert mw.top_k(rates, 3, select) == pytest.approx((0.0 + 0.5 + 0.5) / 3)  # policies 0, 2, 3
    assert mw.top_k(rates, 5, select) == pytest.approx((0 + 0.5 + 0.5 + 0 + 0.25) / 5)  # 0, 2, 3, 5, 6


def test_top_k_selection_episodes_run_for_generated_policies_only(monkeypatch):
    # 3 policies: a HypLatent one, a parent, a HypFormer one; 2 evaluation goals, 3 selection goals
    generated = {"method": ["hyplatent", "parent", "hypformer"], "task": ["a", "a", "b"],
                 "params": torch.arange(3.0)[:, None].repeat(1, 2)}
    seen = {}

    def fake_run_episodes(params, jobs, workers, desc=""):
        seen["params"], seen["jobs"] = params[:, 0].tolist(), jobs
        return {"success": np.arange(len(jobs), dtype=float)}  # episode j "succeeds" j times: traceable

    monkeypatch.setattr(mw, "run_episodes", fake_run_episodes)
    success, select = mw.evaluate_metaworld(generated, goals=2, select_goals=3, workers=1, progress=False)
    E, S = common.EVAL_GOAL_SEED, common.SELECT_GOAL_SEED
    assert seen["jobs"] == [("a", E, 0), ("a", E, 0), ("b", E, 0), ("a", E, 1), ("a", E, 1), ("b", E, 1),
                            ("a", S, 0), ("b", S, 0), ("a", S, 1), ("b", S, 1), ("a", S, 2), ("b", S, 2)]
    assert seen["params"] == [0, 1, 2, 0, 1, 2, 0, 2, 0, 2, 0, 2]  # each job runs its own policy
    assert success.tolist() == [[0, 3], [1, 4], [2, 5]]
    assert select[0].tolist() == [6, 8, 10] and select[2].tolist() == [7, 9, 11]
    assert np.isnan(select[1]).all()  # the parent is never ranked, so never run on selection goals
    # the one-policy baselines (here the parent) run on more evaluation goals: the first 4 of the same list
    success, select = mw.evaluate_metaworld(generated, goals=2, select_goals=1, workers=1, progress=False,
                                            single_goals=4)
    assert seen["jobs"][:8] == [("a", E, 0), ("a", E, 0), ("b", E, 0), ("a", E, 1), ("a", E, 1), ("b", E, 1),
                                ("a", E, 2), ("a", E, 3)]
    assert seen["params"] == [0, 1, 2, 0, 1, 2, 1, 1, 0, 2]
    assert np.array_equal(success, [[0, 3, np.nan, np.nan], [1, 4, 6, 7], [2, 5, np.nan, np.nan]], equal_nan=True)
    assert select[:, 0].tolist()[::2] == [8, 9]
    nan = np.nan  # a rate per policy over the goals it ran on; episodes counted per method
    rows = {(r["method"], r["task"]): r for r in mw.metaworld_rows(
        {**generated, "seen": ["a"]}, np.array([[0, 1, nan, nan], [1, 0, 0, 1], [1, 1, nan, nan]]), np.ones((3, 1)))}
    assert rows[("parent", "a")]["n_episodes"] == 4 and rows[("hyplatent", "a")]["n_episodes"] == 2
    assert rows[("parent", "a")]["score"] == 50.0 and rows[("hypformer", "b")]["score"] == 100.0


def test_policies_of_one_method_cover_the_goal_list(monkeypatch):
    # 3 HypLatent and 3 HypFormer policies (one per condition) and the parent of one task; goals 2 of a
    # list of 4: policy j on goals 2j, 2j+1 (mod 4), the two methods' policy j on the same goals
    generated = {"method": ["hyplatent"] * 3 + ["hypformer"] * 3 + ["parent"], "task": ["a"] * 7,
                 "params": torch.arange(7.0)[:, None]}
    seen = {}

    def fake_run_episodes(params, jobs, workers, desc=""):
        seen["pairs"] = list(zip(params[:, 0].int().tolist(), [e for _, _, e in jobs]))
        return {"success": np.arange(len(jobs), dtype=float)}

    monkeypatch.setattr(mw, "run_episodes", fake_run_episodes)
    success, _ = mw.evaluate_metaworld(generated, goals=2, select_goals=1, workers=1, progress=False, single_goals=4)
    ran = [sorted(e for i, e in seen["pairs"][:-6] if i == p) for p in range(7)]  # the last 6: selection goals
    assert ran == [[0, 1], [2, 3], [0, 1], [0, 1], [2, 3], [0, 1], [0, 1, 2, 3]]
    assert [np.flatnonzero(np.isfinite(row)).tolist() for row in success] == ran
    for p, e in seen["pairs"][:-6]:  # every episode's success lands in its own policy's row and goal's column
        assert success[p, e] == seen["pairs"].index((p, e))
    # without the baselines (the Fig. 5 runs) the generated policies cover the same list of 4
    monkeypatch.setitem(generated, "method", generated["method"][:6])
    monkeypatch.setitem(generated, "task", generated["task"][:6])
    success, _ = mw.evaluate_metaworld(generated, goals=2, select_goals=1, workers=1, progress=False, single_goals=4)
    assert [np.flatnonzero(np.isfinite(row)).tolist() for row in success] == ran[:6]


def test_metaworld_goals_same_across_runs_and_processes():
    obs = [common.make_eval_env("metaworld", "door-open-v3", episode=e).reset()[0] for e in (0, 1)]
    again = common.make_eval_env("metaworld", "door-open-v3", episode=0).reset()[0]
    np.testing.assert_array_equal(obs[0], again)
    assert np.abs(obs[0] - obs[1]).max() > 1e-3  # two different goal configurations
    code = ("import common, numpy as np; o = common.make_eval_env('metaworld', 'door-open-v3', episode=1).reset()[0];"
            "print(' '.join(repr(float(x)) for x in o))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.array([float(x) for x in r.stdout.split()], dtype=obs[1].dtype), obs[1])


class SucceedsAt:
    """A metaworld env whose info["success"] turns 1 from step `at` on (real states, real actions)."""

    def __init__(self, env, at):
        self.env, self.at, self.t = env, at, 0

    def reset(self):
        self.t = 0
        return self.env.reset()

    def step(self, a):
        o, r, term, trunc, info = self.env.step(a)
        self.t += 1
        return o.astype(np.float32), r, term, trunc, {**info, "success": float(self.t >= self.at)}


def one_episode(env, actor):
    """A plain loop, the reference for the lockstep runner: states, actions and the first success index."""
    obs, _ = env.reset()
    states, actions, first = [obs], [], None
    while True:
        a = actor.act(torch.as_tensor(obs, dtype=torch.float32)).detach().numpy()
        obs, _, term, trunc, info = env.step(a)
        states.append(obs), actions.append(a)
        if first is None and info.get("success", 0.0) > 0:
            first = len(states) - 1
        if term or trunc:
            break
    traj, post = common.rollout_features(np.stack(states), np.stack(actions), first)
    return {"traj": traj, "post_success": post, "success": float(first is not None), "states": states}


def test_recorded_lockstep_features_equal_a_plain_episode_loop():
    """The recorded lockstep rollouts (stage 0's checkpoints, evaluation's conditions) give the features of
    one episode stepped in a plain loop."""
    torch.manual_seed(3)
    spec = common.policy_spec(39, 4)
    params = torch.randn(2, common.num_params(spec)) * 0.3
    make = lambda i: SucceedsAt(common.make_eval_env("metaworld", "door-open-v3", episode=i, goal_seed=2),  # noqa: E731
                                at=37 if i == 0 else 10_000)  # the second never succeeds
    out = common.run_lockstep(params, [make(0), make(1)], spec, record=True)
    for i in range(2):
        actor = common.unflatten(params[i], common.Actor(39, 4))
        ref = one_episode(make(i), actor)
        np.testing.assert_allclose(out["traj"][i], ref["traj"], atol=1e-5)
        np.testing.assert_allclose(out["post_success"][i], ref["post_success"], atol=1e-5)
        assert out["success"][i] == ref["success"] == (1.0 if i == 0 else 0.0)
        np.testing.assert_allclose(out["post_success"][i], np.stack(ref["states"][37:40] if i == 0 else
                                                                    ref["states"][-3:]).reshape(-1), atol=1e-5)


class Counting:
    """Counts the steps an env is asked for."""

    def __init__(self, env):
        self.env, self.steps = env, 0

    def reset(self):
        return self.env.reset()

    def step(self, a):
        self.steps += 1
        return self.env.step(a)


@pytest.mark.parametrize("record", [False, True])
def test_early_stop_changes_no_success_and_no_feature(record):
    """Episodes that stop once decided give the success (and recorded features) of full episodes, on
    real MetaWorld states, with successes at the first step, mid-way, late, and never."""
    torch.manual_seed(5)
    spec = common.policy_spec(39, 4)
    ats = [1, 37, 80, 450, 10_000, 2, 10_000, 59]
    params = torch.randn(len(ats), common.num_params(spec)) * 0.3
    make = lambda: [Counting(SucceedsAt(common.make_eval_env("metaworld", "door-open-v3", episode=i % 3, goal_seed=2), at=a))  # noqa: E731
                    for i, a in enumerate(ats)]
    full_envs, short_envs = make(), make()
    full = common.run_lockstep(params, full_envs, spec, record=record)
    short = common.run_lockstep(params, short_envs, spec, record=record, stop_when_decided=True)
    np.testing.assert_array_equal(short["success"], full["success"])
    assert full["success"].tolist() == [1, 1, 1, 1, 0, 1, 0, 1]
    if record:
        np.testing.assert_array_equal(short["traj"], full["traj"])
        np.testing.assert_array_equal(short["post_success"], full["post_success"])
    steps = [e.steps for e in short_envs]
    expected = [500 if a > 500 else (max(60, a + 2) if record else a) for a in ats]
    assert steps == expected and all(e.steps == 500 for e in full_envs)


def test_early_stop_on_real_checkpoints_of_both_suites(metaworld_chain, cheetah_chain):
    """Stage-0 checkpoints of the smoke runs: MetaWorld successes and features, Cheetah-Vel returns
    (it has no success, so nothing stops early) equal with and without early stopping."""
    for (run, _), suite in ((metaworld_chain, "metaworld"), (cheetah_chain, "cheetah-vel")):
        shards = artifacts.load_stage0(run, suite, "smoke")
        params = torch.cat([s["params"] for s in shards]).float()
        tasks = [s["task"] if suite == "metaworld" else s["target_velocity"] for s in shards for _ in s["params"]]
        make = lambda: [common.make_eval_env(suite, t, episode=i % 2) for i, t in enumerate(tasks)]  # noqa: E731
        spec = common.suite_spec(suite)
        full = common.run_lockstep(params, make(), spec, record=True)
        short = common.run_lockstep(params, make(), spec, record=True, stop_when_decided=True)
        for k in ("success", "traj", "post_success") + (("return",) if suite == "cheetah-vel" else ()):
            np.testing.assert_array_equal(short[k], full[k])


def test_run_episodes_chunks_keep_the_order(monkeypatch):
    """Episodes split into chunks over 2 processes come back in job order, equal to one lockstep run."""
    monkeypatch.setattr(mw, "MAX_ENVS", 2)  # 5 jobs -> 4 chunks of <= 2
    torch.manual_seed(4)
    spec = common.policy_spec(39, 4)
    params = torch.randn(5, common.num_params(spec)) * 0.3
    jobs = [("door-open-v3", 2, 0), ("drawer-close-v3", 2, 1), ("door-open-v3", common.EVAL_GOAL_SEED, 1),
            ("reach-wall-v3", 2, 3), ("drawer-close-v3", common.EVAL_GOAL_SEED, 0)]
    out = mw.run_episodes(params, jobs, workers=2, record=True)
    envs = [common.make_eval_env("metaworld", t, episode=i, goal_seed=g) for t, g, i in jobs]
    ref = common.run_lockstep(params, envs, spec, record=True, stop_when_decided=True)
    for k in ("return", "success", "traj", "post_success"):
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-6, atol=1e-6)
    assert len(set(np.round(out["return"], 3))) == 5  # five different episodes


def test_metaworld_tables(metaworld_chain):
    run, r = metaworld_chain
    res = json.loads((run / "results.json").read_text())
    by = {(x["method"], x["task"]): x for x in res["rows"]}
    for m in ("hyplatent", "hypformer", "parent"):
        assert (m, "door-open-v3") in by and (m, "drawer-close-v3") in by
    for m in ("expert", "decoded-expert", "decoded-checkpoints"):  # seen tasks only
        assert (m, "door-open-v3") in by and (m, "drawer-close-v3") not in by
    # unseen tasks: their own stage-0 checkpoints (no stage trained on them) are the oracle row
    assert by[("checkpoints", "drawer-close-v3")]["n_policies"] == 2
    assert "own checkpoints (oracle)" in (run / "results.md").read_text()
    gen = torch.load(run / "generated.pt", weights_only=True)
    # one policy per conditioning rollout (smoke: 3 per task, successful or not), each from a checkpoint no
    # stage trained on: smoke keeps 2 checkpoints per task, the autoencoder holds out 1 of a seen task's,
    # an unseen task's 2 are all unused; rollout k runs checkpoint k mod n on stage 0's goal k // n
    assert gen["n_conditions"] == {"door-open-v3": 3, "drawer-close-v3": 3, "drawer-open-v3": 3}
    ae = torch.load(run / "autoencoder.pt", weights_only=True)
    for t, c in gen["conditioning"].items():
        rows = ae["task_index"] == ae["tasks"].index(t)
        held_out = ae["checkpoint_step"][rows & ~ae["train"]].tolist()
        assert len(held_out) == (2 if t == "drawer-close-v3" else 1)
        assert c["checkpoint_step"] == [held_out[k % len(held_out)] for k in range(3)]
        assert c["goal"] == [k // len(held_out) for k in range(3)] and c["attempts"] == 3
    assert by[("hyplatent", "drawer-close-v3")]["n_policies"] == 3
    assert by[("parent", "drawer-close-v3")]["n_episodes"] == 3 == by[("expert", "door-open-v3")]["n_episodes"]
    assert by[("hyplatent", "drawer-close-v3")]["n_episodes"] == 2  # smoke: one-policy baselines on 3 goals, others 2
    assert by[("checkpoints", "door-open-v3")]["n_policies"] == by[("decoded-checkpoints", "door-open-v3")]["n_policies"] == 2
    for split, tasks in (("seen", ["door-open-v3", "drawer-open-v3"]), ("unseen", ["drawer-close-v3"])):
        avg = by[("hypformer", f"average-{split}")]["score"]
        assert avg == pytest.approx(np.mean([by[("hypformer", t)]["score"] for t in tasks]))
    md = (run / "results.md").read_text()
    assert "Table I" in md and "Table II" in md and "Table III" in md and "(printed in the paper)" in md
    assert (run / "pca_latents.png").exists()
    gen = artifacts.load_artifact(run / "generated.pt", artifacts.GENERATED_FORMAT, ("params", "method", "task"),
                               spec=common.policy_spec(39, 4), suite="metaworld")
    assert gen["params"].shape[0] == len(gen["method"]) == len(gen["task"])
