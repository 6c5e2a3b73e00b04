"""Each action as its recipient saw it: a Slack message drawn like Slack, an e-mail (its HTML body
goes into a sandboxed frame served by views.email_body), a calendar card, an HTTP call, an SMS or
a WhatsApp template with its parameters filled in.

Everything here comes from event data: text is escaped, and the only markup made is the handful
of tags this module writes itself (Slack formatting, links with an http(s)/mailto address).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask_babel import lazy_gettext as _l
from markupsafe import Markup, escape

from bridge.logs import hide_secret_fields
from connectors.google_calendar import google_event_id
from connectors.sms import segments

SAFE_SCHEMES = ("http", "https", "mailto")
HIDDEN = "•••"
# Query parameters and path parts that look like credentials are hidden in URLs shown.
SECRET_WORDS = re.compile(r"token|key|secret|pass|auth|sig|code|hook", re.IGNORECASE)
# Google's event colours by id (admin.css draws each as `.gc-<id>`).
GOOGLE_COLOURS = {
    "1": _l("Lavender"),
    "2": _l("Sage"),
    "3": _l("Grape"),
    "4": _l("Flamingo"),
    "5": _l("Banana"),
    "6": _l("Tangerine"),
    "7": _l("Peacock"),
    "8": _l("Graphite"),
    "9": _l("Blueberry"),
    "10": _l("Basil"),
    "11": _l("Tomato"),
}


# ---- Slack --------------------------------------------------------------------------------------

_CONTROL = re.compile(r"<([^<>\n]{1,1000})>")
_STYLES = (
    (re.compile(r"`([^`\n]+)`"), "code"),
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), "strong"),
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])"), "em"),
    (re.compile(r"(?<![\w~])~(?=\S)([^~\n]+?)(?<=\S)~(?![\w~])"), "s"),
)


def _slack_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _styled(raw: str) -> str:
    """Plain mrkdwn text (no control sequences) as HTML: escaped first, then *bold* _italic_ ~strike~ `code`."""
    html = str(escape(_slack_unescape(raw)))
    for pattern, tag in _STYLES:
        html = pattern.sub(rf"<{tag}>\1</{tag}>", html)
    return html.replace("\n", "<br>\n")


def _link(url: str, label: str) -> str:
    url = _slack_unescape(url)
    if urlsplit(url).scheme.lower() not in SAFE_SCHEMES:
        return str(escape(f"<{url}{'|' + label if label else ''}>"))  # shown as the text it is
    shown = _styled(label) if label else str(escape(url))
    return f'<a href="{escape(url)}" rel="noopener noreferrer nofollow" target="_blank">{shown}</a>'


def _control(inner: str) -> str:
    """One `<...>` sequence: a mention, a channel, a special mention or a link."""
    target, _, label = inner.partition("|")
    if target.startswith("!"):
        name = target[1:].split("^", 1)[0]
        text = label or ("@" + name if name in ("channel", "here", "everyone") else name)
        return f'<span class="mention">{escape(_slack_unescape(text))}</span>'
    if target.startswith("@"):
        return f'<span class="mention">@{escape(_slack_unescape(label or target[1:]))}</span>'
    if target.startswith("#"):
        return f'<span class="mention">#{escape(_slack_unescape(label or target[1:]))}</span>'
    return _link(target, label)


def mrkdwn(text: str) -> Markup:
    """Slack mrkdwn as safe HTML: formatting, links, mentions; nothing else of the text is markup."""
    parts: list[str] = []
    position = 0
    for match in _CONTROL.finditer(text):
        parts.append(_styled(text[position : match.start()]))
        parts.append(_control(match.group(1)))
        position = match.end()
    parts.append(_styled(text[position:]))
    return Markup("".join(parts))  # noqa: S704 - every piece above is escaped or written here


def _text_object(obj: Any) -> Markup:
    if isinstance(obj, dict):
        text = str(obj.get("text") or "")
        return mrkdwn(text) if obj.get("type") == "mrkdwn" else Markup(escape(text))
    return Markup(escape(str(obj or "")))


@dataclass
class SlackBlock:
    kind: str  # section | header | context | divider | other
    text: Markup = Markup("")
    fields: list[Markup] = field(default_factory=list)


def slack_blocks(blocks: Any) -> list[SlackBlock]:
    """Blocks drawn as sections; images and buttons by their text only (no remote loads)."""
    shown: list[SlackBlock] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        kind = str(block.get("type", ""))
        if kind == "divider":
            shown.append(SlackBlock("divider"))
        elif kind == "header":
            shown.append(SlackBlock("header", _text_object(block.get("text"))))
        elif kind == "section":
            fields = [_text_object(f) for f in block.get("fields") or [] if isinstance(f, dict)]
            shown.append(SlackBlock("section", _text_object(block.get("text")), fields))
        elif kind == "context":
            elements = [e for e in block.get("elements") or [] if isinstance(e, dict)]
            text = Markup(" · ").join(
                _text_object(e) if "text" in e else Markup(escape(e.get("alt_text", ""))) for e in elements
            )
            shown.append(SlackBlock("context", text))
        elif kind == "image":
            shown.append(SlackBlock("other", Markup(escape(f"[{block.get('alt_text') or 'image'}]"))))
        elif kind == "actions":
            labels = [_text_object(e.get("text")) for e in block.get("elements") or [] if isinstance(e, dict)]
            shown.append(SlackBlock("other", Markup(" ").join(Markup("[") + label + Markup("]") for label in labels)))
    return shown


@dataclass
class SlackPreview:
    channel: str
    text: Markup
    blocks: list[SlackBlock]
    thread: str  # the thread key, when the message went to a thread
    kind: str = "slack"


def slack_preview(fields: dict[str, Any], settings: Any) -> SlackPreview:
    channel = str(fields.get("channel") or getattr(settings, "channel", None) or "")
    return SlackPreview(
        channel,
        mrkdwn(str(fields.get("text") or "")),
        slack_blocks(fields.get("blocks")),
        str(fields.get("thread_key") or ""),
    )


# ---- e-mail -------------------------------------------------------------------------------------


def _mailboxes(value: Any) -> str:
    if isinstance(value, dict):
        name, address = value.get("name"), value.get("email") or value.get("address") or ""
        return f"{name} <{address}>" if name else str(address)
    if isinstance(value, list):
        return ", ".join(_mailboxes(v) for v in value if v)
    return str(value or "")


@dataclass
class EmailPreview:
    sender: str
    to: str
    cc: str
    subject: str
    text: str
    has_html: bool
    kind: str = "email"


def email_html(fields: dict[str, Any]) -> str | None:
    html = fields.get("html") if fields.get("html") is not None else fields.get("html_template")
    return str(html) if html else None


def email_preview(fields: dict[str, Any], settings: Any) -> EmailPreview:
    text = fields.get("text") if fields.get("text") is not None else fields.get("text_template")
    return EmailPreview(
        str(getattr(settings, "from_", "") or ""),
        _mailboxes(fields.get("to")),
        _mailboxes(fields.get("cc")),
        str(fields.get("subject") or ""),
        str(text or ""),
        email_html(fields) is not None,
    )


# ---- Google Calendar ----------------------------------------------------------------------------

_CALENDAR_DETAIL = re.compile(r"(?:: (?P<operation>.+?) )?event (?P<event>[a-v0-9]+) in (?P<calendar>\S+)$")


@dataclass
class CalendarPreview:
    calendar: str
    date: str
    start: str
    end: str
    title: str
    colour_id: str  # "" for the calendar's own colour
    operation: str  # inserted | updated | deleted | "" (not written yet)
    moved_from: str  # the calendar it was moved from
    changes: dict[str, tuple[str, str]]  # fecha / hora_inicio / hora_fin: (old, new)
    link: str
    kind: str = "calendar"


def calendar_link(event_id: str, calendar_id: str) -> str:
    """Google's own link to an event (the `htmlLink` it returns): eid is base64 of "event calendar"."""
    eid = base64.urlsafe_b64encode(f"{event_id} {calendar_id}".encode()).decode().rstrip("=")
    return f"https://www.google.com/calendar/event?eid={eid}"


