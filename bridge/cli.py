"""The `salon-bridge` command."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from redis import Redis
from redis.exceptions import RedisError

from bridge import logs
from bridge.queue import data_dir, embedded_data, resolve_redis_url
from bridge.redis_health import RedisUnfit
from bridge.runtime import Runtime
from bridge.samples import SAMPLES_DIR, SEND_ORDER, sample_types
from bridge.state import event_views, subject_of
from bridge.store import ActionState, Status
from mappings.config import DRY_RUN_ACCEPTED, BridgeConfig, ConfigError, default_config_path, load_config
from mappings.routing import PlannedAction, template_context

DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8000/webhooks"
SECRET_VARIABLE = "SALONBOOKIT_WEBHOOK_SECRET"
WARNED_VARIABLE = "SALON_BRIDGE_CONFIG_WARNED"
MIN_ADMIN_PASSWORD = 10
EPILOG_CONFIG = "The config path comes from --config, else $SALON_BRIDGE_CONFIG, else ./config.yaml."


class CommandError(Exception):
    """A failure to report as one clear line (exit status 1)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        result: int = args.handler(args)
        return result
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    except (CommandError, RedisUnfit) as exc:
        print(f"salon-bridge {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salon-bridge",
        description="Receive SalonBookIt webhooks and turn them into calendar entries, messages and calls.",
        epilog=EPILOG_CONFIG,
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format",
        default=logs.default_format(),
        choices=logs.FORMATS,
        help=f"text for people, json for log collectors (default: ${logs.FORMAT_ENV}, else text)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_: str, examples: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"examples:\n{examples}\n\n{EPILOG_CONFIG}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    serve = command(
        "serve",
        cmd_serve,
        "Run the webhook endpoint under granian (production server).",
        "  salon-bridge serve --port 8000\n  salon-bridge serve --config /etc/salon-bridge/config.yaml --workers 4",
    )
    _config_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, default=2, help="web processes (default 2)")
    serve.add_argument("--threads", type=int, default=4, help="threads per web process (default 4)")
    _watch_option(serve)

    worker = command(
        "worker",
        cmd_worker,
        "Run a worker that processes accepted events (with the retry scheduler).",
        "  salon-bridge worker\n  salon-bridge worker --burst      # drain the queue, then exit",
    )
    _config_option(worker)
    worker.add_argument("--burst", action="store_true", help="process what is queued, then exit")
    worker.add_argument("--dry-run", action="store_true", help="render and record actions, send nothing")
    _watch_option(worker)

    up = command(
        "up",
        cmd_up,
        "Run everything: web server, workers and (when no Redis is configured) an embedded Redis.",
        "  salon-bridge up --dry-run            # try it: nothing leaves this machine\n"
        "  salon-bridge up --port 8000 --workers 4\n"
        "  REDIS_URL=redis://localhost:6379/0 salon-bridge up",
    )
    _config_option(up)
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    up.add_argument(
        "--workers", type=_non_negative_int, default=2, help="worker processes (default 2; 0: run workers elsewhere)"
    )
    up.add_argument("--data-dir", default="./var", help="embedded Redis data folder (default ./var)")
    up.add_argument("--dry-run", action="store_true", help="render and record actions, send nothing")
    up.add_argument(
        "--no-watch-config",
        dest="watch_config",
        action="store_false",
        help="do not take on a changed config file by itself (`salon-bridge reload` still does)",
    )

    scheduled = command(
        "scheduled",
        cmd_scheduled,
        "List scheduled sends (reminders, review requests): upcoming and past, with their status and reason.",
        "  salon-bridge scheduled                       # the next 7 days and the last 7\n"
        "  salon-bridge scheduled --booking ABC123XY --within 30d\n"
        "  salon-bridge scheduled --status missed",
    )
    _config_option(scheduled)
    scheduled.add_argument("--booking", help="only this booking (its code or id)")
    scheduled.add_argument(
        "--within", type=_duration, default=7 * 86400, help="this far ahead and back (default 7d; e.g. 48h, 30d)"
    )
    scheduled.add_argument("--status", choices=["pending", "sent", "cancelled", "missed", "skipped", "dead"])

    reload = command(
        "reload",
        cmd_reload,
        "Make the running web and worker processes read their config file again (sends them SIGHUP).",
        "  salon-bridge reload\n  salon-bridge status    # then: which config version each process runs",
    )
    _config_option(reload)

    status = command(
        "status",
        cmd_status,
        "List the running web and worker processes and the config version each one runs.",
        "  salon-bridge status",
    )
    _config_option(status)

    preview = command(
        "preview",
        cmd_preview,
        "Show what a changed config would have done with the events already received; sends nothing.",
        "  salon-bridge preview config.yaml --since 7d\n  salon-bridge preview new.yaml --limit 200 --format json",
    )
    _config_option(preview)
    preview.add_argument("new", metavar="NEW.yaml", help="the changed config file to compare with the one in force")
    preview.add_argument(
        "--since", type=_duration, default=7 * 86400.0, help="how far back to take events (default 7d; e.g. 12h, 30m)"
    )
    preview.add_argument("--limit", type=_positive_int, default=1000, help="at most this many events (default 1000)")
    preview.add_argument("--format", choices=["text", "json"], default="text", help="text for people, json for tools")

    check = command(
        "check-config",
        cmd_check_config,
        "Validate a config file; exit 0 when valid, 1 listing every problem.",
        "  salon-bridge check-config\n  salon-bridge check-config staging.yaml",
    )
    check.add_argument("path", nargs="?", help="config file (default: as for --config)")
    check.add_argument("--config", dest="config_option", help=argparse.SUPPRESS)
    check.add_argument("--strict", action="store_true", help="warnings are errors (exit 1)")
    check.add_argument(
        "--online",
        action="store_true",
        help="also reach each destination (Slack, Google, SMTP) and Redis (its eviction policy and persistence)",
    )

    slack = command(
        "slack-check",
        cmd_slack_check,
        "Check each Slack connector against Slack, sending nothing: the token (auth.test), its scopes, and "
        "that every channel the mappings post to exists and has the app in it (an incoming webhook: that "
        "its URL is live). Like check-config --online for Slack alone, and also while a connector is in dry run.",
        "  salon-bridge slack-check\n  salon-bridge slack-check staging.yaml --connector staff",
    )
    slack.add_argument("path", nargs="?", help="config file (default: as for --config)")
    slack.add_argument("--config", dest="config_option", help=argparse.SUPPRESS)
    slack.add_argument("--connector", help="only this connector (default: every one of type slack)")

    simulate = command(
        "simulate",
        cmd_simulate,
        "Show the actions an event would trigger, rendered as a worker would: with what entity memory "
        "knows when Redis answers (read only, never written), else with the event alone; sends nothing. "
        "Given a daily mapping's name: its next run, and each digest rendered with the agenda as it is now.",
        "  salon-bridge simulate my-event.json\n  salon-bridge simulate booking.created   # a shipped sample\n"
        "  salon-bridge simulate agenda-del-dia    # a daily mapping (the morning digest)",
    )
    _config_option(simulate)
    simulate.add_argument(
        "event",
        help="a JSON file with a platform event, an event type for the shipped sample, or a daily mapping's name",
    )

    events = command(
        "events",
        cmd_events,
        "List recent events and what each of their actions did.",
        "  salon-bridge events\n  salon-bridge events --type booking.created --limit 5\n"
        "  salon-bridge events --status dead\n"
        "  salon-bridge events --type order.shipped --show   # what each e-mail says (also in a dry run)",
    )
    _config_option(events)
    events.add_argument("--type", dest="event_type", help="only this event type, e.g. booking.created")
    events.add_argument("--status", choices=list(Status), help="only events with an action in this status")
    events.add_argument("--limit", type=_positive_int, default=20, help="how many events (default 20)")
    events.add_argument(
        "--show",
        action="store_true",
        help="also each action's rendered fields (credentials hidden; an e-mail as its text part)",
    )

    dead = command(
        "dead-letters",
        cmd_dead_letters,
        "List the actions that gave up, with the reason.",
        "  salon-bridge dead-letters\n  salon-bridge dead-letters --limit 100",
    )
    _config_option(dead)
    dead.add_argument("--limit", type=_positive_int, default=50, help="how many (default 50)")

    replay = command(
        "replay",
        cmd_replay,
        "Run the dead (or stuck unfinished) actions of an event again; --force: also done ones.",
        "  salon-bridge replay evt_abc123\n  salon-bridge replay evt_abc123 --action agenda/sync\n"
        "  salon-bridge replay evt_abc123 --force      # send a done action once more\n\n"
        "--force runs done, dry-run and stale actions again: the destination gets them a second time\n"
        "(a done e-mail is sent again as a new e-mail, with a new Message-ID: the customer gets a second\n"
        "copy). An action its mapping's `when:` skipped runs only if that condition is true now\n"
        "(evaluated on replay, with what the bridge now knows); else it stays skipped and says why.",
    )
    _config_option(replay)
    replay.add_argument("event_id", help="the platform's event id (see `salon-bridge events`)")
    replay.add_argument("--action", help="only this action (mapping-name/action-name)")
    replay.add_argument(
        "--force",
        action="store_true",
        help="also run done actions (sent again), and skipped ones whose condition is true now",
    )

    send = command(
        "send-sample",
        cmd_send_sample,
        "Post the platform's sample events, signed as the platform signs, and print each answer. "
        "`all` posts the 13 in the order the platform would (a booking's and an order's life), "
        "with the appointment moved to tomorrow.",
        "  salon-bridge send-sample booking.created\n  salon-bridge send-sample all --url http://127.0.0.1:8000/webhooks\n"
        '  salon-bridge send-sample payment.failed --secret "$SALONBOOKIT_WEBHOOK_SECRET" --tenant my-salon',
    )
    _config_option(send)
    send.add_argument("event_type", metavar="TYPE", choices=[*sample_types(), "all"], help="an event type, or all")
    send.add_argument("--url", default=DEFAULT_WEBHOOK_URL, help=f"where to post (default {DEFAULT_WEBHOOK_URL})")
    send.add_argument("--secret", help="signing secret (default: $SALONBOOKIT_WEBHOOK_SECRET, else the config's)")
    send.add_argument("--tenant", help="tenant_id to put in the events (default: the sample's)")

    urls = command(
        "feed-urls",
        cmd_feed_urls,
        "Print the calendar feed link of each professional and of the whole salon (calendar_feeds:).",
        "  salon-bridge feed-urls --base-url https://agenda.my-salon.example",
    )
    _config_option(urls)
    urls.add_argument(
        "--base-url", default="", help="the bridge's public address, e.g. https://host (default: paths only)"
    )

    command(
        "hash-password",
        cmd_hash_password,
        "Ask for the admin password and print its hash, for admin.password_hash in the config.",
        "  salon-bridge hash-password\n"
        "  export ADMIN_PASSWORD_HASH='<the printed hash>'   # single quotes: the hash contains $",
    )
    return parser


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _duration(text: str) -> float:
    from mappings.config import parse_duration

    try:
        value = parse_duration(text)
    except ValueError:
        value = None
    if not isinstance(value, int | float) or value <= 0:
        raise argparse.ArgumentTypeError(f"a duration like 7d, 12h or 30m, got {text!r}")
    return float(value)


