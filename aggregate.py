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
  seed, then the same interval, the paired t-test's p and Holm's adjusted p); Cheetah-Vel's memorisation
  distances, averaged over seeds;
- Cheetah-Vel: `return_vs_velocity[-<tag>].png`, the per-velocity means with their intervals as error bars,
  and with groups of several sizes (the paper's 10/20/25/35 training velocities) `ablation.png`, the
  average test return against the number of training velocities;
- MetaWorld: `success.png`, success per task and on average for the generators, the parent and the tasks'
  own checkpoints; with several token counts `tokens.png`, seen and unseen success against L (Fig. 5).

A difference is called a win or a loss only where its paired t-test's p, Holm-adjusted over its family
(the primary comparisons of DESIGN.md section 12, or the page's exploratory rest), is below 0.05, and never
from fewer than 3 seeds.

The runs are read and checked in pooling.py, the tables written in tables.py, the figures drawn in figures.py;
with `--publish` the same tables and figures also make a result page under results/ (publish.py).

    python aggregate.py runs/cheetah-vel-quick-seed1 runs/cheetah-vel-quick-seed2 runs/cheetah-vel-quick-seed3 \
        --out runs/cheetah-vel-quick-aggregate
    python aggregate.py runs/cheetah-vel-quick-seed*/ runs/cheetah-vel-quick-seed*/n*/ --out runs/cv-ablation
    python aggregate.py runs/cheetah-vel-quick-seed*/ --tag sweep --out runs/cv-sweep   # the dense sweep
    python aggregate.py runs/metaworld-quick-seed* --out runs/metaworld-quick-aggregate
    python aggregate.py runs/metaworld-quick-seed* --tokens --out runs/mw-tokens  # Fig. 5
    python aggregate.py runs/cheetah-vel-quick-seed* --components --out runs/cv-components  # which loss does the work
    python aggregate.py runs/cheetah-vel-smoke-seed* --fork hinge --out runs/fork-hinge  # pipeline.sh fork: vs default
    python aggregate.py runs/cheetah-vel-quick-seed* runs/cheetah-vel-quick-independent-seed* --regimes \
        --out runs/regimes --publish results/regimes.md   # experts from one parent against independent ones
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tyro

import artifacts
import provenance
from figures import plot_ablation, plot_components, plot_metaworld, plot_regimes, plot_tokens, plot_velocity
from methods import LABELS, METHODS, MW_METHODS, task_name
from pooling import check_comparable, check_same_seeds, code_difference, differences, group_runs, load_runs
from publish import ABLATION_STAGES, CHAIN_STAGES, PCA_FIGURE, archive_runs, page_commit, pca_source, sync_readme, write_page
from publish import archive_name  # noqa: F401 - pipeline.sh's publish names the kept runs with aggregate.archive_name
from tables import (PAIR_HEAD, components_table, family_note, fmt, fmt_p, group_table, headline, metaworld_table, pair_label,
                    pair_row, range_table, size_table, stage0_note, velocities_of)

# (a, b): the differences a - b reported with intervals
PAIRS = [("hyplatent", "interpolated-expert"), ("hypformer", "hyplatent"), ("hyplatent", "maa"), ("hypformer", "maa"),
         ("maa", "interpolated-expert"), ("decoded-expert", "nearest-expert"),
         ("hyplatent", "nearest-expert"), ("hypformer", "interpolated-expert"), ("oracle-expert", "hyplatent"),
         ("oracle-expert", "hypformer"), ("oracle-expert", "interpolated-expert"),
         # parameters vs inputs: the generators against the conditioned-policy baselines on the same data
         *((a, b) for b in ("mt-bc", "prompt-dt") for a in ("hyplatent", "hypformer", "maa")),
         ("mt-bc", "interpolated-expert"), ("prompt-dt", "interpolated-expert"),
         # offline meta-RL: MACAW (adapted on a test-task episode) against the generators and the conditioned policies
         ("hyplatent", "macaw"), ("hypformer", "macaw"), ("maa", "macaw"), ("macaw", "mt-bc"), ("macaw", "prompt-dt"),
         ("macaw", "macaw-unadapted")]
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
              for k in (5, 10)),
            # parameters vs inputs: the generators against the conditioned-policy baselines, which against the parent
            *((a, b, split) for split in ("seen", "unseen") for b in ("mt-bc", "prompt-dt")
              for a in ("hyplatent", "hypformer", "maa")),
            *((b, "parent", split) for split in ("seen", "unseen") for b in ("mt-bc", "prompt-dt")),
            # the online multi-task learner: CARE against the generators, the parent and MT-BC
            *((a, b, split) for split in ("seen", "unseen") for a, b in (("hyplatent", "care"), ("hypformer", "care"),
                                                                          ("maa", "care"), ("care", "parent"),
                                                                          ("care", "mt-bc")))]
