"""A real SMTP server for tests (aiosmtpd on 127.0.0.1): records, refuses, throttles on cue."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)  # MAIL FROM's parameters

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Handler:
    """Records every message; ``mail_reply``/``rcpt_reply``/``data_reply`` may answer
    instead of 250. A ``421`` reply closes the connection after it is sent (RFC 5321
    §3.8), as real servers do; the reply ``DROP`` closes it without a word (for DATA: after
    the message was received, not recorded). ``pipelining`` advertises PIPELINING."""

    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    active: int = 0  # connections open now
    peak: int = 0  # most connections open at once
    open_transports: list[Any] = field(default_factory=list)
    mail_reply: Callable[[str], str | None] = lambda address: None
    rcpt_reply: Callable[[str], str | None] = lambda address: None
    data_reply: Callable[[Envelope], str | None] = lambda envelope: None
    pipelining: bool = False
    commands: list[str] = field(default_factory=list)  # MAIL, RCPT and DATA, as received
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    @staticmethod
    def _answer(server: SMTP, reply: str) -> str:
        if reply == "DROP":
            assert server.transport is not None
            server.transport.abort()
            return ""
        if reply.startswith("421"):
            assert server.transport is not None
            asyncio.get_running_loop().call_soon(server.transport.close)
        return reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.commands.append(f"MAIL {address}")
        reply = self.mail_reply(address)
        if reply:
            return self._answer(server, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.commands.append(f"RCPT {address}")
        reply = self.rcpt_reply(address)
        if reply:
            return self._answer(server, reply)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("DATA")
        reply = self.data_reply(envelope)
        if reply:
            return self._answer(server, reply)
        with self.lock:
            self.messages.append(
                Received(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    bytes(envelope.content),  # type: ignore[arg-type]
                    list(envelope.mail_options),
                )
            )
        return "250 OK queued"


class CountingSMTP(SMTP):
    """aiosmtpd's server, counting connections."""

    def connection_made(self, transport: Any) -> None:
        handler = self.event_handler
        handler.connections += 1
        handler.active += 1
        handler.peak = max(handler.peak, handler.active)
        handler.open_transports.append(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.event_handler.active -= 1
        if self.transport in self.event_handler.open_transports:
            self.event_handler.open_transports.remove(self.transport)
        super().connection_lost(exc)


def self_signed_cert(directory: Path, hosts: Sequence[str] = ()) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and the DNS names ``hosts`` (cert, key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    names += [x509.DNSName(host) for host in hosts]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(names),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SmtpTestServer:
    """Start with ``security`` none / starttls / tls and optional AUTH credentials;
    ``cert``: the (certificate, key) files to serve TLS with (default: a new self-signed
    one for 127.0.0.1)."""

    def __init__(
        self,
        *,
        security: str = "none",
        credentials: tuple[str, str] | None = None,
        cert: tuple[Path, Path] | None = None,
        smtputf8: bool = False,
        data_size_limit: int | None = None,
    ) -> None:
        self.handler = Handler()
        self.data_size_limit = data_size_limit  # its SIZE (None: aiosmtpd's default, 32 MiB)
        self.smtputf8 = smtputf8  # advertise SMTPUTF8 (RFC 6531) and take UTF-8 addresses
        self.security = security
        self.credentials = credentials
        self.cert = cert
        self._dir = tempfile.TemporaryDirectory()
        self._controller: Controller | None = None
        self.port = 0

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword) or self.credentials is None:
            return AuthResult(success=False, handled=False)
        ok = (data.login.decode(), data.password.decode()) == self.credentials
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpTestServer:
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": self.smtputf8}
        if self.data_size_limit is not None:
            kwargs["data_size_limit"] = self.data_size_limit
        context = None
        if self.security in ("starttls", "tls"):
            cert, key = self.cert or self_signed_cert(Path(self._dir.name))
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
        if self.security == "starttls":
            kwargs["tls_context"] = context
            kwargs["require_starttls"] = True
        if self.credentials is not None:
            kwargs["authenticator"] = self._authenticator
            kwargs["auth_require_tls"] = False
        handler = self.handler

        class _Controller(Controller):
            def factory(self) -> SMTP:
                return CountingSMTP(handler, **kwargs)

        self.port = free_port()
        self._controller = _Controller(
            handler,
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=context if self.security == "tls" else None,
        )
        self._controller.start()
        self.handler.connections = 0  # the controller's own readiness probe is not a client
        self.handler.peak = self.handler.active
        return self

    def hang_up(self) -> None:
        """Close every client connection from the server's side (an idle timeout)."""
        assert self._controller is not None and self._controller.loop is not None
        for transport in list(self.handler.open_transports):
            self._controller.loop.call_soon_threadsafe(transport.close)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
        self._dir.cleanup()

    def __enter__(self) -> SmtpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages
