"""Top-k's selection goals keep their distance from the scored goals (MetaWorld), and the memorisation
check's distances are exact (Cheetah-Vel)."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

import common
import evaluate as ev
import evaluate_metaworld as mw

MIN_DISTANCE = 0.005  # metres: evaluate_metaworld.SELECT_MIN_DISTANCE, written out


def scored_distance(task: str, ids, width: int) -> np.ndarray:
    """Each goal (seed, index)'s distance to the nearest of the task's `width` scored goals, from MetaWorld's
    own goal objects (the vector set_task fixes), computed here independently of evaluate_metaworld."""
    import pickle

    vec = lambda s: np.array([pickle.loads(g.data)["rand_vec"] for g in common.metaworld_goals(task, s)])  # noqa: E731
    scored = vec(common.EVAL_GOAL_SEED)[:width]
    return np.array([np.linalg.norm(scored - vec(s)[e], axis=1).min() for s, e in ids])


def scale_settings() -> dict:
    """(select_goals, width of the scored list) of the quick and smoke scales, from evaluate.py's options."""
    quick = asdict(ev.Args())
    out = {}
    for name, opts in (("quick", {**quick, **ev.SCALES.get("metaworld:quick", {})}),
                       ("smoke", {**quick, **ev.SCALES["smoke"]})):
        out[name] = (opts["select_goals"], max(opts["goals"], opts["single_policy_goals"]))
    return out


@pytest.mark.slow  # 16 tasks x 2 goal seeds of metaworld.MT1: about 30 s on 2 shared cores
def test_selection_goals_keep_their_distance_on_every_task_of_both_scales():
    tasks = common.MW_SEEN + common.MW_UNSEEN
    assert len(set(tasks)) == 16
    for scale, (n, width) in scale_settings().items():
        got = mw.selection_goals(tasks, n, width)
        assert list(got["select_goal_ids"]) == tasks and list(got["select_goal_min_distance"]) == tasks
        for t in tasks:
            ids = got["select_goal_ids"][t]
            assert len(ids) == n and len({tuple(g) for g in ids}) == n, (scale, t)
            assert all(s in common.SELECT_GOAL_SEEDS and s != common.EVAL_GOAL_SEED for s, _ in ids)
            d = scored_distance(t, ids, width)
            assert (d >= MIN_DISTANCE).all(), (scale, t, d)
            assert got["select_goal_min_distance"][t] == pytest.approx(d.min(), abs=1e-12), (scale, t)
        mw._task_selection_goals.cache_clear()  # drawn again: the same goals
        assert mw.selection_goals(tasks, n, width) == got, scale


def test_window_close_selection_goals_are_not_near_copies_of_scored_goals(monkeypatch, capsys):
    # window-close randomises a 15 cm line: 4 of the first 5 goals of the selection seed, which top-k picked
    # on, lay within 0.9 mm of one of its 20 scored goals (one within 0.05 mm, the fifth 2.9 mm); top-k now
    # picks, and the evaluation prints, goals 5 mm away or more
    task, (n, width) = "window-close-v3", scale_settings()["quick"]
    assert (n, width) == (5, 20)
    before = scored_distance(task, [(common.SELECT_GOAL_SEED, e) for e in range(n)], width)
    assert (before < 0.001).sum() == 4 and before.min() < 5e-5 and before.max() < 0.003
    picked = [[2025, 5], [2025, 8], [2025, 12], [2025, 14], [2025, 18]]  # the first candidates 5 mm away
    generated = {"method": ["hyplatent", "hyplatent", "hypformer", "parent"], "task": [task] * 4,
                 "params": torch.zeros(4, 1), "select_goal_ids": {task: picked},
                 "select_goal_min_distance": {task: float(scored_distance(task, picked, width).min())}}
    ran = []

    def fake_run_episodes(params, jobs, workers, desc=""):
        ran.extend(jobs)
        return {"success": np.zeros(len(jobs))}

    monkeypatch.setattr(mw, "run_episodes", fake_run_episodes)
    mw.evaluate_metaworld(generated, goals=2, select_goals=n, workers=1, progress=False, single_goals=width)
    scored = [(s, e) for t, s, e in ran if s == common.EVAL_GOAL_SEED]
    selection = [(s, e) for t, s, e in ran if s != common.EVAL_GOAL_SEED]
    assert {e for _, e in scored} == set(range(width))  # the scored list itself is unchanged
    assert len(selection) == 3 * n and set(selection) == {tuple(g) for g in generated["select_goal_ids"][task]}
    d = scored_distance(task, selection, width)
    assert d.min() >= MIN_DISTANCE
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if task in x]
    assert len(line) == 1 and f"{d.min():.4f} m" in line[0], out
    assert mw.selection_goals([task], n, width) == {k: generated[k] for k in ("select_goal_ids", "select_goal_min_distance")}