# The primary comparisons of each suite (DESIGN.md section 12, named before the runs): Holm's correction runs
# over them alone, which keeps their power; every other difference on a page is one exploratory family,
# corrected over its own size. A comparison absent from a page (a system not run) leaves the family.
PRIMARY_CV = {"hyplatent - interpolated-expert", "hyplatent - maa", "hypformer - hyplatent",
              "hyplatent - mt-bc", "hyplatent - prompt-dt", "hyplatent - macaw"}
PRIMARY_MW = {f"{a} - {b} ({split})" for split in ("seen", "unseen")
              for a, b in (("hyplatent", "parent"), ("hyplatent", "maa"), ("hypformer", "hyplatent"),
                           ("hyplatent", "mt-bc"), ("hyplatent", "prompt-dt"), ("hyplatent", "care"))}
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
    fork: str = ""
    """Cheetah-Vel: a fork (`pipeline.sh fork`), results-<fork>.json against the same runs' default results.json,
    paired by seed"""
    publish: Optional[str] = None
    """also write a result page (e.g. results/cheetah-vel.md): provenance block, headline, full tables, and its
    figures beside it as <page>-*.png"""
    title: str = ""
    """the page's title (default: from the suite, scale and tag)"""
    readme: str = "README.md"
    """with --publish: the README whose `<!-- headline: <page> -->` block is replaced by the page's headline"""
    regimes: bool = False
    """the regimes page: runs of both stage-0 regimes (experts from one parent, independent experts), each
    regime's table and paired differences, and each method's regime-to-regime difference (Welch)"""
    mixed_code: bool = False
    """pool seeds made by different stage code (refused otherwise); the page then lists which seeds ran which code"""


# Intervals, paired tests and Holm's correction over seeds

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
    n, m, h = d.get("n", len(d["per_seed"])), d["mean"], d["ci95"]
    if n < 3:
        return f"no call ({n} seed{'s' if n > 1 else ''})"
    if np.isnan(d["p"]):  # every seed gave the same difference (up to rounding, `paired_p`): no test
        return "the same in every seed (not varied by the seeds): no call"
    if not d["p_holm"] < ALPHA:
        return "no call"
    return f"{d['a']} better" if m > 0 else f"{d['b']} better"


# From the runs of a group to its cells and paired differences

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
    # distinct stage 0s: the parent, or (independent experts, no parent) each run its own; 1 = one for every run
    stage0s = len({r["made_from"].get("parent.pt") or r["dir"] for r in rs})
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


def sweep_ranges(g: dict) -> dict:
    """A sweep beyond the training velocities: per method, its average over the evaluated velocities up to the
    last training velocity (`inside`) and over those above it (`beyond`), per seed, with mean and 95% interval
    (a method without a score at every velocity left out): {"top": the last training velocity, "inside": [v],
    "beyond": [v], "cells": {method: [inside, beyond]}}; {} when no velocity lies above."""
    vels, top = velocities_of(g), max(g["train_velocities"])
    parts = {"inside": [v for v in vels if v <= top], "beyond": [v for v in vels if v > top]}
    if not parts["beyond"]:
        return {}
    cells = {}
    for m in METHODS:
        per = [[g["cells"].get(f"{m}|{task_name('cheetah-vel', v)}") for v in vs] for vs in parts.values()]
        if not any(None in p for p in per):
            xs = [np.mean([c["seeds"] for c in p], axis=0) for p in per]  # per seed: the mean over these velocities
            cells[m] = [{"seeds": x, **dict(zip(("mean", "ci95"), mean_ci(x)))} for x in xs]
    return {"top": top, **parts, "cells": cells}


