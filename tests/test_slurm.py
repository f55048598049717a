"""The job-array recipe (slurm/): the bodies of its jobs run here by hand at smoke scale, the array
variable set as SLURM would, two experts at once in one run directory, then the chain job on a complete
stage 0."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_job_array_bodies_make_the_chain(cheetah_chain, tmp_path):
    chain_run, _ = cheetah_chain
    run = tmp_path / "run"
    env = dict(os.environ, AMT_NO_VENV="1", SUITE="cheetah-vel", SCALE="smoke", RUN_DIR=str(run),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    job = lambda *a, **kw: subprocess.run(["bash", str(ROOT / "slurm" / "job.sh"), *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                          text=True, timeout=600, env={**env, **kw})
    r = job("count")
    assert r.returncode == 0 and r.stdout.strip() == "7"  # 2 smoke velocities + 5 oracle velocities
    run.mkdir()
    shutil.copy(chain_run / "parent.pt", run / "parent.pt")  # the parent job finds it and checks it
    r = job("parent")
    assert r.returncode == 0 and "parent: using" in r.stdout, r.stderr
    # array tasks 0 and 1 (the training velocities) at once, task 2 (the first oracle velocity) after
    procs = [subprocess.Popen(["bash", str(ROOT / "slurm" / "job.sh"), "shard"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, "SLURM_ARRAY_TASK_ID": str(i)})
             for i in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert job("shard", SLURM_ARRAY_TASK_ID="2").returncode == 0
    assert sorted(p.name for p in (run / "stage0").glob("*.pt")) == ["vel-0.3.pt", "vel-1.5.pt"]
    assert [p.name for p in (run / "oracle").glob("*.pt")] == ["vel-0.225.pt"]
    # the same experts as a local stage 0 that trains each task as its own ensemble (--jobs 2 for 2 tasks; same
    # seed, same parent). The smoke chain trains the two as one ensemble, equal to these within float rounding
    # only (DESIGN.md section 4), so the comparison is with a local run of the job array's split.
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(chain_run / "parent.pt", local / "parent.pt")
    r = subprocess.run([sys.executable, str(ROOT / "stage0_collect_sac.py"), "--scale", "smoke", "--run-dir", str(local),
                        "--velocities", "0.3", "1.5", "--jobs", "2", "--no-progress"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "in 2 ensemble(s) of 1/1" in r.stdout, r.stderr
    for name in ("vel-0.3.pt", "vel-1.5.pt"):  # everything a later stage reads, uid and timings aside
        a, b = (torch.load(d / "stage0" / name, weights_only=True) for d in (run, local))
        for k in ("params", "step", "return", "success", "first_success", "traj", "post_success"):
            assert torch.equal(a[k], b[k]), k
        assert a["settings"] == b["settings"] and a["made_from"] == b["made_from"] and a["task"] == b["task"]
    # the chain job on a complete stage 0: with the chain's shards (equal to the array's but for their uids,
    # checked above) and its later artifacts in place, it takes stage 0 as made and every later stage as up to
    # date (stages 1-3 on a chain's shards are the smoke-chain tests)
    for d in ("stage0", "oracle"):
        shutil.rmtree(run / d)
        shutil.copytree(chain_run / d, run / d)
    for f in ("autoencoder.pt", "hyplatent.pt", "diffusion.pt", "hypformer.pt", "offline_data.pt", "mt_bc.pt",
              "prompt_dt.pt", "macaw.pt", "generated.pt", "results.json", "results.md"):
        shutil.copy(chain_run / f, run / f)
    r = job("chain")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "stage 0: already made" in r.stdout
    assert r.stdout.count("is up to date") == 9, r.stdout  # stages 1, 2 (both), 3, the baselines' four, the evaluation
