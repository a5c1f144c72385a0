"""Check Amazon SNS HTTP(S) envelopes: required keys, topic, certificate URL, signature.

Follows reference §1.3 (the AWS PHP and JS validators): required keys by ``Type``;
``TopicArn`` on the provider's allow-list; ``SigningCertURL`` validated before any
fetch (https, parsed host matching the SNS host pattern, ``.pem`` path, no userinfo or
port); RSA PKCS#1 v1.5 over the canonical string, SHA-1 for ``SignatureVersion`` "1" and
SHA-256 for "2". Certificates come from an injected :class:`CertificateSource` and are
cached by URL.
"""

from __future__ import annotations

import base64
import http.client
import re
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict

from providers.callbacks.events import CallbackRejected, header, is_text, load_json

# Reference §1.3: the default of both official AWS validators (DISPATCH_SNS_HOST_PATTERN).
DEFAULT_SNS_HOST_PATTERN = r"^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$"
DEFAULT_CERT_CACHE_SIZE = 32
DEFAULT_FETCH_TIMEOUT = 10.0
MAX_CERT_BYTES = 64 * 1024
# The oldest envelope accepted, by its signed ``Timestamp``. SNS retries an HTTP/S delivery
# for at most 3,600 s in total, a hard limit of every delivery policy (AWS, "Amazon SNS
# message delivery retries"); the second hour covers clock skew and SNS's own delays. An
# older envelope is a captured one replayed: refused, since redeliveries are recognised
# only within DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS.
DEFAULT_SNS_MAX_AGE = timedelta(hours=2)


class SnsMessageType(StrEnum):
    """The envelope ``Type`` values (reference §1.2)."""

    NOTIFICATION = "Notification"
    SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
    UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"


# Signature algorithm by SignatureVersion; any other version is refused.
SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
# Keys of the string to sign, in this exact order; absent keys are skipped (reference §1.3).
_NOTIFICATION_SIGNED = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_SIGNED = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
SIGNED_KEYS: dict[SnsMessageType, tuple[str, ...]] = {
    SnsMessageType.NOTIFICATION: _NOTIFICATION_SIGNED,
    SnsMessageType.SUBSCRIPTION_CONFIRMATION: _CONFIRMATION_SIGNED,
    SnsMessageType.UNSUBSCRIBE_CONFIRMATION: _CONFIRMATION_SIGNED,
}
# Required keys (the AWS JS validator's rule): these for every type, plus the extras.
REQUIRED_KEYS = (
    "Type",
    "MessageId",
    "Timestamp",
    "TopicArn",
    "Message",
    "Signature",
    "SignatureVersion",
    "SigningCertURL",
)
EXTRA_REQUIRED_KEYS: dict[SnsMessageType, tuple[str, ...]] = {
    SnsMessageType.NOTIFICATION: (),
    SnsMessageType.SUBSCRIPTION_CONFIRMATION: ("SubscribeURL", "Token"),
    SnsMessageType.UNSUBSCRIBE_CONFIRMATION: ("SubscribeURL", "Token"),
}
_OPTIONAL_KEYS = ("Subject", "SubscribeURL", "Token", "UnsubscribeURL")


