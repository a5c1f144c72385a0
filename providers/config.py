"""Provider configurations: one pydantic model per kind, fields as in DESIGN §2.

A configuration is what a user saves under a nickname. Secrets are ``SecretStr`` so
they never show in ``repr`` or logs; the service encrypts them at rest.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Final, Literal, Self
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from providers.addresses import check_header_value, normalize_address, same_address
from providers.callbacks.events import is_text
from providers.callbacks.sendgrid import load_public_key
from providers.tls import load_ca

NICKNAME_PATTERN = r"^[a-z0-9-]{1,64}$"
# The context key of a validation error that holds several "field: message" problems.
FIELD_PROBLEMS: Final = "field_problems"
DEFAULT_MAX_CONNECTIONS = 4
DEFAULT_RATE_PER_SECOND = 0.0  # 0: no pacing beyond the connection limit
# The slowest pace: one message a day. A slower one reserves sends years ahead (a rate of
# 1e-300 made the pace script's expiry overflow: a 500 on the test email, every batch
# failing); a daily limit is daily_quota's.
MIN_RATE_PER_SECOND: Final = 1 / 86400
DEFAULT_SMTP_TIMEOUT = 30.0
# The wait for the reply to the end of a message's content (the final "." of DATA): RFC
# 5321 §4.5.3.2.6 asks for 10 minutes at least, since the server may check the message
# (spam, viruses) before it answers, and Postfix's smtp_data_done_timeout is the same.
# No reply in time leaves the message unknown (perhaps taken; never resent), so waiting
# long is cheap beside it: a server that answers does so in seconds, and one that is
# gone closes the connection, which ends the wait at once.
DEFAULT_SMTP_DATA_TIMEOUT = 600.0
# At most: a batch task is killed at half the broker's visibility timeout (30 minutes by
# default, dispatch.celery_app), which leaves its messages on the wire unknown too.
MAX_SMTP_DATA_TIMEOUT = 900.0
# The longest ``timeout`` saved (SMTP and HTTP): each wait of a send must end inside the
# batch task's time limit. The end of data waited the longer of data_timeout and timeout,
# so an unbounded timeout (100,000 s was saved) made MAX_SMTP_DATA_TIMEOUT no bound.
MAX_TIMEOUT = 900.0
DEFAULT_HTTP_TIMEOUT = 30.0
DEFAULT_HTTP_BATCH_SIZE = 1000  # the seed's maximum batch
MAX_COUNT = 2**63 - 1  # limits are counted in Redis, in signed 64 bits
MAX_TLS_CA_CHARS = 256 * 1024  # a PEM bundle of a few private CAs

Security = Literal["none", "starttls", "tls"]
PreferenceCenter = Literal["none", "system", "custom"]

# Validation context of a configuration read back from storage. Checks of what a user
# gives (addresses, keys) run when it is saved; a rule added later must not make a saved
# configuration unreadable, since its campaigns, callbacks and listing read it.
STORED: Final = {"stored": True}


def _given(info: ValidationInfo) -> bool:
    """Whether the value is being given (saved), not read back from storage."""
    return not (isinstance(info.context, dict) and info.context.get("stored"))


def check_display_name(value: str) -> str:
    """``value`` if a header can carry it as a display name; raises ``ValueError``."""
    try:
        check_header_value("display name", value)
    except ValueError:
        raise ValueError("line breaks and control characters are not allowed") from None
    return value


def check_address(value: str) -> str:
    """``value`` if messages can be sent from, copied or answered to it (the SMTP
    envelope and headers take it through ``normalize_address``); raises
    ``InvalidAddressError`` (a ``ValueError``) saying why."""
    check_display_name(value)
    normalize_address(value)
    return value


# orjson, which stores and sends JSON values, writes integers from -2**63 to 2**64 - 1
# and reads a wider one back as a float: such a value could not round-trip exactly.
WIDE_INTEGER_PROBLEM: Final = "integers beyond 64 bits are not supported; send it as a string"
_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1


def _first_path(
    value: Any, path: str, bad: Callable[[Any], bool], bad_key: Callable[[Any], bool]
) -> str | None:
    """The dotted path (``path.key.0``) of the first leaf of a JSON value that is ``bad``,
    or of the object holding the first key that is ``bad_key``; None if there is none."""
    if bad(value):
        return path
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    for key, item in items:
        if bad_key(key):
            return path
        found = _first_path(item, f"{path}.{key}" if path else str(key), bad, bad_key)
        if found is not None:
            return found
    return None


def _wide(value: Any) -> bool:
    return isinstance(value, int) and not _JSON_INT_MIN <= value <= _JSON_INT_MAX


def find_wide_integer(value: Any, path: str) -> str | None:
    """The dotted path (``path.key.0``) of the first integer in a JSON value that is
    beyond 64 bits (see :data:`WIDE_INTEGER_PROBLEM`), or None."""
    return _first_path(value, path, _wide, lambda key: False)


# JSON may escape a lone UTF-16 surrogate ("\\ud800"); it decodes to a str that no UTF-8
# encoder, JSON serializer or Redis write accepts (it was a 500 on save).
LONE_SURROGATE_PROBLEM: Final = "holds a lone UTF-16 surrogate, which is not text (no UTF-8 for it)"


def find_lone_surrogate(value: Any, path: str) -> str | None:
    """The dotted path (``path.key.0``) of the first string or object key in a JSON value
    holding a lone UTF-16 surrogate (see :data:`LONE_SURROGATE_PROBLEM`), or None; a key
    at fault is named by its object's path (the key itself cannot be shown; the top
    level's is ``path`` itself, possibly empty)."""
    return _first_path(value, path, _not_text, _not_text)


