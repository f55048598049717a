"""Killed saves leave no litter, one stage-0 process per run directory, workers die with their parent, an
unwritable run directory fails before the work."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import artifacts
import common
import stage0_collect_sac as s0

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temp_files_of_dead_writers_are_removed(tmp_path):
    dead, mine = dead_pid(), os.getpid()
    host = artifacts.HOST
    litter = [tmp_path / f".hyplatent.tmp{dead}-{host}.pt", tmp_path / f".results.tmp{dead}-{host}.json",
              tmp_path / f".lock.tmp{dead}-{host}"]
    keep = [tmp_path / f".hyplatent.tmp{mine}-{host}.pt", tmp_path / ".notes.tmpx", tmp_path / "hyplatent.pt",
            tmp_path / f".results.tmp{dead}-another-node.json"]  # another host's process: not ours to judge
    for p in litter + keep:
        p.write_text("x")
    artifacts.prepare_run_dir(tmp_path)
    assert [p for p in litter if p.exists()] == [] and all(p.exists() for p in keep)


def test_write_atomic_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def crash(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        artifacts.write_atomic(target, crash)
    assert target.read_text() == "old"  # the temp file is left for the next run's clean-up
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".results.tmp{os.getpid()}-{artifacts.HOST}.json", "results.json"]
    artifacts.write_atomic(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def hold_lock(run_dir: Path, shared: bool = False) -> subprocess.Popen:
    code = (f"import artifacts, time; f = artifacts.lock_run_dir({str(run_dir)!r}, 'test', shared={shared}); "
            "print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_stage0_process_stops_and_a_dead_one_holds_nothing(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(SystemExit, match=f"in use by another process \\(pid {holder.pid}, test\\)"):
            artifacts.lock_run_dir(tmp_path, "stage-0 process")
        r = subprocess.run([sys.executable, str(ROOT / "stage0_collect_sac.py"), "--scale", "smoke", "--run-dir",
                            str(tmp_path), "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "in use by another" in r.stderr
        assert not (tmp_path / "parent.pt").exists() and not (tmp_path / "parent.partial.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = artifacts.lock_run_dir(tmp_path, "stage-0 process")  # the killed holder left nothing behind
    lock.close()


def descendants(pid: int) -> set[int]:
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c), todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc (Linux)")
def test_stage0_workers_die_with_a_killed_main_process(tmp_path):
    main = subprocess.Popen([sys.executable, str(ROOT / "stage0_collect_sac.py"), "--scale", "smoke", "--run-dir",
                             str(tmp_path), "--no-progress", "--jobs", "2", "--parent-steps", "0",
                             "--num-checkpoints", "2000", "--save-every", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180  # both workers training (a worker killed while it starts up exits anyway)
        while time.time() < deadline and len(list((tmp_path / "stage0").glob("*.partial.pt"))) < 2:
            time.sleep(0.5)
        workers = {p for p in descendants(main.pid) if b"spawn_main" in (Path("/proc") / str(p) / "cmdline").read_bytes()}
        assert len(workers) == 2, "the workers never started"
        everyone = descendants(main.pid)
    finally:
        main.send_signal(signal.SIGKILL)
        main.wait()
    deadline = time.time() + 10  # a worker's shard takes minutes: only a worker that dies with main is gone
    while time.time() < deadline and any(alive(p) for p in everyone):
        time.sleep(0.5)
    assert not [p for p in everyone if alive(p)], "orphans kept running after kill -9 of stage 0"


def test_unwritable_run_directory_fails_before_the_work(tmp_path):
    """Every script checks that its run directory can be written before any work (here a path under a
    regular file: the suite may run as root, who writes through `chmod 555`)."""
    import evaluate
    import stage0_collect_sac
    import stage1_autoencoder
    import stage2_hyplatent
    import stage3_hypformer

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for module in (stage0_collect_sac, stage1_autoencoder, stage2_hyplatent, stage3_hypformer, evaluate):
        args = common.parse_args(module.Args, module.SCALES, "", argv=["--scale", "smoke", "--run-dir", str(blocker / "run")])
        with pytest.raises(SystemExit, match="run: cannot write to the run directory \\(Not a directory\\)"):
            module.main(args)
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--scale", "smoke", "--run-dir", str(blocker / "run")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)  # and on the command line: one line
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "cannot write to the run directory" in r.stderr


def test_shards_that_cannot_be_right_are_refused_by_every_reader(cheetah_chain, tmp_path):
    """One shard loader for every reader: a shard whose rows do not match its steps, one with no checkpoint,
    and one edited in place after its save (uid kept) each stop the reader with one line."""
    import shutil

    import torch

    run, _ = cheetah_chain
    shutil.copytree(run / "stage0", tmp_path / "stage0")
    path = tmp_path / "stage0" / "vel-0.3.pt"
    s = torch.load(path, weights_only=True)
    cases = [({"params": s["params"][:-1]}, r"vel-0.3.pt: 3 params rows for 4 checkpoint steps"),
             ({k: s[k][:0] for k in s0.RECORD_KEYS}, r"vel-0.3.pt: no checkpoints")]
    for change, message in cases:
        artifacts.save_artifact({**s, **change}, path)  # written as a stage would, checksum and all
        with pytest.raises(SystemExit, match=message):
            artifacts.load_stage0(tmp_path, "cheetah-vel", "smoke")
    edited = dict(s, params=s["params"] + 1e-3)  # edited in place: uid and recorded checksum kept
    torch.save(edited, path)
    with pytest.raises(SystemExit, match="vel-0.3.pt: its content does not match the checksum"):
        artifacts.load_stage0(tmp_path, "cheetah-vel", "smoke")
    assert not artifacts.up_to_date(path, artifacts.STAGE0_FORMAT, s["settings"], s["made_from"])
    artifacts.save_artifact(dict(s, code=artifacts.current_code()), path)  # as the code running now writes it
    assert artifacts.up_to_date(path, artifacts.STAGE0_FORMAT, s["settings"], s["made_from"])


def test_evaluation_killed_before_results_json_is_made_again(cheetah_chain, tmp_path):
    """The chain's skip check reads results.json, written last: outputs written before a kill never
    make an unfinished evaluation look finished."""
    import shutil

    run, _ = cheetah_chain
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    (tmp_path / "run" / "results.json").unlink()  # killed after results.md and the figure, before results.json
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "--scale", "smoke", "--run-dir", str(tmp_path / "run"),
           "--skip-done", "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "skipped" not in r.stdout and (tmp_path / "run" / "results.json").exists()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "is up to date" in r.stdout and "skipped" in r.stdout


def test_every_stage_that_writes_a_run_directory_holds_its_lock(tmp_path):
    """Stages 1-3 and the evaluation take the run directory's lock exclusively before any work: with a
    stage-0 process in it (a shared holder), each stops with one line naming the holder; two stage-0
    processes (shared) may work in one directory at once."""
    import evaluate
    import stage1_autoencoder
    import stage1_behavior_embed
    import stage2_hyplatent
    import stage3_hypformer

    holder = hold_lock(tmp_path, shared=True)
    try:
        for module, suite in ((stage1_autoencoder, "cheetah-vel"), (stage1_behavior_embed, "metaworld"),
                              (stage2_hyplatent, "cheetah-vel"), (stage3_hypformer, "cheetah-vel"),
                              (evaluate, "cheetah-vel")):
            args = common.parse_args(module.Args, module.SCALES, "", ["--suite", suite, "--scale", "smoke",
                                                                        "--run-dir", str(tmp_path)])
            with pytest.raises(SystemExit, match=f"in use by another process \\(pid {holder.pid}, test\\)") as e:
                module.main(args)
            assert "\n" not in str(e.value), module.__name__
        artifacts.lock_run_dir(tmp_path, "another stage 0", shared=True).close()  # shared holders coexist
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
