"""The `salon-bridge` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mappings.config import BridgeConfig, ConfigError, default_config_path, load_config

EPILOG_CONFIG = "The config path comes from --config, else $SALON_BRIDGE_CONFIG, else ./config.yaml."


class CommandError(Exception):
    """A failure to report as one clear line (exit status 1)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.handler(args)
        return result
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    except CommandError as exc:
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
        "Run the webhook endpoint under gunicorn (production server).",
        "  salon-bridge serve --port 8000\n  salon-bridge serve --config /etc/salon-bridge/config.yaml --workers 4",
    )
    _config_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, default=2, help="web processes (default 2)")
    serve.add_argument("--threads", type=int, default=4, help="threads per web process (default 4)")

    worker = command(
        "worker",
        cmd_worker,
        "Run a worker that processes accepted events (with the retry scheduler).",
        "  salon-bridge worker\n  salon-bridge worker --burst      # drain the queue, then exit",
    )
    _config_option(worker)
    worker.add_argument("--burst", action="store_true", help="process what is queued, then exit")
    worker.add_argument("--dry-run", action="store_true", help="render and record actions, send nothing")

    check = command(
        "check-config",
        cmd_check_config,
        "Validate a config file; exit 0 when valid, 1 listing every problem.",
        "  salon-bridge check-config\n  salon-bridge check-config staging.yaml",
    )
    check.add_argument("path", nargs="?", help="config file (default: as for --config)")
    check.add_argument("--config", dest="config_option", help=argparse.SUPPRESS)

    simulate = command(
        "simulate",
        cmd_simulate,
        "Show the actions an event would trigger, rendered; sends nothing.",
        "  salon-bridge simulate my-event.json\n  salon-bridge simulate booking.created   # a shipped sample",
    )
    _config_option(simulate)
    simulate.add_argument("event", help="a JSON file with a platform event, or an event type for the shipped sample")
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (default: $SALON_BRIDGE_CONFIG or ./config.yaml)")


def _load(args: argparse.Namespace) -> BridgeConfig:
    return load_config(default_config_path(getattr(args, "config", None)))


def cmd_check_config(args: argparse.Namespace) -> int:
    path = default_config_path(args.path or args.config_option)
    config = load_config(path)
    print(f"{path}: OK ({len(config.connectors)} connectors, {len(config.mappings)} mappings)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.server import serve

    config = _load(args)
    serve(config, host=args.host, port=args.port, workers=args.workers, threads=args.threads)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from bridge.worker import run_worker

    config = _load(args)
    return run_worker(config, burst=args.burst, dry_run=args.dry_run)


def cmd_simulate(args: argparse.Namespace) -> int:
    from bridge.jobs import template_context
    from bridge.state import event_views
    from mappings.routing import plan, render_action
    from mappings.templates import RenderError

    config = _load(args)
    envelope = read_event(args.event)
    print(f"event {envelope.get('id')} ({envelope.get('type')}, tenant {envelope.get('tenant_id')})")
    context = template_context(envelope, event_views(envelope))
    planned = plan(config, envelope, context)
    if not planned:
        print("  no mapping handles this event: it would be answered 200 ignored")
    for item in planned:
        spec = item.spec
        print(f"\n- {spec.id} -> {spec.connector} ({config.connectors[spec.connector].cls.type}) {spec.action}")
        if item.skip_reason:
            print(f"  skipped: {item.skip_reason}")
            continue
        try:
            fields = render_action(spec, context)
        except RenderError as exc:
            print(f"  would fail permanently: {exc}")
            continue
        print(_indent(json.dumps(fields, ensure_ascii=False, indent=2, default=str)))
    return 0


def read_event(name: str) -> dict[str, Any]:
    """A platform event from a JSON file, or the shipped sample of an event type."""
    path = Path(name)
    if not path.exists():
        sample = Path(__file__).parent / "samples" / f"{name}.json"
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


def sample_types() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "samples").glob("*.json"))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
