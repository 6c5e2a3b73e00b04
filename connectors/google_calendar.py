"""`google_calendar`: one Google Calendar event per booking, in the professional's calendar.

Each (tenant, booking) maps to one deterministic event id, so retries, duplicates and replays update
that event instead of adding another. Every action writes the whole event from the newest known state
of the booking (the merged view from entity memory): times, professional (its calendar), services,
customer, and the state marks (cancelled, completed, no-show).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import http.client
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import google_auth_httplib2
import httplib2
from google.auth import exceptions as auth_exceptions
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.base import (
    ActionFields,
    ActionRequest,
    Connector,
    ConnectorError,
    MissingDataError,
    PermanentError,
    SendResult,
    Settings,
    TransientError,
    excerpt,
    is_template,
    parse_retry_after,
    wall_clock,
)

DEFAULT_API_ENDPOINT = "https://www.googleapis.com/calendar/v3/"
SCOPE = "https://www.googleapis.com/auth/calendar.events"
EVENT_COLORS = tuple(str(n) for n in range(1, 12))  # Google's event colours: 1 Lavender ... 11 Tomato
DEFAULT_DURATION_MINUTES = 30  # when a booking has neither hora_fin nor service durations
DAILY_QUOTA_RETRY_AFTER = 3600.0

ACTIVE, CANCELLED, COMPLETED, NO_SHOW = "active", "cancelled", "completed", "no_show"
_ESTADOS = {
    "cancelada": CANCELLED,
    "cancelado": CANCELLED,
    "cancelled": CANCELLED,
    "canceled": CANCELLED,
    "completada": COMPLETED,
    "completado": COMPLETED,
    "completed": COMPLETED,
    "no_show": NO_SHOW,
    "no-show": NO_SHOW,
    "noshow": NO_SHOW,
}
_TYPE_STATES = {"booking.cancelled": CANCELLED, "booking.completed": COMPLETED, "booking.no_show": NO_SHOW}
_RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
_DAILY_QUOTA_REASONS = {"quotaExceeded", "dailyLimitExceeded"}
_API_DISABLED_REASONS = {"accessNotConfigured", "SERVICE_DISABLED"}
_SHARE_HOWTO = "Google Calendar → the calendar's Settings and sharing → Share with specific people"

# Strict on what booking.created always carries (a template reading a field no event brought yet
# makes the core wait for the earlier event), lenient on optional fields.
DEFAULT_SUMMARY = "{{ booking.servicios | map(attribute='nombre') | join(', ') }} · {{ booking.cliente.nombre }}"
DEFAULT_DESCRIPTION = (
    "Reserva {{ booking.codigo }}\n"
    "{% for s in booking.servicios %}- {{ s.nombre }}"
    "{% if s.precio is defined and s.precio is not none %}: {{ s.precio | money }}{% endif %}\n{% endfor %}"
    "{% if booking.total is defined and booking.total is not none %}Total: {{ booking.total | money }}\n{% endif %}"
    "Cliente: {{ booking.cliente.nombre }}"
    "{% if booking.cliente.telefono is defined and booking.cliente.telefono %}"
    " · {{ booking.cliente.telefono }}{% endif %}"
    "{% if booking.notas is defined and booking.notas %}\nNotas: {{ booking.notas }}{% endif %}"
)

STORE_TTL = 400 * 86400  # what the connector remembers of a booking, like entity memory


def google_event_id(tenant_id: str, booking_id: str) -> str:
    """The Google event id of a booking: base32hex (a-v, 0-9) of a hash of (tenant, booking), 52 chars.
    Each part is escaped, so no two (tenant, booking) pairs hash the same text."""
    tenant, booking = (part.replace("\\", "\\\\").replace("\x00", "\\0") for part in (tenant_id, booking_id))
    digest = hashlib.sha256(f"salon-bridge\x00{tenant}\x00{booking}".encode()).digest()
    return base64.b32hexencode(digest).decode().rstrip("=").lower()


def _color(value: Any, where: str, allow_template: bool) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if allow_template and is_template(text):
        return text
    if text not in EVENT_COLORS:
        raise ValueError(f"{where} must be a Google event colour 1-11 (1 Lavender ... 11 Tomato), got {value!r}")
    return text


class CalendarsModel(BaseModel):
    """Which calendar a booking goes to: its professional's, else the default one."""

    model_config = ConfigDict(extra="forbid")

    default: str | None = None
    by_professional: dict[str, str] = {}

    @field_validator("by_professional", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        # YAML reads {5: "..."} with an integer key; professional ids are compared as text.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _some_calendar(self) -> CalendarsModel:
        if not self.default and not self.by_professional:
            raise ValueError(
                "set calendars.default (the salon's calendar) and/or calendars.by_professional "
                '(professional id -> calendar id, e.g. {"5": "carlos@example.com"})'
            )
        for calendar_id in [self.default, *self.by_professional.values()]:
            if calendar_id is not None and not calendar_id.strip():
                raise ValueError("a calendar id is empty: use the calendar's id, e.g. carlos@example.com")
        return self


class GoogleCalendarSettings(Settings):
    credentials_file: str | None = None
    credentials_json: str | None = None
    subject: str | None = None
    api_endpoint: str = DEFAULT_API_ENDPOINT
    calendars: CalendarsModel
    timezone: str | None = None  # default: the config's `timezone`
    timeout: float = Field(default=20.0, gt=0, le=120)

    @field_validator("api_endpoint")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"api_endpoint must start with https:// (or http:// for a local test server), got {url!r}")
        return url if url.endswith("/") else url + "/"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, zone: str | None) -> str | None:
        if zone is None:
            return None
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}, expected a name like Europe/Madrid") from None
        return zone

    @model_validator(mode="after")
    def _one_key(self) -> GoogleCalendarSettings:
        if (self.credentials_file is None) == (self.credentials_json is None):
            raise ValueError(
                "set exactly one of credentials_file (path of the service account's JSON key) "
                "or credentials_json (the key itself)"
            )
        if self.subject is None:
            for calendar_id in [self.calendars.default, *self.calendars.by_professional.values()]:
                if calendar_id == "primary":
                    raise ValueError(
                        "calendar 'primary' is the service account's own calendar, which nobody sees: "
                        "use the id of a calendar shared with it (e.g. carlos@example.com)"
                    )
        return self


