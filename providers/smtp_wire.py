"""Mail transactions on an established SMTP connection, pipelined when the server allows.

aiosmtplib opens the connection (TLS, STARTTLS, EHLO, AUTH) and then hands its transport
to :class:`TransactionProtocol`, which runs transaction after transaction on it. With
PIPELINING (RFC 2920) one transaction is two round trips: ``MAIL FROM``, every ``RCPT
TO`` and ``DATA`` in one write, then the message. aiosmtplib sends one command per round
trip (PITFALLS), four or more per message.

Replies are parsed here, never raised: the caller classifies them
(:mod:`providers.smtp_replies`). Connection problems raise :class:`WireError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

MAX_REPLY_LINE = 1024
# Lines of one multi-line reply (an EHLO answer has a dozen): a server sending continuation
# lines without end would otherwise fill the memory until the timeout.
MAX_REPLY_LINES = 256
# Replies received and not yet asked for. A pipelined transaction waits for one per
# command (MAIL, each RCPT, DATA) and at most the next one's are on their way: a server
# that answers what nobody sent is broken, and would otherwise fill the memory.
MAX_UNREAD_REPLIES = 4096


def _reply_code(line: bytes) -> int | None:
    """The reply code of a reply line, or None when the line is not one: three digits,
    the first 2 to 5 (RFC 5321 §4.2), then a space, a hyphen or the line's end. (``int``
    alone took " 250" for 25 and "2500" for 250.)"""
    head = line[:3]
    if len(head) != 3 or not head.isdigit() or head[:1] not in b"2345":
        return None
    if line[3:4] not in (b" ", b"-", b"\r", b"\n"):
        return None
    return int(head)


class WireError(ConnectionError):
    """The connection broke or timed out; ``during_data`` if the message was being sent."""

    def __init__(self, message: str, *, timed_out: bool = False, during_data: bool = False):
        super().__init__(message)
        self.timed_out = timed_out
        self.during_data = during_data


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


# In place of the replies a server never sent before it closed the connection (see
# TransactionProtocol._refused_then_lost).
LOST = Reply(421, "no answer: the server closed the connection")


# Where in a transaction a reply came: to MAIL, to the first RCPT, to DATA or the content.
Stage = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message to send: envelope addresses and the dot-stuffed DATA content;
    ``utf8`` when an address or header is in UTF-8 (RFC 6531: sent with ``SMTPUTF8``, to a
    server that offers it)."""

    sender: str
    recipients: tuple[str, ...]
    payload: bytes
    utf8: bool = False

    def mail(self) -> str:
        return (
            # The 8-bit headers are an 8BITMIME body, which a server offering SMTPUTF8
            # must take (RFC 6531 §3.1); Python's smtplib sends both as well.
            f"MAIL FROM:<{self.sender}> BODY=8BITMIME SMTPUTF8\r\n"
            if self.utf8
            else f"MAIL FROM:<{self.sender}>\r\n"
        )

    def commands(self) -> bytes:
        rcpts = "".join(f"RCPT TO:<{r}>\r\n" for r in self.recipients)
        return f"{self.mail()}{rcpts}DATA\r\n".encode()


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """Replies of one transaction; ``data`` is None when the message was not sent."""

    mail: Reply
    rcpts: tuple[Reply, ...]
    data_start: Reply | None
    data: Reply | None


def dot_stuff(message: bytes) -> bytes:
    """The DATA payload: leading dots doubled (RFC 5321 §4.5.2), then the end marker.

    ``message`` must already use CRLF line endings (the MIME writer guarantees it).
    """
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    # After any LF, not only CRLF: a server that takes a bare LF for a line end (SMTP
    # smuggling) must not see a lone dot either. (A multiline regex took 57 µs for a
    # 4.7 KB message on this machine, this 11 µs.)
    return message.replace(b"\n.", b"\n..") + b".\r\n"


