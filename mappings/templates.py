"""Sandboxed Jinja templates for mapping fields: compiled at config load, rendered in the worker."""

from __future__ import annotations

import functools
import inspect
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from time import monotonic
from typing import Any, cast
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import missing
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

import connectors.base
from connectors.base import is_template, wall_clock

MAX_OUTPUT_CHARS = 100_000  # per rendered field; a template cannot produce more
# Any string or sequence a template builds on the way (characters or items): above the output cap,
# so that a whole event field (bodies are at most 1 MB) can still be trimmed, split or sliced.
MAX_VALUE_SIZE = 1_000_000
MAX_POWER_EXPONENT = 100
MAX_INT_BITS = 100_000  # about 30,000 digits: integer arithmetic beyond this is refused
MAX_JSON_INDENT = 8
DEFAULT_RENDER_TIMEOUT = 2.0  # seconds per action, all its templates together (templates.render_timeout)

_MONTHS_ES = ("enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre").split()
_WEEKDAYS_ES = "lunes martes miércoles jueves viernes sábado domingo".split()
_CURRENCY_SYMBOLS = {"EUR": "€", "USD": "US$", "GBP": "£", "MXN": "MX$", "ARS": "AR$", "COP": "COL$"}


class TemplateCompileError(Exception):
    """A template in the config does not compile; `lineno`: the line in the template, when known."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message)
        self.lineno = lineno


class RenderError(Exception):
    """A template failed while rendering: a missing field, a sandbox violation, oversized output."""


class MissingDataError(RenderError, connectors.base.MissingDataError):
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


def undefined(hint: str) -> Any:
    """A value templates see as undefined (`is defined` is false) whose use fails with `hint`."""
    return _Undefined(hint)


class SlackRaw(str):
    """A value the template author deliberately inserts into Slack text without escaping."""


def slack_escape(value: str) -> str:
    """Slack's own rule: only &, < and > are control characters in message text."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _finalize_slack(value: Any) -> Any:
    if isinstance(value, SlackRaw):
        return value
    return slack_escape(str(value))


class TemplateLimitError(SecurityError):
    """A template went over a render limit (time or size); the message says which, in words."""


# (monotonic deadline, the limit in seconds) of the render in progress in this thread or task.
_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("template_deadline", default=None)


