"""Figures for monitoring: /metrics (Prometheus), /readyz, and the admin's dashboard strip.

Two sources, each where it is cheapest to keep (docs/operations.md, "Metrics"):
- the web side (events received, ack latency) counts in-process with prometheus_client; under
  the web server's several processes, in its multiprocess mode (PROMETHEUS_MULTIPROC_DIR). No Redis
  round trip is added to a webhook request.
- the worker side (actions by connector and outcome, latency, retries, dead letters) is kept in
  Redis hashes, written in the transaction that records the outcome (`bridge.jobs.attempt`), so workers on
  any number of hosts add up; it is read at scrape time, with the queue's depth and the workers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from rq.utils import str_to_date
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from bridge import redis_health
from bridge.logs import mask
from bridge.store import DEAD_INDEX, EVENTS_INDEX, GAVE_UP, PREFIX, Status, text

ACTIONS_KEY = PREFIX + "metrics:actions"  # hash "<connector>|<outcome>" -> count
ACTION_SECONDS_KEY = PREFIX + "metrics:action_seconds"  # hash "<connector>|<bucket index>" / "<connector>|sum"
HOURLY_PREFIX = PREFIX + "stats:hour:"  # hash per hour: outcome -> count, for the dashboard's 24 h
POSSIBLE_DUPLICATES_KEY = "sb:stats:possible_duplicates"  # written by bridge.jobs
HOURLY_TTL = 2 * 86400

ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ACTION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ACCEPTED_OUTCOMES = {"accepted", "duplicate", "ignored"}
# Only attempts that may have reached a connector say something about its latency.
TIMED_OUTCOMES = {Status.DONE, Status.RETRYING, Status.DEAD}
_EVENT_TYPE = re.compile(r"^[a-z][a-z_]{0,30}\.[a-z][a-z_]{0,30}$")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# ---- the worker side, kept in Redis -------------------------------------------------------------


def record_action(
    pipe: Pipeline, connector: str, outcome: str, seconds: float | None, now: float | None = None
) -> None:
    """Count one action outcome (and its duration) on `pipe`, to commit with the action's state."""
    now = time.time() if now is None else now
    pipe.hincrby(ACTIONS_KEY, f"{connector}|{outcome}", 1)
    if seconds is not None and outcome in TIMED_OUTCOMES:
        bucket = next((i for i, bound in enumerate(ACTION_BUCKETS) if seconds <= bound), len(ACTION_BUCKETS))
        pipe.hincrby(ACTION_SECONDS_KEY, f"{connector}|{bucket}", 1)
        pipe.hincrbyfloat(ACTION_SECONDS_KEY, f"{connector}|sum", seconds)
    hour_key = f"{HOURLY_PREFIX}{int(now // 3600)}"
    pipe.hincrby(hour_key, outcome, 1)
    pipe.expire(hour_key, HOURLY_TTL)


PLANS_KEY = PREFIX + "metrics:plans"  # hash outcome -> count of scheduled sends
LATENESS_KEY = PREFIX + "metrics:plan_lateness"  # hash "<bucket index>" / "sum" -> lateness of fired plans
LATENESS_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


def record_plan(pipe: Pipeline, outcome: str, lateness: float | None = None) -> None:
    """Count a plan made, moved, dropped or fired; for a fired one, how late it went (actual - planned)."""
    pipe.hincrby(PLANS_KEY, outcome, 1)
    if lateness is not None:
        bucket = next((i for i, bound in enumerate(LATENESS_BUCKETS) if lateness <= bound), len(LATENESS_BUCKETS))
        pipe.hincrby(LATENESS_KEY, str(bucket), 1)
        pipe.hincrbyfloat(LATENESS_KEY, "sum", lateness)


