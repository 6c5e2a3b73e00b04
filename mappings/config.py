"""Load and validate config.yaml: environment expansion, schema, connectors, compiled templates.

Every problem is reported as `file:line: key.path: message`, all of them at once.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.base import ActionFields, Connector, ConnectorConfigError, Settings, connector_class
from mappings.index import MappingIndex
from mappings.schedule import Daily, Schedule, parse_at, parse_daily, parse_quiet_hours
from mappings.templates import (
    DEFAULT_RENDER_TIMEOUT,
    CompiledTemplate,
    TemplateCompileError,
    TemplateEngine,
    compile_structure,
)

Path_ = tuple[str | int, ...]

DEFAULT_RETRY_SCHEDULE: list[float] = [30, 120, 600, 3600, 21600, 64800]  # sums to 25 h 12 min
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The platform's event types (bridge/samples has one sample of each); `on:` patterns must match one.
EVENT_TYPES = (
    "booking.created", "booking.updated", "booking.cancelled", "booking.completed", "booking.no_show",
    "payment.completed", "payment.failed", "payment.refunded",
    "customer.created", "customer.updated",
    "order.created", "order.shipped", "order.delivered",
)  # fmt: skip


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `on:` stays a key (YAML 1.1 reads it as True)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every `file:line: path: message`."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None):
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = warnings or []  # found in the same run, shown with the problems


def parse_duration(value: Any) -> Any:
    """'7d', '12h', '30m', '45s' or a number of seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration like 30s, 10m, 12h or 7d, got {value!r}")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookModel(_Strict):
    secrets: list[str] = Field(min_length=1)
    tenants: list[str] = []
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    dedupe_window: Duration = 7 * 86400
    body_timeout: Duration = 10  # a request body not complete by then is answered 408 (bridge/front.py)

    @field_validator("secrets")
    @classmethod
    def _non_empty(cls, secrets: list[str]) -> list[str]:
        for secret in secrets:
            if not secret.strip():
                raise ValueError("a webhook secret is empty: set SALONBOOKIT_WEBHOOK_SECRET")
        return secrets


class RetryModel(_Strict):
    schedule: list[Duration] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE), min_length=1)
    jitter: float = Field(default=0.1, ge=0, le=1)  # fraction of each step added at random
    # How long an action whose data comes from an event not received yet keeps retrying; longer
    # than the worst crash recovery (a killed worker's job runs again within ~10 min).
    wait_for_missing_data: Duration = 15 * 60


class RetentionModel(_Strict):
    """How long Redis keeps things (README, "Retention"). Entity memory is kept for what it serves:
    a booking for a while after its own appointment day, a customer or an order after their last
    event. `entities` is the earlier setting (every kind kept that long after its last event)."""

    events: Duration = 7 * 86400
    dead_letters: Duration = 30 * 86400
    bookings: Duration | None = None  # after the appointment day (default 45d)
    customers: Duration | None = None  # after their last event (default 400d)
    orders: Duration | None = None  # after their last event (default 90d)
    entities: Duration | None = None

    @model_validator(mode="after")
    def _one_style(self) -> RetentionModel:
        newer = [name for name in ("bookings", "customers", "orders") if getattr(self, name) is not None]
        if self.entities is not None and newer:
            raise ValueError(
                f"`entities` keeps every kind after its last event; it cannot be combined with {', '.join(newer)}: "
                "remove `entities` and set bookings, customers and orders"
            )
        return self

    def after_event(self, kind: str) -> float:
        """Seconds a customer or an order (or, with `entities`, any kind) is kept after its last event."""
        if self.entities is not None:
            return self.entities
        return {"customer": self.customers or 400 * 86400, "order": self.orders or 90 * 86400}.get(kind, self.events)

    def after_appointment(self) -> float | None:
        """Seconds a booking is kept after its appointment day (None with `entities`)."""
        return None if self.entities is not None else self.bookings or 45 * 86400

    def longest(self) -> float:
        """The longest any entity is kept after its last event (sync marks live that long)."""
        return max(self.after_event(kind) for kind in ("booking", "customer", "order"))


