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
- mt-bc: MT-BC (baselines/mt_bc.py), one policy taking the target velocity as input, trained by behaviour
  cloning on the offline data (offline_data.py); its policy for v is a flat policy of the generated layout;
- prompt-dt: Prompt-DT (baselines/prompt_dt.py) on the same data, prompted with the last 5 steps of one
  episode of the oracle expert at v (it sees a demonstration of the test task, which no generator does) and
  given as target return the best return in the data of the nearest training velocity; its episodes run
  beside the others' (same reset seeds), in a lockstep of their own;
- macaw, macaw-unadapted: MACAW (baselines/macaw.py), meta-trained offline on the same data, adapted by one
  inner step on that same oracle episode at v (it sees test-task data), then run like the generated policies;
  unadapted: its meta-learned policy, one for every velocity;
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

MetaWorld (Tables I-III, Fig. 4): `evaluate_metaworld.py`, which main() below calls with explicit arguments.
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

import artifacts
import common
import provenance
from latents import decode_generated, load_inputs
from methods import LABELS, METHODS, PAPER_ROWS, PAPER_ROWS_NOTE
from evaluate_metaworld import (SELECT_MIN_DISTANCE, evaluate_metaworld, generate_metaworld, goal_weights_table,
                                metaworld_rows, metaworld_tables, pca_figure, prompt_dt_success, care_success)
from baselines.care import load_care
from baselines.macaw import adapted_policies, load_macaw
from baselines.mt_bc import fold_condition, load_mt_bc
from baselines.prompt_dt import load_prompt_dt, prompt_segment, run_prompted
from offline_data import PROMPT_SEED, record_episodes
from stage2_diffusion import diffusion_sample, load_diffusion
from stage2_hyplatent import load_generator
from stage3_hypformer import load_hypformer, sample_latents

GENERATED_FORMAT = artifacts.GENERATED_FORMAT


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
    diffusion: str = "diffusion.pt"
    """stage2_diffusion.py's artifact: the MAA row ("" = leave the row out)"""
    mt_bc: str = "mt_bc.pt"
    """baselines/mt_bc.py's artifact: the MT-BC row ("" = leave the row out)"""
    prompt_dt: str = "prompt_dt.pt"
    """baselines/prompt_dt.py's artifact: the Prompt-DT row ("" = leave the row out)"""
    macaw: str = "macaw.pt"
    """Cheetah-Vel: baselines/macaw.py's artifact, the MACAW rows ("" = leave them out)"""
    care: str = "care.pt"
    """MetaWorld: baselines/care.py's artifact, the CARE row ("" = leave it out)"""
    from_generated: Optional[str] = None
    """re-evaluate the policies of a generated.pt instead of generating new ones (writes nothing)"""
    conditions: int = 100
    """MetaWorld: conditioning embeddings (= generated policies per method) per task (quick: 25, README)"""
    goals: int = 2
    """MetaWorld: evaluation goal configurations each policy runs on (MAA: 2; at most 50): policy j of a
    task on goals goals*j, goals*j + 1, ... of the task's fixed list of single_policy_goals (cyclically)"""
    single_policy_goals: int = 20
    """MetaWorld: the task's fixed list of evaluation goal configurations; the baselines with one policy per
    task (parent, expert, decoded expert) run on all of it (with 2 goals their rate could only be 0/50/100)"""
    select_goals: int = 5
    """MetaWorld: goal configurations (another seed, never scored) on which top-k picks its k policies
    (ties, left at random, are rarer with more)"""
    baselines: bool = True
    """MetaWorld: also run the baselines (expert, checkpoints, their round trips, parent, MT-BC, Prompt-DT);
    --no-baselines runs the generated policies only (the token ablation, pipeline.sh mw-tokens)"""
    success_only: bool = True
    """MetaWorld: condition on successful rollouts only (smoke scale: any, since its experts rarely succeed)"""
    jobs: int = 0
    """MetaWorld: processes stepping the environments (0 = all cores)"""
    tag: str = ""
    """name the outputs results-<tag>.md/json, generated-<tag>.pt, ... (e.g. `sweep`; letters, digits, ., _, -),
    leaving Table IV's alone"""
    videos: int = 0
    """render this many policies per task and generating method to GIFs under videos[-<tag>]/ (0 = none; needs
    OpenGL, e.g. MUJOCO_GL=egl, which is checked before the evaluation starts)"""
    skip_done: bool = False
    """do nothing if results.json was made with these settings from these artifacts (pipeline.sh sets it)"""
    threads: int = 2
    progress: bool = True


