"""Evaluation: zero-shot policies for unseen Cheetah-Vel target velocities (paper Sec. V-B, Table IV;
DESIGN.md section 8).

For each test velocity, K policies are generated from HypLatent alone (G(tau_e, n), decoded) and K from
HypLatent + HypFormer (L fresh samples of G refined to Z_pred + grad_pred, decoded), and run for E
episodes each. Baselines, measured in the same run:
- nearest-expert: the best stage-0 checkpoint of the nearest training velocity;
- decoded-expert: the autoencoder's round trip of that checkpoint (what the decoder alone loses);
- interpolated-expert: the best checkpoints of the two training velocities around the target, their
  parameters mixed linearly by velocity distance (outside the training range: the nearest expert);
- parent: the policy every expert was fine-tuned from.
Every policy of every method runs in lockstep: one batched forward of all policies per step.

The score of a method is its mean return over the test velocities (each: mean over policies and episodes).
Writes `runs/<suite>/results.md` (Table IV with our rows and the paper's printed rows, marked),
`results.json`, `generated.pt` (every evaluated policy) and `return_vs_velocity.png`.

    python evaluate.py                                  # the paper's 5 test velocities
    python evaluate.py --velocities 0.35 1.55 2.8       # any target velocities in [0, 3]
    python evaluate.py --from-generated runs/cheetah-vel/generated.pt    # re-run saved policies
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import tyro

import common

PAPER_ROWS = [("paper:MACAW (Iter. 0)", -121.6), ("paper:MACAW (Iter. 20K)", -60.5), ("paper:Prompt-DT", -34.43),
              ("paper:AMT-Hyp w/o HypFormer (10 seeds)", -33.44), ("paper:AMT-Hyp w/o HypFormer (35 seeds)", -29.6)]
METHODS = ["hyplatent", "hypformer", "nearest-expert", "decoded-expert", "interpolated-expert", "parent"]
GENERATED_FORMAT = "amt-hyp/generated v1"


@dataclass
class Args:
    suite: Literal["cheetah-vel"] = "cheetah-vel"
    """task family (MetaWorld evaluation: not yet)"""
    scale: Literal["smoke", "quick", "mw-quick", "paper"] = "quick"
    """sets the defaults of every option left unset (DESIGN section 9)"""
    run_dir: Optional[str] = None
    """reads the artifacts of stages 0-3, writes results (default runs/<suite>)"""
    seed: int = 1
    velocities: Optional[list[str]] = None
    """target velocities in [0, 3] (default: the paper's test velocities 0.225 0.6 1.2 1.8 2.025)"""
    policies_per_task: Optional[int] = None
    """K generated policies per velocity and method"""
    episodes: Optional[int] = None
    """E episodes per policy (different reset seeds)"""
    hyplatent: str = "hyplatent.pt"
    hypformer: str = "hypformer.pt"
    from_generated: Optional[str] = None
    """re-evaluate the policies of a generated.pt instead of generating new ones"""
    threads: int = 2


SCALES = {"smoke": dict(policies_per_task=2, episodes=1), "quick": dict(policies_per_task=10, episodes=5),
          "mw-quick": dict(policies_per_task=10, episodes=5), "paper": dict(policies_per_task=10, episodes=5)}


def parse_velocities(values: list[str] | None) -> list[float]:
    if values is None:
        return list(common.CHEETAH_TEST)
    try:
        vels = [float(v) for v in values]
    except ValueError:
        raise SystemExit(f"error: --velocities takes numbers in [0, 3]; got {' '.join(values)}") from None
    return common.check_velocities(vels)


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


@torch.no_grad()
def generate(args: Args, vels: list[float]) -> dict:
    """Every policy to evaluate: params [N, P] with its method and target velocity."""
    run = Path(args.run_dir)
    shards = common.load_stage0(run, args.suite)
    ae, _ = common.load_autoencoder(run / "autoencoder.pt", args.suite)
    G, gen = common.load_generator(run / args.hyplatent, args.suite)
    hf, hart = common.load_hypformer(run / args.hypformer, args.suite)
    parent = common.load_artifact(run / "parent.pt", "amt-hyp/stage0-parent v1", ("params",),
                                  spec=common.suite_spec(args.suite), suite=args.suite)
    train_vels = [s["target_velocity"] for s in shards]
    best = torch.stack([s["params"][s["return"].argmax()] for s in shards])
    decode = lambda zn: ae.decode((zn * gen["latent_std"] + gen["latent_mean"]).view(len(zn), 2, -1))  # noqa: E731
    K = args.policies_per_task
    params, method, task = [], [], []

    def add(p, m, v):
        params.append(p.reshape(-1, p.shape[-1]))
        method.extend([m] * params[-1].shape[0])
        task.extend([v] * params[-1].shape[0])

    for v in vels:
        c = ((torch.tensor([[v]]) - gen["cond_mean"]) / gen["cond_std"]).repeat(K, 1)
        add(decode(G(c, torch.randn(K, G.noise_dim))), "hyplatent", v)
        z_hat = G(c.repeat_interleave(hart["num_tokens"], 0), torch.randn(K * hart["num_tokens"], G.noise_dim))
        z_pred, grad_pred = hf(z_hat.view(K, hart["num_tokens"], -1), c)
        add(decode(z_pred + grad_pred), "hypformer", v)
        near = best[nearest_expert(train_vels, v)]
        add(near, "nearest-expert", v)
        add(ae.decode(ae.encode(near[None])), "decoded-expert", v)
        add(interpolate_experts(train_vels, best, v), "interpolated-expert", v)
        add(parent["params"], "parent", v)
    return {"format": GENERATED_FORMAT, "suite": args.suite, "policy": common.suite_spec(args.suite),
            "params": torch.cat(params).float(), "method": method, "task": [common.task_name(args.suite, v) for v in task],
            "target_velocity": torch.tensor(task, dtype=torch.float32), "train_velocities": train_vels,
            "episodes": args.episodes, "config": asdict(args)}


def evaluate(gen: dict, episodes: int) -> np.ndarray:
    """Return of every policy in every episode [N, E]: all N x E episodes in lockstep."""
    vels = gen["target_velocity"].tolist()
    envs = [common.make_eval_env("cheetah-vel", v, episode=e) for e in range(episodes) for v in vels]
    out = common.run_lockstep(gen["params"].repeat(episodes, 1), envs, gen["policy"])
    return out["return"].reshape(episodes, len(vels)).T


def score_rows(gen: dict, returns: np.ndarray) -> list[dict]:
    rows = []
    methods = [m for m in METHODS if m in gen["method"]]
    vels = sorted(set(gen["target_velocity"].tolist()))
    method, vel = np.array(gen["method"]), gen["target_velocity"].numpy()
    for m in methods:
        per_v = []
        for v in vels:
            sel = (method == m) & np.isclose(vel, v)
            per_v.append(float(returns[sel].mean()))
            rows.append({"method": m, "task": common.task_name("cheetah-vel", v), "score": per_v[-1],
                         "n_policies": int(sel.sum()), "n_episodes": int(returns.shape[1])})
        rows.append({"method": m, "task": "average", "score": float(np.mean(per_v)),
                     "n_policies": int((method == m).sum()), "n_episodes": int(returns.shape[1])})
    for name, score in PAPER_ROWS:
        rows.append({"method": name, "task": "average", "score": score, "n_policies": 0, "n_episodes": 0})
    return rows


def table(rows: list[dict], vels: list[float]) -> str:
    names = {"hyplatent": "AMT-Hyp w/o HypFormer (HypLatent)", "hypformer": "AMT-Hyp (HypLatent + HypFormer)",
             "nearest-expert": "nearest expert", "decoded-expert": "decoded nearest expert",
             "interpolated-expert": "interpolated expert", "parent": "parent"}
    head = "| method | " + " | ".join(f"v* = {v:g}" for v in vels) + " | average |"
    lines = [head, "|---" * (len(vels) + 2) + "|"]
    by = {(r["method"], r["task"]): r["score"] for r in rows}
    for m in [m for m in METHODS if (m, "average") in by]:
        cells = [f"{by[(m, common.task_name('cheetah-vel', v))]:.2f}" for v in vels]
        lines.append(f"| {names[m]} (measured) | " + " | ".join(cells) + f" | {by[(m, 'average')]:.2f} |")
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
        if (m, "average") in by:
            ys = [by[(m, common.task_name("cheetah-vel", v))] for v in vels]
            ax.plot(vels, ys, "o--" if m == "parent" else "o-", label=m, alpha=0.6 if m == "parent" else 1.0)
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


def main(args: Args) -> None:
    common.apply_scale(args, SCALES[args.scale])
    args.run_dir = args.run_dir or f"runs/{args.suite}"
    vels = parse_velocities(args.velocities)
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    run, t0 = Path(args.run_dir), time.time()
    if args.from_generated:
        gen = common.load_artifact(args.from_generated, GENERATED_FORMAT, ("params", "method", "target_velocity"),
                                   spec=common.suite_spec(args.suite), suite=args.suite)
        vels = sorted(set(gen["target_velocity"].tolist()))
        args.episodes = gen["episodes"]
    else:
        gen = generate(args, vels)
        common.save_artifact(gen, run / "generated.pt")
    returns = evaluate(gen, args.episodes)
    rows = score_rows(gen, returns)
    md = table(rows, vels)
    n = len(gen["method"])
    header = (f"Cheetah-Vel zero-shot, mean return over 200 steps; {args.policies_per_task} generated policies x "
              f"{args.episodes} episodes per velocity and method; {n} policies, {n * args.episodes} episodes in "
              f"lockstep; training velocities {', '.join(f'{v:g}' for v in gen['train_velocities'])}.")
    out = args.from_generated is None
    if out:
        (run / "results.md").write_text(f"{header}\n\n{md}\n")
        (run / "results.json").write_text(json.dumps({"suite": args.suite, "rows": rows, "config": asdict(args)},
                                                     indent=1))
        plot(rows, vels, gen["train_velocities"], run / "return_vs_velocity.png")
    print(header + "\n\n" + md)
    print(f"\nevaluation: {time.time() - t0:.0f}s" + (f"; wrote {run}/results.md, results.json, generated.pt, "
                                                     "return_vs_velocity.png" if out else ""))


if __name__ == "__main__":
    main(tyro.cli(Args))
