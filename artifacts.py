"""Artifacts (DESIGN.md section 10), what every stage uses to save, load and check what it reads and writes:
atomic saves, loads with `weights_only=True` and one-line checks (format, suite, scale, policy shape,
checksum), the settings and inputs (`made_from`) an artifact was made with, the up-to-date test of
`--skip-done`, the evaluation's results.json (with its checksum), partial-state resume, the stage-0 shards,
the run directory's lock and temp-file clean-up, and the process pool whose workers die with their parent (no
orphan keeps a lock or steps environments).
The run directory's record of how it was made (commit, machine, commands) is provenance.py. torch is
imported inside the functions that need it (aggregate.py runs without it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import uuid
from dataclasses import asdict
from pathlib import Path

STAGE0_FORMAT = "amt-hyp/stage0-shard v2"
GENERATED_FORMAT = "amt-hyp/generated v1"  # evaluate.py's generated.pt (read by videos.py too)
PARENT_FORMAT = "amt-hyp/stage0-parent v2"
# options that change where or how fast a stage runs, never what it computes
RUNTIME_FIELDS = ("run_dir", "jobs", "threads", "torch_threads", "device", "progress", "save_every", "skip_done")


def content_hash(obj) -> str:
    """sha256 of an artifact's content (tensors by dtype, shape and bytes), its `sha256` key left out: checked at
    load, so that a file edited in place (its uid kept) is refused rather than taken for what its uid names."""
    import hashlib

    import torch

    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                if k != "sha256":
                    h.update(repr(k).encode())
                    walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def save_artifact(obj: dict, path: str | Path) -> None:
    """torch.save through `write_atomic`, serialised in memory first (a full disk fails in one plain write).
    Every artifact gets a `uid` (later artifacts name their inputs by uid, `made_from`), the fingerprint of the
    code that made it (`code`) and a `sha256`."""
    import io

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj.setdefault("uid", uuid.uuid4().hex)
    obj.setdefault("code", current_code())  # the fingerprint of the code that made it (provenance.code_fingerprint)
    obj["sha256"] = content_hash(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))


HOST = re.sub(r"[^A-Za-z0-9-]", "-", platform.node().split(".")[0]) or "host"  # in temp names: whose pid it is


def write_atomic(path: str | Path, write) -> None:
    """`write(tmp)` to `.<stem>.tmp<pid>-<host><suffix>` beside `path`, then rename: a reader never sees half a
    file (a writer that writes nothing leaves `path` as it was). A failed write removes the temp file, keeps
    the previous `path`, and stops with one line naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{HOST}{path.suffix}")
    try:
        write(tmp)
        if tmp.exists():
            os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = " (the previous one is kept)" if path.exists() else ""
        raise SystemExit(f"error: {path}: cannot write it: {(e.strerror or str(e)).lower()}{kept}") from None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_dead_temps(folder: Path) -> list[Path]:
    """Delete the temp files that killed writers of this host left in `folder` (a running writer's, or another
    host's, as a job array's node sharing the folder, are kept)."""
    removed = []
    for p in folder.glob(".*.tmp*"):
        m = re.fullmatch(r"\..+\.tmp(\d+)-([A-Za-z0-9-]*)(\.[^.]*)?", p.name)
        if m and m.group(2) == HOST and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def load_artifact(path: str | Path, fmt: str, keys: tuple[str, ...] = (), spec: dict | None = None,
                  suite: str | None = None, scale: str | None = None) -> dict:
    """Load a `.pt` artifact with weights_only=True (no pickled code runs) and check it. Any problem stops
    the program with one line naming the file and the problem."""
    import torch

    from common import num_params

    path = Path(path)
    if not path.exists():
        raise SystemExit(f"error: {path}: file not found (run the stage that writes it first)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise SystemExit(f"error: {path}: not a readable artifact ({type(e).__name__})") from None
    if not isinstance(obj, dict) or "format" not in obj:
        raise SystemExit(f"error: {path}: no 'format' key; expected a '{fmt}' artifact")
    if obj["format"] != fmt:
        raise SystemExit(f"error: {path}: format is '{obj['format']}', expected '{fmt}'")
    if "sha256" not in obj:
        raise SystemExit(f"error: {path}: no checksum recorded (not saved by this version, or edited); re-run the "
                         "stage that writes it")
    if content_hash(obj) != obj["sha256"]:
        raise SystemExit(f"error: {path}: its content does not match the checksum recorded when it was saved "
                         "(edited since?); re-run the stage that writes it")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise SystemExit(f"error: {path}: missing key(s) {', '.join(missing)}")
    if suite is not None and obj.get("suite") != suite:
        raise SystemExit(f"error: {path}: suite is '{obj.get('suite')}', expected '{suite}'")
    if scale is not None and obj.get("settings", {}).get("scale") != scale:
        raise SystemExit(f"error: {path}: made at scale '{obj.get('settings', {}).get('scale')}', this run is at "
                         f"scale '{scale}' (each scale has its own run directory: use another --run-dir)")
    if spec is not None:
        if obj.get("policy") != spec:
            raise SystemExit(f"error: {path}: policy is {obj.get('policy')}, expected {spec}")
        if "params" in obj and obj["params"].shape[-1] != num_params(spec):
            raise SystemExit(f"error: {path}: params have {obj['params'].shape[-1]} values per policy, "
                             f"expected {num_params(spec)}")
    return obj


def results_checksum(res: dict) -> str:
    """sha256 of a results file's content as JSON (keys sorted), its `sha256` key left out."""
    import hashlib

    return hashlib.sha256(json.dumps({k: v for k, v in res.items() if k != "sha256"}, sort_keys=True).encode()).hexdigest()


def write_results(path: str | Path, res: dict) -> None:
    """An evaluation's results.json, atomically, with the checksum of its content (`sha256`) that
    `read_results` and the up-to-date test check: a file edited after it was written is refused."""
    res = json.loads(json.dumps(res))  # as it will read back (tuples as lists, keys as strings)
    res["sha256"] = results_checksum(res)
    write_atomic(path, lambda p: p.write_text(json.dumps(res, indent=1)))


def read_results(path: str | Path, legacy_ok: bool = False) -> dict:
    """A results file, its checksum checked; any problem stops with one line naming the file. `legacy_ok`:
    a file written before results carried a checksum (runs kept under results/data/) is taken as it is."""
    path = Path(path)
    try:
        res = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: not found (run evaluate.py there first)") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: not a readable results file ({type(e).__name__}); evaluate it again") from None
    if not isinstance(res, dict):
        raise SystemExit(f"error: {path}: not a results file (no JSON object); evaluate it again")
    if "sha256" not in res:
        if not legacy_ok:
            raise SystemExit(f"error: {path}: no checksum (written by an older version); evaluate it again")
    elif res["sha256"] != results_checksum(res):
        raise SystemExit(f"error: {path}: its content does not match the checksum recorded when it was written "
                         "(edited since?); evaluate again")
    return res