SCALES = {"smoke": dict(policies_per_task=2, episodes=1, conditions=3, success_only=False, single_policy_goals=3,
                        select_goals=2),
          # every failed MetaWorld episode runs 500 steps: the number of conditions sets the evaluation's cost (docs/speed.md)
          "metaworld:quick": dict(conditions=25)}


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
    """Every artifact the evaluation reads, each loaded once and checked to belong together: stage 2's
    `load_inputs` (shards, autoencoder, embedding), then HypLatent made from them, HypFormer made from that
    HypLatent, and the parent the shards were fine-tuned from. `made_from` names them by uid."""
    run, suite, scale = Path(args.run_dir), args.suite, args.scale
    c = load_inputs(run, suite, scale)
    stage1 = dict(c["made_from"])  # what stage 2 (either generator) is made from
    c["parent"] = None  # independent experts (stage 0's --experts independent) have none
    if c["shards"][0]["made_from"] != {} or (run / "parent.pt").exists():
        c["parent"] = artifacts.load_artifact(run / "parent.pt", artifacts.PARENT_FORMAT, ("params",),
                                              spec=common.suite_spec(suite), suite=suite, scale=scale)
        if c["shards"][0]["made_from"] != {"parent.pt": c["parent"]["uid"]}:
            raise SystemExit(f"error: {run / 'stage0'}: its shards were fine-tuned from another parent than {run / 'parent.pt'}")
    c["G"], c["hl_art"] = load_generator(run / args.hyplatent, suite, scale)
    artifacts.check_made_from(run / args.hyplatent, c["hl_art"], c["made_from"])
    made_from = {args.hyplatent: c["hl_art"]["uid"], **c["made_from"]}
    c["hf"], c["hf_art"] = load_hypformer(run / args.hypformer, suite, scale)
    artifacts.check_made_from(run / args.hypformer, c["hf_art"], made_from)
    c["made_from"] = {args.hypformer: c["hf_art"]["uid"], **made_from,
                      **({"parent.pt": c["parent"]["uid"]} if c["parent"] is not None else {})}
    c["maa"] = c["maa_art"] = None
    if args.diffusion:  # MAA: made from the same stage 1 as HypLatent
        c["maa"], c["maa_art"] = load_diffusion(run / args.diffusion, suite, scale)
        artifacts.check_made_from(run / args.diffusion, c["maa_art"], stage1)
        c["made_from"][args.diffusion] = c["maa_art"]["uid"]
    c["mt_bc"] = c["mt_bc_art"] = c["prompt_dt"] = c["prompt_dt_art"] = c["macaw"] = c["macaw_art"] = None
    for key, name, load in (("mt_bc", args.mt_bc, load_mt_bc), ("prompt_dt", args.prompt_dt, load_prompt_dt),
                            ("macaw", args.macaw if suite == "cheetah-vel" else "", load_macaw)):
        if name:  # a conditioned-policy baseline: trained on offline data made from this run's stages 0-1
            c[key], c[key + "_art"] = load(run / name, suite, scale)
            if c.get("data_art") is None:
                c["data_art"] = check_offline_data(run, suite, scale, stage1)
            artifacts.check_made_from(run / name, c[key + "_art"], {"offline_data.pt": c["data_art"]["uid"]})
            c["made_from"] |= {"offline_data.pt": c["data_art"]["uid"], name: c[key + "_art"]["uid"]}
    c["care"] = c["care_art"] = None
    if suite == "metaworld" and args.care and args.baselines:  # trained online on the seen tasks: from stages 0-1
        c["care"], c["care_art"] = load_care(run / args.care, suite, scale)
        artifacts.check_made_from(run / args.care, c["care_art"], {**artifacts.shard_ids(c["shards"]), **stage1})
        c["made_from"][args.care] = c["care_art"]["uid"]
    return c