# JSON has no NaN nor infinity (orjson writes them as null: a value would change silently);
# Python's json and YAML read them (`NaN`, `Infinity`, `1e400`, `.inf`).
NOT_FINITE_PROBLEM: Final = (
    "not a finite number (NaN and Infinity are not JSON, and a number must fit a 64-bit float)"
)


def find_not_finite(value: Any, path: str) -> str | None:
    """The dotted path (``path.key.0``) of the first float in a JSON value that is NaN
    or infinite (see :data:`NOT_FINITE_PROBLEM`), in document order, or None.
    Iterative: a request body may nest as deep as the JSON parser let it."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            pairs: list[tuple[Any, Any]] = list(item.items())
        elif isinstance(item, list | tuple):
            pairs = list(enumerate(item))
        else:
            continue
        stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in reversed(pairs))
    return None


def _not_text(value: Any) -> bool:
    return isinstance(value, str) and not is_text(value)


# C0 and C1 controls, DEL, and the other line breaks of str.splitlines.
_FORBIDDEN_IN_CREDENTIAL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# What a secret field shows instead of its value (see public_view). Given back on save,
# it stands for the secret stored: a configuration read and saved again keeps it.
SECRET_MASK: Final = "********"


class ProviderBase(BaseModel):
    """Fields every kind shares."""

    # allow_inf_nan: JSON cannot store them (orjson writes null), so a provider saved with
    # ``rate_per_second: .inf`` (YAML) or ``1e400`` could no longer be read.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Names of fields that hold secrets: encrypted at rest, never returned.
    secret_fields: ClassVar[tuple[str, ...]] = ()

    nickname: str = Field(pattern=NICKNAME_PATTERN)
    from_name: str = ""
    from_address: str = ""
    reply_to: str = ""
    preference_center: PreferenceCenter = "none"
    preference_center_url: str = ""
    # Numbers are strict here and below: a JSON true is no port, "5" no count.
    max_connections: int = Field(default=DEFAULT_MAX_CONNECTIONS, ge=1, le=100, strict=True)
    rate_per_second: float = Field(default=DEFAULT_RATE_PER_SECOND, ge=0, strict=True)
    daily_quota: int | None = Field(default=None, ge=1, le=MAX_COUNT, strict=True)
    # Recipients in any 24 hours (to, cc and bcc of each message counted), as Gmail and SES
    # count them: a campaign with cc or bcc reaches it before daily_quota.
    daily_recipient_quota: int | None = Field(default=None, ge=1, le=MAX_COUNT, strict=True)
    # Certificate checks of the provider's TLS connections (STARTTLS, SMTPS, https://).
    # tls_verify false skips them (tests only); tls_ca, PEM certificates of a private CA,
    # is trusted instead of the default CAs.
    tls_verify: bool = True
    tls_ca: str = Field(default="", max_length=MAX_TLS_CA_CHARS)

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, data: Any) -> Any:
        """Refuse a lone surrogate anywhere, naming the field (see :func:`find_lone_surrogate`)."""
        found = find_lone_surrogate(data, "") if isinstance(data, dict) else None
        if found is not None:
            field, _, rest = found.partition(".")
            where = f" (at {found})" if rest else ""
            raise ValueError(f"{field or 'body'}: {LONE_SURROGATE_PROBLEM}{where}")
        return data

    @field_validator("rate_per_second")
    @classmethod
    def _rate(cls, value: float, info: ValidationInfo) -> float:
        """Checked on save: 0 (no pacing) or at least :data:`MIN_RATE_PER_SECOND`."""
        if 0 < value < MIN_RATE_PER_SECOND and _given(info):
            raise ValueError(
                f"{value!r} messages a second is slower than one a day ({MIN_RATE_PER_SECOND:.7f}):"
                " give 0 for no pacing, or daily_quota to limit the messages of a day"
            )
        return value

    @field_validator("tls_ca")
    @classmethod
    def _tls_ca(cls, value: str, info: ValidationInfo) -> str:
        """Checked on save: a bundle OpenSSL cannot read would fail every connection."""
        if value and _given(info):
            load_ca(value)
        return value

    @field_validator("username", "password", check_fields=False)
    @classmethod
    def _credential(cls, value: str | SecretStr, info: ValidationInfo) -> str | SecretStr:
        """Checked on save: a login with a line break or control character (a newline
        pasted with it) is refused by every server, as "credentials invalid"."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if _given(info) and _FORBIDDEN_IN_CREDENTIAL.search(text):
            raise ValueError(
                "holds a line break or control character (pasted with it?): give it alone"
            )
        return value

    @field_validator("timeout", check_fields=False)
    @classmethod
    def _wait(cls, value: float, info: ValidationInfo) -> float:
        """Checked on save (one saved before keeps its value): at most :data:`MAX_TIMEOUT`."""
        if value > MAX_TIMEOUT and _given(info):
            raise ValueError(
                f"{value:g} s is longer than {MAX_TIMEOUT:g} s, the longest wait a batch "
                "task's time limit leaves room for"
            )
        return value

    @field_validator("from_name", "from_address", "reply_to")
    @classmethod
    def _sender(cls, value: str, info: ValidationInfo) -> str:
        """Every message carries them in its headers (empty: not set)."""
        if value and _given(info):
            if info.field_name == "from_name":
                return check_display_name(value)
            return check_address(value)
        return value

    @model_validator(mode="after")
    def _custom_center_needs_url(self) -> ProviderBase:
        if self.preference_center == "custom" and not self.preference_center_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                "preference_center_url: an http(s) URL is required when preference_center "
                "is 'custom'"
            )
        return self

    def warnings(self) -> list[str]:
        """Saved, but worth telling the user."""
        return []

    def unchecked_tls_warnings(self, host: str, tls: bool) -> list[str]:
        """The warning for ``tls_verify`` false on TLS connections to ``host`` (none for
        this machine: a test server's): the field says "tests only", and saved without a
        word it took any certificate in production, silently."""
        if not tls or self.tls_verify or is_loopback_host(host):
            return []
        return [
            f"tls_verify false: the certificate of {host} is not checked, so whoever answers "
            "in its place on the way gets the credentials and every message (for tests "
            "only; a server with a certificate of a private CA: give the CA in tls_ca)"
        ]

    @property
    def longest_wait(self) -> float:
        """How long one chunk may wait for the provider's answers once it is sent, in
        seconds (a batch run must end inside its task's time limit)."""
        return 0.0

    def wait_fields(self) -> str:
        """The fields that make :attr:`longest_wait`, with their values (for a message
        that asks to lower them)."""
        return ""

    def sends_from_address(self) -> bool:
        """Whether every message carries a From address (a campaign must then have one)."""
        return True