def settings(args, ignore: tuple[str, ...] = ()) -> dict:
    """The options of `args` that change what a stage computes (scale included), as plain JSON values."""
    skip = RUNTIME_FIELDS + tuple(ignore)
    return json.loads(json.dumps({k: v for k, v in asdict(args).items() if k not in skip}))


def check_settings(path, old: dict, new: dict) -> None:
    """Stop with one line if an artifact at `path` made with settings `old` does not match `new`."""
    for k in sorted(set(old) | set(new), key=lambda k: (k != "scale", k)):  # the scale first
        if old.get(k) != new.get(k):
            raise SystemExit(f"error: {path}: made with {k} = {old.get(k)!r}, this run has {k} = {new.get(k)!r} "
                             "(delete it, or use another --run-dir)")


def up_to_date(path: str | Path, fmt: str, current: dict, made_from: dict) -> bool:
    """True when `path` holds a finished artifact of `fmt` made with the settings `current` from the inputs
    `made_from` ({file: uid}) by the code running now (its fingerprint), its content unchanged since it was
    saved: the test behind --skip-done. Anything else is made again."""
    import torch

    try:
        art = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - missing or unreadable: not up to date
        return False
    return (isinstance(art, dict) and art.get("format") == fmt and art.get("settings") == current
            and art.get("made_from") == made_from and art.get("code") == current_code()
            and art.get("sha256") == content_hash(art))


