"""Provenance and run directories: every scale's configuration builds and validates; a stage refuses
(with one line) artifacts of another scale or settings, and upstream artifacts made from other inputs;
--skip-done skips only artifacts made with the same settings from the same inputs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import artifacts
import common
import evaluate as ev
import stage0_collect_sac as s0
import stage1_autoencoder as s1a
import stage1_behavior_embed as s1b
import stage2_hyplatent as s2
import stage3_hypformer as s3

ROOT = Path(__file__).resolve().parents[1]
MODULES = [s0, s1a, s1b, s2, s3, ev]


@pytest.mark.parametrize("suite", ["cheetah-vel", "metaworld"])
@pytest.mark.parametrize("scale", ["smoke", "quick", "paper"])
def test_every_scale_builds_and_validates(suite, scale):
    for m in MODULES:
        args = common.parse_args(m.Args, m.SCALES, m.__doc__, argv=["--suite", suite, "--scale", scale])
        assert (args.suite, args.scale, args.run_dir) == (suite, scale, f"runs/{suite}-{scale}")
        m.validate(args)
    args = common.parse_args(s0.Args, s0.SCALES, "", argv=["--suite", suite, "--scale", scale])
    tasks = s0.validate(args)
    if suite == "metaworld":
        assert tasks == common.MW_TASKS  # every scale records the unseen tasks' rollouts (Table III)
        assert args.first_checkpoint + (args.num_checkpoints - 1) * args.checkpoint_every > args.learning_starts
    else:
        assert not set(tasks) & set(common.CHEETAH_TEST)  # no test velocity is trained on
        assert len(tasks) == {"smoke": 2, "quick": 10, "paper": 35}[scale]
    # the explicit flag wins over the scale's default
    args = common.parse_args(s2.Args, s2.SCALES, "", argv=["--scale", scale, "--suite", suite, "--steps", "7"])
    assert args.steps == 7 and args.noise_dim == (128 if suite == "metaworld" else 4)


def test_help_shows_the_real_defaults_of_the_scale():
    r = subprocess.run([sys.executable, "stage1_autoencoder.py", "--scale", "paper", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    out = " ".join(r.stdout.split())
    assert "(default: 1024)" in out and "(default: 50000)" in out and "runs/cheetah-vel-paper" in out
    assert "smoke: token_dim=64, steps=60, eval_policies=4" in out  # and what the other scales change
    assert "None" not in out.split("--token-dim")[1].split("--batch-size")[0]


def run(script, *flags):
    r = subprocess.run([sys.executable, script, "--no-progress", *flags], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    return r


def one_line_error(r, message):
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr
    return r.stderr.strip()


@pytest.fixture
def smoke_copy(cheetah_chain, tmp_path):
    run, _ = cheetah_chain
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("tb"))
    return dst


def test_another_scale_in_the_run_directory_is_refused(smoke_copy):
    d = str(smoke_copy)
    for script in ("stage1_autoencoder.py", "stage2_hyplatent.py", "stage3_hypformer.py", "evaluate.py"):
        one_line_error(run(script, "--scale", "quick", "--run-dir", d), "made at scale 'smoke', this run is at scale 'quick'")


def test_shards_and_upstream_artifacts_that_do_not_belong_are_refused(smoke_copy):
    d, stage0 = str(smoke_copy), smoke_copy / "stage0"
    extra = torch.load(stage0 / "vel-0.3.pt", weights_only=True)
    extra.update(task="vel-0.9", target_velocity=0.9, uid="1" * 32)
    # 1. a shard of the same settings appears after stage 1 ran: the autoencoder does not match them
    artifacts.save_artifact(extra, stage0 / "vel-0.9.pt")
    one_line_error(run("stage2_hyplatent.py", "--scale", "smoke", "--run-dir", d),
                   "autoencoder.pt: made from other inputs than this run directory holds (not among its inputs: "
                   "stage0/vel-0.9.pt)")
    # 2. a shard made with other stage-0 settings cannot join the others
    extra["settings"] = dict(extra["settings"], num_checkpoints=5)
    artifacts.save_artifact(extra, stage0 / "vel-0.9.pt")
    one_line_error(run("stage1_autoencoder.py", "--scale", "smoke", "--run-dir", d),
                   "vel-0.9.pt: made with num_checkpoints = 5, this run has num_checkpoints = 4")
    # 3. a shard is gone
    (stage0 / "vel-0.9.pt").unlink()
    (stage0 / "vel-1.5.pt").rename(smoke_copy / "vel-1.5.pt")
    one_line_error(run("stage3_hypformer.py", "--scale", "smoke", "--run-dir", d), "missing now: stage0/vel-1.5.pt")
    (smoke_copy / "vel-1.5.pt").rename(stage0 / "vel-1.5.pt")
    # 4. HypLatent made from another autoencoder, HypFormer from another HypLatent
    hl = torch.load(smoke_copy / "hyplatent.pt", weights_only=True)
    artifacts.save_artifact(dict(hl, made_from={"autoencoder.pt": "2" * 32}), smoke_copy / "hyplatent.pt")
    one_line_error(run("stage3_hypformer.py", "--scale", "smoke", "--run-dir", d),
                   "hyplatent.pt: made from other inputs than this run directory holds (remade since: autoencoder.pt)")
    artifacts.save_artifact(hl, smoke_copy / "hyplatent.pt")  # back, with the same uid
    hf = torch.load(smoke_copy / "hypformer.pt", weights_only=True)
    artifacts.save_artifact(dict(hf, made_from=dict(hf["made_from"], **{"hyplatent.pt": "3" * 32})),
                         smoke_copy / "hypformer.pt")
    one_line_error(run("evaluate.py", "--scale", "smoke", "--run-dir", d),
                   "hypformer.pt: made from other inputs than this run directory holds (remade since: hyplatent.pt)")


def test_skip_done_redoes_a_stage_whose_inputs_or_settings_changed(smoke_copy):
    d = str(smoke_copy)
    r = run("stage3_hypformer.py", "--scale", "smoke", "--run-dir", d, "--skip-done")
    assert r.returncode == 0 and "is up to date" in r.stdout
    r = run("stage3_hypformer.py", "--scale", "smoke", "--run-dir", d, "--skip-done", "--steps", "5", "--check-per-task", "0")
    assert r.returncode == 0 and "saved" in r.stdout  # other settings: made again
    r = run("stage2_hyplatent.py", "--scale", "smoke", "--run-dir", d, "--check-per-task", "0")
    assert r.returncode == 0 and "saved" in r.stdout  # a new HypLatent (new uid) ...
    r = run("stage3_hypformer.py", "--scale", "smoke", "--run-dir", d, "--skip-done", "--steps", "5", "--check-per-task", "0")
    assert r.returncode == 0 and "saved" in r.stdout  # ... so HypFormer is made again, although its settings match


@pytest.mark.parametrize("script, flags, message", [
    ("stage1_autoencoder.py", ["--train-tasks", "vel-0.6"], "test velocities; no stage trains on them"),
    ("stage2_hyplatent.py", ["--steps", "0"], "--steps must be > 0; got 0"),
])
def test_bad_options_one_line_error(smoke_copy, script, flags, message):
    one_line_error(run(script, "--scale", "smoke", "--run-dir", str(smoke_copy), *flags), message)


@pytest.mark.parametrize("module, flags, message", [
    (s1a, ["--holdout", "1.0"], "--holdout must be in [0, 1); got 1.0"),
    (s1a, ["--holdout", "0", "--eval-policies", "2"], "--holdout 0 holds out no checkpoint for the functional check"),
    (s1a, ["--suite", "metaworld", "--holdout", "0"], "the MetaWorld evaluation conditions seen tasks on the rollouts"),
    (s2, ["--batch-size", "0"], "--batch-size must be > 0; got 0"),
    (s2, ["--widths", "64"], "--widths needs at least two positive widths"),
    (s3, ["--steps", "-1"], "--steps must be > 0; got -1"),
    (s3, ["--heads", "3"], "--width 256 is not a multiple of --heads 3"),
    (ev, ["--suite", "metaworld", "--goals", "60"], "--goals 60: MetaWorld has 50 goal configurations per seed"),
    (ev, ["--suite", "metaworld", "--select-goals", "0"], "--select-goals must be > 0; got 0"),
    (ev, ["--episodes", "0"], "--episodes must be > 0; got 0"),
])
def test_bad_options_refused_before_any_work(module, flags, message):
    args = common.parse_args(module.Args, module.SCALES, "", argv=["--scale", "smoke", *flags])
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        module.validate(args)


@pytest.mark.parametrize("module", MODULES)
def test_unknown_suite_or_scale_is_refused_before_any_work(module, tmp_path):
    for flags, message in ((["--suite", "foo"], "error: --suite foo: unknown; valid: cheetah-vel, metaworld"),
                           (["--scale", "huge"], "error: --scale huge: unknown; valid: smoke, quick, paper")):
        with pytest.raises(SystemExit) as e:
            common.parse_args(module.Args, module.SCALES, "", [*flags, "--run-dir", str(tmp_path / "run")])
        assert str(e.value) == message
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of CUDA needs a machine without it")
def test_a_device_torch_cannot_use_is_refused_before_any_work(tmp_path):
    for name, message in (("cuda", "--device cuda asked for, but torch"), ("cuda:0", "--device cuda:0 asked for"),
                          ("gpu", "--device gpu: not a device name"), ("meta", "this code runs on cpu or cuda")):
        with pytest.raises(SystemExit, match=message) as e:
            common.pick_device(name)
        assert "\n" not in str(e.value)
    assert common.pick_device("auto") == torch.device("cpu") and common.pick_device("cpu") == torch.device("cpu")
    for module in (s1a, s1b, s2, s3):  # before the run directory is even made
        args = common.parse_args(module.Args, module.SCALES, "", ["--scale", "smoke", "--run-dir", str(tmp_path / "r"),
                                                                  "--device", "cuda"])
        with pytest.raises(SystemExit, match="sees 0 CUDA device"):
            module.main(args)
        assert not (tmp_path / "r").exists()


def test_a_full_disk_gives_one_line_and_keeps_the_last_complete_file(tmp_path):
    """A save that runs out of space: one line naming the file and the cause, the temp file gone at once,
    the previous complete file kept."""
    import errno
    import os

    path = tmp_path / "hyplatent.partial.pt"
    artifacts.save_artifact({"format": "x", "step": 1}, path)
    before = path.read_bytes()

    def fill(tmp):
        tmp.write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(SystemExit) as e:
        artifacts.write_atomic(path, fill)
    assert str(e.value) == (f"error: {path}: cannot write it: no space left on device (the previous one is kept)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyplatent.partial.pt"] and path.read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root on Linux")
def test_a_full_tmpfs_gives_one_line(tmp_path):
    """The same on a real 1 MB filesystem (as root on Linux, where the mount must work: a failed mount is a
    failure, not a skip)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"mount failed as root: {r.stderr.strip()}"
    try:
        artifacts.save_artifact({"format": "x", "w": torch.zeros(1000)}, mnt / "a.pt")
        r = subprocess.run([sys.executable, "-c", "import torch, artifacts; artifacts.save_artifact("
                            f"{{'format': 'x', 'w': torch.zeros(2_000_000)}}, {str(mnt / 'a.pt')!r})"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.strip() == \
            f"error: {mnt / 'a.pt'}: cannot write it: no space left on device (the previous one is kept)"
        assert [p.name for p in mnt.iterdir()] == ["a.pt"]
        assert torch.load(mnt / "a.pt", weights_only=True)["w"].shape == (1000,)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_the_commit_is_dirty_for_code_changes_not_for_publish_outputs(tmp_path):
    import provenance

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "results").mkdir()
    for f in ("code.py", "README.md", "results/page.md"):
        (tmp_path / f).write_text("a\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = provenance.git_commit(tmp_path)
    assert len(head) == 12 and "+" not in head
    (tmp_path / "results/page.md").write_text("b\n")
    (tmp_path / "README.md").write_text("b\n")
    assert provenance.git_commit(tmp_path) == head + "+dirty"
    assert provenance.git_commit(tmp_path, outputs=("results", "README.md")) == head
    (tmp_path / "code.py").write_text("b\n")
    assert provenance.git_commit(tmp_path, outputs=("results", "README.md")) == head + "+dirty"


def _mark_after(folder: str, seconds: float) -> None:  # a pool task: runs `seconds`, then leaves a file
    Path(folder, "started").write_text("")
    import time

    time.sleep(seconds)
    Path(folder, "finished").write_text("")


def _fail() -> None:  # a pool task that fails
    raise ValueError("this task failed")


def test_a_failed_task_kills_the_running_ones(tmp_path):
    """A failed task stops the pool at once: the task still running is killed, not waited for (the
    executor's own exit would let it finish and leave `finished`)."""
    import time

    with pytest.raises(ValueError, match="this task failed"):
        with artifacts.process_pool(2) as pool:
            slow = pool.submit(_mark_after, str(tmp_path), 15)
            while not (tmp_path / "started").exists():
                assert not slow.done(), slow.exception()  # a worker that dies fails the test, not hangs it
                time.sleep(0.05)
            pool.submit(_fail).result()
    time.sleep(1)
    assert (tmp_path / "started").exists() and not (tmp_path / "finished").exists()


def test_pipeline_runs_its_chains_when_called_by_a_relative_path():
    """`bash <dir>/pipeline.sh seeds` from another directory: the per-seed chains it starts find the script
    (here each stops at the unknown scale, with the usage line)."""
    env = {**__import__("os").environ, "AMT_NO_VENV": "1", "SEEDS": "1"}  # the usage line comes before any python
    r = subprocess.run(["bash", str(Path(ROOT.name) / "pipeline.sh"), "seeds", "nonsense"], cwd=ROOT.parent,
                       env=env, capture_output=True, text=True, timeout=60)
    assert "usage: bash pipeline.sh" in r.stderr + r.stdout and "No such file" not in r.stderr


def test_from_stage_remakes_only_what_changed_and_says_so(smoke_copy):
    """A fork in one command: FROM_STAGE=2 with STAGE2_ARGS takes stages 0-1 as they are, makes HypLatent
    again (its settings changed), keeps MAA's diffusion (its settings, inputs and code did not), and makes
    HypFormer and the evaluation again (their input changed), each logged as a remake or not; FROM_STAGE=4
    on an unchanged chain keeps the evaluation; a FROM_STAGE that names no stage is refused before any work."""
    import json
    import os

    env = {**os.environ, "AMT_NO_VENV": "1", "RUN_DIR": str(smoke_copy), "FROM_STAGE": "2",
           "STAGE2_ARGS": "--paired-weight 0", "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    before = {f: torch.load(smoke_copy / f, weights_only=True)["uid"] for f in ("hyplatent.pt", "diffusion.pt", "hypformer.pt")}
    n_before = len((smoke_copy / "provenance.jsonl").read_text().splitlines())
    r = subprocess.run(["bash", str(ROOT / "pipeline.sh"), "smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "== stage 1 (autoencoder, Eq. 1): taken as it is (FROM_STAGE=2)" in r.stdout
    assert "stage 2 diffusion: " in r.stdout and "is up to date (same settings, inputs and code); skipped" in r.stdout
    after = {f: torch.load(smoke_copy / f, weights_only=True) for f in before}
    assert after["hyplatent.pt"]["settings"]["paired_weight"] == 0.0
    assert [after[f]["uid"] != before[f] for f in before] == [True, False, True]  # HypLatent, MAA, HypFormer
    logged = [json.loads(line) for line in (smoke_copy / "provenance.jsonl").read_text().splitlines()[n_before:]]
    assert [(x["stage"].split(" (")[0], x["remake"], x["exit"]) for x in logged if x.get("event") == "stage"] == \
        [("stage 2", 1, 0), ("stage 2", 0, 0), ("stage 3", 1, 0),  # the baselines read stage 0-1 alone: kept
         ("offline data", 0, 0), ("MT-BC", 0, 0), ("Prompt-DT", 0, 0), ("MACAW", 0, 0),
         ("evaluation", 1, 0)]
    assert "--paired-weight 0" in logged[-8]["command"]  # stage 2's HypLatent, with the flag passed to it
    r = subprocess.run(["bash", str(ROOT / "pipeline.sh"), "smoke"], cwd=ROOT, env={**env, "FROM_STAGE": "4"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "is up to date (same settings, artifacts and code); skipped" in r.stdout
    last = json.loads((smoke_copy / "provenance.jsonl").read_text().splitlines()[-1])
    assert (last["stage"], last["remake"], last["exit"]) == ("evaluation (Table IV or Tables I-III)", 0, 0)
    r = subprocess.run(["bash", str(ROOT / "pipeline.sh"), "smoke"], cwd=ROOT, env={**env, "FROM_STAGE": "9"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "error: FROM_STAGE=9: give 1, 2, 3 or 4" in r.stderr


def test_a_stage_made_by_other_code_is_not_up_to_date(tmp_path):
    path = tmp_path / "a.pt"
    artifacts.save_artifact({"format": "x v1", "settings": {}, "made_from": {}}, path)
    assert artifacts.up_to_date(path, "x v1", {}, {})
    artifacts.save_artifact({"format": "x v1", "settings": {}, "made_from": {}, "code": "0123456789ab"}, path)
    assert not artifacts.up_to_date(path, "x v1", {}, {})