def recent_outcomes(redis: Redis, now: float | None = None, hours: int = 24) -> dict[str, int]:
    """Action outcomes counted in the current hour and the `hours - 1` before it."""
    now = time.time() if now is None else now
    current = int(now // 3600)
    pipe = redis.pipeline(transaction=False)
    for hour in range(current - hours + 1, current + 1):
        pipe.hgetall(f"{HOURLY_PREFIX}{hour}")
    totals: dict[str, int] = {}
    for counts in pipe.execute():
        for outcome, count in counts.items():
            totals[outcome.decode()] = totals.get(outcome.decode(), 0) + int(count)
    return totals


@dataclass
class QueueStatus:
    depth: int  # jobs waiting for a worker
    scheduled: int  # retries waiting for their time
    running: int
    oldest_age: float | None  # seconds the oldest waiting job has waited
    workers: int  # workers alive on the queue


def queue_status(queue: Queue, now: float | None = None) -> QueueStatus:
    """The queue as a monitor sees it; reads only (no RQ maintenance is triggered)."""
    now = time.time() if now is None else now
    redis = queue.connection
    pipe = redis.pipeline(transaction=False)
    pipe.llen(queue.key)
    pipe.zcard(queue.scheduled_job_registry.key)
    pipe.zcard(queue.started_job_registry.key)
    pipe.lrange(queue.key, 0, 0)
    pipe.smembers(WORKERS_BY_QUEUE_KEY % queue.name)
    depth, scheduled, running, first, worker_keys = pipe.execute()
    alive = 0
    if worker_keys:
        check = redis.pipeline(transaction=False)
        for key in worker_keys:
            check.exists(key)
        alive = sum(check.execute())
    oldest_age = None
    if first:
        enqueued_at = redis.hget(Job.key_for(text(first[0])), "enqueued_at")
        if enqueued_at:
            try:
                oldest_age = max(0.0, now - str_to_date(enqueued_at).timestamp())
            except ValueError:
                pass  # not a time RQ wrote: no age rather than a wrong one
    return QueueStatus(int(depth), int(scheduled), int(running), oldest_age, alive)


@dataclass
class Readiness:
    ready: bool
    problems: list[str]
    checks: dict[str, Any]


def readiness(redis: Redis, queue: Queue, max_queue_age: float) -> Readiness:
    """Ready: Redis answers and takes writes (a webhook would be accepted), does not evict, a
    worker is alive, and the oldest queued job is younger than the limit. A Redis without
    persistence is a warning: webhooks are accepted, but a restart of Redis would lose them."""
    try:
        health = redis_health.inspect(redis, probe=True)
        status = queue_status(queue)
    except RedisError as exc:
        return Readiness(False, [mask(f"Redis does not answer ({type(exc).__name__}: {exc})")], {"redis": False})
    problems = health.errors()
    full = health.full()
    if full:
        problems.append(full)
    if status.workers == 0:
        problems.append("no worker is alive: start one with `salon-bridge worker` (or use `salon-bridge up`)")
    if status.oldest_age is not None and status.oldest_age > max_queue_age:
        problems.append(
            f"the oldest queued job has waited {status.oldest_age:.0f} s (limit {max_queue_age:g} s): "
            "workers are stuck or too few"
        )
    checks = {
        "redis": True,
        **health.details(),
        "warnings": health.warnings(),
        "workers": status.workers,
        "queue_depth": status.depth,
        "oldest_job_age_seconds": None if status.oldest_age is None else round(status.oldest_age, 1),
    }
    return Readiness(not problems, problems, checks)


class RedisCollector(Collector):
    """Worker-side figures and the queue, read from Redis when Prometheus scrapes."""

    def __init__(self, redis: Redis, queue: Queue):
        self.redis = redis
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("salon_bridge_redis_up", "1 when Redis answered during this scrape, else 0")
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(ACTIONS_KEY)
            pipe.hgetall(ACTION_SECONDS_KEY)
            pipe.zcard(DEAD_INDEX)
            pipe.zcard(EVENTS_INDEX)
            pipe.get(POSSIBLE_DUPLICATES_KEY)
            pipe.hgetall(PLANS_KEY)
            pipe.hgetall(LATENESS_KEY)
            pipe.zcard(PREFIX + "plans")  # bridge.schedules.PLANS: the pending plans
            actions, seconds, dead_now, stored, duplicates, plans, lateness, pending = pipe.execute()
            status = queue_status(self.queue)
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        by_outcome = CounterMetricFamily(
            "salon_bridge_actions", "Action attempts by connector and outcome", labels=["connector", "outcome"]
        )
        retries = CounterMetricFamily("salon_bridge_action_retries", "Retries scheduled", labels=["connector"])
        dead = CounterMetricFamily(
            "salon_bridge_dead_letters", "Actions that gave up (dead letters)", labels=["connector"]
        )
        gave_up: dict[str, int] = {}  # dead, and failed after sending (a status callback's verdict)
        for field, count in sorted(actions.items()):
            connector, outcome = field.decode().rsplit("|", 1)
            by_outcome.add_metric([connector, outcome], int(count))
            if outcome == Status.RETRYING:
                retries.add_metric([connector], int(count))
            if outcome in GAVE_UP:
                gave_up[connector] = gave_up.get(connector, 0) + int(count)
        for connector, count in gave_up.items():
            dead.add_metric([connector], count)
        yield from (by_outcome, retries, dead)
        yield _action_histogram(seconds)

        gauges = [
            ("salon_bridge_dead_letters_waiting", "Dead actions kept for a replay", dead_now),
            ("salon_bridge_events_stored", "Events in the event log", stored),
            ("salon_bridge_queue_depth", "Jobs waiting for a worker", status.depth),
            ("salon_bridge_retries_scheduled", "Retries waiting for their time", status.scheduled),
            ("salon_bridge_jobs_running", "Jobs being run by a worker", status.running),
            ("salon_bridge_workers", "Workers alive on the queue", status.workers),
            (
                "salon_bridge_oldest_job_age_seconds",
                "How long the oldest waiting job has waited",
                status.oldest_age or 0,
            ),
        ]
        for name, documentation, value in gauges:
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], float(value))
            yield gauge
        possible = CounterMetricFamily(
            "salon_bridge_possible_duplicates", "Attempts interrupted while sending (the destination may have it twice)"
        )
        possible.add_metric([], int(duplicates or 0))
        yield possible
        yield from _plan_metrics(plans, lateness, pending)


