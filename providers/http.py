"""The Generic HTTP adapter (kind ``http``): render requests from ``$$`` templates, send with httpx.

Rendering is pure (:class:`RequestPlan`, compiled once per provider configuration) and
sending is I/O (:class:`HttpSession`: httpx's transport with one connection, kept alive;
requests are built whole here, so httpx's client layer, its auth flow, redirect loop,
cookie jar and default headers, is not needed: about 0.3 ms a request).

Outcomes of one request apply to every message it carries (DESIGN §4):

* 2xx: ``SENT``;
* 429 and 5xx: ``RETRY`` with the ``Retry-After`` hint (seconds or an HTTP-date); 429 and
  503 also mark the provider ``throttled``;
* 401: :class:`providers.errors.AuthenticationError` is raised, since the credentials are
  refused for every message and the campaign should pause (DESIGN §7), not fail everyone;
* 403: :class:`providers.errors.ConfigurationError` is raised, for the same reason: the
  credentials are valid but not allowed this (RFC 9110 §15.5.4): a key without the send
  permission, a sender not verified, an account suspended, an address not allowed to
  use the API. Every message would fail the same way, and a key revoked half-way through
  a campaign would fail the rest of its list;
* 3xx: :class:`providers.errors.ConfigurationError` is raised: redirects are not followed
  (a redirect could lead past the address guard, and a POST body would be replayed
  somewhere the user never configured), and the redirect is the endpoint's, not the
  message's (``http://`` moved to ``https://``, an API moved, a proxy's login page):
  every message would be refused the same way, and failing them all put a "Notification
  Failed" on every recipient for a request none of them was sent in. The campaign pauses
  with the ``Location``; the endpoint fixed, it resumes. But 303 (See Other) is
  ``UNKNOWN``: it points to the result of a request the server acted on, so the message
  may have been taken (``FAILED`` would let retry-failed send it again);
* 504 (gateway timeout; Cloudflare's 524): ``UNKNOWN``: a proxy in front of the provider
  passed the request on and got no answer in time, the read timeout below one hop
  further: the provider may have taken the request, so a retry could send it twice;
* 408 (request timeout): ``RETRY``: the server says it did not get the whole request
  (RFC 9110 §15.5.9: the client may repeat it). Servers also send it unasked on a
  keep-alive connection they close for idleness, where it answers the next request sent
  on it; as a permanent 4xx it failed messages the provider never had;
* 413 (content too large) for a batch: the batch is sent again in halves, each halved
  again while refused, so that a payload limit (bytes or messages a request) fails no
  message that fits it; a message refused alone fails as any other 4xx;
* other 4xx: ``FAILED`` with the status and an excerpt of the response body;
* the endpoint's TLS certificate refused: :class:`providers.errors.ConfigurationError`
  is raised (the campaign pauses with the reason, as the SMTP adapter does: a person
  must act, and retrying every message against it would only fail them all later);
* cannot connect, connect or write timeout, connection lost while the request was
  being written and no answer after it: ``RETRY`` (the request never fully left; a
  failed write the socket layer reports only later, as a failed read, is ``UNKNOWN``);
* read timeout, no status line and headers within ``timeout`` in all after the request
  was sent, connection lost while waiting for the answer: ``UNKNOWN``. The provider
  may have accepted the request, and the seed says providers do not deduplicate, so a
  blind retry could send the campaign twice to every recipient of the request; DESIGN §5
  prefers a recipient left ``unknown`` to a recipient sent twice.

Every HTTP failure carries the error class ``Dispatch failed`` (DESIGN §2: "HTTP provider
did not answer 2xx"); the detail says which way it failed, with the provider's
credentials masked wherever it quotes an answer or an error (an API answering "invalid key
sk-..." would otherwise put the key in every message's detail). A message whose own data cannot
be rendered (an unresolvable placeholder, CR/LF in a dynamic header) fails alone with
``Invalid message`` and is never sent with a literal ``$$Name``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
import ssl
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import orjson

from providers.base import CutShort, OutcomeStatus, OutgoingMessage, SendOutcome
from providers.config import HttpConfig, secret_paths, secret_value
from providers.errors import MASK as MASK  # where the tests and callers found it
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    ErrorClass,
    InvalidMessageError,
    ProviderError,
    TransientError,
    masked,
    secret_spellings,
)
from providers.http_config import CONTROL_IN_HEADER_VALUE, placeholder_usage
from providers.netguard import GuardedTransport, Resolve, system_resolve
from providers.placeholders import (
    SLOT,
    MessageRenderer,
    Resolver,
    Scope,
    Template,
    TextTemplate,
    compile_template,
    compile_text,
    value_at,
)

EXCERPT_CHARS: Final = 300  # of a refusing response body, in the outcome's detail
MAX_QUERY_CHARS: Final = 65536  # httpx's limit on a URL component (_urlparse.MAX_URL_LENGTH)
MAX_RESPONSE_READ: Final = 64 * 1024  # bytes of a response body read at most
# A connection idle this long is closed, not reused: servers close idle connections after
# a few seconds (uvicorn and Node 5 s, gunicorn 2 s), and a request sent as the server
# closes gets no answer, so a whole batch would end ``unknown`` (never resent). httpx's
# default, 5 s, raced the servers of 5 s; within a batch requests follow each other.
KEEPALIVE_SECONDS: Final = 1.0
USER_AGENT: Final = "dispatch-generic-http/1"
THROTTLING_STATUSES: Final = frozenset({429, 503})
_REQUEST_TIMEOUT: Final = 408  # RFC 9110 §15.5.9: the request was not received whole
# RFC 9110 §15.6.5 (and Cloudflare's 524, "a timeout occurred" once the origin had the
# request): a gateway got no answer from the provider it passed the request on to.
_GATEWAY_TIMEOUTS: Final = frozenset({504, 524})
_TOO_LARGE: Final = 413  # RFC 9110 §15.5.14: a batch so refused is sent in halves
MAX_RETRY_AFTER: Final = 24 * 3600.0  # seconds: a longer Retry-After hint is capped
# RFC 9110 §10.2.3 delay-seconds (a decimal fraction is tolerated).
_DELAY_SECONDS_RE: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")
# RFC 9110 §5.5: a field value has no leading or trailing whitespace (h11 refuses it, so
# " Bearer k" or a var " Sara" failed every request); stripping it changes no meaning.
_OWS: Final = " \t"
_DISPATCH_FAILED: Final = ErrorClass.DISPATCH_FAILED_HTTP
# httpcore's trace events when writing the request failed (it then reads on, for an answer).
_WRITE_FAILED: Final = frozenset(
    {"http11.send_request_headers.failed", "http11.send_request_body.failed"}
)
# httpcore's trace event right before the first byte of a request is written (after its
# connection's TCP connect and TLS handshake): a request cut before it was not sent.
_WRITE_STARTS: Final = "send_request_headers.started"
_ILLEGAL_HEADER: Final = re.compile(r"(Illegal header (?:name|value)) .*", re.S)


# --- rendering ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedRequest:
    """One request ready to go: the messages it carries and what varies per request."""

    seqs: tuple[int, ...]
    content: bytes | None
    headers: dict[bytes, bytes]  # dynamic headers only; static ones sit on the session
    url: httpx.URL | None  # with the rendered query; None: the endpoint as it is


def _invalid_json(exc: Exception) -> InvalidMessageError:
    return InvalidMessageError(f"a placeholder value cannot be written as JSON: {exc}")


def _render_text(place: str, name: str, template: TextTemplate, values: Mapping[str, Any]) -> str:
    """A header or query value, rendered; raises :class:`InvalidMessageError` naming it
    when a value has no text to send: an integer beyond 64 bits or a lone UTF-16
    surrogate (``"\\ud800"`` in JSON), which the body's placeholders refuse the same way.
    Unchecked, one raised out of the batch (a test email answered 500)."""
    try:
        value = template.render(values)
        if not value.isascii():
            value.encode()
    except (TypeError, UnicodeEncodeError) as exc:  # orjson.JSONEncodeError is a TypeError
        reason = "a lone UTF-16 surrogate" if "surrogate" in str(exc) else str(exc)
        raise InvalidMessageError(
            f"{place} {name}: a placeholder value cannot be sent as text ({reason})"
        ) from exc
    return value


class RequestPlan:
    """The compiled form of one :class:`HttpConfig`: what to render per message, per request.

    :meth:`render` is pure (no I/O): benchmarks time it directly.
    """

    def __init__(self, config: HttpConfig) -> None:
        """Raises ``ValueError`` when ``config`` breaks a rule validation enforces."""
        usage = placeholder_usage(config)
        self.batch = usage.batch
        # Header values go to httpx as UTF-8 bytes: it would refuse non-ASCII str values.
        self.static_headers: dict[bytes, bytes] = {b"user-agent": USER_AGENT.encode()}
        if config.method == "POST":
            self.static_headers[b"content-type"] = b"application/json"
        self._headers: list[tuple[str, TextTemplate]] = []
        for name, value in config.headers.items():
            self.static_headers.pop(name.lower().encode(), None)  # the user's value wins
            template = compile_text(value)
            if template.names:
                self._headers.append((name, template))
            else:
                self.static_headers[name.encode()] = value.strip(_OWS).encode()
        self._query = [(name, compile_text(value)) for name, value in config.query.items()]
        self._endpoint = httpx.URL(config.endpoint)
        request_names = usage.headers | usage.query
        self._body: Template | None = None
        self._item: MessageRenderer | None = None
        if usage.message_array is not None:
            self._item = MessageRenderer(value_at(config.body, usage.message_array)[0])
            self._body = compile_template(config.body, slot=usage.message_array)
            self._request = Resolver(self._body.names | request_names, Scope.CAMPAIGN)
        else:
            if config.body is not None:
                self._body = compile_template(config.body)
            body_names = self._body.names if self._body is not None else frozenset()
            self._message = Resolver(body_names | request_names, Scope.MESSAGE)
            self._request = Resolver((), Scope.CAMPAIGN)

    def _request_parts(
        self, values: Mapping[str, Any]
    ) -> tuple[dict[bytes, bytes], httpx.URL | None]:
        headers: dict[bytes, bytes] = {}
        for name, template in self._headers:
            value = _render_text("header", name, template, values)
            # (h11 refused VT and FF as a protocol error, "Dispatch failed", and sent the
            # others: the data is at fault)
            if CONTROL_IN_HEADER_VALUE.search(value):
                raise InvalidMessageError(
                    f"header {name}: the value holds a line break or control character"
                )
            headers[name.encode()] = value.strip(_OWS).encode()
        if not self._query:
            return headers, None
        params = tuple((n, _render_text("query", n, t, values)) for n, t in self._query)
        try:
            # Merged by hand: httpx's `params=` would replace the endpoint's own query.
            return headers, self._endpoint.copy_merge_params(params)
        except httpx.InvalidURL as exc:  # raised out of the batch, as no HTTP error
            raise InvalidMessageError(
                f"query: the values make the URL too long to send ({exc}: httpx takes "
                f"{MAX_QUERY_CHARS} characters at most); long values belong in a POST body"
            ) from exc

    def render(
        self, messages: Sequence[OutgoingMessage]
    ) -> tuple[list[RenderedRequest], list[SendOutcome]]:
        """The requests carrying ``messages`` and the outcomes of those that cannot be sent."""
        if self._item is None:
            return self._render_single(messages)
        return self._render_batch(messages)

    def _render_single(
        self, messages: Sequence[OutgoingMessage]
    ) -> tuple[list[RenderedRequest], list[SendOutcome]]:
        requests: list[RenderedRequest] = []
        failed: list[SendOutcome] = []
        for msg in messages:
            try:
                values = self._message.values(msg)
                try:
                    content = (
                        orjson.dumps(self._body.render(values)) if self._body is not None else None
                    )
                except TypeError as exc:  # orjson.JSONEncodeError included
                    raise _invalid_json(exc) from exc
                headers, url = self._request_parts(values)
            except InvalidMessageError as exc:
                failed.append(SendOutcome.from_error(msg.seq, exc))
                continue
            requests.append(RenderedRequest((msg.seq,), content, headers, url))
        return requests, failed

    def _render_batch(
        self, messages: Sequence[OutgoingMessage]
    ) -> tuple[list[RenderedRequest], list[SendOutcome]]:
        assert self._item is not None and self._body is not None
        # Messages of one campaign share the campaign-level values, so this is one group;
        # a chunk mixing values is split rather than sent with the first message's values.
        groups: list[tuple[dict[str, Any], list[int], list[Any]]] = []
        failed: list[SendOutcome] = []
        render_item = self._item.render
        seen: tuple[Any, ...] = ()
        group: tuple[dict[str, Any], list[int], list[Any]] | None = None
        for msg in messages:
            # The campaign-level values only change with these fields: resolve them again
            # only then (they are the same objects for every message of a campaign).
            key = (msg.campaign_vars, msg.campaign_id, msg.from_name, msg.from_address,
                   msg.reply_to, msg.cc, msg.bcc)  # fmt: skip
            try:
                if key != seen:
                    shared = self._request.values(msg)
                    group = next((g for g in groups if g[0] == shared), None)
                    if group is None:
                        group = (shared, [], [])
                        groups.append(group)
                    seen = key
                item = render_item(msg)
            except InvalidMessageError as exc:
                failed.append(SendOutcome.from_error(msg.seq, exc))
                continue
            except TypeError as exc:  # a value with no JSON text inside longer text (orjson)
                failed.append(SendOutcome.from_error(msg.seq, _invalid_json(exc)))
                continue
            assert group is not None
            group[1].append(msg.seq)
            group[2].append(item)
        requests: list[RenderedRequest] = []
        for values, seqs, items in groups:
            try:
                headers, url = self._request_parts(values)
                content, seqs, bad = self._dump_batch(values, seqs, items)
            except InvalidMessageError as exc:
                failed.extend(SendOutcome.from_error(seq, exc) for seq in seqs)
                continue
            failed.extend(bad)
            if seqs:
                requests.append(RenderedRequest(tuple(seqs), content, headers, url))
        return requests, failed

    def _dump_batch(
        self, values: dict[str, Any], seqs: list[int], items: list[Any]
    ) -> tuple[bytes, list[int], list[SendOutcome]]:
        """Serialise one batch body; a message whose values are not JSON fails alone."""
        assert self._body is not None
        try:
            return orjson.dumps(self._body.render({**values, SLOT: items})), seqs, []
        except TypeError:
            pass
        good_seqs: list[int] = []
        good_items: list[Any] = []
        bad: list[SendOutcome] = []
        for seq, item in zip(seqs, items, strict=True):
            try:
                orjson.dumps(item)
            except TypeError as exc:
                bad.append(SendOutcome.from_error(seq, _invalid_json(exc)))
            else:
                good_seqs.append(seq)
                good_items.append(item)
        try:
            content = orjson.dumps(self._body.render({**values, SLOT: good_items}))
        except TypeError as exc:  # the campaign-level values themselves
            raise _invalid_json(exc) from exc
        return content, good_seqs, bad


# --- outcomes ----------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 §10.2.3), or ``None``.

    ``delay-seconds`` is ``1*DIGIT``; anything else that is not an HTTP-date (``inf``,
    ``nan``, ``1e400``, ``-5``) is no hint. The wait is capped at
    :data:`MAX_RETRY_AFTER`: an answer is foreign data, and an absurd hint would park
    the provider's messages for ever (``inf`` reached the ledger as ``null``).
    """
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS_RE.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def credentials(config: HttpConfig, auth: bytes | None = None) -> tuple[str, ...]:
    """What a response or an error text could echo of ``config``'s credentials.

    The password, credential headers and query values (``providers.config.secret_paths``)
    and the basic ``Authorization`` value, each spelled as
    :func:`providers.errors.secret_spellings` says (whole and by word, as a URL and as a
    JSON string carry it).
    """
    values = [secret_value(config, path) for path in secret_paths(config)]
    if auth is not None:
        values.append(auth.decode())
    return secret_spellings(values)