# The command: tables and figures into --out, and with --publish the result page

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
    if args.components or args.fork:
        return main_components(args)
    if args.regimes:
        return main_regimes(args)
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
            ranges[k] = range_table(sweep_ranges(g))  # "" unless a sweep goes beyond the training range
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
    draw = {}  # {file name: figure}: each drawn once, into --out; a page copies the files
    if suite == "cheetah-vel":
        draw[f"return_vs_velocity{sfx}.png"] = lambda p: plot_velocity([(velocities_of(g), g) for g in agg.values()], p)
        if len(groups) > 1:
            draw[f"ablation{sfx}.png"] = lambda p: plot_ablation({k: agg[str(len(k))] for k in groups}, p)
    elif len(groups) > 1:
        draw["tokens.png"] = lambda p: plot_tokens({k: agg[f"L{k}"] for k in groups}, p)
    else:
        draw["success.png"] = lambda p: plot_metaworld(next(iter(agg.values())), p)
    for name, figure in draw.items():
        artifacts.write_atomic(out / name, figure)
    artifacts.write_atomic(out / f"results{sfx}.json", lambda p: p.write_text(json.dumps(agg, indent=1)))
    print(text)
    print(f"aggregate: wrote results{sfx}.md, results{sfx}.json and figures in {out}")
    if args.publish:
        page = Path(args.publish)
        runs = [r for rs in groups.values() for r in rs]
        scale = runs[0]["settings"].get("scale", "")
        title = args.title or (f"{'Cheetah-Vel' if suite == 'cheetah-vel' else 'MetaWorld'} at {scale} scale"
                               + (f" ({args.tag})" if args.tag else "") + (": HypFormer tokens (Fig. 5)" if args.tokens else ""))
        figures = {name: out / name for name in draw}
        data, commit = page.parent / "data" / page.stem, page_commit(page, args.readme)
        archive_runs(runs, data)
        pca = pca_source(runs) if suite == "metaworld" and not args.tokens else None
        if pca:
            figures[PCA_FIGURE] = pca[0]
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
        stages = CHAIN_STAGES + ABLATION_STAGES if sweep else \
            CHAIN_STAGES if not args.tag and not args.tokens else None
        head = headline(agg, suite) + ("\n\n" + sizes_md if sizes_md else "")  # the ablation: sizes compared
        head += "".join("\n\n" + t for t in ranges.values() if t)  # a sweep: inside and beyond the training velocities
        write_page(page, title, runs, sys.argv[1:], head, text, figures, commit,
                   stages)
        synced = sync_readme(Path(args.readme), page)
        print(f"aggregate: wrote {page}" + (f"; copied its headline into {args.readme}" if synced else ""))


# The component ablation (--components; pipeline.sh components): which part of stage 2's loss does the work

# each stage-2 variant: the tag of its results, its row name and its name under the figure's bars
COMPONENTS = [("", "(a) Eqs. 3-5 + paired term (the chain's default)", "(a) default"),
              ("paired-only", "(b) paired term alone, no discriminator", "(b) paired only"),
              ("paper-losses", "(c) the paper's losses alone (paired weight 0)", "(c) paper losses"),
              ("regressor", "(d) deterministic regressor (no noise, no discriminator)", "(d) regressor")]


def fork_variants(tag: str) -> list[tuple[str, str, str]]:
    """`pipeline.sh fork`: the default and one fork, as the component ablation's variants."""
    return [("", "(a) the default chain", "(a) default"), (tag, f"(b) the fork `{tag}`", f"(b) {tag}")]


def load_components(paths: list[str], mixed_code: bool = False, variants=COMPONENTS) -> dict[str, list[dict]]:
    """{variant tag: runs}, every variant's evaluations checked like seeds, and paired by seed: each seed's
    variants share its stage 0-1 (one autoencoder.pt), so their differences are paired."""
    by = {}
    for tag, *_ in variants:
        groups = group_runs(load_runs(paths, tag), mixed_code)
        if len(groups) > 1:
            raise SystemExit("error: --components: the run directories were trained on different velocities")
        by[tag] = next(iter(groups.values()))
    check_same_seeds({tag or "default": {"seeds": [r["seed"] for r in rs]} for tag, rs in by.items()}, "loss variants")
    # a fork may change stage 2's and 3's settings and code (the component variants: their settings only)
    check_comparable(by, lambda tag: f"variant {tag or 'default'}", ("hyplatent: ", "hypformer: "),
                     ("parent.pt", "autoencoder.pt"), ("hyplatent", "hypformer") if variants is not COMPONENTS else (),
                     mixed_code)
    return by


