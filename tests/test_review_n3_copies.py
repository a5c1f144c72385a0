"""Cc and Bcc copies by SMTP never carry the To recipient's one-click unsubscribe link.

A mail client offers an unsubscribe button for whatever ``List-Unsubscribe`` the copy it
holds names (RFC 8058: one POST, no question asked). When the Cc and Bcc were sent the To
recipient's bytes, a Cc reader's button unsubscribed the To recipient: the wrong person
lost their mail, and a Cc on every message of a campaign could unsubscribe all of its
recipients. The copies now go in a transaction of their own, without those headers; the
To recipient keeps one-click unsubscribe.
"""

from __future__ import annotations

import asyncio
import email.policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import redis

from dispatch import campaign_reads, ledger, store
from dispatch.settings import Settings
from providers.base import OutcomeStatus, OutgoingMessage, SendOutcome
from providers.config import parse_provider_config
from providers.mime import MimeWriter
from providers.smtp import SmtpTransport
from tests.conftest import API_TOKEN
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import Received, SmtpTestServer

ONE_CLICK = "List-Unsubscribe=One-Click"
UNSUBSCRIBE = (
    ("List-Unsubscribe", "<https://dispatch.example/u/token-of-ann>"),
    ("List-Unsubscribe-Post", ONE_CLICK),
)
FAST = Settings(retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=5.0)
COPIES = {"cc": ["boss@example.com"], "bcc": ["archive@example.com"]}


def _message(seq: int = 0, to: str = "ann@example.com", **fields: Any) -> OutgoingMessage:
    values: dict[str, Any] = {
        "subject": "Hello", "html": "<p>Hi</p>", "text": "Hi",
        "from_address": "deals@acme.example", "from_name": "Acme",
        "cc": ("boss@example.com",), "bcc": ("archive@example.com",), "headers": UNSUBSCRIBE,
        **fields,
    }  # fmt: skip
    return OutgoingMessage(seq, f"{to}|1|c1|20261122|0|default|{seq}|", "c1", to, **values)


def _send(port: int, messages: list[OutgoingMessage], **config: Any) -> list[SendOutcome]:
    provider = {"nickname": "s", "kind": "smtp", "host": "127.0.0.1", "port": port,
                "security": "none", **config}  # fmt: skip
    transport = SmtpTransport(parse_provider_config(provider))  # type: ignore[arg-type]

    async def go() -> list[SendOutcome]:
        async with transport.session() as session:
            return list(await session.send(messages))

    return asyncio.run(go())


def _parsed(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _without_unsubscribe(data: bytes) -> bytes:
    return b"".join(
        line
        for line in data.splitlines(keepends=True)
        if not line.lower().startswith(b"list-unsubscribe")
    )


def _one_click(api: httpx.Client, link: str) -> None:
    path = "/" + link.strip("<>").split("/", 3)[3]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert api.post(path, content=ONE_CLICK, headers=form).is_success


def _suppressed(api: httpx.Client, address: str) -> bool:
    answer = api.get(
        f"/v1/suppressions/{address}", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    assert answer.status_code in (200, 404), answer.text
    return answer.status_code == 200


def test_a_cc_or_bcc_readers_unsubscribe_button_unsubscribes_no_recipient(
    redis_client: redis.Redis, smtp: SmtpTestServer, api: httpx.Client
) -> None:
    """The campaign through the worker's path, the one-click POSTs over real HTTP."""
    smtp_provider(redis_client, smtp.port, preference_center="system")
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3),
            **COPIES}  # fmt: skip
    cid, _ = run_inline(redis_client, body, FAST)
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 3
    to = {f"user{i}@example.com" for i in range(3)}
    everyone = (*sorted(to), *COPIES["cc"], *COPIES["bcc"])

    # What the Cc and Bcc readers' clients would offer: no link at all, so no button. The
    # old code sent them the To recipient's link, and this unsubscribed the To recipient.
    cc_copies = [m for m in smtp.messages if "boss@example.com" in m.rcpt_tos]
    bcc_copies = [m for m in smtp.messages if "archive@example.com" in m.rcpt_tos]
    assert len(cc_copies) == len(bcc_copies) == 3
    for copy in (*cc_copies, *bcc_copies):
        for link in copy.message.get_all("List-Unsubscribe") or []:
            _one_click(api, link)
    assert [a for a in everyone if _suppressed(api, a)] == []

    own = {m.rcpt_tos[0]: m for m in smtp.messages if m.rcpt_tos[0] in to}
    copies = [m for m in smtp.messages if m.rcpt_tos[0] not in to]
    # Each To recipient got its message alone; the Cc and Bcc one copy of each message.
    assert sorted(m.rcpt_tos for m in own.values()) == [[a] for a in sorted(to)]
    assert [m.rcpt_tos for m in copies] == [["boss@example.com", "archive@example.com"]] * 3
    for copy in copies:
        parsed = copy.message
        assert parsed["List-Unsubscribe"] is None and parsed["List-Unsubscribe-Post"] is None
        assert parsed["Cc"] == "boss@example.com"
        assert b"archive@example.com" not in copy.data  # Bcc: envelope only

    # The copy is the To recipient's message (Message-ID, Date, body) without the link.
    by_id = {m.message["Message-ID"]: m for m in own.values()}
    for copy in copies:
        mine = by_id[copy.message["Message-ID"]]
        assert _without_unsubscribe(mine.data) == copy.data

    # The To recipient keeps one-click unsubscribe, and it unsubscribes them alone.
    ann = own["user0@example.com"].message
    assert ann["List-Unsubscribe-Post"] == ONE_CLICK
    _one_click(api, ann["List-Unsubscribe"])
    assert [a for a in everyone if _suppressed(api, a)] == ["user0@example.com"]