def check_offline_data(run: Path, suite: str, scale: str, stage1: dict) -> dict:
    """run/offline_data.pt's uid, code and settings, checked to be made from this run's stages 0-1 (`stage1`)."""
    from offline_data import load_offline_data

    data = load_offline_data(run / "offline_data.pt", suite, scale)
    artifacts.check_made_from(run / "offline_data.pt", data, stage1)
    return {k: data[k] for k in ("uid", "code", "settings")}


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
            s = artifacts.load_shard(path, args.suite, args.scale)
            artifacts.check_settings(path, s["settings"], chain["shards"][0]["settings"])
            if s["made_from"] != chain["shards"][0]["made_from"]:
                raise SystemExit(f"error: {path}: fine-tuned from another parent than the training shards")
            out[v] = s
            chain["made_from"][f"oracle/{name}.pt"] = s["uid"]
    return out


@torch.no_grad()
def generate(args: Args, chain: dict, vels: list[float]) -> dict:
    """Every policy to evaluate: params [N, P] with its method and target velocity."""
    ae, G, hl_art, hf = chain["ae"], chain["G"], chain["hl_art"], chain["hf"]
    shards = [s for s in chain["shards"] if s["task"] in chain["ae_art"]["train_tasks"]]  # what stages 1-2 trained on
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
        if chain["parent"] is not None:
            add(chain["parent"]["params"], "parent", v)
        if v in chain.get("oracle", {}):
            o = chain["oracle"][v]
            add(o["params"][o["return"].argmax()], "oracle-expert", v)
        if chain.get("mt_bc") is not None:  # one deterministic policy per velocity
            add(fold_condition(chain["mt_bc"], torch.tensor([[v]])), "mt-bc", v)
    if chain.get("maa") is not None:  # after the others, with its own noise: their policies do not depend on whether MAA runs
        g = torch.Generator().manual_seed(args.seed)
        for v in vels:
            z = diffusion_sample(chain["maa"], chain["maa_art"], torch.tensor([[v]]).repeat(K, 1), generator=g)
            add(decode_generated(z, chain["maa_art"], ae), "maa", v)
    demo_vels, demo = oracle_demonstrations(chain, vels) if chain.get("macaw") is not None else ([], {})
    if demo_vels:  # MACAW, adapted on the oracle's episode at v (Prompt-DT's prompt episode)
        with torch.enable_grad():  # the inner step differentiates its losses
            adapted, unadapted = adapted_policies(chain["macaw"], chain["macaw_art"], [
                {k: torch.from_numpy(demo[k][j]) for k in ("obs", "act", "rew")} for j in range(len(demo_vels))])
        for j, v in enumerate(demo_vels):
            add(adapted[j], "macaw", v)
            add(unadapted, "macaw-unadapted", v)
    return {"format": GENERATED_FORMAT, "suite": args.suite, "policy": common.suite_spec(args.suite),
            "params": torch.cat(params).float(), "method": method, "task": [common.task_name(args.suite, v) for v in task],
            "target_velocity": torch.tensor(task, dtype=torch.float32), "train_velocities": train_vels,
            "episodes": args.episodes, "made_from": chain["made_from"], "config": asdict(args)}


def oracle_demonstrations(chain: dict, vels: list[float]) -> tuple[list[float], dict]:
    """The test-task data Prompt-DT and MACAW see: one episode of the oracle's best checkpoint at each velocity
    of `vels` that has one (reset seed PROMPT_SEED + j, none of the evaluation's). Returns those velocities and
    `record_episodes`' arrays [n, T, ...]."""
    oracle_at = {round(float(v), 6): o for v, o in chain.get("oracle", {}).items()}
    vels = sorted(v for v in vels if round(v, 6) in oracle_at)  # numbered in one order for Prompt-DT and MACAW
    if not vels:
        return [], {}
    oracle = torch.stack([oracle_at[round(v, 6)]["params"][oracle_at[round(v, 6)]["return"].argmax()] for v in vels]).float()
    return vels, record_episodes(oracle, [common.CheetahVel(v, seed=PROMPT_SEED + j) for j, v in enumerate(vels)],
                                 common.suite_spec("cheetah-vel"), common.CHEETAH_STEPS)