def _watch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--watch-config",
        action="store_true",
        help="take on a changed config file by itself (it is always read again on SIGHUP)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (default: $SALON_BRIDGE_CONFIG or ./config.yaml)")


# Read only by the web server: other commands do not need their variables set.
WEB_ONLY_SECTIONS = ("admin", "metrics")


def _load(args: argparse.Namespace, dry_run: bool = False, start_up: bool = False) -> BridgeConfig:
    """The config. `start_up`: a process that serves or works (serve, worker, up) shows its warnings
    once, and needs every secret it uses. Otherwise a command for looking around (events, replay...)
    that stays quiet, may use the webhook secret `up --dry-run` generated, and reads no web-only section."""
    if not start_up:
        _use_dev_secret()
    unused = () if args.command in ("serve", "up") else WEB_ONLY_SECTIONS
    config = load_config(default_config_path(getattr(args, "config", None)), dry_run=dry_run, unused=unused)
    logs.remember_secrets(logs.config_secrets(config))
    if start_up and not os.environ.get(WARNED_VARIABLE):  # `up` already showed them; its processes stay quiet
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return config


def _use_dev_secret() -> Path | None:
    """Without SALONBOOKIT_WEBHOOK_SECRET, the one `up --dry-run` keeps in its data folder, if any."""
    path = data_dir() / "webhook-secret"
    if os.environ.get(SECRET_VARIABLE) or not path.is_file():
        return None
    os.environ[SECRET_VARIABLE] = path.read_text().strip()
    return path


