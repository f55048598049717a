"""Aggregate Cheetah-Vel evaluations of several seeds into Table IV with confidence intervals (DESIGN.md
section 12).

One run directory holds one seed's whole chain (stage 0 included: SAC's variance is part of the result).
This script reads `results[-<tag>].json` of each run directory given, groups them by their training
velocities, checks that the runs of a group differ in nothing but the seed, and writes to `--out`:
- `results[-<tag>].md/json`: per group, every method's mean return per target velocity and on the average
  over velocities, each with a 95% confidence interval over seeds (Student t: mean +- t(0.975, n-1) s/sqrt(n),
  s the sample standard deviation over seeds; no interval with one seed); the paired differences the README
  argues from (per seed, then the same interval); the memorisation distances, averaged over seeds;
- `return_vs_velocity[-<tag>].png`: the per-velocity means with their intervals as error bars;
- with groups of several sizes (the paper's 10/20/25/35 training velocities): `ablation.png`, the
  average test return against the number of training velocities.

A difference is called a win or a loss only where its interval excludes zero.

    python aggregate.py runs/cheetah-vel-quick-seed1 runs/cheetah-vel-quick-seed2 runs/cheetah-vel-quick-seed3 \
        --out runs/cheetah-vel-quick-aggregate
    python aggregate.py runs/cheetah-vel-quick-seed*/ runs/cheetah-vel-quick-seed*/n*/ --out runs/cv-ablation
    python aggregate.py runs/cheetah-vel-quick-seed*/ --tag sweep --out runs/cv-sweep   # the dense sweep
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

import common
from evaluate import METHODS

# 0.975 quantiles of Student's t by degrees of freedom (a df between two entries takes the smaller df's,
# which is the larger, conservative value)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
# (a, b): the differences a - b reported with intervals
PAIRS = [("hyplatent", "interpolated-expert"), ("hypformer", "hyplatent"), ("decoded-expert", "nearest-expert"),
         ("hyplatent", "nearest-expert"), ("hypformer", "interpolated-expert"), ("oracle-expert", "hyplatent"),
         ("oracle-expert", "hypformer"), ("oracle-expert", "interpolated-expert")]
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
    return "no difference shown (interval contains 0)" if abs(m) <= h else (f"{a} better" if m > 0 else f"{b} better")


def load_runs(paths: list[str], tag: str) -> list[dict]:
    """The results of each run directory, refused with one line unless they are Cheetah-Vel evaluations."""
    name = f"results-{tag}.json" if tag else "results.json"
    runs = []
    for p in paths:
        f = Path(p) / name
        try:
            res = json.loads(f.read_text())
        except FileNotFoundError:
            raise SystemExit(f"error: {f}: not found (run evaluate.py{' --tag ' + tag if tag else ''} there first)") from None
        except ValueError:
            raise SystemExit(f"error: {f}: not JSON") from None
        if res.get("suite") != "cheetah-vel" or "train_velocities" not in res:
            raise SystemExit(f"error: {f}: not a Cheetah-Vel evaluation of this version (no train_velocities)")
        res["dir"] = str(p)
        runs.append(res)
    return runs


def group_runs(runs: list[dict]) -> dict:
    """{training velocities: runs}; within a group the settings must agree in everything but the seed and
    the seeds must differ (else one line)."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(tuple(r["train_velocities"]), []).append(r)
    for key, rs in groups.items():
        ref = {k: v for k, v in rs[0]["settings"].items() if k != "seed"}
        for r in rs[1:]:
            diff = sorted(k for k in set(ref) | set(r["settings"]) if k != "seed" and ref.get(k) != r["settings"].get(k))
            if diff:
                raise SystemExit(f"error: {r['dir']} and {rs[0]['dir']}: evaluated with other settings ({', '.join(diff)})")
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) < len(seeds):
            raise SystemExit(f"error: two run directories of seed {max(seeds, key=seeds.count)} for {len(key)} "
                             f"training velocities: {', '.join(r['dir'] for r in rs)}")
    return dict(sorted(groups.items(), key=lambda kv: len(kv[0])))


def aggregate_group(rs: list[dict]) -> dict:
    """Per method and task (velocity names and `average`): the seeds' scores, mean and interval; paired
    differences of the averages; memorisation distances averaged over seeds."""
    scores: dict = {}
    for r in rs:
        for row in r["rows"]:
            if row["method"] in METHODS:
                scores.setdefault((row["method"], row["task"]), []).append(row["score"])
    n = len(rs)
    cells = {f"{m}|{t}": {"seeds": v, **dict(zip(("mean", "ci95"), mean_ci(v)))}
             for (m, t), v in scores.items() if len(v) == n}
    pairs = {}
    for a, b in PAIRS:
        ka, kb = (a, "average"), (b, "average")
        if ka in scores and kb in scores and len(scores[ka]) == n == len(scores[kb]):
            d = np.array(scores[ka]) - np.array(scores[kb])  # paired by seed (same stage 0, same envs)
            m, h = mean_ci(d)
            pairs[f"{a} - {b}"] = {"per_seed": d.tolist(), "mean": m, "ci95": h, "verdict": verdict(m, h, a, b)}
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
    lines += ["", "Paired differences of the average (a - b, per seed, then mean ± 95% t interval):", "",
              "| a - b | mean ± 95% CI | per seed | call |", "|---|---|---|---|"]
    lines += [f"| {k} | {fmt(d['mean'], d['ci95'])} | {', '.join(f'{x:.2f}' for x in d['per_seed'])} | {d['verdict']} |"
              for k, d in g["pairs"].items()]
    if g["memorisation"]:
        lines += ["", "Memorisation (L2 distance in parameter space, medians per run, averaged over seeds):", "",
                  "| quantity | distance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in g["memorisation"].items()]
    return "\n".join(lines)


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
    ax.set_title("Cheetah-Vel: test return vs training velocities (bars: 95% t interval over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: Args) -> None:
    if not args.runs:
        raise SystemExit("error: name at least one run directory")
    groups = group_runs(load_runs(args.runs, args.tag))
    out = common.prepare_run_dir(args.out)
    sfx = f"-{args.tag}" if args.tag else ""
    agg = {str(len(k)): {"train_velocities": list(k), **aggregate_group(rs)} for k, rs in groups.items()}
    md = []
    for k, g in agg.items():
        md += [f"## {k} training velocities: {g['n_seeds']} seed(s) ({', '.join(map(str, g['seeds']))})", "",
               f"Mean return over 200 steps, mean ± 95% Student-t interval over seeds; run directories: "
               f"{', '.join(g['dirs'])}; training velocities {', '.join(f'{v:g}' for v in g['train_velocities'])}.",
               "", group_table(g, velocities_of(g)), ""]
    text = "\n".join(md)
    common.write_atomic(out / f"results{sfx}.md", lambda p: p.write_text(text))
    common.write_atomic(out / f"return_vs_velocity{sfx}.png",
                        lambda p: plot_velocity({k: agg[str(len(k))] for k in groups}, p))
    if len(groups) > 1:
        common.write_atomic(out / f"ablation{sfx}.png", lambda p: plot_ablation({k: agg[str(len(k))] for k in groups}, p))
    common.write_atomic(out / f"results{sfx}.json", lambda p: p.write_text(json.dumps(agg, indent=1)))
    print(text)
    print(f"aggregate: wrote results{sfx}.md, results{sfx}.json and figures in {out}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
