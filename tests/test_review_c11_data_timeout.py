"""Review C11: the reply to the end of a message's content has a wait of its own.

RFC 5321 §4.5.3.2.6: the client should wait at least 10 minutes for the reply to the
final "." of DATA, since the server may check the message (spam, viruses) before it
answers. Waiting only the provider's ``timeout`` for it left a message a slow server
took ``unknown`` (never resent: possibly lost to the user, or sent twice by a person who
sends the unknown ones again). ``data_timeout`` is that wait; every other wait
(connect, greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA) keeps ``timeout``.

A real aiosmtpd server answers the end of the data late; the waits are kept short by
small settings (``timeout`` 1 s, ``data_timeout`` 4 s, a server 2 s late).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import ValidationError

from dispatch import store
from dispatch.ledger import parse_record
from dispatch.provider_store import load_provider, save_provider
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings
from providers.base import OutcomeStatus, SendOutcome
from providers.config import DEFAULT_SMTP_DATA_TIMEOUT, MAX_SMTP_DATA_TIMEOUT, SmtpConfig
from providers.errors import ErrorClass, ProviderTimeoutError
from tests.api_server import ApiServer
from tests.api_support import api_client, smtp_body
from tests.helpers import create_held, recipients, smtp_provider
from tests.smtp_server import Handler, SmtpTestServer
from tests.test_input_validation import assert_refused
from tests.test_smtp_sending import _config, _message, _send

TIMEOUT = 1.0
DATA_TIMEOUT = 4.0
LATE = 2.0  # the server's delay: past TIMEOUT, within DATA_TIMEOUT


@dataclass
class LateHandler(Handler):
    """:class:`Handler` whose replies to the end of data (and to MAIL, when asked) come
    ``data_delays`` (``mail_delays``) seconds late, one delay a message in turn (then 0)."""

    data_delays: list[float] = field(default_factory=list)
    mail_delays: list[float] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)  # a content was read

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.mail_delays:
            await asyncio.sleep(self.mail_delays.pop(0))
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # aiosmtpd calls this once the whole content, its final dot included, is read.
        self.ended.set()
        if self.data_delays:
            await asyncio.sleep(self.data_delays.pop(0))
        return await super().handle_DATA(server, session, envelope)


def _server(pipelining: bool = True, **delays: list[float]) -> SmtpTestServer:
    server = SmtpTestServer()
    server.handler = LateHandler(pipelining=pipelining, **delays)
    return server


def _outcomes(port: int, n: int = 1, **fields: object) -> list[SendOutcome]:
    config = _config(port, "none", timeout=TIMEOUT, data_timeout=DATA_TIMEOUT, **fields)
    messages = [_message(i, f"user{i}@example.com") for i in range(n)]
    return asyncio.run(_send(config, messages))  # type: ignore[arg-type]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_reply_to_the_end_later_than_timeout_but_within_data_timeout_is_sent(
    pipelining: bool,
) -> None:
    with _server(pipelining, data_delays=[LATE]) as server:
        [outcome] = _outcomes(server.port)
    assert outcome.status is OutcomeStatus.SENT, outcome
    assert [m.rcpt_tos for m in server.messages] == [["user0@example.com"]]


def test_the_next_pipelined_message_after_a_late_reply_is_sent_too() -> None:
    """The next message's MAIL, RCPT and DATA travel with this one's content: their
    replies come after the late one, and are waited for with ``timeout`` from then."""
    with _server(data_delays=[LATE, 0, LATE]) as server:
        outcomes = _outcomes(server.port, 4)
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] * 4, outcomes
    assert [m.rcpt_tos for m in server.messages] == [[f"user{i}@example.com"] for i in range(4)]


@pytest.mark.parametrize("pipelining", [True, False])
def test_no_reply_to_the_end_within_data_timeout_is_unknown(pipelining: bool) -> None:
    with _server(pipelining, data_delays=[DATA_TIMEOUT + 2]) as server:
        config = _config(server.port, "none", timeout=0.5, data_timeout=1.0)
        first, second = asyncio.run(_send(config, [_message(0), _message(1, "b@example.com")]))
    assert (first.status, first.error_class) == (OutcomeStatus.UNKNOWN, ErrorClass.TIMEOUT)  # type: ignore[attr-defined]
    assert "1 s" in first.detail, first  # type: ignore[attr-defined]
    # The connection was dropped: the next message was not handed over, and is retried.
    assert second.status is OutcomeStatus.RETRY, second  # type: ignore[attr-defined]


@pytest.mark.parametrize("pipelining", [True, False])
def test_the_replies_to_mail_rcpt_and_data_keep_timeout(pipelining: bool) -> None:
    """Only the end of data waits ``data_timeout``: a server as late to MAIL times out
    after ``timeout``, before anything of the message went (not unknown: retried)."""
    with _server(pipelining, mail_delays=[LATE]) as server, pytest.raises(ProviderTimeoutError):
        _outcomes(server.port)
    assert server.messages == []


@pytest.mark.parametrize("late", ["greeting", "EHLO", "AUTH"])
def test_the_session_s_opening_keeps_timeout(late: str) -> None:
    """A server as late to greet, to EHLO or to AUTH is not waited for past ``timeout``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if late == "greeting":
            await asyncio.sleep(LATE)
        writer.write(b"220 late\r\n")
        while line := await reader.readline():
            if line.upper().startswith(late.encode()):
                await asyncio.sleep(LATE)
            if line.upper().startswith(b"EHLO"):
                writer.write(b"250-late\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n")
            elif line.upper().startswith(b"AUTH"):
                writer.write(b"235 2.7.0 ok\r\n")
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    async def run() -> None:
        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        config = _config(port, "none", timeout=TIMEOUT, data_timeout=DATA_TIMEOUT,
                         username="u", password="p")  # fmt: skip
        try:
            await _send(config, [_message()])
        finally:
            listener.close()

    with pytest.raises(ProviderTimeoutError):
        asyncio.run(run())