def aggregate_components(by: dict[str, list[dict]], variants=COMPONENTS, primary=("hyplatent",)) -> dict:
    """Average test return of HypLatent and HypFormer per variant (and the interpolated expert), per seed,
    with intervals; the paired differences (a) - (b|c|d) (primary for the methods in `primary`) and each row
    - the interpolated expert."""
    def per_seed(rs, method):
        return [next(row["score"] for row in r["rows"] if row["method"] == method and row["task"] == "average")
                for r in rs]

    rows = {f"{m}|{tag}": per_seed(rs, m) for tag, rs in by.items() for m in ("hyplatent", "hypformer")}
    rows["interpolated-expert|"] = per_seed(by[""], "interpolated-expert")
    cells = {k: {"seeds": v, **dict(zip(("mean", "ci95"), mean_ci(v)))} for k, v in rows.items()}
    pairs = {}
    for m in ("hyplatent", "hypformer"):
        todo = [(f"{m}|", f"{m}|{tag}") for tag, *_ in variants[1:]]
        todo += [(f"{m}|{tag}", "interpolated-expert|") for tag, *_ in variants]
        for a, b in todo:
            la, lb = component_label(a, variants), component_label(b, variants)
            # primary: the default against each variant (components: HypLatent's, what stage 2's loss owes to each part)
            fam = "primary" if m in primary and a == f"{m}|" and b != "interpolated-expert|" else "exploratory"
            pairs[f"{la} - {lb}"] = paired(np.array(rows[a]) - np.array(rows[b]), la, lb, fam)
    apply_holm(list(pairs.values()))
    return {"n_seeds": len(by[""]), "seeds": [r["seed"] for r in by[""]], "dirs": [r["dir"] for r in by[""]],
            "cells": cells, "pairs": pairs, "shared_stage0": False, "stage0s": len(by[""])}


def component_label(key: str, variants=COMPONENTS) -> str:
    """`hypformer|paired-only` -> `HypFormer (b)`; `interpolated-expert|` -> `interpolated expert`."""
    m, tag = key.split("|")
    if m == "interpolated-expert":
        return "interpolated expert"
    return f"{ {'hyplatent': 'HypLatent', 'hypformer': 'HypFormer'}[m]} ({'abcd'[[t for t, *_ in variants].index(tag)]})"


def main_components(args: Args) -> None:
    """The component ablation, or (--fork) one fork against the default: the same table, two variants."""
    if args.components and args.fork:
        raise SystemExit("error: give --components or --fork, not both")
    variants = fork_variants(args.fork) if args.fork else COMPONENTS
    by = load_components(args.runs, args.mixed_code, variants)
    if by[""][0]["suite"] != "cheetah-vel":
        raise SystemExit("error: --components and --fork compare Cheetah-Vel runs; these are MetaWorld runs")
    g = aggregate_components(by, variants, ("hyplatent", "hypformer") if args.fork else ("hyplatent",))
    out = artifacts.prepare_run_dir(args.out)
    if args.fork:
        text = "\n".join([f"## The fork `{args.fork}` against the default: {g['n_seeds']} seed(s) "
                          f"({', '.join(map(str, g['seeds']))})", "",
                          "Mean return over 200 steps at the test velocities; each seed's fork shares its stages 0-1 "
                          "with its default chain, so differences are paired by seed: (a) - (b) is default - fork. "
                          f"Run directories: {', '.join(g['dirs'])}.", "", components_table(g, variants), ""])
        artifacts.write_atomic(out / f"results-{args.fork}.md", lambda p: p.write_text(text))
        artifacts.write_atomic(out / f"results-{args.fork}.json", lambda p: p.write_text(json.dumps(g, indent=1)))
        print(text)
        print(f"aggregate: wrote results-{args.fork}.md and results-{args.fork}.json in {out}")
        return
    text = "\n".join([f"## Stage 2's loss, part by part: {g['n_seeds']} seed(s) ({', '.join(map(str, g['seeds']))})", "",
                      "Mean return over 200 steps at the test velocities; each seed's variants share its stages 0-1, "
                      "so differences are paired by seed. HypFormer is stage 3 trained on that variant's generator. "
                      f"Run directories: {', '.join(g['dirs'])}.", "", components_table(g, variants), ""])
    artifacts.write_atomic(out / "results-components.md", lambda p: p.write_text(text))
    artifacts.write_atomic(out / "results-components.json", lambda p: p.write_text(json.dumps(g, indent=1)))
    artifacts.write_atomic(out / "components.png", lambda p: plot_components(g, COMPONENTS, p))
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
        write_page(page, title, by[""], sys.argv[1:], components_table(g, variants), text,
                   {"components.png": out / "components.png"}, commit)
        synced = sync_readme(Path(args.readme), page)
        print(f"aggregate: wrote {page}" + (f"; copied its headline into {args.readme}" if synced else ""))


