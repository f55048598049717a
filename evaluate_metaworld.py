"""Evaluation, MetaWorld half (paper Sec. V-A, Tables I-III and Fig. 4; DESIGN.md section 8): called by
`evaluate.py --suite metaworld`, which loads and checks the chain's artifacts and writes the outputs.

MetaWorld: per task (seen and unseen), up to `conditions` behaviour embeddings h of successful rollouts of
that task's checkpoints that no stage trained on (seen tasks: the autoencoder's held-out checkpoints; unseen
tasks: all), rolled out here on stage 0's goal configurations (stage 0 records one rollout per checkpoint, too
few); one HypLatent and one HypFormer policy per embedding, each run on at least `goals` of the task's
fixed list of evaluation goal configurations (`set_task`, never `reset(seed=)`; `first_pass_goals`), success
at any step. Baselines in the same run: the shared parent on every task; on seen tasks the best
stage-0 checkpoint (`expert`) and its autoencoder round trip (`decoded-expert`), and every stage-0 checkpoint
(`checkpoints`, the data stages 1-3 learn from) with its round trip (`decoded-checkpoints`): they tell which
stage loses success; on unseen tasks the task's own stage-0 checkpoints (`checkpoints`, SAC on the task
itself, which no stage trained on): the oracle. The conditioned-policy baselines (DESIGN.md section 15) get the
same conditions: MT-BC one policy per embedding, Prompt-DT one episode per embedding and goal, prompted with
the end of that embedding's rollout (`prompt_dt_success`). Every row weighs each of the task's evaluation goals equally
(`goal_balanced`). Top-k: the k best policies of a task, picked on `select_goals` other goal configurations
that are never scored, each at least SELECT_MIN_DISTANCE from every scored one (`selection_goals`; ties
broken at random with the evaluation's seed), then run on the whole goal list.
(The paper picks and scores on the same episodes, which rewards the luck of the scored episodes.) The envs are spread over `--jobs` processes, each
stepping its share in lockstep; an episode stops once its success (and, for a conditioning rollout, its
recorded features) is decided.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
import numpy as np
import torch

import artifacts
import common
from latents import decode_generated
from baselines.mt_bc import fold_condition
from baselines.care import run_care
from baselines.prompt_dt import prompt_segment, run_prompted
from methods import CONDITIONED, GENERATORS, MW_METHODS, MW_ROWS, PAPER_SEEN, PAPER_SUMMARY, PAPER_UNSEEN, SINGLE
from offline_data import record_episodes, returns_to_go
from stage1_behavior_embed import embed_trajectories
from stage2_diffusion import diffusion_sample
from stage3_hypformer import sample_latents

TOP_K = (5, 10)  # the paper's top-k rows
# Top-k's selection goals lie at least this far (metres) from every scored goal of their task, Euclidean, on
# the vector `set_task` fixes (common.metaworld_goal_vectors: the object's position, or the object's and the
# goal's). The first goals of the selection seed came as close as 0.04 mm (window-close: 4 of 5 within 0.9 mm).
# 1 cm cannot be met at quick scale: window-close randomises a 15 cm line, and no point of it lies more than
# 1.05 cm from its 20 scored goals (0.7% of it at 1 cm or more, 15% at 5 mm); drawer-open/-close's 20 cm line:
# 7% at 1 cm, 34% at 5 mm; every other task has over 70% of its box at 5 mm. So selection goals stay within
# about a centimetre of a scored goal on such tasks, whatever this is: a 1-d box holds no goal far from 20.
SELECT_MIN_DISTANCE = 0.005


def pick_top(select_rate: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the k policies with the best rate on the selection goals, best first (all of them if
    fewer than k). Ties are broken at random (`rng`, seeded by the evaluation), never by a policy's index:
    on a seen task most policies tie at 100%."""
    shuffled = rng.permutation(len(select_rate))
    return shuffled[np.argsort(-np.asarray(select_rate, dtype=float)[shuffled], kind="stable")][:k]