class SnsEnvelope(BaseModel):
    """A structurally valid SNS envelope (not yet verified: see :class:`SnsVerifier`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: SnsMessageType
    message_id: str
    topic_arn: str
    message: str
    timestamp: str
    signature: str
    signature_version: str
    signing_cert_url: str
    subject: str | None = None
    subscribe_url: str | None = None
    token: str | None = None
    unsubscribe_url: str | None = None

    def string_to_sign(self) -> bytes:
        """The canonical string of reference §1.3, UTF-8 encoded."""
        values = {
            "Message": self.message,
            "MessageId": self.message_id,
            "Subject": self.subject,
            "SubscribeURL": self.subscribe_url,
            "Timestamp": self.timestamp,
            "Token": self.token,
            "TopicArn": self.topic_arn,
            "Type": self.type.value,
        }
        text = "".join(
            f"{key}\n{values[key]}\n" for key in SIGNED_KEYS[self.type] if values[key] is not None
        )
        return text.encode()


def parse_envelope(body: bytes | str, headers: Mapping[str, str] | None = None) -> SnsEnvelope:
    """Parse an SNS request body (sent as ``text/plain``: parsed as JSON regardless).

    ``headers``, when given, are cross-checked: ``x-amz-sns-message-type`` must equal
    ``Type`` and ``x-amz-sns-message-id`` ``MessageId``; raw message delivery is refused.
    Every value is text that can be encoded (:meth:`SnsEnvelope.string_to_sign` needs it).
    Raises :class:`CallbackRejected` (400) naming the problem.
    """
    if (header(headers, "x-amz-sns-rawdelivery") or "").lower() == "true":
        raise CallbackRejected(_RAW_DELIVERY)
    data = load_json(body)
    if not isinstance(data, dict):
        raise CallbackRejected("invalid payload: an SNS envelope is a JSON object")
    if "Type" not in data and ("notificationType" in data or "eventType" in data):
        raise CallbackRejected(_RAW_DELIVERY)
    if "Type" not in data:
        raise CallbackRejected("Mandatory parameter missing: Type")
    try:
        kind = SnsMessageType(data["Type"])
    except ValueError:
        raise CallbackRejected(f"invalid payload: unknown SNS Type {data['Type']!r}") from None
    for key in (*REQUIRED_KEYS, *EXTRA_REQUIRED_KEYS[kind]):
        if data.get(key) is None:
            raise CallbackRejected(f"Mandatory parameter missing: {key}")
    for key in (*REQUIRED_KEYS, *_OPTIONAL_KEYS):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise CallbackRejected(f"invalid payload: {key} must be a string")
        # SNS signs the UTF-8 bytes of these values: one holding a lone surrogate cannot
        # be encoded, so it cannot be what SNS signed.
        if data.get(key) is not None and not is_text(data[key]):
            raise CallbackRejected(f"invalid payload: {key} holds a lone UTF-16 surrogate")
    for name, key in (("x-amz-sns-message-type", "Type"), ("x-amz-sns-message-id", "MessageId")):
        sent = header(headers, name)
        if sent is not None and sent != data[key]:
            raise CallbackRejected(f"invalid payload: header {name} does not match body {key}")
    return SnsEnvelope(
        type=kind,
        message_id=data["MessageId"],
        topic_arn=data["TopicArn"],
        message=data["Message"],
        timestamp=data["Timestamp"],
        signature=data["Signature"],
        signature_version=data["SignatureVersion"],
        signing_cert_url=data["SigningCertURL"],
        subject=data.get("Subject"),
        subscribe_url=data.get("SubscribeURL"),
        token=data.get("Token"),
        unsubscribe_url=data.get("UnsubscribeURL"),
    )


_RAW_DELIVERY = (
    "invalid payload: SNS raw message delivery is not supported; "
    "turn it off on the subscription so messages arrive signed"
)


class CertificateUnavailable(Exception):
    """A certificate could not be loaded. ``permanent``: asking again will not help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class CertificateSource(Protocol):
    """Where signing certificates come from; the URL is already validated."""

    def load(self, url: str) -> bytes:
        """Return the PEM certificate at ``url``; raise :class:`CertificateUnavailable`."""
        ...


def certificate_file_name(url: str) -> str:
    """The file name of a certificate URL's path, e.g. ``SimpleNotificationService-x.pem``."""
    return PurePosixPath(urlsplit(url).path).name