def _cut_start(text: str, secrets: Iterable[str]) -> int:
    """The length of the longest start of one of ``secrets`` (not the whole of it) that
    ``text`` ends with: what of a credential a cut inside it left, 0 when none."""
    longest = 0
    for secret in secrets if text else ():
        size = min(len(secret) - 1, len(text))
        while size > longest:
            if text.endswith(secret[:size]):
                longest = size
                break
            # (only a start ending with text's last character can be one)
            size = secret.rfind(text[-1], 0, size - 1) + 1
    return longest


def excerpt(body: bytes, limit: int = EXCERPT_CHARS, secrets: Iterable[str] = ()) -> str:
    """The start of a response body as text, bounded, on one line, credentials masked."""
    secrets = tuple(secrets)
    text = body[: limit * 4].decode("utf-8", errors="replace")
    if len(body) > limit * 4:
        # The cut may fall inside a credential, whose start would then go unmasked, and
        # collapsing whitespace (an indented page) brings it within the limit: that start
        # goes. Only it: cutting back the whole last word, as far as the longest
        # credential reaches (a 1.5 KB OAuth token), left nothing of an answer written
        # without spaces (minified JSON), its detail a bare "HTTP 400".
        text = text[: len(text) - _cut_start(text, secrets)]
    return " ".join(masked(text, secrets).split())[:limit]


