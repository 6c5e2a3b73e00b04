"""`email`: send one e-mail over SMTP (STARTTLS, SSL, or plain to a local relay), text and HTML, UTF-8."""

from __future__ import annotations

import base64
import builtins
import hashlib
import re
import smtplib
import ssl
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime
from html.parser import HTMLParser
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from connectors.base import (
    ActionFields,
    ActionRequest,
    Connector,
    ConnectorError,
    PermanentError,
    SendResult,
    Settings,
    TransientError,
    excerpt,
    is_template,
)

DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
MAX_NAME_CHARS = 64  # a display name longer than this is cut: it is a name, not a message
MAX_SUBJECT_CHARS = 200
MAX_LINE = 78  # RFC 5322's recommended line length for headers
MAX_RESENDS = 100  # forced resends of one e-mail that get a Message-ID of their own
SENT_MARKER_TTL = 30 * 86400  # how long a sent e-mail is remembered, so it is never sent twice


class AddressError(ValueError):
    """A string that is not one usable e-mail address."""


# ---------------------------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True)
class Mailbox:
    """One checked address: a cleaned display name and the addr-spec, its domain in ASCII (IDNA)."""

    name: str
    local: str
    domain: str

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def international(self) -> bool:
        """A non-ASCII local part needs a server that speaks SMTPUTF8 (RFC 6531)."""
        return not self.local.isascii()


_ASCII_ATEXT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NAME_ADDR = re.compile(r"^(?P<name>.*?)\s*<(?P<addr>[^<>]*)>$", re.DOTALL)
# RFC 5322 specials: a display name keeps none of them, so no header folder can turn it into syntax.
_NAME_SPECIALS = re.compile(r'[,;:<>@"()\[\]\\]')


def _valid_local_part(local: str) -> bool:
    if not local or len(local.encode()) > 64:
        return False
    for atom in local.split("."):
        if not atom:
            return False
        for char in atom:
            if char.isascii():
                if char not in _ASCII_ATEXT:
                    return False
            elif unicodedata.category(char)[0] in "CZ":
                return False
    return True


def _ascii_domain(domain: str) -> str:
    try:
        ascii_domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise AddressError("the part after @ is not a valid domain name") from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise AddressError("the part after @ is not a domain name like salon.example")
    if labels[-1].isdigit():
        raise AddressError("the part after @ is a number, not a domain name")
    return ascii_domain.lower()


def parse_mailbox(text: str, name: str | None = None) -> Mailbox:
    """'juan@email.com' or 'Juan Pérez <juan@email.com>' (one address, never a list) -> Mailbox."""
    text = text.strip()
    match = _NAME_ADDR.match(text)
    display, spec = (match["name"], match["addr"].strip()) if match else ("", text)
    if name is not None:
        display = name
    if not spec:
        raise AddressError("there is no address")
    local, at, domain = spec.rpartition("@")
    if not at:
        raise AddressError("there is no @")
    if not _valid_local_part(local):
        raise AddressError("the part before @ has characters an address cannot have")
    mailbox = Mailbox(clean_name(display), local, _ascii_domain(domain))
    if len(mailbox.address) > 254:
        raise AddressError("longer than 254 characters")
    return mailbox


