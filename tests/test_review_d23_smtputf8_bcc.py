"""Review D23: a Bcc whose local part is not ASCII (RFC 6531) costs the To nothing.

The Bcc is in the envelope alone, never in the headers: the To's message has ASCII
headers and needs no SMTPUTF8. Every message of such a campaign failed as ``SMTP invalid
email ID`` for its To recipient on a server that does not offer SMTPUTF8 (SES never
does), and went with ``SMTPUTF8`` to one that does.
"""

from __future__ import annotations

import pytest
import redis

from dispatch import ledger, store
from tests.helpers import run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

WIDE = "jörg@example.com"  # NFC, as normalize_address gives it
TOS = ("ann@example.com", "bo@example.com")


def _campaign(redis_client: redis.Redis, port: int, center: str) -> str:
    smtp_provider(redis_client, port, preference_center=center)
    body = {"provider": "local", "subject": "s", "html": "<p>h</p>",
            "cc": ["cc@example.com"], "bcc": [WIDE, "archive@example.com"],
            "recipients": [{"email": to} for to in TOS]}  # fmt: skip
    cid, results = run_inline(redis_client, body)
    assert [r.counts for r in results] == [{"sent": 2}]
    return cid


@pytest.mark.parametrize("center", ["none", "system"])
def test_without_smtputf8_the_to_and_the_ascii_copies_are_sent(
    redis_client: redis.Redis, center: str
) -> None:
    with SmtpTestServer() as smtp:
        cid = _campaign(redis_client, smtp.port, center)
        received = [(m.rcpt_tos, m.mail_options) for m in smtp.messages]
        commands = list(smtp.handler.commands)
    others = ["cc@example.com", "archive@example.com"]
    if center == "none":  # one transaction, as before, for all but the Bcc in UTF-8
        expected = [([to, *others], []) for to in TOS]
    else:  # (the Cc and Bcc get theirs without the To's List-Unsubscribe)
        expected = [([to], []) for to in TOS] + [(others, [])] * 2
    assert sorted(received) == sorted(expected)
    assert all(c.isascii() for c in commands)  # nothing asked of the server in UTF-8
    for seq in "01":
        rec = ledger.parse_record(redis_client.hget(store.ledger_key(cid), seq))
        assert rec is not None and rec["state"] == "sent"
        why = "needs SMTPUTF8 (RFC 6531), which 127.0.0.1 does not offer"
        assert rec["detail"] == f"{WIDE}: {why}"


@pytest.mark.parametrize("center", ["none", "system"])
def test_with_smtputf8_only_the_bccs_transaction_asks_for_it(
    redis_client: redis.Redis, center: str
) -> None:
    with SmtpTestServer(smtputf8=True) as smtp:
        cid = _campaign(redis_client, smtp.port, center)
        received = [(m.rcpt_tos, m.mail_options) for m in smtp.messages]
    others = ["cc@example.com", "archive@example.com"]
    expected = [([WIDE], ["BODY=8BITMIME", "SMTPUTF8"])] * 2
    if center == "none":
        expected += [([to, *others], []) for to in TOS]
    else:
        expected += [([to], []) for to in TOS] + [(others, [])] * 2
    assert sorted(received) == sorted(expected)
    for seq in "01":
        rec = ledger.parse_record(redis_client.hget(store.ledger_key(cid), seq))
        assert rec is not None and (rec["state"], rec["detail"]) == ("sent", "")
