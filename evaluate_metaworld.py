"""Evaluation, MetaWorld half (paper Sec. V-A, Tables I-III and Fig. 4; DESIGN.md section 8): called by
`evaluate.py --suite metaworld`, which loads and checks the chain's artifacts and writes the outputs.

MetaWorld: per task (seen and unseen), up to `conditions` behaviour embeddings h of successful rollouts of
that task's checkpoints that no stage trained on (seen tasks: the autoencoder's held-out checkpoints; unseen
tasks: all), rolled out here on stage 0's goal configurations (stage 0 records one rollout per checkpoint, too
few); one HypLatent and one HypFormer policy per embedding, each run on `goals` fixed evaluation goal
configurations (`set_task`, never `reset(seed=)`), success at any step; policy j of a task runs on goals
j*goals, j*goals + 1, ... (cyclically) of the task's list of `single_goals`, so that every method is scored
over the same goals. Baselines in the same run: the shared parent on every task; on seen tasks the best
stage-0 checkpoint (`expert`) and its autoencoder round trip (`decoded-expert`), and every stage-0 checkpoint
(`checkpoints`, the data stages 1-3 learn from) with its round trip (`decoded-checkpoints`): they tell which
stage loses success; on unseen tasks the task's own stage-0 checkpoints (`checkpoints`, SAC on the task
itself, which no stage trained on): the oracle. Top-k: the mean success of the k best policies of a task, the
k picked on `select_goals` other goal configurations that are never scored (the paper's way, picked on the
scored episodes, is reported too, marked optimistic). The envs are spread over `--jobs` processes, each
stepping its share in lockstep; an episode stops once its success (and, for a conditioning rollout, its
recorded features) is decided.
"""

from __future__ import annotations

import time
from pathlib import Path
import numpy as np
import torch

import artifacts
import common
from methods import MW_METHODS, MW_ROWS, PAPER_SEEN, PAPER_SUMMARY, PAPER_UNSEEN, SINGLE
from stage1_behavior_embed import embed_trajectories
from stage2_hyplatent import decode_generated
from stage3_hypformer import sample_latents

def top_k(rates: np.ndarray, k: int, select: np.ndarray | None = None) -> float:
    """Mean success rate of the k best policies (all of them if there are fewer than k). Honest: `select`
    holds each policy's success on other goal configurations, which pick the k (ties: the earlier policy);
    without it, the k are picked on the scored rates themselves, as the paper does (optimistic)."""
    rates = np.asarray(rates, dtype=float)
    order = np.argsort(-(rates if select is None else np.asarray(select, dtype=float)), kind="stable")
    return float(rates[order[:k]].mean())


MAX_ENVS = 128  # metaworld envs alive at once per process (1,600 at once ran out of 24 GiB)