def goal_balanced(rows: np.ndarray) -> tuple[float, np.ndarray]:
    """Score of a group of policies from their success [n, G] on a task's G evaluation goals (NaN where a
    policy did not run): the mean over goals of the mean success of the policies that ran on each goal.
    Every goal then weighs 1/G in every row of a table, whatever the number of policies. Returns the
    score and the weight of each goal (the sum of its episodes' weights)."""
    ran = np.isfinite(rows)
    if not ran.any(0).all():
        raise ValueError(f"goals {np.flatnonzero(~ran.any(0)).tolist()} were run by no policy of the group")
    weight = ran / ran.sum(0, keepdims=True) / rows.shape[1]  # each episode's weight in the score
    return float(np.nansum(weight * rows)), weight.sum(0)


MAX_ENVS = 128  # metaworld envs alive at once per process (each holds a simulator: this bounds a process's memory)
APART = ("prompt-dt", "care")  # rows without flat parameters: their episodes run in their own lockstep


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
        with artifacts.process_pool(workers, torch.set_num_threads, (1,)) as pool:  # one thread per worker
            out = list(tqdm(pool.map(_lockstep_chunk, *zip(*args)), **bar))
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def _lockstep_chunk(params: torch.Tensor, jobs: list, record: bool) -> dict:
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


@functools.lru_cache(maxsize=None)
def _task_selection_goals(task: str, n: int, width: int) -> tuple[tuple[tuple[int, int], ...], float]:
    scored = common.metaworld_goal_vectors(task, common.EVAL_GOAL_SEED)[:width]
    kept, dist = [], []
    for seed in common.SELECT_GOAL_SEEDS:
        d = np.linalg.norm(common.metaworld_goal_vectors(task, seed)[:, None] - scored[None], axis=-1).min(1)
        for e in np.flatnonzero(d >= SELECT_MIN_DISTANCE)[:n - len(kept)]:
            kept.append((seed, int(e))), dist.append(float(d[e]))
        if len(kept) == n:
            return tuple(kept), min(dist)
    raise SystemExit(f"error: {task}: only {len(kept)} of {n} top-k selection goals lie {SELECT_MIN_DISTANCE} m or "
                     f"more from each of its {width} scored goals among {len(common.SELECT_GOAL_SEEDS) * common.MW_GOALS} "
                     "candidates; lower --select-goals or --single-policy-goals")


def selection_goals(tasks, n: int, width: int) -> dict:
    """Top-k's `n` selection goals of each task: the first candidates (goals 0..49 of each seed of
    common.SELECT_GOAL_SEEDS, in order) at least SELECT_MIN_DISTANCE from each of the task's `width` scored
    goals (goals 0..width-1 of common.EVAL_GOAL_SEED, unchanged); deterministic. Returns
    {"select_goal_ids": {task: [[seed, goal], ...]}, "select_goal_min_distance": {task: metres to the nearest
    scored goal}}; a task without n such goals among the candidates stops the evaluation with one line."""
    out = {t: _task_selection_goals(t, n, width) for t in tasks}
    return {"select_goal_ids": {t: [list(g) for g in ids] for t, (ids, _) in out.items()},
            "select_goal_min_distance": {t: d for t, (_, d) in out.items()}}


def selection_goal_table(generated: dict) -> str:
    """One line per task: its selection goals' distance to the nearest scored goal, and which they are."""
    n = len(next(iter(generated["select_goal_ids"].values()), []))
    lines = [f"Top-k selection goals ({n} per task, each >= {SELECT_MIN_DISTANCE} m from "
             f"every scored goal; distance on the object/goal position vector set_task fixes):"]
    for t, d in generated["select_goal_min_distance"].items():
        ids = " ".join(f"{s}:{e}" for s, e in generated["select_goal_ids"][t])
        lines.append(f"  {t:<22} min distance to a scored goal {d:.4f} m  (seed:goal {ids})")
    return "\n".join(lines)


