"""Videos of generated policies (the paper's Fig. 1 for MetaWorld and Fig. 3 for Cheetah-Vel).

Renders one episode (Cheetah-Vel: evaluation episode 0, the reset every method is scored on; MetaWorld:
evaluation goal 0, on which the evaluation runs only some policies) of the first `per_task` policies of each
generating method per task of a `generated.pt` to animated GIFs, headless: set `MUJOCO_GL=egl` (with Mesa this works
on a CPU machine; `osmesa` is the slower fallback). Each frame carries the method, the task and, for
Cheetah-Vel, the target and the achieved velocity (running mean of the x velocity); for MetaWorld whether
the task has succeeded so far. Writes `<out>/<method>-<task>-<i>.gif` and `<out>/index.md` listing them
with their return (and success). Where no OpenGL context can be made, stops with one line.

    MUJOCO_GL=egl python videos.py runs/cheetah-vel-quick/generated.pt --per-task 2
    MUJOCO_GL=egl python evaluate.py --videos 2      # the same, after an evaluation
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import tyro

import artifacts
import common

METHODS = ("hyplatent", "hypformer", "maa", "oracle-expert")  # generated policies, and the bound beside them
FRAME_EVERY = 2  # keep every 2nd step: 200-step Cheetah-Vel -> 100 frames, 500-step MetaWorld -> 250


@dataclass
class Args:
    generated: tyro.conf.Positional[str]
    """a generated.pt written by evaluate.py"""
    per_task: int = 2
    """policies per task and method"""
    out: str = ""
    """output folder (default: videos/ beside the generated.pt)"""
    tasks: Optional[list[str]] = None
    """only these tasks of the generated.pt (e.g. vel-1.2 or door-open-v3; default: all)"""
    methods: list[str] = field(default_factory=lambda: ["hyplatent", "hypformer", "oracle-expert"])
    """which methods' policies to render"""
    small: bool = False
    """half-size frames (160x120), for GIFs kept in the repository"""


@torch.no_grad()
def episode_frames(params: torch.Tensor, env, spec: dict, suite: str, label: str) -> tuple[list, dict]:
    """One deterministic episode of one flat policy, frames captioned; returns frames and the outcome."""
    from PIL import Image, ImageDraw

    obs, _ = env.reset()
    frames, ret, vel, success, t, done = [], 0.0, [], 0.0, 0, False
    while not done:
        act = common.batched_act(params[None], torch.as_tensor(obs, dtype=torch.float32)[None, None], spec)[0, 0]
        obs, r, term, trunc, info = env.step(act.numpy())
        ret, t, done = ret + r, t + 1, term or trunc
        success = max(success, float(info.get("success", 0.0)))
        vel.append(info.get("x_velocity", 0.0))
        if t % FRAME_EVERY == 0 or done:
            frame = env.render()
            if suite == "metaworld":  # its corner camera renders upside down: flip rows
                frame = frame[::-1]
            img = Image.fromarray(np.ascontiguousarray(frame))
            text = (f"{label}  v*={env.target:g}  achieved {np.mean(vel):.2f}  t={t}" if suite == "cheetah-vel"
                    else f"{label}  t={t}  {'SUCCESS' if success else 'no success yet'}")
            draw = ImageDraw.Draw(img)
            draw.rectangle([0, 0, img.width, 14], fill=(0, 0, 0))
            draw.text((3, 2), text, fill=(255, 255, 0) if success else (255, 255, 255))
            frames.append(img)
    return frames, {"return": ret, "success": success, "achieved_velocity": float(np.mean(vel))}


def render_error(e: Exception) -> str:
    return (f"error: cannot render ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}); "
            "set MUJOCO_GL=egl (or osmesa) on a machine with Mesa")


def check_rendering(suite: str) -> None:
    """Render one frame of a fresh env of `suite`, or stop with one line: what evaluate.py --videos checks
    before its evaluation, not after it."""
    try:
        env = common.make_eval_env(suite, 1.0 if suite == "cheetah-vel" else common.MW_TASKS[0], render=True)
        env.reset()
        env.render()
        getattr(env, "env", env).close()
    except Exception as e:  # noqa: BLE001 - no OpenGL: mujoco raises various errors
        raise SystemExit(render_error(e)) from None


def check_tasks(tasks: list[str] | None, generated: dict, path) -> list[str]:
    """The tasks of --tasks (None: all), each one of the generated file's, else one line."""
    if tasks is None:
        return []
    if not tasks:
        raise SystemExit("error: --tasks names no task (leave it out for all of them)")
    if bad := [t for t in tasks if t not in generated["task"]]:
        raise SystemExit(f"error: --tasks {' '.join(bad)}: not in {path}; its tasks: "
                         f"{', '.join(dict.fromkeys(generated['task']))}")
    return tasks


def render(generated: dict, out: Path, per_task: int, tasks=(), methods=METHODS, small: bool = False) -> list[dict]:
    """GIFs of the first `per_task` policies per task (of `tasks`, default all) of each of `methods`;
    writes index.md. `small`: frames at half size, 32 colours."""
    suite, spec = generated["suite"], generated["policy"]
    method, task = np.array(generated["method"]), np.array(generated["task"])
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for t in [t for t in dict.fromkeys(generated["task"]) if not tasks or t in tasks]:
        for m in methods:
            idx = np.flatnonzero((method == m) & (task == t))[:per_task]
            for i, j in enumerate(idx):
                target = float(generated["target_velocity"][j]) if suite == "cheetah-vel" else t
                try:
                    env = common.make_eval_env(suite, target, episode=0, render=True)
                    frames, res = episode_frames(generated["params"][j], env, spec, suite, f"{m} #{i}")
                except Exception as e:  # noqa: BLE001 - no OpenGL: mujoco raises various errors
                    raise SystemExit(render_error(e)) from None
                if small:
                    frames = [f.resize((f.width // 2, f.height // 2)).quantize(colors=32) for f in frames]
                path = out / f"{m}-{t}-{i}.gif"
                artifacts.write_atomic(path, lambda p: frames[0].save(p, format="GIF", save_all=True,
                                                                   append_images=frames[1:], duration=40, loop=0))
                made.append({"file": path.name, "method": m, "task": t, **res})
    lines = [f"# Videos of {len(made)} policies (evaluation episode 0, or goal 0 on MetaWorld)", "",
             "| video | method | task | return | " + ("achieved velocity |" if suite == "cheetah-vel" else "success |"),
             "|---|---|---|---|---|"]
    lines += [f"| [{v['file']}]({v['file']}) | {v['method']} | {v['task']} | {v['return']:.1f} | "
              + (f"{v['achieved_velocity']:.2f} |" if suite == "cheetah-vel" else f"{'yes' if v['success'] else 'no'} |")
              for v in made]
    artifacts.write_atomic(out / "index.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    print(f"videos: {len(made)} GIFs and index.md in {out}")
    return made


def main(args: Args) -> None:
    if args.per_task < 1:
        raise SystemExit(f"error: --per-task must be at least 1 (got {args.per_task})")
    g = artifacts.load_artifact(args.generated, artifacts.GENERATED_FORMAT, ("params", "method", "task", "policy"))
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        raise SystemExit(f"error: --methods {' '.join(bad)}: unknown; valid: {', '.join(METHODS)}")
    if not args.methods:
        raise SystemExit("error: --methods names no method (leave it out for the default ones)")
    tasks = check_tasks(args.tasks, g, args.generated)
    render(g, Path(args.out) if args.out else Path(args.generated).parent / "videos", args.per_task, tasks,
           args.methods, args.small)


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