def outcomes_for_response(
    seqs: Sequence[int],
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str] = (),
) -> list[SendOutcome]:
    """The outcome of every message carried by a request the provider answered.

    ``secrets`` are masked wherever the answer is quoted (see :func:`credentials`).
    Raises :class:`AuthenticationError` for 401 (the credentials are refused) and
    :class:`ConfigurationError` for 403 (they are not allowed to send this) and for a
    redirect other than 303 (the endpoint's, see the module's docstring).
    """
    if 200 <= status < 300:
        detail = f"HTTP {status}"
        sent = OutcomeStatus.SENT
        return [SendOutcome(seq, sent, None, detail) for seq in seqs]
    text = excerpt(body, secrets=secrets)
    detail = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status == 401:
        raise AuthenticationError(
            f"credentials refused: {detail}", error_class=_DISPATCH_FAILED, code=status
        )
    if status == 403:
        raise ConfigurationError(
            f"not allowed: {detail}", error_class=_DISPATCH_FAILED, code=status
        )
    if status in _GATEWAY_TIMEOUTS:
        taken = "a gateway passed the request on and got no answer, the provider may have taken it"
        return _perhaps_taken(seqs, status, f"{detail}: {taken}")
    if status in (_REQUEST_TIMEOUT, 429) or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return [
            SendOutcome(
                seq,
                OutcomeStatus.RETRY,
                error_class=_DISPATCH_FAILED,
                detail=detail,
                code=status,
                retry_after=retry_after,
                throttled=status in THROTTLING_STATUSES,
            )
            for seq in seqs
        ]
    if 300 <= status < 400:
        location = masked(headers.get("location", ""), secrets)
        detail = f"HTTP {status}: redirects are not followed (Location: {location[:200]})"
        if status == 303:  # "See Other": where the result of what it did is (RFC 9110 §15.4.4)
            detail += ": a 303 answers a request the provider acted on, it may have taken it"
            return _perhaps_taken(seqs, status, detail)
        raise ConfigurationError(
            f"the endpoint redirects: {detail}; set the endpoint to where it points",
            error_class=_DISPATCH_FAILED,
            code=status,
        )
    return [
        SendOutcome(seq, OutcomeStatus.FAILED, _DISPATCH_FAILED, detail=detail, code=status)
        for seq in seqs
    ]


