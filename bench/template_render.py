"""What the template limits cost on a normal render: the shipped booking e-mail and a Slack-style
message with a loop, rendered by salon-bridge's TemplateEngine and by a baseline: Jinja's plain
immutable sandbox with the same filters, or another version's mappings/templates.py.

    .venv/bin/python bench/template_render.py [--seconds 2] [--baseline OLD_TEMPLATES_PY]
    # e.g. git show main:mappings/templates.py > /tmp/old_templates.py

Rounds of the two alternate (so that load on the machine hits both alike); prints microseconds
per render (median of the rounds) and the overhead in percent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from the repository

from jinja2 import StrictUndefined  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402
from markupsafe import Markup  # noqa: E402

from bench.common import ROOT, table  # noqa: E402
from mappings.templates import TemplateEngine, _Clock, money  # noqa: E402

SLACK = (
    "*{{ booking.cliente.nombre }}* · {{ booking.fecha | longdate }} {{ booking.hora_inicio }}\n"
    "{% for s in booking.servicios %}• {{ s.nombre }} ({{ s.duracion_minutos }} min) {{ s.precio | money }}\n"
    "{% endfor %}Total: {{ booking.servicios | sum(attribute='precio') | money }}"
    "{% if booking.notas %} · {{ booking.notas | truncate(80) }}{% endif %}"
)


def _context() -> dict[str, Any]:
    envelope = json.loads((ROOT / "bridge" / "samples" / "booking.created.json").read_text(encoding="utf-8"))
    booking = envelope["data"]["booking"]
    booking["servicios"] = booking.get("servicios", []) * 4  # a loop of some length
    return {"event": envelope, "data": envelope["data"], "type": envelope["type"], "booking": booking}


def _plain(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
    clock = _Clock(TemplateEngine("Europe/Madrid").zone)
    env.filters.update(money=money, date=clock.date, time=clock.time, datetime=clock.datetime, longdate=clock.longdate)
    env.filters["raw"] = Markup if autoescape else str
    return env


def _baseline(path: str | None) -> Callable[[str, str], Callable[[dict[str, Any]], str]]:
    """Compiles a template the old way: another version's engine, else the plain sandbox."""
    if path is None:
        return lambda source, escaping: _plain(escaping == "html").from_string(source).render
    spec = importlib.util.spec_from_file_location("old_templates", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_templates"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    engine = module.TemplateEngine("Europe/Madrid")
    return lambda source, escaping: engine.compile(source, "old", escaping).render


def _round(render: Callable[[], str], seconds: float) -> float:
    """Microseconds per render over about `seconds`."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(50):
            render()
        count += 50
    return (time.perf_counter() - started) / count * 1e6


def _compare(before: Callable[[], str], after: Callable[[], str], seconds: float) -> tuple[float, float]:
    rounds = [(_round(before, seconds / 10), _round(after, seconds / 10)) for _ in range(10)]
    return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per case and engine")
    parser.add_argument("--baseline", help="another version's mappings/templates.py to compare with")
    args = parser.parse_args()
    old = _baseline(args.baseline)
    context = _context()
    email = (ROOT / "templates" / "emails" / "booking_created.html").read_text(encoding="utf-8")
    engine = TemplateEngine("Europe/Madrid")
    rows = []
    for name, source, escaping in (("e-mail (html)", email, "html"), ("slack message", SLACK, "none")):
        limited = engine.compile(source, name, escaping)
        baseline = old(source, escaping)
        assert limited.render(context) == baseline(context), name
        before, after = _compare(
            lambda baseline=baseline: baseline(context), lambda limited=limited: limited.render(context), args.seconds
        )
        rows.append([name, f"{before:.1f}", f"{after:.1f}", f"{(after / before - 1) * 100:+.0f}%"])
    label = "baseline µs" if args.baseline else "plain sandbox µs"
    print(table(["template", label, "with limits µs", "overhead"], rows))


if __name__ == "__main__":
    main()