class TemplatesModel(_Strict):
    # All of one action's templates together; a worker's job is stopped at 120 s, so at most a minute.
    render_timeout: Duration = Field(default=DEFAULT_RENDER_TIMEOUT, le=60)


class ScheduleModel(_Strict):
    """`schedule:` of a mapping: its actions run at a time computed from the booking (`at`), or
    every day at a time of day (`daily`, with `for_each`: the morning digest); mappings/schedule.py."""

    at: str | None = None
    daily: str | None = None
    for_each: Literal["professional", "salon"] | None = None
    quiet_hours: str | None = None
    grace: Duration = 15 * 60

    @field_validator("at")
    @classmethod
    def _parses(cls, at: str | None) -> str | None:
        if at is not None:
            parse_at(at, parse_duration)
        return at

    @field_validator("daily")
    @classmethod
    def _time_of_day(cls, daily: str | None) -> str | None:
        if daily is not None:
            parse_daily(daily)
        return daily

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleModel:
        if (self.at is None) == (self.daily is None):
            which = "both `at:` and `daily:`" if self.at else "neither `at:` nor `daily:`"
            raise ValueError(
                f"{which} given: use `at:` for a time from the booking (e.g. 'booking.start - 24h') "
                "or `daily:` for a time of day (e.g. '08:00'), one of them"
            )
        if self.for_each is not None and self.daily is None:
            raise ValueError("`for_each:` goes with `daily:` (a digest per professional or per salon)")
        return self

    @field_validator("quiet_hours")
    @classmethod
    def _window(cls, quiet: str | None) -> str | None:
        if quiet is not None:
            parse_quiet_hours(quiet)
        return quiet

    def parsed(self) -> Schedule | Daily:
        quiet = parse_quiet_hours(self.quiet_hours) if self.quiet_hours else None
        if self.daily is not None:
            source = self.daily.strip()
            return Daily(source, parse_daily(source), self.for_each or "professional", self.grace, quiet)
        assert self.at is not None
        anchor, offset = parse_at(self.at, parse_duration)
        return Schedule(self.at.strip(), anchor, offset, self.grace, quiet)


class MappingModel(_Strict):
    name: str
    on: list[str] | None = None  # required, but for a `daily:` schedule (checked in _load_mappings)
    when: str | None = None
    schedule: ScheduleModel | None = None
    tenant: list[str] | None = None
    actions: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("on", "tenant", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"use letters, digits, '-', '_' or '.', got {name!r}")
        return name


_PASSWORD_HASH = re.compile(r"^(scrypt|pbkdf2):[^$]+\$[^$]+\$[0-9a-f]+$")


class AdminModel(_Strict):
    """The event-log pages at /admin: off unless credentials are set here."""

    username: str | None = None
    password_hash: str | None = None  # from `salon-bridge hash-password`
    token: str | None = Field(default=None, min_length=24)
    session_secret: str | None = Field(default=None, min_length=32)  # default: a random key kept in Redis
    session_lifetime: Duration = 12 * 3600
    secure_cookie: bool | None = None  # None: Secure when the request came over HTTPS
    login_max_failures: int = Field(default=5, ge=1)
    login_window: Duration = 15 * 60
    language: Literal["es", "en"] | None = None  # None: the browser's Accept-Language, else Spanish

    @field_validator("password_hash")
    @classmethod
    def _is_a_hash(cls, value: str | None) -> str | None:
        if value is not None and not _PASSWORD_HASH.match(value):
            raise ValueError(
                "password_hash must be the hash printed by `salon-bridge hash-password` "
                "(it starts with scrypt: or pbkdf2:), never the password itself"
            )
        return value

    @model_validator(mode="after")
    def _credentials(self) -> AdminModel:
        if (self.username is None) != (self.password_hash is None):
            raise ValueError("set both username and password_hash (from `salon-bridge hash-password`), or neither")
        if self.password_hash is None and self.token is None:
            raise ValueError("the admin needs username and password_hash, or token; remove `admin:` to keep it off")
        return self


