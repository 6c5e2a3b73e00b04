"""The connector interface: settings schema, action schemas, typed errors, and the registry."""

from __future__ import annotations

import builtins
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

EXCERPT_BYTES = 2000


def excerpt(text: str | bytes | None, limit: int = EXCERPT_BYTES) -> str:
    """A bounded piece of a remote answer, for logs and error reasons."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text[:limit].decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"


def wall_clock(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """The moment a salon's wall-clock date and time denote in `zone`, by RFC 5545's rule (3.3.5):
    a time the clocks skip in spring moves forward by the gap (02:30 -> 03:30 in Madrid on
    2024-03-31), a time they show twice in autumn is its first occurrence (summer time).
    ValueError when the moment is outside years 1-9999."""
    try:
        # fold=0 takes the offset in force before a transition; through UTC a skipped time becomes real.
        local = datetime.combine(day, clock.replace(tzinfo=None, fold=0), tzinfo=zone)
        return local.astimezone(UTC).astimezone(zone)
    except OverflowError:
        raise ValueError(f"{day} {clock:%H:%M} is outside the dates a calendar can hold") from None


class ConnectorError(Exception):
    """Base of the errors a connector raises from `send`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TransientError(ConnectorError):
    """Try again later: timeouts, connection errors, 408, 429, 5xx.

    `maybe_delivered`: the request went out and its answer never came (a read timeout), so the
    destination may have acted on it and trying again may repeat that; not set for writes that a
    repeat cannot double (a calendar entry with a fixed id, an edit)."""

    def __init__(self, reason: str, retry_after: float | None = None, maybe_delivered: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.maybe_delivered = maybe_delivered


class PermanentError(ConnectorError):
    """Trying again will not help: the reason says what a person must change."""


class SkipSend(Exception):
    """Nothing is sent, on purpose (the customer opted out): the action is recorded as `skipped`
    with `reason`, never retried and never dead."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class MissingDataError(Exception):
    """The action needs data that only an earlier event carries, and it has not arrived (yet): the
    action is retried for `retry.wait_for_missing_data`, then dead with this reason."""


def is_template(source: str) -> bool:
    """Whether a string holds Jinja syntax (plain strings are kept as they are, cheaply)."""
    return "{{" in source or "{%" in source or "{#" in source


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class ConnectorConfigError(Exception):
    """A connector's settings are unusable (raised at config load, with a message for the owner)."""


class Settings(BaseModel):
    """Base of every connector's settings; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    type: str
    dry_run: bool = False


class ActionFields(BaseModel):
    """Base of every action's fields, validated at config load.

    `template_fields`: fields whose strings (at any depth) are Jinja templates, rendered per event.
    `template_files`: fields that name a template file (relative to the config file, else shipped
      in `templates/`); the file is compiled at load and the field is rendered to its output.
    `escaping`: per field, how event values are escaped when inserted: "none", "slack" or "html".
    `syncs_state`: the action writes the current state of an entity (a calendar entry) from the
      merged views; an event that brings nothing new since the last write is skipped as stale.
    """

    model_config = ConfigDict(extra="forbid")

    template_fields: ClassVar[tuple[str, ...]] = ()
    template_files: ClassVar[tuple[str, ...]] = ()
    escaping: ClassVar[dict[str, str]] = {}
    syncs_state: ClassVar[bool] = False

    def load_warnings(self) -> list[tuple[str, str]]:
        """What check-config should warn about in these fields, as (field, message); none by default."""
        return []


class ConnectorStore(Protocol):
    """Small durable memory a connector keeps between actions (a Slack thread's ts, the calendar
    an entry lives in). Namespaced per connector instance; values are strings."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str, ttl: float | None = None) -> None: ...

    def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool: ...

    def delete(self, key: str) -> None: ...


class OptOuts(Protocol):
    """The phones whose owners asked for no more messages (they wrote BAJA or STOP)."""

    def opted_out_on(self, phone: str) -> str | None:
        """The date an E.164 phone opted out (as people read it), or None when it may be sent to."""
        ...


def refuse_opted_out(request: ActionRequest, phone: str) -> None:
    """Raise SkipSend when the customer at `phone` (E.164) opted out: nothing may be sent to them."""
    since = request.opt_outs.opted_out_on(phone) if request.opt_outs is not None else None
    if since is not None:
        raise SkipSend(f"skipped: opted out on {since}")


@dataclass(frozen=True)
class ActionRequest:
    """One rendered action, with what a connector needs to make its effect idempotent and to say
    what it is about: the event's identity, its subject, and what the bridge remembers."""

    action: str
    fields: dict[str, Any]
    event_id: str
    event_type: str
    event_created: str
    tenant_id: str
    action_id: str
    store: ConnectorStore | None = None
    # A replay with --force: the owner asks for the effect again, even if it was already done.
    forced: bool = False
    subject: Subject | None = None
    # The booking, order and customer the event is about, merged from every event so far (None: unknown).
    booking: Entity | None = None
    order: Entity | None = None
    customer: Entity | None = None
    timezone: str = "UTC"  # the salon's: booking dates and times are wall-clock times in it
    data: Mapping[str, Any] = field(default_factory=dict)  # the event's own `data`, as it came
    opt_outs: OptOuts | None = None  # for the messaging connectors: who must not be sent to


@dataclass
class SendResult:
    """What the destination answered, kept in the event log. `message_id`: the id the
    destination's delivery callbacks will name (a WhatsApp wamid, a Twilio SID), if it sends any."""

    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    message_id: str = ""


class Connector(ABC):
    """A destination. Built once per worker from validated settings; `send` does one action."""

    type: ClassVar[str]
    settings_model: ClassVar[builtins.type[Settings]]
    # action name -> fields model; the first one is the default when a mapping names none.
    actions: ClassVar[dict[str, builtins.type[ActionFields]]]
    # settings fields whose values are secrets: never logged or shown.
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, settings: Settings):
        self.name = name
        self.settings = settings

    @classmethod
    def default_action(cls) -> str:
        return next(iter(cls.actions))

    @abstractmethod
    def send(self, request: ActionRequest) -> SendResult:
        """Perform the action or raise TransientError / PermanentError."""

    def offline_check(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        """Problems that can be seen without the network (files, addresses); empty when fine.
        `actions`: this connector's configured actions by id, for what they name (channels...)."""
        return []

    def online_check(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        """Reach the destination and confirm it will accept what the config sends (credentials,
        channels, calendars); one line per problem, with what to do. Empty when fine."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, most connectors hold nothing to release
        """Release sockets and clients."""


def _registry(entries: list[tuple[str, str]]) -> dict[str, str]:
    registry: dict[str, str] = {}
    for type_name, target in entries:
        if type_name in registry:
            raise RuntimeError(f"connector type {type_name!r} listed twice")
        registry[type_name] = target
    return registry


# The config `type` -> "module:Class". Imported on first use, so that a missing optional
# dependency is a config error naming the package rather than an import failure at start-up.
REGISTRY: dict[str, str] = _registry(
    [
        ("http", "connectors.http:HttpConnector"),
        ("slack", "connectors.slack:SlackConnector"),
        ("email", "connectors.email:EmailConnector"),
        ("google_calendar", "connectors.google_calendar:GoogleCalendarConnector"),
        ("whatsapp", "connectors.whatsapp:WhatsAppConnector"),
        ("sms", "connectors.sms:SmsConnector"),
    ]
)


def connector_class(type_name: str) -> type[Connector]:
    """The class for a config `type`; ConnectorConfigError when unknown or not installed."""
    target = REGISTRY.get(type_name)
    if target is None:
        raise ConnectorConfigError(f"unknown connector type {type_name!r} (known: {', '.join(sorted(REGISTRY))})")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConnectorConfigError(
            f"connector type {type_name!r} needs the Python package {exc.name!r}: pip install {exc.name}"
        ) from exc
    cls: type[Connector] = getattr(module, class_name)
    return cls


class Entity(Mapping[str, Any]):
    """A remembered booking, order or customer (or a nested part of one), read-only."""

    __slots__ = ("_data", "id", "kind")

    def __init__(self, kind: str, entity_id: str, data: Mapping[str, Any]):
        self.kind = kind
        self.id = entity_id
        self._data = data

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return Entity(self.kind, self.id, value) if isinstance(value, Mapping) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Entity({self.kind} {self.id}: {dict(self._data)!r})"


KINDS = ("booking", "order", "customer")
# What people know each kind of entity by on the platform (a booking's code, an order's number).
CODE_FIELDS = {"booking": "codigo", "order": "numero", "customer": "id"}


@dataclass(frozen=True)
class Subject:
    """What an event is about, worked out once per event (`bridge.state.subject_of`): its tenant,
    the entities it carries (kind, id) in the order booking, order, customer, and how people know
    the main one (its code and the customer's name, from memory when the event lacks them)."""

    tenant: str
    entities: tuple[tuple[str, str], ...] = ()
    code: str = ""
    customer_name: str = ""

    @property
    def primary(self) -> tuple[str, str] | None:
        """The entity whose external objects the event may write: its booking, else order, else customer."""
        return self.entities[0] if self.entities else None

    def id_of(self, kind: str) -> str | None:
        return next((entity_id for k, entity_id in self.entities if k == kind), None)

    @property
    def name(self) -> str:
        """`booking ABC123XY`: the main entity by the code people know it by ("" for none)."""
        return f"{self.primary[0]} {self.code or self.primary[1]}" if self.primary else ""

    @property
    def label(self) -> str:
        """`booking ABC123XY · Juan Pérez`: the one label an event shows everywhere ("" for none)."""
        if self.customer_name and self.primary and self.primary[0] != "customer":
            return f"{self.name} · {self.customer_name}"
        return self.name
