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
    by = {(x["method"], x["task"]): x["score"] for x in measured}
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--scale", "smoke", "--run-dir", str(run),
                        "--from-generated", str(run / "generated.pt")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in r.stdout.splitlines() if "(measured) |" in ln}
    for m in [m for m in ev.METHODS if m != "prompt-dt"]:  # every cell of every row re-run, and the average
        cells = lines[f"{ev.LABELS[m]} (measured)"].strip(" |").split(" | ")[1:]
        want = [f"{by[(m, t)]:.2f}" for t in [*(common.task_name("cheetah-vel", v) for v in common.CHEETAH_TEST), "average"]]
        assert cells == want, m


def test_expert_baselines_use_only_the_training_tasks(cheetah_chain):
    """The nearest and interpolated experts come from the velocities stages 1-2 trained on, not from every
    shard in stage0/ (a shard that --train-tasks leaves out is no training expert)."""
    run, _ = cheetah_chain
    args = common.parse_args(ev.Args, ev.SCALES, "", argv=["--scale", "smoke", "--run-dir", str(run)])
    chain = ev.load_chain(args)
    chain["ae_art"]["train_tasks"] = ["vel-0.3"]  # as if stage 1 had trained on 0.3 alone (the smoke run has 0.3, 1.5)
    gen = ev.generate(args, chain, [1.2])
    only = next(s for s in chain["shards"] if s["task"] == "vel-0.3")
    best = only["params"][only["return"].argmax()]
    for m in ("nearest-expert", "interpolated-expert"):
        assert torch.equal(gen["params"][gen["method"].index(m)], best), m


def test_top_k_picks_on_selection_rates_and_breaks_ties_at_random():
    select = np.array([1.0, 0.0, 1.0, 0.5, 0.0, 0.5, 0.5])
    rng = np.random.default_rng(0)
    assert sorted(mw.pick_top(select, 2, rng).tolist()) == [0, 2]  # the two best, whatever the tie order
    assert sorted(mw.pick_top(select, 5, rng)[:2].tolist()) == [0, 2]  # best first
    assert sorted(mw.pick_top(select, 10, rng).tolist()) == list(range(7))  # fewer than k: all of them
    # all tied (a seen task where every policy succeeds): every policy is picked about equally often; picking
    # by index would take policies 0-4 every time
    counts = np.zeros(25)
    for seed in range(400):
        counts[mw.pick_top(np.ones(25), 5, np.random.default_rng(seed))] += 1
    assert counts.min() > 40 and counts.max() < 120  # expected 80 each
    assert mw.pick_top(np.ones(25), 5, np.random.default_rng(3)).tolist() == \
        mw.pick_top(np.ones(25), 5, np.random.default_rng(3)).tolist()  # the seed fixes the picks