def cmd_check_config(args: argparse.Namespace) -> int:
    path = default_config_path(args.path or args.config_option)
    dev_secret = _use_dev_secret()
    if dev_secret is not None:
        print(f"warning: {SECRET_VARIABLE} is not set: checked with the dry run's secret in {dev_secret}")
    try:
        config = load_config(path)
    except ConfigError as exc:
        for warning in exc.warnings:  # shown with the errors: fixing one run at a time is slow
            print(f"warning: {warning}")
        raise
    for warning in [] if args.strict else config.warnings:
        print(f"warning: {warning}")
    problems = [f"{warning} (an error with --strict)" for warning in config.warnings] if args.strict else []
    for name, spec in config.connectors.items():
        if not spec.dry_run and spec.settings is not None:
            problems += _connector_problems(config, name, args.online)
    if args.online:
        problems += [f"{path}: redis_url: {problem}" for problem in _redis_problems(config)]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    checked = " (destinations and Redis reached)" if args.online else ""
    print(f"{path}: OK ({len(config.connectors)} connectors, {len(config.mappings)} mappings){checked}")
    return 0


def _redis_problems(config: BridgeConfig) -> list[str]:
    """check-config --online: the Redis the bridge would use answers and does not evict (read
    only: nothing is written); its warnings (no persistence, what could not be checked) are printed."""
    from bridge.queue import connect
    from bridge.redis_health import inspect

    url = resolve_redis_url(config)
    try:
        with connect(url) as redis:
            health = inspect(redis, probe=False)
    except RedisError as exc:
        return [f"cannot reach Redis at {_redacted(url)}: {exc}"]
    for warning in health.warnings():
        print(f"warning: Redis at {_redacted(url)}: {warning}")
    return [f"Redis at {_redacted(url)}: {error}" for error in health.errors()]


