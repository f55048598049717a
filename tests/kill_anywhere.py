"""Kill the smoke chain anywhere, re-run it, compare with an uninterrupted run. Too slow for the suite
(about 8 chains); run by hand:

    python tests/kill_anywhere.py [--runs /tmp/kill-sweep]

For each kill point, a fresh run directory: `bash pipeline.sh smoke` starts in its own process group;
when the chain prints the point's marker line (plus a delay), the whole group gets SIGKILL; then the
chain runs again to the end. Printed per point: which files the kill left, whether temp files or live
processes remained, and whether the re-run's results.json rows equal the uninterrupted run's."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTS = [  # (name, marker printed by the chain, seconds to wait after it); a marker "file:GLOB" waits instead
    # for a file of the run directory: the kill then lands right after a periodic save of a resumable state
    ("stage 0, parent SAC", "parent: SAC for", 2.0),
    ("stage 0, after a child's periodic save", "file:stage0/*.partial.pt", 0.0),
    ("stage 0, children", "stage 0: 2 tasks", 4.0),
    ("stage 0, oracle experts", "== stage 0 (oracle experts", 6.0),
    ("stage 1 autoencoder", "== stage 1 (autoencoder", 8.0),
    ("stage 2 HypLatent", "== stage 2 (HypLatent", 4.0),
    ("stage 2, after a periodic save", "file:hyplatent.partial.pt", 0.0),
    ("stage 3 HypFormer", "== stage 3 (HypFormer", 10.0),
    ("evaluation", "== evaluation", 3.5),
]


def chain(runs: Path, kill_at: tuple[str, float] | None = None) -> tuple[int, str, bool]:
    """Run the smoke chain; with kill_at=(marker, delay), SIGKILL its process group `delay` seconds after the
    marker line (or, for "file:GLOB", as soon as the run directory holds such a file).
    Returns (exit code, output, whether the kill happened)."""
    import threading

    env = dict(os.environ, AMT_NO_VENV="1", RUNS=str(runs),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    p = subprocess.Popen(["bash", str(ROOT / "pipeline.sh"), "smoke"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, killed = [], threading.Event()

    def kill_on_file(pattern: str) -> None:
        while p.poll() is None:
            if list((runs / "cheetah-vel-smoke").glob(pattern)):
                os.killpg(p.pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.01)

    if kill_at and kill_at[0].startswith("file:"):
        threading.Thread(target=kill_on_file, args=(kill_at[0][5:],), daemon=True).start()
    for line in p.stdout:
        out.append(line)
        if kill_at and not kill_at[0].startswith("file:") and not killed.is_set() and kill_at[0] in line:
            time.sleep(kill_at[1])
            os.killpg(p.pid, signal.SIGKILL)
            killed.set()
            break
    p.stdout.close()
    p.wait()
    return p.returncode, "".join(out), killed.is_set()


def leftovers(run: Path) -> tuple[list[str], list[str]]:
    temps = sorted(str(q.relative_to(run)) for q in run.rglob(".*.tmp*"))
    partial = sorted(str(q.relative_to(run)) for q in run.rglob("*.partial.pt"))
    return temps, partial


def live_processes(runs: Path) -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(runs) in cmd and "kill_anywhere" not in cmd:
                out.append(f"{d.name}: {cmd[:80]}")
    return out


def rows(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text())
    return {(r["method"], r["task"]): r["score"] for r in res["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", default="/tmp/kill-sweep")
    ap.add_argument("--points", nargs="*", help="only the kill points whose name contains one of these")
    args = ap.parse_args()
    base = Path(args.runs)
    shutil.rmtree(base, ignore_errors=True)
    t0 = time.time()
    rc, _, _ = chain(base / "reference")
    assert rc == 0, "the uninterrupted chain failed"
    ref = rows(base / "reference" / "cheetah-vel-smoke")
    print(f"uninterrupted smoke chain: {time.time() - t0:.0f}s, {len(ref)} result rows")
    print("| kill point | killed | files after the kill | temp / partial files left | re-run rc | "
          "live processes after | results equal the uninterrupted run |")
    print("|---|---|---|---|---|---|---|")
    for name, marker, delay in POINTS:
        if args.points and not any(p in name for p in args.points):
            continue
        runs = base / name.replace(" ", "_").replace(",", "")
        rc, out, killed = chain(runs, (marker, delay))
        run = runs / "cheetah-vel-smoke"
        time.sleep(2)
        files = sorted(q.name for q in run.glob("*.pt")) + [f"{d}/{len(list(run.glob(d + '/*.pt')))} files"
                                                             for d in ("stage0", "oracle")]
        temps, partial = leftovers(run)
        rc2, out2, _ = chain(runs)
        orphans = live_processes(runs)
        temps2, partial2 = leftovers(run)
        equal = rc2 == 0 and rows(run) == ref
        diff = "" if equal or rc2 else max(abs(rows(run)[k] - ref[k]) for k in ref)
        print(f"| {name} | {killed} | {', '.join(files)} | {len(temps)} / {len(partial)} -> after re-run "
              f"{len(temps2)} / {len(partial2)} | {rc2} | {len(orphans)} | "
              f"{'yes' if equal else f'no (largest difference {diff})'} |", flush=True)
    print(f"sweep: {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
