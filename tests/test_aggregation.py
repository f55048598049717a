"""Aggregation over seeds: intervals and paired differences against hand-computed ones, what may pool as
seeds, nested training sets; the oracle row and the memorisation distances that the aggregate reads."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import aggregate as agg
import artifacts
import common
import pooling
import publish
import tables

ROOT = Path(__file__).resolve().parents[1]


def test_t_quantiles_against_the_printed_table():
    """t(0.975, df) exact at every df, against a printed table (e.g. NIST/SEMATECH's, 4 decimals)."""
    for df, t in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (16, 2.1199), (30, 2.0423), (100, 1.9840)):
        assert agg.t975(df) == pytest.approx(t, abs=6e-5), df


def test_t_interval_by_hand():
    m, h = agg.mean_ci([1.0, 2.0, 3.0])  # s = 1, n = 3: t(0.975, 2) = 4.302653, s/sqrt(3) = 0.577350
    assert m == 2.0 and h == pytest.approx(2.484138, abs=1e-5)
    m, h = agg.mean_ci([-4.0, -2.0])  # s = sqrt(2), n = 2: 12.706205 * sqrt(2) / sqrt(2)
    assert m == -3.0 and h == pytest.approx(12.706205, abs=1e-5)
    x = np.arange(17.0)  # s = sqrt(25.5) = 5.049752, df 16: t = 2.119905 (not df 15's 2.131)
    m, h = agg.mean_ci(x)
    assert m == 8.0 and h == pytest.approx(2.119905 * 5.049752 / np.sqrt(17), abs=1e-5)  # 2.596338
    assert agg.mean_ci([5.0] * 14) == (5.0, 0.0)  # zero spread, zero width
    assert np.isnan(agg.mean_ci([7.0])[1])


def test_paired_p_and_holm_by_hand():
    # d = 2, 2, 1: t = (5/3) / (0.57735 / sqrt(3)) = 5, df 2; P(|T| > 5) = 1 - 5 / sqrt(27) = 0.037750
    assert agg.paired_p([2.0, 2.0, 1.0]) == pytest.approx(0.037750, abs=1e-6)
    # d = 1.5, 1, 0.5: t = 2 sqrt(3) = 3.4641; P(|T| > t) = 1 - t / sqrt(t^2 + 2) = 0.074180
    assert agg.paired_p([1.5, 1.0, 0.5]) == pytest.approx(0.074180, abs=1e-6)
    assert np.isnan(agg.paired_p([3.0, 3.0, 3.0])) and np.isnan(agg.paired_p([1.0]))
    # Holm: sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> made non-decreasing: 0.03, 0.06, 0.06
    assert agg.holm([0.04, 0.01, float("nan"), 0.03]) == pytest.approx([0.06, 0.03, float("nan"), 0.06], nan_ok=True)
    assert agg.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    # one comparison alone in its family is called at p = 0.0378; the same twice in one family is not
    # (Holm: 2 x 0.0378 = 0.0755 for both); in separate families each is called
    one = agg.paired([2.0, 2.0, 1.0], "a", "b", "primary")
    agg.apply_holm([one])
    assert (one["p_holm"], one["family_size"], one["verdict"]) == (pytest.approx(0.037750, abs=1e-6), 1, "a better")
    two = [agg.paired([2.0, 2.0, 1.0], "a", "b", "primary") for _ in range(2)]
    agg.apply_holm(two)
    assert [(d["p_holm"], d["verdict"]) for d in two] == [(pytest.approx(0.0755, abs=1e-4), "no call")] * 2
    apart = [agg.paired([-2.0, -2.0, -1.0], "a", "b", "primary"), agg.paired([2.0, 2.0, 1.0], "a", "b", "exploratory")]
    agg.apply_holm(apart)
    assert [d["verdict"] for d in apart] == ["b better", "a better"]
    # fewer than 3 seeds: never a call, never a place in the family; constant differences: no test
    few = [agg.paired([5.0, 6.0], "a", "b", "primary"), agg.paired([1.0, 1.0, 1.0], "a", "b", "primary"), one]
    agg.apply_holm(few)
    assert few[0]["verdict"] == "no call (2 seeds)" and np.isnan(few[0]["p"]) and few[2]["family_size"] == 1
    assert few[1]["verdict"].startswith("the same in every seed") and few[2]["verdict"] == "a better"
    three = agg.paired([0.1] * 3, "a", "b", "primary")  # s = 4e-17, not 0: still the same in every seed
    agg.apply_holm([three])
    assert three["verdict"].startswith("the same in every seed")


def test_a_new_run_from_the_seeds_themselves():
    # a method: the seeds' range, a new run inside with probability (n - 1) / (n + 1) whatever the distribution
    assert tables.fmt_range({"seeds": [-100.0, -40.0, -35.0, -30.0]}) == "-100.00 to -30.00"
    assert tables.range_coverage(17) == pytest.approx(16 / 18) and tables.fmt_range({"seeds": [1.0, 2.0]}) == "-"
    assert tables.range_head(17) == "one new run: the 17 seeds' range (inside with probability 89%)"
    # a paired difference: t(0.975, 2) s sqrt(1 + 1/3) for 2, 2, 1 = 4.302653 * 0.57735 * 1.154701 = 2.868435
    d = agg.paired([2.0, 2.0, 1.0], "a", "b", "primary")
    assert d["pi95"] == pytest.approx(2.868435, abs=1e-5)
    agg.apply_holm([d])
    assert tables.pair_row("a - b", d) == "| a - b | primary | 1.67 ± 1.43 | -1.20 to 4.54 | 2.00, 2.00, 1.00 | 0.038 | 0.038 | a better |"


