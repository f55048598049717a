"""Shared fixtures: the smoke chains of both suites, run once per test run through pipeline.sh and reused by
every test that reads them; tests that use them are marked slow."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_chain(name, runs):
    # the stages run with this interpreter (pipeline.sh calls `python`)
    env = dict(os.environ, AMT_NO_VENV="1", RUNS=str(runs),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(["bash", str(ROOT / "pipeline.sh"), name], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="session")
def cheetah_chain(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return runs / "cheetah-vel-smoke", run_chain("smoke", runs)


@pytest.fixture(scope="session")
def metaworld_chain(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return runs / "metaworld-smoke", run_chain("mw-smoke", runs)


def pytest_collection_modifyitems(items):
    """A test that needs a smoke chain is in the slow tier, whatever its own marks say."""
    for item in items:
        if {"cheetah_chain", "metaworld_chain"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