def clean_text(value: str, limit: int) -> str:
    """One line of header text: control characters and line breaks become spaces (no header
    injection), invisible format characters (bidi overrides) go, runs of spaces collapse."""
    chars = []
    for char in value:
        category = unicodedata.category(char)
        if category == "Cf":
            continue
        chars.append(" " if category in ("Cc", "Zl", "Zp") else char)
    text = " ".join("".join(chars).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def clean_name(value: str) -> str:
    """A display name with no RFC 5322 specials, on one line, at most MAX_NAME_CHARS long."""
    name = clean_text(_NAME_SPECIALS.sub(" ", value), MAX_NAME_CHARS)
    return "" if name == "None" else name


# ---------------------------------------------------------------------------------------------
# Headers


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 'B' encoded words of at most 75 characters, never splitting a character."""
    chunks: list[bytes] = []
    chunk = b""
    for char in text:
        encoded = char.encode()
        if len(chunk) + len(encoded) > 39:  # 39 bytes -> a 64-character word: fits after "Reply-To: "
            chunks.append(chunk)
            chunk = b""
        chunk += encoded
    if chunk:
        chunks.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(c).decode('ascii')}?=" for c in chunks]


def _plain_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable() and "=?" not in text


def _name_tokens(name: str) -> list[str]:
    """Plain words when every character is an atom's, else encoded words (never a quoted string)."""
    if not name:
        return []
    if _plain_ascii(name) and all(char in _ASCII_ATEXT or char == " " for char in name):
        return name.split(" ")
    return _encoded_words(name)


class _Header(str):
    """A header folded here rather than by the email package.

    CPython 3.11's folder can move an address list's comma or a whole address into an encoded
    word, leave a long display name unquoted, and drop the space beside an encoded word. Given
    an object with `name` and `fold`, EmailMessage stores and writes it as it is (policy
    `header_store_parse` / `_fold`), so we fold at spaces between tokens we built and checked.
    """

    name: str
    tokens: tuple[str, ...]

    def __new__(cls, name: str, shown: str, tokens: list[str]) -> _Header:
        for token in tokens:
            if not token or not token.isprintable() or " " in token:
                raise ValueError(f"unsafe header token {token!r}")
        header = super().__new__(cls, shown)
        header.name = name
        header.tokens = tuple(tokens)
        return header

    def fold(self, *, policy: Policy) -> str:
        lines = [f"{self.name}:"]
        for token in self.tokens:
            if len(lines[-1]) + 1 + len(token) > MAX_LINE and lines[-1] != f"{self.name}:":
                lines.append("")
            lines[-1] += " " + token
        return policy.linesep.join(lines) + policy.linesep


def unstructured_header(name: str, text: str) -> _Header:
    tokens = text.split(" ") if _plain_ascii(text) else _encoded_words(text)
    return _Header(name, text, [t for t in tokens if t])


def address_header(name: str, mailboxes: list[Mailbox]) -> _Header:
    tokens: list[str] = []
    shown: list[str] = []
    for position, mailbox in enumerate(mailboxes):
        words = _name_tokens(mailbox.name)
        words.append(f"<{mailbox.address}>" if words else mailbox.address)
        if position < len(mailboxes) - 1:
            words[-1] += ","
        tokens.extend(words)
        shown.append(f"{mailbox.name} <{mailbox.address}>" if mailbox.name else mailbox.address)
    return _Header(name, ", ".join(shown), tokens)


# ---------------------------------------------------------------------------------------------
# HTML -> text, for an e-mail given only as HTML


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset(
        "p div h1 h2 h3 h4 h5 h6 table tr ul ol section header footer article blockquote hr address".split()
    )
    _SKIP = frozenset(("script", "style", "head", "title", "template"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag == "a":
            self._links.append((dict(attrs).get("href"), len(self.parts)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.parts.append(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = " ".join("".join(self.parts[start:]).split())
            if href and href.startswith(("https://", "http://", "mailto:")) and href not in (label, f"mailto:{label}"):
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self._skipping or not data:
            return
        text = " ".join(data.split())
        if data[0].isspace():
            text = " " + text
        if data[-1].isspace() and text != " ":
            text += " "
        self.parts.append(text)


def html_to_text(html: str) -> str:
    """A readable plain-text version of an HTML body: paragraphs, list items, links as 'text (url)'."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = [" ".join(line.split()) for line in "".join(extractor.parts).split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# ---------------------------------------------------------------------------------------------
# Settings and action fields


class EmailSettings(Settings):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    from_: str = Field(alias="from")
    reply_to: str | None = None
    timeout: float = Field(default=20.0, gt=0, le=120)
    ca_file: str | None = None  # trust this CA (PEM) instead of the system's: a provider's own CA

    @field_validator("host")
    @classmethod
    def _bare_host(cls, host: str) -> str:
        host = host.strip()
        if "://" in host or "/" in host or " " in host:
            raise ValueError(f"host must be a server name like smtp.example.com, got {host!r}")
        return host

    @field_validator("username", "password", "reply_to", "ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("from_", "reply_to")
    @classmethod
    def _one_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        key = "from" if info.field_name == "from_" else info.field_name
        try:
            parse_mailbox(value)
        except AddressError as exc:
            raise ValueError(
                f"{key} must be one address like 'Salón Ejemplo <reservas@salon.example>' ({exc}), got {value!r}"
            ) from None
        return value

    @model_validator(mode="after")
    def _credentials(self) -> EmailSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password (for AUTH), or neither (for a relay without AUTH)")
        if self.username is not None and self.security == "none":
            raise ValueError(
                "security: none would send the password unencrypted: use starttls (port 587) or ssl (port 465), "
                "or remove username and password for a local relay"
            )
        return self

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]


Recipient = str | dict[str, str]


class EmailSend(ActionFields):
    """One e-mail: recipients, subject, and a text and/or HTML body (inline or from a file)."""

    template_fields: ClassVar[tuple[str, ...]] = ("to", "cc", "bcc", "subject", "text", "html")
    template_files: ClassVar[tuple[str, ...]] = ("text_template", "html_template")
    escaping: ClassVar[dict[str, str]] = {"html": "html", "html_template": "html"}

    to: list[Recipient] = Field(min_length=1)
    cc: list[Recipient] = []
    bcc: list[Recipient] = []
    subject: str
    text: str | None = None
    text_template: str | None = None
    html: str | None = None
    html_template: str | None = None

    @field_validator("to", "cc", "bcc", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _fixed_addresses_are_valid(cls, entries: list[Recipient], info: ValidationInfo) -> list[Recipient]:
        """Addresses written in the config (not templates) are checked at load, not at the first e-mail."""
        for index, entry in enumerate(entries):
            where = f"{info.field_name}[{index}]"
            if isinstance(entry, dict):
                unknown = set(entry) - {"email", "name"}
                if unknown or "email" not in entry:
                    raise ValueError(
                        f"{where}: an entry with a name is {{email: ..., name: ...}}, got keys {sorted(entry)}"
                    )
                value = entry["email"]
            else:
                value = entry
            if is_template(value):
                continue
            try:
                parse_mailbox(value)
            except AddressError as exc:
                raise ValueError(
                    f"{where}: {value!r} is not one e-mail address ({exc}); "
                    "write one address per entry, several as a list: [ana@salon.example, luis@salon.example]"
                ) from None
        return entries

    @model_validator(mode="after")
    def _one_body_of_each_kind(self) -> EmailSend:
        for inline, file in (("text", "text_template"), ("html", "html_template")):
            if getattr(self, inline) is not None and getattr(self, file) is not None:
                raise ValueError(f"give {inline} or {file}, not both")
        if all(getattr(self, name) is None for name in ("text", "text_template", "html", "html_template")):
            raise ValueError("an e-mail needs a body: text, text_template, html or html_template")
        return self


# ---------------------------------------------------------------------------------------------
# The connector


class EmailConnector(Connector):
    type = "email"
    settings_model = EmailSettings
    actions: ClassVar[dict[str, builtins.type[ActionFields]]] = {"send": EmailSend}
    secret_fields = ("password",)

    settings: EmailSettings

    def __init__(self, name: str, settings: Settings):
        super().__init__(name, settings)
        self.sender = parse_mailbox(self.settings.from_)
        self.reply_to = parse_mailbox(self.settings.reply_to) if self.settings.reply_to else None
        self._tls: ssl.SSLContext | None = None

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.effective_port}"

    def send(self, request: ActionRequest) -> SendResult:
        fields = request.fields
        who = _who(request)
        to = self._mailboxes(request, who, "to", fields.get("to"))
        cc = self._mailboxes(request, who, "cc", fields.get("cc"))
        bcc = self._mailboxes(request, who, "bcc", fields.get("bcc"))
        subject = _sendable(clean_text(str(fields.get("subject") or ""), MAX_SUBJECT_CHARS), who, "subject")
        text, html = _bodies(fields, who)
        html = _sendable(html, who, "html")  # first: a text part made from the html would have it too
        text = _sendable(text, who, "text")
        message_id, digest = self.message_id(request)
        if request.forced:
            message_id, digest = self.resend_id(request, digest)
        marker = f"sent:{digest}"
        sent_at = request.store.get(marker) if request.store is not None else None
        if sent_at is not None:
            return SendResult(detail=f"already sent as {message_id} at {sent_at}; an e-mail is sent once per event")

        message = self.compose(to, cc, subject, text, html, message_id)
        recipients: dict[str, Mailbox] = {}
        for mailbox in to + cc + bcc:
            recipients.setdefault(mailbox.address.lower(), mailbox)  # one copy per person
        international = self.sender.international or any(m.international for m in recipients.values())
        data = message.as_bytes(policy=email_policy.SMTPUTF8 if international else email_policy.SMTP)
        reply = self._deliver([m.address for m in recipients.values()], data, international)

        if request.store is not None:
            request.store.set(marker, datetime.now(UTC).isoformat(), ttl=SENT_MARKER_TTL)
        shown = ", ".join(m.address for m in to + cc)
        hidden = f" (+{len(bcc)} bcc)" if bcc else ""
        return SendResult(
            detail=f"sent to {shown}{hidden} as {message_id}: {reply}",
            data={"message_id": message_id, "recipients": len(recipients)},
        )

    def message_id(self, request: ActionRequest) -> tuple[str, str]:
        """The same (event, action) always gives the same Message-ID, so a repeat is recognisable."""
        digest = hashlib.sha256(f"{request.event_id}\n{request.action_id}".encode()).hexdigest()[:32]
        return f"<{digest}@{self.sender.domain}>", digest

    def resend_id(self, request: ActionRequest, digest: str) -> tuple[str, str]:
        """A forced resend (`replay --force`) is a new e-mail: the first Message-ID of the event's
        chain not sent yet, since a mailbox drops a second copy with a Message-ID it already has."""
        for _ in range(MAX_RESENDS):
            if request.store is None or request.store.get(f"sent:{digest}") is None:
                break
            digest = hashlib.sha256(f"resend\n{digest}".encode()).hexdigest()[:32]
        return f"<{digest}@{self.sender.domain}>", digest

    def compose(
        self, to: list[Mailbox], cc: list[Mailbox], subject: str, text: str, html: str, message_id: str
    ) -> EmailMessage:
        """The MIME message: our own folded address and subject headers, a text part, an HTML part."""
        message = EmailMessage(policy=email_policy.default)
        message["From"] = address_header("From", [self.sender])
        message["To"] = address_header("To", to)
        if cc:
            message["Cc"] = address_header("Cc", cc)
        if self.reply_to is not None:
            message["Reply-To"] = address_header("Reply-To", [self.reply_to])
        message["Subject"] = unstructured_header("Subject", subject)
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"
        # quoted-printable: readable, 7-bit, accepted by every relay (no 8BITMIME needed)
        message.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
        if html:
            message.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
        return message

    def _mailboxes(self, request: ActionRequest, who: str, field: str, entries: Any) -> list[Mailbox]:
        """Every rendered entry of `to`/`cc`/`bcc` as one checked address, or a reason naming the field."""
        if entries is None:
            return []
        entries = entries if isinstance(entries, list) else [entries]
        mailboxes = []
        for index, entry in enumerate(entries):
            label = field if len(entries) == 1 else f"{field}[{index}]"
            name = None
            if isinstance(entry, dict):
                value, name = entry.get("email"), entry.get("name")
                name = None if name is None else str(name)
            else:
                value = entry
            value = _sendable("" if value is None else str(value).strip(), who, label)
            name = None if name is None else _sendable(name, who, f"the name in {label}")
            if value in ("", "None"):
                raise PermanentError(_missing_reason(request, who, label))
            try:
                mailboxes.append(parse_mailbox(value, name))
            except AddressError as exc:
                raise PermanentError(_invalid_reason(request, who, label, value, exc)) from None
        return mailboxes

    # -- SMTP -----------------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            # Verification is always on; ca_file only changes which authority is trusted.
            try:
                self._tls = ssl.create_default_context(cafile=self.settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise PermanentError(
                    f"ca_file {self.settings.ca_file!r} cannot be used as a certificate authority: {exc}"
                ) from None
        return self._tls

    def _open(self) -> smtplib.SMTP:
        """Connect, greet, STARTTLS and AUTH as configured; raises smtplib/ssl/OS errors.

        The constructor connects, and closes its socket itself when connecting fails; once it
        has returned, the caller closes the client on every path."""
        settings = self.settings
        host, port, timeout = settings.host, settings.effective_port, settings.timeout
        smtp: smtplib.SMTP
        if settings.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                host, port, local_hostname=self.sender.domain, timeout=timeout, context=self._tls_context()
            )
        else:
            smtp = smtplib.SMTP(host, port, local_hostname=self.sender.domain, timeout=timeout)
        try:
            self._greet(smtp)
        except BaseException as exc:
            _close(smtp, polite=isinstance(exc, (ConnectorError, smtplib.SMTPResponseException)))
            raise
        return smtp

    def _greet(self, smtp: smtplib.SMTP) -> None:
        settings = self.settings
        smtp.ehlo_or_helo_if_needed()
        if settings.security == "starttls":
            if not smtp.has_extn("starttls"):
                raise PermanentError(
                    f"{self.where} does not offer STARTTLS, so the e-mail would travel unencrypted: "
                    "check port (587 for starttls) or use security: ssl (port 465); nothing was sent"
                )
            code, reply = smtp.starttls(context=self._tls_context())
            if code != 220:
                raise smtplib.SMTPResponseException(code, reply)
            smtp.ehlo_or_helo_if_needed()
        if settings.username is not None and settings.password is not None:
            if not smtp.has_extn("auth"):
                raise PermanentError(
                    f"{self.where} does not offer AUTH: remove username/password if it is a relay that needs none, "
                    "or check host and port"
                )
            _login(smtp, settings.username, settings.password)

    def _deliver(self, recipients: list[str], data: bytes, international: bool) -> str:
        """One SMTP transaction; DATA only once every recipient is accepted (never half-sent)."""
        smtp: smtplib.SMTP | None = None
        polite = True
        in_data = False
        try:
            smtp = self._open()
            options: list[str] = []
            if international:
                if not smtp.has_extn("smtputf8"):
                    raise PermanentError(
                        f"an address has non-ASCII characters before the @ and {self.where} does not accept "
                        "such addresses (no SMTPUTF8); nothing was sent"
                    )
                options = ["SMTPUTF8", "BODY=8BITMIME"]
            code, reply = smtp.mail(self.sender.address, options)
            if code != 250:
                raise _by_code(
                    f"{self.where} refused the sender {self.sender.address} ({code} {_text(reply)}): check from, "
                    "the provider may only accept its own or verified addresses",
                    code,
                )
            refused = []
            for address in recipients:
                code, reply = smtp.rcpt(address)
                if code not in (250, 251):
                    refused.append((address, code, _text(reply)))
            if refused:
                detail = "; ".join(f"{address}: {code} {text}" for address, code, text in refused)
                if any(code >= 500 for _, code, _ in refused):
                    raise PermanentError(f"{self.where} refused a recipient, so nothing was sent: {detail}")
                raise TransientError(f"{self.where} cannot take a recipient right now: {detail}")
            in_data = True
            code, reply = smtp.data(data)
            if code != 250:
                raise _by_code(f"{self.where} did not accept the message: {code} {_text(reply)}", code)
            return f"{code} {_text(reply)}"
        except ConnectorError:
            raise
        except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
            polite = isinstance(exc, smtplib.SMTPResponseException)
            failure = self._failure(exc)
            if in_data and not polite and isinstance(failure, TransientError):
                # A timeout or a dropped connection from DATA on, without an answer: the server may
                # have the message already (a retry sends it again, with the same Message-ID).
                failure.maybe_delivered = True
            raise failure from None
        finally:
            if smtp is not None:
                _close(smtp, polite)

    def _failure(self, exc: BaseException) -> ConnectorError:
        """What an SMTP, TLS or network error means for the owner: retry later, or fix something."""
        where, settings = self.where, self.settings
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            answer = f"{exc.smtp_code} {_text(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                return TransientError(f"{where} cannot check the password right now ({answer})")
            return PermanentError(
                f"{where} refused the username or password ({answer}): check SMTP username and password "
                "(many providers want an app password, not the mailbox password)"
            )
        if isinstance(exc, smtplib.SMTPResponseException):
            return _by_code(f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}", exc.smtp_code)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            if isinstance(exc.__context__, TimeoutError):
                return TransientError(self._timeout_reason())
            return TransientError(f"{where} closed the connection: {exc}")
        if isinstance(exc, smtplib.SMTPException):
            return PermanentError(f"{where}: {exc}; check security, port, username and password")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentError(
                f"the certificate of {settings.host} could not be verified ({exc.verify_message}): host must be the "
                "name on the provider's certificate; if the provider uses its own certificate authority, set ca_file"
            )
        if isinstance(exc, ssl.SSLError):
            return PermanentError(
                f"TLS with {where} failed ({exc.reason or exc}): check security and port "
                "(ssl is usually port 465, starttls port 587)"
            )
        if isinstance(exc, ConnectionRefusedError):
            return TransientError(f"cannot connect to {where}: connection refused (is the mail server up?)")
        if isinstance(exc, TimeoutError):
            return TransientError(self._timeout_reason())
        if isinstance(exc, OSError):
            return TransientError(f"cannot reach {where}: {exc.strerror or exc}")
        return TransientError(f"{where}: {exc}")

    def _timeout_reason(self) -> str:
        settings = self.settings
        reason = f"{self.where} did not answer within {settings.timeout:g} s"
        if settings.security != "ssl" and settings.effective_port == 465:
            reason += " (port 465 expects security: ssl)"
        return reason

    # -- checks ---------------------------------------------------------------------------------

    def offline_check(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        try:
            self._tls_context()
        except PermanentError as exc:
            return [exc.reason]
        return []

    def online_check(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        """Connect, STARTTLS/SSL, log in, and ask whether the server takes mail from `from`; send nothing."""
        smtp: smtplib.SMTP | None = None
        polite = True
        try:
            smtp = self._open()
            code, reply = smtp.mail(self.sender.address)
            if code != 250:
                return [f"{self.where} refuses mail from {self.sender.address}: {code} {_text(reply)}; check from"]
            smtp.rset()
            return []
        except ConnectorError as exc:
            return [exc.reason]
        except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
            polite = isinstance(exc, smtplib.SMTPResponseException)
            return [self._failure(exc).reason]
        finally:
            if smtp is not None:
                _close(smtp, polite)


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    """AUTH; smtplib encodes credentials as ASCII, so a password like 'contraseña' goes as UTF-8
    AUTH PLAIN (RFC 4616) here."""
    if username.isascii() and password.isascii():
        smtp.login(username, password)
        return
    mechanisms = smtp.esmtp_features.get("auth", "").upper().split()
    if "PLAIN" not in mechanisms:
        raise PermanentError(
            "the username or password has non-ASCII characters (ñ, accents), which this mail server's "
            f"AUTH methods ({' '.join(mechanisms) or 'none'}) cannot carry: use an ASCII password"
        )
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
    code, reply = smtp.docmd("AUTH", f"PLAIN {token}")
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, reply)


def _close(smtp: smtplib.SMTP, polite: bool) -> None:
    """QUIT when the server is still talking; after a timeout or a broken connection just close,
    so a hung server does not hold the worker for another timeout."""
    try:
        if polite and smtp.sock is not None:
            smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", errors="replace") if isinstance(reply, bytes) else reply
    return excerpt(" ".join(text.split()), 500)


def _by_code(reason: str, code: int) -> ConnectorError:
    """SMTP reply classes: 4xx try again later, 5xx will not work as it is (RFC 5321 4.2.1)."""
    if 500 <= code < 600:
        return PermanentError(reason)
    return TransientError(reason)


def _bodies(fields: dict[str, Any], who: str) -> tuple[str, str]:
    text = fields.get("text") if fields.get("text") is not None else fields.get("text_template")
    html = fields.get("html") if fields.get("html") is not None else fields.get("html_template")
    text, html = str(text or ""), str(html or "")
    if not text.strip() and not html.strip():
        raise PermanentError(f"{who}: the e-mail body is empty (text and html gave nothing); nothing was sent")
    if not text.strip():
        text = html_to_text(html)
    return text, html if html.strip() else ""


def _sendable(text: str, who: str, label: str) -> str:
    """Text that can be encoded in an e-mail; event data with a lone UTF-16 surrogate cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PermanentError(
            f"{who}: {label} holds a character that cannot be sent ({exc.object[exc.start]!r} at position "
            f"{exc.start}, half of an emoji cut in two?); nothing was sent"
        ) from None
    return text


def _kind(request: ActionRequest) -> str:
    return request.event_type.partition(".")[0]


def _who(request: ActionRequest) -> str:
    """'order 789', 'booking 12345': what the owner recognises, for error reasons."""
    entity = request.subject.primary if request.subject is not None else None
    return f"{entity[0]} {entity[1]}" if entity else f"event {request.event_id}"


def _customer_of(request: ActionRequest) -> tuple[str, Mapping[str, Any] | None]:
    """Where the customer of this event would be known, and what is known (None: not at all)."""
    kind = _kind(request)
    view = request.booking if kind == "booking" else request.order if kind == "order" else None
    if view is not None:
        cliente = view.get("cliente")
        return f"{kind}.created", cliente if isinstance(cliente, Mapping) else None
    return "customer.created", request.customer


def _missing_reason(request: ActionRequest, who: str, label: str) -> str:
    kind = _kind(request)
    source, customer = _customer_of(request)
    if kind in ("booking", "order") and customer is None:
        return (
            f"{who}: customer e-mail unknown ({source} not received); {label} is empty, so nothing was sent. "
            f"Check that the platform sends {source} to this bridge"
        )
    if customer is not None and not customer.get("email"):
        return (
            f"{who}: customer e-mail unknown (the customer has no e-mail address on the platform); "
            f"{label} is empty, so nothing was sent"
        )
    return f"{who}: {label} is empty, so nothing was sent: check that its template gives an address for {kind} events"


def _invalid_reason(request: ActionRequest, who: str, label: str, value: str, exc: AddressError) -> str:
    _, customer = _customer_of(request)
    shown = excerpt(repr(value), 160)
    if customer is not None and str(customer.get("email", "")).strip() and str(customer["email"]).strip() in value:
        return (
            f"{who}: the customer's e-mail {shown} is not a valid address ({exc}); nothing was sent. "
            "Correct it in the customer's profile on the platform"
        )
    return f"{who}: {label} is not a valid e-mail address: {shown} ({exc}); nothing was sent"
