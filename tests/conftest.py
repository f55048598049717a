"""Shared fixtures: the smoke chains of both suites (and Cheetah-Vel's with independent experts), run once per test run through pipeline.sh and reused by
every test that reads them; tests that use them are marked slow. The chains the selected tests need start
together, side by side with one thread each (THREADS=1: two chains on 2 cores, and no torch thread spinning
on a core that another process keeps busy)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAINS = {"cheetah_chain": ("smoke", "cheetah-vel-smoke", {}), "metaworld_chain": ("mw-smoke", "metaworld-smoke", {}),
          "independent_chain": ("smoke", "cheetah-vel-smoke-independent", {"EXPERTS": "independent"})}
_needed: set = set()  # the chain fixtures of the selected tests
_started: dict = {}  # fixture name -> (run directory, running process)


def chain_env(runs, threads: str | None = None) -> dict:
    # the stages run with this interpreter (pipeline.sh calls `python`)
    env = dict(os.environ, AMT_NO_VENV="1", RUNS=str(runs),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if threads:
        env["THREADS"] = threads
    return env


def run_chain(name, runs):
    r = subprocess.run(["bash", str(ROOT / "pipeline.sh"), name], cwd=ROOT, env=chain_env(runs), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _chain(fixture: str, tmp_path_factory):
    """Start every needed chain not started yet (so they run together), then wait for `fixture`'s."""
    for name in sorted(_needed | {fixture}):
        if name not in _started:
            runs = tmp_path_factory.mktemp("runs")
            with open(runs / "stdout.txt", "w") as out, open(runs / "stderr.txt", "w") as err:  # files: no pipe fills
                proc = subprocess.Popen(["bash", str(ROOT / "pipeline.sh"), CHAINS[name][0]], cwd=ROOT,
                                        env={**chain_env(runs, threads="1"), **CHAINS[name][2]}, stdout=out, stderr=err)
            _started[name] = (runs, proc)
    runs, proc = _started[fixture]
    proc.wait(timeout=1200)
    out, err = (runs / "stdout.txt").read_text(), (runs / "stderr.txt").read_text()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return runs / CHAINS[fixture][1], subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="session")
def cheetah_chain(tmp_path_factory):
    return _chain("cheetah_chain", tmp_path_factory)


@pytest.fixture(scope="session")
def metaworld_chain(tmp_path_factory):
    return _chain("metaworld_chain", tmp_path_factory)


@pytest.fixture(scope="session")
def independent_chain(tmp_path_factory):
    """The Cheetah-Vel smoke chain with independent experts (EXPERTS=independent: no parent)."""
    return _chain("independent_chain", tmp_path_factory)


def pytest_collection_modifyitems(items):
    """A test that needs a smoke chain is in the slow tier, whatever its own marks say."""
    for item in items:
        used = set(CHAINS) & set(getattr(item, "fixturenames", ()))
        if used:
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session):
    """The chains the selected tests (after -m and -k) will ask for."""
    for item in session.items:
        params = getattr(item, "callspec", None)
        asked = [*getattr(item, "fixturenames", ()), *(params.params.values() if params else ())]
        _needed.update(a for a in asked if isinstance(a, str) and a in CHAINS)


@pytest.fixture
def one_thread():
    """One torch thread for the test (stage 0's --torch-threads 1): small nets and batched kernels run faster
    on one thread than on two that a busy machine makes wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