def assert_figure(path: Path, size: tuple[int, int]) -> None:
    """A PNG of the given width and height in pixels that shows something: more than one colour, and more
    than a sliver of its area away from the background."""
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert (img.shape[1], img.shape[0]) == size, f"{path.name}: {img.shape[1]} x {img.shape[0]} pixels"
    flat = img[..., :3].reshape(-1, 3)
    assert len(np.unique(flat, axis=0)) > 10, f"{path.name}: nearly one colour"
    assert (np.abs(flat - flat[0]).sum(axis=1) > 0.1).mean() > 0.02, f"{path.name}: almost blank"


def fake_results(path: Path, seed: int, scores: dict, train=(0.3, 1.5), name="results.json", hyplatent=None,
                 **settings):
    """A results.json as evaluate.py writes it, with given averages {method: [per-velocity scores]}."""
    rows = []
    for m, per_v in scores.items():
        for v, s in zip((0.6, 1.2), per_v):
            rows.append({"method": m, "task": common.task_name("cheetah-vel", v), "score": s, "n_policies": 1, "n_episodes": 1})
        rows.append({"method": m, "task": "average", "score": float(np.mean(per_v)), "n_policies": 2, "n_episodes": 1})
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps({
        "suite": "cheetah-vel", "rows": rows, "settings": {"scale": "smoke", "seed": seed, "episodes": 1, **settings},
        "seed": seed, "train_velocities": list(train),
        "made_from": {"autoencoder.pt": f"ae{seed}", "parent.pt": f"parent{seed}"},
        "upstream": {"stage0": {"scale": "smoke", "seed": seed},
                     "hyplatent": hyplatent or {"seed": seed, "paired_weight": 1000.0}},
        "memorisation": {"consecutive checkpoints of one expert": float(seed), "hyplatent": {"to nearest checkpoint": 2.0 * seed}}}))


def test_aggregate_means_intervals_and_paired_differences(tmp_path):
    runs = []
    for seed, hl, ip in ((1, (-10, -20), (-12, -22)), (2, (-14, -18), (-15, -21)), (3, (-12, -22), (-13, -23))):
        fake_results(tmp_path / f"s{seed}", seed, {"hyplatent": hl, "interpolated-expert": ip})
        runs.append(str(tmp_path / f"s{seed}"))
    agg.main(agg.Args(runs=runs[::-1], out=str(tmp_path / "out")))  # given in any order, listed by seed
    res = json.loads((tmp_path / "out" / "results.json").read_text())["2"]
    assert res["n_seeds"] == 3 and res["seeds"] == [1, 2, 3]
    cell = res["cells"]["hyplatent|vel-0.6"]
    assert cell["seeds"] == [-10, -14, -12] and cell["mean"] == pytest.approx(-12.0)
    assert cell["ci95"] == pytest.approx(4.303 * 2.0 / np.sqrt(3), abs=1e-3)  # s = 2
    d = res["pairs"]["hyplatent - interpolated-expert"]  # per seed: -15 - (-17) = 2, -16 - (-18) = 2, -17 - (-18) = 1
    assert d["per_seed"] == pytest.approx([2.0, 2.0, 1.0]) and d["mean"] == pytest.approx(5 / 3)
    assert d["ci95"] == pytest.approx(4.303 * np.std([2, 2, 1], ddof=1) / np.sqrt(3), abs=1e-3)
    # the only primary comparison present: a family of one, p = 0.0378 (test_paired_p_and_holm_by_hand)
    assert (d["family"], d["family_size"], d["verdict"]) == ("primary", 1, "HypLatent better")
    assert d["p_holm"] == pytest.approx(0.037750, abs=1e-6)
    assert res["memorisation"]["hyplatent: to nearest checkpoint"] == pytest.approx(4.0)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "-12.00 ± 4.97" in md and "Holm-adjusted over 1 primary comparisons" in md
    assert "| HypLatent - interpolated expert | primary | 1.67 ± 1.43 | -1.20 to 4.54 | 2.00, 2.00, 1.00 | 0.038 | 0.038 | HypLatent better |" in md
    assert_figure(tmp_path / "out" / "return_vs_velocity.png", (770, 495))