class MetricsModel(_Strict):
    """/metrics and /readyz."""

    token: str | None = Field(default=None, min_length=24)  # when set, /metrics wants `Authorization: Bearer <token>`
    max_queue_age: Duration = 300  # /readyz fails when the oldest queued job waited longer


class CalendarFeedsModel(_Strict):
    """Signed ICS feeds at /calendars/<token>.ics (bridge/feeds.py): off unless set."""

    secret: str = Field(min_length=16)  # signs the links; changing it revokes every one
    past_days: int = Field(default=30, ge=0, le=400)
    future_days: int = Field(default=120, ge=0, le=800)
    customer: Literal["full_name", "first_name", "none"] = "first_name"
    cancelled: Literal["show", "hide"] = "show"


class StaffModel(_Strict):
    """Optional name and contacts of one professional (by the platform's `profesional.id`)."""

    name: str | None = None
    email: str | None = None
    slack: str | None = None
    phone: str | None = None


class ConfigModel(_Strict):
    version: Literal[1]
    timezone: str = "UTC"
    webhook: WebhookModel
    redis_url: str | None = None
    retry: RetryModel = RetryModel()
    retention: RetentionModel = RetentionModel()
    templates: TemplatesModel = TemplatesModel()
    admin: AdminModel | None = None
    metrics: MetricsModel = MetricsModel()
    calendar_feeds: CalendarFeedsModel | None = None
    staff: dict[str, StaffModel] = {}  # by professional id; see `BridgeConfig.staff_entry`
    connectors: dict[str, dict[str, Any]] = {}  # validated by each connector's own schema
    mappings: list[dict[str, Any]] = []  # validated one by one (MappingModel)

    @field_validator("staff", mode="before")
    @classmethod
    def _staff_ids_as_text(cls, value: Any) -> Any:
        # `5:` and `"5":` both name professional 5 (YAML reads the first as a number).
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}, expected a name like Europe/Madrid") from None
        return zone


@dataclass
class ActionSpec:
    """One configured action of a mapping, validated and with its templates compiled."""

    id: str  # "mapping-name/action-name", unique in the config
    mapping: str
    connector: str
    action: str
    fields: ActionFields
    compiled: dict[str, Any]  # field -> value, with template strings compiled
    render_timeout: float = DEFAULT_RENDER_TIMEOUT  # seconds for all of the action's templates
    # Runs once if this action ends dead or failed after sending; its id is `<id>/fallback`.
    fallback: ActionSpec | None = None

    def chain(self) -> Iterator[ActionSpec]:
        """This action, then its fallback, the fallback's fallback..."""
        spec: ActionSpec | None = self
        while spec is not None:
            yield spec
            spec = spec.fallback


@dataclass
class MappingSpec:
    name: str
    patterns: list[str]
    tenants: list[str] | None
    when: CompiledTemplate | None
    actions: list[ActionSpec]
    schedule: Schedule | None = None  # None: the actions run when the event arrives
    daily: Daily | None = None  # runs by the clock instead of on events (bridge/digest.py); patterns empty

    def matches(self, event_type: str, tenant_id: str) -> bool:
        if self.tenants is not None and tenant_id not in self.tenants:
            return False
        return any(fnmatchcase(event_type, pattern) for pattern in self.patterns)


@dataclass
class ConnectorSpec:
    name: str
    cls: type[Connector]
    settings: Settings | None  # None: invalid, accepted only because the connector is in dry run
    dry_run: bool = False

    def build(self) -> Connector:
        if self.settings is None:
            raise ConnectorConfigError(f"connector {self.name!r} is not configured (dry run only)")
        return self.cls(self.name, self.settings)


