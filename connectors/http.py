"""`http`: POST (or PUT/PATCH) a JSON body to a fixed URL, optionally signed with HMAC-SHA256."""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import requests
from pydantic import Field, field_validator

from connectors.base import (
    ActionFields,
    ActionRequest,
    Connector,
    PermanentError,
    SendResult,
    Settings,
    TransientError,
    excerpt,
    parse_retry_after,
)

TRANSIENT_STATUSES = {408, 425, 429}


class HttpSettings(Settings):
    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = {}
    timeout: float = Field(default=10.0, gt=0, le=120)
    signing_secret: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        return url


class HttpSend(ActionFields):
    """The JSON body; every string in it may be a template."""

    template_fields: ClassVar[tuple[str, ...]] = ("body",)

    body: Any = None


class HttpSync(HttpSend):
    """The body carries the current state of the event's booking/order: stale events are skipped."""

    syncs_state: ClassVar[bool] = True


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class HttpConnector(Connector):
    type = "http"
    settings_model = HttpSettings
    actions: ClassVar[dict[str, builtins.type[ActionFields]]] = {"send": HttpSend, "sync": HttpSync}
    secret_fields = ("headers", "signing_secret")

    settings: HttpSettings

    def __init__(self, name: str, settings: Settings):
        super().__init__(name, settings)
        assert isinstance(settings, HttpSettings)
        self._session = requests.Session()
        # Proxy settings for the one URL, read once: by default requests re-reads the environment
        # and ~/.netrc on every call.
        self._session.trust_env = False
        self._session.proxies = requests.utils.get_environ_proxies(self.settings.url)

    def send(self, request: ActionRequest) -> SendResult:
        settings = self.settings
        body = json.dumps(request.fields.get("body"), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "salon-bridge",
            "Idempotency-Key": header_value(f"{request.event_id}/{request.action_id}"),
            **settings.headers,
        }
        if settings.signing_secret:
            headers["X-Signature"] = sign(settings.signing_secret, body)
        try:
            response = self._session.request(
                settings.method,
                settings.url,
                data=body,
                headers=headers,
                timeout=settings.timeout,
                allow_redirects=False,
            )
        except requests.ReadTimeout:
            # Connected and sent: the receiver may have acted on it (it can dedupe by Idempotency-Key).
            raise TransientError(
                f"{settings.url} did not answer within {settings.timeout:g} s", maybe_delivered=True
            ) from None
        except requests.Timeout:  # could not even connect: nothing was sent
            raise TransientError(f"cannot connect to {settings.url} within {settings.timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise TransientError(f"cannot connect to {settings.url}: {_root_cause(exc)}") from None
        except (ValueError, UnicodeError) as exc:  # requests' InvalidHeader/InvalidURL are ValueErrors
            raise PermanentError(f"the request to {settings.url} cannot be sent as configured: {exc}") from None
        status = response.status_code
        answer = f"HTTP {status}: {excerpt(response.content)}"
        if 200 <= status < 300:
            return SendResult(detail=answer)
        if status in TRANSIENT_STATUSES or status >= 500:
            raise TransientError(answer, retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            raise PermanentError(f"HTTP {status}: {settings.url} redirects to {location}; put the final address in url")
        raise PermanentError(answer)

    def close(self) -> None:
        self._session.close()


def header_value(value: str) -> str:
    """`value` as an HTTP header can carry it: unchanged when it is printable ASCII, else
    percent-encoded (UTF-8), so an id with an emoji or a space at its end still goes out."""
    if value.isascii() and value.isprintable() and value == value.strip():
        return value
    return quote(value, safe="/:@!$&'()*+,;=-._~")


def _root_cause(exc: BaseException) -> str:
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return str(exc) or type(exc).__name__
