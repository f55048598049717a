"""Result pages and the README: a page written by `aggregate.py --publish` (provenance, headline, figures),
the README's headline blocks equal to the pages they cite, every number of a README results table found in
the page it cites, relative links that resolve, and a project that speaks of itself."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import aggregate as agg
import publish
from test_aggregation import assert_figure, fake_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "DESIGN.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "results").glob("*.md"))]


def write_provenance(run: Path, seed: int, seconds: dict) -> None:
    """provenance.jsonl as pipeline.sh writes it: a chain line, then one line per stage invocation."""
    recs = [{"event": "chain", "command": "bash pipeline.sh smoke", "env": {"SEED": str(seed)}, "commit": "abc123",
             "date": "2026-01-01T00:00:00Z", "machine": {"cores": 2, "cpu": "test cpu", "device": "cpu", "torch": "x"}}]
    for stage, secs in seconds.items():
        script = re.sub(r"\W+", "_", stage).strip("_")
        for s in secs:  # several invocations: an interrupted stage and its resume
            recs.append({"event": "stage", "stage": stage, "command": f"python {script}.py --run-dir {run} --seed {seed}",
                         "seconds": s, "commit": "abc123", "date": "2026-01-01T00:10:00Z"})
    (run / "provenance.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_publish_writes_provenance_headline_figure_and_readme_block(tmp_path):
    runs = []
    for seed, hl, ip in ((1, (-10, -20), (-12, -22)), (2, (-14, -18), (-15, -21)), (3, (-12, -22), (-13, -23))):
        run = tmp_path / f"s{seed}"
        fake_results(run, seed, {"hyplatent": hl, "interpolated-expert": ip})
        # two stages of the chain, and one of a study in the same run directory (not the chain's results)
        write_provenance(run, seed, {"stage 0 (SAC experts)": [100 * seed, 200], "stage 2 (HypLatent, Eqs. 3-5)": [50],
                                     "stage 2 (paired-only)": [999]})
        runs.append(str(run))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- headline: results/cv.md -->\nstale numbers\n<!-- /headline -->\nend\n")
    agg.main(agg.Args(runs=runs, out=str(tmp_path / "out"), publish=str(tmp_path / "results" / "cv.md"),
                      readme=str(readme)))
    page = (tmp_path / "results" / "cv.md").read_text()
    # provenance: one row per run, each stage's invocations summed (seed 2: 200 + 200 s = 6.7 min)
    data = tmp_path / "results" / "data" / "cv"
    assert sorted(p.name for p in (data / "s2").iterdir()) == ["provenance.jsonl", "results.json"]
    row2 = next(line for line in page.splitlines() if line.startswith(f"| {data / 's2'} |"))
    assert "| 2 | unrecorded | abc123 |" in row2 and row2.endswith("| 6.7 min | 50 s | 7.5 min |")
    assert "- Code: fingerprints not recorded (results of an older version); every run made at commits abc123." in page
    # the chain of every seed on one line, the seed a placeholder
    assert "2 cores (test cpu), device cpu" in page and "- Chains: `SEED=<s> bash pipeline.sh smoke`.\n" in page
    assert "python stage_0_SAC_experts.py --run-dir <run> --seed <s>" in page
    assert "paired-only" not in page and "paired_only" not in page
    # headline: averages per seed -15, -16, -17: mean -16, s = 1, n = 3
    # CI: 4.302653 / sqrt(3) = 2.48; one new run: the seeds' range, inside with probability 2/4
    assert "| method | average return, mean ± 95% CI over 3 seeds | one new run: the 3 seeds' range (inside with probability 50%) |" in page
    assert "| HypLatent (AMT-Hyp w/o HypFormer) | -16.00 ± 2.48 | -17.00 to -15.00 |" in page
    assert "| HypLatent - interpolated expert | primary | 1.67 ± 1.43 | -1.20 to 4.54 | 2.00, 2.00, 1.00 | 0.038 | 0.038 | HypLatent better |" in page
    assert_figure(tmp_path / "results" / "cv-return_vs_velocity.png", (770, 495))
    assert "![return_vs_velocity.png](cv-return_vs_velocity.png)" in page
    # the README's block now holds the page's headline, the rest of the README untouched
    text = readme.read_text()
    assert "stale numbers" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert publish.readme_blocks(text)[0][0] == "results/cv.md"
    _, i, j = publish.readme_blocks(text)[0]
    assert text[i:j].strip("\n") == publish.page_headline(page)
    # the page made again from the data kept beside it: the same headline and the same runs
    agg.main(agg.Args(runs=[str(p) for p in sorted(data.iterdir())], out=str(tmp_path / "out2"),
                      publish=str(tmp_path / "results" / "cv.md"), readme=str(readme)))
    again = (tmp_path / "results" / "cv.md").read_text()
    assert publish.page_headline(again) == publish.page_headline(page)
    assert sorted(p.name for p in data.iterdir()) == ["s1", "s2", "s3"]


def test_prediction_interval_by_hand():
    assert agg.prediction_halfwidth([1.0, 2.0, 3.0]) == pytest.approx(4.302653 * np.sqrt(4 / 3), abs=1e-5)
    x = [-28.0, -31.0, -31.5, -30.0, -27.0]  # df 4: t = 2.776445; squares 2.25 + 2.25 + 4 + 0.25 + 6.25 = 15, s = sqrt(15/4)
    assert agg.prediction_halfwidth(x) == pytest.approx(2.776445 * 1.936492 * np.sqrt(1.2), abs=1e-4)  # 5.8897
    assert np.isnan(agg.prediction_halfwidth([3.0]))


def test_readme_headlines_are_the_pages_they_cite():
    readme = (ROOT / "README.md").read_text()
    for path, i, j in publish.readme_blocks(readme):
        page = ROOT / path
        assert page.exists(), f"README cites {path}, which does not exist"
        assert readme[i:j].strip("\n") == publish.page_headline(page.read_text()), \
            f"README's headline block for {path} differs from the page: re-run the aggregate.py --publish command there"


def tables_with_citations(text: str):
    """(cited page, table lines) of every markdown table whose caption (the paragraph just above it, or the
    headline marker) links a page under results/ or docs/; None for a table that cites none."""
    lines, out, k = text.splitlines(), [], 0
    while k < len(lines):
        if not lines[k].startswith("|"):
            k += 1
            continue
        start = k
        while k < len(lines) and lines[k].startswith("|"):
            k += 1
        cap, c = [], start - 1
        while c >= 0 and not lines[c].strip():  # the paragraph just above, past blank lines
            c -= 1
        while c >= 0 and lines[c].strip() and not lines[c].startswith("#"):
            cap.insert(0, lines[c])
            c -= 1
        links = re.findall(r"\]\(((?:results|docs)/[^)#]+\.md)|<!-- headline: (\S+) -->", " ".join(cap))
        links = [a or b for a, b in links]
        out.append((links[-1] if links else None, lines[start:k]))
    return out


NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_every_cell_of_a_readme_results_table_is_the_pages():
    """A README table that cites a page holds the page's cells: each row, found in a table of the page
    with the same header by its first cell, has the page's value in every column (by column name)."""
    readme = (ROOT / "README.md").read_text()
    checked = 0
    for path, table in tables_with_citations(readme):
        if path is None:
            continue
        text = (ROOT / path).read_text()
        page_tables = [t for _, t in tables_with_citations(text)]
        head = cells(table[0])
        rows = {cells(line)[0]: dict(zip(cells(t[0]), cells(line))) for t in page_tables for line in t[2:]
                if set(cells(t[0])) >= set(head)}
        if not rows:  # a table the README composes from a page's prose (the stage times): its numbers are there
            numbers = set(NUMBER.findall(text))
            for line in table[2:]:
                missing = [x for x in NUMBER.findall(re.sub(r"Eqs?\. \d+(-\d+)?", "", line)) if x not in numbers]
                assert not missing, f"README table row {line!r}: {missing} not in {path}"
            continue
        for line in table[2:]:
            mine = dict(zip(head, cells(line)))
            theirs = rows.get(cells(line)[0])
            assert theirs is not None, f"README row {cells(line)[0]!r} is not in {path}"
            wrong = {k: (v, theirs.get(k)) for k, v in mine.items() if theirs.get(k) != v}
            assert not wrong, f"README row {cells(line)[0]!r} differs from {path}: {wrong}"
        checked += 1
    assert checked >= 1, "no README results table cites a page"