def test_component_ablation_pairs_each_variant_with_the_default_by_seed(tmp_path):
    # per seed: HypLatent averages of (a) the default and (b)-(d); HypFormer = HypLatent - 1; interpolated -10
    variants = {"": 0.0, "paired-only": -1.0, "paper-losses": -50.0, "regressor": -2.0}
    runs = []
    for seed, base in ((1, -20.0), (2, -22.0), (3, -21.0)):
        for tag, shift in variants.items():
            hl = base + shift + (0.5 * seed if tag == "regressor" else 0.0)
            fake_results(tmp_path / f"s{seed}", seed, {"hyplatent": (hl, hl), "hypformer": (hl - 1, hl - 1),
                                                       "interpolated-expert": (-10.0, -10.0)},
                         name=f"results-{tag}.json" if tag else "results.json", tag=tag,
                         hyplatent={"seed": seed, "paired_weight": 0.0 if tag == "paper-losses" else 1000.0})
        runs.append(str(tmp_path / f"s{seed}"))
    agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), components=True))
    res = json.loads((tmp_path / "out" / "results-components.json").read_text())
    assert res["seeds"] == [1, 2, 3] and res["cells"]["hyplatent|paper-losses"]["seeds"] == [-70.0, -72.0, -71.0]
    d = res["pairs"]["HypLatent (a) - HypLatent (b)"]
    assert d["per_seed"] == [1.0, 1.0, 1.0] and d["ci95"] == 0.0  # the seeds' spread cancels in the pairs
    d = res["pairs"]["HypLatent (a) - HypLatent (d)"]  # 2 - 0.5 seed: 1.5, 1.0, 0.5
    assert d["per_seed"] == pytest.approx([1.5, 1.0, 0.5])
    # primary: (a) - (b), (a) - (c) constant (no test), (a) - (d) alone: p = 0.0742, not called
    assert d["ci95"] == pytest.approx(4.302653 * 0.5 / np.sqrt(3), abs=1e-5) and d["verdict"] == "no call"
    assert (d["family"], d["family_size"], d["p_holm"]) == ("primary", 1, pytest.approx(0.074180, abs=1e-6))
    d = res["pairs"]["HypFormer (c) - interpolated expert"]
    assert d["per_seed"] == [-61.0, -63.0, -62.0] and d["verdict"] == "interpolated expert better"
    # exploratory: HypFormer (a) - (d) and the 8 rows - the interpolated expert (HypFormer's (a) - (b), (c): constant)
    assert d["family"] == "exploratory" and d["family_size"] == 9
    md = (tmp_path / "out" / "results-components.md").read_text()
    assert "| (c) the paper's losses alone (paired weight 0) | -71.00 ± 2.48 | -72.00 ± 2.48 |" in md
    # a variant made from another seed's stage 1 is not paired with this seed's default
    res_b = json.loads((tmp_path / "s2" / "results-regressor.json").read_text())
    res_b["made_from"]["autoencoder.pt"] = "another"
    (tmp_path / "s2" / "results-regressor.json").write_text(json.dumps(res_b))
    with pytest.raises(SystemExit, match="seed 2: .*variant regressor come from different autoencoder.pt artifacts"):
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), components=True))
    res_b["made_from"]["autoencoder.pt"] = "ae2"
    (tmp_path / "s2" / "results-regressor.json").write_text(json.dumps(res_b))
    for seed in (1, 2, 3):  # a variant evaluated otherwise than the default is not compared with it
        f = tmp_path / f"s{seed}" / "results-regressor.json"
        f.write_text(f.read_text().replace('"episodes": 1', '"episodes": 50'))
    with pytest.raises(SystemExit, match="\\(variant regressor\\) and .*other settings \\(episodes\\)"):
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), components=True))


def test_aggregate_refuses_mixed_settings_and_repeated_seeds(tmp_path):
    fake_results(tmp_path / "a", 1, {"hyplatent": (-1, -2)})
    fake_results(tmp_path / "b", 2, {"hyplatent": (-1, -2)}, episodes=5)
    with pytest.raises(SystemExit, match="evaluated with other settings \\(episodes\\)"):
        agg.main(agg.Args(runs=[str(tmp_path / "a"), str(tmp_path / "b")], out=str(tmp_path / "out")))
    fake_results(tmp_path / "c", 1, {"hyplatent": (-1, -2)})
    with pytest.raises(SystemExit, match="two evaluations of seed 1"):
        agg.main(agg.Args(runs=[str(tmp_path / "a"), str(tmp_path / "c")], out=str(tmp_path / "out")))
    with pytest.raises(SystemExit, match="not found"):
        agg.main(agg.Args(runs=[str(tmp_path / "nothing")], out=str(tmp_path / "out")))


def test_aggregate_pools_only_seeds_of_one_method(tmp_path):
    """Runs that differ upstream (here HypLatent's paired weight) or share a chain (one autoencoder.pt
    evaluated twice under two seeds) are not seeds of one method; results that record no upstream
    settings are refused too."""
    runs = [str(tmp_path / s) for s in ("a", "b")]
    fake_results(tmp_path / "a", 1, {"hyplatent": (-1, -2)})
    fake_results(tmp_path / "b", 2, {"hyplatent": (-1, -2)})
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    res["upstream"]["hyplatent"]["paired_weight"] = 0.0
    (tmp_path / "b" / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="other settings \\(hyplatent: paired_weight\\): not seeds of one method"):
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "out")))
    res["upstream"]["hyplatent"]["paired_weight"], res["made_from"]["autoencoder.pt"] = 1000.0, "ae1"
    (tmp_path / "b" / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="evaluations of one chain"):
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "out")))
    del res["upstream"]
    (tmp_path / "b" / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="no upstream settings"):
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "out")))


def fake_mw_results(path: Path, seed: int, scores: dict, L: int = 8, tag: str = ""):
    """A MetaWorld results[-tag].json: {method: (seen average, unseen average)} (per task rows: the same)."""
    rows = []
    for m, (seen, unseen) in scores.items():
        for task, split, score in (("door-open-v3", "seen", seen), ("drawer-close-v3", "unseen", unseen)):
            if score is not None:
                rows += [{"method": m, "task": task, "score": score, "n_policies": 1, "n_episodes": 2},
                         {"method": m, "task": f"average-{split}", "score": score, "n_policies": 1, "n_episodes": 2}]
    rows.append({"method": "paper:MAA", "task": "average-seen", "score": 99.0, "n_policies": 0, "n_episodes": 0})
    path.mkdir(parents=True, exist_ok=True)
    settings = {"scale": "smoke", "seed": seed, "goals": 2, "tag": tag, "hypformer": f"hypformer-L{L}.pt" if tag else "hypformer.pt"}
    (path / (f"results-{tag}.json" if tag else "results.json")).write_text(json.dumps({
        "suite": "metaworld", "rows": rows, "settings": settings, "seed": seed,
        "made_from": {"autoencoder.pt": f"ae{seed}", "parent.pt": "one stage 0"},  # these seeds share one stage 0
        "upstream": {"stage0": {"seed": 1}, "hyplatent": {"seed": seed}, "hypformer": {"num_tokens": L, "seed": seed}},
        "seen": ["door-open-v3"], "num_tokens": L}))


