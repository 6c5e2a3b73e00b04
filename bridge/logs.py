"""Log lines for people (`text`) or machines (`json`), with secrets, e-mail addresses and phone
numbers masked on the way out, whatever module wrote the line."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
FORMAT_ENV = "SALON_BRIDGE_LOG_FORMAT"  # inherited by the processes `salon-bridge up` starts
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Keys whose values are credentials, in structured data and in `key=value` / `"key": "value"` text.
SECRET_KEY = re.compile(
    r"(?i)^(?:.*[_-])?(?:password|passwd|secret|token|api[_-]?key|authorization|cookie|credentials?|private[_-]?key)$"
)
_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S), "***"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
    (re.compile(r"\bxox([a-z])-[A-Za-z0-9-]+"), r"xox\1-***"),
    (re.compile(r"(hooks\.slack\.com/services/)[^\s'\"]+"), r"\1***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]+"), "***"),
    (re.compile(r"(://[^/\s:@]*):[^@/\s]+@"), r"\1:***@"),
    (
        re.compile(
            r"(?i)(\b[\w-]*(?:password|passwd|secret|token|api[_-]?key|authorization|credentials?)[\"']?\s*[:=]\s*)"
            r"(?!\*\*\*)(?:\"[^\"]*\"|'[^']*'|[^\s\"',;}]+)"
        ),
        r"\1***",
    ),
]
_EMAIL = re.compile(r"\b([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# A phone: `+` and 8-15 digits (spaces allowed, as people type them), or a bare run of 9-15 digits
# that is not part of a word or a decimal number (dates, ids and durations stay readable).
_PHONE = re.compile(r"(?<![\w+])(?<!\d\.)(?:\+\d(?:[ ]?\d){7,14}|\d{9,15})(?!\w|\.\d)")
# Any of the above, in one pass: most lines hold none, and one search costs less than nine.
_ANY_SENSITIVE = re.compile(
    "|".join(
        f"(?{'s' if p.flags & re.S else ''}{'i' if p.flags & re.I else ''}:{p.pattern.removeprefix('(?i)')})"
        if p.flags & (re.S | re.I)
        else f"(?:{p.pattern})"
        for p in [*(pattern for pattern, _ in _SECRET_PATTERNS), _EMAIL, _PHONE]
    )
)
_PAIR = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)")
_NUMBERS = {"attempt": int, "status": int, "duration_ms": float}
MIN_SECRET_LENGTH = 6

_known_secrets: set[str] = set()


def remember_secrets(values: Iterable[Any]) -> None:
    """Exact values (from the config) that must never appear in a log line."""
    for value in values:
        if isinstance(value, dict):
            remember_secrets(value.values())
        elif isinstance(value, list | tuple | set):
            remember_secrets(value)
        elif isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
            _known_secrets.add(value)


def config_secrets(config: Any) -> list[Any]:
    """Every secret a loaded BridgeConfig holds: webhook secrets, admin and metrics credentials,
    and each connector's `secret_fields`."""
    model = config.model
    found: list[Any] = list(model.webhook.secrets)
    if model.admin is not None:
        found += [model.admin.password_hash, model.admin.token, model.admin.session_secret]
    found.append(model.metrics.token)
    for spec in config.connectors.values():
        if spec.settings is not None:
            found += [getattr(spec.settings, name, None) for name in spec.cls.secret_fields]
    return [value for value in found if value]


_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def mask(text: str) -> str:
    """The text with credentials replaced by *** and e-mail addresses and phone numbers shortened."""
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    if not _ANY_SENSITIVE.search(text):
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(_mask_phone, text)


def _mask_phone(match: re.Match[str]) -> str:
    digits = match.group(0).replace(" ", "")
    keep = 3 if digits.startswith("+") else 0
    return digits[:keep] + "*" * (len(digits) - keep - 3) + digits[-3:]


def hide_secret_fields(value: Any) -> Any:
    """A copy of structured data with the values of credential-like keys replaced (for display)."""
    if isinstance(value, dict):
        return {
            key: "*** (hidden)" if isinstance(key, str) and SECRET_KEY.match(key) else hide_secret_fields(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [hide_secret_fields(item) for item in value]
    return value


def fields_of(message: str) -> dict[str, Any]:
    """The `key=value` pairs of a log line (as the webhook and action lines write them), typed."""
    found: dict[str, Any] = {}
    for key, raw in _PAIR.findall(message):
        value: Any = raw
        if raw[:1] in ("'", '"'):
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw[1:-1]
        if key in _NUMBERS:
            try:
                value = _NUMBERS[key](value)
            except ValueError:
                pass
        found[key] = value
    return found


def escape_controls(text: str) -> str:
    """Control characters as escapes (`\\n`), so a value from an event cannot start a log line of its own."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # The message is escaped; a traceback, added after it, keeps its lines.
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the line's `key=value` fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        pairs = fields_of(message)
        if pairs:
            entry["kind"] = message.split(" ", 1)[0]
        for key, value in pairs.items():
            entry.setdefault(key, mask(value) if isinstance(value, str) else value)
        entry["message"] = mask(message)
        if record.exc_info:
            entry["exception"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def default_format() -> str:
    value = os.environ.get(FORMAT_ENV, "text")
    return value if value in FORMATS else "text"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the line."""

    salon_bridge = True

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send every logger's lines to stderr in the chosen format. Like logging.basicConfig, it
    leaves alone a process whose logging someone else set up (a test runner)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    if any(not getattr(handler, "salon_bridge", False) for handler in root.handlers):
        return
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # At DEBUG, slack_sdk logs request URLs, and an incoming-webhook URL is a secret.
    logging.getLogger("slack_sdk").setLevel(max(root.level, logging.INFO))
    os.environ[FORMAT_ENV] = fmt  # the processes `up` starts log the same way
