"""`salon-bridge serve` with the earlier, three-round-trip ingest (WATCH, EXISTS, MULTI/EXEC), to
measure in the same run what the one-round-trip script in bridge/ingest.py gained.

    .venv/bin/python bench/prototypes/watch_ingest.py serve --config CONFIG --port 8200

Everything else is the product's: this only replaces `Ingestor.store_and_enqueue`, then runs the
`salon-bridge` command line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a script from the repository

from redis.exceptions import WatchError  # noqa: E402

from bridge.ingest import Ingestor  # noqa: E402
from bridge.queue import PROCESS_EVENT, enqueue  # noqa: E402
from bridge.store import EVENTS_INDEX, event_key, record_key, seen_key  # noqa: E402


def store_and_enqueue_watch(self: Ingestor, envelope: dict[str, Any], body: bytes, note: str = "") -> bool:
    """The ingest as it was before the script: WATCH the seen mark, EXISTS, then MULTI/EXEC."""
    key = event_key(envelope["id"])
    retention = int(self.config.model.retention.events)
    with self.redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(seen_key(key))
            if pipe.exists(seen_key(key)):
                return False
            now = time.time()
            pipe.multi()
            pipe.set(seen_key(key), now, ex=int(self.config.webhook.dedupe_window))
            pipe.hset(record_key(key), mapping={"body": body, "received_at": now})
            pipe.expire(record_key(key), retention)
            pipe.zadd(EVENTS_INDEX, {key: now})
            enqueue(self.queue, PROCESS_EVENT, key, job_id=key, pipeline=pipe)
            pipe.execute()
        except WatchError:
            return False
    return True


def main() -> int:
    Ingestor.store_and_enqueue = store_and_enqueue_watch  # type: ignore[method-assign]
    from bridge.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
