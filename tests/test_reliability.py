"""Reliability: results.json and every artifact carry a checksum that their readers require; an evaluation
whose videos fail leaves no results.json beside its new outputs; bad seeds, threads, run roots, tags, video
counts and task lists are refused in one line before any work; a killed pipeline.sh takes its stage with it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import artifacts
import common
import evaluate as ev
import videos

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["stage0_collect_sac.py", "stage1_autoencoder.py", "stage1_behavior_embed.py", "stage2_hyplatent.py",
          "stage2_diffusion.py", "stage3_hypformer.py", "evaluate.py"]


def one_line_error(r, message):
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and message in err, r.stderr[-2000:]
    return err


# 10. results.json carries a checksum


def test_edited_results_json_is_refused_and_made_again(tmp_path, capsys):
    res = {"suite": "cheetah-vel", "rows": [{"method": "hyplatent", "task": "average", "score": -61.5,
                                             "n_policies": 10, "n_episodes": 5}],
           "settings": {"seed": 1, "velocities": ["0.6"]}, "made_from": {"hypformer.pt": "a" * 32},
           "memorisation": {"floor": float("nan")}, "train_velocities": (0.3, 1.5), "code": {"evaluation": "e1"}}
    path = tmp_path / "results.json"
    artifacts.write_results(path, res)
    assert artifacts.read_results(path)["rows"] == res["rows"]
    assert ev.results_up_to_date(path, res["settings"], res["made_from"], res["code"])

    edited = json.loads(path.read_text())
    edited["rows"][0]["score"] = 999
    path.write_text(json.dumps(edited, indent=1))
    for legacy_ok in (False, True):  # a wrong checksum is never taken
        with pytest.raises(SystemExit) as e:
            artifacts.read_results(path, legacy_ok=legacy_ok)
        assert str(e.value) == (f"error: {path}: its content does not match the checksum recorded when it was "
                                "written (edited since?); evaluate again")
    capsys.readouterr()
    assert not ev.results_up_to_date(path, res["settings"], res["made_from"], res["code"])  # --skip-done makes it again
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "does not match its checksum" in out and "evaluating again" in out

    del edited["sha256"]  # as an older version wrote it
    path.write_text(json.dumps(edited, indent=1))
    with pytest.raises(SystemExit) as e:
        artifacts.read_results(path)
    assert str(e.value) == f"error: {path}: no checksum (written by an older version); evaluate it again"
    assert artifacts.read_results(path, legacy_ok=True)["rows"][0]["score"] == 999
    assert not ev.results_up_to_date(path, res["settings"], res["made_from"], res["code"])


def test_archived_results_are_read_as_legacy():
    files = sorted(ROOT.glob("results/data/*/*/results*.json"))
    assert files
    for f in files:
        assert artifacts.read_results(f, legacy_ok=True)["rows"], f


# 11. an artifact without its checksum is refused


def test_artifact_without_its_checksum_is_refused(tmp_path):
    path = tmp_path / "a.pt"
    artifacts.save_artifact({"format": "x v1", "settings": {"a": 1}, "made_from": {}, "params": torch.zeros(2, 3)},
                            path)
    assert artifacts.load_artifact(path, "x v1")["settings"] == {"a": 1}
    assert artifacts.up_to_date(path, "x v1", {"a": 1}, {})
    obj = torch.load(path, weights_only=True)
    assert obj["code"] == artifacts.current_code()  # made by the code running now, so up to date
    del obj["sha256"]
    torch.save(obj, path)
    with pytest.raises(SystemExit) as e:
        artifacts.load_artifact(path, "x v1")
    assert str(e.value) == (f"error: {path}: no checksum recorded (not saved by this version, or edited); re-run the "
                            "stage that writes it")
    assert not artifacts.up_to_date(path, "x v1", {"a": 1}, {})


# 12. a failed --videos leaves no results.json; --tag and --videos checked before the evaluation


def test_failed_videos_leave_no_results_json_beside_new_outputs(tmp_path, monkeypatch):
    """An evaluation made again (same settings and artifacts, no --skip-done) whose rendering fails after its
    generated.pt and results.md: the previous evaluation's results.json is gone, so --skip-done makes it again
    instead of taking the new outputs for the old results."""
    run = tmp_path / "run"
    args = common.parse_args(ev.Args, ev.SCALES, "", ["--scale", "smoke", "--run-dir", str(run), "--videos", "1",
                                                      "--threads", str(torch.get_num_threads()), "--no-progress"])
    made_from, code = {"hypformer.pt": "b" * 32}, {"evaluation": "e1"}
    run.mkdir()
    artifacts.write_results(run / "results.json", {"suite": "cheetah-vel", "rows": [], "settings": artifacts.settings(args),
                                                   "made_from": made_from, "code": code})  # the previous evaluation's
    assert ev.results_up_to_date(run / "results.json", artifacts.settings(args), made_from, code)
    # by other code (the evaluation's or a stage's fingerprint): made again
    assert not ev.results_up_to_date(run / "results.json", artifacts.settings(args), made_from, {"evaluation": "e2"})

    def no_opengl(*a, **k):
        raise SystemExit("error: cannot render (no OpenGL in this test)")

    monkeypatch.setattr(videos, "check_rendering", lambda suite: None)  # passes; the rendering itself fails
    monkeypatch.setattr(videos, "render", no_opengl)
    monkeypatch.setattr(ev, "load_chain", lambda args: {"made_from": made_from})
    monkeypatch.setattr(ev, "load_oracles", lambda *a: {})
    monkeypatch.setattr(ev, "upstream_code", lambda chain: code)
    monkeypatch.setattr(ev, "generate", lambda *a: {"format": artifacts.GENERATED_FORMAT, "params": torch.ones(1, 3)})
    monkeypatch.setattr(ev, "cheetah_report", lambda generated, chain: (
        [], "header", "table", ("figure.png", lambda p: p.write_bytes(b"png")), {}))
    with pytest.raises(SystemExit, match="cannot render"):
        ev.main(args)
    assert (run / "generated.pt").exists() and (run / "results.md").read_text() == "header\n\ntable\n"
    assert not (run / "results.json").exists()
    assert not ev.results_up_to_date(run / "results.json", artifacts.settings(args), made_from, code)


@pytest.mark.parametrize("flags, message", [
    (["--tag", "a/b"], "error: --tag 'a/b': use letters, digits"),
    (["--tag", ".."], "error: --tag '..': use letters, digits"),
    (["--tag", "x y"], "error: --tag 'x y': use letters, digits"),
    (["--videos", "-1"], "error: --videos must be >= 0; got -1"),
])
def test_bad_tag_or_video_count_refused_before_the_run_directory_is_touched(tmp_path, flags, message):
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--scale", "smoke", "--run-dir",
                        str(tmp_path / "run"), *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_error(r, message)
    assert not (tmp_path / "run").exists()
    args = common.parse_args(ev.Args, ev.SCALES, "", ["--scale", "smoke", "--tag", "L32.sweep_a-b"])
    ev.validate(args)  # a good tag passes


def test_videos_without_opengl_refused_before_the_evaluation(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--scale", "smoke", "--run-dir",
                        str(tmp_path / "run"), "--videos", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, MUJOCO_GL="no-such-backend"))
    one_line_error(r, "cannot render")
    assert "MUJOCO_GL=egl" in r.stderr and not (tmp_path / "run").exists()


# 13. seeds, THREADS, RUNS and --tasks refused in one line before any work


@pytest.mark.parametrize("script", STAGES)
def test_seed_out_of_range_refused_by_every_stage(script, tmp_path):
    """Each stage's main, in this process (a subprocess per stage costs a torch import each): refused with
    the one line before the run directory exists; the command line says the same (evaluate.py, once)."""
    import importlib

    mod = importlib.import_module(script.removesuffix(".py"))
    for seed in ("-1", str(2**32)):
        args = common.parse_args(mod.Args, mod.SCALES, "", ["--scale", "smoke", "--run-dir", str(tmp_path / "run"),
                                                            "--seed", seed])
        with pytest.raises(SystemExit) as e:
            mod.main(args)
        assert str(e.value) == f"error: --seed must be in [0, 2**32); got {seed}"
    assert not (tmp_path / "run").exists()
    if script == "evaluate.py":
        r = subprocess.run([sys.executable, script, "--scale", "smoke", "--run-dir", str(tmp_path / "run"),
                            "--seed", "-1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        one_line_error(r, "error: --seed must be in [0, 2**32); got -1")


def test_stage0_refuses_a_seed_whose_goal_seeds_pass_2_to_the_32():
    import stage0_collect_sac as s0

    args = common.parse_args(s0.Args, s0.SCALES, "", ["--suite", "metaworld", "--scale", "smoke",
                                                      "--seed", str(2**32 - 2)])
    with pytest.raises(SystemExit, match=r"draws goals with seeds up to --seed \+ 7919, which must stay below 2\*\*32"):
        s0.validate(args)


def pipeline(tmp_path, *target, **env):
    env = {**os.environ, "AMT_NO_VENV": "1", "RUNS": str(tmp_path / "runs"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **env}
    return subprocess.run(["bash", str(ROOT / "pipeline.sh"), *target], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("target, env, message", [
    (["smoke"], {"SEED": "-1"}, "error: SEED=-1: a seed is an integer in [0, 2**32)"),
    (["smoke"], {"SEED": "abc"}, "error: SEED=abc: a seed is an integer in [0, 2**32)"),
    (["smoke"], {"SEED": "4294967296"}, "error: SEED=4294967296: a seed"),
    (["seeds", "smoke"], {"SEEDS": "1 x"}, "error: SEEDS=x: a seed"),
    (["mw-seeds"], {"MW_SEEDS": "1 -2"}, "error: MW_SEEDS=-2: a seed"),
    (["smoke"], {"THREADS": "0"}, "error: THREADS=0: give a positive integer"),
    (["smoke"], {"THREADS": "two"}, "error: THREADS=two: give a positive integer"),
])
def test_pipeline_refuses_bad_seeds_and_threads_before_anything(tmp_path, target, env, message):
    r = pipeline(tmp_path, *target, **env)
    assert r.returncode == 2 and "==" not in r.stdout, r.stdout
    one_line_error(r, message)
    assert not (tmp_path / "runs").exists()


def test_pipeline_refuses_a_runs_it_cannot_write(tmp_path):
    (tmp_path / "file").write_text("a regular file: not even root makes a directory under it")
    r = pipeline(tmp_path, "smoke", RUNS=str(tmp_path / "file" / "runs"))
    assert r.returncode == 2 and "==" not in r.stdout, r.stdout
    one_line_error(r, f"error: RUNS={tmp_path / 'file' / 'runs'}: cannot create or write to that directory")
    r = pipeline(tmp_path, "smoke", SEED="x", THREADS="1")  # and a good RUNS is made only after the other checks
    assert r.returncode == 2 and not (tmp_path / "runs").exists()


def fake_generated(path):
    spec = common.policy_spec(17, 6)
    artifacts.save_artifact({"format": artifacts.GENERATED_FORMAT, "suite": "cheetah-vel", "policy": spec,
                             "params": torch.zeros(2, common.num_params(spec)), "method": ["hyplatent"] * 2,
                             "task": ["vel-0.6", "vel-1.2"], "target_velocity": torch.tensor([0.6, 1.2])}, path)


@pytest.mark.parametrize("tasks, message", [
    ([], "error: --tasks names no task (leave it out for all of them)"),
    (["vel-9"], "error: --tasks vel-9: not in"),
    (["vel-0.6", "door-open-v3"], "error: --tasks door-open-v3: not in"),
])
def test_videos_refuse_tasks_that_name_none_of_the_file(tmp_path, tasks, message):
    fake_generated(tmp_path / "generated.pt")
    with pytest.raises(SystemExit) as e:
        videos.main(videos.Args(generated=str(tmp_path / "generated.pt"), tasks=tasks, out=str(tmp_path / "v")))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not (tmp_path / "v").exists()
    if tasks != []:
        assert "its tasks: vel-0.6, vel-1.2" in str(e.value)


def test_videos_empty_tasks_on_the_command_line(tmp_path):
    fake_generated(tmp_path / "generated.pt")
    r = subprocess.run([sys.executable, "videos.py", str(tmp_path / "generated.pt"), "--out", str(tmp_path / "v"),
                        "--tasks"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_error(r, "error: --tasks names no task")
    assert not (tmp_path / "v").exists()


# 14. a killed pipeline.sh takes its running stage with it


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended


@pytest.mark.slow
@pytest.mark.parametrize("target, env", [(["smoke"], {}), (["seeds", "smoke"], {"SEEDS": "1"})],
                         ids=["chain", "chain-of-a-study"])
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_killed_pipeline_stops_its_stage(tmp_path, target, env, sig, status):
    """pipeline.sh with a stage 0 that sleeps (a `python` on PATH that sleeps when given stage 0, the real one
    otherwise): a TERM or INT to pipeline.sh (for `seeds`: the outer one, which runs the chain as another
    pipeline.sh) ends it with 143 or 130, and the stage is gone with it."""
    shim, pid_file = tmp_path / "bin", tmp_path / "stage.pid"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/bash\nif [ "$1" = stage0_collect_sac.py ]; then echo $$ > {pid_file}; '
                                 f'exec sleep 60; fi\nexec {sys.executable} "$@"\n')
    (shim / "python").chmod(0o755)
    run_env = dict(os.environ, AMT_NO_VENV="1", RUNS=str(tmp_path / "runs"),
                   PATH=f"{shim}{os.pathsep}{os.environ.get('PATH', '')}", **env)
    with open(tmp_path / "out.txt", "w") as out:
        # INT as from a terminal: a suite run in the background (`cmd &`) would hand bash an ignored SIGINT,
        # which a non-interactive shell cannot trap
        p = subprocess.Popen(["bash", str(ROOT / "pipeline.sh"), *target], cwd=ROOT, env=run_env, stdout=out,
                             stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stage = None
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not (pid_file.exists() and pid_file.read_text().strip()):
            assert p.poll() is None, (tmp_path / "out.txt").read_text()
            time.sleep(0.1)
        stage = int(pid_file.read_text())
        time.sleep(0.3)  # the shim has exec'd sleep
        assert alive(stage)
        p.send_signal(sig)
        assert p.wait(timeout=10) == status, (tmp_path / "out.txt").read_text()
        deadline = time.time() + 5
        while time.time() < deadline and alive(stage):
            time.sleep(0.1)
        assert not alive(stage), "the stage runs on after pipeline.sh was stopped"
    finally:
        if p.poll() is None:
            p.kill()
        if stage and alive(stage):
            os.kill(stage, signal.SIGKILL)