# RFC 8314 §3.3: 465 is SMTPS (TLS from connect); 25 and 587 speak plain SMTP, secured
# with STARTTLS. The other security on these ports fails at every connect (a TLS
# handshake against a greeting, or a greeting awaited during one).
SMTPS_PORT: Final = 465
SUBMISSION_PORT: Final = 587  # the preset for starttls and none (DESIGN §2)
STARTTLS_PORTS: Final = (25, SUBMISSION_PORT)


def _preset_port(security: Security) -> int:
    """The port a ``port`` of 0 stands for, for ``security`` (DESIGN §2)."""
    return SMTPS_PORT if security == "tls" else SUBMISSION_PORT


# A host name (letters of any script, digits, "-", "_"; dot-separated) or an IP address.
_HOST_NAME = re.compile(r"[\w-]+(\.[\w-]+)*\.?")
# The SMTP endpoints of SES (email-smtp[-fips].<region>.amazonaws.com, and VPC endpoints
# whose names hold that label); amazonaws.com has other endpoints (the SES API's
# email.<region>.amazonaws.com) that take no SMTP.
SES_MAX_RECIPIENTS = 50  # recipients a message, To, Cc and Bcc (reference §4)
_SES_SMTP_HOST = re.compile(r"(.+\.)?email-smtp(-fips)?\.(?P<region>.+)\.amazonaws\.com\.?", re.I)
# The spaces a copy takes along with a login (a no-break one from a web page).
_PASTED_SPACES: Final = " \u00a0"
# A Google app password as its dialog shows it (and copies it): 16 letters in fours.
_SPACED_APP_PASSWORD = re.compile("[a-z]{4}([ \u00a0][a-z]{4}){3}")