def test_selection_goals_come_from_further_seeds_and_refuse_when_too_few(monkeypatch):
    task = "window-close-v3"  # about 15% of its line lies 5 mm from its 20 scored goals: 20 need 2-3 seeds
    got = mw.selection_goals([task], 20, 20)
    ids = got["select_goal_ids"][task]
    assert ids[0][0] == common.SELECT_GOAL_SEED and {s for s, _ in ids} - {common.SELECT_GOAL_SEED}  # further seeds
    assert all(s in common.SELECT_GOAL_SEEDS for s, _ in ids) and len({tuple(g) for g in ids}) == 20
    assert (scored_distance(task, ids, 20) >= MIN_DISTANCE).all()
    # candidates in a fixed order: the first seed's goals first, by index
    first = [e for s, e in ids if s == common.SELECT_GOAL_SEED]
    assert first == sorted(first)
    # too few candidates: one line naming the task
    monkeypatch.setattr(common, "SELECT_GOAL_SEEDS", (common.SELECT_GOAL_SEED,))
    mw._task_selection_goals.cache_clear()
    with pytest.raises(SystemExit, match=r"^error: window-close-v3: only \d+ of 20 top-k selection goals") as e:
        mw.selection_goals(["door-open-v3", task], 20, 20)
    assert "\n" not in str(e.value)
    mw._task_selection_goals.cache_clear()


def quick_size_vectors(rows: int, seed: int = 0) -> torch.Tensor:
    """`rows` flat Cheetah-Vel policies of quick size, of a trained policy's scale (values ~ N(0, 0.3))."""
    P = common.num_params(common.suite_spec("cheetah-vel"))
    return 0.3 * torch.randn(rows, P, generator=torch.Generator().manual_seed(seed))


def test_exact_distances_at_quick_size():
    X = quick_size_vectors(300)
    assert X.shape[1] == 20364
    moved = X[:40] + 0.01 * torch.randn(40, X.shape[1], generator=torch.Generator().manual_seed(1))
    d = ev.exact_distances(X[:40], torch.cat([X, moved]))
    idx = torch.arange(40)
    assert (d[idx, idx] == 0).all()  # each row to itself: exactly 0
    want = torch.linalg.norm(moved.double() - X[:40].double(), dim=1)
    torch.testing.assert_close(d[idx, 300 + idx], want, rtol=1e-12, atol=0)
    assert (torch.cdist(X[:40], X)[idx, idx] > 0).any()  # what torch.cdist's default gives


def test_memorisation_nearest_expert_is_exactly_zero_from_itself():
    """At quick size the old distances (torch.cdist's matrix-multiply path) left the nearest expert, a
    stage-0 checkpoint, 0.005-0.014 from itself; exact ones give 0, and a perturbed copy its own norm."""
    spec = common.suite_spec("cheetah-vel")
    X = quick_size_vectors(300)
    shards = [{"params": X[100 * i:100 * (i + 1)], "return": torch.arange(100.0),
               "traj": torch.randn(100, common.traj_dim(17, 6), generator=torch.Generator().manual_seed(i))}
              for i in range(3)]
    acting = lambda p: ev.acting_params(p, spec)  # noqa: E731
    # copies of checkpoints that torch.cdist's default leaves > 0 from themselves (about half of them)
    old = torch.cdist(acting(X), acting(X)).diagonal()
    copies = torch.nonzero(old > 1e-3).squeeze(1)[:31]
    assert len(copies) == 31
    assert torch.cdist(acting(X[copies]), acting(X)).min(1).values.median() > 1e-3  # the old path, these rows
    moved = X[copies] + 0.01 * torch.randn(31, X.shape[1], generator=torch.Generator().manual_seed(7))
    generated = {"policy": spec, "method": ["nearest-expert"] * 31 + ["hyplatent"] * 31 + ["interpolated-expert"],
                 "params": torch.cat([X[copies], moved, X[:1]]), "target_velocity": torch.full((63,), 0.6)}

    class RoundTrip:  # adds 0.02 to every parameter
        encode = staticmethod(lambda x: x)
        decode = staticmethod(lambda z: z + 0.02)

    mem = ev.memorisation(generated, shards, RoundTrip(), {"train": torch.ones(300, dtype=torch.bool)})
    assert mem["nearest-expert"]["to nearest checkpoint"] == 0.0
    assert mem["nearest-expert"]["to nearest checkpoint, 10th pct"] == 0.0
    assert mem["nearest-expert"]["action difference to nearest checkpoint"] == 0.0
    want = torch.linalg.norm(acting(moved).double() - acting(X[copies]).double(), dim=1)
    assert mem["hyplatent"]["to nearest checkpoint"] == pytest.approx(float(want.median()), rel=1e-12)
    n_act = acting(X).shape[1]
    assert mem["autoencoder round trip of a training checkpoint"] == pytest.approx(0.02 * np.sqrt(n_act), rel=1e-6)