def current_code() -> str:
    """The fingerprint of the code running now (what `save_artifact` records as `code`)."""
    import provenance

    script = provenance.running_script()
    return provenance.code_fingerprint(script) if script else "unknown"


SHARD_KEYS = ("params", "step", "return", "success", "first_success", "traj", "post_success", "task", "settings",
              "made_from")


def load_shard(path: str | Path, suite: str, scale: str) -> dict:
    """One stage-0 shard, with every check any reader needs: format, keys, suite, scale, policy size,
    checksum, at least one checkpoint, and one row of every per-checkpoint field per checkpoint."""
    from common import suite_spec

    s = load_artifact(path, STAGE0_FORMAT, SHARD_KEYS, spec=suite_spec(suite), suite=suite, scale=scale)
    n = len(s["step"])
    if n == 0:
        raise SystemExit(f"error: {path}: no checkpoints (delete it to retrain that task)")
    bad = [k for k in ("params", "return", "success", "first_success", "traj", "post_success") if len(s[k]) != n]
    if bad:
        raise SystemExit(f"error: {path}: {', '.join(f'{len(s[k])} {k} rows' for k in bad)} for {n} checkpoint steps")
    return s


def load_stage0(run_dir: str | Path, suite: str, scale: str) -> list[dict]:
    """Every finished stage-0 shard of a run directory, sorted by task name (Cheetah-Vel: by velocity).
    They must come from one parent with one set of stage-0 settings; anything else stops with one line."""
    paths = sorted(p for p in Path(run_dir, "stage0").glob("*.pt") if not p.name.endswith(".partial.pt"))
    if not paths:
        raise SystemExit(f"error: {Path(run_dir, 'stage0')}: no stage-0 shards (run stage0_collect_sac.py first)")
    shards = [load_shard(p, suite, scale) for p in paths]
    for p, s in zip(paths, shards):
        if s["made_from"] != shards[0]["made_from"]:
            raise SystemExit(f"error: {p}: fine-tuned from another parent than {paths[0].name} (mixed run directory)")
        check_settings(p, s["settings"], shards[0]["settings"])
    if suite == "cheetah-vel":
        shards.sort(key=lambda s: s["target_velocity"])
    return shards


def shard_ids(shards: list[dict]) -> dict:
    """{`stage0/<task>.pt`: uid}: how an artifact of stage 1 names the shards it was made from."""
    return {f"stage0/{s['task']}.pt": s["uid"] for s in shards}


def check_made_from(path, art: dict, inputs: dict) -> None:
    """Stop with one line if the artifact at `path` was made from other inputs ({file: uid}) than `inputs`."""
    old = art.get("made_from", {})
    gone, new = sorted(set(old) - set(inputs)), sorted(set(inputs) - set(old))
    changed = sorted(k for k in set(old) & set(inputs) if old[k] != inputs[k])
    if gone or new or changed:
        what = "; ".join(x for x in (f"missing now: {', '.join(gone)}" if gone else "",
                                     f"not among its inputs: {', '.join(new)}" if new else "",
                                     f"remade since: {', '.join(changed)}" if changed else "") if x)
        raise SystemExit(f"error: {path}: made from other inputs than this run directory holds ({what}); "
                         "re-run the stage that wrote it")


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory and check that it can be written, before the work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: {path}: cannot write to the run directory ({e.strerror})") from None
    for p in remove_dead_temps(path):
        print(f"removed {p} (temp file of an interrupted save)")
    return path


