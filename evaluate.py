"""Evaluation: zero-shot policies for unseen Cheetah-Vel target velocities (paper Sec. V-B, Table IV) and
policies for seen and unseen MetaWorld tasks (Tables I-III, Fig. 4); DESIGN.md section 8.

For each test velocity, K policies are generated from HypLatent alone (G(tau_e, n), decoded) and K from
HypLatent + HypFormer (L fresh samples of G refined to Z_pred + grad_pred, decoded), and run for E
episodes each. Baselines, measured in the same run:
- nearest-expert: the best stage-0 checkpoint of the nearest training velocity;
- decoded-expert: the autoencoder's round trip of that checkpoint (what the decoder alone loses);
- interpolated-expert: the best checkpoints of the two training velocities around the target, their
  parameters mixed linearly by velocity distance (outside the training range: the nearest expert);
- parent: the policy every expert was fine-tuned from;
- oracle-expert (an upper bound, not a competitor): the best checkpoint of a stage-0 expert trained at the
  target velocity itself, same parent and schedule (`stage0_collect_sac.py --shard-dir oracle`; a training
  velocity is its own oracle). Only velocities with such a shard get this row.
Every policy of every method runs in lockstep: one batched forward of all policies per step.

The score of a method is its mean return over the test velocities (each: mean over policies and episodes).
Writes `<run_dir>/results.md` (Table IV with our rows and the paper's printed rows, marked),
`return_vs_velocity.png`, `generated.pt` (every evaluated policy) and, last, `results.json` (with the
artifacts it was made from: pipeline.sh skips the evaluation only when that file is up to date).

    python evaluate.py                                  # the paper's 5 test velocities
    python evaluate.py --velocities 0.35 1.55 2.8       # any target velocities in [0, 3]
    python evaluate.py --from-generated runs/cheetah-vel-quick/generated.pt   # re-run saved policies
    python evaluate.py --suite metaworld                                       # Tables I-III

MetaWorld: per task (seen and unseen), up to `conditions` behaviour embeddings h of successful rollouts of
that task's checkpoints that no stage trained on (seen tasks: the autoencoder's held-out checkpoints; unseen
tasks: all), rolled out here on stage 0's goal configurations (stage 0 records one rollout per checkpoint,
too few); one HypLatent and one HypFormer policy per embedding, each run on `goals` fixed evaluation goal
configurations (`set_task`, never `reset(seed=)`), success at any step. Baselines in the same run: the
shared parent on every task; on seen tasks the best stage-0 checkpoint (`expert`) and its autoencoder round
trip (`decoded-expert`), and every stage-0 checkpoint (`checkpoints`, the data stages 1-3 learn from) with
its round trip (`decoded-checkpoints`): they tell which stage loses success. Top-k: the mean success of
the k best policies of a task, the k picked on `select_goals` other goal configurations that are never
scored (the paper's way, picked on the scored episodes, is reported too, marked optimistic). The envs
are spread over `--jobs` processes, each stepping its share in lockstep; an episode stops once its
success (and, for a conditioning rollout, its recorded features) is decided.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

import common
from stage1_autoencoder import load_autoencoder
from stage1_behavior_embed import embed_trajectories, load_behavior_embed
from stage2_hyplatent import decode_generated, load_generator
from stage3_hypformer import load_hypformer, sample_latents

PAPER_ROWS = [("paper:MACAW (Iter. 0)", -121.6), ("paper:MACAW (Iter. 20K)", -60.5), ("paper:Prompt-DT", -34.43),
              ("paper:AMT-Hyp w/o HypFormer (10 seeds)", -33.44), ("paper:AMT-Hyp w/o HypFormer (35 seeds)", -29.6)]
METHODS = ["hyplatent", "hypformer", "nearest-expert", "decoded-expert", "interpolated-expert", "parent", "oracle-expert"]
GENERATED_FORMAT = "amt-hyp/generated v1"


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads the artifacts of stages 0-3, writes results (default: runs/<suite>-<scale>)"""
    seed: int = 1
    velocities: list[str] = field(default_factory=lambda: [f"{v:g}" for v in common.CHEETAH_TEST])
    """target velocities in [0, 3] (default: the paper's test velocities)"""
    policies_per_task: int = 10
    """K generated policies per velocity and method"""
    episodes: int = 5
    """E episodes per policy (different reset seeds)"""
    hyplatent: str = "hyplatent.pt"
    hypformer: str = "hypformer.pt"
    from_generated: Optional[str] = None
    """re-evaluate the policies of a generated.pt instead of generating new ones (writes nothing)"""
    conditions: int = 100
    """MetaWorld: conditioning embeddings (= generated policies per method) per task"""
    goals: int = 2
    """MetaWorld: fixed evaluation goal configurations each policy runs on (MAA: 2; at most 50)"""
    select_goals: int = 2
    """MetaWorld: goal configurations (another seed, never scored) on which top-k picks its k policies"""
    baselines: bool = True
    """MetaWorld: also run the baselines (expert, checkpoints, their round trips, parent); --no-baselines runs
    the generated policies only (the token ablation, pipeline.sh mw-tokens)"""
    success_only: bool = True
    """MetaWorld: condition on successful rollouts only (smoke scale: any, since its experts rarely succeed)"""
    jobs: int = 0
    """MetaWorld: processes stepping the environments (0 = all cores)"""
    tag: str = ""
    """name the outputs results-<tag>.md/json, generated-<tag>.pt, ... (e.g. `sweep`), leaving Table IV's alone"""
    videos: int = 0
    """render this many policies per task and generating method to GIFs under videos[-<tag>]/ (0 = none)"""
    skip_done: bool = False
    """do nothing if results.json was made with these settings from these artifacts (pipeline.sh sets it)"""
    threads: int = 2
    progress: bool = True