# The regimes page (--regimes): experts from one parent against experts trained independently (DESIGN.md
# sections 4 and 12)

REGIMES = ("one-parent", "independent")
# within each regime (paired by seed): the primary comparisons, Holm over both regimes' together
PRIMARY_WITHIN = {"hyplatent - interpolated-expert", "hyplatent - mt-bc"}


def regime_of(r: dict) -> str:
    """The stage-0 regime a run's experts come from (its shards' `experts` setting; older runs: one parent)."""
    return r["upstream"]["stage0"].get("experts", "one-parent")


def welch(x, y, a: str, b: str, family: str) -> dict:
    """mean(x) - mean(y) over two sets of seeds that share nothing (no pairing): Welch's interval and two-sided
    p (Welch-Satterthwaite df); no test with fewer than 3 seeds on either side. `apply_holm` adds the call."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    m, n = float(x.mean() - y.mean()), min(len(x), len(y))
    out = {"per_seed": [], "n": n, "n_a": len(x), "n_b": len(y), "mean": m, "ci95": float("nan"), "df": float("nan"),
           "p": float("nan"), "family": family, "a": a, "b": b}
    if n < 2:
        return out
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = np.sqrt(va + vb)
    if se <= 1e-12:
        return out
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    out.update(ci95=float(t975(df) * se), df=float(df))
    if n >= 3:
        out["p"] = float(2 * stats.t.sf(abs(m / se), df))
    return out


def regime_pairs(agg: dict, suite: str) -> dict:
    """independent - one-parent, per method (and per within-regime difference of PRIMARY_WITHIN), on the
    averages: Welch's interval over the two regimes' seeds. Cheetah-Vel's HypLatent - interpolated expert is
    the page's across-regime primary comparison (a family of one); every other row is exploratory."""
    one, ind = agg["one-parent"], agg["independent"]
    tasks = ["average"] if suite == "cheetah-vel" else ["average-seen", "average-unseen"]
    out = {}
    for t in tasks:
        sfx = "" if t == "average" else f" ({t.removeprefix('average-')})"
        for m in (METHODS if suite == "cheetah-vel" else MW_METHODS):
            a, b = ind["cells"].get(f"{m}|{t}"), one["cells"].get(f"{m}|{t}")
            if a and b:
                out[f"{m}{sfx}"] = welch(a["seeds"], b["seeds"], "independent", "one parent", "exploratory")
        for k in sorted(PRIMARY_WITHIN):
            a, b = ind["pairs"].get(k + sfx), one["pairs"].get(k + sfx)
            if a and b:
                fam = "primary (across regimes)" if suite == "cheetah-vel" and k == "hyplatent - interpolated-expert" \
                    else "exploratory"
                out[f"{k}{sfx}"] = welch(a["per_seed"], b["per_seed"], "independent", "one parent", fam)
    return out


def regimes_table(pairs: dict) -> list[str]:
    """The regime-to-regime rows: independent - one parent with Welch's interval, primary first."""
    rows = sorted(pairs.items(), key=lambda kv: not kv[1]["family"].startswith("primary"))
    lines = ["| method or difference | family | independent - one parent, mean ± 95% Welch CI | seeds | df | p | Holm p | call |",
             "|---|---|---|---|---|---|---|---|"]
    for k, d in rows:
        label = pair_label(k) if " - " in k else LABELS.get(k.split(" (")[0], k) + (f" ({k.split(' (')[1]}" if " (" in k else "")
        lines.append(f"| {label} | {d['family']} | {fmt(d['mean'], d['ci95'])} | {d['n_a']} + {d['n_b']} | "
                     f"{d['df']:.1f} | {fmt_p(d['p'])} | {fmt_p(d['p_holm'])} | {d['verdict']} |")
    return lines


