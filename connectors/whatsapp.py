"""`whatsapp`: send approved template messages through Meta's WhatsApp Business Cloud API.

There is no official Meta Python SDK: this speaks the Graph API's documented wire format with a
`requests` session (timeouts, no hidden retries). Meta's errors are classified by their `code`,
not by the HTTP status (a rate limit, 130429, arrives with HTTP 400).
"""

from __future__ import annotations

import builtins
import json
from typing import Any, ClassVar

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
    is_template,
    refuse_opted_out,
)
from connectors.phones import OPT_IN_WORDS, OPT_OUT_WORDS, Region, normalise_phone

# Meta error codes -> what the owner can do about it. Rate and pair limits are transient.
RATE_LIMIT_CODES = {130429, 131056, 80007, 4, 17, 32, 613}
RATE_LIMIT_BACKOFF = 60.0  # seconds; Meta sends no Retry-After, and pair limits last about a minute


class WhatsAppSettings(Settings):
    phone_number_id: str = Field(min_length=1)
    token: str = Field(min_length=1)
    app_secret: str = Field(min_length=1)
    verify_token: str | None = None
    api_version: str = "v21.0"
    base_url: str = "https://graph.facebook.com"
    default_region: Region = "ES"
    timeout: float = Field(default=10.0, gt=0, le=120)
    opt_out_words: list[str] = OPT_OUT_WORDS
    opt_in_words: list[str] = OPT_IN_WORDS

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        return url.rstrip("/")


class WhatsAppTemplate(ActionFields):
    """An approved template: its name and language are fixed, `to` and `parameters` are templates."""

    template_fields: ClassVar[tuple[str, ...]] = ("to", "parameters")

    to: str
    template: str
    language: str = "es"
    parameters: list[str] = []

    @field_validator("template")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if is_template(name):
            raise ValueError(
                f"template must be the approved template's name as written in Meta, not a template: {name!r}"
            )
        return name


def template_body(to: str, template: str, language: str, parameters: list[str]) -> dict[str, Any]:
    """The Cloud API's template message, as Meta documents it."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": {"name": template, "language": {"code": language}},
    }
    if parameters:
        body["template"]["components"] = [
            {"type": "body", "parameters": [{"type": "text", "text": str(value)} for value in parameters]}
        ]
    return body


def classify_error(status: int, payload: Any, template: str, sent_count: int) -> Exception:
    """Meta's error answer as a TransientError or a PermanentError an owner can act on."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        answer = f"HTTP {status}: {excerpt(json.dumps(payload) if payload is not None else '')}"
        return TransientError(answer) if status >= 500 or status == 429 else PermanentError(answer)
    code = error.get("code")
    message = str(error.get("message") or "")
    details = str((error.get("error_data") or {}).get("details") or "")
    said = excerpt(f"{message} {details}".strip())
    if code == 190:
        return PermanentError(f"WhatsApp token invalid or expired: renew the token (Meta: {said})")
    if code in (132000, 132001):
        what = (
            f"sent {sent_count} parameter(s) but the template expects a different number"
            if code == 132000
            else "the template does not exist in this language, or is not approved"
        )
        return PermanentError(f"WhatsApp template {template!r}: {what} (Meta {code}: {said})")
    if code == 131026:
        return PermanentError(f"the customer's number cannot receive WhatsApp messages (Meta 131026: {said})")
    if code == 131047:
        return PermanentError(
            "more than 24 hours since the customer last wrote: only an approved template can be sent "
            f"(Meta 131047: {said})"
        )
    if code in RATE_LIMIT_CODES:
        return TransientError(f"WhatsApp rate limit (Meta {code}: {said})", retry_after=RATE_LIMIT_BACKOFF)
    if status >= 500 or error.get("is_transient"):
        return TransientError(f"WhatsApp is unavailable (HTTP {status}, Meta {code}: {said})")
    return PermanentError(f"WhatsApp refused the message (Meta {code}: {said})")


class WhatsAppConnector(Connector):
    type = "whatsapp"
    settings_model = WhatsAppSettings
    actions: ClassVar[dict[str, builtins.type[ActionFields]]] = {"template": WhatsAppTemplate}
    secret_fields = ("token", "app_secret", "verify_token")

    settings: WhatsAppSettings

    def __init__(self, name: str, settings: Settings):
        super().__init__(name, settings)
        assert isinstance(settings, WhatsAppSettings)
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.proxies = requests.utils.get_environ_proxies(self.settings.base_url)
        self._session.headers["Authorization"] = f"Bearer {self.settings.token}"

    @property
    def messages_url(self) -> str:
        s = self.settings
        return f"{s.base_url}/{s.api_version}/{s.phone_number_id}/messages"

    def send(self, request: ActionRequest) -> SendResult:
        fields = request.fields
        parameters = fields.get("parameters") or []
        if not isinstance(parameters, list):
            raise PermanentError("parameters must be a list of values, one per {{n}} in the template")
        to = normalise_phone(str(fields.get("to") or ""), self.settings.default_region)
        refuse_opted_out(request, to)
        template = str(fields["template"])
        body = template_body(to, template, str(fields.get("language") or "es"), [str(p) for p in parameters])
        timeout = self.settings.timeout
        try:
            response = self._session.post(self.messages_url, json=body, timeout=timeout, allow_redirects=False)
        except requests.ReadTimeout:
            raise TransientError(f"WhatsApp did not answer within {timeout:g} s", maybe_delivered=True) from None
        except requests.Timeout:
            raise TransientError(f"cannot connect to WhatsApp within {timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise TransientError(f"cannot connect to WhatsApp: {type(exc).__name__}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if 200 <= response.status_code < 300 and isinstance(payload, dict):
            messages = payload.get("messages") or [{}]
            wamid = str(messages[0].get("id") or "")
            if wamid:
                return SendResult(
                    detail=f"WhatsApp accepted {template!r} for {to}: {wamid}",
                    data={"wamid": wamid, "to": to},
                    message_id=wamid,
                )
        if 200 <= response.status_code < 300:
            raise PermanentError(f"WhatsApp answered without a message id: {excerpt(response.content)}")
        raise classify_error(response.status_code, payload, template, len(parameters))

    def online_check(self, actions: Any = None) -> list[str]:
        s = self.settings
        url = f"{s.base_url}/{s.api_version}/{s.phone_number_id}"
        try:
            response = self._session.get(url, params={"fields": "display_phone_number"}, timeout=s.timeout)
        except requests.RequestException as exc:
            return [f"cannot reach WhatsApp at {s.base_url}: {type(exc).__name__}"]
        if response.status_code == 200:
            return []
        try:
            payload = response.json()
        except ValueError:
            payload = None
        error = classify_error(response.status_code, payload, "", 0)
        return [f"WhatsApp phone_number_id {s.phone_number_id}: {error}"]

    def close(self) -> None:
        self._session.close()
