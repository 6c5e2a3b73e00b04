"""The platform side of a chaos run: posts the stream at a steady rate, signed as the platform signs,
and delivers each one again until it gets a 2xx (a 503 or a dropped connection is retried, as the
platform retries a failed delivery)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from bench.chaos_events import Post
from bridge.samples import signed_request

PLATFORM_TIMEOUT = 10.0  # the platform gives up on an answer after 10 s and delivers again later
RESEND_AFTER = 1.0  # the platform waits minutes; the run waits a second to stay short
GIVE_UP_AFTER = 300.0


@dataclass
class Delivery:
    """What the sender saw for one event id, over all its posts and re-deliveries."""

    first_sent: float | None = None
    acked_at: float | None = None  # the first 2xx answer (202 accepted or 200 duplicate/ignored)
    answers: Counter[str] = field(default_factory=Counter)
    gave_up: bool = False


class Sender:
    """Posts every Post at `rate` per second from a pool of threads (so deliveries overlap)."""

    def __init__(self, url: str, secret: str, posts: list[Post], rate: float, threads: int = 24):
        self.url = url
        self.secret = secret
        self.posts = posts
        self.rate = rate
        self.deliveries: dict[str, Delivery] = {}
        self.answers: Counter[str] = Counter()
        self.answered: list[tuple[float, str]] = []  # (time, answer): what the platform saw when
        self.posted = 0
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="platform")
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._sessions: list[requests.Session] = []
        self.started_at = 0.0
        self.ended_at = 0.0

    def start(self) -> None:
        self.started_at = time.time()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for session in self._sessions:
            session.close()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def _run(self) -> None:
        start = time.monotonic()
        futures = []
        for index, post in enumerate(self.posts):
            delay = start + max(index / self.rate, post.not_before) - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            futures.append(self._pool.submit(self._deliver, post))
        for future in futures:
            if self._stop.is_set():
                break
            future.result()
        self.ended_at = time.time()
        self.finished.set()

    def _deliver(self, post: Post) -> None:
        event = post.event
        with self._lock:
            record = self.deliveries.setdefault(event.id, Delivery())
            record.first_sent = record.first_sent or time.time()
            self.posted += 1
        deadline = time.monotonic() + GIVE_UP_AFTER
        while not self._stop.is_set():
            body, headers = signed_request(event.envelope, self.secret)
            try:
                response = self._session().post(self.url, data=body, headers=headers, timeout=PLATFORM_TIMEOUT)
                label = _label(response)
            except requests.Timeout:
                label = "timeout"
            except requests.ConnectionError:
                label = "connection refused/reset"
            now = time.time()
            with self._lock:
                record.answers[label] += 1
                self.answers[label] += 1
                self.answered.append((now, label))
                if label.startswith("2") and record.acked_at is None:
                    record.acked_at = now
            if label.startswith("2") or label.startswith("4"):
                return  # 4xx: the platform would not retry either; the check reports it
            if time.monotonic() > deadline:
                record.gave_up = True
                return
            self._stop.wait(RESEND_AFTER)


def _label(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 200 and isinstance(body, dict):
        if body.get("duplicate"):
            return "200 duplicate"
        if body.get("ignored"):
            return "200 ignored"
    return str(response.status_code)
