"""`salon-bridge worker` with proposed per-job savings, each switchable, to measure what each buys.

    SB_LEAN=heartbeat,logs,proxies,trips .venv/bin/python bench/prototypes/lean_worker.py worker --config CONFIG
    .venv/bin/python bench/drain.py --part fast --variants bridge,lean      # all of them vs the product

SB_LEAN (comma-separated, default all):
  heartbeat  RQ's worker heartbeat (HSET + EXPIRE + EXPIRE, each its own round trip, about three
             times per job) is sent at most every HEARTBEAT_EVERY seconds, in one pipeline. The
             worker key lives worker_ttl + 60 s (480 s by default), so this changes nothing a
             monitor sees except a last_heartbeat up to that many seconds old. The heartbeats RQ
             sends with a job-specific TTL (on a pipeline, before each job) are untouched.
  logs       RQ's four INFO lines per job (dequeued, "Successfully completed", "Job OK", "result is
             kept") are not written: the bridge's own `action ...` line says more. Each line also
             pays the bridge's masking formatter. RQ's warnings and errors are kept.
  trips      `process_event` in 4 Redis round trips instead of 10-12 (bench/prototypes/lean_jobs.py).
  proxies    The http connector's requests.Session stops re-reading the environment and ~/.netrc on
             every call (`trust_env`): the proxies for its one URL are read once, when it is built.

Everything else is the product's; this patches, then runs the `salon-bridge` command line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a script from the repository

import requests  # noqa: E402
from rq import SimpleWorker  # noqa: E402

import bridge.worker  # noqa: E402
from connectors.http import HttpConnector  # noqa: E402

HEARTBEAT_EVERY = 10.0  # seconds; far below the 480 s the worker key lives
ALL = ("heartbeat", "logs", "proxies", "trips")

# The per-job INFO messages of rq.worker (rq 3.0, rq/worker/base.py), by their format string.
PER_JOB_MESSAGES = (
    "Worker %s: %s: %s (%s)",  # dequeued (with the job's description), and "Job OK"
    "Worker %s: %s: %s",  # dequeued (without the description)
    "Successfully completed %s job in %ss on worker %s",
    "Successfully completed job %s in %ss on worker %s",
    "Worker %s: job %s result is kept for %s seconds",
    "Worker %s: job %s result discarded immediately",
)


class LeanWorker(SimpleWorker):
    """SimpleWorker whose bare heartbeat is one round trip, at most every HEARTBEAT_EVERY seconds."""

    _last_bare_heartbeat = 0.0

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None or timeout is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        if time.monotonic() - self._last_bare_heartbeat < HEARTBEAT_EVERY:
            return
        self._last_bare_heartbeat = time.monotonic()
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(None, pipeline=pipe)
            pipe.execute()


class PerJobInfoFilter(logging.Filter):
    """Drops RQ's per-job INFO lines; keeps everything else from rq.worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg in PER_JOB_MESSAGES)


def lean_http_init(self: HttpConnector, name: str, settings: Any) -> None:
    original_http_init(self, name, settings)
    self._session.trust_env = False
    self._session.proxies = requests.utils.get_environ_proxies(self.settings.url)


original_http_init = HttpConnector.__init__


def apply(changes: set[str]) -> None:
    if "heartbeat" in changes:
        bridge.worker.WORKER_CLASS = LeanWorker  # type: ignore[misc]
    if "logs" in changes:
        logging.getLogger("rq.worker").addFilter(PerJobInfoFilter())
    if "proxies" in changes:
        HttpConnector.__init__ = lean_http_init  # type: ignore[method-assign]
    if "trips" in changes:
        from bench.prototypes import lean_jobs

        lean_jobs.install()


def main() -> int:
    wanted = {c.strip() for c in os.environ.get("SB_LEAN", ",".join(ALL)).split(",") if c.strip()}
    unknown = wanted - set(ALL)
    if unknown:
        raise SystemExit(f"SB_LEAN: unknown {', '.join(sorted(unknown))}; choose among {', '.join(ALL)}")
    apply(wanted)
    from bridge.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