@torch.no_grad()
def generate_metaworld(chain: dict, workers: int, conditions: int, success_only: bool, seed: int, baselines: bool,
                       goals: int, select_goals: int, single_policy_goals: int, progress: bool, config: dict) -> dict:
    """Every policy to evaluate on MetaWorld: one HypLatent, HypFormer, MAA and MT-BC policy per conditioning
    embedding of each task, one Prompt-DT entry per embedding (no parameters: `prompt_dt_success` runs its
    episodes, prompted with that embedding's rollout), and (with `baselines`) the expert, checkpoints, their
    round trips and the parent."""
    spec = common.suite_spec("metaworld")
    ae, ae_art, G, hl_art, hf, be = (chain[k] for k in ("ae", "ae_art", "G", "hl_art", "hf", "be"))
    shards = {s["task"]: s for s in chain["shards"]}
    # before any rollout: a task without enough selection goals far from its scored ones stops here
    select = selection_goals(shards, select_goals, max(goals, single_policy_goals))
    decode = lambda zn: decode_generated(zn, hl_art, ae)  # noqa: E731
    first = np.cumsum([0] + [len(s["step"]) for s in shards.values()])
    unused = {t: (~ae_art["train"][first[i]:first[i + 1]]).nonzero().squeeze(1) for i, t in enumerate(shards)}
    cond = conditioning_rollouts(shards, unused, chain["phi"], be, workers, conditions, success_only, progress)
    # each generator its own noise stream: HypLatent's policies do not depend on HypFormer's L, nor either on MAA
    g_hl, g_hf, g_maa = (torch.Generator().manual_seed(s) for s in (seed, seed + 1, seed))
    params, method, task, care_cond = [], [], [], {}
    for name in shards:
        h = cond[name]["h"]
        if h:
            c = (torch.stack(h) - hl_art["cond_mean"]) / hl_art["cond_std"]
            z_hl = G(c, torch.randn(len(c), G.noise_dim, generator=g_hl))
            z_pred, grad_pred = hf(sample_latents(G, c, chain["hf_art"]["num_tokens"], generator=g_hf), c)
            generated = [("hyplatent", decode(z_hl)), ("hypformer", decode(z_pred + grad_pred))]
            if chain.get("maa") is not None:  # the same conditions, raw (its artifact standardises them)
                z = diffusion_sample(chain["maa"], chain["maa_art"], torch.stack(h), generator=g_maa)
                generated.append(("maa", decode_generated(z, chain["maa_art"], ae)))
            if baselines and chain.get("mt_bc") is not None:  # one deterministic policy per condition, the condition as input
                generated.append(("mt-bc", fold_condition(chain["mt_bc"], torch.stack(h))))
            if baselines and chain.get("prompt_dt") is not None:  # no parameters: its episodes run apart (prompt_dt_success)
                generated.append(("prompt-dt", torch.zeros(len(h), common.num_params(spec))))
            if baselines and chain.get("care") is not None:  # one CARE policy per condition, run apart (care_success)
                generated.append(("care", torch.zeros(len(h), common.num_params(spec))))
                care_cond[name] = torch.stack(h)
            for m, p in generated:
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
        if chain["parent"] is not None:  # independent experts (stage 0's --experts independent) have none
            params.append(chain["parent"]["params"][None]), method.append("parent"), task.append(name)
    if not params:  # --no-baselines, and no task got a conditioning embedding
        raise SystemExit("error: no task got a conditioning rollout" + (" that succeeded (try --no-success-only)"
                         if success_only else "") + ": no policy to generate or evaluate")
    return {"format": artifacts.GENERATED_FORMAT, "suite": "metaworld", "policy": spec, "params": torch.cat(params).float(),
            "method": method, "task": task, "seen": list(be["train_tasks"]), "goals": goals,
            "select_goals": select_goals, "single_policy_goals": single_policy_goals, "tie_seed": seed,
            "n_conditions": {t: len(c["h"]) for t, c in cond.items()},
            "conditioning": {t: {"checkpoint_step": c["step"], "goal": c["goal"], "attempts": c["attempts"],
                                 "successes": c["successes"]} for t, c in cond.items()},
            "made_from": chain["made_from"], "config": config, **select,
            **({"care_cond": care_cond} if care_cond else {})}