def check_host(value: str) -> str:
    """``value`` if it is a host name or IP address to connect to; raises ``ValueError``
    saying what else it holds (a scheme, a port, a path)."""
    if "://" in value:
        raise ValueError(
            f"{value!r} holds a scheme: give the server's name alone (as "
            "'mail.example.com'); security says how to connect"
        )
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and _HOST_NAME.fullmatch(name):
        raise ValueError(f"{value!r} holds a port: give the host alone, and {port} in port")
    if len(value) > 253 or not _HOST_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a host name or IP address (no spaces, path or brackets)"
        )
    return value


class SmtpFamilyBase(ProviderBase):
    """Fields of every SMTP-speaking kind; presets fill host, port and security."""

    secret_fields: ClassVar[tuple[str, ...]] = ("password",)
    default_host: ClassVar[str] = ""
    default_security: ClassVar[Security] = "starttls"
    # A service's name and what its SMTP login takes (DESIGN §2); empty for any server,
    # where a login is optional.
    service: ClassVar[str] = ""
    credentials: ClassVar[str] = ""
    # Ports that speak TLS from connect, and plain SMTP secured with STARTTLS: RFC 8314's,
    # and a service's own (SES: 2465 and 2587, reference §4).
    smtps_ports: ClassVar[tuple[int, ...]] = (SMTPS_PORT,)
    starttls_ports: ClassVar[tuple[int, ...]] = STARTTLS_PORTS

    host: str = ""
    port: int = Field(default=0, ge=0, le=65535, strict=True)  # 0: the preset for `security`
    security: Security | None = None
    username: str = ""
    password: SecretStr = SecretStr("")
    timeout: float = Field(default=DEFAULT_SMTP_TIMEOUT, gt=0, strict=True)  # (see _wait)
    # The reply to the end of the content waits this long (or ``timeout``, if longer).
    data_timeout: float = Field(
        default=DEFAULT_SMTP_DATA_TIMEOUT, gt=0, le=MAX_SMTP_DATA_TIMEOUT, strict=True
    )
    # 0: unlimited
    max_messages_per_connection: int = Field(default=0, ge=0, le=MAX_COUNT, strict=True)
    max_recipients_per_message: int = Field(default=0, ge=0, le=MAX_COUNT, strict=True)

    @field_validator("username", "password")
    @classmethod
    def _service_login(cls, value: str | SecretStr) -> str | SecretStr:
        """A service's login (SES's SMTP credentials, SendGrid's ``apikey`` and API key, a
        Gmail address and app password) never begins or ends with a space: one pasted
        with it (copied from a console, a CSV or an e-mail) is saved without, since with it
        every login is refused (535) and the password, masked in every read, never shows
        why. Any other server's login is kept as given (a space may be part of it).
        Read back too: one stored with it before this rule, and kept by the mask of a
        save (a GET's answer PUT back keeps the stored password as it is), logs in."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        trimmed = text.strip(_PASTED_SPACES)
        if not cls.service or trimmed == text:
            return value
        return SecretStr(trimmed) if isinstance(value, SecretStr) else trimmed

    @property
    def effective_security(self) -> Security:
        """``security``; when not given, what the port speaks (465: ``tls``, 25 and 587:
        ``starttls``, RFC 8314; a service's own ports likewise), else the preset's."""
        if self.security is not None:
            return self.security
        return self._port_security(self.port)

    def _port_security(self, port: int) -> Security:
        """What ``port`` speaks when no security is given (0: the preset's)."""
        if port in self.smtps_ports:
            return "tls"
        return "starttls" if port in self.starttls_ports else self.default_security

    def preset_host(self) -> str:
        """The host an empty ``host`` stands for ("" for any server: none)."""
        return self.default_host

    @property
    def effective_host(self) -> str:
        return self.host or self.preset_host()

    def presets_left_empty(self) -> Self:
        """This configuration with the values its presets give left empty (host "",
        port 0, security None), so that it goes on following them: a read shows them
        applied (DESIGN §2's defaults), and a read saved back must not pin them (its
        security changed later would keep the port of the other one)."""
        host = "" if self.host.lower().rstrip(".") == self.preset_host() else self.host
        port, security = self.port, self.security
        if security is not None and port == _preset_port(security):
            port = 0
        if security is not None and security == self._port_security(port):
            security = None
        return self.model_copy(update={"host": host, "port": port, "security": security})

    @property
    def end_of_data_timeout(self) -> float:
        """How long the reply to the end of a message's content is waited for: never
        shorter than the other replies' wait."""
        return max(self.data_timeout, self.timeout)

    @property
    def longest_wait(self) -> float:
        """The end of data's wait after two of ``timeout``: opening a session (a silent
        server fails its first step) and the envelope's replies."""
        return self.end_of_data_timeout + 2 * self.timeout

    def wait_fields(self) -> str:
        return f"data_timeout {self.data_timeout:g} s, timeout {self.timeout:g} s"

    def service_starttls_ports(self) -> tuple[int, ...]:
        """The ports known to speak plain SMTP upgraded with STARTTLS at the host."""
        return self.starttls_ports

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return _preset_port(self.effective_security)

    @model_validator(mode="after")
    def _needs_host(self) -> SmtpFamilyBase:
        if not self.effective_host:
            raise ValueError("host: required for this kind")
        return self

    @field_validator("host")
    @classmethod
    def _host(cls, value: str, info: ValidationInfo) -> str:
        return check_host(value) if value and _given(info) else value

    @model_validator(mode="after")
    def _security_fits_port(self, info: ValidationInfo) -> SmtpFamilyBase:
        """Refuse, on save, a security its well-known port does not speak (RFC 8314, or
        the service's own ports). Only a security given can: without one, the port's is
        taken."""
        security, port = self.effective_security, self.effective_port
        if not _given(info):
            return self
        rule = "RFC 8314" if port in (SMTPS_PORT, *STARTTLS_PORTS) else f"{self.service}'s port"
        if security == "tls" and port in self.service_starttls_ports():
            raise ValueError(
                f"security: 'tls' (SMTPS: TLS from connect) on port {port}, which "
                f"speaks plain SMTP upgraded with STARTTLS ({rule}): the TLS handshake "
                f"would fail; use security 'starttls' on port {port}, or port "
                f"{SMTPS_PORT} for 'tls'"
            )
        if security != "tls" and port in self.smtps_ports:
            raise ValueError(
                f"security: {security!r} on port {port}, an SMTPS port (TLS from "
                f"connect, {rule}): the server would wait for a TLS handshake; use "
                f"security 'tls' on port {port}, or port 587 for 'starttls'"
            )
        return self

    def warnings(self) -> list[str]:
        warnings = []
        if not self.from_address:
            warnings.append(
                "from_address is empty: every campaign must give its own, and the test email "
                "cannot be sent"
            )
        given = {"username": self.username, "password": self.password.get_secret_value()}
        missing = [name for name, value in given.items() if not value]
        if self.credentials and missing:
            warnings.append(
                f"{' and '.join(missing)} empty: {self.service} refuses the session (campaigns "
                f"pause, the test email fails); give {self.credentials}"
            )
        if self.data_timeout < self.timeout:
            warnings.append(
                f"data_timeout ({self.data_timeout:g} s) is shorter than timeout "
                f"({self.timeout:g} s): the reply to a message's end waits timeout, "
                f"{self.timeout:g} s (RFC 5321 §4.5.3.2.6 asks for 10 minutes)"
            )
        password, clear = given["password"], self.effective_security == "none"
        if clear and self.service and not self.host:
            warnings.append(
                f"security 'none' against {self.effective_host}: {self.service} takes a login "
                "only over TLS (campaigns pause, the test email fails); use starttls or tls"
            )
        elif clear and self.username and password and not is_loopback_host(self.effective_host):
            # aiosmtplib logs in on a plain connection when the server offers AUTH there:
            # AUTH PLAIN and LOGIN carry the password as base64, readable on the way.
            warnings.append(
                f"security 'none' with a login: the password goes to {self.effective_host} "
                "in the clear, readable by anyone on the way; use starttls or tls (RFC 8314)"
            )
        if password and not self.username and not self.credentials:
            warnings.append(
                "password is given but username is empty: no login is made (AUTH takes both), "
                "and a server that asks for one refuses every message (campaigns pause)"
            )
        return warnings + self.unchecked_tls_warnings(self.effective_host, not clear)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine (its connections never leave it)."""
    name = host.lower().rstrip(".")
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return name == "localhost" or name.endswith(".localhost")


class SmtpConfig(SmtpFamilyBase):
    """Any SMTP server."""

    kind: Literal["smtp"] = "smtp"


# arn:<partition>:sns:<region>:<account>:<topic>; a FIFO topic's name ends in ".fifo".
SNS_TOPIC_ARN_PATTERN: Final = (
    r"^arn:aws(-[a-z]+)*:sns:[a-z]{2}(-[a-z]+)+-\d+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$"
)


class SesConfig(SmtpFamilyBase):
    """Amazon SES through its SMTP interface (SMTP credentials, not IAM keys)."""

    kind: Literal["ses"] = "ses"
    # Reference §4: 50 recipients a message (To, Cc and Bcc), not adjustable.
    max_recipients_per_message: int = Field(
        default=SES_MAX_RECIPIENTS, ge=0, le=MAX_COUNT, strict=True
    )
    service: ClassVar[str] = "Amazon SES"
    credentials: ClassVar[str] = (
        "the SMTP credentials made in the SES console (not IAM access keys)"
    )
    # Reference §4: SES's TLS wrapper ports and STARTTLS ports.
    smtps_ports: ClassVar[tuple[int, ...]] = (SMTPS_PORT, 2465)
    starttls_ports: ClassVar[tuple[int, ...]] = (*STARTTLS_PORTS, 2587)
    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    configuration_set: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,64}$")
    # The allow-list of callbacks: an SNS message from another topic is refused.
    sns_topic_arns: tuple[str, ...] = ()

    def preset_host(self) -> str:
        return f"email-smtp.{self.region}.amazonaws.com"

    @field_validator("host")
    @classmethod
    def _ses_host(cls, value: str, info: ValidationInfo) -> str:
        """An amazonaws.com host other than SES's SMTP endpoints (often the SES API's,
        email.<region>.amazonaws.com) takes no SMTP; other hosts (a relay, a local test
        server) may stand in for SES."""
        name = value.lower().rstrip(".")
        if _given(info) and name.endswith(".amazonaws.com") and not _SES_SMTP_HOST.fullmatch(name):
            raise ValueError(
                f"{value!r} is not an SES SMTP endpoint (email-smtp.<region>.amazonaws.com): "
                "leave host empty for the one of region"
            )
        return value

    @field_validator("max_recipients_per_message")
    @classmethod
    def _ses_recipients(cls, value: int, info: ValidationInfo) -> int:
        """SES takes 50 recipients a message at most, not adjustable (reference §4): more,
        or 0 (no limit), would let a campaign whose cc and bcc pass it be created, and
        every one of its messages fail. Checked on save, against SES's own endpoints (a
        local stand-in may take more)."""
        host = str(info.data.get("host") or "").lower().rstrip(".")
        ses = not host or _SES_SMTP_HOST.fullmatch(host)
        if _given(info) and ses and not 0 < value <= SES_MAX_RECIPIENTS:
            raise ValueError(
                f"SES takes 1 to {SES_MAX_RECIPIENTS} recipients a message (To, Cc and Bcc; "
                f"not adjustable): {value} {'(no limit) ' if not value else ''}would let "
                "messages it refuses be built"
            )
        return value

    @field_validator("sns_topic_arns")
    @classmethod
    def _topic_arns(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for arn in value if _given(info) else ():
            if not re.fullmatch(SNS_TOPIC_ARN_PATTERN, arn):
                raise ValueError(
                    f"{arn!r} is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)"
                )
        return value

    def warnings(self) -> list[str]:
        warnings = super().warnings()
        found = _SES_SMTP_HOST.fullmatch(self.host.lower().rstrip("."))
        host_region = found.group("region") if found else ""
        if host_region and host_region != self.region and "." not in host_region:
            # Reference §4: SMTP credentials are region-specific; host wins over region.
            warnings.append(
                f"host {self.host!r} is SES's endpoint in {host_region}, but region is "
                f"{self.region}: messages go to {host_region} (host wins), whose SMTP "
                "credentials, verified identities and quotas are its own; leave host empty "
                "to send through region's endpoint, or set region to match"
            )
        if not self.sns_topic_arns:
            warnings.append(
                "sns_topic_arns is empty: every SNS callback is refused (no bounce, complaint "
                "or delivery is recorded); add the ARNs of the topics SES publishes to"
            )
        return warnings


class SendgridConfig(SmtpFamilyBase):
    """SendGrid's SMTP relay: username ``apikey``, password the API key."""

    kind: Literal["sendgrid"] = "sendgrid"
    service: ClassVar[str] = "SendGrid"
    credentials: ClassVar[str] = "the API key as password (username apikey)"
    default_host: ClassVar[str] = "smtp.sendgrid.net"
    username: str = "apikey"
    # Base64 DER public key of the Signed Event Webhook, as SendGrid shows it.
    webhook_public_key: str = ""
    # SendGrid's documented limit (reference §2.6): 100 messages per connection.
    max_messages_per_connection: int = Field(default=100, ge=0, le=MAX_COUNT, strict=True)

    def service_starttls_ports(self) -> tuple[int, ...]:
        """Reference §2.6: smtp.sendgrid.net speaks plain SMTP and STARTTLS on 2525 too
        (only there: 2525 is a common port of a local test server)."""
        if self.effective_host.lower().rstrip(".") == self.default_host:
            return (*self.starttls_ports, 2525)
        return self.starttls_ports

    def warnings(self) -> list[str]:
        warnings = super().warnings()
        if self.username != "apikey" and self.effective_host == self.default_host:
            # Reference §2.6; seed 004 still says "your SendGrid username", which SendGrid
            # has refused since API keys became mandatory for SMTP.
            warnings.append(
                f"username {self.username!r}: SendGrid's SMTP relay takes the literal user name "
                "apikey (with the API key as password), not the account's: the session would be "
                "refused"
            )
        return warnings

    @field_validator("webhook_public_key")
    @classmethod
    def _public_key(cls, value: str, info: ValidationInfo) -> str:
        """Checked on save: callbacks cannot be verified with a key that does not load."""
        if value and _given(info):
            try:
                load_public_key(value)
            except ValueError as exc:
                raise ValueError(str(exc).replace("webhook_public_key", "the key", 1)) from None
        return value


