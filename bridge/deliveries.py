"""What the messaging platforms report after a send: delivery statuses, and customers opting out.

WhatsApp (Meta) and Twilio post callbacks (stored by bridge/callbacks.py); a worker reads them
here (bridge.jobs.process_callback). No connector is involved: this is the bridge's own memory.

Keys (all under `sb:`):
  sb:callback:<key>       hash: source (whatsapp|twilio), connector, body (raw), received_at
  sb:sent:<message id>    JSON {"event", "action"}: the action that sent a wamid or Twilio SID,
                          kept as long as events are (retention.events)
  sb:optout:<E.164>       hash: out ("1" opted out, "0" back in), at (epoch of the customer's message)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from redis import Redis
from redis.client import Pipeline

from bridge.store import PREFIX, ActionState, key_part, text
from connectors.phones import e164_of, keyword

CALLBACK_PREFIX = PREFIX + "callback:"
SOURCES = ("whatsapp", "twilio")
# The order statuses are shown in: a late `sent` never comes after `read`.
RANK = {"sent": 1, "delivered": 2, "read": 3, "failed": 4, "undelivered": 4}
FAILED = frozenset({"failed", "undelivered"})
# A status may arrive before its send is recorded (Meta answers in milliseconds): its callback is
# processed again for this long before the message id is called unknown.
UNKNOWN_WAIT = 60.0

# Error codes in failed statuses, in words an owner can act on (the platform's own text follows).
WHATSAPP_FAILURES = {
    131026: "the customer's number cannot receive WhatsApp messages (not on WhatsApp, or an old app)",
    131047: "more than 24 hours since the customer last wrote, and it was not an approved template",
    131049: "Meta did not deliver it, to keep the customer from getting too many business messages",
    131050: "the customer stopped marketing messages from this business",
    131053: "the media could not be uploaded",
    130472: "the customer's number is part of a Meta experiment and gets no marketing messages",
}
TWILIO_FAILURES = {
    30003: "the customer's phone is off or unreachable",
    30004: "the customer's phone blocks this sender",
    30005: "the number does not exist (any more)",
    30006: "the number is a landline or its carrier cannot take SMS",
    30007: "the carrier filtered it as spam",
    30008: "the carrier did not say why",
    30034: "the sender is not registered for this country",
}


@dataclass(frozen=True)
class StatusReport:
    """One delivery status of one sent message."""

    message_id: str
    status: str  # sent, delivered, read, failed, undelivered
    at: float
    error: str = ""


@dataclass(frozen=True)
class Incoming:
    """A message a customer wrote (for BAJA / ALTA)."""

    phone: str  # E.164
    text: str
    at: float


@dataclass(frozen=True)
class Callback:
    key: str
    source: str
    connector: str
    body: bytes
    received_at: float


def callback_key(key: str) -> str:
    return CALLBACK_PREFIX + key


def load_callback(redis: Redis, key: str) -> Callback | None:
    raw: dict[bytes, bytes] = redis.hgetall(callback_key(key))  # type: ignore[assignment]
    if not raw or b"body" not in raw:
        return None
    return Callback(
        key, text(raw[b"source"]), text(raw[b"connector"]), raw[b"body"], float(raw.get(b"received_at", b"0"))
    )


def read(callback: Callback) -> tuple[list[StatusReport], list[Incoming]]:
    """The statuses and incoming messages a stored callback carries (its signature was checked)."""
    if callback.source == "whatsapp":
        return read_whatsapp(json.loads(callback.body), callback.received_at)
    return read_twilio(dict(parse_qsl(callback.body.decode(), keep_blank_values=True)), callback.received_at)


def read_whatsapp(payload: Any, received_at: float) -> tuple[list[StatusReport], list[Incoming]]:
    """Meta's `whatsapp_business_account` notification: entry[].changes[].value.statuses / messages."""
    statuses: list[StatusReport] = []
    messages: list[Incoming] = []
    for entry in _dicts(payload.get("entry") if isinstance(payload, dict) else None):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if not isinstance(value, dict):
                continue
            for item in _dicts(value.get("statuses")):
                status, message_id = str(item.get("status") or ""), str(item.get("id") or "")
                if status in RANK and message_id:
                    at = _epoch(item.get("timestamp"), received_at)
                    statuses.append(StatusReport(message_id, status, at, _whatsapp_error(item.get("errors"))))
            for item in _dicts(value.get("messages")):
                words = _message_text(item)
                phone = e164_of(str(item.get("from") or ""))
                if words and phone:
                    messages.append(Incoming(phone, words, _epoch(item.get("timestamp"), received_at)))
    return statuses, messages