def test_aggregate_metaworld_seeds_and_token_ablation(tmp_path):
    # seed 1: HypFormer 50/20, parent 40/30; seed 2: 70/30, 45/20 (L = 8, with baselines); L = 2 without them
    fake_mw_results(tmp_path / "s1", 1, {"hypformer": (50.0, 20.0), "parent": (40.0, 30.0), "hyplatent": (45.0, 10.0)})
    fake_mw_results(tmp_path / "s2", 2, {"hypformer": (70.0, 30.0), "parent": (45.0, 20.0), "hyplatent": (55.0, 10.0)})
    fake_mw_results(tmp_path / "s1", 1, {"hypformer": (10.0, 0.0), "hyplatent": (45.0, 10.0)}, L=2, tag="L2")
    fake_mw_results(tmp_path / "s2", 2, {"hypformer": (20.0, 10.0), "hyplatent": (55.0, 10.0)}, L=2, tag="L2")
    runs = [str(tmp_path / "s1"), str(tmp_path / "s2")]
    agg.main(agg.Args(runs=runs, out=str(tmp_path / "seeds")))
    res = json.loads((tmp_path / "seeds" / "results.json").read_text())
    assert list(res) == ["L8"]  # without --tokens only results.json is read
    g = res["L8"]
    assert g["cells"]["hypformer|average-seen"]["mean"] == 60.0
    assert g["cells"]["hypformer|average-seen"]["ci95"] == pytest.approx(12.706205 * 10, abs=1e-4)
    d = g["pairs"]["hypformer - parent (seen)"]  # 10 and 25: mean 17.5, s = 10.607, half-width 12.706205 * 7.5 = 95.30
    assert d["per_seed"] == [10.0, 25.0] and d["ci95"] == pytest.approx(95.296535, abs=1e-4)
    assert d["verdict"] == "no call (2 seeds)"  # never a call from two seeds
    assert "paper:MAA|average-seen" not in g["cells"]
    assert "door-open-v3 |" in (tmp_path / "seeds" / "results.md").read_text()
    assert "| 60.00 (seeds 50.0, 70.0) |" in (tmp_path / "seeds" / "results.md").read_text()  # 2 seeds: no interval
    assert tables.fmt_rate({"seeds": [90.0, 100.0, 100.0], "mean": 96.67, "ci95": 14.34}) == "96.67 [82.3, 100.0] (clipped)"
    assert tables.fmt_rate({"seeds": [40.0, 50.0, 60.0], "mean": 50.0, "ci95": 24.84}) == "50.00 ± 24.84"
    x = [100.0, 100.0, 100.0000000000001]  # 100 up to float rounding: not an interval to clip
    assert tables.fmt_rate(dict(zip(("mean", "ci95"), agg.mean_ci(x)), seeds=x)) == "100.00 ± 0.00"
    # one new run: the seeds' range, never outside what a rate can be
    assert tables.fmt_range({"seeds": [80.0, 100.0, 90.0]}) == "80.00 to 100.00"
    assert g["shared_stage0"] and "One stage 0 for every run" in (tmp_path / "seeds" / "results.md").read_text()
    g["stage0s"] = 2  # two parents: each seed its own stage 0, intervals over whole chains
    assert tables.stage0_note(g) == tables.OWN_NOTE and tables.stage0_note({**g, "n_seeds": 3}).startswith(" 2 stage 0s for 3")
    agg.main(agg.Args(runs=runs, tokens=True, out=str(tmp_path / "tokens")))
    res = json.loads((tmp_path / "tokens" / "results.json").read_text())
    assert list(res) == ["L2", "L8"] and res["L2"]["cells"]["hypformer|average-unseen"]["mean"] == 5.0
    assert "parent|average-seen" not in res["L2"]["cells"]  # L2 ran without baselines
    assert_figure(tmp_path / "tokens" / "tokens.png", (1210, 462))
    pairs = agg.token_pairs(res)  # L = 2 minus L = 8 per seed: seen 10 - 50, 20 - 70; unseen 0 - 20, 10 - 30
    assert pairs["L2 - L8 (seen)"]["per_seed"] == [-40.0, -50.0] and pairs["L2 - L8 (seen)"]["mean"] == -45.0
    assert pairs["L2 - L8 (unseen)"]["mean"] == -20.0 and pairs["L2 - L8 (unseen)"]["ci95"] == 0.0
    assert "| L2 - L8 (seen) | primary | -45.00 ± 63.53 | - | -40.00, -50.00 | - | - | no call (2 seeds) |" in \
        (tmp_path / "tokens" / "results.md").read_text()
    f = tmp_path / "s1" / "results-L2.json"  # L = 2 of a seed whose stage 1 was made again since: not comparable
    f.write_text(f.read_text().replace('"autoencoder.pt": "ae1"', '"autoencoder.pt": "ae1, made again"'))
    with pytest.raises(SystemExit, match="seed 1: .* come from different autoencoder.pt artifacts"):
        agg.main(agg.Args(runs=runs, tokens=True, out=str(tmp_path / "tokens")))
    f.write_text(f.read_text().replace('"autoencoder.pt": "ae1, made again"', '"autoencoder.pt": "ae1"'))
    fake_mw_results(tmp_path / "s3", 3, {"hypformer": (60.0, 20.0)})  # seed 3 without L = 2: rows over other seeds
    with pytest.raises(SystemExit, match="token counts were run on different seeds"):
        agg.main(agg.Args(runs=[*runs, str(tmp_path / "s3")], tokens=True, out=str(tmp_path / "tokens")))
    fake_mw_results(tmp_path / "s2", 2, {"hypformer": (20.0, 10.0)}, L=8, tag="L8")  # L = 8 twice for seed 2
    with pytest.raises(SystemExit, match="two evaluations of seed 2 for L = 8"):
        agg.main(agg.Args(runs=runs, tokens=True, out=str(tmp_path / "tokens")))
    fake_results(tmp_path / "cv", 3, {"hyplatent": (-1, -2)})
    with pytest.raises(SystemExit, match="several suites"):
        agg.main(agg.Args(runs=[*runs, str(tmp_path / "cv")], out=str(tmp_path / "x")))