def lock_run_dir(path: str | Path, who: str, shared: bool = False, name: str = ".lock"):
    """Hold the advisory lock `<path>/<name>` (flock) while this process lives (the kernel releases it when it
    dies). Exclusive by default (stages 1-3, evaluation); `shared` lets stage-0 processes on different tasks
    in together while keeping the exclusive holders out. Stops with one line if taken; keep the result alive."""
    import fcntl

    path = Path(path)
    f = open(path / name, "a+")
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holders = "; ".join(line.strip() for line in f  # shared holders leave their lines: the live ones
                            if (m := re.match(r"pid (\d+)", line)) and pid_alive(int(m[1]))) or "pid unknown"
        raise SystemExit(f"error: {path / name if name != '.lock' else path}: in use by another process ({holders}); "
                         "wait for it to finish or stop it") from None
    if not shared:
        f.seek(0), f.truncate()
    f.write(f"pid {os.getpid()}, {who}\n"), f.flush()
    return f


def _die_with_parent(initializer, initargs) -> None:
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except OSError:
        pass
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def process_pool(workers: int, initializer=None, initargs=()):
    """A ProcessPoolExecutor of `workers` spawned processes that die with this one (PR_SET_PDEATHSIG), so
    a killed run leaves no orphans holding its locks or stepping environments; `initializer(*initargs)` runs
    in each (stage 0's tasks, the MetaWorld evaluation's episodes). An exception inside the `with` block (a
    failed task, Ctrl-C) cancels the waiting tasks and kills the running ones at once, instead of waiting for
    them to finish as the executor's own exit does."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_die_with_parent,
                               initargs=(initializer, initargs))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list((pool._processes or {}).values()):  # CPython's worker table (3.14: pool.kill_workers())
            proc.kill()
        raise
    finally:
        pool.shutdown(wait=True)


def open_run_dir(path: str | Path, who: str):
    """What every stage that writes into a run directory does first: create it, check it can be written,
    remove dead writers' temp files, take its lock. Returns (run directory, lock); keep the lock alive."""
    run = prepare_run_dir(path)
    return run, lock_run_dir(run, who)


def cpu_state(module) -> dict:
    """A state dict on the CPU, whatever device the module trained on (artifacts load anywhere)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_partial(path, fmt: str, step: int, settings: dict, made_from: dict, states: dict, history: dict,
                 extra: dict | None = None) -> None:
    """The resumable state of a training loop: the state dict of each of `states` ({name: module, optimizer
    or scheduler}), the step to go on from, the history so far, torch's random states (CPU and GPUs) and
    `extra`, anything else the loop restores itself (stage 0: replay data, numpy's and the environments'
    random states)."""
    import torch

    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []  # draws made on a GPU
    save_artifact({"format": fmt, "settings": settings, "made_from": made_from, "step": step, "history": history,
                   "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng, "extra": extra or {},
                   **{k: cpu_state(m) if isinstance(m, torch.nn.Module) else m.state_dict() for k, m in states.items()}},
                  path)


def check_partial(path, fmt: str, settings: dict, made_from: dict, keys: tuple[str, ...] = ()) -> dict:
    """Load a resumable state and stop with one line unless its settings, inputs and code are this run's."""
    st = load_artifact(path, fmt, ("settings", *keys))
    check_settings(path, st["settings"], settings)
    check_made_from(path, st, made_from)
    if st.get("code") != (code := current_code()):  # resumed by other code, it would end as a mix of both
        raise SystemExit(f"error: {path}: saved by other code ({st.get('code')}, this code {code}); delete it "
                         "to start the stage afresh")
    return st


def resume_partial(path, fmt: str, settings: dict, made_from: dict, states: dict, who: str,
                   extra: dict | None = None) -> tuple[int, dict | None]:
    """Load what `save_partial` wrote into `states` and `extra` (in place), once its settings and inputs are
    checked to be this run's; returns (step, history), or (0, None) when there is no partial state."""
    import torch

    path = Path(path)
    if not path.exists():
        return 0, None
    st = check_partial(path, fmt, settings, made_from, ("step", "history", "torch_rng", *states))
    for k, m in states.items():
        m.load_state_dict(st[k])
    torch.set_rng_state(st["torch_rng"])
    if st.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda_rng"])
    if extra is not None:
        extra.update(st["extra"])
    print(f"{who}: resuming from {path} at step {st['step']}")
    return st["step"], st["history"]