def read_twilio(params: dict[str, str], received_at: float) -> tuple[list[StatusReport], list[Incoming]]:
    """A Twilio status callback (MessageSid, MessageStatus, ErrorCode) or an inbound SMS (From, Body)."""
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    if status == "received" and "Body" in params:
        phone = e164_of(params.get("From", ""))
        return [], [Incoming(phone, params["Body"], received_at)] if phone else []
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    if status not in RANK or not sid:
        return [], []  # queued, sending, accepted: nothing an owner needs
    error = ""
    if status in FAILED:
        code = params.get("ErrorCode", "")
        meaning = TWILIO_FAILURES.get(int(code), "Twilio gave no reason") if code.isdigit() else "no error code"
        error = f"the SMS was not delivered: {meaning} (Twilio {status}, error {code or '-'})"
    return [StatusReport(sid, status, received_at, error)], []


def _whatsapp_error(errors: Any) -> str:
    first = next(iter(_dicts(errors)), None)
    if first is None:
        return ""
    code = first.get("code")
    said = " ".join(
        str(part)
        for part in (first.get("title"), first.get("message"), (first.get("error_data") or {}).get("details"))
        if part
    )
    meaning = WHATSAPP_FAILURES.get(code, "WhatsApp did not deliver it") if isinstance(code, int) else "no reason"
    return f"the WhatsApp message was not delivered: {meaning} (Meta {code}: {said[:500]})"


def _message_text(item: dict[str, Any]) -> str:
    """The words of a text message or of a tapped quick-reply button."""
    for part, field in (("text", "body"), ("button", "text")):
        value = item.get(part)
        if isinstance(value, dict) and isinstance(value.get(field), str):
            return str(value[field])
    return ""


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _epoch(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def sent_key(message_id: str) -> str:
    return f"{PREFIX}sent:{key_part(message_id)}"


def index_on(pipe: Pipeline, message_id: str, event: str, action_id: str, ttl: float) -> None:
    """Queue remembering which action sent `message_id`, for its status callbacks."""
    pipe.set(sent_key(message_id), json.dumps({"event": event, "action": action_id}), ex=int(ttl))


def sender_of(redis: Redis, message_id: str) -> tuple[str, str] | None:
    """(event key, action id) of the action that sent `message_id`; None when unknown or forgotten."""
    raw = redis.get(sent_key(message_id))
    if raw is None:
        return None
    found = json.loads(raw)
    return str(found["event"]), str(found["action"])


def record_status(state: ActionState, report: StatusReport) -> bool:
    """Add the status to the action's `delivery`, kept in RANK order; False when it was there already
    (the platforms send a callback again until it is answered)."""
    if any(entry.get("status") == report.status for entry in state.delivery):
        return False
    state.delivery.append({"status": report.status, "at": report.at, "error": report.error})
    state.delivery.sort(key=lambda entry: (RANK.get(entry.get("status", ""), 0), entry.get("at") or 0))
    return True


# Only a newer message changes what is known: BAJA then ALTA, processed in either order, ends opted in.
_MARK = """
local at = redis.call('HGET', KEYS[1], 'at')
if at and tonumber(at) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'out', ARGV[1], 'at', ARGV[2])
return 1
"""


class OptOuts:
    """The customers who wrote an opt-out word (the connectors' `opt_outs`, connectors.base.OptOuts).
    One list for every messaging connector: someone who writes BAJA on WhatsApp gets no SMS either."""

    def __init__(self, redis: Redis, zone: str):
        self.redis = redis
        self.zone = ZoneInfo(zone)

    def key(self, phone: str) -> str:
        return f"{PREFIX}optout:{key_part(phone)}"

    def opted_out_on(self, phone: str) -> str | None:
        out, at = self.redis.hmget(self.key(phone), ["out", "at"])
        if out != b"1" or at is None:
            return None
        return datetime.fromtimestamp(float(at), self.zone).date().isoformat()

    def hear(self, message: Incoming, out_words: list[str], in_words: list[str]) -> str | None:
        """Apply a customer's message: "opted out" or "opted in" when it is one of the words (and newer
        than the last one that was), else None."""
        said = keyword(message.text)
        if said in {keyword(w) for w in out_words}:
            out = "1"
        elif said in {keyword(w) for w in in_words}:
            out = "0"
        else:
            return None
        if not self.redis.eval(_MARK, 1, self.key(message.phone), out, repr(message.at)):
            return None
        return "opted out" if out == "1" else "opted in"