def first_pass_goals(generated: dict, goals: int, width: int, single_goals: int) -> list[tuple[int, int]]:
    """(policy, goal) pairs of the first evaluation pass. A one-policy baseline (`SINGLE`) runs on the
    task's first `single_goals` of its `width` goals; policy j of any other (method, task) group of n
    policies on goals j*g ... j*g + g - 1 (mod width), g = max(goals, ceil(width / n)): the group covers the
    whole list (a fixed pair shared by all policies would never average its difficulty out), and the
    HypLatent and HypFormer policies of one condition share goals."""
    method, task = generated["method"], generated["task"]
    size = {key: 0 for key in zip(method, task)}
    for key in zip(method, task):
        size[key] += 1
    j, seen = [], {}
    for key in zip(method, task):
        j.append(seen.get(key, 0))
        seen[key] = j[-1] + 1
    pairs = []
    for i, key in enumerate(zip(method, task)):
        if key[0] in SINGLE:
            pairs += [(i, e) for e in range(single_goals)]
        else:
            g = max(goals, -(-width // size[key]))
            pairs += [(i, (j[i] * g + e) % width) for e in range(min(g, width))]
    return pairs


def prompt_dt_success(chain: dict, generated: dict, pairs: list[tuple[int, int]], progress: bool) -> np.ndarray:
    """Success of Prompt-DT's episodes (policy i of `generated`, a "prompt-dt" placeholder, on evaluation goal e,
    for each (i, e) of `pairs`): the j-th Prompt-DT entry of a task is prompted with its j-th conditioning
    rollout (the rollout whose behaviour embedding HypLatent's j-th policy reads, run again: the last steps of
    it), and given that rollout's return as its target."""
    model, art = chain["prompt_dt"], chain["prompt_dt_art"]
    shards, s = {sh["task"]: sh for sh in chain["shards"]}, art["settings"]
    rank, seen = {}, {}
    for i, (m, t) in enumerate(zip(generated["method"], generated["task"])):
        if m == "prompt-dt":
            rank[i], seen[t] = seen.get(t, 0), seen.get(t, 0) + 1
    need = sorted({i for i, _ in pairs})
    demo_params, demo_envs = [], []
    for i in need:  # the conditioning rollout of entry i, again (deterministic: the same episode)
        t = generated["task"][i]
        c = generated["conditioning"][t]
        row = int((shards[t]["step"] == c["checkpoint_step"][rank[i]]).nonzero()[0, 0])
        demo_params.append(shards[t]["params"][row])
        demo_envs.append((t, c["goal"][rank[i]], shards[t]["settings"]["seed"] + 1))  # the conditioning's goals
    demo_params = torch.stack(demo_params).float()
    parts = [record_episodes(demo_params[a : a + MAX_ENVS], [common.make_eval_env("metaworld", t, g, goal_seed=gs)
                                                             for t, g, gs in demo_envs[a : a + MAX_ENVS]],
                             art["policy"], common.MW_STEPS)
             for a in range(0, len(need), MAX_ENVS)]  # at most MAX_ENVS simulators alive
    demo = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    prompt, target = {}, {}
    for j, i in enumerate(need):
        ep = {"obs": torch.from_numpy(demo["obs"][j]), "act": torch.from_numpy(demo["act"][j]),
              "rtg": returns_to_go(torch.from_numpy(demo["rew"][j]))}
        prompt[i] = prompt_segment(ep, s["prompt_length"], s["return_scale"], art["obs_mean"], art["obs_std"])
        target[i] = float(demo["rew"][j].sum())
    out = []
    for a in range(0, len(pairs), MAX_ENVS):
        part = pairs[a : a + MAX_ENVS]
        envs = [common.make_eval_env("metaworld", generated["task"][i], episode=e) for i, e in part]
        out.append(run_prompted(model, art, envs, [prompt[i] for i, _ in part], [target[i] for i, _ in part],
                                common.MW_STEPS, stop_on_success=True)["success"])
        if progress:
            print(f"Prompt-DT: {a + len(part)}/{len(pairs)} episodes", flush=True)
    return np.concatenate(out)


def care_success(chain: dict, generated: dict, pairs: list[tuple[int, int]], progress: bool) -> np.ndarray:
    """Success of CARE's episodes (policy i of `generated`, a "care" placeholder, on evaluation goal e, for each
    (i, e) of `pairs`): the j-th CARE entry of a task acts with the task's j-th conditioning embedding as its
    context, the one HypLatent's j-th policy reads."""
    rank, seen = {}, {}
    for i, (m, t) in enumerate(zip(generated["method"], generated["task"])):
        if m == "care":
            rank[i], seen[t] = seen.get(t, 0), seen.get(t, 0) + 1
    out = []
    for a in range(0, len(pairs), MAX_ENVS):
        part = pairs[a : a + MAX_ENVS]
        envs = [common.make_eval_env("metaworld", generated["task"][i], episode=e) for i, e in part]
        cond = torch.stack([generated["care_cond"][generated["task"][i]][rank[i]] for i, _ in part])
        out.append(run_care(chain["care"], envs, cond, common.MW_STEPS))
        if progress:
            print(f"CARE: {a + len(part)}/{len(pairs)} episodes", flush=True)
    return np.concatenate(out)


def evaluate_metaworld(generated: dict, goals: int, select_goals: int, workers: int, progress: bool = True,
                       single_goals: int | None = None, tie_seed: int = 0,
                       apart: dict | None = None) -> tuple[np.ndarray, ...]:
    """Success of every policy on the task's evaluation goals [N, G] (NaN where it did not run), of every
    generated policy on the top-k selection goals [N, select_goals] (NaN for the baselines, which top-k
    never ranks), the top-k picks {(method, task): policy indices, best first}, and which episodes are of
    the first pass [N, G] (the rows of all policies are scored on those alone). Two lockstep passes:
    every policy on its first-pass goals (`first_pass_goals`) and the generated ones on the selection
    goals; then the max(TOP_K) picked policies of each group on the rest of the list, so top-k is scored
    on the same goals as every other row. The selection goals are those `generated` records
    (`selection_goals`, printed); one made before they were recorded used goals 0.. of SELECT_GOAL_SEED.
    Prompt-DT's and CARE's entries (no parameters) run their first-pass episodes through `apart[method]`
    (pairs -> success)."""
    n, width = len(generated["method"]), max(goals, single_goals or goals)
    ranked = [i for i in range(n) if generated["method"][i] in GENERATORS]
    first = first_pass_goals(generated, goals, width, single_goals or goals)
    if "select_goal_ids" in generated:
        ids = {t: [tuple(g) for g in v] for t, v in generated["select_goal_ids"].items()}
        if any(len(v) != select_goals for v in ids.values()):
            raise ValueError(f"generated records {sorted({len(v) for v in ids.values()})} selection goals per task, "
                             f"not {select_goals}")
        print(selection_goal_table(generated))
    else:
        ids = {t: [(common.SELECT_GOAL_SEED, e) for e in range(select_goals)] for t in generated["task"]}
    own = {m: [(i, e) for i, e in first if generated["method"][i] == m] for m in APART}
    first = [(i, e) for i, e in first if generated["method"][i] not in APART]
    jobs = [(generated["task"][i], common.EVAL_GOAL_SEED, e) for i, e in first]
    jobs += [(generated["task"][i], *ids[generated["task"][i]][e]) for e in range(select_goals) for i in ranked]
    order = [i for i, _ in first] + [i for _ in range(select_goals) for i in ranked]
    out = run_episodes(generated["params"][order], jobs, workers, desc="evaluation" if progress else "")
    success = np.full((n, width), np.nan)
    success[tuple(np.array(first).T)] = out["success"][:len(first)]
    for m, pairs in own.items():
        if pairs:
            if m not in (apart or {}):
                raise SystemExit(f"error: {m}'s episodes need its model (re-evaluating a generated.pt runs the others only)")
            success[tuple(np.array(pairs).T)] = apart[m](pairs)
    select = np.full((n, select_goals), np.nan)
    select[ranked] = out["success"][len(first):].reshape(select_goals, len(ranked)).T

    first_pass = np.isfinite(success)
    picks, tasks = {}, list(dict.fromkeys(generated["task"]))
    for key in dict.fromkeys((generated["method"][i], generated["task"][i]) for i in ranked):
        idx = np.array([i for i in ranked if (generated["method"][i], generated["task"][i]) == key])
        rng = np.random.default_rng([tie_seed, GENERATORS.index(key[0]), tasks.index(key[1])])  # one per group
        picks[key] = idx[pick_top(select[idx].mean(1), max(TOP_K), rng)].tolist()
    rest = [(i, e) for key in picks for i in picks[key] for e in range(width) if np.isnan(success[i, e])]
    if rest:
        out = run_episodes(generated["params"][[i for i, _ in rest]],
                           [(generated["task"][i], common.EVAL_GOAL_SEED, e) for i, e in rest], workers,
                           desc="top-k picks on the whole goal list" if progress else "")
        success[tuple(np.array(rest).T)] = out["success"]
    return success, select, picks, first_pass


def metaworld_rows(generated: dict, success: np.ndarray, picks: dict, first_pass: np.ndarray | None = None) -> list[dict]:
    """Rows per task and method: success % on the evaluation goals, every goal weighed equally
    (`goal_balanced`; each row records its `goal_weights`), top-k of the generated methods on the whole goal
    list, and the split averages. A task on which the generated methods have no policy (no conditioning
    rollout succeeded) scores 0 for them, flagged `no_condition`: every method is averaged over the same
    tasks. The rows of all policies count the first pass only (`first_pass`; default: every episode), so
    the extra episodes of the top-k picks do not weigh them towards the picked policies."""
    method, task = np.array(generated["method"]), np.array(generated["task"])
    n_eps = np.isfinite(success).sum(1)  # evaluation episodes per policy, the picks' extra ones included
    first = success if first_pass is None else np.where(first_pass, success, np.nan)
    generating = [m for m in CONDITIONED if m in generated["method"]]  # one policy (or episode) per condition
    rows = []
    for name in dict.fromkeys(generated["task"]):
        for m in MW_METHODS:
            sel = (method == m) & (task == name)
            if not sel.any():
                if m in generating:  # no condition for this task: a failure, not a gap in the average
                    rows += [{"method": r, "task": name, "score": 0.0, "n_policies": 0, "n_episodes": 0,
                              "no_condition": True}
                             for r in (m, *(f"{m}@top{k}" for k in TOP_K if m in GENERATORS))]
                continue
            score, weights = goal_balanced(first[sel])
            rows.append({"method": m, "task": name, "score": 100 * score, "n_policies": int(sel.sum()),
                         "n_episodes": int(np.isfinite(first[sel]).sum()), "goal_weights": weights.tolist()})
            for k in TOP_K if m in GENERATORS else ():
                top = picks[(m, name)][:k]
                score, weights = goal_balanced(success[top])
                rows.append({"method": f"{m}@top{k}", "task": name, "score": 100 * score, "n_policies": len(top),
                             "n_episodes": int(n_eps[top].sum()), "goal_weights": weights.tolist(), "picked": top})
    for split, names in (("seen", [t for t in dict.fromkeys(generated["task"]) if t in generated["seen"]]),
                         ("unseen", [t for t in dict.fromkeys(generated["task"]) if t not in generated["seen"]])):
        for m in MW_ROWS:
            mine = [r for r in rows if r["method"] == m and r["task"] in names]
            if mine:
                rows.append({"method": m, "task": f"average-{split}", "score": float(np.mean([r["score"] for r in mine])),
                             "n_tasks": len(mine), "n_policies": sum(r["n_policies"] for r in mine),
                             "n_episodes": sum(r["n_episodes"] for r in mine)})
    for name, seen, unseen in PAPER_SUMMARY:
        rows.append({"method": f"paper:{name}", "task": "average-seen", "score": seen, "n_policies": 0, "n_episodes": 0})
        rows.append({"method": f"paper:{name}", "task": "average-unseen", "score": unseen, "n_policies": 0,
                     "n_episodes": 0})
    return rows


def goal_weights_table(rows: list[dict], name: str) -> str:
    """The weight of each evaluation goal in each row of task `name` (what the equal-weight rule checks)."""
    lines = [f"Goal weights of {name} (each row's score = sum over goals of weight x success on that goal):", ""]
    for r in rows:
        if r["task"] == name and "goal_weights" in r:
            w = np.asarray(r["goal_weights"])
            lines.append(f"- {r['method']}: {len(w)} goals, weights {w.min():.4f} to {w.max():.4f} "
                         f"({r['n_policies']} policies, {r['n_episodes']} episodes)")
    return "\n".join(lines)


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
        head = "| task | conditions | HypLatent | HypFormer | MAA | MT-BC | Prompt-DT | CARE | " + \
            ("expert | decoded expert | all checkpoints | decoded checkpoints | " if split == "seen" else
             "own checkpoints (oracle) | ") + "parent | MAA (paper) | w/o HypFormer (paper) | w/ HypFormer (paper) |"
        out += [f"**{title}** (measured; paper columns as printed)", "", head, "|" + "---|" * (head.count("|") - 1)]
        for t in names + [f"average-{split}"]:
            p = paper.get(t if not t.startswith("average") else "average", ("-", "-", "-"))
            cells = [conditions_cell(generated, t), *(f(m, t) for m in ("hyplatent", "hypformer", "maa", "mt-bc", "prompt-dt", "care"))]
            cells += [f(m, t) for m in (("expert", "decoded-expert", "checkpoints", "decoded-checkpoints")
                                        if split == "seen" else ("checkpoints",))]
            cells += [f("parent", t), *map(str, p)]
            out.append(f"| {t} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["**Table II: summary, success rate %**", "", "| method | seen | unseen |", "|---|---|---|"]
    top = [(f"{m}@top{k}", f"{label} (top {k}, picked on other goals)") for k in (10, 5)
           for m, label in (("hyplatent", "AMT-Hyp w/o HypFormer"), ("hypformer", "AMT-Hyp"), ("maa", "MAA"))]
    for m, label in (("hyplatent", "AMT-Hyp w/o HypFormer"), ("hypformer", "AMT-Hyp"),
                     ("maa", "MAA (diffusion on the same latents and conditions)"), *top,
                     ("mt-bc", "MT-BC (one policy, the behaviour embedding as input; no top-k: no noise to sample)"),
                     ("prompt-dt", "Prompt-DT (prompted with the conditioning rollout; no top-k)"),
                     ("care", "CARE (one multi-task SAC policy trained online on the seen tasks; context: the "
                              "behaviour embedding; no top-k)"),
                     ("parent", "parent (shared BC parent)"), ("expert", "expert (best stage-0 checkpoint)"),
                     ("decoded-expert", "decoded expert (its autoencoder round trip)"),
                     ("checkpoints", "all stage-0 checkpoints of the task (seen: the training data; unseen: the "
                                      "oracle, SAC on the task itself, which no stage trained on)"),
                     ("decoded-checkpoints", "their autoencoder round trips")):
        out.append(f"| {label} (measured) | {f(m, 'average-seen')} | {f(m, 'average-unseen')} |")
    for name, seen, unseen in PAPER_SUMMARY:
        out.append(f"| {name} (printed in the paper) | {seen} | {unseen} |")
    missing = sorted({r["task"] for r in rows if r.get("no_condition")})
    if missing:
        out += ["", f"No conditioning rollout succeeded on {', '.join(missing)}: the generated methods score 0 there "
                "(every row averages over the same tasks)."]
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