def test_aggregate_groups_training_sets_into_the_ablation(tmp_path):
    for seed in (1, 2):
        fake_results(tmp_path / f"n2-{seed}", seed, {"hyplatent": (-10 - seed, -20)})
        fake_results(tmp_path / f"n3-{seed}", seed, {"hyplatent": (-5 - 2 * seed, -15)}, train=(0.3, 0.9, 1.5))
    agg.main(agg.Args(runs=[str(p) for p in sorted(tmp_path.glob("n*"))], out=str(tmp_path / "out")))
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(res) == ["2", "3"]
    assert res["3"]["cells"]["hyplatent|average"]["mean"] == pytest.approx(np.mean([-7, -15, -9, -15]))
    assert_figure(tmp_path / "out" / "ablation.png", (715, 495))
    # 3 minus 2 velocities, seed by seed: (-11) - (-15.5) = 4.5 and (-12) - (-16) = 4; t(0.975, 1) = 12.706205
    d = agg.size_pairs(res)["hyplatent: 3 - 2"]
    assert d["per_seed"] == pytest.approx([4.5, 4.0]) and d["mean"] == pytest.approx(4.25)
    assert d["ci95"] == pytest.approx(12.706205 * 0.353553 / np.sqrt(2), abs=1e-5)  # 3.18
    assert "| HypLatent: 3 - 2 | primary | 4.25 ± 3.18 | - | 4.50, 4.00 | - | - | no call (2 seeds) |" in \
        (tmp_path / "out" / "results.md").read_text()
    # training sets compared seed by seed differ in nothing but the set, and share each seed's stage 0
    runs, kept = [str(p) for p in sorted(tmp_path.glob("n*"))], {f: f.read_text() for f in tmp_path.glob("n3-*/*.json")}
    for old, new, message in (('"episodes": 1', '"episodes": 5', "other settings \\(episodes\\); rows compared seed by seed"),
                              ('"parent.pt": "parent', '"parent.pt": "another', "seed 1: .* come from different parent.pt artifacts")):
        for f, text in kept.items():  # every seed of the 3-velocity set
            f.write_text(text.replace(old, new))
        with pytest.raises(SystemExit, match=message):
            agg.main(agg.Args(runs=runs, out=str(tmp_path / "out2")))
    for f, text in kept.items():
        f.write_text(text)
    fake_results(tmp_path / "m2-1", 3, {"hyplatent": (-1, -2)}, train=(0.3, 0.9))  # a second set of 2 velocities
    with pytest.raises(SystemExit, match="two different training sets of 2 velocities"):
        agg.main(agg.Args(runs=[*runs, str(tmp_path / "m2-1")], out=str(tmp_path / "out2")))
    shutil.rmtree(tmp_path / "m2-1")
    # a training set run on fewer seeds than another is refused: every row over the same seeds
    shutil.rmtree(tmp_path / "n3-2")
    with pytest.raises(SystemExit, match="different seeds"):
        agg.main(agg.Args(runs=[str(p) for p in sorted(tmp_path.glob("n*"))], out=str(tmp_path / "out2")))


def test_sweep_splits_inside_and_beyond_the_training_velocities(tmp_path):
    # training velocities 0.3 and 0.9: v* = 0.6 lies inside, 1.2 beyond
    for seed, hl in ((1, (-10, -20)), (2, (-14, -18))):
        fake_results(tmp_path / f"s{seed}", seed, {"hyplatent": hl}, train=(0.3, 0.9))
    agg.main(agg.Args(runs=[str(tmp_path / "s1"), str(tmp_path / "s2")], out=str(tmp_path / "out")))
    md = (tmp_path / "out" / "results.md").read_text()
    # inside: -10, -14 -> -12 ± 12.706 * 2.828 / 1.414 = 25.41; beyond: -20, -18 -> -19 ± 12.71
    assert "| HypLatent (AMT-Hyp w/o HypFormer) | -10.00, -14.00 | -12.00 ± 25.41 | -20.00, -18.00 | -19.00 ± 12.71 |" in md
    assert tables.range_table(agg.sweep_ranges({"train_velocities": [0.3, 1.5], "cells": {  # nothing beyond 1.5: no table
        "hyplatent|vel-0.6": {"seeds": [-1.0]}, "hyplatent|vel-1.2": {"seeds": [-2.0]}}})) == ""


def test_nested_training_sets():
    order = common.cheetah_nested_velocities()
    assert sorted(order) == sorted(common.CHEETAH_TRAIN) and len(set(order)) == 35
    assert sorted(order[:10]) == common.cheetah_quick_velocities()  # the quick run is the 10-velocity set
    assert not set(order) & set(common.CHEETAH_TEST)