def _perhaps_taken(seqs: Sequence[int], status: int, detail: str) -> list[SendOutcome]:
    """``UNKNOWN`` for an answer saying the provider may have taken the request."""
    unknown = OutcomeStatus.UNKNOWN
    return [SendOutcome(seq, unknown, _DISPATCH_FAILED, detail=detail, code=status) for seq in seqs]


def outcome_for_exception(
    seq: int,
    exc: httpx.HTTPError,
    timeout: float,
    secrets: Sequence[str] = (),
    unsent: BaseException | None = None,
) -> SendOutcome:
    """Map an httpx failure to one message's outcome (the one place httpx errors are read).

    ``secrets`` are masked wherever the error's text is quoted (see :func:`credentials`).
    ``unsent``: the error that stopped the writing of the request, when it did. httpcore
    then reads on, for an answer the server may have sent early (a 413), and ``exc`` is
    what that read met: no answer came, and the provider never had the whole request.
    """
    if unsent is not None and not isinstance(exc, httpx.LocalProtocolError):
        status, detail = (
            OutcomeStatus.RETRY,
            (
                "connection lost before the whole request was sent "
                f"({_named(unsent, secrets)}), and no answer: the provider did not get it"
            ),
        )
    elif isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout | httpx.WriteTimeout):
        status, detail = (
            OutcomeStatus.RETRY,
            f"timed out after {timeout:g}s before the request was sent",
        )
    elif isinstance(exc, httpx.ConnectError | httpx.WriteError):
        status, detail = OutcomeStatus.RETRY, f"cannot reach the endpoint: {exc}"
    elif isinstance(exc, httpx.LocalProtocolError):
        # h11 quotes the header it refuses ("Illegal header value b'Bearer sk-...'"):
        # its value is not repeated in every message's detail.
        reason = _ILLEGAL_HEADER.sub(r"\1 (its value not shown)", str(exc))
        status, detail = OutcomeStatus.FAILED, f"the request cannot be built: {reason}"
    elif isinstance(exc, httpx.ReadTimeout):
        status, detail = (
            OutcomeStatus.UNKNOWN,
            (
                f"no answer within {timeout:g}s after the request was sent: the provider may "
                "have accepted it"
            ),
        )
    else:  # ReadError, RemoteProtocolError, anything else once the request may have left
        status, detail = (
            OutcomeStatus.UNKNOWN,
            (
                f"connection lost after the request was sent ({_named(exc, secrets)}): the "
                "provider may have accepted it"
            ),
        )
    return SendOutcome(seq, status, _DISPATCH_FAILED, detail=masked(detail, secrets))


