"""`sms`: send a text message through Twilio, with the official `twilio` SDK."""

from __future__ import annotations

import builtins
from typing import Any, ClassVar

from pydantic import Field, model_validator
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

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

# The GSM 03.38 alphabet: a message only in these characters is GSM-7 (160 per part, 153 when
# split); any other character makes the whole message UCS-2 (70 per part, 67 when split).
GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENDED = set("^{}\\[~]|€\f")  # two septets each
SEGMENT_WARNING = 3

DEAD_CODES = {
    21211: "the phone number is not valid",
    21614: "the phone number is not a mobile number",
    21610: "the customer replied STOP to this sender: Twilio will not send to them",
    21408: "sending to this country is not enabled in the Twilio account (Messaging > Geo permissions)",
    21612: "Twilio cannot reach this number from the configured sender",
    20003: "Twilio refused the credentials: check account_sid and auth_token",
}


def segments(text: str) -> tuple[str, int]:
    """The encoding ("GSM-7" or "UCS-2") and the number of SMS parts `text` takes."""
    if all(ch in GSM_BASIC or ch in GSM_EXTENDED for ch in text):
        septets = sum(2 if ch in GSM_EXTENDED else 1 for ch in text)
        return "GSM-7", 1 if septets <= 160 else -(-septets // 153)
    units = len(text.encode("utf-16-le")) // 2
    return "UCS-2", 1 if units <= 70 else -(-units // 67)


class SmsSettings(Settings):
    account_sid: str = Field(min_length=1)
    auth_token: str = Field(min_length=1)
    from_: str | None = Field(default=None, alias="from")
    messaging_service_sid: str | None = None
    status_callback: bool = False
    public_url: str | None = None
    base_url: str | None = None  # tests point the SDK at a local fake
    default_region: Region = "ES"
    timeout: float = Field(default=10.0, gt=0, le=120)
    # Inbound SMS reach /webhooks/twilio when the number's "A message comes in" URL points there.
    opt_out_words: list[str] = OPT_OUT_WORDS
    opt_in_words: list[str] = OPT_IN_WORDS

    @model_validator(mode="after")
    def _one_sender(self) -> SmsSettings:
        if bool(self.from_) == bool(self.messaging_service_sid):
            raise ValueError("give exactly one of from (a number or sender ID) and messaging_service_sid")
        if self.status_callback and not self.public_url:
            raise ValueError("status_callback needs public_url: the address where Twilio reaches this bridge")
        return self


class SmsSend(ActionFields):
    template_fields: ClassVar[tuple[str, ...]] = ("to", "body")

    to: str
    body: str

    def load_warnings(self) -> list[tuple[str, str]]:
        if is_template(self.body):
            return []  # its length is only known per event
        encoding, parts = segments(self.body)
        if parts > SEGMENT_WARNING:
            return [("body", f"the SMS takes {parts} parts ({encoding}); each part is billed")]
        return []


class SmsConnector(Connector):
    type = "sms"
    settings_model = SmsSettings
    actions: ClassVar[dict[str, builtins.type[ActionFields]]] = {"send": SmsSend}
    secret_fields = ("auth_token",)

    settings: SmsSettings

    def __init__(self, name: str, settings: Settings):
        super().__init__(name, settings)
        assert isinstance(settings, SmsSettings)
        http = TwilioHttpClient(timeout=self.settings.timeout)  # the SDK's client: no retries unless asked
        self._client = Client(self.settings.account_sid, self.settings.auth_token, http_client=http)
        if self.settings.base_url:
            self._client.api.base_url = self.settings.base_url.rstrip("/")

    def send(self, request: ActionRequest) -> SendResult:
        s = self.settings
        to = normalise_phone(str(request.fields.get("to") or ""), s.default_region)
        refuse_opted_out(request, to)
        body = str(request.fields.get("body") or "")
        if not body.strip():
            raise PermanentError("the message is empty")
        options: dict[str, Any] = {"to": to, "body": body}
        if s.messaging_service_sid:
            options["messaging_service_sid"] = s.messaging_service_sid
        else:
            options["from_"] = s.from_
        if s.status_callback and s.public_url:
            options["status_callback"] = s.public_url.rstrip("/") + "/webhooks/twilio"
        try:
            message = self._client.messages.create(**options)
        except TwilioRestException as exc:
            raise classify_error(exc) from None
        except TwilioException as exc:  # connection errors and timeouts
            raise TransientError(f"cannot reach Twilio: {excerpt(str(exc))}") from None
        encoding, parts = segments(body)
        return SendResult(
            detail=f"Twilio accepted the SMS to {to}: {message.sid} ({parts} part(s), {encoding})",
            data={"sid": message.sid, "to": to},
            message_id=str(message.sid),
        )

    def online_check(self, actions: Any = None) -> list[str]:
        try:
            self._client.api.v2010.accounts(self.settings.account_sid).fetch()
        except TwilioRestException as exc:
            return [f"Twilio account {self.settings.account_sid}: {classify_error(exc)}"]
        except TwilioException as exc:
            return [f"cannot reach Twilio: {excerpt(str(exc))}"]
        return []


def classify_error(exc: TwilioRestException) -> Exception:
    said = excerpt(f"Twilio {exc.code}: {exc.msg}")
    if exc.code in DEAD_CODES:
        return PermanentError(f"{DEAD_CODES[exc.code]} ({said})")
    if exc.code == 20429 or exc.status == 429:
        return TransientError(f"Twilio rate limit ({said})", retry_after=10.0)
    if exc.status >= 500:
        return TransientError(f"Twilio is unavailable (HTTP {exc.status}, {said})")
    return PermanentError(f"Twilio refused the SMS ({said})")