def test_data_timeout_defaults_to_ten_minutes_and_is_checked_naming_it() -> None:
    config = SmtpConfig(nickname="relay", host="mail.example.com")
    assert config.data_timeout == DEFAULT_SMTP_DATA_TIMEOUT == 600.0
    assert not config.warnings()[1:]  # only the empty from_address's
    for value in (0, -1, MAX_SMTP_DATA_TIMEOUT + 1, True, "60", float("inf"), float("nan")):
        with pytest.raises(ValidationError) as info:
            SmtpConfig(nickname="relay", host="mail.example.com", data_timeout=value)
        assert [e["loc"][-1] for e in info.value.errors()] == ["data_timeout"], value
    assert SmtpConfig(nickname="r", host="h", data_timeout=MAX_SMTP_DATA_TIMEOUT).data_timeout


def test_a_data_timeout_shorter_than_timeout_is_saved_with_a_warning() -> None:
    """The end of data then waits ``timeout``: never shorter than any other reply."""
    config = SmtpConfig(
        nickname="r", host="h", from_address="a@b.example", timeout=90, data_timeout=60
    )
    assert config.end_of_data_timeout == 90
    [warning] = config.warnings()
    assert "data_timeout" in warning and "90" in warning, warning


def test_data_timeout_over_the_api(api_server: ApiServer, smtp: SmtpTestServer) -> None:
    with api_client(api_server) as api:
        for bad in (0, 3600):
            answer = api.put("/v1/providers/p", json=smtp_body(smtp.port, data_timeout=bad))
            assert_refused(answer, "data_timeout")
        saved = api.put("/v1/providers/p", json=smtp_body(smtp.port, data_timeout=120))
        assert saved.status_code == 201, saved.text
        assert saved.json()["data_timeout"] == 120
        again = api.put("/v1/providers/p", json=api.get("/v1/providers/p").json())
        assert again.status_code == 200, again.text
        assert api.get("/v1/providers/p").json()["data_timeout"] == 120
        schema = api.get("/openapi.json").json()["components"]["schemas"]
        for kind in ("Smtp", "Ses", "Sendgrid", "Gmail"):
            prop = schema[f"{kind}ProviderConfig"]["properties"]["data_timeout"]
            assert prop["default"] == DEFAULT_SMTP_DATA_TIMEOUT, prop
            assert prop["maximum"] == MAX_SMTP_DATA_TIMEOUT, prop
            assert "RFC 5321" in prop["description"], prop


def test_a_provider_stored_before_data_timeout_reads_with_the_default(
    redis_client: redis.Redis,
) -> None:
    save_provider({"nickname": "old", "kind": "smtp", "host": "mail.example.com"}, redis_client)
    assert load_provider("old", redis_client).data_timeout == DEFAULT_SMTP_DATA_TIMEOUT  # type: ignore[union-attr]


def test_the_batch_keeps_its_lease_while_the_reply_to_the_end_is_late(
    redis_client: redis.Redis,
) -> None:
    """A batch whose message waits for a late reply (far longer than the lease's TTL)
    still owns its batch: a second run of the same batch meanwhile (a redelivered task,
    housekeeping's re-enqueue) is turned away, and the message goes out once, ``sent``."""
    settings = Settings(lease_ttl_ms=400)
    with _server(data_delays=[LATE]) as server:
        smtp_provider(redis_client, server.port, timeout=0.5, data_timeout=DATA_TIMEOUT)
        campaign_id, [(cid, batch)] = create_held(
            redis_client,
            {"id": "slow", "provider": "local", "subject": "Hi", "html": "<p>Hi</p>",
             "recipients": recipients(1)},
        )  # fmt: skip

        async def go() -> tuple[BatchResult, BatchResult]:
            client = store.async_client()
            try:
                first = asyncio.create_task(run_batch(cid, batch, r=client, settings=settings))
                while not server.handler.ended.is_set():  # the content is at the server
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # two and a half lease TTLs into the wait
                assert not first.done()  # (the reply is 2 s late)
                other = await run_batch(cid, batch, r=client, settings=settings)
                return await first, other
            finally:
                await client.aclose()

        result, other = asyncio.run(go())
    assert other.busy, other
    assert result.counts.get("sent") == 1, result
    assert [m.rcpt_tos for m in server.messages] == [["user0@example.com"]]
    record = parse_record(redis_client.hget(store.ledger_key(campaign_id), "0"))
    assert record is not None and record["state"] == "sent", record