def test_oracle_row_and_memorisation(cheetah_chain, tmp_path):
    run, _ = cheetah_chain
    res = json.loads((run / "results.json").read_text())
    by = {(x["method"], x["task"]): x["score"] for x in res["rows"]}
    gen = torch.load(run / "generated.pt", weights_only=True)
    oracle_dir = run / "oracle"
    for v in common.CHEETAH_TEST:  # the oracle policy is the best checkpoint of the shard trained at v
        s = torch.load(oracle_dir / f"{common.task_name('cheetah-vel', v)}.pt", weights_only=True)
        j = [i for i, (m, t) in enumerate(zip(gen["method"], gen["task"]))
             if m == "oracle-expert" and t == common.task_name("cheetah-vel", v)]
        assert len(j) == 1 and torch.equal(gen["params"][j[0]], s["params"][s["return"].argmax()].float())
        assert ("oracle-expert", common.task_name("cheetah-vel", v)) in by
    assert res["made_from"]["oracle/vel-0.6.pt"]  # an oracle retrained makes the evaluation stale
    mem = res["memorisation"]
    assert mem["nearest-expert"]["to nearest checkpoint"] == 0.0  # a training checkpoint itself
    assert mem["nearest-expert"]["action difference to nearest checkpoint"] == 0.0
    assert res["train_velocities"] == [0.3, 1.5]

    # an oracle from another parent is refused with one line
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    s = torch.load(copy / "oracle" / "vel-0.6.pt", weights_only=True)
    s["made_from"] = {"parent.pt": "another"}
    artifacts.save_artifact(s, copy / "oracle" / "vel-0.6.pt")
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--scale", "smoke", "--run-dir", str(copy)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "vel-0.6.pt: fine-tuned from another parent" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_memorisation_distances_by_hand():
    """Distances leave the log-std head out, the action difference is measured on visited states, and the
    autoencoder's round trip of its training checkpoints is reported as the floor."""
    import evaluate as ev

    spec = common.suite_spec("cheetah-vel")
    P, n_act = common.num_params(spec), common.num_params(spec) - spec["act_dim"] * (spec["hidden"] + 1)
    g = torch.Generator().manual_seed(0)
    shards = [{"params": torch.randn(3, P, generator=g), "return": torch.tensor([0.0, 2.0, 1.0]),
               "traj": torch.randn(3, common.traj_dim(17, 6), generator=g), "target_velocity": v} for v in (0.3, 0.9)]
    ckpt = shards[0]["params"][1]
    logstd_only = ckpt.clone()
    logstd_only[n_act:] += 5.0  # a different log-std head: the same acting policy
    shifted = ckpt.clone()
    shifted[:n_act] += 0.01  # every acting parameter moved by 0.01: L2 = 0.01 sqrt(n_act)
    interp = 0.5 * (shards[0]["params"][1] + shards[1]["params"][1])
    generated = {"policy": spec, "method": ["hyplatent", "hyplatent", "hypformer", "interpolated-expert"],
                 "params": torch.stack([logstd_only, logstd_only, shifted, interp]),
                 "target_velocity": torch.tensor([0.6, 0.6, 0.6, 0.6])}

    class ShiftAE:  # a round trip that adds 0.02 to every parameter
        encode = staticmethod(lambda x: x)
        decode = staticmethod(lambda z: z + 0.02)

    ae_art = {"train": torch.tensor([True, True, False, True, True, False])}
    mem = ev.memorisation(generated, shards, ShiftAE(), ae_art)
    assert mem["hyplatent"]["to nearest checkpoint"] == pytest.approx(0.0, abs=1e-5)
    assert mem["hyplatent"]["action difference to nearest checkpoint"] == pytest.approx(0.0, abs=1e-6)
    assert mem["hypformer"]["to nearest checkpoint"] == pytest.approx(0.01 * np.sqrt(n_act), rel=1e-4)
    states = ev.trajectory_states(shards, spec)  # the mean |action difference| to its nearest checkpoint, ckpt
    moved = (common.batched_act(shifted[None], states[None], spec) - common.batched_act(ckpt[None], states[None], spec))
    assert moved.abs().mean().item() > 1e-4  # moved weights move actions ...
    assert mem["hypformer"]["action difference to nearest checkpoint"] == pytest.approx(moved.abs().mean().item(), rel=1e-5)
    assert mem["autoencoder round trip of a training checkpoint"] == pytest.approx(0.02 * np.sqrt(n_act), rel=1e-4)
    d_interp = torch.linalg.norm(logstd_only[:n_act] - interp[:n_act]).item()
    assert mem["hyplatent"]["to interpolated expert"] == pytest.approx(d_interp, rel=1e-5)


def test_metaworld_headline_keeps_the_main_rows_and_comparisons(tmp_path):
    scores = {"hyplatent": (45.0, 10.0), "hypformer": (50.0, 20.0), "maa": (30.0, 5.0), "parent": (40.0, 30.0),
              "checkpoints": (90.0, 95.0), "decoded-checkpoints": (85.0, 90.0), "hyplatent@top5": (60.0, 15.0)}
    for s in (1, 2, 3):
        fake_mw_results(tmp_path / f"s{s}", s, {m: (a + s, b + s) for m, (a, b) in scores.items()})
    agg.main(agg.Args(runs=[str(tmp_path / f"s{s}") for s in (1, 2, 3)], out=str(tmp_path / "out")))
    g = json.loads((tmp_path / "out" / "results.json").read_text())
    head = tables.headline(g, "metaworld")
    assert "| HypLatent (AMT-Hyp w/o HypFormer) | 47.00 ± 2.48 |" in head  # seeds 46, 47, 48
    assert "top" not in head  # top-k rows and their differences: full tables only
    assert "| all stage-0 checkpoints of the task (unseen: the oracle) | 92.00 ± 2.48 |" in head  # MetaWorld's labels
    assert_figure(tmp_path / "out" / "success.png", (990, 630))  # the per-task figure
    for pair in ("HypLatent - MAA (seen)", "HypFormer - MAA (unseen)", "HypLatent - parent (unseen)",
                 "HypFormer - HypLatent (seen)", "checkpoints - HypLatent (unseen)"):
        assert f"| {pair} |" in head, pair
    for pair in ("decoded checkpoints - checkpoints", "MAA - parent", "HypFormer - parent"):  # full tables only
        assert pair not in head, pair
    full = (tmp_path / "out" / "results.md").read_text()
    assert "| decoded checkpoints - checkpoints (seen) |" in full and "| HypLatent top-5 - HypLatent (seen) |" in full
    assert "| MAA - parent (seen) |" in full and "| HypFormer - parent (unseen) |" in full


