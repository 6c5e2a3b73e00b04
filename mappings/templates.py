"""Sandboxed Jinja templates for mapping fields: compiled at config load, rendered in the worker."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markupsafe import Markup

MAX_OUTPUT_CHARS = 100_000  # per rendered field; a template cannot produce more
MAX_POWER_EXPONENT = 100

_MONTHS_ES = ("enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre").split()
_WEEKDAYS_ES = "lunes martes miércoles jueves viernes sábado domingo".split()
_CURRENCY_SYMBOLS = {"EUR": "€", "USD": "US$", "GBP": "£", "MXN": "MX$", "ARS": "AR$", "COP": "COL$"}


class TemplateCompileError(Exception):
    """A template in the config does not compile."""


class RenderError(Exception):
    """A template failed while rendering: a missing field, a sandbox violation, oversized output."""


class MissingDataError(RenderError):
    """A template read a field of a remembered entity that no event received so far carried."""


class _MissingEntityField(UndefinedError):
    pass


class EntityView(dict[str, Any]):
    """A remembered booking, order or customer (or a nested part of one), as templates see it.
    Knows what it is, so that reading a field never seen says which entity and which event is missing."""

    def __init__(self, data: dict[str, Any], kind: str, entity_id: str, path: str = ""):
        super().__init__(
            (k, EntityView(v, kind, entity_id, f"{path}{k}.") if isinstance(v, dict) else v) for k, v in data.items()
        )
        self.kind = kind
        self.entity_id = entity_id
        self.path = path

    def missing(self, name: str) -> str:
        return f"{self.kind} {self.entity_id}: {self.path}{name} unknown ({self.kind}.created not received)"


class _Undefined(StrictUndefined):
    """StrictUndefined that names the entity and the missing event when a remembered view lacks a field."""

    __slots__ = ()

    def __init__(self, hint: str | None = None, obj: Any = missing, name: str | None = None, exc: Any = UndefinedError):
        if isinstance(obj, EntityView) and hint is None and isinstance(name, str):
            hint, exc = obj.missing(name), _MissingEntityField
        super().__init__(hint, obj, name, exc)


class SlackRaw(str):
    """A value the template author deliberately inserts into Slack text without escaping."""


def slack_escape(value: str) -> str:
    """Slack's own rule: only &, < and > are control characters in message text."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _finalize_slack(value: Any) -> Any:
    if isinstance(value, SlackRaw):
        return value
    return slack_escape(str(value))


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus limits on the operators that can allocate without bound."""

    intercepted_binops = frozenset(["*", "**"])

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Event data first: `order.items` is the order's items, not the dict method of that name.
        if isinstance(obj, dict):
            return self.getitem(obj, attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                    if len(seq) * count > MAX_OUTPUT_CHARS:
                        raise SecurityError("repetition would exceed the output limit")
            return operator.mul(left, right)
        if op == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_POWER_EXPONENT:
                raise SecurityError("exponent too large")
            return operator.pow(left, right)
        return super().call_binop(context, op, left, right)


def _to_decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"money: {value!r} is not a number") from exc


def money(value: Any, currency: str | None = "EUR") -> str:
    """25.5 -> '25,50 €' (Spanish grouping: 1.234,50)."""
    amount = _to_decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    sign = "-" if amount < 0 else ""
    whole, _, cents = f"{abs(amount):.2f}".partition(".")
    groups: list[str] = []
    while len(whole) > 3:
        groups.insert(0, whole[-3:])
        whole = whole[:-3]
    groups.insert(0, whole)
    code = (currency or "EUR").upper()
    return f"{sign}{'.'.join(groups)},{cents} {_CURRENCY_SYMBOLS.get(code, code)}"


class _Clock:
    """Date and time filters in the salon's zone. Dates like '2024-01-25' and times like '10:30'
    are already wall-clock; ISO timestamps with an offset are converted to the zone."""

    def __init__(self, zone: ZoneInfo):
        self.zone = zone

    def parse(self, value: Any) -> datetime | date | time:
        if isinstance(value, (datetime, date, time)):
            return value
        text = str(value).strip()
        if len(text) <= 5 and ":" in text:
            return time.fromisoformat(text)
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            return moment.replace(tzinfo=self.zone)
        return moment.astimezone(self.zone)

    def date(self, value: Any, fmt: str = "%d/%m/%Y") -> str:
        return self.parse(value).strftime(fmt)

    def time(self, value: Any, fmt: str = "%H:%M") -> str:
        return self.parse(value).strftime(fmt)

    def datetime(self, value: Any, fmt: str = "%d/%m/%Y %H:%M") -> str:
        return self.parse(value).strftime(fmt)

    def longdate(self, value: Any) -> str:
        """'jueves, 25 de enero de 2024'."""
        day = self.parse(value)
        if isinstance(day, time):
            raise ValueError(f"longdate: {value!r} is a time, not a date")
        return f"{_WEEKDAYS_ES[day.weekday()]}, {day.day} de {_MONTHS_ES[day.month - 1]} de {day.year}"


@dataclass(frozen=True)
class CompiledTemplate:
    """One compiled string template and where it came from (for error messages)."""

    where: str
    source: str
    render_fn: Callable[[dict[str, Any]], str]

    def render(self, context: dict[str, Any]) -> str:
        try:
            return self.render_fn(context)
        except _MissingEntityField as exc:
            raise MissingDataError(f"{self.where}: {exc}") from exc
        except UndefinedError as exc:
            raise RenderError(f"{self.where}: the template reads a field the event does not have ({exc})") from exc
        except SecurityError as exc:
            raise RenderError(f"{self.where}: the template was stopped by the sandbox ({exc})") from exc
        except (TemplateError, ValueError, TypeError, ArithmeticError, KeyError, IndexError) as exc:
            raise RenderError(f"{self.where}: the template failed: {exc}") from exc


class TemplateEngine:
    """One sandboxed environment per escaping mode, sharing the filters of a config's time zone."""

    def __init__(self, timezone: str = "UTC"):
        self.zone = ZoneInfo(timezone)
        clock = _Clock(self.zone)
        filters: dict[str, Callable[..., Any]] = {
            "money": money,
            "date": clock.date,
            "time": clock.time,
            "datetime": clock.datetime,
            "longdate": clock.longdate,
        }
        self._envs: dict[str, _BoundedSandbox] = {
            "none": _BoundedSandbox(undefined=_Undefined),
            "slack": _BoundedSandbox(undefined=_Undefined, finalize=_finalize_slack),
            "html": _BoundedSandbox(undefined=_Undefined, autoescape=True),
        }
        for _name, env in self._envs.items():
            env.filters.update(filters)
        self._envs["none"].filters["raw"] = str
        self._envs["slack"].filters["raw"] = SlackRaw
        self._envs["slack"].filters["slack_escape"] = slack_escape
        self._envs["html"].filters["raw"] = Markup

    def compile(self, source: str, where: str, escaping: str = "none") -> CompiledTemplate:
        env = self._envs[escaping]
        try:
            template = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateCompileError(
                f"template does not compile: {exc.message} (template line {exc.lineno})"
            ) from exc

        def render(context: dict[str, Any]) -> str:
            size = 0
            parts = []
            for chunk in template.generate(context):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise SecurityError(f"output longer than {MAX_OUTPUT_CHARS} characters")
                parts.append(chunk)
            return "".join(parts)

        return CompiledTemplate(where, source, render)

    def compile_condition(self, source: str, where: str) -> CompiledTemplate:
        """A `when:` expression; renders to 'true' or 'false'."""
        env = self._envs["none"]
        try:
            env.parse("{{ " + source + " }}")
            expression = env.compile_expression(source, undefined_to_none=False)
        except TemplateSyntaxError as exc:
            raise TemplateCompileError(f"condition does not compile: {exc.message}") from exc

        def evaluate(context: dict[str, Any]) -> str:
            return "true" if expression(**context) else "false"

        return CompiledTemplate(where, source, evaluate)


def is_template(source: str) -> bool:
    """Whether a string holds Jinja syntax (plain strings are kept as they are, cheaply)."""
    return "{{" in source or "{%" in source or "{#" in source


def compile_structure(engine: TemplateEngine, value: Any, where: str, escaping: str = "none") -> Any:
    """Compile every string leaf of a YAML structure that holds template syntax."""
    if isinstance(value, str):
        return engine.compile(value, where, escaping) if is_template(value) else value
    if isinstance(value, dict):
        return {k: compile_structure(engine, v, f"{where}.{k}", escaping) for k, v in value.items()}
    if isinstance(value, list):
        return [compile_structure(engine, v, f"{where}[{i}]", escaping) for i, v in enumerate(value)]
    return value


def render_structure(value: Any, context: dict[str, Any]) -> Any:
    """Render what compile_structure compiled; non-template leaves pass through."""
    if isinstance(value, CompiledTemplate):
        return value.render(context)
    if isinstance(value, dict):
        return {k: render_structure(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_structure(v, context) for v in value]
    return value