class GmailConfig(SmtpFamilyBase):
    """Gmail / Google Workspace with an app password."""

    kind: Literal["gmail"] = "gmail"
    service: ClassVar[str] = "Gmail"
    credentials: ClassVar[str] = "the Gmail address as username and an app password"
    default_host: ClassVar[str] = "smtp.gmail.com"
    default_security: ClassVar[Security] = "tls"
    # Google Workspace limits (reference §3): 2,000 messages a day, 10,000 recipients a
    # day (each counted per message), 100 recipients each over SMTP; the user may lower
    # them.
    daily_quota: int | None = Field(default=2000, ge=1, le=MAX_COUNT, strict=True)
    daily_recipient_quota: int | None = Field(default=10000, ge=1, le=MAX_COUNT, strict=True)
    max_recipients_per_message: int = Field(default=100, ge=0, le=MAX_COUNT, strict=True)

    def warnings(self) -> list[str]:
        warnings = super().warnings()
        if self.username and self.effective_host == self.default_host:
            try:
                normalize_address(self.username)
            except ValueError:
                # DESIGN §2, reference §3: the login is the full address (seed 001).
                warnings.append(
                    f"username {self.username!r} is not an email address: Gmail's login is "
                    "the account's full address (name@gmail.com or name@your-domain): the "
                    "session would be refused"
                )
            else:
                if self.from_address and not same_address(self.from_address, self.username):
                    # Gmail sends as the account: a From it has not verified as one of the
                    # account's "Send mail as" addresses becomes the account's address.
                    warnings.append(
                        f"from_address {self.from_address!r} is not username "
                        f"{self.username!r}: Gmail rewrites From to {self.username!r} unless "
                        "it is one of the account's 'Send mail as' addresses (Gmail "
                        "Settings, Accounts); a campaign's own from_address likewise"
                    )
        return warnings

    @field_validator("password")
    @classmethod
    def _app_password(cls, value: SecretStr) -> SecretStr:
        """An app password as Google shows it, four groups of four letters ("abcd efgh
        ijkl mnop"), is saved without the spaces: they are there for reading, and a
        login with them is refused (535 5.7.8). Read back too, as :meth:`_service_login`."""
        text = value.get_secret_value()
        if _SPACED_APP_PASSWORD.fullmatch(text):
            return SecretStr(re.sub("[ \u00a0]", "", text))
        return value