def run_episodes(params: torch.Tensor, jobs: list, workers: int, record: bool = False, desc: str = "") -> dict:
    """Policy i on MetaWorld episode jobs[i] = (task, goal_seed, goal_index), in lockstep chunks of at most
    MAX_ENVS episodes spread over `workers` processes (a progress bar named `desc` unless empty). Returns
    run_lockstep's arrays (with `record`, the MAA rollout features too). Episodes stop once their success
    (and features) are decided (`run_lockstep(stop_when_decided=True)`): returns are of those episodes."""
    workers = max(1, workers)
    n_chunks = workers * -(-len(jobs) // (workers * MAX_ENVS))  # a multiple of workers, each <= MAX_ENVS
    chunks = [c for c in np.array_split(np.arange(len(jobs)), n_chunks) if len(c)]
    args = [(params[c], [jobs[i] for i in c], record) for c in chunks]
    from tqdm import tqdm

    bar = dict(total=len(chunks), desc=f"{desc}: {len(jobs)} episodes", unit="chunk", disable=not desc)
    if workers == 1 or len(chunks) == 1:
        out = [_lockstep_chunk(*a) for a in tqdm(args, **bar)]
    else:
        with common.process_pool(workers) as pool:
            out = list(tqdm(pool.map(_lockstep_chunk, *zip(*args)), **bar))
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def _lockstep_chunk(params: torch.Tensor, jobs: list, record: bool) -> dict:
    torch.set_num_threads(1)
    envs = [common.make_eval_env("metaworld", t, episode=i, goal_seed=s) for t, s, i in jobs]
    return common.run_lockstep(params, envs, common.suite_spec("metaworld"), record=record, stop_when_decided=True)


def conditioning_rollouts(shards: dict, unused: dict, phi, be: dict, workers: int, conditions: int,
                          success_only: bool, progress: bool) -> dict:
    """Per task, up to `conditions` behaviour embeddings h of rollouts no stage trained on: the task's
    checkpoints that no stage trained on (`unused`: the autoencoder's hold-out on seen tasks, all of them on
    unseen tasks) run on stage 0's goal configurations, rollout k being checkpoint k mod n on goal k // n.
    With `success_only`, only successful rollouts count, and a task short of `conditions` after one round of
    `conditions` rollouts gets a second round. Returns {task: {"h", "step", "goal", "attempts", "successes"}}."""
    out = {t: {"h": [], "step": [], "goal": [], "attempts": 0, "successes": 0} for t in unused}
    t0 = time.time()
    for rnd in range(2 if success_only else 1):
        params, jobs, meta = [], [], []
        for t, rows in unused.items():
            s, got = shards[t], len(out[t]["h"])
            if got >= conditions or len(rows) == 0:
                continue
            ok = rows[s["success"][rows] > 0] if success_only else rows
            rows = ok if len(ok) else rows  # prefer checkpoints whose own stage-0 rollout succeeded
            seed = s["settings"]["seed"] + 1  # stage 0's checkpoint-rollout goals (stage0_collect_sac.goal_seeds)
            n_goals = len(common.metaworld_goals(t, seed))
            for k in range(rnd * conditions, (rnd + 1) * conditions):
                c, goal = int(rows[k % len(rows)]), (k // len(rows)) % n_goals
                params.append(s["params"][c]), jobs.append((t, seed, goal)), meta.append((t, c, goal))
        if not jobs:
            break
        r = run_episodes(torch.stack(params).float(), jobs, workers, record=True,
                         desc=f"conditioning rollouts, round {rnd + 1}" if progress else "")
        h = embed_trajectories(phi, be, torch.from_numpy(r["traj"]))
        for i, (t, c, goal) in enumerate(meta):
            o = out[t]
            o["attempts"] += 1
            o["successes"] += int(r["success"][i] > 0)
            if (r["success"][i] > 0 or not success_only) and len(o["h"]) < conditions:
                o["h"].append(h[i]), o["step"].append(int(shards[t]["step"][c])), o["goal"].append(goal)
    print(f"conditioning rollouts: {sum(o['attempts'] for o in out.values())} episodes in {time.time() - t0:.0f}s")
    return out


@torch.no_grad()
def generate_metaworld(chain: dict, workers: int, conditions: int, success_only: bool, seed: int, baselines: bool,
                       goals: int, select_goals: int, single_policy_goals: int, progress: bool, config: dict) -> dict:
    """Every policy to evaluate on MetaWorld: one HypLatent and one HypFormer policy per conditioning
    embedding of each task, and (with `baselines`) the expert, checkpoints, their round trips and the parent."""
    spec = common.suite_spec("metaworld")
    ae, ae_art, G, hl_art, hf, be = (chain[k] for k in ("ae", "ae_art", "G", "hl_art", "hf", "be"))
    shards = {s["task"]: s for s in chain["shards"]}
    decode = lambda zn: decode_generated(zn, hl_art, ae)  # noqa: E731
    first = np.cumsum([0] + [len(s["step"]) for s in shards.values()])
    unused = {t: (~ae_art["train"][first[i]:first[i + 1]]).nonzero().squeeze(1) for i, t in enumerate(shards)}
    cond = conditioning_rollouts(shards, unused, chain["phi"], be, workers, conditions, success_only, progress)
    g = torch.Generator().manual_seed(seed)
    params, method, task = [], [], []
    for name in shards:
        h = cond[name]["h"]
        if h:
            c = (torch.stack(h) - hl_art["cond_mean"]) / hl_art["cond_std"]
            z_hl = G(c, torch.randn(len(c), G.noise_dim, generator=g))
            z_pred, grad_pred = hf(sample_latents(G, c, chain["hf_art"]["num_tokens"], generator=g), c)
            for m, p in (("hyplatent", decode(z_hl)), ("hypformer", decode(z_pred + grad_pred))):
                params.append(p), method.extend([m] * len(p)), task.extend([name] * len(p))
        if not baselines:
            continue
        s = shards[name]
        if name in be["train_tasks"]:
            best = s["params"][int(torch.argmax(s["success"] * 1e6 + s["return"]))][None]  # most successful, then best return
            for m, p in (("expert", best), ("decoded-expert", ae.decode(ae.encode(best))),
                         ("checkpoints", s["params"]), ("decoded-checkpoints", ae.decode(ae.encode(s["params"])))):
                params.append(p), method.extend([m] * len(p)), task.extend([name] * len(p))
        else:  # the oracle bound of zero-shot: the unseen task's own SAC checkpoints (no stage trained on them)
            params.append(s["params"]), method.extend(["checkpoints"] * len(s["params"])), task.extend([name] * len(s["params"]))
        params.append(chain["parent"]["params"][None]), method.append("parent"), task.append(name)
    return {"format": artifacts.GENERATED_FORMAT, "suite": "metaworld", "policy": spec, "params": torch.cat(params).float(),
            "method": method, "task": task, "seen": list(be["train_tasks"]), "goals": goals,
            "select_goals": select_goals, "single_policy_goals": single_policy_goals,
            "n_conditions": {t: len(c["h"]) for t, c in cond.items()},
            "conditioning": {t: {"checkpoint_step": c["step"], "goal": c["goal"], "attempts": c["attempts"],
                                 "successes": c["successes"]} for t, c in cond.items()},
            "made_from": chain["made_from"], "config": config}


def evaluate_metaworld(generated: dict, goals: int, select_goals: int, workers: int,
                       progress: bool = True, single_goals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Success of every policy on every evaluation goal configuration [N, G], and of every generated
    policy on every top-k selection goal configuration [N, select_goals] (NaN for the baselines, which
    top-k never ranks); one lockstep run for both. A one-policy-per-task baseline (`SINGLE`) runs on
    `single_goals` evaluation goals, every other policy on `goals` of them; G is the larger, and the goals a
    policy did not run on are NaN (all from the same fixed list of G; policy j of a method and task on goals
    j*goals ... mod G, so each method's policies cover the list)."""
    n = len(generated["method"])
    n_goals = [(single_goals or goals) if m in SINGLE else goals for m in generated["method"]]
    ranked = [i for i in range(n) if generated["method"][i] in ("hyplatent", "hypformer")]
    width = max(goals, single_goals or goals)  # the task's list of evaluation goals (with or without baselines)
    # Policy j of a (method, task) group runs on goals j*g ... j*g + g - 1 (mod width), so that the policies
    # of one method cover the same list as a one-policy baseline, which runs on all of it; with one fixed
    # pair of goals shared by all policies, the pair's difficulty would never average out, and the methods
    # would be scored on different goals. The HypLatent and HypFormer policies of one condition share goals.
    j, count = [], {}
    for key in zip(generated["method"], generated["task"]):
        j.append(count.get(key, 0))
        count[key] = j[-1] + 1
    runs = [(i, (j[i] * n_goals[i] + e) % width) for e in range(width) for i in range(n) if e < n_goals[i]]
    jobs = [(generated["task"][i], common.EVAL_GOAL_SEED, e) for i, e in runs]
    jobs += [(generated["task"][i], common.SELECT_GOAL_SEED, e) for e in range(select_goals) for i in ranked]
    order = [i for i, _ in runs] + [i for _ in range(select_goals) for i in ranked]
    out = run_episodes(generated["params"][order], jobs, workers, desc="evaluation" if progress else "")
    success = np.full((n, width), np.nan)
    success[tuple(np.array(runs).T)] = out["success"][:len(runs)]
    select = np.full((n, select_goals), np.nan)
    select[ranked] = out["success"][len(runs):].reshape(select_goals, len(ranked)).T
    return success, select


def metaworld_rows(generated: dict, success: np.ndarray, select: np.ndarray) -> list[dict]:
    """Rows per task and method (success % on the evaluation goals), top-k both ways, split averages."""
    method, task = np.array(generated["method"]), np.array(generated["task"])
    rate, select_rate = np.nanmean(success, 1), select.mean(1)  # per policy, over its goal configurations
    n_eps = np.isfinite(success).sum(1)  # evaluation episodes per policy
    rows, per = [], {}
    for name in dict.fromkeys(generated["task"]):
        for m in MW_METHODS:
            sel = (method == m) & (task == name)
            if sel.any():
                per[(m, name)] = rate[sel]
                rows.append({"method": m, "task": name, "score": 100 * float(rate[sel].mean()),
                             "n_policies": int(sel.sum()), "n_episodes": int(n_eps[sel].max())})
                if m in ("hyplatent", "hypformer"):
                    for k in (5, 10):
                        rows.append({"method": f"{m}@top{k}", "task": name, "n_policies": min(k, int(sel.sum())),
                                     "score": 100 * top_k(rate[sel], k, select_rate[sel]), "n_episodes": int(n_eps[sel].max())})
                        rows.append({"method": f"{m}@top{k}-optimistic", "task": name, "n_policies": min(k, int(sel.sum())),
                                     "score": 100 * top_k(rate[sel], k), "n_episodes": int(n_eps[sel].max())})
    for split, names in (("seen", [t for t in dict.fromkeys(generated["task"]) if t in generated["seen"]]),
                         ("unseen", [t for t in dict.fromkeys(generated["task"]) if t not in generated["seen"]])):
        for m in MW_ROWS:
            scores = [r["score"] for r in rows if r["method"] == m and r["task"] in names]
            if scores:
                rows.append({"method": m, "task": f"average-{split}", "score": float(np.mean(scores)),
                             "n_policies": sum(r["n_policies"] for r in rows if r["method"] == m and r["task"] in names),
                             "n_episodes": max(r["n_episodes"] for r in rows if r["method"] == m and r["task"] in names)})
    for name, seen, unseen in PAPER_SUMMARY:
        rows.append({"method": f"paper:{name}", "task": "average-seen", "score": seen, "n_policies": 0, "n_episodes": 0})
        rows.append({"method": f"paper:{name}", "task": "average-unseen", "score": unseen, "n_policies": 0,
                     "n_episodes": 0})
    return rows


def conditions_cell(generated: dict, t: str) -> str:
    """`n (s/a)`: n conditioning embeddings used, from s successful of a conditioning rollouts."""
    if t.startswith("average"):
        return ""
    c = generated.get("conditioning", {}).get(t)
    return f"{generated['n_conditions'][t]} ({c['successes']}/{c['attempts']})" if c else str(generated["n_conditions"].get(t, ""))


def metaworld_tables(rows: list[dict], generated: dict) -> str:
    by = {(r["method"], r["task"]): r["score"] for r in rows}
    f = lambda m, t: f"{by[(m, t)]:.1f}" if (m, t) in by else "-"  # noqa: E731
    out = []
    for title, paper, split in (("Table I: seen tasks (MTRL), success rate %", PAPER_SEEN, "seen"),
                                ("Table III: unseen tasks (zero-shot), success rate %", PAPER_UNSEEN, "unseen")):
        names = [t for t in dict.fromkeys(generated["task"]) if (t in generated["seen"]) == (split == "seen")]
        if not names:
            continue
        head = "| task | conditions | HypLatent | HypFormer | " + \
            ("expert | decoded expert | all checkpoints | decoded checkpoints | " if split == "seen" else
             "own checkpoints (oracle) | ") + "parent | MAA (paper) | w/o HypFormer (paper) | w/ HypFormer (paper) |"
        out += [f"**{title}** (measured; paper columns as printed)", "", head, "|" + "---|" * (head.count("|") - 1)]
        for t in names + [f"average-{split}"]:
            p = paper.get(t if not t.startswith("average") else "average", ("-", "-", "-"))
            cells = [conditions_cell(generated, t), f("hyplatent", t), f("hypformer", t)]
            cells += [f(m, t) for m in (("expert", "decoded-expert", "checkpoints", "decoded-checkpoints")
                                        if split == "seen" else ("checkpoints",))]
            cells += [f("parent", t), *map(str, p)]
            out.append(f"| {t} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["**Table II: summary, success rate %**", "", "| method | seen | unseen |", "|---|---|---|"]
    top = [(f"{m}@top{k}{o}", f"{label} (top {k}, {how})") for k in (10, 5)
           for m, label in (("hyplatent", "AMT-Hyp w/o HypFormer"), ("hypformer", "AMT-Hyp"))
           for o, how in (("", "picked on other goals"), ("-optimistic", "picked on the scored episodes: optimistic, "
                                                                         "the paper's way"))]
    for m, label in (("hyplatent", "AMT-Hyp w/o HypFormer"), ("hypformer", "AMT-Hyp"), *top,
                     ("parent", "parent (shared BC parent)"), ("expert", "expert (best stage-0 checkpoint)"),
                     ("decoded-expert", "decoded expert (its autoencoder round trip)"),
                     ("checkpoints", "all stage-0 checkpoints of the task (seen: the training data; unseen: the "
                                      "oracle, SAC on the task itself, which no stage trained on)"),
                     ("decoded-checkpoints", "their autoencoder round trips")):
        out.append(f"| {label} (measured) | {f(m, 'average-seen')} | {f(m, 'average-unseen')} |")
    for name, seen, unseen in PAPER_SUMMARY:
        out.append(f"| {name} (printed in the paper) | {seen} | {unseen} |")
    return "\n".join(out)


@torch.no_grad()
def pca_figure(ae, ae_art: dict, generated: dict, path: Path) -> None:
    """Fig. 4: per seen task, 2-D PCA of ground-truth latents (all of the task's stage-0 checkpoints)
    against generated ones (HypLatent, HypFormer; the evaluated parameters encoded again); the axes are fit
    on both sets of that panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in generated["seen"] if t in dict.fromkeys(generated["task"])]
    if not tasks:
        return
    method, task = np.array(generated["method"]), np.array(generated["task"])
    fig, axes = plt.subplots(len(tasks), 2, figsize=(8, 2.8 * len(tasks)), squeeze=False)
    for row, t in enumerate(tasks):
        gt = ae_art["latents"][ae_art["task_index"] == ae_art["tasks"].index(t)].flatten(1)
        for col, m in enumerate(("hyplatent", "hypformer")):
            sel = torch.as_tensor((method == m) & (task == t))
            z = ae.encode(generated["params"][sel]).flatten(1) if sel.any() else torch.zeros(0, gt.shape[1])
            both = torch.cat([gt, z])
            mean = both.mean(0)
            _, _, v = torch.pca_lowrank(both - mean, q=2, center=False)
            p_gt, p_z = (gt - mean) @ v, (z - mean) @ v
            ax = axes[row][col]
            ax.scatter(p_gt[:, 0], p_gt[:, 1], s=10, c="tab:blue", label="ground truth")
            ax.scatter(p_z[:, 0], p_z[:, 1], s=10, c="tab:red", label=m)
            ax.set_title(f"{t}: {m}", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
