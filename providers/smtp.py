"""SMTP family transport (smtp, ses, sendgrid, gmail): reused connections, one outcome each.

aiosmtplib errors are translated here, and only here, into the error tree of
``providers.errors``. Security is always explicit: ``starttls`` fails when the server
does not offer STARTTLS instead of silently sending in plain text (PITFALLS).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import cast

import aiosmtplib
import orjson

from providers.addresses import InvalidAddressError, needs_smtputf8, normalize_address
from providers.base import (
    ALL_CONTENT_PARTS,
    CutShort,
    OutcomeStatus,
    OutgoingMessage,
    SendOutcome,
)
from providers.config import SendgridConfig, SesConfig, SmtpFamilyBase
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    ErrorClass,
    InvalidMessageError,
    PermanentError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RecipientThrottledError,
    SendingQuotaError,
    ThrottledError,
    TransientError,
    masked,
    secret_spellings,
)
from providers.mime import MimeWriter
from providers.smtp_replies import ReplyKind, classify, refuses_sender, too_many_recipients
from providers.smtp_wire import (
    Envelope,
    Reply,
    Stage,
    TransactionProtocol,
    TransactionResult,
    WireError,
    dot_stuff,
)
from providers.tls import smtp_context

_WRITER_CACHE_SIZE = 32


def _reply_error(
    code: int,
    text: str,
    *,
    at_rcpt: bool = False,
    error_class: ErrorClass | None = None,
    recipients: Sequence[str] = (),
) -> ProviderError:
    """Turn a negative reply into the matching error (not raised); ``recipients``: the
    envelope's, of the message it answered."""
    detail = f"{code} {text}".strip()
    kind = classify(code, text, at_rcpt=at_rcpt, recipients=recipients)
    if kind is ReplyKind.AUTH:
        return AuthenticationError(detail, code=code)
    if kind is ReplyKind.QUOTA:
        return SendingQuotaError(detail, code=code)
    if kind is ReplyKind.ACCOUNT:
        # The provider refuses the account or its sender: every message would be refused
        # alike. Not the session's connection (ErrorClass.CONNECTION): the sending.
        return ConfigurationError(detail, code=code, error_class=ErrorClass.DISPATCH_FAILED_SMTP)
    if kind is ReplyKind.RECIPIENT:
        return PermanentError(detail, code=code, error_class=ErrorClass.INVALID_RECIPIENT)
    if kind is ReplyKind.THROTTLED:
        # (421 closes the whole session; 454 is a session-level or SES provider throttle)
        about_recipient = at_rcpt and code in (450, 451)
        cls = RecipientThrottledError if about_recipient else ThrottledError
        return cls(detail, code=code, error_class=error_class)
    if kind is ReplyKind.TRANSIENT:
        return TransientError(detail, code=code, error_class=error_class)
    return PermanentError(detail, code=code, error_class=error_class)


def refuses_session(stage: Stage, reply: Reply, recipients: Sequence[str] = ()) -> bool:
    """The replies :meth:`SmtpSession._outcome` raises for: about the session (credentials,
    throttling, a used-up quota, the account refused), not the message."""
    kind = classify(reply.code, reply.text, at_rcpt=stage == "rcpt", recipients=recipients)
    if kind in (ReplyKind.AUTH, ReplyKind.QUOTA, ReplyKind.ACCOUNT) or reply.code == 421:
        return True
    return kind is ReplyKind.THROTTLED and (stage == "mail" or _throttles_sending(stage, reply))


def _throttles_sending(stage: Stage, reply: Reply) -> bool:
    """A ``454`` to DATA or to the content: the provider's throttle, not the message's
    (SES answers "454 Throttling failure: Maximum sending rate exceeded" to the end of a
    message, reference §4: it was dropped, and so would the next ones be, sent at once)."""
    return stage == "data" and reply.code == 454


def login_secrets(config: SmtpFamilyBase) -> tuple[str, ...]:
    """What a server's reply to AUTH could echo of the password: the password itself and
    the base64 strings that carry it (AUTH PLAIN's ``\\0user\\0password``, AUTH LOGIN's
    password), each spelled as :func:`providers.errors.secret_spellings` says."""
    password = config.password.get_secret_value()
    if not password:
        return ()
    plain = f"\0{config.username}\0{password}".encode()
    carried = [base64.b64encode(raw).decode() for raw in (plain, password.encode())]
    return secret_spellings([password, *carried])


def _size_limit(param: str) -> int:
    """The size an EHLO ``SIZE`` parameter names (0: none given, or no limit)."""
    param = param.strip()
    return int(param) if param.isascii() and param.isdigit() else 0  # not "²", "١٢"