def main_regimes(args: Args) -> None:
    """The regimes page: both regimes' runs, each pooled like seeds of one table (one code, one setting but the
    regime); within each regime its paired differences; across them, Welch's interval per method."""
    runs = load_runs(args.runs, args.tag)
    by = {reg: [r for r in runs if regime_of(r) == reg] for reg in REGIMES}
    if missing := [reg for reg, rs in by.items() if not rs]:
        raise SystemExit(f"error: --regimes: no run of the {missing[0]} regime among these run directories")
    groups = {}
    for reg, rs in by.items():
        g = group_runs(rs, args.mixed_code)
        if len(g) > 1:
            raise SystemExit(f"error: --regimes: the {reg} runs were trained on different velocities or token counts")
        groups[reg] = next(iter(g.values()))
    a, b = groups["one-parent"][0], groups["independent"][0]
    if diff := differences(a, b, upstream_free=("stage0: experts", "stage0: parent_")):
        raise SystemExit(f"error: {b['dir']} and {a['dir']}: made or evaluated with other settings ({', '.join(diff[:6])}); "
                         "the two regimes must differ in stage 0's experts alone")
    if (diff := code_difference(a["code"], b["code"])) and not args.mixed_code:
        raise SystemExit(f"error: {b['dir']} and {a['dir']}: made by other code ({', '.join(diff[:4])}); the regimes "
                         "page compares runs of one code (--mixed-code compares them anyway)")
    suite = a["suite"]
    primary = PRIMARY_WITHIN if suite == "cheetah-vel" else set()
    agg = {reg: {**({"train_velocities": list(a["train_velocities"])} if suite == "cheetah-vel" else
                    {"num_tokens": a["num_tokens"], "seen": a["seen"]}), **aggregate_group(rs, primary)}
           for reg, rs in groups.items()}
    across = regime_pairs(agg, suite)
    apply_holm([*across.values(), *(d for g in agg.values() for d in g["pairs"].values())])
    out = artifacts.prepare_run_dir(args.out)
    unit = "Mean return over 200 steps" if suite == "cheetah-vel" else "Success rate %"
    md = ["## Each method: independent experts against experts from one parent", "",
          f"{unit} on the averages; the regimes share seed numbers but not their stage 0, so nothing pairs them: "
          "Welch's interval and t-test over the two sets of seeds. Rows `a - b` compare the within-regime paired "
          "difference across the regimes. " + family_note(list(across.values()), "Welch t-test"), "", *regimes_table(across), ""]
    for reg, g in agg.items():
        md += [f"## {'Experts from one parent' if reg == 'one-parent' else 'Independent experts (the paper data)'}: "
               f"{g['n_seeds']} seed(s) ({', '.join(map(str, g['seeds']))})", "",
               f"{unit} (mean ± 95% Student-t interval over seeds); run directories: {', '.join(g['dirs'])}."
               + stage0_note(g), "", group_table(g, velocities_of(g)) if suite == "cheetah-vel" else metaworld_table(g), ""]
    text = "\n".join(md)
    res = {"regimes": agg, "across": across}
    artifacts.write_atomic(out / "results-regimes.md", lambda p: p.write_text(text))
    artifacts.write_atomic(out / "results-regimes.json", lambda p: p.write_text(json.dumps(res, indent=1)))
    artifacts.write_atomic(out / "regimes.png", lambda p: plot_regimes(agg, suite, p))
    print(text)
    print(f"aggregate: wrote results-regimes.md, results-regimes.json and regimes.png in {out}")
    if args.publish:
        page = Path(args.publish)
        runs = [r for rs in groups.values() for r in rs]
        data, commit = page.parent / "data" / page.stem, page_commit(page, args.readme)
        archive_runs(runs, data)
        text += (f"\n\nThe results file and provenance.jsonl of every run are kept in [data/{page.stem}/](data/{page.stem}/); "
                 f"`python aggregate.py {data}/* --regimes{' --mixed-code' if args.mixed_code else ''} --publish {page}` "
                 "makes this page again from them.")
        title = args.title or (f"{'Cheetah-Vel' if suite == 'cheetah-vel' else 'MetaWorld'}: experts from one parent "
                               "against independent experts")
        head = "\n\n".join([*(f"**{reg}**\n\n" + headline({reg: g}, suite) for reg, g in agg.items()),
                             "**independent - one parent**\n\n" + "\n".join(regimes_table(across))])
        write_page(page, title, runs, sys.argv[1:], head, text, {"regimes.png": out / "regimes.png"}, commit,
                   CHAIN_STAGES)
        synced = sync_readme(Path(args.readme), page)
        print(f"aggregate: wrote {page}" + (f"; copied its headline into {args.readme}" if synced else ""))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