class DirectoryCertificateSource:
    """PEM files in a folder, looked up by the file name of ``SigningCertURL``.

    Serves offline deployments and tests (``DISPATCH_SNS_CERT_DIR``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self, url: str) -> bytes:
        """Read ``<path>/<file name of url>``; raises :class:`CertificateUnavailable`."""
        name = certificate_file_name(url)
        if not name.endswith(".pem") or name.startswith("."):
            raise CertificateUnavailable(f"no certificate file name in {url!r}", permanent=True)
        try:
            return (self.path / name).read_bytes()
        except OSError as exc:
            raise CertificateUnavailable(f"certificate {name} not in {self.path}") from exc


def check_age(timestamp: str, max_age: timedelta, now: datetime) -> None:
    """Refuse an envelope whose ``Timestamp`` is more than ``max_age`` before ``now``.

    Raises :class:`CallbackRejected` (400) when it is, or when it is not an ISO 8601 time.
    """
    try:
        signed_at = datetime.fromisoformat(timestamp.strip())
    except ValueError:
        raise CallbackRejected(
            f"invalid payload: Timestamp {timestamp!r} is not an ISO 8601 time"
        ) from None
    signed_at = signed_at if signed_at.tzinfo else signed_at.replace(tzinfo=UTC)
    if now - signed_at > max_age:
        raise CallbackRejected(
            f"invalid payload: SNS message too old (Timestamp {timestamp}, more than "
            f"{int(max_age.total_seconds())} s ago): a replay, SNS retries for at most an hour"
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        # The URL was validated, its redirect target was not: never follow one.
        return None


class HttpsCertificateSource:
    """Fetch certificates over HTTPS with normal TLS verification and no redirects."""

    def __init__(self, *, timeout: float = DEFAULT_FETCH_TIMEOUT) -> None:
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect())

    def load(self, url: str) -> bytes:
        """GET ``url``; raises :class:`CertificateUnavailable` (permanent on HTTP 4xx)."""
        try:
            with self._opener.open(url, timeout=self.timeout) as response:
                data: bytes = response.read(MAX_CERT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            permanent = 400 <= exc.code < 500
            raise CertificateUnavailable(
                f"GET {url}: HTTP {exc.code}", permanent=permanent
            ) from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, timeouts, TLS failures; a connection cut inside a chunked body, a
            # status line or headers http.client refuses (these escaped as a 500).
            reason = " ".join(str(exc).split())[:200]  # a status line is the server's text
            raise CertificateUnavailable(f"GET {url}: {type(exc).__name__}: {reason}") from exc
        if len(data) > MAX_CERT_BYTES:
            raise CertificateUnavailable(f"GET {url}: certificate too large", permanent=True)
        return data


class ChainedCertificateSource:
    """Try each source in turn: e.g. the certificate folder first, then HTTPS."""

    def __init__(self, *sources: CertificateSource) -> None:
        if not sources:
            raise ValueError("ChainedCertificateSource needs at least one source")
        self.sources = sources

    def load(self, url: str) -> bytes:
        """The first source's certificate; raises the last :class:`CertificateUnavailable`."""
        failure: CertificateUnavailable | None = None
        for source in self.sources:
            try:
                return source.load(url)
            except CertificateUnavailable as exc:
                failure = exc
        assert failure is not None
        raise failure