@dataclass
class BridgeConfig:
    """A loaded config: the validated settings, connectors and compiled mappings."""

    path: str
    model: ConfigModel
    engine: TemplateEngine
    connectors: dict[str, ConnectorSpec]
    mappings: list[MappingSpec]
    warnings: list[str] = field(default_factory=list)
    # Built once: a job's lookups stay flat in the number of mappings (mappings.index).
    index: MappingIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.index = MappingIndex(self.mappings)

    @property
    def webhook(self) -> WebhookModel:
        return self.model.webhook

    def mappings_for(self, event_type: str, tenant_id: str) -> list[MappingSpec]:
        """The mappings an event matches, in config order."""
        return self.index.matching(event_type, tenant_id)

    def staff_entry(self, professional: str) -> StaffModel | None:
        """The `staff:` entry of a professional id (as the platform sends it, e.g. "5"), if any."""
        return self.model.staff.get(str(professional))

    def mapping(self, name: str) -> MappingSpec | None:
        return self.index.mapping(name)

    def booking_retention(self) -> float | None:
        """Seconds a booking is kept after its appointment day: `retention.bookings`, raised to what
        this config reads of past bookings (the feeds' past days, a send scheduled after the
        appointment). None with the earlier `retention.entities` (kept after the last event)."""
        keep = self.model.retention.after_appointment()
        if keep is None:
            return None
        needs = [keep]
        if self.model.calendar_feeds is not None:
            needs.append((self.model.calendar_feeds.past_days + 1) * 86400)
        for mapping in self.mappings:
            if mapping.schedule is not None and mapping.schedule.on_booking:
                needs.append(mapping.schedule.offset + mapping.schedule.grace + 86400)
        return max(needs)

    def action(self, action_id: str) -> ActionSpec | None:
        """A configured action by id, a fallback (`<action id>/fallback`) too."""
        return self.index.action(action_id)


def default_config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("SALON_BRIDGE_CONFIG") or "config.yaml"