def _named(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """``ReadError: <text>``, or the bare name when the text is empty (httpcore's
    ReadError for a connection reset says nothing more: "ReadError: " read as cut off).

    The text is cut to :data:`EXCERPT_CHARS` (``secrets`` masked first, so no part of
    one is left): h11 quotes what it refused of an answer, a status or header line of
    up to 16 KB of the server's bytes, which went whole into every message's detail and
    log line."""
    text = masked(str(exc), secrets)
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- sending -----------------------------------------------------------------------------


# Content codings decoded for the excerpt (zlib reads gzip and zlib-wrapped deflate; wbits
# 47 = 32 + 15: either header, detected); others are named, not decoded.
_DECODED: Final = frozenset({"gzip", "x-gzip", "deflate"})


async def _read_bounded(
    response: httpx.Response, seconds: float, limit: int = MAX_RESPONSE_READ
) -> bytes:
    """Up to ``limit`` bytes of the body, decoded, read for ``seconds`` at most in all.

    The read timeout bounds each read only: a server trickling a byte now and then would
    hold the session for hours after its status already said everything. What arrived in
    time, or before the connection dropped, is kept (the connection is then closed, not
    reused). The body is decoded here, never beyond ``limit``: httpx decodes each chunk
    whole, and a gzip chunk of 64 KB can hold 64 MB (1 GB of zeros gzips to 1 MB).
    """
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding not in _DECODED | {"identity", ""}:
        return f"(a body in {coding[:40]} encoding, not shown)".encode()
    decoder = zlib.decompressobj(47) if coding in _DECODED else None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in response.aiter_raw():
                if decoder is not None:
                    try:
                        chunk = decoder.decompress(chunk, limit - size)
                    except zlib.error:
                        if coding != "deflate" or chunks:
                            raise
                        # Raw deflate, without zlib's header: what some servers send as
                        # "deflate" (httpx read it so too).
                        decoder = zlib.decompressobj(-15)
                        chunk = decoder.decompress(chunk, limit - size)
                chunks.append(chunk)
                size += len(chunk)
                if size >= limit:
                    break
    except (TimeoutError, httpx.HTTPError, zlib.error):
        pass  # the status is what counts; the excerpt is a courtesy
    return b"".join(chunks)[:limit]


class HttpSession:
    """One HTTP connection (kept alive) sending rendered requests in turn."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        config: HttpConfig,
        plan: RequestPlan,
        auth: bytes | None = None,
        secrets: Sequence[str] = (),
        traced: bool = False,
    ) -> None:
        """``auth``: the ``Authorization`` value of basic credentials (validation refuses
        a configured ``Authorization`` header beside them); ``secrets``: masked in every
        detail (see :func:`credentials`); ``traced``: ``transport`` is httpcore's, which
        says (its trace extension) when it starts writing a request, else a request is
        taken as perhaps written as soon as it is handed to ``transport``."""
        self._transport = transport
        self._traced = traced
        # What the send under way learnt, for cut_short (a cancelled send says nothing):
        self._seqs: list[int] = []  # its messages
        self._answered: dict[int, SendOutcome] = {}  # their outcomes, as they come
        self._written: set[int] = set()  # those whose request perhaps reached the provider
        self._secrets = secrets
        self._plan = plan
        self._method = config.method
        self._url = httpx.URL(config.endpoint)
        self._timeout = config.timeout
        self._extensions = {"timeout": httpx.Timeout(config.timeout).as_dict()}
        self._static = list(plan.static_headers.items())
        if auth is not None:
            self._static.append((b"authorization", auth))

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[SendOutcome]:
        """Send ``messages``: one request each, or batches; one outcome per message.

        Raises :class:`ConfigurationError` (credentials refused, endpoint refused by the
        address guard or redirecting) when that happens before any request of this call
        got an answer.
        """
        self._seqs, self._answered, self._written = [m.seq for m in messages], {}, set()
        return await self._send(messages)

    async def _send(self, messages: Sequence[OutgoingMessage]) -> list[SendOutcome]:
        """:meth:`send`, its outcomes noted as they come (for :meth:`cut_short`)."""
        requests, outcomes = self._plan.render(messages)
        self._note(outcomes)
        for index, request in enumerate(requests):
            try:
                answer = await self._exchange(request)
                if len(request.seqs) > 1 and answer[0].code == _TOO_LARGE:
                    self._written.difference_update(request.seqs)  # (refused: not taken)
                    answer = await self._in_halves(request.seqs, messages)
                outcomes += self._note(answer)
            except ConfigurationError as exc:
                if index == 0:
                    raise
                # Earlier requests went through: keep their outcomes, retry the rest.
                for rest in requests[index:]:
                    outcomes += self._note(
                        [SendOutcome.from_error(s, _as_transient(exc)) for s in rest.seqs]
                    )
                break
        by_seq = {outcome.seq: outcome for outcome in outcomes}
        return [by_seq[msg.seq] for msg in messages]

    def _note(self, outcomes: list[SendOutcome]) -> list[SendOutcome]:
        self._answered.update((o.seq, o) for o in outcomes)
        return outcomes

    def cut_short(self) -> CutShort:
        """See ``providers.base.Session``: the messages answered (or that failed to
        render) have their outcomes; one whose request was never handed to the
        transport, or (httpcore) was cut before its first byte was written (while its
        connection opened: TCP connect, TLS handshake, or waiting for the pool), was
        not sent. A request being written or awaiting its answer may have been taken."""
        answered = self._answered
        unsent = [s for s in self._seqs if s not in answered and s not in self._written]
        return CutShort([answered[s] for s in self._seqs if s in answered], unsent)

    def stop(self) -> None:
        """See ``providers.base.Session``: a chunk is one request (or, refused as too
        large, its halves): nothing of it waits for another message's answer."""

    async def _in_halves(
        self, seqs: Sequence[int], messages: Sequence[OutgoingMessage]
    ) -> list[SendOutcome]:
        """Send the messages of a batch the provider refused as too large (413) in two
        requests, each halved again while it is refused: a payload limit (a size, a
        count) fails no message that fits it, and a message too large alone fails alone.

        Raises :class:`ConfigurationError` as :meth:`send` does, for the first half.
        """
        wanted = set(seqs)
        carried = [msg for msg in messages if msg.seq in wanted]
        half = len(carried) // 2
        first = await self._send(carried[:half])
        try:
            return first + await self._send(carried[half:])
        except ConfigurationError as exc:  # the first half went through: retry the rest
            return first + [
                SendOutcome.from_error(msg.seq, _as_transient(exc)) for msg in carried[half:]
            ]

    async def _exchange(self, request: RenderedRequest) -> list[SendOutcome]:
        url = request.url or self._url
        headers = self._static
        if request.headers:
            headers = [*headers, *request.headers.items()]
        unsent: list[BaseException] = []  # what stopped the writing of the request
        if not self._traced:  # (it cannot say when it writes: taken as written now)
            self._written.update(request.seqs)
        try:
            try:
                async with asyncio.timeout(None) as answer:
                    response = await self._transport.handle_async_request(
                        httpx.Request(
                            self._method,
                            url,
                            headers=headers,
                            content=request.content,
                            extensions=self._answer_within(answer, unsent, request.seqs),
                        )
                    )
            except TimeoutError:
                raise httpx.ReadTimeout("no complete answer in time") from None
            try:
                body = await _read_bounded(response, self._timeout)
                return outcomes_for_response(
                    request.seqs, response.status_code, response.headers, body, self._secrets
                )
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            refused = _certificate_error(exc)
            if refused is not None:
                raise ConfigurationError(
                    f"TLS failed with {url.host}: {refused}", error_class=_DISPATCH_FAILED
                ) from exc
            return [
                outcome_for_exception(
                    seq, exc, self._timeout, self._secrets, unsent[0] if unsent else None
                )
                for seq in request.seqs
            ]

    def _answer_within(
        self, deadline: asyncio.Timeout, unsent: list[BaseException], seqs: Sequence[int]
    ) -> dict[str, Any]:
        """The request's extensions: its timeouts, and a trace that gives the answer's
        status line and headers ``timeout`` seconds in all once the request is sent, and
        puts in ``unsent`` the error that stopped the writing of the request (httpcore
        keeps it to itself and reads on, for an early answer). The request's messages
        (``seqs``) are noted as perhaps written when its writing starts.

        The read timeout bounds each read only: a server trickling header lines, or
        sending ``102 Processing`` for ever, held the session (and its batch) for hours.
        The deadline starts once the request is sent, so it ends as ``UNKNOWN``.
        """
        loop = asyncio.get_running_loop()
        seconds = self._timeout

        async def trace(event: str, info: Mapping[str, Any]) -> None:
            if event.endswith(_WRITE_STARTS):
                self._written.update(seqs)
            elif event == "http11.receive_response_headers.started":
                deadline.reschedule(loop.time() + seconds)
            elif event in _WRITE_FAILED:
                unsent.append(info["exception"])

        return {**self._extensions, "trace": trace}


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed under an httpx error (httpcore chains it)."""
    visited: set[int] = set()
    seen: BaseException | None = exc
    while seen is not None and id(seen) not in visited:  # a chain can be made to loop
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return None


def _as_transient(exc: ProviderError) -> TransientError:
    return TransientError(exc.detail, error_class=exc.error_class, code=exc.code)


_CONTENT_PLACEHOLDERS = {
    "Subject": "subject",
    "HTML": "html",
    "Plaintext": "text",
    "AMPHTML": "amp",
}


class HttpTransport:
    """A configured Generic HTTP provider: chunk size, session count, session factory."""

    kind: str = "http"

    def __init__(
        self,
        config: HttpConfig,
        *,
        allow_private: bool = False,
        resolve: Resolve = system_resolve,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``allow_private`` comes from ``DISPATCH_ALLOW_PRIVATE_ENDPOINTS``.

        ``http_transport`` replaces the guarded network path (fast unit tests with
        ``httpx.MockTransport`` only). Raises ``ValueError`` for a configuration that
        breaks a rule validation enforces.
        """
        self.config = config
        self.plan = RequestPlan(config)
        self.chunk_size = config.batch_size if self.plan.batch else 1
        self.max_sessions = config.max_connections
        used = placeholder_usage(config).every
        self.content_parts = frozenset(
            part for name, part in _CONTENT_PLACEHOLDERS.items() if name in used
        )
        self._allow_private = allow_private
        self._resolve = resolve
        self._http_transport = http_transport
        self._auth: bytes | None = None
        if config.auth == "basic":
            secret = f"{config.username}:{config.password.get_secret_value()}"
            self._auth = b"Basic " + base64.b64encode(secret.encode())
        self._secrets = credentials(config, self._auth)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[HttpSession]:
        """Open a session; its connection opens on the first request."""
        transport = self._http_transport or GuardedTransport(
            allow_private=self._allow_private,
            # One connection per session: the dispatcher's session count is the
            # provider's connection count (max_connections). A connection idle longer
            # than KEEPALIVE_SECONDS is not reused (see there).
            limits=httpx.Limits(
                max_connections=1, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_SECONDS
            ),
            verify=self.config.tls_verify,
            ca=self.config.tls_ca,
            resolve=self._resolve,
        )
        try:
            yield HttpSession(
                transport,
                self.config,
                self.plan,
                self._auth,
                self._secrets,
                traced=self._http_transport is None,
            )
        finally:
            await transport.aclose()