def test_the_cell_check_fails_on_a_moved_number(tmp_path, monkeypatch):
    """The check above compares cells, not numbers found anywhere on the page: a README row whose value sits
    in another column (or row) of the page fails."""
    page = "| method | a | b |\n|---|---|---|\n| x | 1.00 | 2.00 |\n| y | 2.00 | 1.00 |\n"
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "p.md").write_text(page)
    ok = "See [p](results/p.md).\n\n| method | a | b |\n|---|---|---|\n| x | 1.00 | 2.00 |\n"
    swapped = ok.replace("| x | 1.00 | 2.00 |", "| x | 2.00 | 1.00 |")  # every number is on the page
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "README.md").write_text(ok)
    test_every_cell_of_a_readme_results_table_is_the_pages()
    (tmp_path / "README.md").write_text(swapped)
    with pytest.raises(AssertionError, match="differs from results/p.md"):
        test_every_cell_of_a_readme_results_table_is_the_pages()


def test_relative_links_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            assert (page.parent / target.split("#")[0]).exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_the_project_speaks_of_itself():
    history = re.compile(r"\b(this|previous|earlier|next) session\b|\bissues? \d+|\buntil commit\b|\ba finding of\b", re.I)
    files = [*PAGES, *ROOT.glob("*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"), ROOT / "pipeline.sh"]
    bad = [f"{f.relative_to(ROOT)}:{n + 1}" for f in files for n, line in enumerate(f.read_text().splitlines())
           if history.search(line)]
    assert not bad, f"process history in {bad[:10]}"