@contextmanager
def render_deadline(seconds: float) -> Iterator[None]:
    """Templates rendered inside share one time limit; a deadline already running is never extended."""
    current = _DEADLINE.get()
    deadline = monotonic() + seconds
    if current is not None and current[0] <= deadline:
        yield
        return
    token = _DEADLINE.set((deadline, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _check_time() -> None:
    current = _DEADLINE.get()
    if current is not None and monotonic() > current[0]:
        raise TemplateLimitError(
            f"it ran longer than its limit of {current[1]:g} s (templates.render_timeout); "
            "is a loop much larger than intended?"
        )


def _refuse_size(size: int, what: str) -> None:
    if size > MAX_VALUE_SIZE:
        raise TemplateLimitError(f"{what} would be {size:,} characters or items long; the limit is {MAX_VALUE_SIZE:,}")


def _checked(value: Any, what: str) -> Any:
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        _refuse_size(len(value), what)
    return value


def _int(value: Any) -> int:
    """The integer an argument stands for, or 0 when it is none (the real call then says what is wrong)."""
    return value if isinstance(value, int) else 0


def _bounded_list(items: Iterable[Any], what: str) -> list[Any]:
    """Materialise an iterable a template passes on, refusing one too long before it fills memory."""
    if isinstance(items, (list, tuple, str, dict)):
        return list(items)
    taken: list[Any] = []
    for item in items:
        if len(taken) >= MAX_VALUE_SIZE:
            _refuse_size(len(taken) + 1, what)
        taken.append(item)
    return taken


_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _printf_size(text: str, args: Any) -> int:
    """An upper bound of the padding `text % args` asks for: its widths and precisions, added up."""
    padding = 0
    starred = sum(_int(v) for v in (args if isinstance(args, tuple) else (args,)))
    for width, precision in _PRINTF_FIELD.findall(text):
        for number in (width, precision):
            padding += starred if number == "*" else int(number or 0)
    return len(text) + padding


def _spec_size(spec: str) -> int:
    """An upper bound of the padding a str.format spec like '>20' or '.3f' asks for."""
    return max((int(number) for number in _DIGITS.findall(spec)), default=0)


# Estimators of what a call would build, from its arguments by name (as the function's signature
# binds them, so `center(width=...)` and `center(...)` are seen alike), before it runs: the calls
# whose result can be far larger than what goes in (padding widths, repetitions, separators).
Arguments = dict[str, Any]


def _padded(text: Any, a: Arguments) -> int:
    return max(len(str(text)), _int(a.get("width")))


def _tabs_expanded(text: Any, a: Arguments) -> int:
    text = str(text)
    return len(text) + text.count("\t") * _int(a.get("tabsize"))


def _replaced(text: Any, a: Arguments) -> int:
    text, old, new, count = str(text), str(a.get("old", "")), str(a.get("new", "")), a.get("count")
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _joined(separator: str, items: list[Any]) -> int:
    return len(separator) * max(len(items) - 1, 0) + sum(len(str(item)) for item in items)


def _translated(text: Any, a: Arguments) -> int:
    table = a.get("table")
    values = table.values() if isinstance(table, dict) else ()
    return len(str(text)) * max([1, *(len(v) for v in values if isinstance(v, str))])


def _indented(text: Any, a: Arguments) -> int:
    text, width = str(text), a.get("width")
    indent = len(width) if isinstance(width, str) else _int(width)
    return len(text) + indent * (text.count("\n") + 1)


def _wrapped(text: Any, a: Arguments) -> int:
    wrapstring = a.get("wrapstring")
    return len(str(text)) * (1 + (len(wrapstring) if isinstance(wrapstring, str) else 1))


def _counted(value: Any, a: Arguments) -> int:
    return _int(a.get("linecount", a.get("slices")))


def _formatted(text: Any, a: Arguments) -> int:
    return _printf_size(str(text), a.get("args") or a.get("kwargs"))


def _json_indented(value: Any, a: Arguments) -> int:
    return MAX_VALUE_SIZE + 1 if _int(a.get("indent")) > MAX_JSON_INDENT else 0


def _lorem(value: Any, a: Arguments) -> int:
    return _int(a.get("n")) * _int(a.get("max")) * 12  # words of at most about 12 characters


_STR_METHOD_SIZES: dict[str, Callable[[Any, Arguments], int]] = {
    "center": _padded,
    "ljust": _padded,
    "rjust": _padded,
    "zfill": _padded,
    "expandtabs": _tabs_expanded,
    "replace": _replaced,
    "translate": _translated,
}
_FILTER_SIZES: dict[str, Callable[[Any, Arguments], int]] = {
    "center": _padded,
    "indent": _indented,
    "wordwrap": _wrapped,
    "format": _formatted,
    "replace": _replaced,
    "batch": _counted,
    "slice": _counted,
    "tojson": _json_indented,
}
_PASSED = ("context", "eval_ctx", "environment")


def _bind(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments | None:
    """A call's arguments by parameter name, defaults included; None when they do not fit (the
    call itself will then say what is wrong)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return {name: value for name, value in bound.arguments.items() if name not in _PASSED}


def _filter_check(
    func: Callable[..., Any], estimate: Callable[[Any, Arguments], int], what: str
) -> Callable[..., None]:
    """Checks a filter's arguments with `estimate`: (the filtered value, the other arguments by name)."""
    signature = inspect.signature(func)
    first = next(iter(signature.parameters), "")
    # Filters marked pass_context/... get that object first; Jinja's async variants do not show it.
    drop = 1 if getattr(func, "jinja_pass_arg", None) is not None and first not in _PASSED else 0

    def check(*args: Any, **kwargs: Any) -> None:
        arguments = _bind(signature, args[drop:], kwargs)
        if arguments:
            value, *_ = arguments.values()
            _refuse_size(estimate(value, arguments), what)

    return check


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter with the time check, a size estimate before it runs (when it has one) and a size
    check after."""
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    what = f"the result of the {name} filter"
    if name == "join":
        return _guard_join(func, skip, what)
    if name == "sum":
        return _guard_sum(func)
    estimate = _FILTER_SIZES.get(name)
    check = _filter_check(func, estimate, what) if estimate is not None else None

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        if check is not None:
            check(*args, **kwargs)
        return _checked(func(*args, **kwargs), what)

    return guarded


def _guard_join(func: Callable[..., Any], skip: int, what: str) -> Callable[..., Any]:
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        if len(args) > skip:
            items = _bounded_list(args[skip], what)
            separator = args[skip + 1] if len(args) > skip + 1 else kwargs.get("d", "")
            _refuse_size(_joined(str(separator), items), what)
            args = (*args[:skip], items, *args[skip + 1 :])
        return _checked(func(*args, **kwargs), what)

    return guarded


def _guard_sum(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        start = kwargs.get("start", args[3] if len(args) > 3 else 0)
        return func(*args, **kwargs) if isinstance(start, (int, float)) else _sum(*args, **kwargs)

    return guarded


def _sum(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    """The sum filter, step by step: adding lists or strings copies the total at each step."""
    pick = make_attrgetter(environment, attribute) if attribute is not None else (lambda item: item)
    total = start
    for item in iterable:
        _check_time()
        total = _checked(total + pick(item), "the result of the sum filter")
    return total


def _guard_global(name: str, func: Callable[..., Any], estimate: Callable[[Any, Arguments], int]) -> Callable[..., Any]:
    signature = inspect.signature(func)

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        arguments = _bind(signature, args, kwargs)
        if arguments is not None:
            _refuse_size(estimate(None, arguments), f"the result of {name}()")
        return func(*args, **kwargs)

    return guarded


class _SizedFormatting:
    """str.format with the padding and precision its fields ask for bounded, added up."""

    _size = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._size = len(format_string)
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        _refuse_size(self._size + _spec_size(format_spec), "a formatted string")
        formatted = super().format_field(value, format_spec)  # type: ignore[misc]
        self._size += len(formatted)
        _refuse_size(self._size, "a formatted string")
        return formatted


class _Formatter(_SizedFormatting, SandboxedFormatter):
    pass


class _EscapeFormatter(_SizedFormatting, SandboxedEscapeFormatter):
    pass


class _Guards(NodeTransformer):
    """Rewrites a parsed template so that each loop checks the render deadline on every step and
    each `~` concatenation checks its size: the two things a sandbox hook cannot see by itself."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _env_call("guard_loop", node.iter, node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _env_call("guard_concat", node, node.lineno)


def _env_call(method: str, argument: nodes.Node, lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(method), [argument], [], None, None, lineno=lineno)


class _OutputBuffer(list[Any]):
    """The output a block set, macro, call or filter block collects, counted as it grows."""

    size = 0

    def append(self, item: Any) -> None:
        self._grow(item)
        super().append(item)

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.append(item)

    def _grow(self, item: Any) -> None:
        self.size += len(item) if isinstance(item, str) else 0
        _refuse_size(self.size, "the output of a block (set, macro, call or filter)")


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        super().visit_Template(_Guards().visit(node), frame)

    def buffer(self, frame: Frame) -> None:
        # Jinja collects such output in a plain list, joined only at the end: ours counts it.
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a render deadline and limits on what a template can build:
    operators, str methods, filters and loops are checked before they allocate or run on."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])
    code_generator_class = _GuardedCodeGenerator

    def __init__(self, filters: dict[str, Callable[..., Any]], **options: Any):
        # No constant folding: Jinja would otherwise run `'%0200000000d' % 1` while compiling the config.
        super().__init__(optimized=False, **options)
        self.filters.update(filters)
        for name, func in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, func)
        self.globals["lipsum"] = _guard_global("lipsum", cast(Callable[..., Any], self.globals["lipsum"]), _lorem)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Event data first: `order.items` is the order's items, not the dict method of that name.
        if isinstance(obj, dict):
            return self.getitem(obj, attribute)
        return super().getattr(obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        _check_time()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, (str, bytes)):
            what = f"the result of str.{name}()"
            if name == "join" and args:
                args = (_bounded_list(args[0], what), *args[1:])
                _refuse_size(_joined(str(owner), args[0]), what)
            elif name in _STR_METHOD_SIZES:
                arguments = _bind(inspect.signature(__obj), args, kwargs)
                if arguments is not None:
                    _refuse_size(_STR_METHOD_SIZES[name](owner, arguments), what)
        return _checked(super().call(__context, __obj, *args, **kwargs), "a value returned by a call")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """The sandbox's str.format/format_map, with our size-checking formatters."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        owner = value.__self__
        formatter = _EscapeFormatter(self, escape=owner.escape) if isinstance(owner, Markup) else _Formatter(self)
        is_map = value.__name__ == "format_map"

        def sized(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    return wrapped(*args, **kwargs)  # raises the sandbox's own argument error
                kwargs = args[0]
                args = ()
            return _checked(type(owner)(formatter.vformat(owner, args, kwargs)), "a formatted string")

        return functools.update_wrapper(sized, value)

    def guard_loop(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            _check_time()
            yield item

    def output_buffer(self) -> _OutputBuffer:
        return _OutputBuffer()

    def guard_concat(self, value: Any) -> Any:
        return _checked(value, "a string joined with ~")

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            if isinstance(left, int) and isinstance(right, int):
                _refuse_bits(abs(left).bit_length() + abs(right).bit_length(), "a product")
            _refuse_size(_repeated_size(left, right), "a repeated string or list")
            return operator.mul(left, right)
        if op == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_POWER_EXPONENT:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and isinstance(right, int):
                _refuse_bits(abs(left).bit_length() * abs(right), "a power")
            return operator.pow(left, right)
        if op == "%" and isinstance(left, str):
            _refuse_size(_printf_size(left, right), "a %-formatted string")
            return _checked(operator.mod(left, right), "a %-formatted string")
        if op == "+":
            return _checked(operator.add(left, right), "a sum of strings or lists")
        return super().call_binop(context, op, left, right)


def _repeated_size(left: Any, right: Any) -> int:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
            return len(seq) * count
    return 0


def _refuse_bits(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateLimitError(f"{what} would be a number of about {bits:,} bits; the limit is {MAX_INT_BITS:,}")


def _to_decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"money: {value!r} is not a number") from exc


def money(value: Any, currency: str | None = "EUR") -> str:
    """25.5 -> '25,50 €' (Spanish grouping: 1.234,50)."""
    if currency is not None and not isinstance(currency, str):
        raise ValueError(f"money: the currency {currency!r} is not a currency code like EUR")
    try:
        amount = _to_decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation as exc:  # infinite, not a number, or more digits than any price has
        raise ValueError(f"money: {value!r} is not an amount of money") from exc
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

    def parse(self, value: Any, name: str) -> datetime | date | time:
        """The value as a date, time or moment in the zone; ValueError naming the filter and the value."""
        try:
            return self._parse(value)
        except ValueError:
            raise ValueError(
                f"{name}: {value!r} is not a date or time (expected 2024-01-25, 10:30 or 2024-01-25T10:30:00Z)"
            ) from None
        except OverflowError:
            raise ValueError(f"{name}: {value!r} is outside the dates that can be shown (years 1 to 9999)") from None

    def _parse(self, value: Any) -> datetime | date | time:
        if isinstance(value, (datetime, date, time)):
            return value
        text = str(value).strip()
        if len(text) <= 5 and ":" in text:
            return time.fromisoformat(text)
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            return wall_clock(moment.date(), moment.time(), self.zone)
        return moment.astimezone(self.zone)

    def date(self, value: Any, fmt: str = "%d/%m/%Y") -> str:
        return self.parse(value, "date").strftime(fmt)

    def time(self, value: Any, fmt: str = "%H:%M") -> str:
        return self.parse(value, "time").strftime(fmt)

    def datetime(self, value: Any, fmt: str = "%d/%m/%Y %H:%M") -> str:
        return self.parse(value, "datetime").strftime(fmt)

    def longdate(self, value: Any) -> str:
        """'jueves, 25 de enero de 2024'."""
        day = self.parse(value, "longdate")
        if isinstance(day, time):
            raise ValueError(f"longdate: {value!r} is a time, not a date")
        return f"{_WEEKDAYS_ES[day.weekday()]}, {day.day} de {_MONTHS_ES[day.month - 1]} de {day.year}"


@dataclass(frozen=True)
class CompiledTemplate:
    """One compiled string template and where it came from (for error messages)."""

    where: str
    source: str
    render_fn: Callable[[dict[str, Any]], str]
    time_limit: float = DEFAULT_RENDER_TIMEOUT  # when no deadline (an action's) is running already

    def render(self, context: dict[str, Any]) -> str:
        try:
            with render_deadline(self.time_limit):
                return self.render_fn(context)
        except _MissingEntityField as exc:
            raise MissingDataError(f"{self.where}: {exc}") from exc
        except UndefinedError as exc:
            raise RenderError(f"{self.where}: the template reads a field the event does not have ({exc})") from exc
        except TemplateLimitError as exc:
            raise RenderError(f"{self.where}: the template was stopped: {exc}") from exc
        except SecurityError as exc:
            raise RenderError(f"{self.where}: the template was stopped by the sandbox ({exc})") from exc
        except RecursionError as exc:
            raise RenderError(f"{self.where}: the template was stopped: a macro calls itself too deeply") from exc
        # Event data of an unexpected type reaching a filter or a method shows as one of these.
        except (TemplateError, ValueError, TypeError, ArithmeticError, KeyError, IndexError, AttributeError) as exc:
            raise RenderError(f"{self.where}: the template failed: {exc}") from exc


class TemplateEngine:
    """One sandboxed environment per escaping mode, sharing the filters of a config's time zone."""

    def __init__(self, timezone: str = "UTC", render_timeout: float = DEFAULT_RENDER_TIMEOUT):
        self.zone = ZoneInfo(timezone)
        self.render_timeout = render_timeout
        clock = _Clock(self.zone)
        filters: dict[str, Callable[..., Any]] = {
            "money": money,
            "date": clock.date,
            "time": clock.time,
            "datetime": clock.datetime,
            "longdate": clock.longdate,
        }
        self._envs: dict[str, _BoundedSandbox] = {
            "none": _BoundedSandbox({**filters, "raw": str}, undefined=_Undefined),
            "slack": _BoundedSandbox(
                {**filters, "raw": SlackRaw, "slack_escape": slack_escape},
                undefined=_Undefined,
                finalize=_finalize_slack,
            ),
            "html": _BoundedSandbox({**filters, "raw": Markup}, undefined=_Undefined, autoescape=True),
        }

    def compile(self, source: str, where: str, escaping: str = "none") -> CompiledTemplate:
        env = self._envs[escaping]
        try:
            template = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateCompileError(
                f"template does not compile: {exc.message} (template line {exc.lineno})", exc.lineno
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

        return CompiledTemplate(where, source, render, self.render_timeout)

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

        return CompiledTemplate(where, source, evaluate, self.render_timeout)


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