def load_config(
    path: str | os.PathLike[str],
    environ: dict[str, str] | None = None,
    dry_run: bool = False,
    unused: Iterable[str] = (),
) -> BridgeConfig:
    """Read, expand and validate a config file; raises ConfigError listing every problem.

    A connector in dry run (`dry_run: true`, or every connector when `dry_run` is passed) sends
    nothing, so its unset variables and invalid settings are warnings, not errors. `unused`: top-level
    sections the caller does not use (a CLI command has no use for `admin`): not read at all."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None
    return load_config_text(text, path, environ, dry_run, unused)


def load_config_text(
    text: str,
    path: str = "config.yaml",
    environ: dict[str, str] | None = None,
    dry_run: bool = False,
    unused: Iterable[str] = (),
) -> BridgeConfig:
    environ = dict(os.environ) if environ is None else environ
    try:
        root = yaml.compose(text, Loader=_Loader)
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}{line}: not valid YAML: {problem}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}:1: the config must be a mapping of keys (version, webhook, ...)"])

    for section in unused:
        raw.pop(section, None)
    lenient = _dry_run_connectors(raw, dry_run)
    collector = _Problems(
        path, root, lambda where: len(where) >= 2 and where[0] == "connectors" and where[1] in lenient
    )
    raw = _expand_env(raw, (), environ, collector)
    model: ConfigModel | None = None
    try:
        model = ConfigModel.model_validate(raw)
    except ValidationError as exc:
        collector.add_validation_error(exc, ())
    # Connectors and mappings are checked even when the top level is wrong, to list every problem.
    render_timeout = model.templates.render_timeout if model else DEFAULT_RENDER_TIMEOUT
    try:
        engine = TemplateEngine(model.timezone if model else str(raw.get("timezone", "UTC")), render_timeout)
    except (ValueError, KeyError):
        engine = TemplateEngine("UTC", render_timeout)
    raw_connectors = raw.get("connectors") or {}
    raw_mappings = raw.get("mappings") or []
    connectors = _load_connectors(raw_connectors, lenient, collector) if isinstance(raw_connectors, dict) else {}
    broken = set(raw_connectors) - set(connectors) if isinstance(raw_connectors, dict) else set()
    base_dir = Path(path).resolve().parent
    mappings = (
        _load_mappings(raw_mappings, engine, connectors, broken, base_dir, collector)
        if isinstance(raw_mappings, list)
        else []
    )
    if collector.problems or model is None:
        raise ConfigError(collector.render(), collector.render_warnings())
    return BridgeConfig(path, model, engine, connectors, mappings, collector.render_warnings())


def _dry_run_connectors(raw: dict[str, Any], everything: bool) -> set[str]:
    connectors = raw.get("connectors")
    if not isinstance(connectors, dict):
        return set()
    return {
        name
        for name, settings in connectors.items()
        if everything or (isinstance(settings, dict) and settings.get("dry_run") is True)
    }


def _expand_env(value: Any, where: Path_, environ: dict[str, str], problems: _Problems) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ and environ[name] != "":
                return environ[name]
            if default is not None:
                return default
            problems.add(where, f"environment variable {name} is not set or empty (and ${{{name}}} has no :-default)")
            problems.unset.add(where)
            return match.group(0)

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, (*where, k), environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*where, i), environ, problems) for i, v in enumerate(value)]
    return value


def _load_connectors(
    raw_connectors: dict[str, Any], lenient: set[str], problems: _Problems
) -> dict[str, ConnectorSpec]:
    specs: dict[str, ConnectorSpec] = {}
    for name, raw in raw_connectors.items():
        where: Path_ = ("connectors", name)
        if not _NAME.match(name):
            problems.add(where, f"connector names use letters, digits, '-', '_' or '.', got {name!r}")
        type_name = raw.get("type") if isinstance(raw, dict) else None
        # Without a known type even a dry run cannot render the connector's actions.
        if not isinstance(type_name, str):
            problems.add(where, "missing required key 'type' (e.g. type: http)", strict=True)
            continue
        try:
            cls = connector_class(type_name)
        except ConnectorConfigError as exc:
            problems.add((*where, "type"), str(exc), strict=True)
            continue
        settings: Settings | None = None
        try:
            settings = cls.settings_model.model_validate(raw)
        except ValidationError as exc:
            problems.add_validation_error(exc, where)
            if name not in lenient:
                continue
        specs[name] = ConnectorSpec(name, cls, settings, dry_run=name in lenient)
    return specs


def _load_mappings(
    raw_mappings: list[Any],
    engine: TemplateEngine,
    connectors: dict[str, ConnectorSpec],
    broken: set[str],
    base_dir: Path,
    problems: _Problems,
) -> list[MappingSpec]:
    """Validate mappings; actions on a connector that itself failed validation are not checked further.
    A mapping with a structural problem still has its event types and actions checked."""
    mappings: list[MappingSpec] = []
    seen_names: set[str] = set()
    loader = _ActionLoader(engine, connectors, broken, base_dir, problems)
    for index, raw in enumerate(raw_mappings):
        where: Path_ = ("mappings", index)
        try:
            mapping = MappingModel.model_validate(raw)
        except ValidationError as exc:
            problems.add_validation_error(exc, where)
            _check_what_can_be(raw, where, loader)
            continue
        if mapping.name in seen_names:
            problems.add((*where, "name"), f"another mapping is already named {mapping.name!r}")
        seen_names.add(mapping.name)
        patterns = _check_on(mapping, where, problems)
        when = None
        if mapping.when is not None:
            try:
                when = engine.compile_condition(mapping.when, f"mappings[{index}].when")
            except TemplateCompileError as exc:
                problems.add((*where, "when"), str(exc))
        actions = loader.load_all(mapping.name, mapping.actions, where)
        parsed = mapping.schedule.parsed() if mapping.schedule else None
        schedule = parsed if isinstance(parsed, Schedule) else None
        daily = parsed if isinstance(parsed, Daily) else None
        if schedule is not None and schedule.on_booking and not _reacts_to_bookings(patterns):
            problems.add(
                (*where, "schedule", "at"),
                f"{schedule.anchor!r} needs a booking, but `on:` has no booking event (e.g. booking.created)",
            )
        mappings.append(MappingSpec(mapping.name, patterns, mapping.tenant, when, actions, schedule, daily))
    return mappings


def _check_on(mapping: MappingModel, where: Path_, problems: _Problems) -> list[str]:
    """The mapping's event patterns: none for a daily schedule (it runs by the clock), at least one otherwise."""
    daily = mapping.schedule is not None and mapping.schedule.daily is not None
    if daily:
        if mapping.on is not None:
            problems.add(
                (*where, "on"),
                "a mapping with `schedule: {daily: ...}` runs by the clock, not on events: remove `on:` "
                "(or use `at:` for a send that follows each booking)",
            )
        return []
    if not mapping.on:
        problems.add((*where, "on"), "missing required key" if mapping.on is None else "list at least one event type")
        return []
    _check_event_types(mapping.on, where, problems)
    return mapping.on


