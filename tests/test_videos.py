"""videos.py: frames of a generated policy rendered headless, and one line where no OpenGL is found."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_videos_render_frames_that_move(cheetah_chain, tmp_path):
    """A few frames of a generated policy, headless (MUJOCO_GL=egl): not blank, changing over time."""
    run, _ = cheetah_chain
    code = f"""
import torch, numpy as np, common, videos
g = torch.load({str(run / 'generated.pt')!r}, weights_only=True)
env = common.make_eval_env('cheetah-vel', 1.2, episode=0, render=True)
env.max_steps = 12
frames, res = videos.episode_frames(g['params'][0], env, g['policy'], 'cheetah-vel', 'hyplatent #0')
a = [np.asarray(f.convert('RGB'), dtype=float) for f in frames]
print(len(a), a[0].shape, min(x[20:].std() for x in a), np.abs(a[0] - a[-1]).mean(), res['achieved_velocity'])
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MUJOCO_GL="egl"))
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.split()  # frames, shape, smallest std of a frame, mean change first -> last, velocity
    assert out[0] == "6" and out[1:4] == ["(240,", "320,", "3)"]  # every 2nd of 12 steps
    assert float(out[4]) > 10  # no frame is blank (below the caption bar)
    assert float(out[5]) > 0.5  # the picture changed between the first and the last frame


def test_videos_without_opengl_one_line(cheetah_chain, tmp_path):
    run, _ = cheetah_chain
    r = subprocess.run([sys.executable, str(ROOT / "videos.py"), str(run / "generated.pt"), "--per-task", "1",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MUJOCO_GL="no-such-backend"))
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]
    assert "cannot render" in r.stderr and "MUJOCO_GL=egl" in r.stderr