def calendar_preview(
    fields: dict[str, Any], detail: str, booking: dict[str, Any], envelope: dict[str, Any], tenant: str
) -> CalendarPreview:
    found = _CALENDAR_DETAIL.search(detail or "")
    operation = (found.group("operation") or "") if found else ""
    moved = re.search(r"\(moved from (\S+)\)", operation)
    if "deleted" in detail or "cancelled:" in detail:
        operation = "deleted"
    calendar = found.group("calendar") if found else str(fields.get("calendar_id") or "")
    event_id = found.group("event") if found else google_event_id(tenant, str(booking.get("id", "")))
    changes = (envelope.get("data") or {}).get("changes") or {}
    moves = {
        name: (str(change.get("old", "")), str(change.get("new", "")))
        for name, change in changes.items()
        if name in ("fecha", "hora_inicio", "hora_fin") and isinstance(change, dict)
    }
    colour = str(fields.get("color_id") or "")
    return CalendarPreview(
        calendar,
        str(booking.get("fecha", "")),
        str(booking.get("hora_inicio", "")),
        str(booking.get("hora_fin", "")),
        str(fields.get("summary") or ""),
        colour if colour in GOOGLE_COLOURS else "",
        operation.split(" ", 1)[0] if operation else "",
        moved.group(1) if moved else "",
        moves,
        calendar_link(event_id, calendar) if found and operation != "deleted" else "",
    )