def _record(r: redis.Redis, cid: str, seq: int) -> dict[str, Any]:
    record = ledger.parse_record(r.hget(store.ledger_key(cid), str(seq)))
    assert isinstance(record, dict)
    return record


def test_a_copy_refused_leaves_the_message_sent_and_says_so(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """The message is the To recipient's: a copy the server refuses (at RCPT or at DATA)
    is named in the message's detail, and the message stays sent, counted once."""
    smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("boss") else None
    smtp.handler.data_reply = lambda e: (
        "554 5.7.1 archive is full" if e.rcpt_tos == ["archive@example.com"] else None
    )
    smtp_provider(redis_client, smtp.port, preference_center="system")
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(2),
            **COPIES}  # fmt: skip
    cid, _ = run_inline(redis_client, body, FAST)
    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["failed"], counters["queued"]) == (2, 0, 0)
    assert sorted(m.rcpt_tos for m in smtp.messages) == [
        ["user0@example.com"],
        ["user1@example.com"],
    ]
    for seq in (0, 1):
        record = _record(redis_client, cid, seq)
        assert record["state"] == "sent"
        assert record["detail"] == (
            "boss@example.com: 550 5.1.1 no such user; "
            "archive@example.com: 554 5.7.1 archive is full"
        )


def test_copies_go_only_once_the_to_recipient_has_the_message(smtp: SmtpTestServer) -> None:
    """A To refused for good or put off: no copy (a retry would send it a second one)."""
    smtp.handler.rcpt_reply = lambda address: {
        "gone@example.com": "550 5.1.1 no such user",
        "later@example.com": "451 4.7.1 greylisted, try again",
    }.get(address)
    messages = [_message(0, "gone@example.com"), _message(1, "later@example.com"), _message(2)]
    outcomes = _send(smtp.port, messages)
    assert [o.status for o in outcomes] == [
        OutcomeStatus.FAILED, OutcomeStatus.RETRY, OutcomeStatus.SENT,
    ]  # fmt: skip
    assert [m.rcpt_tos for m in smtp.messages] == [
        ["ann@example.com"],
        ["boss@example.com", "archive@example.com"],
    ]
    assert outcomes[2].detail == ""


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_chunk_with_copies_sends_each_once_on_one_connection(pipelining: bool) -> None:
    with SmtpTestServer() as server:
        server.handler.pipelining = pipelining
        messages = [_message(i, f"user{i}@example.com") for i in range(4)]
        outcomes = _send(server.port, messages)
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] * 4
    assert server.handler.connections == 1
    tos = [m.rcpt_tos for m in server.messages if m.rcpt_tos[0].startswith("user")]
    assert tos == [[f"user{i}@example.com"] for i in range(4)]
    copies: list[Received] = [m for m in server.messages if not m.rcpt_tos[0].startswith("user")]
    assert [_parsed(m.data)["To"] for m in copies] == [f"user{i}@example.com" for i in range(4)]


