"""`salon-bridge worker` with RQ's forking `Worker` instead of `SimpleWorker`, to measure the
per-job cost of a fork against running jobs in the worker process.

    .venv/bin/python bench/prototypes/fork_worker.py worker --config CONFIG

Everything else is the product's: this only replaces `bridge.worker.WORKER_CLASS`, then runs the
`salon-bridge` command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a script from the repository

from rq import Worker  # noqa: E402

import bridge.worker  # noqa: E402


def main() -> int:
    bridge.worker.WORKER_CLASS = Worker  # type: ignore[misc]
    from bridge.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