def prompt_dt_episodes(chain: dict, vels: list[float], episodes: int) -> dict:
    """Prompt-DT's episodes at each velocity that has an oracle expert: `episodes` of them (the reset seeds of
    everyone's), prompted with the last steps of one episode of the oracle's best checkpoint (reset seed
    PROMPT_SEED + j, none of the evaluation's), target return the best data return of the nearest training
    velocity. Returns {"method", "target_velocity", "returns" [n, E]} in the form of `score_rows`."""
    model, art = chain["prompt_dt"], chain["prompt_dt_art"]
    vels, demo = oracle_demonstrations(chain, vels)
    if not vels:
        return {"method": [], "target_velocity": [], "returns": np.zeros((0, episodes))}
    s = art["settings"]
    prompts = [prompt_segment({"obs": torch.from_numpy(demo["obs"][j]), "act": torch.from_numpy(demo["act"][j]),
                               "rtg": torch.from_numpy(demo["rew"][j]).flip(0).cumsum(0).flip(0)},
                              s["prompt_length"], s["return_scale"], art["obs_mean"], art["obs_std"])
               for j in range(len(vels))]
    train_vels = [float(t.removeprefix("vel-")) for t in art["tasks"]]
    target = [art["task_best_return"][nearest_expert(train_vels, v)] for v in vels]
    envs = [common.make_eval_env("cheetah-vel", v, episode=e) for e in range(episodes) for v in vels]
    out = run_prompted(model, art, envs, prompts * episodes, target * episodes, common.CHEETAH_STEPS)
    return {"method": ["prompt-dt"] * len(vels), "target_velocity": vels,
            "returns": out["return"].reshape(episodes, len(vels)).T, "target_return": target}


def evaluate(generated: dict, episodes: int) -> np.ndarray:
    """Return of every policy in every episode [N, E]: all N x E episodes in lockstep."""
    vels = generated["target_velocity"].tolist()
    envs = [common.make_eval_env("cheetah-vel", v, episode=e) for e in range(episodes) for v in vels]
    out = common.run_lockstep(generated["params"].repeat(episodes, 1), envs, generated["policy"])
    return out["return"].reshape(episodes, len(vels)).T


def acting_params(params: torch.Tensor, spec: dict) -> torch.Tensor:
    """The part of flat policies that acts: everything but the log-std head (the last act x hidden + act
    values), which the deterministic policy tanh(mean) never uses."""
    return params[..., : common.num_params(spec) - spec["act_dim"] * (spec["hidden"] + 1)]


def trajectory_states(shards: list[dict], spec: dict, n: int = 512, seed: int = 0) -> torch.Tensor:
    """A fixed batch of `n` states visited by the stage-0 checkpoints (from their recorded `traj` features:
    20 chunks of a state and 3 actions)."""
    o, chunk = spec["obs_dim"], spec["obs_dim"] + 3 * spec["act_dim"]
    traj = torch.cat([s["traj"] for s in shards]).float()
    states = traj.view(len(traj), -1, chunk)[:, :, :o].reshape(-1, o)
    return states[torch.randperm(len(states), generator=torch.Generator().manual_seed(seed))[:n]]


@torch.no_grad()
def exact_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [len(a), len(b)] in float64 from the differences of the vectors themselves: a
    vector is exactly 0 from itself. torch.cdist's default takes its matrix-multiply path here
    (|a|^2 + |b|^2 - 2 a.b, in float32), which left a policy of quick size 0.005-0.014 from itself."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