class SyncBooking(ActionFields):
    """Keep one Google event per booking in step with the booking's newest state."""

    template_fields: ClassVar[tuple[str, ...]] = ("summary", "description", "location", "color_id", "calendar_id")
    # Google Calendar shows descriptions as HTML; summary and location are plain text.
    escaping: ClassVar[dict[str, str]] = {"description": "html"}
    syncs_state: ClassVar[bool] = True

    summary: str = DEFAULT_SUMMARY
    description: str = DEFAULT_DESCRIPTION
    location: str | None = None
    color_id: str | None = None
    calendar_id: str | None = None  # overrides calendars.by_professional / default
    on_cancel: Literal["delete", "keep"] = "delete"
    cancelled_prefix: str = "Cancelada · "
    cancelled_color_id: str | None = "8"  # Graphite
    completed_prefix: str = "✔ "
    completed_color_id: str | None = "10"  # Basil
    no_show_prefix: str = "No se presentó · "
    no_show_color_id: str | None = "11"  # Tomato

    @field_validator("color_id", mode="before")
    @classmethod
    def _templated_color(cls, value: Any) -> str | None:
        return _color(value, "color_id", allow_template=True)

    @field_validator("cancelled_color_id", "completed_color_id", "no_show_color_id", mode="before")
    @classmethod
    def _mark_color(cls, value: Any) -> str | None:
        return _color(value, "a mark's color_id", allow_template=False)


class _KeyProblem(Exception):
    """The service-account key cannot be used; the message says what to do."""


class _TokenEndpointBusy(Exception):
    """The token endpoint answered 429 or 5xx (google-auth would sleep and retry inside the call)."""

    def __init__(self, status: int, retry_after: float | None, body: str):
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after, self.body = status, retry_after, body


class _TokenRequest(google_auth_httplib2.Request):
    """The transport google-auth uses for the token endpoint, failing fast instead of sleeping."""

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        response = super().__call__(url, method=method, body=body, headers=headers, **kwargs)
        if response.status == 429 or response.status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise _TokenEndpointBusy(response.status, retry_after, excerpt(response.data, 300))
        return response