class SnsVerifier:
    """Verifies SNS envelopes; one per service (it caches certificates by URL)."""

    def __init__(
        self,
        certificates: CertificateSource,
        *,
        host_pattern: str = DEFAULT_SNS_HOST_PATTERN,
        cache_size: int = DEFAULT_CERT_CACHE_SIZE,
    ) -> None:
        self.certificates = certificates
        self.host_pattern = re.compile(host_pattern)
        self._cache: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def verify(
        self,
        body: bytes | str,
        *,
        topic_arns: Collection[str],
        headers: Mapping[str, str] | None = None,
        max_age: timedelta | None = None,
        now: datetime | None = None,
    ) -> SnsEnvelope:
        """Parse and verify one SNS request; return the envelope once it is trusted.

        Checks, in order: structure and headers (:func:`parse_envelope`), ``TopicArn`` in
        ``topic_arns``, ``SignatureVersion``, ``SigningCertURL``, the signature, the age
        of the signed ``Timestamp`` (older than ``max_age`` before ``now``: a replay; None:
        no bound), and for a ``SubscriptionConfirmation`` its ``SubscribeURL``. Raises
        :class:`CallbackRejected`: 400 for a request to refuse, 503 when the certificate
        cannot be loaded right now.
        """
        envelope = parse_envelope(body, headers)
        if envelope.topic_arn not in topic_arns:
            raise CallbackRejected(
                f"invalid payload: TopicArn {envelope.topic_arn!r} is not on the provider's "
                "allow-list (sns_topic_arns)"
            )
        algorithm = SIGNATURE_HASHES.get(envelope.signature_version)
        if algorithm is None:
            raise CallbackRejected(
                f"invalid payload: SignatureVersion {envelope.signature_version!r} is not supported"
            )
        self.check_url(envelope.signing_cert_url, "SigningCertURL", certificate=True)
        try:
            signature = base64.b64decode(envelope.signature, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII characters
            raise CallbackRejected("invalid payload: Signature is not base64") from exc
        key = self._public_key(envelope.signing_cert_url)
        try:
            key.verify(signature, envelope.string_to_sign(), padding.PKCS1v15(), algorithm())
        except InvalidSignature as exc:
            raise CallbackRejected("invalid payload: SNS signature does not verify") from exc
        if max_age is not None:
            check_age(envelope.timestamp, max_age, now or datetime.now(UTC))
        if envelope.type is SnsMessageType.SUBSCRIPTION_CONFIRMATION:
            self._check_subscribe_url(envelope)
        return envelope

    def check_url(self, url: str, what: str, *, certificate: bool = False) -> SplitResult:
        """Refuse ``url`` unless it is https on an SNS host, without userinfo or port.

        The host pattern is matched against the URL's authority: the host, followed by
        ``:port`` when the URL names a port, so the default pattern (anchored) refuses
        every explicit port while a test pattern may allow a local server's.
        ``certificate``: also require a ``.pem`` path and no query or fragment.
        Raises :class:`CallbackRejected` (400) naming ``what``.
        """
        if not url.isascii() or any(ch.isspace() or ch == "\\" or ord(ch) < 32 for ch in url):
            raise CallbackRejected(f"invalid payload: {what} has forbidden characters")
        try:
            parts = urlsplit(url)
        except ValueError:  # an unbalanced "[" or "]" ("Invalid IPv6 URL")
            raise CallbackRejected(f"invalid payload: {what} is not a URL") from None
        if parts.scheme != "https":
            raise CallbackRejected(f"invalid payload: {what} must be an https URL")
        host = parts.hostname or ""
        try:
            port = parts.port
        except ValueError:
            raise CallbackRejected(
                f"invalid payload: {what} must not carry userinfo or a port"
            ) from None
        authority = host if port is None else f"{host}:{port}"
        # netloc equal to host[:port] rules out userinfo ("sns...@evil") and brackets.
        if parts.netloc.lower() != authority:
            raise CallbackRejected(f"invalid payload: {what} must not carry userinfo or a port")
        if not self.host_pattern.fullmatch(authority):
            if port is not None:
                raise CallbackRejected(f"invalid payload: {what} must not carry a port")
            raise CallbackRejected(f"invalid payload: {what} host {host!r} is not an SNS host")
        if certificate and (not parts.path.endswith(".pem") or parts.query or parts.fragment):
            raise CallbackRejected(f"invalid payload: {what} is not a .pem file")
        return parts

    def _check_subscribe_url(self, envelope: SnsEnvelope) -> None:
        url = envelope.subscribe_url or ""
        query = parse_qs(self.check_url(url, "SubscribeURL").query)
        if query.get("Action") != ["ConfirmSubscription"]:
            raise CallbackRejected("invalid payload: SubscribeURL is not a ConfirmSubscription")
        if query.get("TopicArn", [envelope.topic_arn]) != [envelope.topic_arn]:
            raise CallbackRejected("invalid payload: SubscribeURL names another topic")

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            cached = self._cache.get(url)
            if cached is not None:
                self._cache.move_to_end(url)
                return cached
        try:
            pem = self.certificates.load(url)
        except CertificateUnavailable as exc:
            status = 400 if exc.permanent else 503
            raise CallbackRejected(f"signing certificate unavailable: {exc}", status) from exc
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError as exc:
            raise CallbackRejected(f"signing certificate unreadable: {url}", 503) from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise CallbackRejected("invalid payload: signing certificate has no RSA key")
        with self._lock:
            self._cache[url] = key
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return key
