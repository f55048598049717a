"""The result pages under results/ (README: "Results"; DESIGN.md section 14): the page itself (title,
provenance block, headline, full tables, figures), the copy of its runs' data kept beside it in
data/<page>/, and the README's copy of its headline. aggregate.py computes what a page shows, draws its
figures, and calls these to write it.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np

import artifacts
import provenance
from pooling import LEGACY_CODE, code_difference, code_label

# the stages of pipeline.sh's chain, as it logs them (kept here, not in provenance.py, which every stage imports:
# a new stage name changes no stage's code fingerprint); a study's own stages (components, tokens, the sweep) are
# named otherwise, and the page of the chain's results leaves them out
CHAIN_STAGES = ("stage 0 (SAC experts)", "stage 0 (oracle experts at the test velocities)",
                "stage 1 (autoencoder, Eq. 1)", "stage 1 (behaviour embedding, Eq. 2)", "stage 2 (HypLatent, Eqs. 3-5)",
                "stage 2 (MAA's diffusion, the baseline)", "stage 3 (HypFormer, Eqs. 6-9)",
                "offline data (episodes of the training checkpoints)", "MT-BC (the baseline)", "Prompt-DT (the baseline)",
                "MACAW (the baseline)", "CARE (the baseline)",
                "evaluation (Table IV or Tables I-III)")
# the stages `pipeline.sh ablation` adds in a seed's run directory: the velocity ablation's and dense sweep's pages show them
ABLATION_STAGES = ("stage 0 (the other 25 training velocities, into oracle/)", "evaluation (dense sweep)")

HEADLINE = ("<!-- headline -->", "<!-- /headline -->")


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
    parts, unique = [], len({r["seed"] for r in runs}) == len(runs)  # else name the run directories
    for rs in by.values():
        code = rs[0]["code"]
        what = f"commits {code[LEGACY_CODE]}" if LEGACY_CODE in code else f"`{code_label(code)}`"
        rs = sorted(rs, key=lambda r: (r["seed"], r["dir"]))
        names = ", ".join(str(r["seed"]) if unique else archive_name(r["dir"]) for r in rs)
        parts.append(f"{'seed' if unique else 'run'}{'s' if len(rs) > 1 else ''} {names}: {what}")
    stages = sorted({k for a in runs for b in runs for k in code_difference(a["code"], b["code"]) if k != LEGACY_CODE})
    how = (f", differing in {', '.join(stages)}" if stages else
           " (fingerprints not recorded: told apart by the commits their provenance logs, which can count one code twice)")
    return (f"- **Mixed code** (pooled with --mixed-code): the runs were made by {len(by)} different stage codes{how}; "
            + "; ".join(parts) + ".")


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
               figures: dict[str, Path], commit: str, stages: tuple[str, ...] | None = None) -> None:
    """The result page: title, provenance, headline (between the HEADLINE markers), full tables, figures
    (`figures`: {file name: a figure made already}, copied beside the page as <page stem>-<name>)."""
    page.parent.mkdir(parents=True, exist_ok=True)
    links = []
    for name, src in figures.items():
        fig = page.with_name(f"{page.stem}-{name}")
        artifacts.write_atomic(fig, lambda p, src=src: p.write_bytes(src.read_bytes()))
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