def test_every_row_weighs_every_goal_equally(monkeypatch):
    # 25 conditions (x 2 methods), 41 checkpoints and one parent on a list of 20 goals, each generated policy
    # on 2 goals: policy j on goals 2j, 2j + 1 (mod 20) covers goals 0-9 three times and 10-19 twice. On a
    # task where only goal 0 can succeed, every row must read 1/20 = 5%, as the parent (all 20 goals) does.
    n = {"hyplatent": 25, "hypformer": 25, "checkpoints": 41, "parent": 1}
    generated = {"method": [m for m, k in n.items() for _ in range(k)], "task": ["a"] * 92, "seen": ["a"],
                 "params": torch.zeros(92, 1)}

    def goal0_succeeds(params, jobs, workers, desc=""):
        return {"success": np.array([float(s == common.EVAL_GOAL_SEED and e == 0) for _, s, e in jobs])}

    monkeypatch.setattr(mw, "run_episodes", goal0_succeeds)
    success, select, picks, first = mw.evaluate_metaworld(generated, goals=2, select_goals=3, workers=1,
                                                          progress=False, single_goals=20, tie_seed=1)
    rows = [r for r in mw.metaworld_rows(generated, success, picks, first) if r["task"] == "a"]
    assert {r["method"] for r in rows} == {*n, "hyplatent@top5", "hyplatent@top10", "hypformer@top5", "hypformer@top10"}
    for r in rows:
        assert r["score"] == pytest.approx(5.0), r["method"]
        np.testing.assert_allclose(r["goal_weights"], np.full(20, 1 / 20))
    # the top-k picks ran on the whole list; the other generated policies on their 2 goals only
    ran = np.isfinite(success).sum(1)
    top10 = picks[("hyplatent", "a")]
    assert len(top10) == 10 and (ran[top10] == 20).all()
    assert (ran[[i for i in range(25) if i not in top10]] == 2).all()
    assert "goals 20" not in mw.goal_weights_table(rows, "a") and "0.0500 to 0.0500" in mw.goal_weights_table(rows, "a")
    # the picks' extra episodes count for top-k only: if only they succeed, "all policies" stays at 0
    calls = []

    def second_pass_succeeds(params, jobs, workers, desc=""):
        calls.append(len(jobs))
        return {"success": np.full(len(jobs), float(len(calls) == 2))}

    monkeypatch.setattr(mw, "run_episodes", second_pass_succeeds)
    rows = {r["method"]: r for r in mw.metaworld_rows(generated, *[x for i, x in enumerate(mw.evaluate_metaworld(
        generated, goals=2, select_goals=3, workers=1, progress=False, single_goals=20, tie_seed=1)) if i != 1])
        if r["task"] == "a"}
    assert len(calls) == 2 and rows["hyplatent"]["score"] == 0.0 and rows["hyplatent"]["n_episodes"] == 50
    assert rows["hyplatent@top10"]["score"] == pytest.approx(90.0)  # 18 of each pick's 20 goals in the second pass


def test_a_group_too_small_for_the_goal_list_still_covers_it():
    # 3 policies, 2 goals each, a list of 8: each runs on ceil(8 / 3) = 3 goals, together all 8
    generated = {"method": ["hyplatent"] * 3 + ["parent"], "task": ["a"] * 4}
    pairs = mw.first_pass_goals(generated, goals=2, width=8, single_goals=8)
    assert [sorted(e for i, e in pairs if i == p) for p in range(4)] == [[0, 1, 2], [3, 4, 5], [0, 6, 7],
                                                                         list(range(8))]
    with pytest.raises(ValueError, match=r"goals \[1\]"):
        mw.goal_balanced(np.array([[1.0, np.nan], [0.0, np.nan]]))


def test_a_task_without_conditions_is_a_failure_in_the_averages():
    # task b had no successful conditioning rollout: no generated policy; it counts 0 for them, not a gap
    generated = {"method": ["hyplatent", "hypformer", "parent", "parent"], "task": ["a", "a", "a", "b"],
                 "seen": ["a", "b"], "n_conditions": {"a": 1, "b": 0}}
    success = np.array([[1.0], [1.0], [0.0], [1.0]])
    picks = {("hyplatent", "a"): [0], ("hypformer", "a"): [1]}
    rows = {(r["method"], r["task"]): r for r in mw.metaworld_rows(generated, success, picks)}
    assert rows[("hyplatent", "b")]["score"] == 0.0 and rows[("hyplatent", "b")]["no_condition"]
    assert rows[("hyplatent", "average-seen")]["score"] == 50.0 and rows[("hyplatent", "average-seen")]["n_tasks"] == 2
    assert rows[("hypformer@top5", "average-seen")]["score"] == 50.0
    assert rows[("parent", "average-seen")]["n_tasks"] == 2
    assert "No conditioning rollout succeeded on b" in mw.metaworld_tables(list(rows.values()), generated)