def _plan_metrics(plans: dict[bytes, bytes], lateness: dict[bytes, bytes], pending: int) -> Iterator[Metric]:
    waiting = GaugeMetricFamily("salon_bridge_scheduled_pending", "Scheduled sends waiting for their time")
    waiting.add_metric([], float(pending))
    yield waiting
    outcomes = CounterMetricFamily(
        "salon_bridge_scheduled", "Scheduled sends by what happened to their plan", labels=["outcome"]
    )
    for field, count in sorted(plans.items()):
        outcomes.add_metric([field.decode()], int(count))
    yield outcomes
    histogram = HistogramMetricFamily(
        "salon_bridge_scheduled_lateness_seconds", "How late a scheduled send fired (actual - planned)"
    )
    cumulative, buckets = 0.0, []
    for index, bound in enumerate(LATENESS_BUCKETS):
        cumulative += float(lateness.get(str(index).encode(), 0))
        buckets.append((repr(bound), cumulative))
    cumulative += float(lateness.get(str(len(LATENESS_BUCKETS)).encode(), 0))
    buckets.append(("+Inf", cumulative))
    histogram.add_metric([], buckets, sum_value=float(lateness.get(b"sum", 0)))
    yield histogram


def _action_histogram(raw: dict[bytes, bytes]) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(
        "salon_bridge_action_duration_seconds", "Time an action attempt took", labels=["connector"]
    )
    per_connector: dict[str, dict[str, float]] = {}
    for field, value in raw.items():
        connector, part = field.decode().rsplit("|", 1)
        per_connector.setdefault(connector, {})[part] = float(value)
    for connector, parts in sorted(per_connector.items()):
        cumulative, buckets = 0.0, []
        for index, bound in enumerate(ACTION_BUCKETS):
            cumulative += parts.get(str(index), 0)
            buckets.append((repr(bound), cumulative))
        cumulative += parts.get(str(len(ACTION_BUCKETS)), 0)
        buckets.append(("+Inf", cumulative))
        histogram.add_metric([connector], buckets, sum_value=parts.get("sum", 0.0))
    return histogram


# ---- the web side, in-process -------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class WebMetrics:
    """Counters of the webhook endpoint, one set per app."""

    def __init__(self) -> None:
        shared = multiprocess_dir()
        if shared and values.ValueClass is values.MutexValue:
            # prometheus_client picks its value store when first imported; the directory may have
            # been set after that (e.g. by `serve`), and these metrics must write to it.
            values.ValueClass = values.get_value_class()
        # In multiprocess mode the values live in files; a scrape reads them all (below).
        self.registry = CollectorRegistry(auto_describe=True)
        own = None if shared else self.registry
        self.received = Counter(
            "salon_bridge_events_received",
            "Webhook deliveries by event type and outcome",
            ["type", "outcome"],
            registry=own,
        )
        self.rejected = Counter(
            "salon_bridge_events_rejected", "Webhook deliveries refused, by reason", ["reason"], registry=own
        )
        self.ack = Histogram(
            "salon_bridge_ack_duration_seconds",
            "Time to answer a webhook delivery",
            ["outcome"],
            buckets=ACK_BUCKETS,
            registry=own,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, label: str, envelope: dict[str, Any] | None, seconds: float) -> None:
        """Count one delivery: `label` is bridge.ingest's Outcome.label."""
        outcome = label if label in ACCEPTED_OUTCOMES else "rejected"
        event_type = "unknown"
        if envelope is not None and outcome != "rejected":
            raw = envelope.get("type")
            event_type = raw if isinstance(raw, str) and _EVENT_TYPE.match(raw) else "other"
        counters = self._children.get((event_type, outcome))
        if counters is None:  # labels() takes a lock and builds its key each time: looked up once
            counters = self._children[(event_type, outcome)] = (
                self.received.labels(event_type, outcome),
                self.ack.labels(outcome),
            )
        counters[0].inc()
        if outcome == "rejected":
            self.rejected.labels(label).inc()
        counters[1].observe(seconds)


class Exposition:
    """What GET /metrics answers: the web counters (all processes) and the Redis-side figures."""

    def __init__(self, web: WebMetrics, redis: Redis, queue: Queue):
        shared = multiprocess_dir()
        if shared:
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, path=shared)
        else:
            self.registry = web.registry
        self.registry.register(RedisCollector(redis, queue))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The body and its content type, in the format the scraper asked for (Accept header)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def bearer_matches(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    given = (header or "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(token.encode()).digest())
