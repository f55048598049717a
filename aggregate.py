"""Aggregate the evaluations of several seeds into tables with confidence intervals (DESIGN.md section 12):
Cheetah-Vel's Table IV, the velocity ablation and the sweep; MetaWorld's Tables I-III and the token
ablation (Fig. 5).

One run directory holds one seed's evaluation (Cheetah-Vel: its whole chain, stage 0 included, since SAC's
variance is part of the result; MetaWorld: stages 1-3 on a shared stage 0, see pipeline.sh mw-seeds). This
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
- MetaWorld with several token counts: `tokens.png`, seen and unseen success against L (Fig. 5).

A difference is called a win or a loss only where its interval excludes zero.

    python aggregate.py runs/cheetah-vel-quick-seed1 runs/cheetah-vel-quick-seed2 runs/cheetah-vel-quick-seed3 \
        --out runs/cheetah-vel-quick-aggregate
    python aggregate.py runs/cheetah-vel-quick-seed*/ runs/cheetah-vel-quick-seed*/n*/ --out runs/cv-ablation
    python aggregate.py runs/cheetah-vel-quick-seed*/ --tag sweep --out runs/cv-sweep   # the dense sweep
    python aggregate.py runs/metaworld-quick runs/metaworld-quick-seed2 --out runs/metaworld-quick-aggregate
    python aggregate.py runs/metaworld-quick runs/metaworld-quick-seed2 --tokens --out runs/mw-tokens  # Fig. 5
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

import common
from evaluate import METHODS
from evaluate_metaworld import MW_METHODS, MW_ROWS

# 0.975 quantiles of Student's t by degrees of freedom (a df between two entries takes the smaller df's,
# which is the larger, conservative value)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
# (a, b): the differences a - b reported with intervals
PAIRS = [("hyplatent", "interpolated-expert"), ("hypformer", "hyplatent"), ("decoded-expert", "nearest-expert"),
         ("hyplatent", "nearest-expert"), ("hypformer", "interpolated-expert"), ("oracle-expert", "hyplatent"),
         ("oracle-expert", "hypformer"), ("oracle-expert", "interpolated-expert")]
# MetaWorld: (a, b, split) differences of the split's average success
# (the seen-task chain: data vs parent, autoencoder, generation, HypFormer; unseen: vs parent and the oracle)
MW_PAIRS = [("hyplatent", "parent", "seen"), ("hypformer", "parent", "seen"), ("checkpoints", "parent", "seen"),
            ("decoded-checkpoints", "checkpoints", "seen"), ("hyplatent", "decoded-checkpoints", "seen"),
            ("hypformer", "hyplatent", "seen"), ("hyplatent", "parent", "unseen"), ("hypformer", "parent", "unseen"),
            ("hypformer", "hyplatent", "unseen"), ("checkpoints", "hyplatent", "unseen")]
NAMES = {"hyplatent": "HypLatent (AMT-Hyp w/o HypFormer)", "hypformer": "HypLatent + HypFormer (AMT-Hyp)",
         "nearest-expert": "nearest expert", "decoded-expert": "decoded nearest expert",
         "interpolated-expert": "interpolated expert", "parent": "parent",
         "oracle-expert": "oracle expert (trained at v*: upper bound)"}


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


def mean_ci(x) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval over seeds (nan with fewer than 2)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else float("nan"), float("nan")
    df = len(x) - 1
    t = T975[max(k for k in T975 if k <= df)]
    return float(x.mean()), float(t * x.std(ddof=1) / np.sqrt(len(x)))


def fmt(m: float, h: float) -> str:
    return f"{m:.2f}" if np.isnan(h) else f"{m:.2f} ± {h:.2f}"


def verdict(m: float, h: float, a: str, b: str) -> str:
    """Higher return is better: a wins where the interval of a - b lies above 0, loses where below."""
    if np.isnan(h):
        return "one seed: no call"
    if h == 0:  # every seed gave the same difference: rows no seed changes (MetaWorld's shared stage 0)
        return "the same in every seed (not varied by the seeds): no call"
    return "no difference shown (interval contains 0)" if abs(m) <= h else (f"{a} better" if m > 0 else f"{b} better")


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
            if "train_velocities" not in res and "num_tokens" not in res:
                raise SystemExit(f"error: {f}: not an evaluation of this version (no train_velocities or num_tokens)")
            res["dir"] = str(p)
            runs.append(res)
    if not runs:
        raise SystemExit(f"error: no results.json or results-L<L>.json in {', '.join(paths)}")
    suites = sorted({r["suite"] for r in runs})
    if len(suites) > 1:
        raise SystemExit(f"error: the run directories hold evaluations of several suites ({', '.join(suites)})")
    return runs


def group_key(r: dict):
    """Cheetah-Vel: the training velocities; MetaWorld: HypFormer's token count L."""
    return tuple(r["train_velocities"]) if r["suite"] == "cheetah-vel" else r["num_tokens"]


