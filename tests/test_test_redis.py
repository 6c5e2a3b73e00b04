"""The test suite on a fresh machine: without a Redis on 127.0.0.1:6379 it starts its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_up import _processes_mentioning

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_without_a_local_redis_the_suite_starts_its_own_and_stops_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SALON_BRIDGE_TEST_REDIS_URL"}
    env["SALON_BRIDGE_TEST_LOCAL_REDIS"] = "127.0.0.1:1"  # nothing answers there
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'run'}",
         "tests/test_ingest.py", "tests/test_jobs.py::test_a_separate_worker_process_delivers"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "redis: none answers on 127.0.0.1:1, so the tests start their own" in run.stdout
    assert " passed in " in run.stdout.splitlines()[-1] and "error" not in run.stdout.splitlines()[-1]
    assert _processes_mentioning(str(tmp_path / "run")) == []  # its redis-server stopped with the run
