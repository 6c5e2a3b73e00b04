"""A fake Google on localhost: the OAuth token endpoint (service-account JWT grant) and the Calendar v3
`events` and `calendars` resources, with Google's semantics and switchable failures.

It speaks the wire protocol google-api-python-client and google-auth use, so tests drive it through
the real libraries: point a key file's `token_uri` at `token_uri` and `api_endpoint` at `api_endpoint`.
What it checks, like Google: the grant type, the RS256 signature of the JWT assertion against the
service account's public key, its audience, lifetime and scope, the bearer token on every API call,
the caller's access to each calendar, client-supplied event ids (base32hex, 5-1024 chars), and the
time range. Deleted events are kept as `status: cancelled`, so inserting their id again answers 409.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.http_server import LocalHTTPServer

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CALENDAR_SCOPES = {
    "https://www.googleapis.com/auth/calendar",
    "https://www.googleapis.com/auth/calendar.events",
}
EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")
EVENT_COLORS = {str(n) for n in range(1, 12)}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    410: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}
WRITE_ROLES = {"writer", "owner"}
READ_ROLES = {"reader", "writer", "owner"}


@dataclass
class Failure:
    """A scripted answer for the next matching request(s).

    status 0 with `delay` is a slow answer: with `apply` the request takes effect and its normal answer
    comes late (Google did the work, the client may have given up); without, it never takes effect and
    a late 503 follows. With a status, `apply` makes the request take effect before the error answer.
    """

    status: int
    reason: str | None = None
    message: str = ""
    retry_after: str | None = None
    delay: float = 0.0
    apply: bool = False
    target: str = "api"  # "api" or "token"
    method: str | None = None  # only requests with this HTTP method
    times: int = 1


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class ServiceAccount:
    email: str
    public_key: rsa.RSAPublicKey
    delegation_subjects: set[str] = field(default_factory=set)


@dataclass
class Token:
    principal: str
    scopes: set[str]
    expires_at: float


class GoogleError(Exception):
    """An answer in Google's JSON error format."""

    def __init__(self, status: int, reason: str, message: str, domain: str = "global"):
        super().__init__(message)
        self.status, self.reason, self.message, self.domain = status, reason, message, domain

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}],
                "status": STATUS_NAMES.get(self.status, "UNKNOWN"),
            }
        }


