"""What the owner reads instead of identifiers: event types, statuses, destinations, and failures
explained as sentences (the technical text stays below them on the page)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from bridge.admin.i18n import clock, when
from bridge.store import ActionState, Status

EVENT_TYPES = {
    "booking.created": _l("Booking created"),
    "booking.updated": _l("Booking changed"),
    "booking.cancelled": _l("Booking cancelled"),
    "booking.completed": _l("Booking completed"),
    "booking.no_show": _l("Customer did not show up"),
    "payment.completed": _l("Payment received"),
    "payment.failed": _l("Payment failed"),
    "payment.refunded": _l("Payment refunded"),
    "order.created": _l("Order placed"),
    "order.shipped": _l("Order shipped"),
    "order.delivered": _l("Order delivered"),
    "customer.created": _l("New customer"),
    "customer.updated": _l("Customer changed"),
}
KIND_NAMES = {"booking": _l("Booking"), "order": _l("Order"), "customer": _l("Customer")}
CONNECTOR_NAMES = {
    "slack": _l("Slack message"),
    "email": _l("E-mail"),
    "google_calendar": _l("Google Calendar"),
    "http": _l("Call to another system"),
    "sms": _l("SMS"),
    "whatsapp": _l("WhatsApp"),
}
# Badge colour per status.
TONES: dict[str, str] = {
    Status.PENDING: "wait",
    Status.SENDING: "wait",
    Status.RETRYING: "warn",
    Status.DONE: "ok",
    Status.DEAD: "bad",
    Status.DRY_RUN: "info",
    Status.SKIPPED: "muted",
    Status.STALE: "muted",
    Status.SCHEDULED: "wait",
    Status.CANCELLED: "muted",
    Status.MISSED: "warn",
    Status.FAILED_AFTER_SENDING: "bad",
}
DELIVERY = {
    "sent": _l("Sent"),
    "delivered": _l("Delivered"),
    "read": _l("Read"),
    "failed": _l("Not delivered"),
    "undelivered": _l("Not delivered"),
}

# What bridge.schedules.listing calls the state of a scheduled send.
SEND_STATUSES = {
    "pending": _l("Waiting for its time"),
    "sent": _l("Sent"),
    "cancelled": _l("Cancelled"),
    "missed": _l("Missed"),
    "skipped": _l("Skipped"),
    "dead": _l("Failed"),
}


def send_status_name(status: str) -> str:
    known = SEND_STATUSES.get(status)
    return str(known) if known is not None else status


def event_type_name(event_type: str) -> str:
    """ "Reserva creada"; a type this admin does not know (a digest, a new platform event) by its id."""
    known = EVENT_TYPES.get(event_type)
    return str(known) if known is not None else _("Event %(type)s", type=event_type)


def status_name(status: str) -> str:
    """The short name of a status, without its time (for the status filter)."""
    names: dict[str, str] = {
        Status.PENDING: _("Queued"),
        Status.SENDING: _("Sending"),
        Status.RETRYING: _("Retrying"),
        Status.DONE: _("Sent"),
        Status.DEAD: _("Failed"),
        Status.DRY_RUN: _("Test run: not sent"),
        Status.SKIPPED: _("Skipped"),
        Status.STALE: _("Already up to date"),
        Status.SCHEDULED: _("Scheduled"),
        Status.CANCELLED: _("Cancelled"),
        Status.MISSED: _("Missed"),
        Status.FAILED_AFTER_SENDING: _("Failed after sending"),
    }
    return names.get(status, status)


def status_label(state: ActionState) -> str:
    """ "Reintentando a las 10:32", "Programado para 25 ene 2024, 10:00 CET", "Enviado"."""
    if state.status == Status.RETRYING and state.next_attempt_at:
        return _("Retrying at %(time)s", time=clock(state.next_attempt_at))
    due = (state.plan or {}).get("due")
    if state.status == Status.SCHEDULED and due:
        return _("Scheduled for %(when)s", when=when(float(due)))
    return status_name(state.status)


def kind_name(kind: str) -> str:
    known = KIND_NAMES.get(kind)
    return str(known) if known is not None else kind


def connector_name(connector_type: str) -> str:
    known = CONNECTOR_NAMES.get(connector_type)
    return str(known) if known is not None else connector_type


def delivery_name(status: str) -> str:
    known = DELIVERY.get(status)
    return str(known) if known is not None else status


@dataclass(frozen=True)
class Explanation:
    pattern: re.Pattern[str]
    sentence: str  # English source text; `%(what)s` is the booking's (or order's) label


def _e(pattern: str, sentence: str) -> Explanation:
    return Explanation(re.compile(pattern, re.IGNORECASE), sentence)


# Known failures, most specific first. The sentences are translated when shown (see `explain`).
EXPLANATIONS = (
    _e(r"cliente\.email unknown", "The customer has no e-mail: %(what)s arrived without one."),
    _e(r"cliente\.telefono unknown", "The customer has no phone number: %(what)s arrived without one."),
    _e(r"cliente(\.\w+)? unknown", "%(what)s arrived without its customer."),
    _e(
        r"customer e-mail unknown \(\S+ not received\)",
        "The customer has no e-mail: %(what)s arrived without a customer.",
    ),
    _e(r"customer e-mail unknown", "The customer has no e-mail address on the platform."),
    _e(r"e-mail .* is not a valid address", "The customer's e-mail address is not valid: correct it on the platform."),
    _e(r"customer has no phone number", "The customer has no phone number on the platform."),
    _e(r"is not a (valid )?phone number", "The customer's phone number is not valid: correct it on the platform."),
    _e(
        r"'\w+ object' has no attribute|is undefined|unknown \(\S+ not received\)",
        "A message template uses data this event does not carry.",
    ),
    _e(r"channel_not_found|not_in_channel", "The Slack channel does not exist, or the app has not been invited to it."),
    _e(r"invalid_auth|token_revoked|account_inactive", "Slack no longer accepts the bridge's key."),
    _e(r"refused the username or password", "The mail server did not accept the user name or password."),
    _e(r"refused a recipient", "The mail server refused the recipient's address."),
    _e(r"is not shared with|does not let .* change events", "The calendar is not shared with the bridge's account."),
    _e(r"rate limit|rate-limit|quota", "The destination asked to slow down."),
    _e(r"did not answer within|cannot connect|cannot reach|closed the connection", "The destination did not answer."),
    _e(r"HTTP 4\d\d", "The destination refused it."),
    _e(r"HTTP 5\d\d|problem on its side|unavailable|is busy", "The destination had a problem on its side."),
)


def explain(error: str, what: str) -> str:
    """A sentence for the owner about a technical error; a general one when it is not a known case."""
    for explanation in EXPLANATIONS:
        if explanation.pattern.search(error):
            return _(explanation.sentence, what=what)  # extracted from the `_e` calls above (pybabel -k _e:2)
    return _("It could not be done; the technical reason is below.")