@torch.no_grad()
def memorisation(generated: dict, shards: list[dict], ae, ae_art: dict) -> dict:
    """Are the generated policies new, or copies of training checkpoints? Each generated policy against
    its nearest stage-0 checkpoint (any training velocity) and the interpolated expert of its target
    velocity: the L2 distance in parameter space (the acting part: the log-std head left out; exact, in
    float64, `exact_distances`) and the mean
    absolute difference of their actions on a fixed batch of visited states. Beside them, the data's own
    spacing (best checkpoints of neighbouring velocities, consecutive checkpoints of one expert) and the
    floor every decoded policy sits on: the autoencoder's round trip of its own training checkpoints.
    Medians (and the 10th percentile of the distance to the nearest checkpoint)."""
    spec = generated["policy"]
    act = lambda p: acting_params(p, spec).double()  # noqa: E731 - distances in float64
    ckpts = torch.cat([s["params"] for s in shards]).float()
    best = torch.stack([s["params"][s["return"].argmax()] for s in shards]).float()
    method, params = np.array(generated["method"]), generated["params"]
    vel_of = generated["target_velocity"]
    interp_at = {round(float(v), 6): p for v, p in zip(vel_of[method == "interpolated-expert"],
                                                       params[method == "interpolated-expert"])}
    train = ckpts[ae_art["train"]]
    states = trajectory_states(shards, spec)
    out = {"neighbouring velocities (best checkpoints)": float(torch.linalg.norm(act(best[1:]) - act(best[:-1]), dim=1).median())
           if len(best) > 1 else float("nan"),
           "consecutive checkpoints of one expert": float(torch.cat(
               [torch.linalg.norm(act(s["params"][1:]) - act(s["params"][:-1]), dim=1) for s in shards]).median()),
           "autoencoder round trip of a training checkpoint": float(
               torch.linalg.norm(act(ae.decode(ae.encode(train))) - act(train), dim=1).median())}
    for m in ("hyplatent", "hypformer", "maa", "mt-bc", "nearest-expert", "interpolated-expert", "oracle-expert"):
        sel = torch.as_tensor(method == m)
        if not sel.any():
            continue
        p = params[sel].float()
        d_all = exact_distances(act(p), act(ckpts))
        d_ckpt, nearest = d_all.min(1)
        interp = torch.stack([interp_at[round(float(v), 6)] for v in vel_of[sel]]).float()
        a_gen = common.batched_act(p, states.expand(len(p), -1, -1), spec)
        a_near = common.batched_act(ckpts[nearest], states.expand(len(p), -1, -1), spec)
        out[m] = {"to nearest checkpoint": float(d_ckpt.median()), "to nearest checkpoint, 10th pct":
                  float(d_ckpt.quantile(0.1)), "to interpolated expert": float(torch.linalg.norm(act(p) - act(interp), dim=1).median()),
                  "action difference to nearest checkpoint": float((a_gen - a_near).abs().mean((1, 2)).median())}
    return out


def memorisation_table(mem: dict) -> str:
    lines = ["| policies | to nearest stage-0 checkpoint (median) | (10th percentile) | to interpolated expert (median) | "
             "mean action difference to the nearest checkpoint |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {d['to nearest checkpoint']:.2f} | {d['to nearest checkpoint, 10th pct']:.2f} | "
              f"{d['to interpolated expert']:.2f} | {d['action difference to nearest checkpoint']:.3f} |"
              for m, d in mem.items() if isinstance(d, dict)]
    lines += ["", "L2 distances of the acting parameters (the unused log-std head left out), to every checkpoint of "
              "stage0/ (the autoencoder's held-out ones included). The floor of every decoded "
              f"policy: the autoencoder's round trip of its own training checkpoints, "
              f"{mem['autoencoder round trip of a training checkpoint']:.2f}. The spacing of the training data: best "
              f"checkpoints of neighbouring training velocities {mem['neighbouring velocities (best checkpoints)']:.2f}; "
              f"consecutive checkpoints of one expert {mem['consecutive checkpoints of one expert']:.2f} (medians)."]
    return "\n".join(lines)


def score_rows(method: list[str], vel: list[float], returns: np.ndarray) -> list[dict]:
    """Rows of Table IV from the return of every policy (method[i], vel[i]) in every episode, returns [N, E]."""
    rows = []
    methods = [m for m in METHODS if m in method]
    vels = sorted(set(vel))
    method, vel = np.array(method), np.array(vel)
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
    head = "| method | " + " | ".join(f"v* = {v:g}" for v in vels) + " | average |"
    lines = [head, "|---" * (len(vels) + 2) + "|"]
    by = {(r["method"], r["task"]): r["score"] for r in rows}
    cell = lambda m, t: f"{by[(m, t)]:.2f}" if (m, t) in by else "-"  # noqa: E731
    for m in [m for m in METHODS if any(k[0] == m for k in by)]:
        cells = [cell(m, common.task_name("cheetah-vel", v)) for v in vels]
        lines.append(f"| {LABELS[m]} (measured) | " + " | ".join(cells) + f" | {cell(m, 'average')} |")
    for name, score in PAPER_ROWS:
        lines.append(f"| {name[6:]} (printed in the paper) | " + " | ".join("" for _ in vels) + f" | {score:.2f} |")
    return "\n".join(lines + ["", PAPER_ROWS_NOTE])


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
# Main: one run of the suite's evaluation, outputs written atomically, results.json last
# ----------------------------------------------------------------------------------------------------


