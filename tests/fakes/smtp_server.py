"""A real SMTP server (aiosmtpd) on 127.0.0.1 that records what it accepts and answers as a test scripts it.

Variants: plain, STARTTLS (with a certificate from `make_certificates`), implicit TLS, and AUTH
(PLAIN/LOGIN, only over TLS). `SilentServer` accepts connections and never says a word (timeouts).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Certificates:
    """PEM files: a test CA, and a server certificate it signed for 127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_certificates(folder: Path, common_name: str = "salon-bridge test CA") -> Certificates:
    """A fresh CA and server certificate, so TLS verification stays on in tests."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def free_port() -> int:
    """A port nobody listens on right now (aiosmtpd cannot bind port 0 and report it)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class Received:
    """One message the server accepted: the SMTP envelope and the raw bytes."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    authenticated_as: str | None

    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Script:
    mail: list[str] = field(default_factory=list)
    rcpt: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


Mode = Literal["plain", "starttls", "ssl"]


class SmtpServer:
    """Records accepted messages; `respond_with(stage, reply)` scripts the next MAIL/RCPT/DATA answer."""

    def __init__(
        self,
        mode: Mode = "plain",
        certificates: Certificates | None = None,
        users: dict[str, str] | None = None,
        smtputf8: bool = False,
    ):
        self.messages: list[Received] = []
        self.auth_attempts: list[tuple[str, bool]] = []
        self.data_delay = 0.0  # seconds between taking a message and answering 250 (a late answer)
        self._script = _Script()
        self._lock = threading.Lock()
        self.port = free_port()
        self.host = HOST
        self.users = users
        context = None
        if mode != "plain":
            assert certificates is not None, "TLS modes need certificates"
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certificates.cert_file, certificates.key_file)
        kwargs: dict[str, Any] = {
            "hostname": HOST,
            "port": self.port,
            "server_hostname": "fake-smtp.test",
            "enable_SMTPUTF8": smtputf8,
            "ready_timeout": 5.0,
        }
        if mode == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif mode == "ssl":
            kwargs.update(ssl_context=context)
        if users is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=True)
        self._controller = Controller(_Handler(self), **kwargs)

    def respond_with(self, stage: Literal["MAIL", "RCPT", "DATA"], reply: str) -> None:
        """Answer the next command of that stage with `reply` (e.g. '451 4.3.0 try later'); then accept again."""
        with self._lock:
            getattr(self._script, stage.lower()).append(reply)

    def refuse_recipient(self, address: str, reply: str = "550 5.1.1 mailbox unavailable") -> None:
        """Always refuse RCPT TO for this address."""
        with self._lock:
            self._script.refused[address.lower()] = reply

    def _next(self, stage: str) -> str | None:
        with self._lock:
            queue: list[str] = getattr(self._script, stage)
            return queue.pop(0) if queue else None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode()
        ok = self.users is not None and self.users.get(login) == auth_data.password.decode()
        with self._lock:
            self.auth_attempts.append((login, ok))
        # handled=False: aiosmtpd answers the failure itself (535 5.7.8)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


class _Handler:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        scripted = self.server._next("mail")
        if scripted:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        with self.server._lock:
            refused = self.server._script.refused.get(address.lower())
        scripted = refused or self.server._next("rcpt")
        if scripted:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        scripted = self.server._next("data")
        if scripted:
            return scripted
        content = envelope.original_content or b""
        login = session.auth_data if isinstance(session.auth_data, str) else None
        with self.server._lock:
            self.server.messages.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), content, list(envelope.mail_options), login)
            )
        if self.server.data_delay:
            await asyncio.sleep(self.server.data_delay)
        return "250 2.0.0 queued as FAKE123"


class SilentServer:
    """Accepts TCP connections (the kernel does, via the backlog) and never answers: a hung server."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind((HOST, 0))
        self._socket.listen(8)
        self.host = HOST
        self.port = int(self._socket.getsockname()[1])

    def stop(self) -> None:
        self._socket.close()