def group_runs(runs: list[dict]) -> dict:
    """{key: runs}; within a group the settings must agree in everything but the seed (and, for the token
    ablation, the file names and baselines) and the seeds must differ (else one line)."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(group_key(r), []).append(r)
    free = {"seed", "tag", "hypformer", "baselines"}  # a results-L<L>.json and a results.json may share a group
    for key, rs in groups.items():
        ref = {k: v for k, v in rs[0]["settings"].items() if k not in free}
        for r in rs[1:]:
            diff = sorted(k for k in set(ref) | set(r["settings"]) if k not in free and ref.get(k) != r["settings"].get(k))
            if diff:
                raise SystemExit(f"error: {r['dir']} and {rs[0]['dir']}: evaluated with other settings ({', '.join(diff)})")
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) < len(seeds):
            what = f"{len(key)} training velocities" if isinstance(key, tuple) else f"L = {key}"
            raise SystemExit(f"error: two evaluations of seed {max(seeds, key=seeds.count)} for {what}: "
                             f"{', '.join(r['dir'] for r in rs)}")
    return dict(sorted(groups.items(), key=lambda kv: len(kv[0]) if isinstance(kv[0], tuple) else kv[0]))


def aggregate_group(rs: list[dict]) -> dict:
    """Per method and task (velocity names and `average`): the seeds' scores, mean and interval; paired
    differences of the averages; memorisation distances averaged over seeds."""
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
            m, h = mean_ci(d)
            key = f"{a} - {b}" if t == "average" else f"{a} - {b} ({t.removeprefix('average-')})"
            pairs[key] = {"per_seed": d.tolist(), "mean": m, "ci95": h, "verdict": verdict(m, h, a, b)}
    mem = {}
    for r in rs:
        for k, v in (r.get("memorisation") or {}).items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    mem.setdefault(f"{k}: {kk}", []).append(vv)
            else:
                mem.setdefault(k, []).append(v)
    return {"n_seeds": n, "seeds": [r["seed"] for r in rs], "dirs": [r["dir"] for r in rs], "cells": cells,
            "pairs": pairs, "memorisation": {k: float(np.mean(v)) for k, v in mem.items()}}


def group_table(g: dict, vels: list[float]) -> str:
    tasks = [common.task_name("cheetah-vel", v) for v in vels] + ["average"]
    methods = [m for m in METHODS if any(f"{m}|{t}" in g["cells"] for t in tasks)]
    cell = lambda m, t: fmt(g["cells"][f"{m}|{t}"]["mean"], g["cells"][f"{m}|{t}"]["ci95"]) if f"{m}|{t}" in g["cells"] else "-"  # noqa: E731
    if len(vels) <= 8:  # methods as rows (Table IV)
        lines = ["| method | " + " | ".join(f"v* = {v:g}" for v in vels) + " | average |", "|---" * (len(vels) + 2) + "|"]
        lines += [f"| {NAMES[m]} | " + " | ".join(cell(m, t) for t in tasks) + " |" for m in methods]
    else:  # a sweep: velocities as rows
        lines = ["| v* | " + " | ".join(NAMES[m] for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]
        lines += [f"| {t.removeprefix('vel-')} | " + " | ".join(cell(m, t) for m in methods) + " |" for t in tasks]
    lines += pairs_table(g)
    if g["memorisation"]:
        lines += ["", "Memorisation (L2 distance in parameter space, medians per run, averaged over seeds):", "",
                  "| quantity | distance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in g["memorisation"].items()]
    return "\n".join(lines)


def pairs_table(g: dict) -> list[str]:
    lines = ["", "Paired differences of the averages (a - b, per seed, then mean ± 95% t interval):", "",
             "| a - b | mean ± 95% CI | per seed | call |", "|---|---|---|---|"]
    return lines + [f"| {k} | {fmt(d['mean'], d['ci95'])} | {', '.join(f'{x:.2f}' for x in d['per_seed'])} | "
                    f"{d['verdict']} |" for k, d in g["pairs"].items()]


def metaworld_table(g: dict) -> str:
    """Table II (methods x seen/unseen average success) and Tables I/III (tasks x methods), mean ± CI."""
    cell = lambda m, t: fmt(g["cells"][f"{m}|{t}"]["mean"], g["cells"][f"{m}|{t}"]["ci95"]) if f"{m}|{t}" in g["cells"] else "-"  # noqa: E731
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


def plot_velocity(groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    for ax, (key, g) in zip(axes[0], groups.items()):
        vels, lows = velocities_of(g), []
        for m in METHODS:
            pts = [(v, g["cells"][f"{m}|{common.task_name('cheetah-vel', v)}"]) for v in vels
                   if f"{m}|{common.task_name('cheetah-vel', v)}" in g["cells"]]
            if not pts or m == "parent":
                continue
            xs, cs = [p[0] for p in pts], [p[1] for p in pts]
            ys, es = [c["mean"] for c in cs], [0 if np.isnan(c["ci95"]) else c["ci95"] for c in cs]
            ax.errorbar(xs, ys, yerr=es, fmt="o--" if m == "oracle-expert" else "o-", capsize=3, label=m,
                        color="k" if m == "oracle-expert" else None, ms=3)
            lows += ys
        for tv in key:
            ax.axvline(tv, color="grey", lw=0.5, alpha=0.5)
        ax.set_xlabel("target velocity (grey lines: training velocities)")
        ax.set_ylabel("mean return over 200 steps")
        ax.set_title(f"{len(key)} training velocities, {g['n_seeds']} seed(s); bars: 95% t interval")
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


def main(args: Args) -> None:
    if not args.runs:
        raise SystemExit("error: name at least one run directory")
    if args.tokens and args.tag:
        raise SystemExit("error: --tokens reads results.json and results-L<L>.json itself; give no --tag")
    groups = group_runs(load_runs(args.runs, args.tag, args.tokens))
    out = common.prepare_run_dir(args.out)
    sfx = f"-{args.tag}" if args.tag else ""
    suite = next(iter(groups.values()))[0]["suite"]
    md = []
    if suite == "cheetah-vel":
        agg = {str(len(k)): {"train_velocities": list(k), **aggregate_group(rs)} for k, rs in groups.items()}
        for k, g in agg.items():
            md += [f"## {k} training velocities: {g['n_seeds']} seed(s) ({', '.join(map(str, g['seeds']))})", "",
                   f"Mean return over 200 steps, mean ± 95% Student-t interval over seeds; run directories: "
                   f"{', '.join(g['dirs'])}; training velocities {', '.join(f'{v:g}' for v in g['train_velocities'])}.",
                   "", group_table(g, velocities_of(g)), ""]
    else:
        agg = {f"L{k}": {"num_tokens": k, "seen": rs[0]["seen"], **aggregate_group(rs)} for k, rs in groups.items()}
        for k, g in agg.items():
            md += [f"## HypFormer with L = {g['num_tokens']}: {g['n_seeds']} seed(s) ({', '.join(map(str, g['seeds']))})",
                   "", f"Success rate % (mean ± 95% Student-t interval over seeds); run directories: "
                   f"{', '.join(g['dirs'])}. Top-k rows without `-optimistic` pick their k on goals never scored.",
                   "", metaworld_table(g), ""]
    text = "\n".join(md)
    common.write_atomic(out / f"results{sfx}.md", lambda p: p.write_text(text))
    if suite == "cheetah-vel":
        common.write_atomic(out / f"return_vs_velocity{sfx}.png",
                            lambda p: plot_velocity({k: agg[str(len(k))] for k in groups}, p))
        if len(groups) > 1:
            common.write_atomic(out / f"ablation{sfx}.png", lambda p: plot_ablation({k: agg[str(len(k))] for k in groups}, p))
    elif len(groups) > 1:
        common.write_atomic(out / "tokens.png", lambda p: plot_tokens({k: agg[f"L{k}"] for k in groups}, p))
    common.write_atomic(out / f"results{sfx}.json", lambda p: p.write_text(json.dumps(agg, indent=1)))
    print(text)
    print(f"aggregate: wrote results{sfx}.md, results{sfx}.json and figures in {out}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
