"""The latent dataset a generator trains on (DESIGN.md section 6): the (Z, tau_e) pairs that HypLatent (stage 2),
MAA's diffusion (stage 2, the baseline) and HypFormer (stage 3) learn from, and the way back from a generated
latent to a policy that runs.

- `load_inputs`: stages 0-1's artifacts, loaded once and checked to belong together, and the pairs: the
  autoencoder latent Z of each training checkpoint and its raw condition tau_e (Cheetah-Vel: the target
  velocity; MetaWorld: the behaviour embedding h of its rollout).
- `decode_generated`: a generator's normalised latents -> flat policies (the autoencoder's decoder).
- `run_generated`: decode them and run each on its task; `check_conditions`: the training pairs such a
  functional check runs on.

Stages 2 and 3 and the evaluation import these; the models stay in the stage files that train them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import artifacts
import common
from stage1_autoencoder import PolicyAutoencoder, load_autoencoder
from stage1_behavior_embed import load_behavior_embed


def load_inputs(run_dir: str | Path, suite: str, scale: str) -> dict:
    """What stages 2, 3 and the evaluation read from stages 0-1, each artifact loaded once and checked to
    belong together: the shards, the autoencoder (`ae` model, `ae_art` artifact), on MetaWorld the behaviour
    embedding (`phi`, `be`); and the (Z, tau_e) pairs stages 2 and 3 learn from: the latents of the
    autoencoder's training checkpoints and their raw conditions (Cheetah-Vel: the shard's target velocity;
    MetaWorld: the rollout's behaviour embedding h). `made_from` names the artifacts by uid."""
    run = Path(run_dir)
    shards = artifacts.load_stage0(run, suite, scale)
    model, ae = load_autoencoder(run / "autoencoder.pt", suite, scale)
    artifacts.check_made_from(run / "autoencoder.pt", ae, artifacts.shard_ids(shards))
    made_from, phi, be = {"autoencoder.pt": ae["uid"]}, None, None
    if suite == "cheetah-vel":
        velocity = {s["task"]: s["target_velocity"] for s in shards}  # by name, never by position
        cond = torch.tensor([[velocity[ae["tasks"][i]]] for i in ae["task_index"].tolist()])
    else:
        phi, be = load_behavior_embed(run / "behavior_embed.pt", suite, scale)
        artifacts.check_made_from(run / "behavior_embed.pt", be, {**artifacts.shard_ids(shards), **made_from})
        cond, made_from["behavior_embed.pt"] = be["h"], be["uid"]
    train = ae["train"]
    return {"shards": shards, "ae": model, "ae_art": ae, "phi": phi, "be": be, "Z": ae["latents"].flatten(1)[train],
            "cond": cond[train], "task_index": ae["task_index"][train], "tasks": ae["tasks"],
            "token_dim": ae["token_dim"], "made_from": made_from}


def decode_generated(latents: torch.Tensor, hl_art: dict, ae: PolicyAutoencoder) -> torch.Tensor:
    """Normalised generated latents [N, 2 * token_dim] -> flat policies [N, P]: undo the generator's latent
    normalisation (`latent_mean`, `latent_std` in its artifact `hl_art`), then the autoencoder's decoder."""
    z = latents * hl_art["latent_std"] + hl_art["latent_mean"]
    return ae.decode(z.view(len(latents), 2, -1))


def run_generated(latents: torch.Tensor, hl_art: dict, ae: PolicyAutoencoder, suite: str, tasks: list,
                  episodes: int = 1) -> np.ndarray:
    """Decode normalised latents and run policy i on tasks[i] (velocity or metaworld name), `episodes`
    times each, in lockstep. Returns the mean return (Cheetah-Vel) or success (MetaWorld) per policy, [N]."""
    with torch.no_grad():
        params = decode_generated(latents, hl_art, ae).repeat(episodes, 1)
    envs = [common.make_eval_env(suite, t, episode=e) for e in range(episodes) for t in tasks]
    out = common.run_lockstep(params, envs, common.suite_spec(suite))
    return out["return" if suite == "cheetah-vel" else "success"].reshape(episodes, len(tasks)).mean(0)


def check_conditions(data: dict, per_task: int, seed: int) -> tuple[torch.Tensor, list]:
    """Up to `per_task` training pairs per task of `load_inputs`'s `data` for a functional check: (indices,
    task of each as an env argument: velocity or metaworld name)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([rows[torch.randperm(len(rows), generator=g)[:per_task]]
                     for rows in ((data["task_index"] == t).nonzero().squeeze(1) for t in range(len(data["tasks"])))])
    names = [data["tasks"][int(t)] for t in data["task_index"][idx]]
    return idx, [float(c) for c in data["cond"][idx, 0]] if data["cond"].shape[1] == 1 else names
