"""The figures of the aggregated tables (aggregate.py writes them into --out; a result page shows the same
files): Cheetah-Vel's return per velocity, the velocity ablation and the component ablation, MetaWorld's
success per task and HypFormer's token count (Fig. 5). Each takes aggregated groups (aggregate.py's dicts)
and the path of the PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from methods import LABELS, METHODS, MW_LABELS, task_name


def pyplot():
    """matplotlib's pyplot on the Agg backend, imported at the first figure (the tables need no matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_velocity(panels: list[tuple[list[float], dict]], path: Path) -> None:
    """Per training set (a panel: the velocities it was evaluated at, its aggregated group), every method's
    mean return per velocity with its 95% t interval as a band; grey lines at the training velocities."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (vels, g) in zip(axes[0], panels):
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
        for tv in g["train_velocities"]:
            ax.axvline(tv, color="grey", lw=0.5, alpha=0.5)
        ax.set_xlabel("target velocity (grey lines: training velocities)")
        ax.set_ylabel("mean return over 200 steps")
        ax.set_title(f"{len(g['train_velocities'])} training velocities, {g['n_seeds']} seed(s); bands: 95% t interval of the mean")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ablation(groups: dict, path: Path) -> None:
    """The velocity ablation: average test return against the number of training velocities ({training
    velocities: aggregated group}), error bars the 95% t interval over seeds."""
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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


def plot_components(g: dict, variants: list[tuple[str, str, str]], path: Path) -> None:
    """The component ablation: HypLatent's and HypFormer's average test return per stage-2 variant (`variants`:
    the tag of its results, its row name, its name under the bars), bars the 95% t interval over seeds; the
    interpolated expert as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(variants))
    for i, m in enumerate(("hyplatent", "hypformer")):
        cs = [g["cells"][f"{m}|{tag}"] for tag, *_ in variants]
        ax.bar(x + (i - 0.5) * 0.38, [c["mean"] for c in cs], 0.36, label=LABELS[m],
               yerr=[0 if np.isnan(c["ci95"]) else c["ci95"] for c in cs], capsize=3)
    ie = g["cells"]["interpolated-expert|"]
    ax.axhline(ie["mean"], color="k", ls="--", lw=1, label="interpolated expert")
    ax.set_xticks(x, [bars for *_, bars in variants])
    ax.set_ylabel("mean return at the test velocities")
    ax.set_title(f"Cheetah-Vel: stage 2's loss, part by part ({g['n_seeds']} seeds; bars: 95% t interval)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_regimes(agg: dict, suite: str, path: Path) -> None:
    """The regimes page: each method's average (Cheetah-Vel: return; MetaWorld: seen and unseen success) in
    both stage-0 regimes side by side, bars the 95% t interval over each regime's seeds."""
    plt = pyplot()
    tasks = ["average"] if suite == "cheetah-vel" else ["average-seen", "average-unseen"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(8 * len(tasks), 4.5), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        methods = [m for m in dict.fromkeys(k.split("|")[0] for g in agg.values() for k in g["cells"])
                   if any(f"{m}|{t}" in g["cells"] for g in agg.values())]
        x = np.arange(len(methods))
        for i, (reg, g) in enumerate(agg.items()):
            cs = [g["cells"].get(f"{m}|{t}") for m in methods]
            ax.bar(x + (i - 0.5) * 0.38, [c["mean"] if c else np.nan for c in cs], 0.36,
                   yerr=[0 if not c or np.isnan(c["ci95"]) else c["ci95"] for c in cs], capsize=3,
                   label=f"{reg} ({g['n_seeds']} seeds)")
        ax.set_xticks(x, methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mean return at the test velocities" if suite == "cheetah-vel" else f"success % ({t.removeprefix('average-')})")
        ax.legend(fontsize=8)
    fig.suptitle("experts from one parent against independent experts (bars: 95% t interval)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