class HttpConfig(ProviderBase):
    """Generic HTTP (DESIGN §4); the placeholder rules live in ``providers.http_config``."""

    kind: Literal["http"] = "http"
    secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    method: Literal["GET", "POST"] = "POST"
    endpoint: str
    auth: Literal["none", "basic"] = "none"
    username: str = ""
    password: SecretStr = SecretStr("")
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    body: JsonValue = None
    batch: bool = False
    batch_size: int = Field(default=DEFAULT_HTTP_BATCH_SIZE, ge=1, le=1000, strict=True)
    timeout: float = Field(default=DEFAULT_HTTP_TIMEOUT, gt=0, strict=True)  # (see _wait)

    @property
    def longest_wait(self) -> float:
        """Each of ``timeout``: the connection, the answer's status line and headers once
        the request is sent, its body (providers.http)."""
        return 3 * self.timeout

    def wait_fields(self) -> str:
        return f"timeout {self.timeout:g} s"

    @model_validator(mode="after")
    def _check_http(self, info: ValidationInfo) -> HttpConfig:
        # Imported here: http_config imports this module for the model.
        from providers.http_config import config_problems

        # Refused on save; one saved before a rule came stays readable (see STORED), and
        # its warnings say what changed (config_warnings).
        problems = config_problems(self) if _given(info) else []
        if problems:
            # Each "field: message" kept apart in the error's context, so that an API can
            # list every problem under its own field (dispatch.campaigns.validation_problems).
            raise PydanticCustomError(
                "config_problems",
                "{summary}",
                {"summary": "; ".join(problems), FIELD_PROBLEMS: problems},
            )
        return self

    def warnings(self) -> list[str]:
        """Saved but worth telling the user (no ``$$MessageID``: no delivery tracking)."""
        from providers.http_config import config_warnings

        return config_warnings(self)

    def sends_from_address(self) -> bool:
        """Whether the payload uses ``$$FromAddress`` (mandatory, so a valid one does)."""
        from providers.http_config import placeholder_usage

        return "FromAddress" in placeholder_usage(self).every