def test_aggregate_pools_only_runs_of_one_code(tmp_path):
    """Seeds whose stages ran different code are refused, naming the stage, unless --mixed-code, and then the
    page says which seeds ran which code; results that record their code carry a checksum that is checked."""
    import provenance

    code = {"stage0": "s0", "autoencoder.pt": "ae", "hyplatent": "hl", "evaluation": "ev"}
    runs = []
    for seed in (1, 2, 3):
        fake_results(tmp_path / f"s{seed}", seed, {"hyplatent": (-1.0 - seed, -2.0)})
        f = tmp_path / f"s{seed}" / "results.json"
        res = json.loads(f.read_text())
        res["code"] = {**code, "hyplatent": "hl-new"} if seed == 3 else code
        artifacts.write_results(f, res)
        runs.append(str(tmp_path / f"s{seed}"))
    with pytest.raises(SystemExit, match="s3 and .*s1: made by other code \\(hyplatent\\); a table pools runs of one code"):
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "out")))
    agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), mixed_code=True))
    loaded = pooling.load_runs(runs, "")
    note = publish.code_note(loaded)
    one, new = pooling.code_label(code), pooling.code_label({**code, "hyplatent": "hl-new"})
    assert note == (f"- **Mixed code** (pooled with --mixed-code): the runs were made by 2 different stage codes, "
                    f"differing in hyplatent; seeds 1, 2: `{one}`; seed 3: `{new}`.")
    assert publish.code_note(loaded[:2]).startswith(f"- Code: every run made by one stage code, `{one}` (per stage: ")
    # an edited score is refused, not published
    f = tmp_path / "s1" / "results.json"
    f.write_text(f.read_text().replace('"score": -2.0', '"score": 999'))
    with pytest.raises(SystemExit, match="s1/results.json: its content does not match the checksum"):
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), mixed_code=True))
    # older results (no code, no checksum) take their code from the commits their provenance logs
    for seed, commit in ((1, "aaa"), (2, "bbb")):
        d = tmp_path / f"old{seed}"
        fake_results(d, seed, {"hyplatent": (-1.0, -2.0)})
        provenance.append_record(d, {"event": "stage", "stage": "stage 0 (SAC experts)", "commit": commit})
    with pytest.raises(SystemExit, match=re.escape(f"made by other code ({pooling.LEGACY_CODE})")):
        agg.main(agg.Args(runs=[str(tmp_path / "old1"), str(tmp_path / "old2")], out=str(tmp_path / "out")))
    # a results file that records its code but lost its checksum is refused
    res = json.loads((tmp_path / "s2" / "results.json").read_text())
    del res["sha256"]
    (tmp_path / "s2" / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="s2/results.json: no checksum"):
        pooling.load_runs([str(tmp_path / "s2")], "")


def test_aggregate_out_must_be_a_folder_of_its_own(tmp_path):
    fake_results(tmp_path / "s1", 1, {"hyplatent": (-1.0, -2.0)})
    (tmp_path / "s1" / "autoencoder.pt").write_bytes(b"")
    for out, msg in (("", "--out is empty"), ("  ", "--out is empty"), (str(tmp_path / "s1"), "a run directory")):
        with pytest.raises(SystemExit, match=msg):
            agg.main(agg.Args(runs=[str(tmp_path / "s1")], out=out))
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == ["autoencoder.pt", "results.json"]  # untouched


def test_code_fingerprint_follows_the_imports(tmp_path, monkeypatch):
    """A stage's fingerprint covers the project files it imports (inside functions too), transitively, and
    nothing else."""
    import provenance

    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from c import x\n")
    (tmp_path / "c.py").write_text("x = 1\n")
    (tmp_path / "d.py").write_text("y = 2\n")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    provenance.code_fingerprint.cache_clear()
    first = provenance.code_fingerprint(tmp_path / "a.py")
    (tmp_path / "d.py").write_text("y = 3\n")  # not imported: same code
    provenance.code_fingerprint.cache_clear()
    assert provenance.code_fingerprint(tmp_path / "a.py") == first and len(first) == 12
    (tmp_path / "c.py").write_text("x = 2\n")  # imported two steps away: other code
    provenance.code_fingerprint.cache_clear()
    assert provenance.code_fingerprint(tmp_path / "a.py") != first
    provenance.code_fingerprint.cache_clear()


