"""Prompt-DT (Xu et al., ICML 2022), the paper's Table IV comparison system, on the same offline data as every
other method (`offline_data.py`: episodes of the stage-0 checkpoints that train stages 1-3; DESIGN.md section 15).

A decision transformer: a causal GPT over the tokens (R_1, s_1, a_1, R_2, s_2, a_2, ...) of the last K steps,
R_t the return-to-go, preceded by a prompt, the same tokens for a short segment of a demonstration of the
task, with its own embeddings. The action a_t is read from the output at s_t's token, which sees R_1..R_t,
s_1..s_t, a_1..a_{t-1} and the prompt, never a later token:

    x      = [prompt tokens (3 P), trajectory tokens (3 K)] + timestep embeddings, LayerNorm
    a_hat_t = tanh(W_a GPT(x)[s_t])                                       the action head on s_t's output
    L      = mean over real (not padded) steps of || a_hat_t - a_t ||^2   (Prompt-DT's loss)

Training draws, for each training task, `batch_per_task` segments of K steps from the task's episodes (start
uniform, the segment padded on the left where the episode ends first), each with the task's prompt: the
last P steps of its highest-return episode (Prompt-DT's fixed prompt). Returns-to-go are divided by
`return_scale`, states standardised with the data's statistics. At test time (evaluate.py), episode after
episode in lockstep: the prompt of the test task and a target return R_1, decremented by each reward.

Settings of the authors' code (prompt-dt's Cheetah-Vel run), kept at every scale: K = 20, prompt of 5 steps
from 1 episode, 3 layers, 1 head, embedding 128, dropout 0.1, ReLU MLPs 4x wide, AdamW lr 1e-4, weight
decay 1e-4, linear warm-up, gradient clip 0.25, batch 16 per task, return scale 500. Fewer steps at quick
scale (1,000 after 100 of warm-up, where theirs runs 50,000 after 10,000; the paper scale keeps theirs).

    python baselines/prompt_dt.py --run-dir runs/cheetah-vel-quick         # -> <run_dir>/prompt_dt.pt
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project's modules

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import artifacts  # noqa: E402
import common  # noqa: E402
import training  # noqa: E402
from baselines.mt_bc import input_std  # noqa: E402
from offline_data import load_offline_data, returns_to_go  # noqa: E402

FORMAT = "amt-hyp/prompt-dt v1"
PARTIAL_FORMAT = "amt-hyp/prompt-dt-partial v1"


@dataclass
class Args:
    suite: Literal["cheetah-vel", "metaworld"] = "cheetah-vel"
    """task family"""
    scale: Literal["smoke", "quick", "paper"] = "quick"
    """sets the defaults of the options below (listed above); a flag given explicitly wins"""
    run_dir: str = "runs/cheetah-vel-quick"
    """reads offline_data.pt, writes prompt_dt.pt (default: runs/<suite>-<scale>)"""
    seed: int = 1
    context: int = 20
    """K: trajectory steps the transformer sees"""
    prompt_length: int = 5
    """P: steps of the prompt segment (from 1 episode)"""
    layers: int = 3
    heads: int = 1
    embed: int = 128
    dropout: float = 0.1
    steps: int = 1_000
    """gradient steps (the authors': 50,000; a step of 160 segments costs 0.5-1 s on one CPU core)"""
    warmup: int = 100
    """steps of linear learning-rate warm-up"""
    batch_per_task: int = 16
    """segments per training task in each batch"""
    lr: float = 1e-4
    weight_decay: float = 1e-4
    return_scale: float = 500.0
    """returns-to-go are divided by this"""
    save_every: int = 500
    """steps between saves of the resumable state (prompt_dt.partial.pt)"""
    skip_done: bool = False
    """do nothing if prompt_dt.pt was made with these settings from this offline data by this code"""
    device: str = "auto"
    threads: int = 2
    progress: bool = True


SCALES = {"smoke": dict(steps=30, warmup=5, save_every=10), "paper": dict(steps=50_000, warmup=10_000)}


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """A GPT-2 block: pre-LayerNorm causal self-attention and a ReLU MLP, each with a residual."""

    def __init__(self, embed: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(embed), nn.LayerNorm(embed)
        self.qkv, self.proj = nn.Linear(embed, 3 * embed), nn.Linear(embed, embed)
        self.mlp = nn.Sequential(nn.Linear(embed, 4 * embed), nn.ReLU(), nn.Linear(4 * embed, embed), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, E = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(B, L, E)), self.dropout, self.training)
        return x + self.mlp(self.ln2(x))


def interleave(returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Embedded (R_t, s_t, a_t) [B, T, E] each -> the token sequence (R_1, s_1, a_1, R_2, ...) [B, 3T, E]."""
    return torch.stack([returns, states, actions], 2).flatten(1, 2)


def attention_allowed(valid: torch.Tensor) -> torch.Tensor:
    """valid [B, L] (False: a padding token) -> [B, 1, L, L], True where query i may attend to key j: j <= i
    and j a real token; every query also attends to itself (a padding query's output is never read, but its
    softmax needs one key)."""
    L = valid.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()
    return ((causal & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=valid.device))[:, None]


class PromptDT(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, max_steps: int, embed: int = 128, layers: int = 3, heads: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        # one set of embeddings for the trajectory, one for the prompt (Prompt-DT's prompt_embed_*)
        self.embed_t, self.prompt_embed_t = nn.Embedding(max_steps, embed), nn.Embedding(max_steps, embed)
        self.embed_r, self.prompt_embed_r = nn.Linear(1, embed), nn.Linear(1, embed)
        self.embed_s, self.prompt_embed_s = nn.Linear(obs_dim, embed), nn.Linear(obs_dim, embed)
        self.embed_a, self.prompt_embed_a = nn.Linear(act_dim, embed), nn.Linear(act_dim, embed)
        self.ln_in, self.ln_out = nn.LayerNorm(embed), nn.LayerNorm(embed)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(embed, heads, dropout) for _ in range(layers))
        self.predict_action = nn.Linear(embed, act_dim)

    def tokens(self, seq: dict, prompt: bool) -> torch.Tensor:
        """{rtg [B, T, 1], obs, act, t [B, T]} -> embedded tokens [B, 3T, E] (timestep embedding added to each)."""
        er, es, ea, et = ((self.prompt_embed_r, self.prompt_embed_s, self.prompt_embed_a, self.prompt_embed_t) if prompt
                          else (self.embed_r, self.embed_s, self.embed_a, self.embed_t))
        time = et(seq["t"])
        return interleave(er(seq["rtg"]) + time, es(seq["obs"]) + time, ea(seq["act"]) + time)

    def forward(self, seq: dict, prompt: dict) -> torch.Tensor:
        """Predicted actions [B, K, act_dim] at every trajectory step (each from its state token); `seq` and
        `prompt` also hold `mask` [B, T] (False: padding)."""
        x = torch.cat([self.tokens(prompt, True), self.tokens(seq, False)], 1)
        valid = torch.cat([prompt["mask"].repeat_interleave(3, 1), seq["mask"].repeat_interleave(3, 1)], 1)
        x, allowed = self.drop(self.ln_in(x)), attention_allowed(valid)
        for block in self.blocks:
            x = block(x, allowed)
        h = self.ln_out(x)[:, 3 * prompt["t"].shape[1]:]  # the trajectory's tokens
        return torch.tanh(self.predict_action(h[:, 1::3]))  # from each s_t's token


def action_loss(pred: torch.Tensor, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (pred - act)[mask].square().mean()  # L = mean over real steps of || a_hat_t - a_t ||^2


# ----------------------------------------------------------------------------------------------------
# Segments of episodes: training batches, prompts
# ----------------------------------------------------------------------------------------------------


def segment(ep: dict, start: int, length: int, scale: float, obs_mean, obs_std) -> dict:
    """Steps start..start+length-1 of one episode (obs [T, o], act, rtg [T] (unscaled)) as model inputs of
    exactly `length` steps: left-padded with zeros where the episode ends first, mask False there."""
    T = len(ep["act"])
    n = min(length, T - start)
    pad = length - n

    def take(x, fill=0.0):
        part = x[start : start + n]
        return torch.cat([torch.full((pad, *part.shape[1:]), fill, dtype=part.dtype), part])

    return {"obs": take((ep["obs"] - obs_mean) / obs_std), "act": take(ep["act"]),
            "rtg": take(ep["rtg"][:, None] / scale), "t": take(torch.arange(T), 0),
            "mask": torch.cat([torch.zeros(pad, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])}


def stack(segments: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in segments]) for k in segments[0]}


def episode(data: dict, i: int) -> dict:
    return {"obs": data["obs"][i], "act": data["act"][i], "rtg": returns_to_go(data["rew"][i])}


def prompt_segment(ep: dict, length: int, scale: float, obs_mean, obs_std) -> dict:
    """Prompt-DT's fixed prompt: the last `length` steps of the episode but one (its start T - length - 1)."""
    return segment(ep, max(0, len(ep["act"]) - length - 1), length, scale, obs_mean, obs_std)


def training_batch(data: dict, episodes_of: list[torch.Tensor], prompts: list[dict], args: Args,
                   g: torch.Generator, dev) -> tuple[dict, dict]:
    """`batch_per_task` segments of K steps from each task's episodes (episode and start uniform) and their
    task's prompt."""
    segs, prm = [], []
    T = data["obs"].shape[1]
    for task, rows in enumerate(episodes_of):
        for i in rows[torch.randint(len(rows), (args.batch_per_task,), generator=g)].tolist():
            start = int(torch.randint(T, (1,), generator=g))
            segs.append(segment(episode(data, i), start, args.context, args.return_scale, data["obs_mean"],
                                data["obs_std"]))
            prm.append(prompts[task])
    to = lambda d: {k: v.to(dev) for k, v in d.items()}  # noqa: E731
    return to(stack(segs)), to(stack(prm))


# ----------------------------------------------------------------------------------------------------
# Acting: episodes in lockstep (evaluate.py)
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def run_prompted(model: PromptDT, art: dict, envs: list, prompts: list[dict], target_returns: list[float],
                 steps: int, stop_on_success: bool = False) -> dict:
    """One episode in each of `envs` (reset-ready), env i with prompt i (`prompt_segment`) and target return i,
    all in lockstep: each step one forward of the last K steps of every episode. Returns float arrays [N]
    `return` and `success` (info["success"] at any step). `stop_on_success`: an env that has succeeded is not
    stepped again (its success is decided; its return is then of the steps it ran)."""
    K, scale, n = art["settings"]["context"], art["settings"]["return_scale"], len(envs)
    obs_mean, obs_std = art["obs_mean"], art["obs_std"]
    o = torch.from_numpy(np.stack([e.reset()[0] for e in envs]).astype(np.float32))
    obs, act = torch.zeros(n, steps, o.shape[1]), torch.zeros(n, steps, art["policy"]["act_dim"])
    rtg = torch.zeros(n, steps)
    rtg[:, 0] = torch.tensor(target_returns, dtype=torch.float32)
    ret, success = np.zeros(n), np.zeros(n)
    prompt = stack(prompts)
    for t in range(steps):
        obs[:, t] = o
        a = max(0, t + 1 - K)
        seq = {"obs": (obs[:, a : t + 1] - obs_mean) / obs_std, "act": act[:, a : t + 1],
               "rtg": rtg[:, a : t + 1, None] / scale, "t": torch.arange(a, t + 1).expand(n, -1),
               "mask": torch.ones(n, t + 1 - a, dtype=torch.bool)}  # the current action: zeros, never seen by s_t
        pad = K - (t + 1 - a)
        if pad:
            seq = {k: torch.cat([torch.zeros(n, pad, *v.shape[2:], dtype=v.dtype), v], 1) for k, v in seq.items()}
        act[:, t] = model(seq, prompt)[:, -1]
        for i, env in enumerate(envs):
            if stop_on_success and success[i]:
                continue
            o_i, r, _, _, info = env.step(act[i, t].numpy())
            o[i] = torch.from_numpy(np.asarray(o_i, dtype=np.float32))
            ret[i] += r
            success[i] = max(success[i], float(info.get("success", 0.0)))
            if t + 1 < steps:
                rtg[i, t + 1] = rtg[i, t] - r
    return {"return": ret, "success": success}


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def main(args: Args) -> None:
    common.check_options(args, positive=("context", "prompt_length", "layers", "heads", "embed", "steps",
                                         "batch_per_task", "lr", "return_scale", "save_every", "threads"),
                         nonnegative=("warmup", "weight_decay"), fraction=("dropout",), seeds=("seed",))
    if args.embed % args.heads:
        raise SystemExit(f"error: --embed {args.embed} must be a multiple of --heads {args.heads}")
    dev = common.pick_device(args.device)
    run, lock = artifacts.open_run_dir(args.run_dir, "Prompt-DT")  # noqa: F841 - held till exit
    path, partial = run / "prompt_dt.pt", run / "prompt_dt.partial.pt"
    data = load_offline_data(run / "offline_data.pt", args.suite, args.scale)
    settings, made_from = artifacts.settings(args), {"offline_data.pt": data["uid"]}
    if args.skip_done and artifacts.up_to_date(path, FORMAT, settings, made_from):
        print(f"Prompt-DT: {path} is up to date (same settings, data and code); skipped")
        return
    common.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    flat = data["obs"].flatten(0, 1)
    data["obs_mean"], data["obs_std"] = flat.mean(0), input_std(flat)
    present = [t for t in range(len(data["tasks"])) if (data["task"] == t).any()]  # the training tasks
    episodes_of = [(data["task"] == t).nonzero().squeeze(1) for t in present]
    best = [int(rows[data["return"][rows].argmax()]) for rows in episodes_of]  # each task's prompt episode
    prompts = [prompt_segment(episode(data, i), args.prompt_length, args.return_scale, data["obs_mean"],
                              data["obs_std"]) for i in best]
    spec = common.suite_spec(args.suite)
    arch = {"obs_dim": spec["obs_dim"], "act_dim": spec["act_dim"], "max_steps": data["obs"].shape[1],
            "embed": args.embed, "layers": args.layers, "heads": args.heads, "dropout": args.dropout}
    model = PromptDT(**arch).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / max(args.warmup, 1), 1.0))
    g = torch.Generator().manual_seed(args.seed)
    states = {"model": model, "opt": opt, "sched": sched}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Prompt-DT: {len(data['obs'])} episodes of {len(present)} tasks; K {args.context}, prompt "
          f"{args.prompt_length} steps; {args.layers} layers x {args.heads} head(s), embedding {args.embed}, "
          f"{n_params / 1e6:.2f}M parameters; batch {args.batch_per_task} x {len(present)} segments")

    log = training.TrainingLog("Prompt-DT", run / "tb" / "prompt_dt", args.steps, tag="prompt_dt/",
                               progress=args.progress, every=max(1, args.steps // 200), partial=partial,
                               partial_format=PARTIAL_FORMAT, settings=settings, made_from=made_from, states=states,
                               save_every=args.save_every)
    model.train()
    for step in range(log.start, args.steps):
        g.manual_seed(args.seed * 1_000_003 + step)  # each step's batch from (seed, step): a resumed run draws the same
        seq, prompt = training_batch(data, episodes_of, prompts, args, g, dev)
        loss = action_loss(model(seq, prompt), seq["act"], seq["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)  # Prompt-DT's clip
        opt.step()
        sched.step()
        log.step(step, {"action_loss": loss}, lr=sched.get_last_lr()[0])
    log.close()
    print(f"final: action loss {log.history['action_loss'][-1]:.4f} (mean squared action error per dimension)")
    tasks = [data["tasks"][t] for t in present]
    art = {"format": FORMAT, "suite": args.suite, "policy": spec, "settings": settings, "made_from": made_from,
           "config": asdict(args), "arch": arch, "step": args.steps, "obs_mean": data["obs_mean"],
           "obs_std": data["obs_std"], "tasks": tasks, "task_best_return": [float(data["return"][i]) for i in best],
           "history": log.history, "model": artifacts.cpu_state(model), "seconds": time.time() - t0}
    artifacts.save_artifact(art, path)
    partial.unlink(missing_ok=True)
    print(f"Prompt-DT: saved {path} in {art['seconds']:.0f}s")


def load_prompt_dt(path, suite: str, scale: str) -> tuple[PromptDT, dict]:
    """The trained model, frozen in eval mode, and its artifact."""
    art = artifacts.load_artifact(path, FORMAT, ("model", "arch", "obs_mean", "obs_std", "tasks", "task_best_return",
                                                 "step", "settings", "made_from"),
                                  spec=common.suite_spec(suite), suite=suite, scale=scale)
    if art["step"] != art["settings"]["steps"]:
        raise SystemExit(f"error: {path}: trained {art['step']} of {art['settings']['steps']} steps (unfinished)")
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: the global stream stays as it was
        model = PromptDT(**art["arch"])
    model.load_state_dict(art["model"])
    return model.eval().requires_grad_(False), art


if __name__ == "__main__":
    main(common.parse_args(Args, SCALES, __doc__))
