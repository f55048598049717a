"""Which evaluations pool as seeds of one table (DESIGN.md section 12): the results of each run directory,
the code that made them (each stage's fingerprint, or for older results the commits their provenance.jsonl
logs), and the checks that refuse, with one line, runs that differ in anything but the seed: settings,
upstream artifacts, code (unless --mixed-code), and rows compared seed by seed over different seeds."""

from __future__ import annotations

import json
from pathlib import Path

import artifacts
import provenance


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


def check_comparable(groups: dict, what, upstream_free: tuple[str, ...], shared: tuple[str, ...],
                     code_free: tuple[str, ...] = (), mixed_code: bool = False) -> None:
    """Groups compared seed by seed (training sets, token counts, loss variants) differ in nothing but what
    makes them groups (upstream settings starting with `upstream_free`; MAA's, which no pair across groups
    reads; file names), each seed's runs are made from the same `shared` artifacts (made_from uids: at
    least its one stage 0, parent.pt), and by the same code but in the stages of `code_free` (a fork's)
    unless `mixed_code`."""
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
    if mixed_code:
        return
    by_seed: dict = {}
    for k, rs in groups.items():
        for r in rs:
            by_seed.setdefault(r["seed"], []).append((k, r))
    for seed, krs in sorted(by_seed.items()):
        (k0, r0), *rest = krs
        for k, r in rest:
            if diff := [d for d in code_difference(r0["code"], r["code"]) if d not in code_free]:
                raise SystemExit(f"error: seed {seed}: its {what(k)} and {what(k0)} were made by other code "
                                 f"({', '.join(diff[:4])}); rows compared seed by seed must run one code "
                                 "(--mixed-code compares them anyway)")


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
        check_comparable(groups, what, ("hypformer: num_tokens",), shared, mixed_code=mixed_code)
    return dict(sorted(groups.items(), key=lambda kv: len(kv[0]) if isinstance(kv[0], tuple) else kv[0]))


def check_same_seeds(agg: dict, what: str, unit: str = "") -> None:
    """Rows compared seed by seed (training sets, token counts) must hold the same seeds, in the same order."""
    seeds = {k: g["seeds"] for k, g in agg.items()}
    if len({tuple(v) for v in seeds.values()}) > 1:
        raise SystemExit(f"error: the {what} were run on different seeds ("
                         + "; ".join(f"{k}{unit}: {v}" for k, v in seeds.items())
                         + f"): give every one of the {what} the same seeds")