def test_a_fork_is_compared_with_its_default_seed_by_seed(tmp_path):
    """`aggregate.py --fork hinge`: results-hinge.json against the same runs' results.json, (a) default - (b) fork,
    both generators in the primary family; a fork made from another stage 1 is not paired."""
    runs = []
    for seed, base in ((1, -20.0), (2, -22.0), (3, -21.0)):
        for tag, shift in (("", 0.0), ("hinge", -1.0 - 0.5 * seed)):  # the fork: 1.5, 2.0, 2.5 below the default
            fake_results(tmp_path / f"s{seed}", seed, {"hyplatent": (base + shift,) * 2, "hypformer": (base,) * 2,
                                                       "interpolated-expert": (-10.0, -10.0)},
                         name=f"results-{tag}.json" if tag else "results.json", tag=tag,
                         hyplatent={"seed": seed, "paired_weight": 1000.0, "loss": tag or "default"})
        runs.append(str(tmp_path / f"s{seed}"))
    agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), fork="hinge"))
    res = json.loads((tmp_path / "out" / "results-hinge.json").read_text())
    d = res["pairs"]["HypLatent (a) - HypLatent (b)"]  # 1.5, 2, 2.5: mean 2, s = 0.5, t = 6.93, df 2: p = 0.0202
    assert d["per_seed"] == [1.5, 2.0, 2.5] and d["family"] == "primary"
    assert d["p"] == pytest.approx(0.020204, abs=1e-5)
    h = res["pairs"]["HypFormer (a) - HypFormer (b)"]  # no difference at all: no test, no place in the family
    assert h["family"] == "primary" and h["verdict"].startswith("the same in every seed") and d["family_size"] == 1
    assert d["verdict"] == "HypLatent (a) better"
    md = (tmp_path / "out" / "results-hinge.md").read_text()
    # the fork's HypLatent per seed: -21.5, -24, -23.5: mean -23, s = sqrt(1.75), 4.302653 s / sqrt(3) = 3.29
    assert "| (b) the fork `hinge` | -23.00 ± 3.29 | -21.00 ± 2.48 |" in md
    with pytest.raises(SystemExit, match="give --components or --fork"):
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), fork="hinge", components=True))


def test_p_values_never_print_a_call_as_0050():
    from tables import fmt_p

    assert fmt_p(0.04956) == "0.0496"  # called (below 0.05): three decimals would print 0.050
    assert fmt_p(0.0504) == "0.050" and fmt_p(0.123) == "0.123" and fmt_p(0.0004) == "< 0.001"
    assert fmt_p(float("nan")) == "-"


def test_regimes_page_pairs_within_a_regime_and_compares_across_with_welch(tmp_path):
    # per seed (both velocities alike): one parent HypLatent -10, -12, -14, interpolated -8, -9, -10 (d = -2, -3, -4);
    # independent HypLatent -20, -24, -22, interpolated -40, -50, -45 (d = 20, 26, 23)
    runs = []
    for regime, hls, ies in (("one-parent", (-10, -12, -14), (-8, -9, -10)), ("independent", (-20, -24, -22), (-40, -50, -45))):
        for seed, hl, ie in zip((1, 2, 3), hls, ies):
            d = tmp_path / f"{regime}-{seed}"
            fake_results(d, seed, {"hyplatent": (hl, hl), "interpolated-expert": (ie, ie)})
            res = json.loads((d / "results.json").read_text())
            res["upstream"]["stage0"]["experts"] = regime
            res["made_from"]["autoencoder.pt"] += regime
            (d / "results.json").write_text(json.dumps(res))
            runs.append(str(d))
    with pytest.raises(SystemExit, match="other settings .*stage0: experts"):  # the two regimes never pool as seeds
        agg.main(agg.Args(runs=runs, out=str(tmp_path / "pooled")))
    agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), regimes=True))
    res = json.loads((tmp_path / "out" / "results-regimes.json").read_text())
    one, ind = res["regimes"]["one-parent"], res["regimes"]["independent"]
    assert one["seeds"] == ind["seeds"] == [1, 2, 3]
    # within: paired t-test, Holm over the two regimes' primary comparison (p 0.0351 and 0.00562)
    d1, d2 = one["pairs"]["hyplatent - interpolated-expert"], ind["pairs"]["hyplatent - interpolated-expert"]
    assert d1["per_seed"] == pytest.approx([-2, -3, -4]) and d2["per_seed"] == pytest.approx([20, 26, 23])
    assert (d1["family_size"], d1["p_holm"], d2["p_holm"]) == (2, pytest.approx(0.035099, abs=1e-5), pytest.approx(0.011246, abs=1e-5))
    assert (d1["verdict"], d2["verdict"]) == ("interpolated expert better", "HypLatent better")
    # across, HypLatent: -22 - (-12) = -10, se sqrt(4/3 + 4/3), Welch df 4, half-width t(0.975, 4) se = 4.534
    w = res["across"]["hyplatent"]
    assert (w["mean"], w["df"], w["ci95"]) == (pytest.approx(-10), pytest.approx(4.0), pytest.approx(4.533916, abs=1e-5))
    assert w["p"] == pytest.approx(0.0036022, abs=1e-6) and w["family"] == "exploratory"
    # across, the primary: 23 - (-3) = 26, se sqrt(9/3 + 1/3), df 2.439, a family of its own
    w = res["across"]["hyplatent - interpolated-expert"]
    assert (w["mean"], w["df"], w["ci95"]) == (pytest.approx(26), pytest.approx(2.439024, abs=1e-5), pytest.approx(6.644625, abs=1e-5))
    assert (w["family"], w["family_size"], w["p_holm"]) == ("primary (across regimes)", 1, pytest.approx(0.0020830, abs=1e-6))
    assert w["verdict"] == "independent better"
    md = (tmp_path / "out" / "results-regimes.md").read_text()
    assert "| HypLatent - interpolated expert | primary (across regimes) | 26.00 ± 6.64 | 3 + 3 | 2.4 | 0.002 | 0.002 | independent better |" in md
    assert_figure(tmp_path / "out" / "regimes.png", (880, 495))
    # both regimes are needed
    with pytest.raises(SystemExit, match="no run of the independent regime"):
        agg.main(agg.Args(runs=runs[:3], out=str(tmp_path / "out2"), regimes=True))