class _Client:
    """The Calendar API client with its credentials and one httplib2 connection pool."""

    def __init__(self, info: dict[str, Any], settings: GoogleCalendarSettings):
        self.credentials = service_account.Credentials.from_service_account_info(
            info, scopes=[SCOPE], subject=settings.subject
        )
        self.http = httplib2.Http(timeout=settings.timeout)
        self.token_request = _TokenRequest(self.http)
        # Token refresh is ours (no sleeping retries), so the wrapper must not refresh on 401 itself.
        authorized = google_auth_httplib2.AuthorizedHttp(self.credentials, http=self.http, refresh_status_codes=())
        self.service = build(
            "calendar",
            "v3",
            http=authorized,
            static_discovery=True,
            cache_discovery=False,
            client_options={"api_endpoint": settings.api_endpoint},
        )
        self.events = self.service.events()

    def close(self) -> None:
        self.service.close()


class GoogleCalendarConnector(Connector):
    type = "google_calendar"
    settings_model = GoogleCalendarSettings
    actions: ClassVar[dict[str, builtins.type[ActionFields]]] = {"sync_booking": SyncBooking}
    secret_fields = ("credentials_json",)

    settings: GoogleCalendarSettings

    def __init__(self, name: str, settings: Settings):
        super().__init__(name, settings)
        self._client_instance: _Client | None = None
        self._account = "the service account"  # its e-mail, once the key is read
        self._principal = self._account  # who calendars must be shared with: `subject`, else the account

    # --- the key and the client -------------------------------------------------------------

    def _key_source(self) -> str:
        if self.settings.credentials_json is not None:
            return f"credentials_json of connector {self.name!r}"
        return f"key file {self.settings.credentials_file}"

    def _read_key(self) -> dict[str, Any]:
        """The parsed service-account key; _KeyProblem with what to do when it is unusable."""
        source = self._key_source()
        download = (
            "download a new JSON key (Google Cloud console → IAM & Admin → Service accounts → the account → "
            "Keys → Add key → Create new key → JSON)"
        )
        if self.settings.credentials_json is not None:
            text = self.settings.credentials_json
        else:
            path = Path(self.settings.credentials_file or "")
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise _KeyProblem(f"{source} does not exist: {download} and set credentials_file to its path") from None
            except (OSError, UnicodeDecodeError) as exc:
                detail = getattr(exc, "strerror", None) or type(exc).__name__
                raise _KeyProblem(f"cannot read {source} ({detail}): check its path and permissions") from None
        try:
            info = json.loads(text)
        except ValueError as exc:
            where = f"line {exc.lineno}" if hasattr(exc, "lineno") else "?"
            raise _KeyProblem(f"{source} is not JSON (error at {where}): {download}") from None
        if not isinstance(info, dict):
            raise _KeyProblem(f"{source} is not a JSON object: {download}")
        kind = info.get("type")
        if kind != "service_account":
            raise _KeyProblem(
                f"{source} is not a service account key (its type is {kind!r}, not 'service_account'): {download}"
            )
        for name in ("client_email", "private_key", "token_uri"):
            if not isinstance(info.get(name), str) or not info[name].strip():
                raise _KeyProblem(f"{source} has no {name}: it is incomplete; {download}")
        if not info["token_uri"].startswith(("https://", "http://")):
            raise _KeyProblem(f"{source} has a token_uri that is not a URL ({info['token_uri']!r}): {download}")
        try:
            service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        except (ValueError, TypeError, KeyError, IndexError, auth_exceptions.GoogleAuthError):
            raise _KeyProblem(f"{source}: its private_key cannot be read (damaged or edited?): {download}") from None
        return info

    def _client(self) -> _Client:
        """Built once per connector instance: the discovery document and the connection pool are reused."""
        if self._client_instance is None:
            try:
                info = self._read_key()
            except _KeyProblem as exc:
                raise PermanentError(str(exc)) from None
            self._account = info["client_email"]
            self._principal = self.settings.subject or self._account
            self._client_instance = _Client(info, self.settings)
        return self._client_instance

    def _refresh(self, client: _Client) -> None:
        """A new access token from the key file's token_uri, with Google's refusals told to the owner."""
        try:
            client.credentials.refresh(client.token_request)
        except _TokenEndpointBusy as exc:
            raise TransientError(
                f"Google's token service answered HTTP {exc.status}: {exc.body}", retry_after=exc.retry_after
            ) from None
        except auth_exceptions.RefreshError as exc:
            raise self._refresh_error(exc) from None
        except TimeoutError:
            client.http.close()
            raise TransientError(f"Google's token service did not answer within {self.settings.timeout:g} s") from None
        except (auth_exceptions.TransportError, OSError, httplib2.HttpLib2Error, http.client.HTTPException) as exc:
            client.http.close()
            raise TransientError(f"cannot reach Google's token service: {exc}") from None

    def _refresh_error(self, exc: auth_exceptions.RefreshError) -> ConnectorError:
        detail = excerpt(str(exc.args[0]) if exc.args else str(exc), 300)
        if exc.retryable:
            return TransientError(f"Google's token service failed: {detail}")
        if detail.startswith("unauthorized_client") and self.settings.subject:
            return PermanentError(
                f"Google refused domain-wide delegation to act as {self.settings.subject} ({detail}): in the "
                "Google Workspace admin console (Security → API controls → Domain-wide delegation) add the "
                f"service account's client id with the scope {SCOPE}, or remove `subject` and share the calendars "
                "with the service account instead"
            )
        if "short-lived" in detail or "iat" in detail:
            return PermanentError(f"Google refused the sign-in ({detail}): set this machine's clock right (use NTP)")
        return PermanentError(
            f"Google refused the key of {self._account} ({detail}): the key or the service account was probably "
            f"deleted; create a new JSON key for it and put it in {self._key_source()}"
        )

    # --- one API call -----------------------------------------------------------------------

    def _call(
        self, client: _Client, calendar_id: str, method: str, expect: tuple[int, ...] = (), **params: Any
    ) -> tuple[int, Any]:
        """Run events.<method>(**params) once; (200, result), or (status, None) for an expected status."""
        if not client.credentials.valid:
            self._refresh(client)
        try:
            try:
                result = getattr(client.events, method)(**params).execute(num_retries=0)
            except HttpError as exc:
                if exc.resp.status != 401:
                    raise
                self._refresh(client)  # the token was revoked or expired early: one new token, one more try
                result = getattr(client.events, method)(**params).execute(num_retries=0)
        except HttpError as exc:
            if exc.resp.status in expect:
                return exc.resp.status, None
            raise self._api_error(exc, calendar_id) from None
        except TimeoutError:
            client.http.close()
            raise TransientError(
                f"Google Calendar did not answer within {self.settings.timeout:g} s ({method} in {calendar_id})"
            ) from None
        except (OSError, httplib2.HttpLib2Error, http.client.HTTPException) as exc:
            client.http.close()
            raise TransientError(f"cannot reach Google Calendar at {self.settings.api_endpoint}: {exc}") from None
        return 200, result

    def _api_error(self, exc: HttpError, calendar_id: str) -> ConnectorError:
        """Google's answer as an error a salon owner can act on."""
        status = exc.resp.status
        reason, message = _google_reason(exc.content)
        answer = f"HTTP {status}" + (f" {reason}" if reason else "") + (f": {message}" if message else "")
        retry_after = parse_retry_after(exc.resp.get("retry-after"))
        principal = self._principal
        if status in (408, 429) or status >= 500 or (status == 403 and reason in _RATE_LIMIT_REASONS):
            return TransientError(f"Google Calendar is busy ({answer}); will retry", retry_after=retry_after)
        if status == 403 and reason in _DAILY_QUOTA_REASONS:
            return TransientError(
                f"the Google Calendar daily quota is used up ({answer}); will retry later",
                retry_after=retry_after or DAILY_QUOTA_RETRY_AFTER,
            )
        if status == 401:
            return PermanentError(
                f"Google did not accept the credentials of {principal} ({answer}): check that {self._key_source()} "
                "holds a current key of that service account (a deleted key stops working) and that this "
                "machine's clock is right"
            )
        if status == 404:
            return PermanentError(
                f"calendar {calendar_id} is not shared with {principal} (or does not exist): share it with "
                f"{principal} with 'Make changes to events' ({_SHARE_HOWTO}) and check the calendar id in the config"
            )
        if status == 403 and reason in _API_DISABLED_REASONS:
            return PermanentError(
                f"the Google Calendar API is not enabled in the Google Cloud project of {principal} ({answer}): "
                "enable it (Google Cloud console → APIs & Services → Library → Google Calendar API → Enable)"
            )
        if status == 403 and reason == "forbiddenForServiceAccounts":
            return PermanentError(
                f"Google refuses this to service accounts in calendar {calendar_id} ({answer}): share the calendar "
                f"with {principal} with 'Make changes to events', or set up domain-wide delegation and `subject`"
            )
        if status == 403:
            return PermanentError(
                f"calendar {calendar_id} does not let {principal} change events ({answer}): share it with "
                f"{principal} with 'Make changes to events' ({_SHARE_HOWTO})"
            )
        return PermanentError(f"Google Calendar refused the request for calendar {calendar_id}: {answer}")

    # --- the action ---------------------------------------------------------------------------

    def send(self, request: ActionRequest) -> SendResult:
        booking = _booking(request)
        booking_id = str(booking["id"])
        event_id = google_event_id(request.tenant_id, booking_id)
        fields = request.fields
        state = booking_state(booking, request.event_type)
        target = self._calendar_for(booking, fields)
        store = request.store
        store_key = f"booking:{request.tenant_id}:{booking_id}"
        # Every calendar that may hold a copy, written *before* each write: a write whose answer
        # was lost, or a clean-up that failed, is found and cleaned by the next attempt.
        copies_key = f"calendars:{request.tenant_id}:{booking_id}"
        stored = store.get(store_key) if store is not None else None
        copies = set(json.loads(store.get(copies_key) or "[]")) if store is not None else set()
        where = stored or self._previous_calendar(request) or target
        client = self._client()

        if state == CANCELLED and fields.get("on_cancel", "delete") == "delete":
            statuses = [self._delete(client, calendar, event_id) for calendar in sorted(copies | {where})]
            if store is not None:
                store.delete(store_key)
                store.delete(copies_key)
            done = "deleted" if 200 in statuses else "nothing to delete (already gone)"
            return SendResult(
                detail=f"booking {booking_id} cancelled: {done}, event {event_id} in {where}",
                data={"calendar_id": where, "event_id": event_id, "operation": "delete"},
            )

        body = self._event_body(event_id, booking, fields, state, request)
        exists = where == target and stored is not None
        if store is not None:
            store.set(copies_key, json.dumps(sorted(copies | {where, target})), ttl=STORE_TTL)
        if where != target:
            moved = self._move(client, where, target, event_id)
            exists = moved in (200, 409)  # 409: the new calendar already holds this id (an earlier stay)
        operation = self._upsert(client, target, body, exists)
        if store is not None:
            store.set(store_key, target, ttl=STORE_TTL)
        # The entry now lives in `target`; remove any other copy (404/410: none there).
        for calendar in sorted((copies | {where}) - {target}):
            self._delete(client, calendar, event_id)
        if store is not None:
            store.set(copies_key, json.dumps([target]), ttl=STORE_TTL)
        if where != target:
            operation = f"{operation} (moved from {where})"
        return SendResult(
            detail=f"booking {booking_id} ({state}): {operation} event {event_id} in {target}",
            data={"calendar_id": target, "event_id": event_id, "operation": operation},
        )

    def _delete(self, client: _Client, calendar_id: str, event_id: str) -> int:
        """Delete one copy; 404/410 (nothing there) is fine."""
        status, _ = self._call(
            client,
            calendar_id,
            "delete",
            expect=(404, 410),
            calendarId=calendar_id,
            eventId=event_id,
            sendUpdates="none",
        )
        return status

    def _move(self, client: _Client, source: str, target: str, event_id: str) -> int:
        """events.move to the new professional's calendar: 200 moved, 404/410 nothing to move, 409 the
        target already has this id, 400/403 Google would not move it."""
        status, _ = self._call(
            client,
            target,
            "move",
            expect=(400, 403, 404, 409, 410),
            calendarId=source,
            eventId=event_id,
            destination=target,
            sendUpdates="none",
        )
        return status

    def _upsert(self, client: _Client, calendar_id: str, body: dict[str, Any], exists: bool) -> str:
        """Update the event, or insert it; an id Google already knows (even deleted) is taken over."""
        event_id = body["id"]
        params = {"calendarId": calendar_id, "sendUpdates": "none"}
        if exists:
            status, _ = self._call(
                client, calendar_id, "update", expect=(404, 410), eventId=event_id, body=body, **params
            )
            if status == 200:
                return "updated"
        status, _ = self._call(client, calendar_id, "insert", expect=(409,), body=body, **params)
        if status == 200:
            return "inserted"
        # 409: the id exists in this calendar, live or deleted earlier (Google keeps it as cancelled).
        status, _ = self._call(client, calendar_id, "update", expect=(404, 410), eventId=event_id, body=body, **params)
        if status == 200:
            return "updated"
        raise TransientError(
            f"Google answered 409 (exists) to inserting event {event_id} in {calendar_id} and then {status} "
            "to updating it; will retry"
        )

    def _calendar_for(self, booking: Mapping[str, Any], fields: dict[str, Any]) -> str:
        override = str(fields.get("calendar_id") or "").strip()
        if override:
            return override
        calendars = self.settings.calendars
        professional = booking.get("profesional")
        if "profesional" not in booking and calendars.by_professional:
            raise _missing(booking, "profesional")
        professional_id = _professional_id(professional)
        if professional_id is not None and professional_id in calendars.by_professional:
            return calendars.by_professional[professional_id]
        if calendars.default:
            return calendars.default
        name = professional.get("nombre") if isinstance(professional, Mapping) else None
        label = f"{professional_id} ({name})" if name else str(professional_id)
        raise PermanentError(
            f'no calendar for professional {label}: add "{professional_id}": <their calendar id> under '
            f"calendars.by_professional of connector {self.name!r}, or set calendars.default"
        )

    def _previous_calendar(self, request: ActionRequest) -> str | None:
        """The calendar of the professional a booking.updated moved it from (when the store has no record)."""
        changes = request.data.get("changes")
        if not isinstance(changes, Mapping):
            return None
        for key in ("profesional", "profesional_id"):
            change = changes.get(key)
            if isinstance(change, Mapping) and change.get("old") is not None:
                old = _professional_id(change["old"])
                if old is not None:
                    return self.settings.calendars.by_professional.get(old) or self.settings.calendars.default
        return None

    def _zone(self, request: ActionRequest) -> ZoneInfo:
        name = self.settings.timezone or request.timezone
        if not name:
            raise PermanentError(
                f"connector {self.name!r} does not know the salon's time zone for booking times: "
                "set `timezone:` (e.g. Europe/Madrid) in its settings"
            )
        return ZoneInfo(str(name))

    def _event_body(
        self, event_id: str, booking: Mapping[str, Any], fields: dict[str, Any], state: str, request: ActionRequest
    ) -> dict[str, Any]:
        zone = self._zone(request)
        start, end = booking_times(booking, zone)
        summary = str(fields.get("summary") or "").strip()
        color = str(fields.get("color_id") or "").strip() or None
        transparency = "opaque"
        if state in (CANCELLED, COMPLETED, NO_SHOW):
            summary = str(fields.get(f"{state}_prefix") or "") + summary
            color = fields.get(f"{state}_color_id") or color
        if state == CANCELLED:
            transparency = "transparent"  # kept for the record, but the slot shows as free
        if color is not None and color not in EVENT_COLORS:
            raise PermanentError(f"color_id rendered to {color!r}: a Google event colour is 1-11")
        body: dict[str, Any] = {
            "id": event_id,
            "status": "confirmed",
            "summary": summary[:1024],
            "description": str(fields.get("description") or ""),
            "start": {"dateTime": start.isoformat(), "timeZone": zone.key},
            "end": {"dateTime": end.isoformat(), "timeZone": zone.key},
            "transparency": transparency,
            "extendedProperties": {
                "private": {
                    "salonBridgeTenant": request.tenant_id[:1024],
                    "salonBridgeBooking": str(booking["id"])[:1024],
                    "salonBridgeState": state,
                    "salonBridgeEvent": request.event_id[:1024],
                }
            },
        }
        location = str(fields.get("location") or "").strip()
        if location:
            body["location"] = location
        if color is not None:
            body["colorId"] = color
        return body

    # --- checks -------------------------------------------------------------------------------

    def calendar_ids(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        """Every calendar the config can write in: `calendars`, and actions' fixed `calendar_id`."""
        calendars = self.settings.calendars
        ids = {calendars.default} if calendars.default else set()
        ids |= set(calendars.by_professional.values())
        for fields in (actions or {}).values():
            fixed = getattr(fields, "calendar_id", None)
            if isinstance(fixed, str) and fixed.strip() and not is_template(fixed):
                ids.add(fixed.strip())
        return sorted(ids)

    def offline_check(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        """The key is readable, JSON, a service account key with client_email, token_uri and a usable private key."""
        try:
            self._read_key()
        except _KeyProblem as exc:
            return [str(exc)]
        return []

    def online_check(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        """Sign in, then confirm each configured calendar is readable and writable (insert + delete a probe)."""
        if self.offline_check():
            return ["Google not reached: the key must be fixed first"]
        try:
            client = self._client()
            self._refresh(client)
        except ConnectorError as exc:
            return [exc.reason]
        problems = []
        for calendar_id in self.calendar_ids(actions):
            probe_id = "sbprobe" + secrets.token_hex(8)  # hex digits are base32hex too
            probe = {
                "id": probe_id,
                "summary": "salon-bridge write check (deleted right away)",
                "start": {"dateTime": "2000-01-01T00:00:00Z"},
                "end": {"dateTime": "2000-01-01T00:01:00Z"},
                "transparency": "transparent",
            }
            try:
                self._call(client, calendar_id, "list", calendarId=calendar_id, maxResults=1)
                self._call(client, calendar_id, "insert", calendarId=calendar_id, body=probe, sendUpdates="none")
                self._call(
                    client,
                    calendar_id,
                    "delete",
                    expect=(404, 410),
                    calendarId=calendar_id,
                    eventId=probe_id,
                    sendUpdates="none",
                )
            except TransientError as exc:
                problems.append(f"calendar {calendar_id}: {exc.reason}; try the check again")
            except PermanentError as exc:
                problems.append(exc.reason)
        return problems

    def close(self) -> None:
        if self._client_instance is not None:
            self._client_instance.close()
            self._client_instance = None


def booking_state(booking: Mapping[str, Any], event_type: str) -> str:
    """The booking's state: its (newest) estado when known, else what the event type says."""
    estado = booking.get("estado")
    if isinstance(estado, str) and estado.strip():
        known = _ESTADOS.get(estado.strip().lower())
        if known is not None:
            return known
        return ACTIVE
    return _TYPE_STATES.get(event_type, ACTIVE)


def booking_times(booking: Mapping[str, Any], zone: ZoneInfo) -> tuple[datetime, datetime]:
    """Start and end as aware datetimes in `zone` (wall-clock fecha + hora_*; DST-correct).
    Bad data (a date or duration no calendar can hold) is a PermanentError naming the field."""
    for name in ("fecha", "hora_inicio"):
        if not booking.get(name):
            raise _missing(booking, name)
    booking_id = booking.get("id")
    try:
        day = date.fromisoformat(str(booking["fecha"])[:10])
    except ValueError:
        raise PermanentError(f"booking {booking_id} has fecha {booking['fecha']!r}, expected YYYY-MM-DD") from None
    begins = _clock(booking, "hora_inicio")
    ends = _clock(booking, "hora_fin") if booking.get("hora_fin") else None
    minutes = _service_minutes(booking)
    try:
        return _span(day, begins, ends, minutes, zone)
    except (ValueError, OverflowError):
        raise PermanentError(
            f"booking {booking_id} on fecha {booking['fecha']!r} would end outside the dates a calendar can hold "
            "(up to 9999-12-31): correct the booking's date on the platform"
        ) from None


def _span(day: date, begins: time, ends: time | None, minutes: float, zone: ZoneInfo) -> tuple[datetime, datetime]:
    start = wall_clock(day, begins, zone)
    if ends is None:
        # Elapsed time, not wall time: a 60-minute service across a DST change still lasts 60 minutes.
        elapsed = timedelta(minutes=minutes or DEFAULT_DURATION_MINUTES)
        return start, (start.astimezone(UTC) + elapsed).astimezone(zone)
    # After midnight when the end is not later on the wall clock; compared on the wall clock, since
    # the start may have moved forward out of a DST gap.
    end_day = day + timedelta(days=1) if ends <= begins else day
    end = wall_clock(end_day, ends, zone)
    if end <= start:
        # A booking inside the skipped hour (02:30-03:30 in spring): its start moved forward by the gap
        # and now meets its end, so it keeps its booked length from the moved start.
        booked = datetime.combine(end_day, ends) - datetime.combine(day, begins)
        end = (start.astimezone(UTC) + booked).astimezone(zone)
    return start, end


MAX_BOOKING_MINUTES = 24 * 60


def _service_minutes(booking: Mapping[str, Any]) -> float:
    """The sum of the services' duracion_minutos; a value no booking can have is a PermanentError."""
    minutes = 0.0
    for index, service in enumerate(booking.get("servicios") or []):
        value = service.get("duracion_minutos") if isinstance(service, Mapping) else None
        if value is None or value == "":
            continue
        try:
            number = float(value) if not isinstance(value, bool) else -1.0
        except (TypeError, ValueError, OverflowError):
            number = -1.0
        if not 0 <= number <= MAX_BOOKING_MINUTES:  # also false for NaN
            raise PermanentError(
                f"booking {booking.get('id')} has servicios[{index}].duracion_minutos {excerpt(repr(value), 60)}, "
                f"expected a number of minutes from 0 to {MAX_BOOKING_MINUTES}"
            )
        minutes += number
    if minutes > MAX_BOOKING_MINUTES:
        raise PermanentError(
            f"booking {booking.get('id')} lasts {minutes:g} minutes by its servicios' duracion_minutos, "
            f"more than a day ({MAX_BOOKING_MINUTES}): correct the services' durations on the platform"
        )
    return minutes


def _clock(booking: Mapping[str, Any], name: str) -> time:
    value = booking[name]
    try:
        return time.fromisoformat(str(value).strip())
    except ValueError:
        raise PermanentError(f"booking {booking.get('id')} has {name} {value!r}, expected HH:MM") from None


def _booking(request: ActionRequest) -> Mapping[str, Any]:
    booking = request.booking if request.booking is not None else request.data.get("booking")
    if not isinstance(booking, Mapping) or booking.get("id") in (None, ""):
        raise PermanentError(
            f"event {request.event_id} ({request.event_type}) carries no booking with an id: sync_booking only "
            "handles booking.* events; restrict the mapping's `on:` to them"
        )
    return booking


def _professional_id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    if value is None or value == "":
        return None
    return str(value)


def _missing(booking: Mapping[str, Any], name: str) -> MissingDataError:
    """No event received so far said this: the core waits for the earlier event, then gives up."""
    explain = getattr(booking, "missing", None)
    if callable(explain):
        return MissingDataError(f"sync_booking: {explain(name)}")
    return MissingDataError(f"sync_booking: booking {booking.get('id')}: {name} unknown (booking.created not received)")


def _google_reason(content: bytes | str | None) -> tuple[str, str]:
    """(reason, message) from Google's JSON error body."""
    try:
        data = json.loads(content or b"")
    except (ValueError, TypeError):
        return "", excerpt(content, 300)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        errors = error.get("errors") or []
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        reason = str(first.get("reason") or error.get("status") or "")
        # The newer format names the disabled API in details[].reason.
        for detail in error.get("details") or []:
            if isinstance(detail, dict) and detail.get("reason") in _API_DISABLED_REASONS:
                reason = str(detail["reason"])
        return reason, excerpt(str(error.get("message") or ""), 300)
    if isinstance(error, str):
        return error, excerpt(str(data.get("error_description") or ""), 300)
    return "", excerpt(content, 300)