class TransactionProtocol(asyncio.Protocol):
    """Takes over an SMTP transport after the handshake and runs mail transactions."""

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        pipelining: bool,
        timeout: float,
        refuses_session: Callable[[Stage, Reply, tuple[str, ...]], bool] = lambda *_: False,
        smtputf8: bool = False,
        max_size: int = 0,
        data_timeout: float | None = None,
    ):
        self.transport = transport
        self.pipelining = pipelining
        self.smtputf8 = smtputf8  # the server takes UTF-8 addresses and headers (RFC 6531)
        self.max_size = max_size  # the message size the server takes (SIZE, RFC 1870; 0: any)
        # Refusals about the session, not the message (throttling, credentials, a used-up
        # quota), told from the reply, its stage and the envelope's recipients: the
        # messages after one are not attempted on this connection.
        self.refuses_session = refuses_session
        self.timeout = timeout
        # The reply to the end of a message's content may take longer: the server may
        # check the message before it answers (RFC 5321 §4.5.3.2.6 asks for 10 minutes).
        # A wait that ends without it leaves the message's outcome unknown. None: timeout.
        self.data_timeout = timeout if data_timeout is None else data_timeout
        self._buffer = bytearray()
        self._replies: deque[Reply] = deque()
        self._lines: list[str] = []
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._error: Exception | None = None
        # The server answered 421: it is closing the channel (RFC 5321 §3.8), so nothing
        # more is sent, even if it still answers commands that were already on their way.
        self._closing = False
        transport.set_protocol(self)

    # -- asyncio.Protocol ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._fail(WireError("reply line too long"))
                return
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            code = _reply_code(line)
            if code is None:
                self._fail(WireError(f"malformed reply line {line[:80]!r}"))
                return
            if len(self._lines) >= MAX_REPLY_LINES:
                self._fail(WireError(f"reply of more than {MAX_REPLY_LINES} lines"))
                return
            self._lines.append(line[4:].strip().decode("utf-8", "replace"))
            if line[3:4] != b"-":
                if code == 421:
                    self._closing = True
                self._replies.append(Reply(code, "\n".join(self._lines)))
                self._lines = []
                if len(self._replies) > MAX_UNREAD_REPLIES:  # none of them can be trusted
                    self._replies.clear()
                    self._fail(WireError(f"more than {MAX_UNREAD_REPLIES} replies not asked for"))
                    self.transport.abort()
                    return
                self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(WireError(f"connection lost: {exc or 'closed by server'}"))

    def eof_received(self) -> bool:
        self._fail(WireError("connection closed by server"))
        return False

    # -- plumbing ----------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and len(self._replies) >= self._wanted:
            waiter.set_result(None)

    @property
    def alive(self) -> bool:
        return self._error is None and not self._closing and not self.transport.is_closing()

    def _write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise WireError("the server is closing the connection (421)")
        self.transport.write(data)

    async def _read(
        self, count: int, *, during_data: bool = False, wait: float | None = None
    ) -> list[Reply]:
        """The next ``count`` replies within ``wait`` seconds (None: ``timeout``); raises
        :class:`WireError` on loss or timeout."""
        if len(self._replies) < count and self._error is None:
            self._wanted = count
            self._waiter = asyncio.get_running_loop().create_future()
            wait = self.timeout if wait is None else wait
            try:
                async with asyncio.timeout(wait):
                    await self._waiter
            except TimeoutError:
                self._error = WireError(
                    f"timed out waiting for the server ({wait:g} s)",
                    timed_out=True,
                    during_data=during_data,
                )
                self.transport.abort()
            except asyncio.CancelledError:
                # (the caller's deadline): the replies still due would answer whatever
                # is sent next, a QUIT too. The connection is of no more use.
                self._fail(WireError("cancelled while waiting for the server"))
                self.transport.abort()
                raise
            finally:
                self._waiter = None
        if len(self._replies) < count and self._closing and self._replies[-1].code == 421:
            # The server closed the session with 421 (RFC 5321 §3.8) before answering
            # the rest of a pipelined group: that is the answer to each of them.
            self._replies.extend([self._replies[-1]] * (count - len(self._replies)))
        if len(self._replies) < count:
            error = self._error or WireError("connection lost")
            if isinstance(error, WireError) and during_data and not error.during_data:
                error = WireError(str(error), timed_out=error.timed_out, during_data=True)
            raise error
        return [self._replies.popleft() for _ in range(count)]

    # -- transactions ------------------------------------------------------------------
    async def transaction(
        self, sender: str, recipients: list[str], payload: bytes
    ) -> TransactionResult:
        """One message; see :meth:`transactions`. Raises :class:`WireError`."""
        result = (await self.transactions([Envelope(sender, tuple(recipients), payload)]))[0]
        if isinstance(result, WireError):
            raise result
        return result

    async def transactions(
        self,
        envelopes: list[Envelope],
        on_content: Callable[[int], None] = lambda index: None,
        results: list[TransactionResult | WireError] | None = None,
        go_on: Callable[[], bool] = lambda: True,
    ) -> list[TransactionResult | WireError]:
        """Send messages one after the other; one result each, up to the first WireError.

        With PIPELINING the commands of the next message travel in the same write as the
        current message's content (RFC 2920 §4's example sends QUIT after "." the same
        way), so a message costs one round trip. A message is sent only when MAIL, its
        first recipient and DATA were accepted; otherwise the transaction is reset and
        ``data`` is None. A :class:`WireError` with ``during_data`` means that message's
        outcome is unknown; messages after it were not handed over. So are those after a
        transaction whose reply to MAIL, to its first RCPT, to DATA or to its content
        ``refuses_session`` (the results end there; when the next message's commands had
        gone out with this one's content, the connection is dropped before its content).

        ``on_content`` is called with a message's index right before its content (with
        the end of its DATA) is written: a message it was not called for, whatever became
        of the call (cancelled by the caller's deadline too), was certainly not sent. The
        results are appended to ``results`` (when given) as they come: a call cancelled
        leaves there those of the messages answered before. ``go_on`` is asked before
        each message: once it says no, the results end there (the rest not handed over;
        a message whose commands went out with the last content has its connection
        dropped before its own content).
        """
        results = [] if results is None else results
        ahead = False
        for index, envelope in enumerate(envelopes):
            if self._closing and not ahead:  # a 421: the rest are not handed over
                break
            if not go_on():
                if ahead:  # its DATA may have been answered 354: only a close ends it
                    self._fail(WireError("the sender stopped before this message"))
                    self.transport.abort()
                break
            following = envelopes[index + 1] if index + 1 < len(envelopes) else None
            try:
                result, ahead = await self._one(envelope, ahead, following, index, on_content)
            except WireError as exc:
                results.append(exc)
                break
            results.append(result)
            if self._refused(result, envelope.recipients):
                if ahead:
                    self._fail(WireError("the server refused the session"))
                    self.transport.abort()
                break
        return results

    def _refused(self, result: TransactionResult, recipients: tuple[str, ...]) -> bool:
        """The transaction ended with a refusal of the session, not of the message."""
        if not result.mail.ok:
            return self.refuses_session("mail", result.mail, recipients)
        if result.rcpts and not result.rcpts[0].ok:
            return self.refuses_session("rcpt", result.rcpts[0], recipients)
        for reply in (result.data_start, result.data):
            if reply is not None and not reply.ok:
                return self.refuses_session("data", reply, recipients)
        return False

    async def _one(
        self,
        envelope: Envelope,
        commands_sent: bool,
        following: Envelope | None,
        index: int,
        on_content: Callable[[int], None],
    ) -> tuple[TransactionResult, bool]:
        """One transaction; returns it and whether ``following``'s commands were sent
        (``index``, ``on_content``: see :meth:`transactions`)."""
        rcpt_cmds = [f"RCPT TO:<{r}>\r\n".encode() for r in envelope.recipients]
        if self.pipelining:
            if not commands_sent:
                self._write(envelope.commands())
            try:
                replies = await self._read(len(rcpt_cmds) + 2)
            except WireError as exc:
                replies = self._refused_then_lost(len(rcpt_cmds) + 2, exc)
            mail, rcpts, data_start = replies[0], tuple(replies[1:-1]), replies[-1]
        else:
            self._write(envelope.mail().encode())
            mail = (await self._read(1))[0]
            if not mail.ok:
                return TransactionResult(mail, (), None, None), False
            collected = []
            for command in rcpt_cmds:
                self._write(command)
                collected.append((await self._read(1))[0])
            rcpts = tuple(collected)
            if not rcpts[0].ok:
                await self._reset()
                return TransactionResult(mail, rcpts, None, None), False
            self._write(b"DATA\r\n")
            data_start = (await self._read(1))[0]
        self._in_step((mail, *rcpts), data_start)
        ends: list[bytes] = []  # what ends the transaction when the message is not sent
        if data_start.code == 354:
            if mail.ok and rcpts[0].ok:
                out = envelope.payload
                ahead = self.pipelining and following is not None
                if following is not None and ahead:
                    out += following.commands()
                on_content(index)
                self._write(out)
                # The content's own sending is waited for within it too (it is written
                # to the socket's buffer, which drains as the server reads).
                final = (await self._read(1, during_data=True, wait=self.data_timeout))[0]
                if final.code // 100 == 3:
                    # Only 2xx takes the message and 4xx/5xx refuse it (RFC 5321 §4.3.2):
                    # a 354 to the final dot leaves its outcome unknown, the session out of step.
                    error = WireError(f"unexpected reply {final}", during_data=True)
                    self._fail(error)
                    self.transport.abort()
                    raise error
                return TransactionResult(mail, rcpts, data_start, final), ahead
            if any(r.ok for r in rcpts):
                # Others than the message's own recipient were accepted: ending DATA would
                # send them an empty message. Drop the connection instead (rare).
                self._fail(WireError("transaction abandoned"))
                self.transport.abort()
                return TransactionResult(mail, rcpts, data_start, None), False
            # No recipient: end the empty DATA, the server must refuse it (RFC 2920 §3.1).
            ends.append(b".\r\n")
        if mail.ok:
            ends.append(b"RSET\r\n")
        await self._reset(ends)
        return TransactionResult(mail, rcpts, data_start, None), False

    def _refused_then_lost(self, count: int, error: WireError) -> list[Reply]:
        """The ``count`` replies of a pipelined group whose connection was lost after the
        server refused MAIL or the first RCPT (Exim's ``drop``: the refusal, then a close):
        the message was refused, its content never written. The replies the server never
        sent read as :data:`LOST` (a close, as a ``421`` is: the others go on a new
        connection). Raises ``error`` when the replies received decide nothing."""
        got = list(self._replies)[:count]
        if all(reply.ok for reply in got[:2]):
            raise error
        self._replies.clear()
        return got + [LOST] * (count - len(got))

    def _in_step(self, commands: tuple[Reply, ...], data_start: Reply) -> None:
        """Raises :class:`WireError` (the connection dropped, nothing of the message
        sent) for a reply that has no place where it came: MAIL and RCPT answer 2xx, 4xx
        or 5xx, DATA 354, 4xx or 5xx (RFC 5321 §4.3.2). The server is out of step with
        the commands, so no reply after it can be matched to one; the message is tried
        again on a new connection."""
        for reply in (*commands, data_start):
            kind = reply.code // 100
            if (kind == 3 and reply is not data_start) or (
                reply is data_start and kind in (2, 3) and reply.code != 354
            ):
                error = WireError(f"unexpected reply {reply}")
                self._fail(error)
                self.transport.abort()
                raise error

    async def _reset(self, commands: Sequence[bytes] = (b"RSET\r\n",)) -> None:
        """End a refused transaction with ``commands``, each answered in turn.

        The refusal was its answer: a connection the server drops (or lets time out) after
        it does not undo it. The loss is left for the next transaction to meet (not handed
        over, sent on a new connection); raised here, it took the refusal's place, and the
        message, retried, met the same refusal and the same drop at every attempt.
        """
        for command in commands:
            if not self.alive:  # closed after its reply (421): nothing to reset
                return
            try:
                self._write(command)
                await self._read(1)
            except WireError:
                return

    async def quit(self) -> None:
        """Say goodbye politely; never raises."""
        try:
            if self.alive:
                self._write(b"QUIT\r\n")
                await self._read(1)
        except (WireError, OSError):
            pass
        finally:
            self.transport.close()