class OAuthError(Exception):
    """An answer in the OAuth token endpoint's error format."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_file_info(
    private_key: rsa.RSAPrivateKey, email: str, token_uri: str, key_id: str = "0123abcd"
) -> dict[str, Any]:
    """A service-account key file as Google's console downloads it, pointing at `token_uri`."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    project = email.split("@", 1)[1].split(".", 1)[0]
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": "104857600000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _parse_time(value: Any, where: str) -> datetime:
    if not isinstance(value, dict) or not isinstance(value.get("dateTime"), str):
        raise GoogleError(400, "required", f"Missing {where} time.")
    try:
        moment = datetime.fromisoformat(value["dateTime"])
    except ValueError:
        raise GoogleError(400, "invalid", f"Invalid {where} time.") from None
    if moment.tzinfo is None:
        raise GoogleError(400, "invalid", f"Invalid {where} time: an offset is required.")
    return moment


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeGoogle:
    """Google's token endpoint and Calendar v3 on 127.0.0.1; inspect `calendars` for the outcome."""

    def __init__(self) -> None:
        self.accounts: dict[str, ServiceAccount] = {}
        self.tokens: dict[str, Token] = {}
        # calendar id -> {principal: role}
        self.acl: dict[str, dict[str, str]] = {}
        # calendar id -> {event id: event resource}
        self.calendars: dict[str, dict[str, dict[str, Any]]] = {}
        self.failures: list[Failure] = []
        self.requests: list[Recorded] = []
        self.lock = threading.RLock()
        self._stopping = threading.Event()
        self._active = 0
        self._idle = threading.Condition(self.lock)
        self._open_sockets: set[Any] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # an idle keep-alive connection is closed by the server after this

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake._open_sockets.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with fake.lock:
                        fake._open_sockets.discard(self.connection)

            def _handle(self) -> None:
                with fake.lock:
                    fake._active += 1
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                    status, headers, payload = fake.dispatch(self.command, self.path, dict(self.headers), body)
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timeout): nothing to answer
                finally:
                    with fake.lock:
                        fake._active -= 1
                        fake._idle.notify_all()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LocalHTTPServer(Handler)

    # --- set-up and inspection -------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def api_endpoint(self) -> str:
        return f"{self.url}/calendar/v3/"

    def start(self) -> FakeGoogle:
        self._http.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut short slow answers, close every connection and wait for the handlers."""
        self._stopping.set()
        self._http.shutdown()
        with self.lock:
            for sock in list(self._open_sockets):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass
            deadline = time.monotonic() + 5
            while self._active and time.monotonic() < deadline:
                self._idle.wait(0.05)
        self._http.close()

    def add_service_account(
        self, email: str, public_key: rsa.RSAPublicKey, delegation_subjects: set[str] | None = None
    ) -> None:
        with self.lock:
            self.accounts[email] = ServiceAccount(email, public_key, set(delegation_subjects or ()))

    def remove_service_account(self, email: str) -> None:
        """As when the service account (or its key) is deleted in the Cloud console."""
        with self.lock:
            self.accounts.pop(email, None)

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def add_calendar(self, calendar_id: str, shared_with: dict[str, str] | None = None) -> None:
        """A calendar, shared with principals as "writer" (Make changes to events), "reader" or "owner"."""
        with self.lock:
            self.calendars.setdefault(calendar_id, {})
            self.acl[calendar_id] = dict(shared_with or {})

    def share(self, calendar_id: str, principal: str, role: str | None) -> None:
        with self.lock:
            if role is None:
                self.acl[calendar_id].pop(principal, None)
            else:
                self.acl[calendar_id][principal] = role

    def fail(
        self,
        status: int,
        reason: str | None = None,
        message: str = "",
        *,
        retry_after: str | None = None,
        delay: float = 0.0,
        apply: bool = False,
        target: str = "api",
        method: str | None = None,
        times: int = 1,
    ) -> None:
        """Script the answer of the next `times` matching requests."""
        with self.lock:
            self.failures.append(Failure(status, reason, message, retry_after, delay, apply, target, method, times))

    def slow(self, delay: float, *, apply: bool = True, method: str | None = None, times: int = 1) -> None:
        """Answer the next matching API request(s) normally but only after `delay` seconds."""
        self.fail(0, delay=delay, apply=apply, method=method, times=times)

    def event(self, calendar_id: str, event_id: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.calendars.get(calendar_id, {}).get(event_id)
            return copy.deepcopy(found) if found is not None else None

    def live_events(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every event not cancelled, across calendars, by (calendar id, event id)."""
        with self.lock:
            return {
                (cal, eid): copy.deepcopy(event)
                for cal, events in self.calendars.items()
                for eid, event in events.items()
                if event["status"] != "cancelled"
            }

    def forget(self, calendar_id: str, event_id: str) -> None:
        """Remove an event without a trace (as after Google purged a deleted event)."""
        with self.lock:
            self.calendars[calendar_id].pop(event_id, None)

    def api_requests(self, method: str | None = None) -> list[Recorded]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r.path.startswith("/calendar/v3/") and (method is None or r.method == method)
            ]

    def token_requests(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path == "/token"]

    # --- the protocol ----------------------------------------------------------------------

    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        target = "token" if parts.path == "/token" else "api"
        with self.lock:
            self.requests.append(Recorded(method, parts.path, query, headers, body))
            failure = self._take_failure(target, method)
        if failure is not None and not failure.apply:
            self._pause(failure.delay)
            if not failure.status:
                failure.status, failure.reason = 503, "backendError"
            return self._failure_answer(failure)
        if target == "token":
            answer = self._token(headers, body)
        else:
            answer = self._api(method, parts.path, query, headers, body)
        if failure is not None:
            self._pause(failure.delay)
            if failure.status:
                return self._failure_answer(failure)
        return answer

    def _take_failure(self, target: str, method: str) -> Failure | None:
        for failure in self.failures:
            if failure.target == target and (failure.method is None or failure.method == method):
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.remove(failure)
                return failure
        return None

    def _pause(self, delay: float) -> None:
        if delay:
            self._stopping.wait(delay)

    def _failure_answer(self, failure: Failure) -> tuple[int, dict, bytes]:
        headers = {"Content-Type": "application/json; charset=UTF-8"}
        if failure.retry_after is not None:
            headers["Retry-After"] = failure.retry_after
        if failure.target == "token":
            error = failure.reason or "internal_failure"
            payload = {"error": error, "error_description": failure.message or "Internal error."}
        else:
            reason = failure.reason or {429: "rateLimitExceeded", 500: "backendError", 503: "backendError"}.get(
                failure.status, "error"
            )
            domain = "usageLimits" if "Limit" in reason or reason == "quotaExceeded" else "global"
            message = failure.message or {
                "rateLimitExceeded": "Rate Limit Exceeded",
                "userRateLimitExceeded": "User Rate Limit Exceeded",
                "backendError": "Backend Error",
            }.get(reason, reason)
            payload = GoogleError(failure.status, reason, message, domain).body()
        return failure.status, headers, json.dumps(payload).encode()

    def _json(self, status: int, payload: Any) -> tuple[int, dict, bytes]:
        if payload is None:
            return status, {}, b""
        return status, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(payload).encode()

    # token endpoint: RFC 7523 JWT bearer grant, as Google's oauth2.googleapis.com/token

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        try:
            token, lifetime = self._grant(headers, body)
        except OAuthError as exc:
            return self._json(exc.status, {"error": exc.error, "error_description": exc.description})
        return self._json(200, {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})

    def _grant(self, headers: dict[str, str], body: bytes) -> tuple[str, int]:
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise OAuthError(400, "invalid_request", "Invalid request: expected a form-encoded body.")
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != JWT_GRANT:
            raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
        assertion = form.get("assertion", "")
        pieces = assertion.split(".")
        if len(pieces) != 3:
            raise OAuthError(400, "invalid_grant", "Invalid JWT: the assertion is not a JWT.")
        try:
            header = json.loads(_b64url_decode(pieces[0]))
            claims = json.loads(_b64url_decode(pieces[1]))
            signature = _b64url_decode(pieces[2])
        except ValueError:
            raise OAuthError(400, "invalid_grant", "Invalid JWT: the assertion cannot be decoded.") from None
        if header.get("alg") != "RS256":
            raise OAuthError(400, "invalid_grant", "Invalid JWT: alg must be RS256.")
        with self.lock:
            account = self.accounts.get(claims.get("iss", ""))
        if account is None:
            raise OAuthError(400, "invalid_grant", "Invalid grant: account not found")
        try:
            account.public_key.verify(
                signature, f"{pieces[0]}.{pieces[1]}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            raise OAuthError(400, "invalid_grant", "Invalid JWT Signature.") from None
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            raise OAuthError(400, "invalid_grant", "Invalid JWT: Failed audience check.")
        now = time.time()
        iat, exp = claims.get("iat", 0), claims.get("exp", 0)
        if not (iat - 300 <= now <= exp + 300) or exp - iat > 3600:
            raise OAuthError(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            )
        scopes = set(str(claims.get("scope", "")).split())
        if not scopes:
            raise OAuthError(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        subject = claims.get("sub")
        if subject is not None and subject not in account.delegation_subjects:
            raise OAuthError(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client not authorized "
                "for any of the scopes requested.",
            )
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = Token(subject or account.email, scopes, now + 3599)
        return token, 3599

    # Calendar v3

    def _api(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict, bytes]:
        try:
            principal = self._authenticate(headers)
            segments = [unquote(s) for s in path.removeprefix("/calendar/v3/").split("/")]
            status, payload = self._route(principal, method, segments, query, body)
        except GoogleError as exc:
            return self._json(exc.status, exc.body())
        return self._json(status, payload)

    def _authenticate(self, headers: dict[str, str]) -> str:
        authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        with self.lock:
            token = self.tokens.get(authorization.removeprefix("Bearer ").strip())
        if not authorization.startswith("Bearer ") or token is None or token.expires_at < time.time():
            raise GoogleError(401, "authError", "Invalid Credentials")
        if not token.scopes & CALENDAR_SCOPES:
            raise GoogleError(403, "insufficientPermissions", "Insufficient Permission")
        return token.principal

    def _route(
        self, principal: str, method: str, seg: list[str], query: dict[str, list[str]], body: bytes
    ) -> tuple[int, Any]:
        if len(seg) == 2 and seg[0] == "calendars" and method == "GET":
            self._access(principal, seg[1], write=False)
            return 200, {"kind": "calendar#calendar", "id": seg[1], "summary": seg[1], "timeZone": "Europe/Madrid"}
        if len(seg) < 3 or seg[0] != "calendars" or seg[2] != "events":
            raise GoogleError(404, "notFound", "Not Found")
        calendar_id = seg[1]
        if len(seg) == 3 and method == "POST":
            return self._insert(principal, calendar_id, self._body(body))
        if len(seg) == 3 and method == "GET":
            return self._list(principal, calendar_id, query)
        if len(seg) == 4 and method == "GET":
            return 200, self._existing(principal, calendar_id, seg[3], write=False)
        if len(seg) == 4 and method in ("PUT", "PATCH"):
            return self._update(principal, calendar_id, seg[3], self._body(body), replace=method == "PUT")
        if len(seg) == 4 and method == "DELETE":
            return self._delete(principal, calendar_id, seg[3])
        if len(seg) == 5 and seg[4] == "move" and method == "POST":
            return self._move(principal, calendar_id, seg[3], (query.get("destination") or [""])[0])
        raise GoogleError(404, "notFound", "Not Found")

    def _body(self, body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body or b"{}")
        except ValueError:
            raise GoogleError(400, "parseError", "Parse Error") from None
        if not isinstance(value, dict):
            raise GoogleError(400, "parseError", "Parse Error")
        return value

    def _access(self, principal: str, calendar_id: str, write: bool) -> dict[str, dict[str, Any]]:
        """The calendar's events if `principal` may read (or write) it; Google's 404 / 403 otherwise."""
        with self.lock:
            role = self.acl.get(calendar_id, {}).get(principal)
            events = self.calendars.get(calendar_id)
        if events is None or role not in READ_ROLES:
            raise GoogleError(404, "notFound", "Not Found")
        if write and role not in WRITE_ROLES:
            raise GoogleError(403, "requiredAccessLevel", "You need to have writer access to this calendar.")
        return events

    def _existing(self, principal: str, calendar_id: str, event_id: str, write: bool) -> dict[str, Any]:
        events = self._access(principal, calendar_id, write)
        with self.lock:
            event = events.get(event_id)
            if event is None:
                raise GoogleError(404, "notFound", "Not Found")
            return copy.deepcopy(event)

    def _validate(self, event: dict[str, Any]) -> None:
        start = _parse_time(event.get("start"), "start")
        end = _parse_time(event.get("end"), "end")
        if end < start:
            raise GoogleError(400, "timeRangeEmpty", "The specified time range is empty.")
        color = event.get("colorId")
        if color is not None and str(color) not in EVENT_COLORS:
            raise GoogleError(400, "invalid", "Invalid color id value.")
        if event.get("status", "confirmed") not in ("confirmed", "tentative", "cancelled"):
            raise GoogleError(400, "invalid", "Invalid status value.")
        if event.get("transparency", "opaque") not in ("opaque", "transparent"):
            raise GoogleError(400, "invalid", "Invalid transparency value.")
        if event.get("attendees"):
            raise GoogleError(
                403,
                "forbiddenForServiceAccounts",
                "Service accounts cannot invite attendees without Domain-Wide Delegation of Authority.",
            )

    def _stamp(self, event: dict[str, Any], calendar_id: str) -> None:
        event["kind"] = "calendar#event"
        event["etag"] = f'"{secrets.randbits(48)}"'
        event["updated"] = _now()
        event["htmlLink"] = f"https://www.google.com/calendar/event?eid={event['id']}"
        event["organizer"] = {"email": calendar_id}
        event.setdefault("status", "confirmed")

    def _insert(self, principal: str, calendar_id: str, event: dict[str, Any]) -> tuple[int, Any]:
        events = self._access(principal, calendar_id, write=True)
        event_id = event.get("id")
        if event_id is None:
            event_id = event["id"] = secrets.token_hex(13)
        if not isinstance(event_id, str) or not EVENT_ID.match(event_id):
            raise GoogleError(400, "invalid", "Invalid resource id value.")
        self._validate(event)
        with self.lock:
            if event_id in events:
                raise GoogleError(409, "duplicate", "The requested identifier already exists.")
            event = copy.deepcopy(event)
            event.update(created=_now(), sequence=0, iCalUID=f"{event_id}@google.com", creator={"email": principal})
            self._stamp(event, calendar_id)
            events[event_id] = event
            return 200, copy.deepcopy(event)

    def _update(
        self, principal: str, calendar_id: str, event_id: str, body: dict[str, Any], replace: bool
    ) -> tuple[int, Any]:
        """PUT replaces the resource, PATCH merges; both work on a cancelled event (setting
        `status: confirmed` restores it, leaving status out keeps it cancelled)."""
        events = self._access(principal, calendar_id, write=True)
        with self.lock:
            old = events.get(event_id)
            if old is None:
                raise GoogleError(404, "notFound", "Not Found")
            if body.get("id", event_id) != event_id:
                raise GoogleError(400, "invalid", "Invalid resource id value.")
            kept = {k: old[k] for k in ("id", "created", "iCalUID", "creator", "status") if k in old}
            new = {**kept, **copy.deepcopy(body)} if replace else {**copy.deepcopy(old), **copy.deepcopy(body)}
            self._validate(new)
            new["sequence"] = old.get("sequence", 0) + 1
            self._stamp(new, calendar_id)
            events[event_id] = new
            return 200, copy.deepcopy(new)

    def _delete(self, principal: str, calendar_id: str, event_id: str) -> tuple[int, Any]:
        events = self._access(principal, calendar_id, write=True)
        with self.lock:
            event = events.get(event_id)
            if event is None:
                raise GoogleError(404, "notFound", "Not Found")
            if event["status"] == "cancelled":
                raise GoogleError(410, "deleted", "Resource has been deleted")
            event["status"] = "cancelled"
            event["updated"] = _now()
            return 204, None

    def _move(self, principal: str, calendar_id: str, event_id: str, destination: str) -> tuple[int, Any]:
        """Moves the event (same id) to `destination`; the source keeps a cancelled copy, as a deletion."""
        source = self._access(principal, calendar_id, write=True)
        target = self._access(principal, destination, write=True)
        with self.lock:
            event = source.get(event_id)
            if event is None:
                raise GoogleError(404, "notFound", "Not Found")
            if event["status"] == "cancelled":
                raise GoogleError(410, "deleted", "Resource has been deleted")
            if event_id in target:
                raise GoogleError(409, "duplicate", "The requested identifier already exists.")
            moved = copy.deepcopy(event)
            moved["sequence"] = event.get("sequence", 0) + 1
            self._stamp(moved, destination)
            target[event_id] = moved
            event["status"] = "cancelled"
            event["updated"] = _now()
            return 200, copy.deepcopy(moved)

    def _list(self, principal: str, calendar_id: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        events = self._access(principal, calendar_id, write=False)
        show_deleted = (query.get("showDeleted") or ["false"])[0] == "true"
        limit = int((query.get("maxResults") or ["250"])[0])
        with self.lock:
            items = [copy.deepcopy(e) for e in events.values() if show_deleted or e["status"] != "cancelled"]
        return 200, {"kind": "calendar#events", "summary": calendar_id, "items": items[:limit]}