# aiosmtplib decodes the replies it reads (greeting, EHLO, STARTTLS, AUTH) with
# "surrogateescape": each byte that is not UTF-8 becomes a lone surrogate, which nothing
# downstream can encode (the ledger's JSON, Redis, the API's answer).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _map_connect_error(exc: Exception, config: SmtpFamilyBase) -> ProviderError:
    """Translate a failure to connect, secure or log in, the password masked wherever
    the server's reply or the error quotes it (a 535 that echoes the AUTH line would
    otherwise put it in the test email's answer, the campaign's pause reason, every
    message's ledger detail and the logs), and the bytes of a reply that are not UTF-8
    shown as U+FFFD, as :mod:`providers.smtp_wire` shows them."""
    error = _connect_error(exc, config)
    detail = _LONE_SURROGATE.sub("\ufffd", masked(error.detail, login_secrets(config)))
    if detail != error.detail:
        error.detail = detail
        error.args = (detail,)
    return error


def _connect_error(exc: Exception, config: SmtpFamilyBase) -> ProviderError:
    where = f"{config.effective_host}:{config.effective_port}"
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        reply = f"{exc.code} {exc.message}".strip()
        kind = classify(exc.code, exc.message)
        if kind is ReplyKind.QUOTA:  # SendGrid's "451 Authentication failed: Maximum credits"
            return SendingQuotaError(f"{where} refused the login: {reply}", code=exc.code)
        if 400 <= exc.code < 500:
            # "454 4.7.0 Too many login attempts" (Gmail), "454 Temporary authentication
            # failure" (SES): the credentials may be good; back off and log in again later.
            return ThrottledError(
                f"{where} refused the login for now: {reply}",
                code=exc.code,
                error_class=ErrorClass.CONNECTION,
            )
        # The service's own reply rarely says what it takes (SES: "535 Authentication
        # Credentials Invalid" to IAM keys; SendGrid: "Bad username / password" to the
        # account's login, which seed 004 still asks for): say it.
        takes = f"; {config.service} takes {config.credentials}" if config.service else ""
        return AuthenticationError(
            f"authentication refused by {where}: {reply}{takes}", code=exc.code
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return ConfigurationError(f"{where}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return ProviderTimeoutError(f"timed out connecting to {where}")
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return ConfigurationError(f"TLS failed with {where}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        error = _reply_error(exc.code, exc.message, error_class=ErrorClass.CONNECTION)
        if isinstance(error, PermanentError):
            return ConfigurationError(f"{where} refused the session: {error.detail}", code=exc.code)
        if isinstance(error, TransientError):  # "421 too busy" greeting, "454" to STARTTLS
            error.detail = f"{where} refused the session for now: {error.detail}"
            error.args = (error.detail,)
        return error
    if isinstance(exc, aiosmtplib.SMTPException) and not isinstance(exc, ConnectionError):
        # aiosmtplib's own refusals with no reply behind them: STARTTLS or AUTH not
        # offered by the server. Retrying changes nothing; the configuration must.
        return ConfigurationError(f"{where}: {exc}")
    return ProviderConnectionError(f"cannot connect to {where}: {exc}")


@dataclass(slots=True)
class _PutOff:
    """A sent message some of whose other recipients the server put off to a later
    transaction (``452``, RFC 5321 §4.5.3.1.10)."""

    msg: OutgoingMessage
    envelope: Envelope  # the message's content, to the recipients still to be sent it
    refused: dict[str, str]  # each recipient after the first not (yet) sent it: why
    # Made by :meth:`of`: ``refused`` holds every refusal of the message's own transaction
    # (not a copy's), which the message's outcome also names.
    own: bool = False

    @classmethod
    def of(
        cls, msg: OutgoingMessage, envelope: Envelope, result: TransactionResult
    ) -> _PutOff | None:
        pairs = list(zip(envelope.recipients[1:], result.rcpts[1:], strict=True))
        later = tuple(r for r, reply in pairs if too_many_recipients(reply.code, reply.text))
        if not later:
            return None
        refused = {r: str(reply) for r, reply in pairs if not reply.ok}
        return cls(msg, replace(envelope, recipients=later), refused, own=True)

    def give_up(self, why: str) -> None:
        for rcpt in self.envelope.recipients:
            self.refused[rcpt] = why
        self.envelope = replace(self.envelope, recipients=())  # none left to try

    def settle(self, result: TransactionResult) -> bool:
        """Record one more transaction's replies; whether another one is due.

        Each transaction settles its first recipient (sent, or refused for good) or ends
        the tries, so they end. When the first recipient was refused, those accepted
        with it were not sent the message: they go on, with those put off again.
        """
        if not result.mail.ok:
            self.give_up(str(result.mail))
            return False
        first = result.rcpts[0]
        sent = result.data is not None and result.data.ok
        if not sent and (first.ok or _puts_off(first)):
            # No room for even one, or the message refused (at DATA or after it).
            refusal = first if not first.ok else result.data or result.data_start or first
            self.give_up(str(refusal) if not refusal.ok else "not sent")
            return False
        pairs = list(zip(self.envelope.recipients, result.rcpts, strict=True))
        for rcpt, reply in pairs:
            if sent and reply.ok:
                self.refused.pop(rcpt, None)
            else:
                self.refused[rcpt] = str(reply)
        later = tuple(r for r, reply in pairs[1:] if _puts_off(reply) or (reply.ok and not sent))
        self.envelope = replace(self.envelope, recipients=later)
        return bool(later)

    def detail(self) -> str:
        return "; ".join(f"{rcpt}: {why}" for rcpt, why in self.refused.items())


def _puts_off(reply: Reply) -> bool:
    return too_many_recipients(reply.code, reply.text)


@dataclass(slots=True)
class _Progress:
    """What a send has learnt so far, kept for :meth:`SmtpSession.cut_short` (a send
    cancelled by its caller's deadline tells nothing itself)."""

    seqs: list[int]
    outcomes: dict[int, SendOutcome] = field(default_factory=dict)
    # The messages whose content was written (perhaps taken): any other was not sent.
    content_sent: set[int] = field(default_factory=set)
    # The messages on the wire, and the results it gave so far (not yet outcomes).
    on_wire: list[tuple[OutgoingMessage, Envelope]] = field(default_factory=list)
    results: list[TransactionResult | WireError] = field(default_factory=list)
    copies: list[tuple[OutgoingMessage, Envelope]] = field(default_factory=list)  # Cc, Bcc
    put_off: list[_PutOff] = field(default_factory=list)
    copies_due: bool = True  # the copies of the sent messages are still to join put_off
    # The put-off recipients' transactions on the wire, their results so far, and the
    # indexes of those whose content was written.
    put_off_wire: list[_PutOff] = field(default_factory=list)
    put_off_results: list[TransactionResult | WireError] = field(default_factory=list)
    put_off_content: set[int] = field(default_factory=set)

    def queue_copies(self) -> None:
        """The copies of the messages sent to their To go to the Cc and Bcc (with those
        put off): only once the To has it (a retry would send it again); they never
        change the message's outcome, only its detail."""
        if not self.copies_due:
            return
        self.copies_due = False
        for msg, envelope in self.copies:
            outcome = self.outcomes.get(msg.seq)
            if outcome is not None and outcome.status is OutcomeStatus.SENT:
                self.put_off.append(_PutOff(msg, envelope, {}))

    def note_put_off(self) -> None:
        """Each sent message's detail names the recipients it did not reach, and why: of
        its own transaction and of its copies (two: one to the Bcc that need SMTPUTF8)."""
        notes: dict[int, list[str]] = {}
        for item in self.put_off:
            seq = item.msg.seq
            if seq not in notes:  # (the item of its own transaction comes first)
                notes[seq] = [] if item.own else [self.outcomes[seq].detail]
            notes[seq].append(item.detail())
        for seq, details in notes.items():
            detail = "; ".join(filter(None, details))
            self.outcomes[seq] = replace(self.outcomes[seq], detail=detail)


class SmtpSession:
    """One authenticated SMTP connection, reused for message after message."""

    def __init__(self, transport: SmtpTransport) -> None:
        self._transport = transport
        self._wire: TransactionProtocol | None = None
        self.sent_on_connection = 0
        # Transactions the server answered on this connection (the message sent or
        # refused): one it ends after that was in use, not refused (a cap, an idle close).
        self.answered_on_connection = 0
        self.connections_opened = 0
        self._progress = _Progress([])
        self._stopped = False  # (see stop)

    async def send(self, messages: Sequence[OutgoingMessage]) -> list[SendOutcome]:
        """Send the messages, pipelined back to back; see ``providers.base.Session``."""
        progress = self._progress = _Progress([m.seq for m in messages])
        outcomes = progress.outcomes
        ready: list[tuple[OutgoingMessage, Envelope]] = []
        copies = progress.copies  # to the Cc and Bcc
        for msg in messages:
            try:
                data, copy, sender, recipients = self._transport.prepare(msg)
            except (InvalidMessageError, InvalidAddressError) as exc:
                error_class = (
                    ErrorClass.INVALID_RECIPIENT
                    if isinstance(exc, InvalidAddressError)
                    else ErrorClass.INVALID_MESSAGE
                )
                outcomes[msg.seq] = SendOutcome(
                    msg.seq, OutcomeStatus.FAILED, error_class, str(exc)
                )
                continue
            utf8 = not data.isascii()  # the sender, To and Cc are in the headers
            wide: tuple[str, ...] = ()
            if not utf8 and any(map(needs_smtputf8, recipients)):
                # So a Bcc, named in the envelope alone, needs SMTPUTF8 (RFC 6531): it gets
                # a transaction of its own, and the others theirs without it, which a
                # server that does not offer it takes too.
                wide = tuple(filter(needs_smtputf8, recipients))
                recipients = [r for r in recipients if not needs_smtputf8(r)]
            if copy is not None:
                if len(recipients) > 1:
                    stuffed = dot_stuff(copy)
                    copies.append((msg, Envelope(sender, tuple(recipients[1:]), stuffed, utf8)))
                recipients = recipients[:1]
            if wide:
                copies.append((msg, Envelope(sender, wide, dot_stuff(copy or data), True)))
            ready.append((msg, Envelope(sender, tuple(recipients), dot_stuff(data), utf8)))
        put_off = progress.put_off
        if ready:
            await self._send_ready(ready, outcomes, put_off)
        progress.queue_copies()
        if put_off:
            await self._send_put_off(put_off)
            progress.note_put_off()
        return [outcomes[m.seq] for m in messages]

    def cut_short(self) -> CutShort:
        """See ``providers.base.Session``: the messages answered (or refused before they
        went out) have their outcomes, those whose content was never written were not
        sent. A message sent to its To is ``sent`` even when the send was cut while it
        went to its Cc or Bcc (its detail says they may not have it)."""
        progress = self._progress
        outcomes = progress.outcomes
        for (msg, envelope), result in zip(progress.on_wire, progress.results, strict=False):
            try:
                outcomes[msg.seq] = self._outcome(msg, envelope, result)
            except ProviderError:  # (about the session): not taken, as send retries it
                progress.content_sent.discard(msg.seq)
                continue
            if outcomes[msg.seq].status is OutcomeStatus.SENT:
                assert isinstance(result, TransactionResult)  # (always, when sent)
                later = _PutOff.of(msg, envelope, result)
                if later is not None:
                    progress.put_off.append(later)
        progress.on_wire = []
        progress.queue_copies()
        in_doubt: list[_PutOff] = []  # content written, no answer
        for index, item in enumerate(progress.put_off_wire):
            if index < len(progress.put_off_results):  # (answered before the cut)
                self._settle_put_off(item, progress.put_off_results[index])
            elif index in progress.put_off_content:
                in_doubt.append(item)
        progress.put_off_wire = []
        for item in progress.put_off:
            if not item.envelope.recipients:
                continue
            if any(item is doubt for doubt in in_doubt):
                item.give_up("may not have been sent: the send was cut short")
            else:
                item.give_up("not sent: the send was cut short before it went to them")
        progress.note_put_off()
        unsent = [s for s in progress.seqs if s not in outcomes and s not in progress.content_sent]
        return CutShort([outcomes[s] for s in progress.seqs if s in outcomes], unsent)

    async def _send_ready(
        self,
        ready: list[tuple[OutgoingMessage, Envelope]],
        outcomes: dict[int, SendOutcome],
        put_off: list[_PutOff],
    ) -> None:
        """Raises ``TransientError`` when the first message could not be handed over.
        Sent messages some of whose recipients were put off go to ``put_off``.

        A server that ends a connection after answering transactions on it (``421`` to
        the next ``MAIL``, or a close: many relays cap the messages or the errors per
        connection, or close one kept idle since the last batch) gets the rest on a new
        connection at once; so does the configured cap, renewed between two messages of a
        chunk. Each new connection must answer a transaction for the next to be opened: a
        server refusing at once is not asked again (a throttle, retried later).
        """
        handed_over = 0
        while ready:
            if self._stopped:
                self._not_sent(ready, outcomes)
                return
            try:
                wire = await self._ensure_connection()
            except ProviderError as exc:
                if not handed_over:
                    raise
                self._not_handed_over(ready, exc, outcomes)
                return
            if not wire.smtputf8:
                ready = self._without_smtputf8(ready, outcomes)
            if wire.max_size:
                ready = self._within_size(ready, outcomes, wire.max_size)
            if not ready:
                return
            limit = self._transport.config.max_messages_per_connection
            room = limit - self.sent_on_connection if limit else len(ready)
            attempt, ready = ready[:room], ready[room:]
            progress = self._progress
            progress.on_wire, progress.results = attempt, []
            results = await wire.transactions(
                [envelope for _, envelope in attempt],
                self._content_sent([m for m, _ in attempt]),
                progress.results,
                lambda: not self._stopped,
            )
            progress.on_wire = []
            for index, (msg, envelope) in enumerate(attempt):
                result = results[index] if index < len(results) else None
                if result is None and self._stopped:  # (not a server's doing)
                    self._not_sent(attempt[index:] + ready, outcomes)
                    return
                try:
                    outcomes[msg.seq] = self._outcome(msg, envelope, result)
                except ProviderError as exc:
                    if self.answered_on_connection and _connection_ended(exc):
                        ready = attempt[index:] + ready  # the server is done with it
                        # (none taken: a 421 to its content, or before it; sent again)
                        self._progress.content_sent.difference_update(m.seq for m, _ in ready)
                        break
                    # The wire stops at a refusal of the session, so nothing after this
                    # message was attempted. The first message raises it: the whole chunk
                    # is the caller's to retry (or pause). A later one must not: those
                    # before it went out; it and the rest are retried, the next chunk
                    # meets the refusal.
                    if not handed_over:
                        raise
                    self._not_handed_over(attempt[index:] + ready, exc, outcomes)
                    return
                handed_over += 1
                if isinstance(result, TransactionResult):
                    self.answered_on_connection += 1
                if outcomes[msg.seq].status is OutcomeStatus.SENT:
                    self.sent_on_connection += 1
                    if isinstance(result, TransactionResult):  # always, when sent
                        later = _PutOff.of(msg, envelope, result)
                        if later is not None:
                            put_off.append(later)

    def _content_sent(self, attempt: list[OutgoingMessage]) -> Callable[[int], None]:
        """What notes that the content of ``attempt[index]`` is being written."""
        sent = self._progress.content_sent
        return lambda index: sent.add(attempt[index].seq)

    async def _send_put_off(self, put_off: list[_PutOff]) -> None:
        """Send sent messages again to the recipients the server put off (RFC 5321
        §4.5.3.1.10), in new transactions, until each is sent or refused for good.

        The same bytes (the same Message-ID: one message to its readers) and never to a
        recipient twice: a recipient whose transaction broke during DATA is not tried
        again. What happens here never changes a message's outcome (it was sent), only
        its detail: the recipients it did not reach, and why.
        """
        pending = list(put_off)
        while pending:
            try:
                wire = await self._ensure_connection()
            except ProviderError as exc:
                for item in pending:
                    item.give_up(f"not sent: {exc.detail}")
                return
            if not wire.smtputf8:  # (RFC 6531 §3.4: never downgraded)
                host = self._transport.config.effective_host
                for item in pending:
                    if item.envelope.utf8:
                        item.give_up(f"needs SMTPUTF8 (RFC 6531), which {host} does not offer")
                pending = [item for item in pending if item.envelope.recipients]
                if not pending:
                    return
            limit = self._transport.config.max_messages_per_connection
            room = limit - self.sent_on_connection if limit else len(pending)
            attempt, pending = pending[:room], pending[room:]
            progress = self._progress
            progress.put_off_wire, progress.put_off_results = attempt, []
            progress.put_off_content = set()
            results = await wire.transactions(
                [item.envelope for item in attempt],
                progress.put_off_content.add,
                progress.put_off_results,
            )
            progress.put_off_wire = []
            for index, item in enumerate(attempt):
                result = results[index] if index < len(results) else None
                if self._settle_put_off(item, result):
                    pending.append(item)

    def _settle_put_off(self, item: _PutOff, result: TransactionResult | WireError | None) -> bool:
        """Record in ``item`` the result of its transaction; whether it is due again."""
        if isinstance(result, TransactionResult) and _closing(result) is None:
            if result.data is not None and result.data.ok:
                self.sent_on_connection += 1
            self.answered_on_connection += 1
            return item.settle(result)
        if isinstance(result, WireError) and result.during_data:
            item.give_up(f"outcome unknown: {result} during DATA")
            return False
        if self.answered_on_connection:  # the connection ended after use
            return True
        why = _closing(result) if isinstance(result, TransactionResult) else result
        item.give_up(f"not sent: {why or 'the session ended before it'}")
        return False

    def _without_smtputf8(
        self, ready: list[tuple[OutgoingMessage, Envelope]], outcomes: dict[int, SendOutcome]
    ) -> list[tuple[OutgoingMessage, Envelope]]:
        """``ready`` without the messages that need SMTPUTF8, which the server does not
        offer: each fails, naming the address (RFC 6531 §3.4 forbids downgrading it)."""
        kept = []
        host = self._transport.config.effective_host
        for msg, envelope in ready:
            if not envelope.utf8:
                kept.append((msg, envelope))
                continue
            # The Reply-To is in the headers only, the Cc and Bcc may be in the envelope of a
            # copy (prepare took them all: they normalise).
            recipients = map(normalize_address, msg.envelope_recipients)
            reply_to = (normalize_address(msg.reply_to),) if msg.reply_to else ()
            addresses = (*recipients, envelope.sender, *reply_to)
            utf8 = [a for a in addresses if needs_smtputf8(a)]
            named = f"{utf8[0]!r} needs" if utf8 else "its headers need"
            outcomes[msg.seq] = SendOutcome(
                msg.seq,
                OutcomeStatus.FAILED,
                ErrorClass.INVALID_RECIPIENT,
                f"{named} SMTPUTF8 (RFC 6531), which the server {host} does not offer",
            )
        return kept

    def _within_size(
        self,
        ready: list[tuple[OutgoingMessage, Envelope]],
        outcomes: dict[int, SendOutcome],
        max_size: int,
    ) -> list[tuple[OutgoingMessage, Envelope]]:
        """``ready`` without the messages larger than the server takes (its ``SIZE``, RFC
        1870): each fails as ``Invalid message`` saying so, before its content is sent
        (the server would read it whole, then refuse it with 552, "dispatching failed",
        and retry-failed would send it again for nothing)."""
        kept = []
        for msg, envelope in ready:
            if len(envelope.payload) <= max_size:
                kept.append((msg, envelope))
                continue
            host = self._transport.config.effective_host
            outcomes[msg.seq] = SendOutcome(
                msg.seq,
                OutcomeStatus.FAILED,
                ErrorClass.INVALID_MESSAGE,
                f"the message is {len(envelope.payload):,} bytes, more than the {max_size:,} the "
                f"server {host} takes (its SIZE, RFC 1870)",
            )
        return kept

    @staticmethod
    def _not_handed_over(
        rest: list[tuple[OutgoingMessage, Envelope]],
        exc: ProviderError,
        outcomes: dict[int, SendOutcome],
    ) -> None:
        """The session refused ``rest[0]`` with ``exc``, or ended before it; nothing after
        it was attempted. All are retried later; a throttle is ``rest[0]``'s alone."""
        first, _ = rest[0]
        if isinstance(exc, TransientError):
            outcomes[first.seq] = SendOutcome.from_error(first.seq, exc)
        else:
            outcomes[first.seq] = SendOutcome(
                first.seq,
                OutcomeStatus.RETRY,
                exc.error_class,
                f"not handed over: {exc.detail}",
                code=exc.code,
            )
        ended = ProviderConnectionError("not handed over: the session ended before it")
        for msg, _ in rest[1:]:
            outcomes[msg.seq] = SendOutcome.from_error(msg.seq, ended)

    def stop(self) -> None:
        """See ``providers.base.Session``: asked before each message of a chunk (the one
        whose commands are on the wire goes on to its answer)."""
        self._stopped = True

    @staticmethod
    def _not_sent(
        rest: list[tuple[OutgoingMessage, Envelope]], outcomes: dict[int, SendOutcome]
    ) -> None:
        """The caller stopped the send before ``rest`` was handed over (:meth:`stop`)."""
        for msg, _ in rest:
            outcomes[msg.seq] = SendOutcome(
                msg.seq, OutcomeStatus.NOT_SENT, detail="not sent: the sender stopped first"
            )

    async def open(self) -> None:
        self._wire = await self._transport.open_wire()
        self.sent_on_connection = 0
        self.answered_on_connection = 0
        self.connections_opened += 1

    async def close(self) -> None:
        if self._wire is not None:
            await self._wire.quit()
            self._wire = None

    async def _ensure_connection(self) -> TransactionProtocol:
        """Reconnect when the server hung up or the per-connection message cap is reached."""
        limit = self._transport.config.max_messages_per_connection
        due = limit and self.sent_on_connection >= limit
        if self._wire is None or due or not self._wire.alive:
            await self.close()
            await self.open()
        assert self._wire is not None
        return self._wire

    def _outcome(
        self,
        msg: OutgoingMessage,
        envelope: Envelope,
        result: TransactionResult | WireError | None,
    ) -> SendOutcome:
        """Classify a transaction's replies; raises for replies about the whole session.

        ``None``: the message was never handed over (an earlier one broke the connection).
        """
        if result is None:
            raise ProviderConnectionError("not handed over: the session ended before it")
        if isinstance(result, WireError):
            if result.during_data:
                # The server may have taken the message before the answer was lost
                # (reference §5.6: a timeout after "." is an unknown outcome).
                error_class = ErrorClass.TIMEOUT if result.timed_out else ErrorClass.CONNECTION
                return SendOutcome(
                    msg.seq, OutcomeStatus.UNKNOWN, error_class, f"{result} during DATA"
                )
            if result.timed_out:
                raise ProviderTimeoutError(str(result)) from result
            raise ProviderConnectionError(str(result)) from result
        recipients = envelope.recipients
        if not result.mail.ok:
            err = _reply_error(
                result.mail.code,
                result.mail.text,
                error_class=ErrorClass.DISPATCH_FAILED_SMTP,
                recipients=recipients,
            )
            if isinstance(err, ConfigurationError | ThrottledError):
                raise err  # about the session, not this message: nothing was handed over
            return SendOutcome.from_error(msg.seq, err)
        first = result.rcpts[0]
        if not first.ok:
            # Refused relaying or a policy block is the set-up's or the sender's fault, not
            # the address's (the breaker counts it, retry-failed may send it again).
            ours = refuses_sender(first.text)
            error_class = ErrorClass.DISPATCH_FAILED_SMTP if ours else ErrorClass.INVALID_RECIPIENT
            err = _reply_error(first.code, first.text, at_rcpt=True, error_class=error_class)
            if first.code == 421 or isinstance(err, ConfigurationError):
                raise err
            return SendOutcome.from_error(msg.seq, err)
        refused = "; ".join(
            f"{rcpt}: {reply}"
            for rcpt, reply in zip(recipients[1:], result.rcpts[1:], strict=True)
            if not reply.ok
        )
        final = result.data
        if final is None:
            start = result.data_start
            if start is None or start.code == 354:
                raise ProviderConnectionError("transaction abandoned before DATA")
            err = _reply_error(
                start.code,
                start.text,
                error_class=ErrorClass.DISPATCH_FAILED_SMTP,
                recipients=recipients,
            )
            if start.code == 421:
                raise ThrottledError(str(start), code=421)
            if isinstance(err, ConfigurationError) or _throttles_sending("data", start):
                raise err
            return SendOutcome.from_error(msg.seq, err)
        if not final.ok:
            if final.code == 421:
                # Closing channel in answer to the message: it was not taken.
                raise ThrottledError(str(final), code=421)
            err = _reply_error(
                final.code,
                final.text,
                error_class=ErrorClass.DISPATCH_FAILED_SMTP,
                recipients=recipients,
            )
            if isinstance(err, ConfigurationError) or _throttles_sending("data", final):
                # The quota is used up, or the sending rate exceeded: the message was
                # dropped, and the rest would be.
                raise err
            return SendOutcome.from_error(msg.seq, err)
        return SendOutcome.sent(msg.seq, refused, provider_message_id=_queued_id(final.text))


def _closing(result: TransactionResult) -> Reply | None:
    """The ``421`` (closing the channel) that ended a transaction, if one did."""
    for reply in (result.mail, *result.rcpts[:1], result.data_start, result.data):
        if reply is not None and reply.code == 421:
            return reply
    return None


def _connection_ended(exc: ProviderError) -> bool:
    """Whether the server ended the connection before taking the message: a ``421``
    (closing the channel, RFC 5321 §3.8) or a close, not a timeout."""
    if exc.code == 421:
        return True
    return isinstance(exc, ProviderConnectionError) and not isinstance(exc, ProviderTimeoutError)


# "queued as <id>": Postfix, SendGrid ("250 Ok: queued as kFQtaSL9T7ePqzCPMZL7fg"), Brevo.
_QUEUED_AS = re.compile(r"\bqueued as:?\s+<?([^\s<>]+)>?", re.IGNORECASE)
# Gmail ends every reply with " - gsmtp" (reference §3): the id is the word before it.
_GSMTP = re.compile(r"(\S+)\s+-\s+gsmtp\s*$")
# What a server's id looks like: a token with a digit in it, as SES's
# "0100019276a1b2c3-...-000000", not a word of the text ("250 OK queued", "Queued mail for
# delivery") nor a bracketed trailer ("[Hostname=...]").
_ID_LIKE = re.compile(r"[\w.@+-]*\d[\w.@+-]*")


def _queued_id(text: str) -> str:
    """The server's id for the message: after "queued as", before Gmail's "- gsmtp",
    else the last word when it looks like an id (SES ``250 Ok <id>``, reference §4:
    what its callbacks carry as ``mail.messageId``); "" when the reply names none."""
    for pattern in (_QUEUED_AS, _GSMTP):
        found = pattern.search(text)
        if found is not None:
            return found.group(1)
    words = text.split()
    last = words[-1] if len(words) > 1 else ""
    return last if len(last) >= 8 and _ID_LIKE.fullmatch(last) else ""


def smtpapi_header(meta: str, campaign_id: str) -> str:
    """SendGrid's ``X-SMTPAPI`` value: JSON on one line, in ASCII (non-ASCII as ``\\uXXXX``).

    ``unique_args`` come back flattened into each event (reference §2.3-2.4). SendGrid asks
    for ASCII JSON and the writer never folds or encodes this header; orjson never escapes
    non-ASCII, so values that are not ASCII go through ``json`` (which also escapes lone
    surrogates, that orjson refuses).
    """
    smtpapi = {"unique_args": {"clevertap_meta": meta, "campaign_id": campaign_id}}
    if meta.isascii() and campaign_id.isascii():
        return orjson.dumps(smtpapi).decode("ascii")
    return json.dumps(smtpapi, ensure_ascii=True, separators=(",", ":"))


def _distinct(addresses: list[str]) -> list[str]:
    """``addresses`` (normalised) without repeats, compared caselessly, the first kept."""
    seen: set[str] = set()
    kept = []
    for address in addresses:
        key = address.casefold()
        if key not in seen:
            seen.add(key)
            kept.append(address)
    return kept


class SmtpTransport:
    """A configured SMTP-family provider."""

    # Messages handed to a session at once: pipelined back to back on one connection.
    # Also how many may be in flight on a connection when a worker dies (then unknown).
    chunk_size = 4
    content_parts = ALL_CONTENT_PARTS

    def __init__(self, config: SmtpFamilyBase) -> None:
        self.config = config
        self.kind = str(getattr(config, "kind", "smtp"))
        self.max_sessions = config.max_connections
        self._writers: OrderedDict[str, MimeWriter] = OrderedDict()
        self._static: list[tuple[str, str]] = []
        if isinstance(config, SesConfig) and config.configuration_set:
            # Over SMTP this header is the only way to pick a configuration set (reference §4).
            self._static.append(("X-SES-CONFIGURATION-SET", config.configuration_set))

    def _writer(self, campaign_id: str) -> MimeWriter:
        writer = self._writers.get(campaign_id)
        if writer is None:
            writer = MimeWriter(campaign_id=campaign_id, static_headers=self._static)
            self._writers[campaign_id] = writer
            while len(self._writers) > _WRITER_CACHE_SIZE:
                self._writers.popitem(last=False)
        return writer

    def prepare(self, msg: OutgoingMessage) -> tuple[bytes, bytes | None, str, list[str]]:
        """The message bytes, the bytes of the Cc and Bcc copy, envelope sender and envelope
        recipients (To, then Cc, then Bcc).

        The copy is None when every recipient gets the same bytes in one transaction. It is
        not when the message carries the To recipient's one-click unsubscribe link: the Cc
        and Bcc are sent the message without it, in a transaction of their own
        (``MimeWriter.write_pair``), so that no mail client of theirs offers a button that
        unsubscribes the To recipient.

        Raises ``InvalidAddressError`` for a bad recipient, ``InvalidMessageError`` for
        data that cannot be placed in a header.
        """
        recipients = [normalize_address(a) for a in msg.envelope_recipients]
        if len(recipients) > 1:  # an address named twice (the To in cc) gets one copy
            recipients = _distinct(recipients)
        limit = self.config.max_recipients_per_message
        if limit and len(recipients) > limit:
            raise InvalidMessageError(
                f"{len(recipients)} recipients; {self.kind} allows {limit} per message"
            )
        try:
            sender = normalize_address(msg.from_address)
        except InvalidAddressError as exc:
            raise InvalidMessageError(f"from_address: {exc}") from exc
        extra: list[tuple[str, str]] = []
        if isinstance(self.config, SendgridConfig):
            extra.append(("X-SMTPAPI", smtpapi_header(msg.meta, msg.campaign_id)))
        try:
            data, copy = self._writer(msg.campaign_id).write_pair(msg, extra)
        except ValueError as exc:  # UnicodeError included: a value no header or body can carry
            raise InvalidMessageError(str(exc)) from exc
        return data, copy if len(recipients) > 1 else None, sender, recipients

    async def open_wire(self) -> TransactionProtocol:
        """Connect, secure as configured, log in, and take over the connection.

        Raises ``ProviderError`` subclasses (see :func:`_map_connect_error`).
        """
        cfg = self.config
        security = cfg.effective_security
        client = aiosmtplib.SMTP(
            hostname=cfg.effective_host,
            port=cfg.effective_port,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            # The process's shared context, with or without certificate checks
            # (providers.tls): aiosmtplib would build one per connection otherwise.
            tls_context=smtp_context(cfg.tls_verify, cfg.tls_ca) if security != "none" else None,
            timeout=cfg.timeout,
        )
        try:
            await client.connect()
            if client.last_ehlo_response is None:  # plain connections greet lazily
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    # RFC 5321 §4.1.4: a server that does not know EHLO gets HELO (as
                    # aiosmtplib does for STARTTLS); one that closed (421) is refused.
                    if not client.is_connected:
                        raise
                    await client.helo()
            if cfg.username:
                await client.login(cfg.username, cfg.password.get_secret_value())
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            error = _map_connect_error(exc, cfg)
            # A reply's text is all the error says, and it may quote the password: the
            # masked detail is kept, not the original under it (a traceback shows it).
            cause = None if isinstance(exc, aiosmtplib.SMTPResponseException) else exc
            raise error from cause
        except asyncio.CancelledError:  # (a deadline cut the opening): no socket left open
            client.close()
            raise
        # An asyncio.Transport, or uvloop's equivalent (not a subclass) under uvicorn.
        transport = cast(asyncio.Transport, client.transport)
        if transport is None:
            raise ProviderConnectionError("connection closed during the handshake")
        return TransactionProtocol(
            transport,
            pipelining=client.supports_extension("pipelining"),
            smtputf8=client.supports_extension("smtputf8"),
            max_size=_size_limit(client.esmtp_extensions.get("size", "")),
            timeout=cfg.timeout,
            data_timeout=cfg.end_of_data_timeout,
            refuses_session=refuses_session,
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[SmtpSession]:
        """An open, authenticated connection; closed with QUIT on exit."""
        session = SmtpSession(self)
        await session.open()
        try:
            yield session
        finally:
            await session.close()