# ---- HTTP, SMS, WhatsApp ------------------------------------------------------------------------


def hide_url_secrets(url: str) -> str:
    """The URL with its password, credential-like query values and long path tokens hidden."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{HIDDEN}@{netloc}"
    query = urlencode([(k, HIDDEN if SECRET_WORDS.search(k) else v) for k, v in parse_qsl(parts.query, True)])
    path = "/".join(
        HIDDEN if len(p) >= 20 and re.search(r"\d", p) and re.search(r"[A-Za-z]", p) else p
        for p in parts.path.split("/")
    )
    return urlunsplit((parts.scheme, netloc, path, query, ""))


@dataclass
class HttpPreview:
    method: str
    url: str
    body: str
    answer_status: str
    answer: str  # the first lines of the answer
    kind: str = "http"


def http_preview(fields: dict[str, Any], settings: Any, detail: str, error: str) -> HttpPreview:
    answer = detail or error
    status = re.match(r"HTTP (\d{3})", answer)
    first_lines = "\n".join(answer.split(": ", 1)[-1].splitlines()[:8]) if status else answer
    return HttpPreview(
        str(getattr(settings, "method", "POST")),
        hide_url_secrets(str(getattr(settings, "url", ""))),
        json.dumps(hide_secret_fields(fields.get("body")), ensure_ascii=False, indent=2, default=str),
        status.group(1) if status else "",
        first_lines,
    )


@dataclass
class SmsPreview:
    to: str
    body: str
    encoding: str
    parts: int
    kind: str = "sms"


def sms_preview(fields: dict[str, Any]) -> SmsPreview:
    body = str(fields.get("body") or "")
    encoding, parts = segments(body)
    return SmsPreview(str(fields.get("to") or ""), body, encoding, parts)


@dataclass
class WhatsAppPreview:
    to: str
    template: str
    language: str
    parameters: list[str]
    kind: str = "whatsapp"


def whatsapp_preview(fields: dict[str, Any]) -> WhatsAppPreview:
    parameters = fields.get("parameters") or []
    return WhatsAppPreview(
        str(fields.get("to") or ""),
        str(fields.get("template") or ""),
        str(fields.get("language") or ""),
        [str(p) for p in parameters] if isinstance(parameters, list) else [str(parameters)],
    )


Preview = SlackPreview | EmailPreview | CalendarPreview | HttpPreview | SmsPreview | WhatsAppPreview


def preview_of(
    connector_type: str,
    fields: dict[str, Any] | None,
    settings: Any,
    detail: str,
    error: str,
    booking: dict[str, Any],
    envelope: dict[str, Any],
) -> Preview | None:
    """What the recipient saw (or would have), from the rendered fields; None before rendering."""
    if fields is None:
        return None
    if connector_type == "slack":
        return slack_preview(fields, settings)
    if connector_type == "email":
        return email_preview(fields, settings)
    if connector_type == "google_calendar":
        return calendar_preview(fields, detail, booking, envelope, str(envelope.get("tenant_id", "")))
    if connector_type == "http":
        return http_preview(fields, settings, detail, error)
    if connector_type == "sms":
        return sms_preview(fields)
    if connector_type == "whatsapp":
        return whatsapp_preview(fields)
    return None