SCALES = {"smoke": dict(policies_per_task=2, episodes=1, conditions=3, success_only=False)}


def nearest_expert(train_vels: list[float], v: float) -> int:
    """Index of the training velocity nearest to v (the lower one on a tie)."""
    return min(range(len(train_vels)), key=lambda i: (round(abs(train_vels[i] - v), 9), train_vels[i]))


def interpolate_experts(train_vels: list[float], best: torch.Tensor, v: float) -> torch.Tensor:
    """The two training experts around v mixed linearly by velocity distance; outside the range, the nearest."""
    order = sorted(range(len(train_vels)), key=lambda i: train_vels[i])
    vs = [train_vels[i] for i in order]
    if v <= vs[0] or v >= vs[-1]:
        return best[nearest_expert(train_vels, v)]
    j = next(k for k in range(1, len(vs)) if vs[k] >= v)
    w = (v - vs[j - 1]) / (vs[j] - vs[j - 1])
    return (1 - w) * best[order[j - 1]] + w * best[order[j]]


def load_chain(args: Args) -> dict:
    """Every artifact the evaluation reads, checked to belong together: the autoencoder was made from the
    shards the run directory holds, HypLatent from that autoencoder (and embedding), HypFormer from that
    HypLatent, and the shards from that parent. `made_from` names them by uid for results.json."""
    run, suite, scale = Path(args.run_dir), args.suite, args.scale
    c = {"shards": common.load_stage0(run, suite, scale)}
    c["parent"] = common.load_artifact(run / "parent.pt", common.PARENT_FORMAT, ("params",), spec=common.suite_spec(suite),
                                       suite=suite, scale=scale)
    if c["shards"][0]["made_from"] != {"parent.pt": c["parent"]["uid"]}:
        raise SystemExit(f"error: {run / 'stage0'}: its shards were fine-tuned from another parent than {run / 'parent.pt'}")
    c["ae"], c["ae_art"] = load_autoencoder(run / "autoencoder.pt", suite, scale)
    common.check_made_from(run / "autoencoder.pt", c["ae_art"], common.shard_ids(c["shards"]))
    made_from = {"autoencoder.pt": c["ae_art"]["uid"]}
    if suite == "metaworld":
        c["phi"], c["be"] = load_behavior_embed(run / "behavior_embed.pt", suite, scale)
        common.check_made_from(run / "behavior_embed.pt", c["be"], {**common.shard_ids(c["shards"]), **made_from})
        made_from["behavior_embed.pt"] = c["be"]["uid"]
    c["G"], c["hl_art"] = load_generator(run / args.hyplatent, suite, scale)
    common.check_made_from(run / args.hyplatent, c["hl_art"], made_from)
    made_from = {args.hyplatent: c["hl_art"]["uid"], **made_from}
    c["hf"], c["hf_art"] = load_hypformer(run / args.hypformer, suite, scale)
    common.check_made_from(run / args.hypformer, c["hf_art"], made_from)
    c["made_from"] = {args.hypformer: c["hf_art"]["uid"], **made_from, "parent.pt": c["parent"]["uid"]}
    return c


