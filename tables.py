"""The tables of the result pages, from aggregated groups (aggregate.py's dicts: per method and task the seeds'
scores with mean and 95% interval, and the paired differences with their Holm-adjusted calls): numbers with
their intervals, what kind of interval a group's are, the paired differences, Cheetah-Vel's Table IV, sweep and
velocity ablation, MetaWorld's Tables I-III, the component ablation, and the headline a page and the README show.
aggregate.py computes the groups and writes these tables into --out and onto the pages (publish.py)."""

from __future__ import annotations

import numpy as np

from methods import LABELS, METHODS, MW_LABELS, MW_METHODS, MW_ROWS, task_name

# the MetaWorld comparisons a headline shows (the others, top-k and the seen-task chain, are in the full tables)
MW_HEADLINE_PAIRS = {"hyplatent - parent", "hypformer - hyplatent", "hyplatent - maa", "hypformer - maa",
                     "checkpoints - hyplatent"}


# Numbers: a mean with its interval, a p, a success rate, what one new run shows

def fmt(m: float, h: float) -> str:
    return f"{m:.2f}" if np.isnan(h) else f"{m:.2f} ± {h:.2f}"


def fmt_p(p: float) -> str:
    """Three decimals, four where three would round a p below 0.05 up to 0.050 (beside a call)."""
    if np.isnan(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.4f}" if p < 0.05 <= round(p, 3) else f"{p:.3f}"


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


def range_coverage(n: int) -> float:
    """The probability that one new run lands between the lowest and highest of n exchangeable seeds,
    whatever their distribution: (n - 1) / (n + 1)."""
    return (n - 1) / (n + 1)


def fmt_range(c: dict) -> str:
    """What one new run of a method shows, from the seeds themselves: the lowest to the highest seed (from 3
    seeds on; a new run lands inside with probability `range_coverage(n)`, whatever the distribution)."""
    if len(c["seeds"]) < 3:
        return "-"
    return f"{min(c['seeds']):.2f} to {max(c['seeds']):.2f}"


def range_head(n: int) -> str:
    return (f"one new run: the {n} seeds' range (inside with probability {range_coverage(n):.0%})" if n >= 3
            else "one new run (from 3 seeds)")


# What a group's intervals cover

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


# Paired differences

PAIR_HEAD = ["| {what} | family | mean ± 95% CI | one new run (95% prediction) | per seed | p | Holm p | call |",
             "|---|---|---|---|---|---|---|---|"]


def family_note(pairs, test: str = "paired t-test") -> str:
    """What a page's calls are corrected over: the size of each family its comparisons belong to."""
    sizes = {d["family"]: d["family_size"] for d in pairs}
    if not any(sizes.values()):
        return ("No test: no difference is tested or called from fewer than 3 seeds (DESIGN.md section 12); the "
                "intervals are 95% t intervals.")
    fams = " and ".join(f"{sizes[f]} {f}" for f in sorted(sizes, key=lambda f: (not f.startswith("primary"), f)))
    return (f"Holm-adjusted over {fams} comparisons (each family corrected on its own; primary: DESIGN.md "
            f"section 12). p: two-sided {test}; a call where the Holm-adjusted p is below 0.05, never from "
            "fewer than 3 seeds; the intervals are unadjusted 95% t intervals.")


def pair_row(label: str, d: dict) -> str:
    pred = "-" if len(d["per_seed"]) < 3 else f"{d['mean'] - d['pi95']:.2f} to {d['mean'] + d['pi95']:.2f}"
    return (f"| {label} | {d['family']} | {fmt(d['mean'], d['ci95'])} | {pred} | "
            f"{', '.join(f'{x:.2f}' for x in d['per_seed'])} | {fmt_p(d['p'])} | {fmt_p(d['p_holm'])} | {d['verdict']} |")


def pair_label(key: str) -> str:
    """`hyplatent - interpolated-expert (seen)` -> `HypLatent - interpolated expert (seen)`; `hyplatent@top5`
    -> `HypLatent top-5`."""
    short = {"hyplatent": "HypLatent", "hypformer": "HypFormer", "maa": "MAA", "mt-bc": "MT-BC", "prompt-dt": "Prompt-DT",
             "macaw": "MACAW", "macaw-unadapted": "MACAW unadapted", "care": "CARE"}
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


def size_table(pairs: dict) -> str:
    lines = [PAIR_HEAD[0].format(what="method: training velocities a - b"), PAIR_HEAD[1]]
    return "\n".join(lines + [pair_row(f"{pair_label(k.split(': ')[0])}: {k.split(': ')[1]}", d) for k, d in pairs.items()])


# A group's tables, and the headline a page and the README show

def velocities_of(g: dict) -> list[float]:
    names = {k.split("|")[1] for k in g["cells"]} - {"average"}
    return sorted(float(t.removeprefix("vel-")) for t in names)


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


def range_table(r: dict) -> str:
    """A sweep beyond the training velocities (aggregate.py's `sweep_ranges`): per method, the average over the
    evaluated velocities up to the last training velocity and over those above it, per seed and mean ± 95% CI
    ("" when none lies above)."""
    if not r:
        return ""
    top = r["top"]
    lines = [f"| method | velocities up to {top:g} ({len(r['inside'])}), per seed | mean ± 95% CI | "
             f"above {top:g} ({len(r['beyond'])}), per seed | mean ± 95% CI |", "|---|---|---|---|---|"]
    for m, cells in r["cells"].items():
        parts = [x for c in cells for x in (", ".join(f"{v:.2f}" for v in c["seeds"]), fmt(c["mean"], c["ci95"]))]
        lines.append(f"| {LABELS[m]} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


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


def components_table(g: dict, variants) -> str:
    """The component ablation (or a fork against the default): per stage-2 variant (aggregate.py's
    COMPONENTS, or `fork_variants`) HypLatent's and HypFormer's average return, and the paired differences."""
    n = g["n_seeds"]
    lines = [f"| stage 2 | HypLatent, {f'mean ± 95% CI over {n} seeds' if n > 1 else 'one seed (no interval)'} | HypFormer | "
             f"HypFormer, {range_head(n)} |", "|---|---|---|---|"]
    for tag, label, _ in variants:
        hl, hf = g["cells"][f"hyplatent|{tag}"], g["cells"][f"hypformer|{tag}"]
        lines.append(f"| {label} | {fmt(hl['mean'], hl['ci95'])} | {fmt(hf['mean'], hf['ci95'])} | "
                     + fmt_range(hf) + " |")
    ie = g["cells"]["interpolated-expert|"]
    lines.append(f"| interpolated expert (no generator) | {fmt(ie['mean'], ie['ci95'])} | | |")
    return "\n".join(lines + pairs_table(g))


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