def cmd_slack_check(args: argparse.Namespace) -> int:
    path = default_config_path(args.path or args.config_option)
    _use_dev_secret()
    config = load_config(path, unused=WEB_ONLY_SECTIONS)
    names = [n for n, spec in config.connectors.items() if spec.cls.type == "slack" and args.connector in (None, n)]
    if not names:
        which = f" named {args.connector!r}" if args.connector else ""
        raise CommandError(f"{path} has no connector of type slack{which}")
    problems = []
    for name in names:
        if config.connectors[name].settings is None:  # a dry-run connector not fully set up yet
            problems += [w.removesuffix(DRY_RUN_ACCEPTED) for w in config.warnings if f": connectors.{name}." in w]
        else:
            problems += _connector_problems(config, name, online=True)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"{path}: Slack OK ({', '.join(names)}: token, scopes and channels checked)")
    return 0


def _connector_problems(config: BridgeConfig, name: str, online: bool) -> list[str]:
    """What the connector's own checks find, offline and (`online`) at the destination."""
    connector = config.connectors[name].build()
    actions = {a.id: a.fields for m in config.mappings for a in m.actions if a.connector == name}
    try:
        found = connector.offline_check(actions) + (connector.online_check(actions) if online else [])
    finally:
        connector.close()
    return [f"{config.path}: connectors.{name}: {problem}" for problem in found]


def cmd_scheduled(args: argparse.Namespace) -> int:
    from bridge.schedules import listing

    with _runtime(args) as rt:
        sends = listing(rt.redis, rt.store, args.booking, args.within, args.status)
        clock = Clock(rt.config.model.timezone)
        if not sends:
            print(
                "no scheduled sends" + (" matching the filters" if args.booking or args.status else " in that period")
            )
        for send in sends:
            who = f" · {send.customer}" if send.customer else ""
            sent = f", sent {clock.show(send.sent_at)}" if send.sent_at and send.status == "sent" else ""
            print(f"{clock.show(send.due)}  {send.status:<9}  {send.kind} {send.code}{who}  {send.action}{sent}")
            if send.detail:
                print(f"    {send.detail[:300]}")
        if not (args.booking or args.status):
            _show_daily(rt, clock)
    return 0


def _show_daily(rt: Runtime, clock: Clock) -> None:
    """The next run of each daily mapping (the morning digest)."""
    from bridge.digest import next_runs

    runs = next_runs(rt)
    if runs:
        print("\ndaily:")
    for mapping, plan in runs:
        daily = mapping.daily
        what = f"{mapping.name} (daily {daily.source}, for each {daily.for_each})" if daily else mapping.name
        if plan is None:
            print(f"  not planned yet  {what}: a worker plans it when it starts on this config")
        else:
            note = f"; {plan.note}" if plan.note else ""
            print(f"  {clock.show(plan.due)}  next  {what}{note}")