def load_oracles(run: Path, args: Args, chain: dict, vels: list[float]) -> dict:
    """{v: shard} of the experts trained at the target velocities themselves: a training shard at v, else
    `<run>/oracle/<v>.pt` (same parent and settings as the training shards, checked). Their uids join
    `chain["made_from"]`, so an evaluation is made again when an oracle appears or changes."""
    by_vel = {round(s["target_velocity"], 6): s for s in chain["shards"]}
    out = {}
    for v in vels:
        name = common.task_name("cheetah-vel", v)
        path = run / "oracle" / f"{name}.pt"
        if round(v, 6) in by_vel:
            out[v] = by_vel[round(v, 6)]
        elif path.exists():
            s = common.load_artifact(path, common.STAGE0_FORMAT, ("params", "return", "settings", "made_from"),
                                     spec=common.suite_spec(args.suite), suite=args.suite, scale=args.scale)
            common.check_settings(path, s["settings"], chain["shards"][0]["settings"])
            if s["made_from"] != chain["shards"][0]["made_from"]:
                raise SystemExit(f"error: {path}: fine-tuned from another parent than the training shards")
            out[v] = s
            chain["made_from"][f"oracle/{name}.pt"] = s["uid"]
    return out


@torch.no_grad()
def generate(args: Args, chain: dict, vels: list[float]) -> dict:
    """Every policy to evaluate: params [N, P] with its method and target velocity."""
    shards, ae, G, hl_art, hf = chain["shards"], chain["ae"], chain["G"], chain["hl_art"], chain["hf"]
    train_vels = [s["target_velocity"] for s in shards]
    best = torch.stack([s["params"][s["return"].argmax()] for s in shards])
    decode = lambda zn: decode_generated(zn, hl_art, ae)  # noqa: E731
    K, L = args.policies_per_task, chain["hf_art"]["num_tokens"]
    params, method, task = [], [], []

    def add(p, m, v):
        params.append(p.reshape(-1, p.shape[-1]))
        method.extend([m] * params[-1].shape[0])
        task.extend([v] * params[-1].shape[0])

    for v in vels:
        c = ((torch.tensor([[v]]) - hl_art["cond_mean"]) / hl_art["cond_std"]).repeat(K, 1)
        add(decode(G(c, torch.randn(K, G.noise_dim))), "hyplatent", v)
        z_pred, grad_pred = hf(sample_latents(G, c, L), c)
        add(decode(z_pred + grad_pred), "hypformer", v)
        near = best[nearest_expert(train_vels, v)]
        add(near, "nearest-expert", v)
        add(ae.decode(ae.encode(near[None])), "decoded-expert", v)
        add(interpolate_experts(train_vels, best, v), "interpolated-expert", v)
        add(chain["parent"]["params"], "parent", v)
        if v in chain.get("oracle", {}):
            o = chain["oracle"][v]
            add(o["params"][o["return"].argmax()], "oracle-expert", v)
    return {"format": GENERATED_FORMAT, "suite": args.suite, "policy": common.suite_spec(args.suite),
            "params": torch.cat(params).float(), "method": method, "task": [common.task_name(args.suite, v) for v in task],
            "target_velocity": torch.tensor(task, dtype=torch.float32), "train_velocities": train_vels,
            "episodes": args.episodes, "made_from": chain["made_from"], "config": asdict(args)}


def evaluate(generated: dict, episodes: int) -> np.ndarray:
    """Return of every policy in every episode [N, E]: all N x E episodes in lockstep."""
    vels = generated["target_velocity"].tolist()
    envs = [common.make_eval_env("cheetah-vel", v, episode=e) for e in range(episodes) for v in vels]
    out = common.run_lockstep(generated["params"].repeat(episodes, 1), envs, generated["policy"])
    return out["return"].reshape(episodes, len(vels)).T


