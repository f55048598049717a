"""Aggregate the evaluations of several seeds into tables with confidence intervals (DESIGN.md section 12):
Cheetah-Vel's Table IV, the velocity ablation and the sweep; MetaWorld's Tables I-III and the token
ablation (Fig. 5).

One run directory holds one seed's evaluation, its whole chain, stage 0 included, since SAC's variance is part
of the result (pipeline.sh seeds, mw-seeds; runs that share a stage 0 pool too, and the page says so). This
script reads `results[-<tag>].json` of each run directory given, groups them (Cheetah-Vel: by training
velocities; MetaWorld: by HypFormer's token count L), checks that the runs of a group differ in nothing
but the seed, and writes to `--out`:
- `results[-<tag>].md/json`: per group, every method's mean score per task and on the averages, each with
  a 95% confidence interval over seeds (Student t: mean +- t(0.975, n-1) s/sqrt(n), s the sample standard
  deviation over seeds; no interval with one seed); the paired differences the README argues from (per
  seed, then the same interval); Cheetah-Vel's memorisation distances, averaged over seeds;
- Cheetah-Vel: `return_vs_velocity[-<tag>].png`, the per-velocity means with their intervals as error bars,
  and with groups of several sizes (the paper's 10/20/25/35 training velocities) `ablation.png`, the
  average test return against the number of training velocities;
- MetaWorld: `success.png`, success per task and on average for the generators, the parent and the tasks'
  own checkpoints; with several token counts `tokens.png`, seen and unseen success against L (Fig. 5).

A difference is called a win or a loss only where its interval excludes zero.

    python aggregate.py runs/cheetah-vel-quick-seed1 runs/cheetah-vel-quick-seed2 runs/cheetah-vel-quick-seed3 \
        --out runs/cheetah-vel-quick-aggregate
    python aggregate.py runs/cheetah-vel-quick-seed*/ runs/cheetah-vel-quick-seed*/n*/ --out runs/cv-ablation
    python aggregate.py runs/cheetah-vel-quick-seed*/ --tag sweep --out runs/cv-sweep   # the dense sweep
    python aggregate.py runs/metaworld-quick-seed* --out runs/metaworld-quick-aggregate
    python aggregate.py runs/metaworld-quick-seed* --tokens --out runs/mw-tokens  # Fig. 5
    python aggregate.py runs/cheetah-vel-quick-seed* --components --out runs/cv-components  # which loss does the work
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tyro

import artifacts
import provenance
from methods import LABELS, METHODS, MW_LABELS, MW_METHODS, MW_ROWS, task_name

# (a, b): the differences a - b reported with intervals
PAIRS = [("hyplatent", "interpolated-expert"), ("hypformer", "hyplatent"), ("hyplatent", "maa"), ("hypformer", "maa"),
         ("maa", "interpolated-expert"), ("decoded-expert", "nearest-expert"),
         ("hyplatent", "nearest-expert"), ("hypformer", "interpolated-expert"), ("oracle-expert", "hyplatent"),
         ("oracle-expert", "hypformer"), ("oracle-expert", "interpolated-expert")]
# MetaWorld: (a, b, split) differences of the split's average success
# (the seen-task chain: data vs parent, autoencoder, generation, HypFormer; unseen: vs parent and the oracle)
MW_PAIRS = [("hyplatent", "parent", "seen"), ("hypformer", "parent", "seen"), ("checkpoints", "parent", "seen"),
            ("decoded-checkpoints", "checkpoints", "seen"), ("hyplatent", "decoded-checkpoints", "seen"),
            ("hypformer", "hyplatent", "seen"), ("hyplatent", "parent", "unseen"), ("hypformer", "parent", "unseen"),
            ("hypformer", "hyplatent", "unseen"), ("checkpoints", "hyplatent", "unseen"),
            # AMT-Hyp against MAA, and MAA against the parent
            *((a, b, split) for split in ("seen", "unseen") for a, b in (("hyplatent", "maa"), ("hypformer", "maa"),
                                                                          ("maa", "parent"))),
            # top-k against all policies (both scored on the same goals): does picking on other goals pay?
            *((f"{m}@top{k}", m, split) for split in ("seen", "unseen") for m in ("hyplatent", "hypformer", "maa")
              for k in (5, 10))]
# the MetaWorld comparisons a headline shows (the others, top-k and the seen-task chain, are in the full tables)
MW_HEADLINE_PAIRS = {"hyplatent - parent", "hypformer - hyplatent", "hyplatent - maa", "hypformer - maa",
                     "checkpoints - hyplatent"}
# The primary comparisons of each suite (DESIGN.md section 12, named before the runs): Holm's correction runs
# over them alone, which keeps their power; every other difference on a page is one exploratory family,
# corrected over its own size. A comparison absent from a page (a system not run) leaves the family.
PRIMARY_CV = {"hyplatent - interpolated-expert", "hyplatent - maa", "hypformer - hyplatent",
              "hyplatent - mt-bc", "hyplatent - prompt-dt"}
PRIMARY_MW = {f"{a} - {b} ({split})" for split in ("seen", "unseen")
              for a, b in (("hyplatent", "parent"), ("hyplatent", "maa"), ("hypformer", "hyplatent"),
                           ("hyplatent", "mt-bc"), ("hyplatent", "prompt-dt"))}
ALPHA = 0.05  # a call: Holm-adjusted p below this

@dataclass
class Args:
    runs: tyro.conf.Positional[list[str]]
    """run directories, one seed each (their results[-<tag>].json)"""
    out: str = "runs/cheetah-vel-quick-aggregate"
    """where the aggregated tables and figures go"""
    tag: str = ""
    """aggregate results-<tag>.json (e.g. `sweep`) instead of results.json"""
    tokens: bool = False
    """MetaWorld token ablation: every results.json and results-L<L>.json of the run directories, grouped by L"""
    components: bool = False
    """Cheetah-Vel component ablation: results.json and results-<variant>.json of `pipeline.sh components`"""
    publish: Optional[str] = None
    """also write a result page (e.g. results/cheetah-vel.md): provenance block, headline, full tables, and its
    figures beside it as <page>-*.png"""
    title: str = ""
    """the page's title (default: from the suite, scale and tag)"""
    readme: str = "README.md"
    """with --publish: the README whose `<!-- headline: <page> -->` block is replaced by the page's headline"""
    mixed_code: bool = False
    """pool seeds made by different stage code (refused otherwise); the page then lists which seeds ran which code"""


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom, exact (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mean_ci(x) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval over seeds (nan with fewer than 2)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else float("nan"), float("nan")
    return float(x.mean()), float(t975(len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def prediction_halfwidth(x) -> float:
    """Half-width of the 95% prediction interval for one new value: t(0.975, n-1) s sqrt(1 + 1/n), centred on
    the mean (nan with fewer than 2). Used for paired differences, which are close to normal from seed to
    seed; a method's own scores are not (a seed whose parent runs on its back sits far below the others),
    and get the seeds' range instead (`fmt_range`)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float("nan")
    return float(t975(len(x) - 1) * x.std(ddof=1) * np.sqrt(1 + 1 / len(x)))


def range_coverage(n: int) -> float:
    """The probability that one new run lands between the lowest and highest of n exchangeable seeds,
    whatever their distribution: (n - 1) / (n + 1)."""
    return (n - 1) / (n + 1)


def paired_p(d) -> float:
    """Two-sided p of the paired t-test of mean difference 0 (nan with fewer than 2 seeds or no spread)."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    if len(d) < 2 or d.std(ddof=1) <= 1e-9 * max(1.0, abs(d.mean())):
        return float("nan")
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: sorted ascending, the i-th (from 0) of m is
    multiplied by m - i, made non-decreasing, capped at 1. A nan (no test) takes no place in the family."""
    idx = sorted((i for i, p in enumerate(ps) if not np.isnan(p)), key=lambda i: ps[i])
    out, run = [float("nan")] * len(ps), 0.0
    for rank, i in enumerate(idx):
        run = max(run, min(1.0, (len(idx) - rank) * ps[i]))
        out[i] = run
    return out


def paired(d, a: str, b: str, family: str) -> dict:
    """One paired comparison a - b over seeds: the per-seed differences, mean, 95% interval, 95% prediction
    interval of one new run's difference, the t-test's p and its family; `apply_holm` adds the call."""
    d = np.asarray(d, dtype=float)
    m, h = mean_ci(d)
    return {"per_seed": d.tolist(), "mean": m, "ci95": h, "pi95": prediction_halfwidth(d),
            "p": paired_p(d) if len(d) >= 3 else float("nan"),  # no test from fewer than 3 seeds
            "family": family, "a": a, "b": b}


def apply_holm(pairs: list[dict]) -> None:
    """Holm's correction over each family of a page's comparisons (in place): `p_holm`, `family_size` (the
    tests in the family) and the call. Comparisons from fewer than 3 seeds are never called and take no
    place in a family."""
    for fam in sorted({d["family"] for d in pairs}):
        members = [d for d in pairs if d["family"] == fam]
        ps = [d["p"] for d in members]
        for d, q in zip(members, holm(ps)):
            d["p_holm"], d["family_size"] = q, int(np.isfinite(ps).sum())
            d["verdict"] = verdict(d)


def verdict(d: dict) -> str:
    """Higher is better: a wins where the Holm-adjusted p of a - b is below ALPHA and the mean is above 0,
    loses where below 0; never from fewer than 3 seeds."""
    n, m, h = len(d["per_seed"]), d["mean"], d["ci95"]
    if n < 3:
        return f"no call ({n} seed{'s' if n > 1 else ''})"
    if h <= 1e-9 * max(1.0, abs(m)):  # every seed gave the same difference (up to rounding): rows no seed changes
        return "the same in every seed (not varied by the seeds): no call"
    if d["p_holm"] >= ALPHA:
        return "no call"
    return f"{d['a']} better" if m > 0 else f"{d['b']} better"


def fmt(m: float, h: float) -> str:
    return f"{m:.2f}" if np.isnan(h) else f"{m:.2f} ± {h:.2f}"


def fmt_p(p: float) -> str:
    return "-" if np.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def load_runs(paths: list[str], tag: str, tokens: bool = False) -> list[dict]:
    """The results of each run directory (with --tokens: all of its results.json and results-L<L>.json),
    refused with one line unless they are evaluations of this version, all of one suite."""
    runs = []
    for p in paths:
        names = ["results.json", *sorted(f.name for f in Path(p).glob("results-L*.json"))] if tokens else \
            [f"results-{tag}.json" if tag else "results.json"]
        for name in names:
            f = Path(p) / name
            try:
                res = json.loads(f.read_text())
            except FileNotFoundError:
                if tokens and name == "results.json":
                    continue
                raise SystemExit(f"error: {f}: not found (run evaluate.py{' --tag ' + tag if tag else ''} there first)") from None
            except ValueError:
                raise SystemExit(f"error: {f}: not JSON") from None
            # a results file that records its code carries a checksum too; only older ones (kept under
            # results/data/) have neither, and their code is read from their provenance (`run_code`)
            res = artifacts.read_results(f, legacy_ok=isinstance(res, dict) and "code" not in res)
            if "train_velocities" not in res and "num_tokens" not in res:
                raise SystemExit(f"error: {f}: not an evaluation of this version (no train_velocities or num_tokens)")
            res["dir"], res["file"] = str(p), name
            res["code"] = run_code(res)
            runs.append(res)
    if not runs:
        raise SystemExit(f"error: no results.json or results-L<L>.json in {', '.join(paths)}")
    suites = sorted({r["suite"] for r in runs})
    if len(suites) > 1:
        raise SystemExit(f"error: the run directories hold evaluations of several suites ({', '.join(suites)})")
    return runs


LEGACY_CODE = "unrecorded (the commits in provenance.jsonl)"  # the code key of results written before `code`


def run_code(r: dict) -> dict:
    """{stage: code fingerprint} of a run's results (evaluate.py's `code`); for results written before
    fingerprints were recorded, the commits its provenance.jsonl logs for its stages (runs made at different
    commits then count as different code, the same code or not)."""
    if "code" in r:
        return r["code"]
    commits = sorted({rec.get("commit", "?") for rec in provenance.read_records(r["dir"]) if rec.get("event") == "stage"})
    return {LEGACY_CODE: ", ".join(commits) or "unknown"}


def code_label(code: dict) -> str:
    """A run's code in one word for the run table: 8 hex digits over every stage's fingerprint, or `unrecorded`."""
    import hashlib

    if LEGACY_CODE in code:
        return "unrecorded"
    return hashlib.sha256(json.dumps(code, sort_keys=True).encode()).hexdigest()[:8]


def code_difference(a: dict, b: dict) -> list[str]:
    """The stages whose code differs between two runs."""
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def group_key(r: dict):
    """Cheetah-Vel: the training velocities; MetaWorld: HypFormer's token count L."""
    return tuple(r["train_velocities"]) if r["suite"] == "cheetah-vel" else r["num_tokens"]


SHARED_NOTE = (" **One stage 0 for every run** (the same parent and shards): the intervals cover stages 1-3 and the "
               "evaluation, not stage 0's variation.")
OWN_NOTE = " Each seed has its own stage 0 (parent and shards): the intervals cover the whole chain's variation."


def stage0_note(g: dict) -> str:
    """Which kind of interval a group's are: over whole chains, or over stages 1-3 on one shared stage 0."""
    if g["n_seeds"] < 2:
        return ""
    if g["stage0s"] == g["n_seeds"]:
        return OWN_NOTE
    return SHARED_NOTE if g["stage0s"] == 1 else (f" {g['stage0s']} stage 0s for {g['n_seeds']} seeds (some seeds "
                                                   "share a parent and shards): the intervals understate stage 0's variation.")
UPSTREAM_FREE = {"seed", "out", "hyplatent"}  # upstream settings that may differ between seeds: the seed, file names


def upstream_difference(a: dict, b: dict) -> list[str]:
    """`artifact: setting` for every upstream setting in which two evaluations differ (the seed aside)."""
    ua, ub = a.get("upstream"), b.get("upstream")
    return [f"{art}: {k}" for art in sorted(set(ua) | set(ub))
            for k in sorted(set(ua.get(art, {})) | set(ub.get(art, {})))
            if k not in UPSTREAM_FREE and ua.get(art, {}).get(k) != ub.get(art, {}).get(k)]


FREE = {"seed", "tag", "hypformer", "baselines"}  # evaluation settings that may differ between a group's runs


def differences(a: dict, b: dict, free: set = FREE, upstream_free: tuple[str, ...] = ()) -> list[str]:
    """Where two evaluations differ beyond `free`: evaluation settings, and upstream settings (`artifact:
    setting`) other than those starting with one of `upstream_free`."""
    diff = [k for k in sorted(set(a["settings"]) | set(b["settings"])) if k not in free
            and a["settings"].get(k) != b["settings"].get(k)]
    return diff + [d for d in upstream_difference(a, b) if not d.startswith(upstream_free)]


def check_comparable(groups: dict, what, upstream_free: tuple[str, ...], shared: tuple[str, ...]) -> None:
    """Groups compared seed by seed (training sets, token counts, loss variants) differ in nothing but what
    makes them groups (upstream settings starting with `upstream_free`; MAA's, which no pair across groups
    reads; file names), and each seed's runs are made from the same `shared` artifacts (made_from uids: at
    least its one stage 0, parent.pt)."""
    keys = list(groups)
    ref = groups[keys[0]][0]
    for k in keys[1:]:
        diff = differences(ref, groups[k][0], FREE | {"diffusion", "hyplatent"}, (*upstream_free, "diffusion: "))
        if diff:
            raise SystemExit(f"error: {groups[k][0]['dir']} ({what(k)}) and {ref['dir']} ({what(keys[0])}): made or "
                             f"evaluated with other settings ({', '.join(diff[:6])}); rows compared seed by seed "
                             "must differ in nothing else")
    for art in shared:
        uids: dict = {}
        for rs in groups.values():
            for r in rs:
                uids.setdefault(r["seed"], set()).add(r["made_from"].get(art))
        if bad := sorted(s for s, u in uids.items() if len(u) > 1):
            raise SystemExit(f"error: seed {bad[0]}: its {', '.join(map(what, keys))} come from different {art} "
                             f"artifacts; compared seed by seed, each seed's runs must share its {art} (made again "
                             "since? evaluate the others again too)")


def group_runs(runs: list[dict], mixed_code: bool = False) -> dict:
    """{key: runs}. Runs pool as seeds of one method only when they differ in nothing but the seed: the
    evaluation's settings (but, for the token ablation, its file names and baselines), and the settings of
    every artifact upstream (stage 0 to HypFormer). Two evaluations of one chain (one autoencoder.pt) are
    not two seeds. Anything else stops with one line."""
    groups: dict = {}
    for r in runs:
        if "upstream" not in r:
            raise SystemExit(f"error: {r['dir']}: its results record no upstream settings; "
                             "evaluate it again (FROM_STAGE=4 bash pipeline.sh ..., or python evaluate.py)")
        groups.setdefault(group_key(r), []).append(r)
    what = lambda key: f"{len(key)} training velocities" if isinstance(key, tuple) else f"L = {key}"  # noqa: E731
    for key, rs in groups.items():
        for r in rs[1:]:  # a results-L<L>.json and a results.json may share a group (FREE)
            diff = differences(rs[0], r, upstream_free=())
            if diff:
                raise SystemExit(f"error: {r['dir']} and {rs[0]['dir']}: made or evaluated with other settings "
                                 f"({', '.join(diff[:6])}): not seeds of one method")
            if (diff := code_difference(rs[0]["code"], r["code"])) and not mixed_code:
                raise SystemExit(f"error: {r['dir']} and {rs[0]['dir']}: made by other code ({', '.join(diff[:4])}); a "
                                 "table pools runs of one code (--mixed-code pools them and lists which seed ran which)")
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) < len(seeds):
            raise SystemExit(f"error: two evaluations of seed {max(seeds, key=seeds.count)} for {what(key)}: "
                             f"{', '.join(r['dir'] for r in rs)}")
        aes = [r["made_from"].get("autoencoder.pt") for r in rs]
        if len(set(aes)) < len(aes):
            same = [r["dir"] for r in rs if aes.count(r["made_from"].get("autoencoder.pt")) > 1]
            raise SystemExit(f"error: {', '.join(same)}: evaluations of one chain (the same autoencoder.pt), not "
                             f"seeds, for {what(key)}")
    groups = {k: sorted(rs, key=lambda r: r["seed"]) for k, rs in groups.items()}  # per-seed columns in seed order
    sizes = [len(k) for k in groups if isinstance(k, tuple)]
    if len(set(sizes)) < len(sizes):  # the velocity ablation names a training set by its size
        raise SystemExit(f"error: two different training sets of {max(sizes, key=sizes.count)} velocities among "
                         "these runs; give one set of each size")
    if len(groups) > 1:
        shared = ("parent.pt",) if sizes else ("parent.pt", "autoencoder.pt", "hyplatent.pt")  # sets; token counts
        check_comparable(groups, what, ("hypformer: num_tokens",), shared)
    return dict(sorted(groups.items(), key=lambda kv: len(kv[0]) if isinstance(kv[0], tuple) else kv[0]))


def aggregate_group(rs: list[dict], primary: set = frozenset()) -> dict:
    """Per method and task (velocity names and `average`): the seeds' scores, mean and interval; paired
    differences of the averages (those named in `primary` in the primary family, the others exploratory;
    `apply_holm` calls them once the page's families are complete); memorisation distances averaged over
    seeds."""
    scores: dict = {}
    for r in rs:
        for row in r["rows"]:
            if not row["method"].startswith("paper:"):
                scores.setdefault((row["method"], row["task"]), []).append(row["score"])
    n = len(rs)
    cells = {f"{m}|{t}": {"seeds": v, **dict(zip(("mean", "ci95"), mean_ci(v)))}
             for (m, t), v in scores.items() if len(v) == n}
    pairs = {}
    todo = [(a, b, "average") for a, b in PAIRS] if rs[0]["suite"] == "cheetah-vel" else \
        [(a, b, f"average-{split}") for a, b, split in MW_PAIRS]
    for a, b, t in todo:
        ka, kb = (a, t), (b, t)
        if ka in scores and kb in scores and len(scores[ka]) == n == len(scores[kb]):
            d = np.array(scores[ka]) - np.array(scores[kb])  # paired by seed (same stage 0, same envs)
            key = f"{a} - {b}" if t == "average" else f"{a} - {b} ({t.removeprefix('average-')})"
            pairs[key] = paired(d, pair_label(a), pair_label(b), "primary" if key in primary else "exploratory")
    mem = {}
    for r in rs:
        for k, v in (r.get("memorisation") or {}).items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    mem.setdefault(f"{k}: {kk}", []).append(vv)
            else:
                mem.setdefault(k, []).append(v)
    stage0s = len({r["made_from"].get("parent.pt") for r in rs})  # distinct parents: 1 = one stage 0 for every run
    return {"n_seeds": n, "seeds": [r["seed"] for r in rs], "dirs": [r["dir"] for r in rs], "cells": cells,
            "shared_stage0": n > 1 and stage0s == 1, "stage0s": stage0s,
            "pairs": pairs, "memorisation": {k: float(np.mean(v)) for k, v in mem.items()}}


SIZE_METHODS = ("hyplatent", "hypformer", "interpolated-expert", "nearest-expert")  # rows of the size comparison


def size_pairs(agg: dict) -> dict:
    """The velocity ablation: each training set against the smallest, per method, paired by seed (the sets are
    nested: one stage 0 per seed); HypLatent's are the page's primary family. {"<method>: <N> - <n>": paired}."""
    keys = sorted(agg, key=int)
    base, out = agg[keys[0]], {}
    for k in keys[1:]:
        for m in SIZE_METHODS:
            a, b = agg[k]["cells"].get(f"{m}|average"), base["cells"].get(f"{m}|average")
            if a and b:
                d = np.array(a["seeds"]) - np.array(b["seeds"])
                out[f"{m}: {k} - {keys[0]}"] = paired(d, f"{k} velocities", f"{keys[0]} velocities",
                                                      "primary" if m == "hyplatent" else "exploratory")
    return out


def check_same_seeds(agg: dict, what: str, unit: str = "") -> None:
    """Rows compared seed by seed (training sets, token counts) must hold the same seeds, in the same order."""
    seeds = {k: g["seeds"] for k, g in agg.items()}
    if len({tuple(v) for v in seeds.values()}) > 1:
        raise SystemExit(f"error: the {what} were run on different seeds ("
                         + "; ".join(f"{k}{unit}: {v}" for k, v in seeds.items())
                         + f"): give every one of the {what} the same seeds")


def token_pairs(agg: dict, ref: int = 8) -> dict:
    """The token ablation: HypFormer with each L against the chain's own L = `ref`, seen and unseen success,
    paired by seed (one chain per seed); the page's primary family. {"L<L> - L<ref> (<split>)": paired}."""
    out, base = {}, agg.get(f"L{ref}")
    for k, g in agg.items():
        for split in ("seen", "unseen"):
            a, b = g["cells"].get(f"hypformer|average-{split}"), base and base["cells"].get(f"hypformer|average-{split}")
            if g is not base and a and b:
                d = np.array(a["seeds"]) - np.array(b["seeds"])
                out[f"{k} - L{ref} ({split})"] = paired(d, k, f"L{ref}", "primary")
    return out


PAIR_HEAD = ["| {what} | family | mean ± 95% CI | one new run (95% prediction) | per seed | p | Holm p | call |",
             "|---|---|---|---|---|---|---|---|"]


def family_note(pairs) -> str:
    """What a page's calls are corrected over: the size of each family its comparisons belong to."""
    sizes = {d["family"]: d["family_size"] for d in pairs}
    fams = " and ".join(f"{sizes[f]} {f}" for f in ("primary", "exploratory") if f in sizes)
    return (f"Holm-adjusted over {fams} comparisons (each family corrected on its own; primary: DESIGN.md "
            "section 12). p: two-sided paired t-test; a call where the Holm-adjusted p is below 0.05, never from "
            "fewer than 3 seeds; the intervals are unadjusted 95% t intervals.")


def pair_row(label: str, d: dict) -> str:
    pred = "-" if len(d["per_seed"]) < 3 else f"{d['mean'] - d['pi95']:.2f} to {d['mean'] + d['pi95']:.2f}"
    return (f"| {label} | {d['family']} | {fmt(d['mean'], d['ci95'])} | {pred} | "
            f"{', '.join(f'{x:.2f}' for x in d['per_seed'])} | {fmt_p(d['p'])} | {fmt_p(d['p_holm'])} | {d['verdict']} |")


def size_table(pairs: dict) -> str:
    lines = [PAIR_HEAD[0].format(what="method: training velocities a - b"), PAIR_HEAD[1]]
    return "\n".join(lines + [pair_row(f"{pair_label(k.split(': ')[0])}: {k.split(': ')[1]}", d) for k, d in pairs.items()])


def group_table(g: dict, vels: list[float]) -> str:
    tasks = [task_name("cheetah-vel", v) for v in vels] + ["average"]
    methods = [m for m in METHODS if any(f"{m}|{t}" in g["cells"] for t in tasks)]
    cell = lambda m, t: fmt(g["cells"][f"{m}|{t}"]["mean"], g["cells"][f"{m}|{t}"]["ci95"]) if f"{m}|{t}" in g["cells"] else "-"  # noqa: E731
    if len(vels) <= 8:  # methods as rows (Table IV)
        lines = ["| method | " + " | ".join(f"v* = {v:g}" for v in vels) + " | average |", "|---" * (len(vels) + 2) + "|"]
        lines += [f"| {LABELS[m]} | " + " | ".join(cell(m, t) for t in tasks) + " |" for m in methods]
    else:  # a sweep: velocities as rows
        lines = ["| v* | " + " | ".join(LABELS[m] for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]
        lines += [f"| {t.removeprefix('vel-')} | " + " | ".join(cell(m, t) for m in methods) + " |" for t in tasks]
    lines += pairs_table(g)
    if g["memorisation"]:
        lines += ["", "Memorisation (each run's medians, averaged over seeds). Rows `action difference to nearest "
                  "checkpoint`: the mean absolute difference of actions on visited states; every other row: the L2 "
                  "distance of the acting parameters (the unused log-std head left out), to every stage-0 checkpoint "
                  "(held-out ones included). `autoencoder round trip of a training checkpoint` is the floor every "
                  "decoded policy sits on. Runs whose code is `unrecorded` computed the distances with torch.cdist's "
                  "matrix-multiply path, off by up to about 0.014 (the nearest expert's distance to itself); later "
                  "runs compute them exactly, in float64.", "", "| quantity | distance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in g["memorisation"].items()]
    return "\n".join(lines)


def pair_label(key: str) -> str:
    """`hyplatent - interpolated-expert (seen)` -> `HypLatent - interpolated expert (seen)`; `hyplatent@top5`
    -> `HypLatent top-5`."""
    short = {"hyplatent": "HypLatent", "hypformer": "HypFormer", "maa": "MAA"}
    word = lambda w: f"{short[w.split('@top')[0]]} top-{w.split('@top')[1]}" if "@top" in w else \
        short.get(w, w.replace("-", " "))  # noqa: E731 - hyplatent@top5 -> HypLatent top-5
    return " - ".join(" ".join(word(w) for w in part.split(" ")) for part in key.split(" - "))


def pairs_table(g: dict, keep=None) -> list[str]:
    """The paired differences of group `g` (those whose `a - b` is in `keep`, when given), primary first."""
    rows = sorted((kv for kv in g["pairs"].items() if keep is None or kv[0].split(" (")[0] in keep),
                  key=lambda kv: kv[1]["family"] != "primary")
    if not rows:
        return []
    return ["", "Paired differences of the averages (a - b per seed). " + family_note(g["pairs"].values()), "",
            PAIR_HEAD[0].format(what="a - b"), PAIR_HEAD[1], *(pair_row(pair_label(k), d) for k, d in rows)]


def leaves_0_100(lo: float, hi: float) -> bool:
    """Whether an interval of a success rate leaves [0, 100] (by more than float rounding)."""
    return lo < -1e-6 or hi > 100 + 1e-6


def fmt_rate(c: dict) -> str:
    """A success rate over seeds: with 2 seeds the two values (a 95% t interval from 2 is 12.7 standard
    errors wide: no use), else mean ± interval, the interval clipped to [0, 100] where it leaves it."""
    if len(c["seeds"]) == 2:
        return f"{c['mean']:.2f} (seeds {c['seeds'][0]:.1f}, {c['seeds'][1]:.1f})"
    if np.isnan(c["ci95"]) or not leaves_0_100(c["mean"] - c["ci95"], c["mean"] + c["ci95"]):
        return fmt(c["mean"], c["ci95"])
    return f"{c['mean']:.2f} [{max(0.0, c['mean'] - c['ci95']):.1f}, {min(100.0, c['mean'] + c['ci95']):.1f}] (clipped)"


def fmt_range(c: dict) -> str:
    """What one new run of a method shows, from the seeds themselves: the lowest to the highest seed (from 3
    seeds on; a new run lands inside with probability `range_coverage(n)`, whatever the distribution)."""
    if len(c["seeds"]) < 3:
        return "-"
    return f"{min(c['seeds']):.2f} to {max(c['seeds']):.2f}"


def range_head(n: int) -> str:
    return (f"one new run: the {n} seeds' range (inside with probability {range_coverage(n):.0%})" if n >= 3
            else "one new run (from 3 seeds)")


def metaworld_table(g: dict) -> str:
    """Table II (methods x seen/unseen average success) and Tables I/III (tasks x methods): mean ± CI
    (`fmt_rate`)."""
    cell = lambda m, t: fmt_rate(g["cells"][f"{m}|{t}"]) if f"{m}|{t}" in g["cells"] else "-"  # noqa: E731
    lines = ["| method | seen | unseen |", "|---|---|---|"]
    lines += [f"| {m} | {cell(m, 'average-seen')} | {cell(m, 'average-unseen')} |" for m in MW_ROWS
              if f"{m}|average-seen" in g["cells"] or f"{m}|average-unseen" in g["cells"]]
    tasks = sorted({k.split("|")[1] for k in g["cells"]} - {"average-seen", "average-unseen"},
                   key=lambda t: (t not in g["seen"], t))
    methods = [m for m in MW_METHODS if any(f"{m}|{t}" in g["cells"] for t in tasks)]
    lines += ["", "| task | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    lines += [f"| {t}{'' if t in g['seen'] else ' (unseen)'} | " + " | ".join(cell(m, t) for m in methods) + " |"
              for t in tasks]
    return "\n".join(lines + pairs_table(g))


def velocities_of(g: dict) -> list[float]:
    names = {k.split("|")[1] for k in g["cells"]} - {"average"}
    return sorted(float(t.removeprefix("vel-")) for t in names)


def range_table(g: dict) -> str:
    """A sweep beyond the training velocities: per method, the average over the evaluated velocities up to the
    last training velocity and over those above it, per seed and mean ± 95% CI ("" when none lies above)."""
    vels, top = velocities_of(g), max(g["train_velocities"])
    parts = {"inside": [v for v in vels if v <= top], "beyond": [v for v in vels if v > top]}
    if not parts["beyond"]:
        return ""
    lines = [f"| method | velocities up to {top:g} ({len(parts['inside'])}), per seed | mean ± 95% CI | "
             f"above {top:g} ({len(parts['beyond'])}), per seed | mean ± 95% CI |", "|---|---|---|---|---|"]
    for m in METHODS:
        cells = []
        for vs in parts.values():
            per = [g["cells"].get(f"{m}|{task_name('cheetah-vel', v)}") for v in vs]
            if None in per:
                break
            x = np.mean([c["seeds"] for c in per], axis=0)  # per seed: the mean over these velocities
            cells += [", ".join(f"{v:.2f}" for v in x), fmt(*mean_ci(x))]
        else:
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_velocity(groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    for ax, (key, g) in zip(axes[0], groups.items()):
        vels = velocities_of(g)
        for m in METHODS:
            pts = [(v, g["cells"][f"{m}|{task_name('cheetah-vel', v)}"]) for v in vels
                   if f"{m}|{task_name('cheetah-vel', v)}" in g["cells"]]
            if not pts or m == "parent":
                continue
            xs, cs = [p[0] for p in pts], [p[1] for p in pts]
            ys, es = np.array([c["mean"] for c in cs]), np.array([0 if np.isnan(c["ci95"]) else c["ci95"] for c in cs])
            line, = ax.plot(xs, ys, "o--" if m == "oracle-expert" else "o-", label=LABELS[m], ms=3,
                            color="k" if m == "oracle-expert" else None)
            ax.fill_between(xs, ys - es, ys + es, color=line.get_color(), alpha=0.15, lw=0)
        for tv in key:
            ax.axvline(tv, color="grey", lw=0.5, alpha=0.5)
        ax.set_xlabel("target velocity (grey lines: training velocities)")
        ax.set_ylabel("mean return over 200 steps")
        ax.set_title(f"{len(key)} training velocities, {g['n_seeds']} seed(s); bands: 95% t interval of the mean")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ablation(groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in ("hyplatent", "hypformer", "interpolated-expert", "nearest-expert", "oracle-expert"):
        pts = [(len(k), g["cells"][f"{m}|average"]) for k, g in groups.items() if f"{m}|average" in g["cells"]]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], capsize=3, label=m, marker="o",
                        yerr=[0 if np.isnan(p[1]["ci95"]) else p[1]["ci95"] for p in pts],
                        ls="--" if m == "oracle-expert" else "-", color="k" if m == "oracle-expert" else None)
    ax.set_xlabel("number of training velocities (nested subsets)")
    ax.set_ylabel("mean return at the test velocities")
    ax.set_title("Cheetah-Vel: test return vs training velocities\n(bars: 95% t interval over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metaworld(g: dict, path: Path) -> None:
    """Success per task and on average, seen and unseen tasks: the generators beside the parent and the
    tasks' own checkpoints (on unseen tasks the oracle), error bars the 95% t interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ("hyplatent", "hypformer", "maa", "parent", "checkpoints")
    names = sorted({k.split("|")[1] for k in g["cells"]} - {"average-seen", "average-unseen"})
    fig, axes = plt.subplots(2, 1, figsize=(11, 7))
    for ax, split in zip(axes, ("seen", "unseen")):
        tasks = [t for t in names if (t in g["seen"]) == (split == "seen")] + [f"average-{split}"]
        x, width = np.arange(len(tasks)), 0.8 / len(rows)
        for i, m in enumerate(rows):
            cs = [g["cells"].get(f"{m}|{t}") for t in tasks]
            ax.bar(x + (i - (len(rows) - 1) / 2) * width, [np.nan if c is None else c["mean"] for c in cs], width,
                   yerr=[0 if c is None or np.isnan(c["ci95"]) else c["ci95"] for c in cs], capsize=2,
                   label=MW_LABELS[m], color="grey" if m == "parent" else "k" if m == "checkpoints" else None)
        ax.set_xticks(x, [t.removesuffix("-v3") for t in tasks], rotation=20, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("success %")
        ax.set_title(f"{split} tasks, {g['n_seeds']} seed(s); bars: 95% t interval over seeds", fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_tokens(groups: dict, path: Path) -> None:
    """Fig. 5: seen and unseen success against HypFormer's token count L, HypLatent and the parent as
    references (they do not depend on L)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    Ls = sorted(groups)
    for ax, split in zip(axes, ("seen", "unseen")):
        t = f"average-{split}"
        for m in ("hypformer", "hypformer@top10", "hyplatent", "parent"):
            pts = [(L, groups[L]["cells"][f"{m}|{t}"]) for L in Ls if f"{m}|{t}" in groups[L]["cells"]]
            if not pts:
                continue
            ys, es = [p[1]["mean"] for p in pts], [0 if np.isnan(p[1]["ci95"]) else p[1]["ci95"] for p in pts]
            if m.startswith("hypformer"):
                ax.errorbar([p[0] for p in pts], ys, yerr=es, marker="o", capsize=3, label=f"{m} (L tokens)")
            else:  # generated or kept without HypFormer: one value, a reference band
                mean, ci = pts[0][1]["mean"], 0 if np.isnan(pts[0][1]["ci95"]) else pts[0][1]["ci95"]
                ax.axhline(mean, ls="--", color="grey" if m == "parent" else "k", label=m)
                ax.axhspan(mean - ci, mean + ci, color="grey" if m == "parent" else "k", alpha=0.1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L, generated latents per condition (HypFormer tokens)")
        ax.set_ylabel(f"{split} tasks: success %")
        ax.set_title(f"{split} tasks; bars: 95% t interval over seeds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# Result pages: provenance, headline, tables, figures (README: "Results")
# ----------------------------------------------------------------------------------------------------

HEADLINE = ("<!-- headline -->", "<!-- /headline -->")


def headline(agg: dict, suite: str) -> str:
    """The averages of every method (mean ± 95% CI, the seeds' range: what one new run shows) and the paired
    differences with their calls, per group: what the README copies. MetaWorld: the methods without their
    top-k rows, and the comparisons of MW_HEADLINE_PAIRS."""
    out = []
    for g in agg.values():
        if len(agg) > 1:
            out += [f"**{len(g['train_velocities'])} training velocities**" if suite == "cheetah-vel" else
                    f"**HypFormer with L = {g['num_tokens']}**", ""]
        n = g["n_seeds"]
        if suite == "cheetah-vel":
            tasks, names, rows = ["average"], ["average return"], [m for m in METHODS if f"{m}|average" in g["cells"]]
        else:
            tasks, names = ["average-seen", "average-unseen"], ["seen success %", "unseen success %"]
            rows = [m for m in MW_METHODS if any(f"{m}|{t}" in g["cells"] for t in tasks)]  # top-k: full tables
        over = f"mean ± 95% CI over {n} seeds" if n > 1 else "one seed (no interval)"
        head = "| method | " + " | ".join(f"{x}, {over} | {range_head(n)}" for x in names)
        out += [head + " |", "|---" * (1 + 2 * len(tasks)) + "|"]
        for m in rows:
            cells = []
            for t in tasks:
                c = g["cells"].get(f"{m}|{t}")
                cells += ["-", "-"] if c is None else [fmt(c["mean"], c["ci95"]) if suite == "cheetah-vel" else fmt_rate(c),
                                                       fmt_range(c)]
            out.append(f"| {(LABELS if suite == 'cheetah-vel' else MW_LABELS)[m]} | " + " | ".join(cells) + " |")
        out += pairs_table(g, None if suite == "cheetah-vel" else MW_HEADLINE_PAIRS) + [""]
    return "\n".join(out).rstrip()


# The component ablation (pipeline.sh components): the tag of each stage-2 variant's results and its row name
COMPONENTS = [("", "(a) Eqs. 3-5 + paired term (the chain's default)"),
              ("paired-only", "(b) paired term alone, no discriminator"),
              ("paper-losses", "(c) the paper's losses alone (paired weight 0)"),
              ("regressor", "(d) deterministic regressor (no noise, no discriminator)")]


def load_components(paths: list[str], mixed_code: bool = False) -> dict[str, list[dict]]:
    """{variant tag: runs}, every variant's evaluations checked like seeds, and paired by seed: each seed's
    variants share its stage 0-1 (one autoencoder.pt), so their differences are paired."""
    by = {}
    for tag, _ in COMPONENTS:
        groups = group_runs(load_runs(paths, tag), mixed_code)
        if len(groups) > 1:
            raise SystemExit("error: --components: the run directories were trained on different velocities")
        by[tag] = next(iter(groups.values()))
    check_same_seeds({tag or "default": {"seeds": [r["seed"] for r in rs]} for tag, rs in by.items()}, "loss variants")
    check_comparable(by, lambda tag: f"variant {tag or 'default'}", ("hyplatent: ",), ("parent.pt", "autoencoder.pt"))
    return by


def aggregate_components(by: dict[str, list[dict]]) -> dict:
    """Average test return of HypLatent and HypFormer per variant (and the interpolated expert), per seed,
    with intervals; the paired differences (a) - (b|c|d) and each row - the interpolated expert."""
    def per_seed(rs, method):
        return [next(row["score"] for row in r["rows"] if row["method"] == method and row["task"] == "average")
                for r in rs]

    rows = {f"{m}|{tag}": per_seed(rs, m) for tag, rs in by.items() for m in ("hyplatent", "hypformer")}
    rows["interpolated-expert|"] = per_seed(by[""], "interpolated-expert")
    cells = {k: {"seeds": v, **dict(zip(("mean", "ci95"), mean_ci(v)))} for k, v in rows.items()}
    pairs = {}
    for m in ("hyplatent", "hypformer"):
        todo = [(f"{m}|", f"{m}|{tag}") for tag, _ in COMPONENTS[1:]]
        todo += [(f"{m}|{tag}", "interpolated-expert|") for tag, _ in COMPONENTS]
        for a, b in todo:
            la, lb = component_label(a), component_label(b)
            # primary: HypLatent's default against each variant (what stage 2's loss owes to each part)
            fam = "primary" if m == "hyplatent" and a == f"{m}|" and b != "interpolated-expert|" else "exploratory"
            pairs[f"{la} - {lb}"] = paired(np.array(rows[a]) - np.array(rows[b]), la, lb, fam)
    apply_holm(list(pairs.values()))
    return {"n_seeds": len(by[""]), "seeds": [r["seed"] for r in by[""]], "dirs": [r["dir"] for r in by[""]],
            "cells": cells, "pairs": pairs, "shared_stage0": False, "stage0s": len(by[""])}


def component_label(key: str) -> str:
    """`hypformer|paired-only` -> `HypFormer (b)`; `interpolated-expert|` -> `interpolated expert`."""
    m, tag = key.split("|")
    if m == "interpolated-expert":
        return "interpolated expert"
    return f"{ {'hyplatent': 'HypLatent', 'hypformer': 'HypFormer'}[m]} ({'abcd'[[t for t, _ in COMPONENTS].index(tag)]})"


def components_table(g: dict) -> str:
    n = g["n_seeds"]
    lines = [f"| stage 2 | HypLatent, {f'mean ± 95% CI over {n} seeds' if n > 1 else 'one seed (no interval)'} | HypFormer | "
             f"HypFormer, {range_head(n)} |", "|---|---|---|---|"]
    for tag, label in COMPONENTS:
        hl, hf = g["cells"][f"hyplatent|{tag}"], g["cells"][f"hypformer|{tag}"]
        lines.append(f"| {label} | {fmt(hl['mean'], hl['ci95'])} | {fmt(hf['mean'], hf['ci95'])} | "
                     + fmt_range(hf) + " |")
    ie = g["cells"]["interpolated-expert|"]
    lines.append(f"| interpolated expert (no generator) | {fmt(ie['mean'], ie['ci95'])} | | |")
    return "\n".join(lines + pairs_table(g))


def plot_components(g: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(COMPONENTS))
    for i, m in enumerate(("hyplatent", "hypformer")):
        cs = [g["cells"][f"{m}|{tag}"] for tag, _ in COMPONENTS]
        ax.bar(x + (i - 0.5) * 0.38, [c["mean"] for c in cs], 0.36, label=LABELS[m],
               yerr=[0 if np.isnan(c["ci95"]) else c["ci95"] for c in cs], capsize=3)
    ie = g["cells"]["interpolated-expert|"]
    ax.axhline(ie["mean"], color="k", ls="--", lw=1, label="interpolated expert")
    ax.set_xticks(x, ["(a) default", "(b) paired only", "(c) paper losses", "(d) regressor"])
    ax.set_ylabel("mean return at the test velocities")
    ax.set_title(f"Cheetah-Vel: stage 2's loss, part by part ({g['n_seeds']} seeds; bars: 95% t interval)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def provenance_block(runs: list[dict], argv: list[str], commit: str, stages: tuple[str, ...] | None = None) -> str:
    """Who made the page and its runs: the command, commit and date of the aggregation; per run directory
    its seed, the commits and dates of its stages and each stage's wall time (pipeline.sh's
    provenance.jsonl, summed over invocations; only `stages` where given); the machines; the chain and
    stage commands."""
    runs = list({r["dir"]: r for r in runs}.values())  # --tokens: several evaluations of one run directory
    seeds = sorted({r["seed"] for r in runs})
    lines = ["## Provenance", "", f"- Page: `python aggregate.py {shlex.join(argv)}` at commit "
             f"{commit}, {provenance.utc_now()}.",
             "- Seeds: " + ", ".join(map(str, seeds)) + (" (one run directory each)." if len(seeds) == len(runs) else
                                                          f" ({len(runs)} run directories).")]
    machines, chains, stage_cmds, table, stage_names = {}, [], [], [], []
    for r in runs:
        recs = [rec for rec in provenance.read_records(r["dir"])
                if rec.get("event") != "stage" or stages is None or rec["stage"] in stages]
        secs: dict = {}
        for rec in recs:
            if rec.get("event") == "chain":
                key = json.dumps(rec.get("machine", {}), sort_keys=True)
                machines.setdefault(key, rec.get("machine", {}))
                env = " ".join(f"{k}={v}" for k, v in rec.get("env", {}).items() if k not in ("RUNS", "RUN_DIR"))
                # one line per kind of chain: the seed is a placeholder (the seeds are listed above)
                chains.append(re.sub(r"\b((?:MW_)?SEEDS?)=\d+(?: \d+)*\b", r"\1=<s>", f"{env} {rec['command']}".strip()))
            elif rec.get("event") == "stage":
                # a stage made again (FROM_STAGE) starts its time afresh; a resumed one adds up its parts
                secs[rec["stage"]] = rec["seconds"] + (0 if rec.get("remake") else secs.get(rec["stage"], 0))
                if rec["stage"] not in stage_names:
                    stage_names.append(rec["stage"])
                stage_cmds.append(re.sub(r"--run-dir \S+", "--run-dir <run>", rec["command"]).replace(
                    f"--seed {r['seed']}", "--seed <s>"))
        commits = sorted({rec.get("commit", "?") for rec in recs})
        dates = sorted(rec["date"] for rec in recs if "date" in rec)
        table.append((r, secs, commits, dates))
    lines.append(code_note(runs))
    if not stage_names:
        lines.append("- The run directories hold no provenance.jsonl (not made by pipeline.sh): commits, machine and "
                     "wall times unknown.")
        return "\n".join(lines)
    lines += ["", "| run directory | seed | code | commit(s) | dates (UTC) | " + " | ".join(stage_names) + " | total |",
              "|---" * (6 + len(stage_names)) + "|"]
    for r, secs, commits, dates in table:
        span = f"{dates[0][:16]} to {dates[-1][:16]}".replace("T", " ") if dates else "?"
        lines.append(f"| {r['dir']} | {r['seed']} | {code_label(r['code'])} | {', '.join(commits)} | {span} | "
                     + " | ".join(fmt_seconds(secs[s]) if s in secs else "-" for s in stage_names)
                     + f" | {fmt_seconds(sum(secs.values()))} |")
    if len(table) > 1:
        med = lambda s: float(np.median([secs[s] for _, secs, _, _ in table if s in secs]))  # noqa: E731
        lines.append("| median over the runs | | | | | " + " | ".join(fmt_seconds(med(s)) for s in stage_names)
                     + f" | {fmt_seconds(float(np.median([sum(secs.values()) for _, secs, _, _ in table])))} |")
    lines += ["", "Wall time of each stage: the sum over its invocations since it was last made again (a resumed "
              "stage counts every part; a stage skipped as up to date adds its few seconds of checks).", ""]
    for m in machines.values():
        lines.append(f"- Machine: {m.get('cores')} cores ({m.get('cpu')}), device {m.get('device')}, {m.get('os')}; "
                     f"Python {m.get('python')}, " + ", ".join(f"{p} {m.get(p)}" for p in provenance.PACKAGES) + ".")
    lines += ["- Chains: " + "; ".join(f"`{c}`" for c in dict.fromkeys(chains)) + ".", "- Stage commands (per run "
              "directory `<run>` and seed `<s>`):", "", "```", *dict.fromkeys(stage_cmds), "```"]
    return "\n".join(lines)


def code_note(runs: list[dict]) -> str:
    """Which seeds ran which code (the `code` column): one line when every run ran one code, else the seeds
    of each code and, for fingerprinted runs, the stages in which the codes differ."""
    by: dict = {}
    for r in runs:
        by.setdefault(json.dumps(r["code"], sort_keys=True), []).append(r)
    if len(by) == 1:
        code = runs[0]["code"]
        return ("- Code: every run made by one stage code, `" + code_label(code) + "` (per stage: "
                + ", ".join(f"{k} {v}" for k, v in sorted(code.items())) + ")." if LEGACY_CODE not in code else
                "- Code: fingerprints not recorded (results of an older version); every run made at commits "
                + code[LEGACY_CODE] + ".")
    parts = []
    for rs in by.values():
        code = rs[0]["code"]
        what = f"commits {code[LEGACY_CODE]}" if LEGACY_CODE in code else f"`{code_label(code)}`"
        parts.append(f"seed{'s' if len(rs) > 1 else ''} {', '.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))}: {what}")
    stages = sorted({k for a in runs for b in runs for k in code_difference(a["code"], b["code"]) if k != LEGACY_CODE})
    return (f"- **Mixed code** (pooled with --mixed-code): the seeds were made by {len(by)} different stage codes"
            + (f", differing in {', '.join(stages)}" if stages else " (fingerprints not recorded: told apart by commit)")
            + "; " + "; ".join(parts) + ".")


def archive_name(run_dir: str) -> str:
    """The folder name of a run's data beside its page: the run directory's name, with its parent's for a
    nested training set (`cheetah-vel-quick-seed1/n20` -> `cheetah-vel-quick-seed1-n20`)."""
    p = Path(run_dir).resolve()
    return f"{p.parent.name}-{p.name}" if p.name[:1] == "n" and p.name[1:].isdigit() else p.name


PCA_FIGURE = "pca_latents.png"  # evaluate.py's Fig. 4 of a MetaWorld run: kept with its data, shown on the page


def pca_source(runs: list[dict]) -> tuple[Path, int] | None:
    """The Fig. 4 PCA to show on a MetaWorld page: that of the lowest seed whose run has one."""
    have = [(Path(r["dir"]) / PCA_FIGURE, r["seed"]) for r in sorted(runs, key=lambda r: r["seed"])
            if (Path(r["dir"]) / PCA_FIGURE).exists()]
    return have[0] if have else None


def page_commit(page: Path, readme: str) -> str:
    """The commit of the code a page is made with: `bash pipeline.sh publish` writes pages, their data and
    the README's copies one after another, so changes there do not make the code `+dirty`."""
    root = Path(provenance.__file__).resolve().parent
    outputs = [p for p in (page.resolve().parent, Path(readme).resolve()) if p.is_relative_to(root)]
    return provenance.git_commit(outputs=tuple(str(p.relative_to(root)) for p in outputs))


def archive_runs(runs: list[dict], data: Path) -> None:
    """Copy what the page is made from (each run's results file(s) read and its provenance.jsonl) into
    `data/<run>/`, and point the runs there: the page can be made again from the repository alone, and
    seeds of later runs can join these. The folder then holds exactly these runs (read first, so that
    runs already kept there survive)."""
    import shutil

    kept = {}
    for r in runs:
        files = kept.setdefault(archive_name(r["dir"]), {})
        for name in (r["file"], provenance.PROVENANCE, PCA_FIGURE):
            if (Path(r["dir"]) / name).exists():
                files[name] = (Path(r["dir"]) / name).read_bytes()
    if data.exists():
        shutil.rmtree(data)
    for name, files in kept.items():
        (data / name).mkdir(parents=True, exist_ok=True)
        for f, content in files.items():
            (data / name / f).write_bytes(content)
    for r in runs:
        r["dir"] = str(data / archive_name(r["dir"]))


def write_page(page: Path, title: str, runs: list[dict], argv: list[str], head: str, body: str,
               figures: dict, commit: str, stages: tuple[str, ...] | None = None) -> None:
    """The result page: title, provenance, headline (between the HEADLINE markers), full tables, figures
    (`figures`: {file name: writer}, written beside the page as <page stem>-<name>)."""
    page.parent.mkdir(parents=True, exist_ok=True)
    links = []
    for name, draw in figures.items():
        fig = page.with_name(f"{page.stem}-{name}")
        artifacts.write_atomic(fig, draw)
        links.append(f"![{name}]({fig.name})")
    text = "\n".join([f"# {title}", "", "<!-- generated by aggregate.py from the run directories below; do not edit -->",
                      "", provenance_block(runs, argv, commit, stages), "", "## Headline", "", HEADLINE[0], head, HEADLINE[1], "",
                      "## Full tables", "", body.rstrip(), "", "## Figures", "", *links, ""])
    artifacts.write_atomic(page, lambda p: p.write_text(text))


def page_headline(text: str) -> str:
    """The headline block of a page (between the HEADLINE markers), or '' when it has none."""
    i, j = text.find(HEADLINE[0]), text.find(HEADLINE[1])
    return text[i + len(HEADLINE[0]) : j].strip("\n") if 0 <= i < j else ""


def readme_blocks(readme: str) -> list[tuple[str, int, int]]:
    """(page path, start, end) of every `<!-- headline: PAGE -->` ... `<!-- /headline -->` block of a README
    text; start and end delimit the block's content."""
    out, pos = [], 0
    while (i := readme.find("<!-- headline: ", pos)) >= 0:
        k = readme.index("-->", i)
        j = readme.index(HEADLINE[1], k)
        out.append((readme[i + len("<!-- headline: ") : k].strip(), k + 3, j))
        pos = j
    return out


def sync_readme(readme: Path, page: Path) -> bool:
    """Copy the page's headline into the README's block that cites the page; False when it has none."""
    if not readme.exists():
        return False
    text, head = readme.read_text(), page_headline(page.read_text())
    for path, i, j in readme_blocks(text):
        if (readme.parent / path).resolve() == page.resolve():
            new = text[:i] + "\n" + head + "\n" + text[j:]
            artifacts.write_atomic(readme, lambda p: p.write_text(new))
            return True
    return False


def check_out(out: str, runs: list[str]) -> None:
    """--out must be a folder of its own: never empty, never a run directory (its results.json would be
    overwritten by the aggregate's)."""
    if not out.strip():
        raise SystemExit("error: --out is empty; name the folder for the aggregated tables")
    o = Path(out).resolve()
    if any(o == Path(r).resolve() for r in runs) or any((o / f).exists() for f in ("stage0", "autoencoder.pt", "provenance.jsonl")):
        raise SystemExit(f"error: --out {out}: a run directory; name a folder of its own for the aggregate")


def main(args: Args) -> None:
    if not args.runs:
        raise SystemExit("error: name at least one run directory")
    if (args.tokens or args.components) and args.tag:
        raise SystemExit("error: --tokens and --components read their results files themselves; give no --tag")
    check_out(args.out, args.runs)
    if args.components:
        return main_components(args)
    groups = group_runs(load_runs(args.runs, args.tag, args.tokens), args.mixed_code)
    out = artifacts.prepare_run_dir(args.out)
    sfx = f"-{args.tag}" if args.tag else ""
    suite = next(iter(groups.values()))[0]["suite"]
    md, sizes_md, ranges = [], "", {}
    if suite == "cheetah-vel":
        primary = PRIMARY_CV if len(groups) == 1 else set()  # the velocity ablation's: its size comparisons
        agg = {str(len(k)): {"train_velocities": list(k), **aggregate_group(rs, primary)} for k, rs in groups.items()}
        sizes = {}
        if len(groups) > 1:  # the velocity ablation: every training set over the same seeds, compared by seed
            check_same_seeds(agg, "training sets", " velocities")
            sizes = size_pairs(agg)
        apply_holm([*sizes.values(), *(d for g in agg.values() for d in g["pairs"].values())])
        if sizes:
            sizes_md = size_table(sizes)
            md += ["## More training velocities, seed by seed", "",
                   "Average test return of each training set minus that of the smallest (the sets are nested, "
                   "one stage 0 per seed). " + family_note([*sizes.values(), *agg[min(agg, key=int)]["pairs"].values()]),
                   "", sizes_md, ""]
        for k, g in agg.items():
            md += [f"## {k} training velocities: {g['n_seeds']} seed(s) ({', '.join(map(str, g['seeds']))})", "",
                   f"Mean return over 200 steps, mean ± 95% Student-t interval over seeds; run directories: "
                   f"{', '.join(g['dirs'])}; training velocities {', '.join(f'{v:g}' for v in g['train_velocities'])}."
                   + stage0_note(g), "", group_table(g, velocities_of(g)), ""]
            ranges[k] = range_table(g)  # a sweep: inside the training range and beyond it ("" otherwise)
            if ranges[k]:
                md += ["Inside and beyond the training velocities (average return over each part of the sweep):", "",
                       ranges[k], ""]
    else:
        primary = PRIMARY_MW if len(groups) == 1 else set()  # the token ablation's: its token comparisons
        agg = {f"L{k}": {"num_tokens": k, "seen": rs[0]["seen"], **aggregate_group(rs, primary)}
               for k, rs in sorted(groups.items())}
        check_same_seeds(agg, "token counts")  # every L over the same seeds, compared by seed
        pairs = token_pairs(agg)
        apply_holm([*pairs.values(), *(d for g in agg.values() for d in g["pairs"].values())])
        if pairs:
            md += ["## HypFormer's success with L tokens against the chain's own L = 8, seed by seed", "",
                   "Success rate % of each L minus that of L = 8 (the same chain up to stage 2). "
                   + family_note([*pairs.values(), *agg["L8"]["pairs"].values()]), "",
                   PAIR_HEAD[0].format(what="L a - L b (goals)"), PAIR_HEAD[1],
                   *(pair_row(k, d) for k, d in pairs.items()), ""]
        for k, g in agg.items():
            md += [f"## HypFormer with L = {g['num_tokens']}: {g['n_seeds']} seed(s) ({', '.join(map(str, g['seeds']))})",
                   "", f"Success rate % (mean ± 95% Student-t interval over seeds); run directories: "
                   f"{', '.join(g['dirs'])}. Top-k rows pick their k on goals never scored, then run them on the whole goal list."
                   + stage0_note(g),
                   "", metaworld_table(g), ""]
    text = "\n".join(md)
    artifacts.write_atomic(out / f"results{sfx}.md", lambda p: p.write_text(text))
    if suite == "cheetah-vel":
        artifacts.write_atomic(out / f"return_vs_velocity{sfx}.png",
                            lambda p: plot_velocity({k: agg[str(len(k))] for k in groups}, p))
        if len(groups) > 1:
            artifacts.write_atomic(out / f"ablation{sfx}.png", lambda p: plot_ablation({k: agg[str(len(k))] for k in groups}, p))
    elif len(groups) > 1:
        artifacts.write_atomic(out / "tokens.png", lambda p: plot_tokens({k: agg[f"L{k}"] for k in groups}, p))
    else:
        artifacts.write_atomic(out / "success.png", lambda p: plot_metaworld(next(iter(agg.values())), p))
    artifacts.write_atomic(out / f"results{sfx}.json", lambda p: p.write_text(json.dumps(agg, indent=1)))
    print(text)
    print(f"aggregate: wrote results{sfx}.md, results{sfx}.json and figures in {out}")
    if args.publish:
        page = Path(args.publish)
        runs = [r for rs in groups.values() for r in rs]
        scale = runs[0]["settings"].get("scale", "")
        title = args.title or (f"{'Cheetah-Vel' if suite == 'cheetah-vel' else 'MetaWorld'} at {scale} scale"
                               + (f" ({args.tag})" if args.tag else "") + (": HypFormer tokens (Fig. 5)" if args.tokens else ""))
        figures = {}
        if suite == "cheetah-vel":
            figures[f"return_vs_velocity{sfx}.png"] = lambda p: plot_velocity({k: agg[str(len(k))] for k in groups}, p)
            if len(groups) > 1:
                figures[f"ablation{sfx}.png"] = lambda p: plot_ablation({k: agg[str(len(k))] for k in groups}, p)
        elif len(groups) > 1:
            figures["tokens.png"] = lambda p: plot_tokens({k: agg[f"L{k}"] for k in groups}, p)
        else:
            figures["success.png"] = lambda p: plot_metaworld(next(iter(agg.values())), p)
        data, commit = page.parent / "data" / page.stem, page_commit(page, args.readme)
        archive_runs(runs, data)
        pca = pca_source(runs) if suite == "metaworld" and not args.tokens else None
        if pca:
            figures[PCA_FIGURE] = lambda p, src=pca[0]: p.write_bytes(src.read_bytes())
            text += (f"\n\nFig. 4 ({page.stem}-{PCA_FIGURE} below), seed {pca[1]}: per seen task, the 2-D PCA of the "
                     "autoencoder latents of all the task's stage-0 checkpoints (blue) against the generated policies' "
                     "latents (red; HypLatent left, HypFormer right), the axes fit on both sets of the panel.")
        text += (f"\n\nThe results file and provenance.jsonl of every run are kept in [data/{page.stem}/](data/{page.stem}/); "
                 f"`python aggregate.py {data}/* {' '.join(f'--{k}' if v is True else f'--{k} {v}' for k, v in (('tag', args.tag), ('tokens', args.tokens), ('mixed-code', args.mixed_code)) if v)}"
                 + (f' --title "{args.title}"' if args.title else "") + " "
                 f"--publish {page}` makes this page again from them, and more seeds can join them.")
        # a page shows the stages its results come from: the chain's, and for the velocity ablation and the dense
        # sweep the stages `pipeline.sh ablation` adds (not those of other studies run in the same directories)
        sweep = args.tag == "sweep" or (suite == "cheetah-vel" and len(groups) > 1)
        stages = provenance.CHAIN_STAGES + provenance.ABLATION_STAGES if sweep else \
            provenance.CHAIN_STAGES if not args.tag and not args.tokens else None
        head = headline(agg, suite) + ("\n\n" + sizes_md if sizes_md else "")  # the ablation: sizes compared
        head += "".join("\n\n" + t for t in ranges.values() if t)  # a sweep: inside and beyond the training velocities
        write_page(page, title, runs, sys.argv[1:], head, text, figures, commit,
                   stages)
        synced = sync_readme(Path(args.readme), page)
        print(f"aggregate: wrote {page}" + (f"; copied its headline into {args.readme}" if synced else ""))


def main_components(args: Args) -> None:
    by = load_components(args.runs, args.mixed_code)
    if by[""][0]["suite"] != "cheetah-vel":
        raise SystemExit("error: --components is the Cheetah-Vel component ablation; these are MetaWorld runs")
    g = aggregate_components(by)
    out = artifacts.prepare_run_dir(args.out)
    text = "\n".join([f"## Stage 2's loss, part by part: {g['n_seeds']} seed(s) ({', '.join(map(str, g['seeds']))})", "",
                      "Mean return over 200 steps at the test velocities; each seed's variants share its stages 0-1, "
                      "so differences are paired by seed. HypFormer is stage 3 trained on that variant's generator. "
                      f"Run directories: {', '.join(g['dirs'])}.", "", components_table(g), ""])
    artifacts.write_atomic(out / "results-components.md", lambda p: p.write_text(text))
    artifacts.write_atomic(out / "results-components.json", lambda p: p.write_text(json.dumps(g, indent=1)))
    artifacts.write_atomic(out / "components.png", lambda p: plot_components(g, p))
    print(text)
    print(f"aggregate: wrote results-components.md, results-components.json and components.png in {out}")
    if args.publish:
        page = Path(args.publish)
        runs = [r for rs in by.values() for r in rs]
        data, commit = page.parent / "data" / page.stem, page_commit(page, args.readme)
        archive_runs(runs, data)
        text += (f"\n\nThe results files and provenance.jsonl of every run are kept in [data/{page.stem}/](data/{page.stem}/); "
                 f"`python aggregate.py {data}/* --components{' --mixed-code' if args.mixed_code else ''} --publish {page}` "
                 "makes this page again from them.")
        title = args.title or "Cheetah-Vel: which part of stage 2's loss does the work"
        write_page(page, title, by[""], sys.argv[1:], components_table(g), text,
                   {"components.png": lambda p: plot_components(g, p)}, commit)
        synced = sync_readme(Path(args.readme), page)
        print(f"aggregate: wrote {page}" + (f"; copied its headline into {args.readme}" if synced else ""))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