def cmd_feed_urls(args: argparse.Namespace) -> int:
    from bridge.feeds import feed_path, feed_token, owners, staff_name

    with _runtime(args) as rt:
        settings = rt.config.model.calendar_feeds
        if settings is None:
            raise CommandError("calendar feeds are off: add `calendar_feeds:` with a `secret` to the config")
        found = owners(rt.config, rt.redis)
        if not found:
            print("no bookings received yet: links appear once the platform has sent a booking")
        base = args.base_url.rstrip("/")
        for tenant, professional in found:
            if professional is None:
                print(f"tenant {tenant}")
                label = "salon (everyone)"
            else:
                label = f"{professional} {staff_name(rt.config, professional, [])}"
            print(f"  {label:<32} {base}{feed_path(feed_token(settings.secret, tenant, professional))}")
        if found and not base:
            print("(add --base-url https://your-host to print whole links)", file=sys.stderr)
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    from werkzeug.security import generate_password_hash

    if sys.stdin.isatty():
        password = getpass.getpass("Admin password: ")
        if password != getpass.getpass("Same password again: "):
            raise CommandError("the two passwords differ; nothing printed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_ADMIN_PASSWORD:
        raise CommandError(f"use at least {MIN_ADMIN_PASSWORD} characters (a few words are easy to remember)")
    print(generate_password_hash(password))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.server import serve

    config = _load(args, start_up=True)
    serve(config, host=args.host, port=args.port, workers=args.workers, threads=args.threads, watch=args.watch_config)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from bridge.reload import ConfigSource
    from bridge.worker import run_worker
    from mappings.config import load_config_text

    config = _load(args, dry_run=args.dry_run, start_up=True)

    def load(text: str, path: str) -> BridgeConfig:
        return load_config_text(text, path, dry_run=args.dry_run, unused=WEB_ONLY_SECTIONS)

    source = ConfigSource(config, load)
    return run_worker(config, burst=args.burst, dry_run=args.dry_run, watch=args.watch_config, source=source)


def cmd_up(args: argparse.Namespace) -> int:
    from bridge.up import Up, UpError, check_port, dev_secret

    try:
        check_port(args.host, args.port)
    except UpError as exc:
        raise CommandError(str(exc)) from None
    data_dir = Path(args.data_dir).resolve()
    if args.dry_run and not os.environ.get(SECRET_VARIABLE):
        os.environ[SECRET_VARIABLE] = dev_secret(data_dir)
        print(f"SALONBOOKIT_WEBHOOK_SECRET is not set: this dry run uses the one in {data_dir / 'webhook-secret'}")
    config = _load(args, dry_run=args.dry_run, start_up=True)
    os.environ[WARNED_VARIABLE] = "1"
    try:
        return Up(config, args.host, args.port, args.workers, data_dir, args.dry_run, args.watch_config).run()
    except UpError as exc:
        raise CommandError(str(exc)) from None


def cmd_reload(args: argparse.Namespace) -> int:
    import signal
    import socket

    from bridge.reload import processes

    with _runtime(args) as rt:
        running = processes(rt.redis)
    here = [p for p in running if p.host == socket.gethostname()]
    if not here:
        raise CommandError("no salon-bridge web or worker process on this machine has reported to Redis lately")
    for process in here:
        try:
            os.kill(process.pid, signal.SIGHUP)
        except ProcessLookupError:
            print(f"{process.role} {process.name}: pid {process.pid} is gone", file=sys.stderr)
            continue
        print(f"asked {process.role} {process.name} (pid {process.pid}) to read {process.config} again")
    print("see `salon-bridge status` for the version each one runs (a worker switches between jobs)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bridge.reload import describe, file_version, processes

    with _runtime(args) as rt:
        running = processes(rt.redis)
    path = default_config_path(getattr(args, "config", None))
    on_disk = file_version(path)
    print(f"config file {path}: version {on_disk}")
    if not running:
        print("no web or worker process has reported lately")
        return 0
    for process in running:
        print(f"  {describe(process)}")
    behind = [p for p in running if on_disk not in (p.version, p.pending)]
    waiting = [p for p in running if p.version != on_disk and p.pending == on_disk]
    if behind:
        print(f"{len(behind)} process(es) not on the file's version (see the rejection above, or the log)")
    elif waiting:
        print(f"all processes have the file's version; {len(waiting)} switch to it before their next job")
    else:
        print("all processes run the file's version")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from bridge.preview import preview, render_text

    _use_dev_secret()
    new = load_config(args.new, unused=WEB_ONLY_SECTIONS)  # ConfigError: its problems, exit 1
    with _runtime(args) as rt:
        result = preview(rt, new, args.since, args.limit)
        clock = Clock(rt.config.model.timezone)
    if args.format == "json":
        print(result.to_json())
        return 0
    if result.events == 0 and not result.daily:
        print(f"no stored events in the period: nothing to compare (try a longer --since than {args.since:g} s)")
        return 0
    print(f"{result.events} stored event(s) run through {rt.config.path} (in force) and {args.new}; nothing sent\n")
    print(render_text(result, clock.show))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from bridge.operations import simulated_context
    from mappings.routing import plan

    with _runtime(args, required=False) as rt:
        daily = rt.config.mapping(args.event)
        if daily is not None and daily.daily is not None:
            return _simulate_daily(rt, daily)
    envelope = read_event(args.event)
    with _runtime(args, required=False) as rt:
        config = rt.config
        print(f"event {envelope.get('id')} ({envelope.get('type')}, tenant {envelope.get('tenant_id')})")
        if rt.reachable:
            context = simulated_context(rt, envelope)
            print(f"entity memory: read from Redis at {_redacted(resolve_redis_url(config))} (read-only)")
        else:
            context = template_context(config.model.timezone, envelope, event_views(envelope))
            print(
                f"entity memory: not used (Redis at {_redacted(resolve_redis_url(config))} does not answer): "
                "booking, order and customer are what this event says alone"
            )
        planned = plan(config, envelope, context)
    scheduled = [m for m in config.mappings_for(envelope["type"], envelope["tenant_id"]) if m.schedule is not None]
    if not planned and not scheduled:
        print("  no mapping handles this event: it would be answered 200 ignored")
    for item in planned:
        _show_planned(config, item, context)
    for mapping in scheduled:
        _show_scheduled(config, mapping, envelope, context)
    return 0


def _simulate_daily(rt: Runtime, mapping: Any) -> int:
    """A daily mapping's next run: when, and what each digest would say with the agenda as it is now."""
    from bridge import digest
    from bridge.schedules import when_text
    from mappings.routing import event_context, skip_reason
    from mappings.schedule import next_occurrence

    plans = {m.name: p for m, p in digest.next_runs(rt)} if rt.reachable else {}
    plan = plans.get(mapping.name)
    run = next_occurrence(mapping.daily, rt.planner.zone, time.time())
    due, start = (plan.due, plan.start or plan.due) if plan is not None else (run.due, run.start)
    day = datetime.fromtimestamp(start, rt.planner.zone).date()
    planned = "planned" if plan is not None else "not planned yet (a worker plans it when it starts)"
    print(f"{mapping.name} (daily {mapping.daily.source}, for each {mapping.daily.for_each})")
    print(f"next run: {when_text(due, rt.planner.zone)}, {planned}")
    if not rt.reachable:
        print(f"the agenda is not read: Redis at {_redacted(resolve_redis_url(rt.config))} does not answer")
        return 0
    targets = digest.targets(rt, mapping, day)
    if not targets:
        print("  no digests: no booking received yet (tenants come from the agenda index)")
    for tenant, professional, bookings in targets:
        envelope = digest.digest_envelope(mapping, start, day, tenant, professional, bookings)
        context = event_context(rt.config, envelope, {})
        whose = f"professional {professional}" if professional is not None else "the salon"
        print(f"\n{whose} (tenant {tenant}), {len(bookings)} booking(s) on {day} as the agenda has them now:")
        reason = skip_reason(mapping, context)
        for spec in mapping.actions:
            _show_planned(rt.config, PlannedAction(spec, reason), context)
    return 0


def _show_scheduled(config: BridgeConfig, mapping: Any, envelope: dict[str, Any], context: dict[str, Any]) -> None:
    """When a scheduled mapping would send (judged now, on memory as it is)."""
    from bridge.schedules import decide_for, when_text
    from bridge.state import event_moment

    zone = ZoneInfo(config.model.timezone)
    created = event_moment(envelope)
    decision = decide_for(mapping, context.get("booking"), created, envelope["type"], zone, time.time())
    source = mapping.schedule.source if mapping.schedule else ""
    print(f"\n- {mapping.name} (scheduled: {source})")
    if decision.sends and decision.due is not None:
        note = f"; {decision.note}" if decision.note else ""
        print(f"  would send at {when_text(decision.due, zone)}{note}, if its condition holds then:")
        for spec in mapping.actions:
            print(f"    {spec.id} -> {spec.connector} ({config.connectors[spec.connector].cls.type}) {spec.action}")
    else:
        print(f"  would not send ({decision.status}): {decision.reason}")


def _show_planned(config: BridgeConfig, item: PlannedAction, context: dict[str, Any]) -> None:
    from mappings.routing import render_action
    from mappings.templates import MissingDataError, RenderError

    spec = item.spec
    print(f"\n- {spec.id} -> {spec.connector} ({config.connectors[spec.connector].cls.type}) {spec.action}")
    if item.skip_reason:
        print(f"  skipped: {item.skip_reason}")
        return
    try:
        fields = render_action(spec, context)
    except MissingDataError as exc:
        wait = config.model.retry.wait_for_missing_data
        print(f"  would wait for earlier events, retrying for {wait:g} s, then fail: {exc}")
        return
    except RenderError as exc:
        print(f"  would fail permanently: {exc}")
        return
    print(_indent(json.dumps(fields, ensure_ascii=False, indent=2, default=str)))


@contextmanager
def _runtime(args: argparse.Namespace, required: bool = True) -> Iterator[Runtime]:
    """The event log's Runtime (`required`: fail when Redis does not answer, else `rt.reachable`
    says). When `up` is stopped but left its data in its folder, its embedded Redis is started for
    this command alone (and stopped after), so the command sees that data."""
    config = _load(args)
    with ExitStack() as stack:
        folder = embedded_data(config)
        if folder is not None and not _answers(folder / "redis.sock"):
            stack.enter_context(_briefly_started(folder, args.command))
        rt = Runtime.from_config(config)
        stack.callback(rt.close)
        try:
            rt.redis.ping()
        except RedisError as exc:
            if required:
                raise CommandError(f"cannot reach Redis at {_redacted(resolve_redis_url(config))}: {exc}") from None
            rt.reachable = False
        yield rt


def _answers(socket: Path) -> bool:
    try:
        with Redis(unix_socket_path=str(socket), socket_connect_timeout=1) as probe:
            return bool(probe.ping())
    except (RedisError, OSError):
        return False


@contextmanager
def _briefly_started(folder: Path, command: str) -> Iterator[None]:
    from bridge.up import EmbeddedRedis, UpError

    later = " (replayed actions run when it starts)" if command == "replay" else ""
    print(
        f"salon-bridge up is not running: using its data in {folder.resolve()}, "
        f"with its Redis started for this command only{later}",
        file=sys.stderr,
    )
    embedded = EmbeddedRedis(folder.resolve())
    try:
        embedded.start()
    except UpError as exc:
        raise CommandError(str(exc)) from None
    try:
        yield
    finally:
        embedded.stop()


def cmd_events(args: argparse.Namespace) -> int:
    with _runtime(args) as rt:
        return _show_events(rt, args)


def _show_events(rt: Runtime, args: argparse.Namespace) -> int:
    from bridge.operations import DATA_LOST, matching_events

    records = matching_events(rt, args.event_type, args.status, args.limit)
    if not records:
        print("no events" + (" matching the filters" if args.event_type or args.status else " yet"))
    clock = Clock(rt.config.model.timezone)
    for record in records:
        label = _label(record.envelope)
        print(f"{clock.show(record.received_at)}  {record.id}  {record.type}  tenant={record.tenant_id}{label}")
        if record.data_lost:
            print(f"    {record.key}: {DATA_LOST}")
        if not record.actions:
            print("    (no actions yet: queued, or nothing to do)")
        for action_id, state in sorted(record.actions.items()):
            print(f"    {action_id}: {describe_state(state, clock)}")
            if args.show:
                _show_fields(rt, state)
    return 0


def _show_fields(rt: Runtime, state: ActionState) -> None:
    """The action's rendered fields as an owner reads them: an e-mail's bodies as its text part."""
    if state.rendered is None:
        print("        (nothing rendered)")
        return
    fields = logs.hide_secret_fields(state.rendered)
    spec = rt.config.connectors.get(state.connector)
    if spec is not None and spec.cls.type == "email":
        fields = _email_as_read(fields)
    for name, value in fields.items():
        if isinstance(value, str) and "\n" in value.strip():
            print(f"        {name}:")
            print("\n".join(f"          {line}".rstrip() for line in value.strip().splitlines()))
        else:
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            print(f"        {name}: {shown}")


def _email_as_read(fields: dict[str, Any]) -> dict[str, Any]:
    from connectors.email import html_to_text

    bodies = ("text", "text_template", "html", "html_template")
    text = fields.get("text") or fields.get("text_template")
    if not text:  # the connector makes the text part from the HTML, as here
        text = html_to_text(str(fields.get("html") or fields.get("html_template") or ""))
    shown = {name: value for name, value in fields.items() if name not in bodies and value not in (None, [])}
    for name in ("to", "cc", "bcc"):  # one address a line in the message, one list here
        if isinstance(shown.get(name), list) and all(isinstance(v, str) for v in shown[name]):
            shown[name] = ", ".join(shown[name])
    return shown | {"text part": str(text)}


def cmd_dead_letters(args: argparse.Namespace) -> int:
    with _runtime(args) as rt:
        return _show_dead_letters(rt, args.limit)


def _show_dead_letters(rt: Runtime, limit: int) -> int:
    from bridge.operations import DATA_LOST

    letters = rt.store.dead_letters(limit)
    if not letters:
        print("no dead letters")
    clock = Clock(rt.config.model.timezone)
    for record, action_id in letters:
        state = record.actions[action_id]
        head = f"{record.id}  {record.type}{_label(record.envelope)}"
        print(f"{clock.show(state.updated_at)}  {f'{record.key}  {DATA_LOST}' if record.data_lost else head}")
        print(f"    {action_id} ({state.connector}), {state.attempts} attempt(s): {state.last_error}")
        if not record.data_lost:
            print(f"    replay: salon-bridge replay {record.id} --action {action_id}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from bridge.operations import ReplayError, replay

    with _runtime(args) as rt:
        try:
            done = replay(rt, args.event_id, args.action, args.force)
        except ReplayError as exc:
            raise CommandError(str(exc)) from None
    for action_id in done.action_ids:
        print(f"queued again: {done.event_id} {action_id}")
    for action_id, reason in done.still_skipped.items():
        print(f"still skipped: {done.event_id} {action_id} ({reason})")
    return 0


def cmd_send_sample(args: argparse.Namespace) -> int:
    from bridge.samples import post_sample

    _use_dev_secret()
    secret = args.secret or os.environ.get(SECRET_VARIABLE)
    if not secret:
        try:
            secret = _load(args).webhook.secrets[0]
        except ConfigError as exc:
            raise CommandError(
                "no signing secret: pass --secret, set SALONBOOKIT_WEBHOOK_SECRET, or fix the config "
                f"({exc.problems[0]})"
            ) from None
    failures = 0
    types = list(SEND_ORDER) if args.event_type == "all" else [args.event_type]
    start = datetime.now(UTC) - timedelta(seconds=len(types))
    for position, event_type in enumerate(types):
        created = start + timedelta(seconds=position + 1)  # one second apart: the newest is the last
        try:
            event_id, status, answer = post_sample(args.url, event_type, secret, args.tenant, created)
        except OSError as exc:
            raise CommandError(f"cannot reach {args.url}: {exc}") from None
        failures += not 200 <= status < 300
        print(f"{event_type:<18} {event_id}  -> {status} {answer}")
    return 1 if failures else 0


def read_event(name: str) -> dict[str, Any]:
    """A platform event from a JSON file, or the shipped sample of an event type."""
    path = Path(name)
    if not path.exists():
        sample = SAMPLES_DIR / f"{name}.json"
        if not sample.exists():
            raise CommandError(f"{name}: no such file, and not a known event type ({', '.join(sample_types())})")
        path = sample
    try:
        event: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: cannot read the event: {exc}") from None
    from bridge.ingest import envelope_problem

    problem = envelope_problem(event)
    if problem:
        raise CommandError(f"{path}: not a platform event: {problem}")
    return event


def describe_state(state: ActionState, clock: Clock) -> str:
    text = f"{state.status}, {state.attempts} attempt(s)"
    version = next((h["config"] for h in reversed(state.history) if h.get("config")), "")
    if version:  # the config the last attempt ran under (bridge.reload)
        text += f" on config {version}"
    if state.next_attempt_at:
        text += f", next at {clock.show(state.next_attempt_at)}"
    if state.last_error:
        text += f", last error: {state.last_error}"
    elif state.detail:
        text += f" ({state.detail[:200]})"
    if state.delivery:  # what WhatsApp or Twilio said after accepting it (bridge/deliveries.py)
        text += "; delivery: " + ", ".join(f"{d['status']} {clock.show(d['at'])}" for d in state.delivery)
    return text


class Clock:
    """Shows timestamps in the salon's time zone."""

    def __init__(self, zone: str):
        self.zone = ZoneInfo(zone)

    def show(self, timestamp: float) -> str:
        return datetime.fromtimestamp(timestamp, self.zone).strftime("%Y-%m-%d %H:%M:%S")


def _redacted(url: str) -> str:
    """A Redis URL without its password."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _label(envelope: dict[str, Any]) -> str:
    """`  booking ABC123XY · Juan Pérez`, after an event's id and type ("" when it names no entity)."""
    label = subject_of(envelope).label
    return f"  {label}" if label else ""


if __name__ == "__main__":
    sys.exit(main())