def results_up_to_date(path: Path, settings: dict, made_from: dict, code: dict) -> bool:
    """--skip-done: the results file holds an evaluation with these settings, of these artifacts, by this code
    (the evaluation's and every stage's fingerprint), unedited."""
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(res, dict):
        return False
    if res.get("sha256") != artifacts.results_checksum(res):
        why = "does not match its checksum (edited since?)" if "sha256" in res else "has no checksum (older version)"
        print(f"evaluation: {path} {why}; evaluating again")
        return False
    return res.get("settings") == settings and res.get("made_from") == made_from and res.get("code") == code


def validate(args: Args) -> list[float]:
    """Every option checked before any work starts; returns the Cheetah-Vel target velocities."""
    common.check_options(args, positive=("policies_per_task", "episodes", "conditions", "goals", "select_goals",
                                          "single_policy_goals", "threads"), nonnegative=("jobs", "videos"),
                         seeds=("seed",))
    common.check_tag(args.tag)
    for name in ("goals", "select_goals", "single_policy_goals"):
        if getattr(args, name) > common.MW_GOALS:
            raise SystemExit(f"error: --{name.replace('_', '-')} {getattr(args, name)}: MetaWorld has {common.MW_GOALS} "
                             "goal configurations per seed")
    if args.goals > args.single_policy_goals:  # the one-policy baselines must cover the generated policies' list
        raise SystemExit(f"error: --goals {args.goals} is more than --single-policy-goals {args.single_policy_goals}")
    if args.suite == "cheetah-vel" and not args.baselines:
        raise SystemExit("error: --no-baselines is a MetaWorld option (Cheetah-Vel's baselines are cheap)")
    vels = common.check_velocities(args.velocities) if args.suite == "cheetah-vel" else []
    if args.videos:  # no OpenGL: refused now, not after the evaluation
        import videos

        videos.check_rendering(args.suite)
    return vels


def upstream_settings(chain: dict) -> dict:
    """The settings of every artifact the evaluated policies come from: aggregate.py pools runs as seeds of
    one method only where these agree in everything but the seed."""
    out = {"stage0": chain["shards"][0]["settings"], "autoencoder.pt": chain["ae_art"]["settings"],
           "hyplatent": chain["hl_art"]["settings"], "hypformer": chain["hf_art"]["settings"]}
    if chain.get("maa_art") is not None:
        out["diffusion"] = chain["maa_art"]["settings"]
    if chain.get("be") is not None:
        out["behavior_embed.pt"] = chain["be"]["settings"]
    for key, art in (("offline_data.pt", "data_art"), ("mt_bc", "mt_bc_art"), ("prompt_dt", "prompt_dt_art"),
                     ("macaw", "macaw_art"), ("care", "care_art")):
        if chain.get(art) is not None:
            out[key] = chain[art]["settings"]
    return out


def upstream_code(chain: dict) -> dict:
    """The code fingerprint of every stage the evaluated policies come from, and the evaluation's own:
    aggregate.py pools runs as seeds of one method only where these agree."""
    arts = {"autoencoder.pt": chain["ae_art"], "hyplatent": chain["hl_art"], "hypformer": chain["hf_art"],
            "diffusion": chain.get("maa_art"), "behavior_embed.pt": chain.get("be"), "mt_bc": chain.get("mt_bc_art"),
            "prompt_dt": chain.get("prompt_dt_art"), "offline_data.pt": chain.get("data_art"),
            "macaw": chain.get("macaw_art"), "care": chain.get("care_art")}
    out = {k: a.get("code", "unrecorded") for k, a in arts.items() if a is not None}
    stage0 = [a for a in (chain["parent"], *chain["shards"], *(chain.get("oracle") or {}).values()) if a is not None]
    out["stage0"] = ",".join(sorted({a.get("code", "unrecorded") for a in stage0}))  # several: a resumed mix
    return {**out, "evaluation": provenance.code_fingerprint(Path(__file__))}