SmtpFamilyConfig = SmtpConfig | SesConfig | SendgridConfig | GmailConfig
SMTP_KINDS: tuple[str, ...] = ("smtp", "ses", "sendgrid", "gmail")
AnyProviderConfig = SmtpFamilyConfig | HttpConfig

ProviderConfig = Annotated[AnyProviderConfig, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ProviderConfig)


def parse_provider_config(data: dict[str, Any], *, stored: bool = False) -> AnyProviderConfig:
    """Validate a provider configuration; raises ``pydantic.ValidationError``.

    ``stored``: ``data`` was saved before (see :data:`STORED`).
    """
    result: AnyProviderConfig = _ADAPTER.validate_python(data, context=STORED if stored else None)
    return result


# A Generic HTTP header or query parameter whose name says it carries a credential (an
# API key in ``Authorization: Bearer ...``, ``X-Api-Key``, ``api_token``...) is a secret
# like ``password`` (DESIGN §2: stored encrypted, never returned); one that holds a
# ``$$`` placeholder is filled per message and is not.
# A name that says its value is a credential: anywhere in it (a ``Cookie`` header is a
# logged-in session), or the whole name (an Azure SAS's "sig", an Azure Function's
# "code": inside a name, "zipcode", they are not), or its last word ("pass" and "pwd",
# the password of many a gateway's ``?user=...&pass=...``, a JSON body's camelCase
# ``apiPass``: "bypass" is not one).
_CREDENTIAL_NAME = re.compile(
    r"auth|key|token|secret|passw|passphrase|signature|credential|cookie|^(?:sig|code)$"
    r"|(?:^|[-_.])(?:pass|pwd)$|(?-i:[a-z0-9]P(?:ass|wd))$",
    re.I,
)
SecretPath = tuple[str, ...]  # ("password",) or ("headers", "Authorization")