@torch.no_grad()
def memorisation(generated: dict, shards: list[dict]) -> dict:
    """Are the generated policies new, or copies of training checkpoints? L2 distances in parameter space:
    each generated policy to its nearest stage-0 checkpoint (any training velocity) and to the interpolated
    expert of its target velocity, next to the data's own spacing: best checkpoints of neighbouring
    training velocities, and consecutive checkpoints of one expert. Medians (and the 10th percentile of
    the distance to the nearest checkpoint); the nearest-expert row is a training checkpoint (distance 0)."""
    ckpts = torch.cat([s["params"] for s in shards]).float()
    best = torch.stack([s["params"][s["return"].argmax()] for s in shards]).float()
    method, params = np.array(generated["method"]), generated["params"]
    interp = params[method == "interpolated-expert"]
    vel_of = generated["target_velocity"]
    interp_at = {round(float(v), 6): p for v, p in zip(vel_of[method == "interpolated-expert"], interp)}
    out = {"neighbouring velocities (best checkpoints)": float(torch.linalg.norm(best[1:] - best[:-1], dim=1).median())
           if len(best) > 1 else float("nan"),
           "consecutive checkpoints of one expert": float(torch.cat(
               [torch.linalg.norm(s["params"][1:] - s["params"][:-1], dim=1) for s in shards]).median())}
    for m in ("hyplatent", "hypformer", "nearest-expert", "interpolated-expert", "oracle-expert"):
        sel = torch.as_tensor(method == m)
        if not sel.any():
            continue
        d_ckpt = torch.cdist(params[sel], ckpts).min(1).values
        d_interp = torch.linalg.norm(params[sel] - torch.stack([interp_at[round(float(v), 6)] for v in vel_of[sel]]), dim=1)
        out[m] = {"to nearest checkpoint": float(d_ckpt.median()), "to nearest checkpoint, 10th pct":
                  float(d_ckpt.quantile(0.1)), "to interpolated expert": float(d_interp.median())}
    return out


def memorisation_table(mem: dict) -> str:
    lines = ["| policies | to nearest training checkpoint (median) | (10th percentile) | to interpolated expert (median) |",
             "|---|---|---|---|"]
    lines += [f"| {m} | {d['to nearest checkpoint']:.2f} | {d['to nearest checkpoint, 10th pct']:.2f} | "
              f"{d['to interpolated expert']:.2f} |" for m, d in mem.items() if isinstance(d, dict)]
    lines += ["", "Spacing of the training data: best checkpoints of neighbouring training velocities "
              f"{mem['neighbouring velocities (best checkpoints)']:.2f}; consecutive checkpoints of one expert "
              f"{mem['consecutive checkpoints of one expert']:.2f} (medians of L2 distances in parameter space)."]
    return "\n".join(lines)


def score_rows(generated: dict, returns: np.ndarray) -> list[dict]:
    rows = []
    methods = [m for m in METHODS if m in generated["method"]]
    vels = sorted(set(generated["target_velocity"].tolist()))
    method, vel = np.array(generated["method"]), generated["target_velocity"].numpy()
    for m in methods:
        per_v = []
        for v in vels:
            sel = (method == m) & np.isclose(vel, v)
            if not sel.any():  # the oracle at a velocity without an oracle shard
                continue
            per_v.append(float(returns[sel].mean()))
            rows.append({"method": m, "task": common.task_name("cheetah-vel", v), "score": per_v[-1],
                         "n_policies": int(sel.sum()), "n_episodes": int(returns.shape[1])})
        if len(per_v) == len(vels):  # an average over fewer velocities would not compare
            rows.append({"method": m, "task": "average", "score": float(np.mean(per_v)),
                         "n_policies": int((method == m).sum()), "n_episodes": int(returns.shape[1])})
    for name, score in PAPER_ROWS:
        rows.append({"method": name, "task": "average", "score": score, "n_policies": 0, "n_episodes": 0})
    return rows