def cheetah_report(generated: dict, chain: dict | None):
    """Run and score the Cheetah-Vel policies of `generated` (its velocities and episode count), and Prompt-DT's
    episodes when the chain has it (not from a saved generated.pt): (rows, header, table, figure, fields for
    results.json)."""
    vels, episodes = sorted(set(generated["target_velocity"].tolist())), generated["episodes"]
    method, vel, returns = list(generated["method"]), generated["target_velocity"].tolist(), evaluate(generated, episodes)
    dt = None
    if chain is not None and chain.get("prompt_dt") is not None:
        dt = prompt_dt_episodes(chain, vels, episodes)
        method, vel, returns = method + dt["method"], vel + dt["target_velocity"], np.concatenate([returns, dt["returns"]])
    rows = score_rows(method, vel, returns)
    n, k = len(generated["method"]), generated["method"].count("hyplatent") // len(vels)
    header = (f"Cheetah-Vel zero-shot, mean return over 200 steps; {k} generated policies x {episodes} episodes per "
              f"velocity and method; {n} policies, {n * episodes} episodes in lockstep; training velocities "
              f"{', '.join(f'{v:g}' for v in generated['train_velocities'])}.")
    mem = memorisation(generated, chain["shards"], chain["ae"], chain["ae_art"]) if chain else None
    md = table(rows, vels)
    if mem:
        md += "\n\nMemorisation check (are generated policies new?):\n\n" + memorisation_table(mem)
    figure = ("return_vs_velocity.png", lambda p: plot(rows, vels, generated["train_velocities"], p))
    if dt is not None:
        md += ("\n\nPrompt-DT: prompted with the last 5 steps of one episode of the oracle expert at each test velocity "
               "(a demonstration of the test task, which no generator sees); target returns "
               + (", ".join(f"{t:.1f}" for t in dt.get("target_return", [])) or "none (no oracle shard: no row)")
               + " (the best data return of the nearest training velocity).")
    return rows, header, md, figure, {"train_velocities": generated["train_velocities"], "memorisation": mem,
                                      "prompt_dt_target_return": dt.get("target_return") if dt else None}


def metaworld_report(generated: dict, chain: dict | None, workers: int, progress: bool):
    """Run and score the MetaWorld policies of `generated` on the goals it records:
    (rows, header, tables, figure, fields for results.json)."""
    goals, select_goals = generated["goals"], generated.get("select_goals", 2)
    single = generated.get("single_policy_goals", goals)
    t_eval = time.time()
    apart = {"prompt-dt": lambda pairs: prompt_dt_success(chain, generated, pairs, progress),
             "care": lambda pairs: care_success(chain, generated, pairs, progress)} if chain else None
    success, select, picks, first_pass = evaluate_metaworld(generated, goals, select_goals, workers, progress, single,
                                                            tie_seed=generated.get("tie_seed", 0), apart=apart)
    rows = metaworld_rows(generated, success, picks, first_pass)
    print(f"evaluation episodes: {time.time() - t_eval:.0f}s")
    print(goal_weights_table(rows, generated["task"][0]))
    width = max(goals, single)
    header = (f"MetaWorld, success at any step of a 500-step episode; one generated policy per conditioning "
              f"embedding (up to {max(generated['n_conditions'].values(), default=0)} per task), each on at least "
              f"{goals} of the task's {width} fixed evaluation goal configurations (the policies of a method "
              f"cover the list; every row weighs each goal 1/{width}); top-k picks its k on {select_goals} other "
              f"goal configurations, never scored, each at least {SELECT_MIN_DISTANCE} m from every scored goal (ties "
              f"broken at random, seed {generated.get('tie_seed', 0)}), "
              f"and runs them on all {width}; the one-policy baselines (parent, expert, decoded expert) on all "
              f"{single}; {len(generated['method'])} policies, {int(np.isfinite(success).sum() + np.isfinite(select).sum())} "
              "episodes. Conditions: embeddings of rollouts of checkpoints no stage trained on, on stage 0's goals; "
              "`n (s/a)` = n used, s of a such rollouts successful. At quick scale the experts (and so the "
              "training data) come from SAC with scripted demonstrations; the paper's data was SAC alone.")
    figure = ("pca_latents.png", lambda p: pca_figure(chain["ae"], chain["ae_art"], generated, p)) if chain else None
    extra = {"seen": generated["seen"], "num_tokens": chain["hf_art"]["num_tokens"],  # what aggregate.py groups by
             "select_goal_min_distance": generated.get("select_goal_min_distance")} if chain else {}
    return rows, header, metaworld_tables(rows, generated), figure, extra