def endpoint_credentials(config: ProviderBase) -> list[str]:
    """The query parameters of an HTTP provider's ``endpoint`` whose name says they carry
    a credential: the endpoint is stored and shown as it is, so these belong in
    ``query`` (a secret there)."""
    if not isinstance(config, HttpConfig):
        return []
    query = urlsplit(config.endpoint).query
    return [
        name
        for name, _ in parse_qsl(query, keep_blank_values=True)
        if _CREDENTIAL_NAME.search(name)
    ]


def _is_credential(name: str, value: object) -> bool:
    """A value given as it is (no ``$$`` placeholder) under a credential's name."""
    return (
        isinstance(value, str)
        and bool(value)
        and "$$" not in value
        and bool(_CREDENTIAL_NAME.search(name))
    )


def _body_paths(value: Any, at: SecretPath) -> list[SecretPath]:
    """The credentials in a Generic HTTP body (Mandrill's ``"key"``), at any depth; a
    list's items are named by their index (``("body", "tags", "0", "token")``)."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = ((str(i), inner) for i, inner in enumerate(value))
    else:
        return []
    paths: list[SecretPath] = []
    for key, inner in items:
        if isinstance(inner, dict | list):
            paths += _body_paths(inner, (*at, key))
        elif isinstance(value, dict) and _is_credential(key, inner):
            paths.append((*at, key))
    return paths


def secret_paths(config: ProviderBase) -> list[SecretPath]:
    """Where ``config`` holds secrets: its secret fields, and an HTTP provider's
    credentials given as they are (without placeholders): headers, query parameters and
    body values named as one."""
    paths: list[SecretPath] = [(name,) for name in config.secret_fields]
    if isinstance(config, HttpConfig):
        for section in ("headers", "query"):
            for name, value in getattr(config, section).items():
                if _is_credential(name, value):
                    paths.append((section, name))
        paths += _body_paths(config.body, ("body",))
    return paths


def child(container: Any, key: str) -> Any:
    """``container[key]`` of a JSON document, a list's item named by its index (None
    when there is none)."""
    if isinstance(container, dict):
        return container.get(key)
    if isinstance(container, list) and key.isdigit() and int(key) < len(container):
        return container[int(key)]
    return None


def secret_value(config: ProviderBase, path: SecretPath) -> str:
    """The secret at ``path`` ("" when not set)."""
    value: Any = getattr(config, path[0], None)
    if len(path) == 1:
        return value.get_secret_value() if isinstance(value, SecretStr) else ""
    for key in path[1:]:
        value = child(value, key)
    return "" if value is None else str(value)


def set_secret(data: dict[str, Any], path: SecretPath, value: Any) -> None:
    """Put ``value`` at ``path`` of a configuration's dump."""
    where: Any = data
    for key in path[:-1]:
        where = child(where, key)
    if isinstance(where, list):
        where[int(path[-1])] = value
    else:
        where[path[-1]] = value


def public_view(config: ProviderBase) -> dict[str, Any]:
    """The configuration as shown to users: secrets masked, never their value."""
    data = config.model_dump(mode="json")
    for path in secret_paths(config):
        set_secret(data, path, SECRET_MASK if secret_value(config, path) else "")
    return data