def test_top_k_selection_episodes_run_for_generated_policies_only(monkeypatch):
    # 3 policies: a HypLatent one, a parent, a HypFormer one; 2 evaluation goals, 3 selection goals
    generated = {"method": ["hyplatent", "parent", "hypformer"], "task": ["a", "a", "b"],
                 "params": torch.arange(3.0)[:, None].repeat(1, 2)}
    seen = []

    def fake_run_episodes(params, jobs, workers, desc=""):
        seen.append((params[:, 0].tolist(), jobs))
        return {"success": np.arange(len(jobs), dtype=float)}  # episode j "succeeds" j times: traceable

    monkeypatch.setattr(mw, "run_episodes", fake_run_episodes)
    success, select, picks, _ = mw.evaluate_metaworld(generated, goals=2, select_goals=3, workers=1, progress=False)
    E, S = common.EVAL_GOAL_SEED, common.SELECT_GOAL_SEED
    assert seen[0][1] == [("a", E, 0), ("a", E, 1), ("a", E, 0), ("a", E, 1), ("b", E, 0), ("b", E, 1),
                          ("a", S, 0), ("b", S, 0), ("a", S, 1), ("b", S, 1), ("a", S, 2), ("b", S, 2)]
    assert seen[0][0] == [0, 0, 1, 1, 2, 2, 0, 2, 0, 2, 0, 2]  # each job runs its own policy
    assert success.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert select[0].tolist() == [6, 8, 10] and select[2].tolist() == [7, 9, 11]
    assert np.isnan(select[1]).all()  # the parent is never ranked, so never run on selection goals
    assert picks == {("hyplatent", "a"): [0], ("hypformer", "b"): [2]} and len(seen) == 1  # nothing left to run
    # the one-policy baselines (here the parent) run on a longer list: the picks then run on the rest of it
    success, select, picks, _ = mw.evaluate_metaworld(generated, goals=2, select_goals=1, workers=1, progress=False,
                                                      single_goals=4)
    assert seen[1][1][:8] == [("a", E, 0), ("a", E, 1), ("a", E, 2), ("a", E, 3), ("a", E, 0), ("a", E, 1),
                              ("a", E, 2), ("a", E, 3)]  # one policy per group: it covers the list itself
    assert np.isfinite(success).all() and len(seen) == 2


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


def test_early_stop_changes_no_success_and_no_feature():
    """Episodes that stop once decided give the success (and recorded features) of full episodes, on
    real MetaWorld states, with successes at the first step, mid-way, late, and never."""
    torch.manual_seed(5)
    spec = common.policy_spec(39, 4)
    ats = [1, 37, 80, 450, 10_000, 2, 10_000, 59]
    params = torch.randn(len(ats), common.num_params(spec)) * 0.3
    make = lambda: [Counting(SucceedsAt(common.make_eval_env("metaworld", "door-open-v3", episode=i % 3, goal_seed=2), at=a))  # noqa: E731
                    for i, a in enumerate(ats)]
    full_envs = make()
    full = common.run_lockstep(params, full_envs, spec, record=True)  # recording changes no success
    assert full["success"].tolist() == [1, 1, 1, 1, 0, 1, 0, 1] and all(e.steps == 500 for e in full_envs)
    for record in (False, True):
        short_envs = make()
        short = common.run_lockstep(params, short_envs, spec, record=record, stop_when_decided=True)
        np.testing.assert_array_equal(short["success"], full["success"])
        if record:
            np.testing.assert_array_equal(short["traj"], full["traj"])
            np.testing.assert_array_equal(short["post_success"], full["post_success"])
        # without recording an episode stops at its first success; with it, once its features are complete
        expected = [500 if a > 500 else (max(60, a + 2) if record else a) for a in ats]
        assert [e.steps for e in short_envs] == expected, record


def test_early_stop_on_real_checkpoints(metaworld_chain):
    """MetaWorld stage-0 checkpoints of the smoke run: successes and recorded features equal with and
    without early stopping (Cheetah-Vel has no success, so none of its episodes stops early)."""
    run, _ = metaworld_chain
    shards = artifacts.load_stage0(run, "metaworld", "smoke")
    params = torch.cat([s["params"] for s in shards]).float()
    tasks = [s["task"] for s in shards for _ in s["params"]]
    make = lambda: [common.make_eval_env("metaworld", t, episode=i % 2) for i, t in enumerate(tasks)]  # noqa: E731
    spec = common.suite_spec("metaworld")
    full = common.run_lockstep(params, make(), spec, record=True)
    short = common.run_lockstep(params, make(), spec, record=True, stop_when_decided=True)
    for k in ("success", "traj", "post_success"):
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