def test_without_an_unsubscribe_link_every_recipient_has_one_transaction(
    smtp: SmtpTestServer,
) -> None:
    """Nothing in the message is the To recipient's alone: one transaction, as before."""
    _send(smtp.port, [_message(0, headers=())])
    assert [m.rcpt_tos for m in smtp.messages] == [
        ["ann@example.com", "boss@example.com", "archive@example.com"]
    ]


def test_the_writer_leaves_only_the_unsubscribe_headers_out_of_the_copy() -> None:
    extra = [("X-SMTPAPI", '{"unique_args":{}}')]
    writer = MimeWriter(campaign_id="c1", static_headers=[("X-SES-CONFIGURATION-SET", "set")])
    own, copy = writer.write_pair(_message(), extra)
    assert copy is not None and copy == _without_unsubscribe(own)
    assert _parsed(own)["List-Unsubscribe"] == UNSUBSCRIBE[0][1]
    assert _parsed(own)["List-Unsubscribe-Post"] == ONE_CLICK
    parsed = _parsed(copy)
    assert parsed["X-SMTPAPI"] and parsed["X-SES-CONFIGURATION-SET"] == "set"
    assert parsed["To"] == "ann@example.com" and parsed["Cc"] == "boss@example.com"
    assert writer.write(_message()) == writer.write_pair(_message(), copy=False)[0]
    # None when the copy would be the same bytes: no Cc and no Bcc, or no such header.
    assert writer.write_pair(_message(cc=(), bcc=()))[1] is None
    assert writer.write_pair(_message(headers=()), extra)[1] is None
    assert writer.write_pair(_message(cc=()))[1] is not None  # a Bcc alone


def test_copies_put_off_by_a_server_taking_one_recipient_at_a_time(smtp: SmtpTestServer) -> None:
    """The copy's own transaction is put off like any (452, RFC 5321 §4.5.3.1.10)."""

    def one_per_transaction(address: str) -> str | None:
        last = smtp.handler.commands[-2]  # before this RCPT
        return None if last.startswith("MAIL") else "452 4.5.3 Too many recipients"

    smtp.handler.rcpt_reply = one_per_transaction
    outcomes = _send(smtp.port, [_message(0), _message(1, "bo@example.com")])
    assert [(o.status, o.detail) for o in outcomes] == [(OutcomeStatus.SENT, "")] * 2
    assert all(len(m.rcpt_tos) == 1 for m in smtp.messages)
    got = sorted(m.rcpt_tos[0] for m in smtp.messages)
    assert got == sorted(["ann@example.com", "bo@example.com", *["boss@example.com"] * 2,
                          *["archive@example.com"] * 2])  # fmt: skip
    assert all(
        m.message["List-Unsubscribe"] is None
        for m in smtp.messages
        if m.rcpt_tos[0] != m.message["To"]
    )


@pytest.mark.parametrize("headers", [UNSUBSCRIBE, ()], ids=["copy", "one-transaction"])
def test_a_to_recipient_also_in_cc_or_bcc_gets_one_message(headers: tuple[Any, ...]) -> None:
    """The To named again in cc or bcc (any case) is sent the message once: the copy, or
    the one transaction, goes only to the others (none left: no copy at all)."""
    with SmtpTestServer() as smtp:
        twice = _message(0, cc=("ANN@example.com", "boss@example.com"), headers=headers)
        alone = _message(1, to="bob@example.com", cc=(), bcc=("Bob@Example.com",), headers=headers)
        outcomes = _send(smtp.port, [twice, alone])
        assert [o.status for o in outcomes] == [OutcomeStatus.SENT, OutcomeStatus.SENT]
        got = sorted(rcpt.lower() for m in smtp.messages for rcpt in m.rcpt_tos)
        assert got == ["ann@example.com", "archive@example.com", "bob@example.com",
                       "boss@example.com"]  # fmt: skip