def _check_what_can_be(raw: Any, where: Path_, loader: _ActionLoader) -> None:
    """The parts of a mapping that failed validation which can still be checked on their own."""
    if not isinstance(raw, dict):
        return
    on = [raw["on"]] if isinstance(raw.get("on"), str) else raw.get("on")
    if isinstance(on, list) and all(isinstance(pattern, str) for pattern in on):
        _check_event_types(on, where, loader.problems)
    actions = raw.get("actions")
    if isinstance(actions, list):
        name = raw.get("name")
        loader.load_all(name if isinstance(name, str) else f"mappings[{where[1]}]", actions, where)


def _reacts_to_bookings(patterns: list[str]) -> bool:
    return any(fnmatchcase(t, p) for p in patterns for t in EVENT_TYPES if t.startswith("booking."))


def _check_event_types(patterns: list[str], where: Path_, problems: _Problems) -> None:
    """An `on:` entry should match one of the platform's event types: a typo would match nothing,
    silently. A warning (the platform may add types), an error with `check-config --strict`."""
    for position, pattern in enumerate(patterns):
        if any(fnmatchcase(event_type, pattern) for event_type in EVENT_TYPES):
            continue
        close = difflib.get_close_matches(pattern, EVENT_TYPES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"the platform's types: {', '.join(EVENT_TYPES)}"
        problems.warnings.append(((*where, "on", position), f"{pattern!r} matches no event type; {hint}"))


@dataclass
class _ActionLoader:
    """What loading an action needs, gathered once per config."""

    engine: TemplateEngine
    connectors: dict[str, ConnectorSpec]
    broken: set[str]
    base_dir: Path
    problems: _Problems

    def load_all(self, mapping_name: str, raw_actions: list[Any], where: Path_) -> list[ActionSpec]:
        actions: list[ActionSpec] = []
        for position, raw_action in enumerate(raw_actions):
            if not isinstance(raw_action, dict) or raw_action.get("connector") in self.broken:
                continue  # not a mapping of keys: already reported by the mapping's validation
            action = _load_action(
                mapping_name,
                position,
                raw_action,
                (*where, "actions", position),
                self.engine,
                self.connectors,
                self.broken,
                self.base_dir,
                self.problems,
            )
            if action is None:
                continue
            if any(a.id == action.id for a in actions):
                self.problems.add(
                    (*where, "actions", position, "name"), f"two actions of this mapping are named {action.id!r}"
                )
            actions.append(action)
        return actions


_ACTION_KEYS = ("connector", "action", "name", "fallback")
FALLBACK_DEPTH = 5  # WhatsApp -> SMS -> e-mail needs two; a longer chain is more likely a mistake


def _load_action(
    mapping_name: str,
    position: int,
    raw: dict[str, Any],
    where: Path_,
    engine: TemplateEngine,
    connectors: dict[str, ConnectorSpec],
    broken: set[str],
    base_dir: Path,
    problems: _Problems,
    action_id: str | None = None,
) -> ActionSpec | None:
    """One action of a mapping (`action_id`: given for a fallback, else `<mapping>/<name or position>`)."""
    known = ", ".join(sorted(set(connectors) | broken)) or "none configured"
    connector_name = raw.get("connector")
    if not isinstance(connector_name, str):
        problems.add(where, f"missing required key 'connector' (known: {known})")
        return None
    spec = connectors.get(connector_name)
    if spec is None:
        problems.add((*where, "connector"), f"unknown connector {connector_name!r} (known: {known})")
        return None
    action_name = raw.get("action") or spec.cls.default_action()
    fields_model = spec.cls.actions.get(action_name)
    if fields_model is None:
        known = ", ".join(spec.cls.actions)
        problems.add(
            (*where, "action"),
            f"connector {connector_name!r} ({spec.cls.type}) has no action {action_name!r} (known: {known})",
        )
        return None
    label = raw.get("name") or str(position)
    if not isinstance(label, str) or not _NAME.match(label):
        problems.add((*where, "name"), f"use letters, digits, '-', '_' or '.', got {label!r}")
        return None
    action_id = action_id or f"{mapping_name}/{label}"
    fallback = None
    if "fallback" in raw:  # checked even when this action's own fields are not right
        args = (engine, connectors, broken, base_dir, problems)
        fallback = _load_fallback(action_id, mapping_name, raw["fallback"], (*where, "fallback"), *args)
    fields_raw = {k: v for k, v in raw.items() if k not in _ACTION_KEYS}
    try:
        fields = fields_model.model_validate(fields_raw)
    except ValidationError as exc:
        problems.add_validation_error(exc, where)
        return None
    for name, message in fields.load_warnings():
        problems.warnings.append(((*where, name), message))
    compiled: dict[str, Any] = {}
    for name in type(fields).model_fields:
        value = getattr(fields, name)
        field_label = f"{_format_path(where)}.{name}"
        escaping = fields_model.escaping.get(name, "none")
        source_path = None
        try:
            if name in fields_model.template_files and value is not None:
                source_path = _find_template_file(value, base_dir)
                value = engine.compile(source_path.read_text(encoding="utf-8"), f"{field_label} ({value})", escaping)
            elif name in fields_model.template_fields and value is not None:
                value = compile_structure(engine, value, field_label, escaping)
        except TemplateCompileError as exc:
            if source_path is not None and exc.lineno:  # the error's own place: the template file's line
                problems.add((*where, name), f"{source_path}:{exc.lineno}: {exc}")
            else:
                problems.add((*where, name), str(exc), template_line=exc.lineno if isinstance(value, str) else None)
            continue
        except FileNotFoundError as exc:
            problems.add((*where, name), str(exc))
            continue
        compiled[name] = value
    timeout = engine.render_timeout
    return ActionSpec(action_id, mapping_name, connector_name, action_name, fields, compiled, timeout, fallback)


def _load_fallback(
    first_id: str,
    mapping_name: str,
    raw: Any,
    where: Path_,
    engine: TemplateEngine,
    connectors: dict[str, ConnectorSpec],
    broken: set[str],
    base_dir: Path,
    problems: _Problems,
) -> ActionSpec | None:
    """`fallback:` of an action: an action of the same shape, named `<first action id>/fallback`."""
    if not isinstance(raw, dict):
        problems.add(where, f"a fallback is an action (connector: and its fields), got {type(raw).__name__}")
        return None
    if "name" in raw:
        problems.add((*where, "name"), f"a fallback has no name of its own: it is {first_id + '/fallback'!r}")
        return None
    if sum(1 for part in where if part == "fallback") > FALLBACK_DEPTH:
        problems.add(where, f"more than {FALLBACK_DEPTH} fallbacks in a row")
        return None
    if raw.get("connector") in broken:
        return None  # that connector's own problems are reported
    return _load_action(
        mapping_name, 0, raw, where, engine, connectors, broken, base_dir, problems, first_id + "/fallback"
    )


SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _find_template_file(name: str, base_dir: Path) -> Path:
    """A template file next to the config, else one shipped with salon-bridge."""
    candidates = [base_dir / name, SHIPPED_TEMPLATES / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"template file {name!r} not found (looked in {', '.join(str(c) for c in candidates)})")


DRY_RUN_ACCEPTED = " (accepted: this connector is in dry run)"  # ends a dry-run connector's warning


class _Problems:
    """Collects problems with their key paths and turns them into `file:line: path: message`."""

    def __init__(self, path: str, root: yaml.Node | None, lenient: Callable[[Path_], bool] = lambda where: False):
        self.path = path
        self.root = root
        self.lenient = lenient
        self.problems: list[tuple[Path_, str]] = []
        self.warnings: list[tuple[Path_, str]] = []
        self.unset: set[Path_] = set()  # values holding an unset ${VAR}: said once, not judged again
        self.template_lines: dict[tuple[Path_, str], int] = {}  # a template's own line, for its errors

    def add(self, where: Path_, message: str, strict: bool = False, template_line: int | None = None) -> None:
        """A problem; in a dry-run connector a warning, unless `strict` (it would break even there).
        `template_line`: the line within the template at `where` that the problem is on."""
        if template_line:
            self.template_lines[(where, message)] = template_line
        if self.lenient(where) and not strict:
            entry = (where, message + DRY_RUN_ACCEPTED)
            if entry not in self.warnings:
                self.warnings.append(entry)
        else:
            self.problems.append((where, message))

    def add_validation_error(self, exc: ValidationError, prefix: Path_) -> None:
        for error in exc.errors():
            where = (*prefix, *error["loc"])
            if where not in self.unset:
                self.add(where, _describe(error))

    def render(self, entries: list[tuple[Path_, str]] | None = None) -> list[str]:
        entries = self.problems if entries is None else entries
        lines = sorted(
            (
                (self._line(where, self.template_lines.get((where, message))), where, message)
                for where, message in entries
            ),
            key=lambda e: e[0],
        )
        return [f"{self.path}:{line}: {_format_path(where)}: {message}" for line, where, message in lines]

    def render_warnings(self) -> list[str]:
        return self.render(self.warnings)

    def _line(self, where: Path_, template_line: int | None = None) -> int:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else 1
        for part in where:
            child = _child(node, part)
            if child is None:
                break
            node = child
            line = node.start_mark.line + 1
        if template_line:
            value = _scalar_value(self.root, where)
            if isinstance(value, yaml.ScalarNode) and value.style in (
                "|",
                ">",
            ):  # a block: its text starts on the next line
                return value.start_mark.line + 1 + template_line
        return line


def _scalar_value(root: yaml.Node | None, where: Path_) -> yaml.Node | None:
    """The value node at `where` (`_child` gives a scalar's key, for pointing at it)."""
    node = root
    for position, part in enumerate(where):
        if isinstance(node, yaml.MappingNode) and position == len(where) - 1:
            return next((value for key, value in node.value if key.value == str(part)), None)
        node = _child(node, part)
    return None


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                # Point at the key for scalars, at the value for nested blocks.
                return value if not isinstance(value, yaml.ScalarNode) else key
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None


def _format_path(where: Iterable[str | int]) -> str:
    text = ""
    for part in where:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("literal_error", "enum") or kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message}, got {error['input']!r}"
    return message