def main(args: Args) -> None:
    vels = validate(args)
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0, workers = time.time(), args.jobs or os.cpu_count() or 1
    if args.from_generated:  # re-evaluate saved policies; nothing is written
        generated = artifacts.load_artifact(args.from_generated, GENERATED_FORMAT, ("params", "method", "task"),
                                            spec=common.suite_spec(args.suite), suite=args.suite)
        keep = torch.tensor([m != "prompt-dt" for m in generated["method"]])  # Prompt-DT has no parameters to re-run
        if not keep.all():
            print("evaluation: Prompt-DT's episodes need its model and prompts: left out of a re-run of saved policies")
            generated |= {"params": generated["params"][keep], "method": [m for m, k in zip(generated["method"], keep) if k],
                          "task": [t for t, k in zip(generated["task"], keep) if k]}
        out = cheetah_report(generated, None) if args.suite == "cheetah-vel" else \
            metaworld_report(generated, None, workers, args.progress)
        print(out[1] + "\n\n" + out[2])
        return

    def out_name(name: str) -> str:  # results.json -> results-<tag>.json, videos -> videos-<tag>
        stem, dot, ext = name.partition(".")
        return f"{stem}-{args.tag}{dot}{ext}" if args.tag else name

    run, lock = artifacts.open_run_dir(args.run_dir, "evaluation")  # noqa: F841 - the lock is held till exit
    chain, settings = load_chain(args), artifacts.settings(args)
    if args.suite == "cheetah-vel":
        chain["oracle"] = load_oracles(run, args, chain, vels)
    if args.skip_done and results_up_to_date(run / out_name("results.json"), settings, chain["made_from"],
                                             upstream_code(chain)):
        print(f"evaluation: {run / out_name('results.json')} is up to date (same settings, artifacts and code); skipped")
        return
    if args.suite == "cheetah-vel":
        generated = generate(args, chain, vels)
        rows, header, md, figure, extra = cheetah_report(generated, chain)
    else:
        generated = generate_metaworld(chain, workers, conditions=args.conditions, success_only=args.success_only,
                                       seed=args.seed, baselines=args.baselines, goals=args.goals,
                                       select_goals=args.select_goals, single_policy_goals=args.single_policy_goals,
                                       progress=args.progress, config=asdict(args))
        rows, header, md, figure, extra = metaworld_report(generated, chain, workers, args.progress)
    print(header + "\n\n" + md)
    # first: a failure below (--videos) leaves no results.json for --skip-done to take beside new outputs
    (run / out_name("results.json")).unlink(missing_ok=True)
    artifacts.save_artifact(generated, run / out_name("generated.pt"))
    artifacts.write_atomic(run / out_name("results.md"), lambda p: p.write_text(f"{header}\n\n{md}\n"))
    artifacts.write_atomic(run / out_name(figure[0]), figure[1])
    if args.videos:
        import videos

        videos.render(generated, run / out_name("videos"), args.videos)
    res = {"suite": args.suite, "rows": rows, "settings": settings, "made_from": chain["made_from"],
           "upstream": upstream_settings(chain), "code": upstream_code(chain), "config": asdict(args), "seed": args.seed,
           **extra}  # seen, num_tokens: what aggregate.py groups by
    artifacts.write_results(run / out_name("results.json"), res)  # last: the chain checks it
    print(f"\nevaluation: {time.time() - t0:.0f}s; wrote {', '.join(out_name(n) for n in ('generated.pt', 'results.md', figure[0], 'results.json'))} in {run}")


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