def table(rows: list[dict], vels: list[float]) -> str:
    names = {"hyplatent": "AMT-Hyp w/o HypFormer (HypLatent)", "hypformer": "AMT-Hyp (HypLatent + HypFormer)",
             "nearest-expert": "nearest expert", "decoded-expert": "decoded nearest expert",
             "interpolated-expert": "interpolated expert", "parent": "parent",
             "oracle-expert": "oracle expert (trained at v*: upper bound)"}
    head = "| method | " + " | ".join(f"v* = {v:g}" for v in vels) + " | average |"
    lines = [head, "|---" * (len(vels) + 2) + "|"]
    by = {(r["method"], r["task"]): r["score"] for r in rows}
    cell = lambda m, t: f"{by[(m, t)]:.2f}" if (m, t) in by else "-"  # noqa: E731
    for m in [m for m in METHODS if any(k[0] == m for k in by)]:
        cells = [cell(m, common.task_name("cheetah-vel", v)) for v in vels]
        lines.append(f"| {names[m]} (measured) | " + " | ".join(cells) + f" | {cell(m, 'average')} |")
    for name, score in PAPER_ROWS:
        lines.append(f"| {name[6:]} (printed in the paper) | " + " | ".join("" for _ in vels) + f" | {score:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], vels: list[float], train_vels: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["method"], r["task"]): r["score"] for r in rows}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lows = []
    for m in METHODS:
        xs = [v for v in vels if (m, common.task_name("cheetah-vel", v)) in by]
        if xs:
            ys = [by[(m, common.task_name("cheetah-vel", v))] for v in xs]
            ax.plot(xs, ys, "o--" if m in ("parent", "oracle-expert") else "o-", label=m,
                    alpha=0.6 if m == "parent" else 1.0, color="k" if m == "oracle-expert" else None)
            lows += ys if m != "parent" else []
    span = max(lows) - min(lows) + 1e-6  # scale to the compared methods; the parent may fall off the bottom
    ax.set_ylim(min(lows) - 0.15 * span, max(lows) + 0.15 * span)
    for tv in train_vels:
        ax.axvline(tv, color="grey", lw=0.5, alpha=0.5)
    ax.set_xlabel("target velocity (grey lines: training velocities)")
    ax.set_ylabel("mean return over 200 steps")
    ax.set_title("Cheetah-Vel, zero-shot")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# MetaWorld: Tables I-III and Fig. 4
# ----------------------------------------------------------------------------------------------------

# the paper's printed success rates (%): MAA, AMT-Hyp w/o HypFormer, AMT-Hyp (Tables I and III)
PAPER_SEEN = {"window-open-v3": (33, 51, 64), "door-open-v3": (27, 35, 62), "drawer-open-v3": (42, 40, 78),
              "dial-turn-v3": (23, 36, 48), "plate-slide-v3": (45, 66, 88), "button-press-v3": (32, 38, 58),
              "handle-press-v3": (50, 62, 82), "faucet-close-v3": (45, 77, 82), "average": (36, 51, 70.3)}
PAPER_UNSEEN = {"drawer-close-v3": (55, 53, 80), "handle-press-side-v3": (4, 6, 0), "door-lock-v3": (13, 6, 6),
                "window-close-v3": (10, 0, 12), "reach-wall-v3": (13, 6, 10), "coffee-button-v3": (8, 3, 9),
                "button-press-wall-v3": (11, 2, 14), "faucet-open-v3": (16, 21, 27), "average": (16.25, 12.13, 19.8)}
# Table II: seen, unseen
PAPER_SUMMARY = [("CARE", 82.1, 58.5), ("DT", 80.3, 60.4), ("MAA", 36, 16.25),
                 ("AMT-Hyp w/o HypFormer", 51, 12.13), ("AMT-Hyp", 70.3, 19.8),
                 ("AMT-Hyp w/o HypFormer (top 10)", 100, 54.38), ("AMT-Hyp (top 10)", 100, 80.63),
                 ("AMT-Hyp w/o HypFormer (top 5)", 100, 75.1), ("AMT-Hyp (top 5)", 100, 87.5)]
MW_METHODS = ["hyplatent", "hypformer", "expert", "decoded-expert", "checkpoints", "decoded-checkpoints", "parent"]
# every MetaWorld row name: the methods, then top-k of the generated ones (picked on other goals; optimistic)
MW_ROWS = [*MW_METHODS, *(f"{m}@top{k}{o}" for m in ("hyplatent", "hypformer") for k in (5, 10) for o in ("", "-optimistic"))]


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
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            out = list(tqdm(pool.map(_lockstep_chunk, *zip(*args)), **bar))
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def _lockstep_chunk(params: torch.Tensor, jobs: list, record: bool) -> dict:
    torch.set_num_threads(1)
    envs = [common.make_eval_env("metaworld", t, episode=i, goal_seed=s) for t, s, i in jobs]
    return common.run_lockstep(params, envs, common.suite_spec("metaworld"), record=record, stop_when_decided=True)


def conditioning_rollouts(args: Args, shards: dict, unused: dict, phi, be: dict, workers: int) -> dict:
    """Per task, up to `conditions` behaviour embeddings h of rollouts no stage trained on: the task's
    checkpoints that no stage trained on (`unused`: the autoencoder's hold-out on seen tasks, all of them on
    unseen tasks) run on stage 0's goal configurations, rollout k being checkpoint k mod n on goal k // n.
    With `success_only`, only successful rollouts count, and a task short of `conditions` after one round of
    `conditions` rollouts gets a second round. Returns {task: {"h", "step", "goal", "attempts", "successes"}}."""
    out = {t: {"h": [], "step": [], "goal": [], "attempts": 0, "successes": 0} for t in unused}
    for rnd in range(2 if args.success_only else 1):
        params, jobs, meta = [], [], []
        for t, rows in unused.items():
            s, got = shards[t], len(out[t]["h"])
            if got >= args.conditions or len(rows) == 0:
                continue
            ok = rows[s["success"][rows] > 0] if args.success_only else rows
            rows = ok if len(ok) else rows  # prefer checkpoints whose own stage-0 rollout succeeded
            seed = s["settings"]["seed"] + 1  # stage 0's checkpoint-rollout goals (stage0_collect_sac.goal_seeds)
            n_goals = len(common.metaworld_goals(t, seed))
            for k in range(rnd * args.conditions, (rnd + 1) * args.conditions):
                c, goal = int(rows[k % len(rows)]), (k // len(rows)) % n_goals
                params.append(s["params"][c]), jobs.append((t, seed, goal)), meta.append((t, c, goal))
        if not jobs:
            break
        r = run_episodes(torch.stack(params).float(), jobs, workers, record=True,
                         desc=f"conditioning rollouts, round {rnd + 1}" if args.progress else "")
        h = embed_trajectories(phi, be, torch.from_numpy(r["traj"]))
        for i, (t, c, goal) in enumerate(meta):
            o = out[t]
            o["attempts"] += 1
            o["successes"] += int(r["success"][i] > 0)
            if (r["success"][i] > 0 or not args.success_only) and len(o["h"]) < args.conditions:
                o["h"].append(h[i]), o["step"].append(int(shards[t]["step"][c])), o["goal"].append(goal)
    return out


@torch.no_grad()
def generate_metaworld(args: Args, chain: dict, workers: int) -> dict:
    spec = common.suite_spec(args.suite)
    ae, ae_art, G, hl_art, hf, be = (chain[k] for k in ("ae", "ae_art", "G", "hl_art", "hf", "be"))
    shards = {s["task"]: s for s in chain["shards"]}
    decode = lambda zn: decode_generated(zn, hl_art, ae)  # noqa: E731
    first = np.cumsum([0] + [len(s["step"]) for s in shards.values()])
    unused = {t: (~ae_art["train"][first[i]:first[i + 1]]).nonzero().squeeze(1) for i, t in enumerate(shards)}
    cond = conditioning_rollouts(args, shards, unused, chain["phi"], be, workers)
    g = torch.Generator().manual_seed(args.seed)
    params, method, task = [], [], []
    for name in shards:
        h = cond[name]["h"]
        if h:
            c = (torch.stack(h) - hl_art["cond_mean"]) / hl_art["cond_std"]
            z_hl = G(c, torch.randn(len(c), G.noise_dim, generator=g))
            z_pred, grad_pred = hf(sample_latents(G, c, chain["hf_art"]["num_tokens"], generator=g), c)
            for m, p in (("hyplatent", decode(z_hl)), ("hypformer", decode(z_pred + grad_pred))):
                params.append(p), method.extend([m] * len(p)), task.extend([name] * len(p))
        if not args.baselines:
            continue
        if name in be["train_tasks"]:
            s = shards[name]
            best = s["params"][int(torch.argmax(s["success"] * 1e6 + s["return"]))][None]  # most successful, then best return
            for m, p in (("expert", best), ("decoded-expert", ae.decode(ae.encode(best))),
                         ("checkpoints", s["params"]), ("decoded-checkpoints", ae.decode(ae.encode(s["params"])))):
                params.append(p), method.extend([m] * len(p)), task.extend([name] * len(p))
        params.append(chain["parent"]["params"][None]), method.append("parent"), task.append(name)
    return {"format": GENERATED_FORMAT, "suite": args.suite, "policy": spec, "params": torch.cat(params).float(),
            "method": method, "task": task, "seen": list(be["train_tasks"]), "goals": args.goals,
            "select_goals": args.select_goals,
            "n_conditions": {t: len(c["h"]) for t, c in cond.items()},
            "conditioning": {t: {"checkpoint_step": c["step"], "goal": c["goal"], "attempts": c["attempts"],
                                 "successes": c["successes"]} for t, c in cond.items()},
            "made_from": chain["made_from"], "config": asdict(args)}


def evaluate_metaworld(generated: dict, goals: int, select_goals: int, workers: int,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Success of every policy on every evaluation goal configuration [N, goals] and on every top-k
    selection goal configuration [N, select_goals] (one lockstep run for both)."""
    n = len(generated["method"])
    jobs = [(generated["task"][i], common.EVAL_GOAL_SEED, e) for e in range(goals) for i in range(n)]
    jobs += [(generated["task"][i], common.SELECT_GOAL_SEED, e) for e in range(select_goals) for i in range(n)]
    out = run_episodes(generated["params"].repeat(goals + select_goals, 1), jobs, workers,
                       desc="evaluation" if progress else "")
    success = out["success"].reshape(goals + select_goals, n).T
    return success[:, :goals], success[:, goals:]


def metaworld_rows(generated: dict, success: np.ndarray, select: np.ndarray) -> list[dict]:
    """Rows per task and method (success % on the evaluation goals), top-k both ways, split averages."""
    method, task = np.array(generated["method"]), np.array(generated["task"])
    rate, select_rate = success.mean(1), select.mean(1)  # per policy, over goal configurations
    rows, per = [], {}
    for name in dict.fromkeys(generated["task"]):
        for m in MW_METHODS:
            sel = (method == m) & (task == name)
            if sel.any():
                per[(m, name)] = rate[sel]
                rows.append({"method": m, "task": name, "score": 100 * float(rate[sel].mean()),
                             "n_policies": int(sel.sum()), "n_episodes": int(success.shape[1])})
                if m in ("hyplatent", "hypformer"):
                    for k in (5, 10):
                        rows.append({"method": f"{m}@top{k}", "task": name, "n_policies": min(k, int(sel.sum())),
                                     "score": 100 * top_k(rate[sel], k, select_rate[sel]), "n_episodes": int(success.shape[1])})
                        rows.append({"method": f"{m}@top{k}-optimistic", "task": name, "n_policies": min(k, int(sel.sum())),
                                     "score": 100 * top_k(rate[sel], k), "n_episodes": int(success.shape[1])})
    for split, names in (("seen", [t for t in dict.fromkeys(generated["task"]) if t in generated["seen"]]),
                         ("unseen", [t for t in dict.fromkeys(generated["task"]) if t not in generated["seen"]])):
        for m in MW_ROWS:
            scores = [r["score"] for r in rows if r["method"] == m and r["task"] in names]
            if scores:
                rows.append({"method": m, "task": f"average-{split}", "score": float(np.mean(scores)),
                             "n_policies": sum(r["n_policies"] for r in rows if r["method"] == m and r["task"] in names),
                             "n_episodes": int(success.shape[1])})
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
            ("expert | decoded expert | all checkpoints | decoded checkpoints | " if split == "seen" else "") + \
               "parent | MAA (paper) | w/o HypFormer (paper) | w/ HypFormer (paper) |"
        out += [f"**{title}** (measured; paper columns as printed)", "", head, "|" + "---|" * (head.count("|") - 1)]
        for t in names + [f"average-{split}"]:
            p = paper.get(t if not t.startswith("average") else "average", ("-", "-", "-"))
            cells = [conditions_cell(generated, t), f("hyplatent", t), f("hypformer", t)]
            cells += [f(m, t) for m in ("expert", "decoded-expert", "checkpoints", "decoded-checkpoints")] \
                if split == "seen" else []
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
                     ("checkpoints", "all stage-0 checkpoints of the task (the training data)"),
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


# ----------------------------------------------------------------------------------------------------
# Main: one run of the suite's evaluation, outputs written atomically, results.json last
# ----------------------------------------------------------------------------------------------------


def results_up_to_date(path: Path, settings: dict, made_from: dict) -> bool:
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return res.get("settings") == settings and res.get("made_from") == made_from


def validate(args: Args) -> list[float]:
    """Every option checked before any work starts; returns the Cheetah-Vel target velocities."""
    common.check_options(args, positive=("policies_per_task", "episodes", "conditions", "goals", "select_goals", "threads"),
                         nonnegative=("jobs",))
    for name in ("goals", "select_goals"):
        if getattr(args, name) > common.MW_GOALS:
            raise SystemExit(f"error: --{name.replace('_', '-')} {getattr(args, name)}: MetaWorld has {common.MW_GOALS} "
                             "goal configurations per seed")
    if args.suite == "cheetah-vel" and not args.baselines:
        raise SystemExit("error: --no-baselines is a MetaWorld option (Cheetah-Vel's baselines are cheap)")
    return common.check_velocities(args.velocities) if args.suite == "cheetah-vel" else []


def main(args: Args) -> None:
    vels = validate(args)
    def out_name(name: str) -> str:  # results.json -> results-<tag>.json, videos -> videos-<tag>
        stem, dot, ext = name.partition(".")
        return f"{stem}-{args.tag}{dot}{ext}" if args.tag else name

    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0, generated, chain = time.time(), None, None
    if args.from_generated:  # re-evaluate saved policies; nothing is written
        generated = common.load_artifact(args.from_generated, GENERATED_FORMAT, ("params", "method", "task"),
                                         spec=common.suite_spec(args.suite), suite=args.suite)
    else:
        run = common.prepare_run_dir(args.run_dir)  # before the work: a read-only directory fails now
        chain, settings = load_chain(args), common.settings(args)
        if args.suite == "cheetah-vel":
            chain["oracle"] = load_oracles(run, args, chain, vels)
        if args.skip_done and results_up_to_date(run / out_name("results.json"), settings, chain["made_from"]):
            print(f"evaluation: {run / out_name('results.json')} is up to date (same settings, same artifacts); skipped")
            return
    if args.suite == "cheetah-vel":
        if generated is not None:
            vels, args.episodes = sorted(set(generated["target_velocity"].tolist())), generated["episodes"]
        generated = generated or generate(args, chain, vels)
        rows = score_rows(generated, evaluate(generated, args.episodes))
        n = len(generated["method"])
        header = (f"Cheetah-Vel zero-shot, mean return over 200 steps; {args.policies_per_task} generated policies x "
                  f"{args.episodes} episodes per velocity and method; {n} policies, {n * args.episodes} episodes in "
                  f"lockstep; training velocities {', '.join(f'{v:g}' for v in generated['train_velocities'])}.")
        mem = memorisation(generated, chain["shards"]) if chain else None
        md, figure = table(rows, vels), ("return_vs_velocity.png",
                                         lambda p: plot(rows, vels, generated["train_velocities"], p))
        if mem:
            md += "\n\nMemorisation check (are generated policies new?):\n\n" + memorisation_table(mem)
    else:
        workers = args.jobs or os.cpu_count() or 1
        if generated is not None:
            args.goals, args.select_goals = generated["goals"], generated.get("select_goals", args.select_goals)
        generated = generated or generate_metaworld(args, chain, workers)
        rows = metaworld_rows(generated, *evaluate_metaworld(generated, args.goals, args.select_goals, workers,
                                                             args.progress))
        header = (f"MetaWorld, success at any step of a 500-step episode; one generated policy per conditioning "
                  f"embedding (up to {args.conditions} per task), each on {args.goals} fixed evaluation goal "
                  f"configurations (top-k picks its k on {args.select_goals} other goal configurations, never scored; "
                  f"the paper's way, picked on the scored episodes, is marked optimistic); {len(generated['method'])} "
                  f"policies, {len(generated['method']) * (args.goals + args.select_goals)} "
                  "episodes. Conditions: embeddings of rollouts of checkpoints no stage trained on, on stage 0's goals; "
                  "`n (s/a)` = n used, s of a such rollouts successful. At quick scale the experts (and so the "
                  "training data) come from SAC with scripted demonstrations; the paper's data was SAC alone.")
        md = metaworld_tables(rows, generated)
        figure = ("pca_latents.png", lambda p: pca_figure(chain["ae"], chain["ae_art"], generated, p))
    print(header + "\n\n" + md)
    if args.from_generated:
        return
    common.save_artifact(generated, run / out_name("generated.pt"))
    common.write_atomic(run / out_name("results.md"), lambda p: p.write_text(f"{header}\n\n{md}\n"))
    common.write_atomic(run / out_name(figure[0]), figure[1])
    if args.videos:
        import videos

        videos.render(generated, run / out_name("videos"), args.videos)
    res = {"suite": args.suite, "rows": rows, "settings": settings, "made_from": chain["made_from"],
           "config": asdict(args), "seed": args.seed}
    if args.suite == "cheetah-vel":
        res.update(train_velocities=generated["train_velocities"], memorisation=mem)
    else:  # what aggregate.py groups MetaWorld runs by
        res.update(seen=generated["seen"], num_tokens=chain["hf_art"]["num_tokens"])
    common.write_atomic(run / out_name("results.json"), lambda p: p.write_text(json.dumps(res, indent=1)))  # last: the chain checks it
    print(f"\nevaluation: {time.time() - t0:.0f}s; wrote {', '.join(out_name(n) for n in ('generated.pt', 'results.md', figure[0], 'results.json'))} in {run}")


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
