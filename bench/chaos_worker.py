"""`salon-bridge worker` with another RQ `worker_ttl`: the chaos run's --worker-ttl experiment.

An idle RQ worker blocks on the queue for worker_ttl - 15 s before it looks again at its
maintenance: re-queueing the jobs of killed workers and restarting the retry scheduler. The bridge
passes 75 (bridge/worker.py); RQ's default is 420. This runs the unchanged bridge worker with the
given value instead, to measure what it does to recovery times (420 reproduces the old behaviour).

    python bench/chaos_worker.py WORKER_TTL salon-bridge-worker-arguments...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rq import SimpleWorker  # noqa: E402

from bridge import worker  # noqa: E402
from bridge.cli import main  # noqa: E402


def with_worker_ttl(ttl: int) -> type[SimpleWorker]:
    class Worker(worker.WORKER_CLASS):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["worker_ttl"] = ttl
            super().__init__(*args, **kwargs)

    return Worker


if __name__ == "__main__":
    worker.WORKER_CLASS = with_worker_ttl(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