def test_metaworld_hyplatent_does_not_depend_on_hypformers_tokens(metaworld_chain, monkeypatch):
    """HypLatent's policies are the same whatever L HypFormer samples (Fig. 5 compares L against one HypLatent);
    HypFormer's change with L."""
    run, _ = metaworld_chain
    args = common.parse_args(ev.Args, ev.SCALES, "", argv=["--suite", "metaworld", "--scale", "smoke", "--run-dir", str(run)])
    chain = ev.load_chain(args)
    torch.manual_seed(0)
    h = {t: [torch.randn(chain["hl_art"]["cond_mean"].shape[-1]) for _ in range(2)] for t in ("door-open-v3", "drawer-close-v3")}
    monkeypatch.setattr(mw, "conditioning_rollouts", lambda shards, unused, *a: {
        t: {"h": h.get(t, []), "step": [], "goal": [], "attempts": 0, "successes": 0} for t in unused})
    out = {}
    for L in (2, 3):
        chain["hf_art"]["num_tokens"] = L
        gen = mw.generate_metaworld(chain, 1, conditions=2, success_only=False, seed=1, baselines=False, goals=2,
                                    select_goals=2, single_policy_goals=2, progress=False, config={})
        out[L] = {m: gen["params"][[i for i, x in enumerate(gen["method"]) if x == m]] for m in ("hyplatent", "hypformer")}
    assert out[2]["hyplatent"].shape[0] == 4 and torch.equal(out[2]["hyplatent"], out[3]["hyplatent"])
    assert not torch.equal(out[2]["hypformer"], out[3]["hypformer"])
    h.clear()  # no task with a conditioning embedding and no baselines: one line, not a traceback
    with pytest.raises(SystemExit, match="no task got a conditioning rollout: no policy to generate"):
        mw.generate_metaworld(chain, 1, conditions=2, success_only=False, seed=1, baselines=False, goals=2,
                              select_goals=2, single_policy_goals=2, progress=False, config={})


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
    # smoke: a list of 3 goals; the one-policy baselines run on all 3, each generated policy on 2 of them
    # (the row of all policies: 3 x 2 episodes), and the top-10 picks (here all 3) then on the rest: 3 x 3
    assert by[("hyplatent", "drawer-close-v3")]["n_episodes"] == 6
    assert by[("hyplatent@top10", "drawer-close-v3")]["n_episodes"] == 9
    assert sum("goal_weights" in x for x in res["rows"]) >= 10  # the per-task rows carry their goal weights
    for x in res["rows"]:  # every row of every task weighs each of its 3 goals 1/3
        if "goal_weights" in x:
            np.testing.assert_allclose(x["goal_weights"], [1 / 3] * 3, err_msg=f"{x['method']} {x['task']}")
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


def test_independent_regime_chain_end_to_end(independent_chain):
    """EXPERTS=independent bash pipeline.sh smoke: no parent; every expert its own seeds, its checkpoints after
    the parent's steps (smoke: 600 + 300, every 100); every stage after stage 0 as in the one-parent chain;
    Table IV with every row but the parent's, the interpolated expert still computed; the upright check
    reports every expert."""
    run, r = independent_chain
    assert run.name == "cheetah-vel-smoke-independent" and not (run / "parent.pt").exists()
    shards = {v: torch.load(run / "stage0" / f"vel-{v}.pt", weights_only=True) for v in ("0.3", "1.5")}
    for s in shards.values():
        assert s["made_from"] == {} and s["settings"]["experts"] == "independent"
        assert s["step"].tolist() == [900, 1000, 1100, 1200] and s["config"]["seed"] == 1
    assert s["ensemble"] == ["vel-0.3", "vel-1.5"]  # one ensemble of two members, each from its own init
    assert not torch.isclose(shards["0.3"]["params"][0], shards["1.5"]["params"][0]).any()
    summary = (run / "stage0_summary.md").read_text()
    assert "parent" not in summary and "experts whose last checkpoint ends upside down:" in summary
    assert summary.count("upright |") + summary.count("UPSIDE DOWN |") == 2
    res = json.loads((run / "results.json").read_text())
    methods = {row["method"] for row in res["rows"] if not row["method"].startswith("paper:")}
    assert methods == {"hyplatent", "hypformer", "maa", "mt-bc", "prompt-dt", "macaw", "macaw-unadapted",
                       "nearest-expert", "decoded-expert", "interpolated-expert", "oracle-expert"}
    assert res["upstream"]["stage0"]["experts"] == "independent" and "parent.pt" not in res["made_from"]