def test_committed_pages_are_made_from_their_committed_data(tmp_path):
    """Every page under results/ comes from the runs' data kept beside it: made again from them, its
    headline is the committed one (so no number of a page was typed by hand)."""
    pages = sorted((ROOT / "results").glob("*.md"))
    for page in pages:
        data = ROOT / "results" / "data" / page.stem
        assert data.is_dir(), f"{page.name}: no data/{page.stem}/ beside it"
        text = page.read_text()
        remake = re.search(r"`python aggregate.py (.*?) --publish", text).group(1)
        tag = re.search(r"--tag (\S+)", remake)
        out = tmp_path / page.stem
        agg.main(agg.Args(runs=[str(p) for p in sorted(data.iterdir())], out=str(out / "agg"),
                          publish=str(out / page.name), tag=tag.group(1) if tag else "", tokens="--tokens" in remake,
                          components="--components" in remake, mixed_code="--mixed-code" in remake,
                          readme=str(tmp_path / "no-readme.md")))
        assert publish.page_headline((out / page.name).read_text()) == publish.page_headline(text), page.name


def test_publish_pools_the_kept_runs_with_new_ones(tmp_path):
    """`bash pipeline.sh publish` makes a page from the runs kept beside it and the run directories of
    runs/; a run directory named as a kept run replaces it."""
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    repo.mkdir()
    for f in ("pipeline.sh", "aggregate.py", "pooling.py", "tables.py", "figures.py", "publish.py", "artifacts.py",
              "provenance.py", "methods.py", "names.py"):
        shutil.copy(ROOT / f, repo / f)
    kept = repo / "results" / "data" / "cheetah-vel"
    runs = tmp_path / "runs"
    for seed, where in ((1, kept), (2, kept), (2, runs), (3, runs)):
        d = where / f"cheetah-vel-quick-seed{seed}"
        score = -10.0 - seed + (100.0 if where == runs and seed == 2 else 0.0)
        fake_results(d, seed, {"hyplatent": (score, score - 1), "interpolated-expert": (score - 2, score - 3)})
        write_provenance(d, seed, {"stage1_autoencoder": [10]})
    for seed, sizes in ((3, (20, 25, 35)), (2, (35,))):  # seed 3's velocity ablation finished, seed 2's did not
        for n in sizes:
            nested = runs / f"cheetah-vel-quick-seed{seed}" / f"n{n}"
            fake_results(nested, seed, {"hyplatent": (-9.0, -10.0)}, train=(0.3, 0.9, 1.5, 2.0, 2.5)[: 3 + (20, 25, 35).index(n)])
            write_provenance(nested, seed, {"stage1_autoencoder": [10]})
    (repo / "README.md").write_text("# no headline blocks\n")
    env = {"AMT_NO_VENV": "1", "RUNS": str(runs), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    r = subprocess.run(["bash", "pipeline.sh", "publish"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in kept.iterdir()) == [f"cheetah-vel-quick-seed{s}" for s in (1, 2, 3)]
    # seed 2 is the run directory's (offset by 100), not the kept copy
    assert json.loads((kept / "cheetah-vel-quick-seed2" / "results.json").read_text()) == \
        json.loads((runs / "cheetah-vel-quick-seed2" / "results.json").read_text())
    page = (repo / "results" / "cheetah-vel.md").read_text()
    assert "## 2 training velocities: 3 seed(s)" in page and "results/data/cheetah-vel/cheetah-vel-quick-seed1" in page
    ablation = (repo / "results" / "velocity-ablation.md").read_text()  # only the seeds with every training set
    assert all(f"## {k} training velocities: 1 seed(s) (3)" in ablation for k in (2, 3, 4, 5))
    assert sorted(p.name for p in (kept.parent / "velocity-ablation").iterdir()) == \
        ["cheetah-vel-quick-seed3", *(f"cheetah-vel-quick-seed3-n{n}" for n in (20, 25, 35))]


def test_metaworld_page_shows_the_pca_of_the_lowest_seed_that_has_one(tmp_path):
    runs = []
    for seed in (3, 1, 2):
        (tmp_path / f"s{seed}").mkdir()
        runs.append({"dir": str(tmp_path / f"s{seed}"), "seed": seed})
    assert publish.pca_source(runs) is None
    for seed in (3, 2):
        (tmp_path / f"s{seed}" / publish.PCA_FIGURE).write_bytes(b"png of seed %d" % seed)
    path, seed = publish.pca_source(runs)
    assert (seed, path.read_bytes()) == (2, b"png of seed 2")


def test_the_chain_stages_are_those_pipeline_sh_logs():
    import provenance

    logged = re.findall(r'^\s*run_from \d "([^"]+)"', (ROOT / "pipeline.sh").read_text(), re.M)
    assert tuple(logged) == publish.CHAIN_STAGES
    ablation = re.findall(r'^\s*study_in \d "\$BASE" "([^"]+)"', (ROOT / "pipeline.sh").read_text(), re.M)
    assert tuple(ablation) == publish.ABLATION_STAGES
