"""Review M4: the meta's round trip, provider by provider, end to end.

Each test sends a real campaign through one provider kind (the SMTP family at a local
aiosmtpd, Generic HTTP at a local sink), reads the meta the provider received as that
provider would (SES: the message's headers as ``mail.headers``; SendGrid: the
``X-SMTPAPI`` ``unique_args``, flattened into each event; the generic kinds: the
``X-CleverTap_META`` header or the ``$$MessageID`` value), builds the callback the
provider sends from it as reference/protocols.md documents, posts it to the real API over
HTTP and checks that the event landed on its message: counters, the stream entry's
``meta``, suppression.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from dispatch import campaign_reads, campaigns, suppressions
from dispatch.models import CampaignRequest
from dispatch.provider_store import save_provider
from tests.callback_support import (
    TOPIC,
    callback_entries,
    callback_path,
    post,
)
from tests.helpers import http_provider
from tests.http_sink import HttpSink
from tests.smtp_server import Received, SmtpTestServer
from tests.test_callback_gateway import settle, sns_headers
from tests.test_callbacks_ses import Signer, notification
from tests.worker import WorkerProcess, wait_for

# signer and sns_settings (conftest): SNS envelopes signed and verified.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("sns_settings")]

SUCCESS = {"status": "success", "message": "Callback processed successfully"}
META = "X-CleverTap_META"


LOGINS = {"gmail": "deals@acme.example", "sendgrid": "apikey"}


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[SmtpTestServer]:
    """The SMTP server of the test's ``kind`` (it takes the preset's login)."""
    username = LOGINS.get(request.node.callspec.params.get("kind", ""), "")
    credentials = (username, "app-pw") if username else None
    with SmtpTestServer(smtputf8=True, credentials=credentials) as smtp:
        yield smtp


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """The message's header fields as a relay sees them: unfolded (CRLF before white
    space removed, RFC 5322 §2.2.3), nothing decoded."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
        else:
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
    return fields


def wire_header(message: Received, name: str) -> str:
    (value,) = [v for n, v in header_fields(message.data) if n.lower() == name.lower()]
    return value


def send(r: redis.Redis, nickname: str, campaign_id: str, emails: list[str], **fields: Any) -> None:
    request = CampaignRequest.model_validate(
        {"id": campaign_id, "provider": nickname, "subject": "s", "html": "<p>h</p>",
         "recipients": [{"email": e} for e in emails], **fields}
    )  # fmt: skip
    campaigns.create_campaign(request, client=r)
    wait_for(lambda: campaign_reads.get_status(campaign_id, r).value == "completed", timeout=60)


@dataclass
class Trip:
    """One SMTP-family provider of the test's ``kind`` sending to ``server``."""

    kind: str
    path: str  # its callback path
    r: redis.Redis
    api: httpx.Client
    server: SmtpTestServer
    signer: Signer

    def bounce(self, message: Received, n: int, meta: str | None = None) -> None:
        """Post the provider's hard bounce of ``message``; it must be accepted."""
        body, headers = callback(self.kind, message, self.signer, n, meta)
        answer = post(self.api, self.path, body, headers)
        assert answer.json() == SUCCESS, (self.kind, message.rcpt_tos, answer.text)


@pytest.fixture
def trip(
    request: pytest.FixtureRequest,
    redis_client: redis.Redis,
    api: httpx.Client,
    server: SmtpTestServer,
    signer: Signer,
    celery_worker: WorkerProcess,
) -> Trip:
    kind = request.node.callspec.params["kind"]
    path = smtp_kind(redis_client, kind, server.port)
    return Trip(kind, path, redis_client, api, server, signer)


def smtp_kind(r: redis.Redis, kind: str, port: int, **extra: Any) -> str:
    fields: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": "none"}
    if kind == "ses":
        fields["sns_topic_arns"] = [TOPIC]
    if kind == "gmail":
        fields.update(username=LOGINS[kind], password="app-pw")
    if kind == "sendgrid":
        fields["password"] = "app-pw"
    save_provider(
        {"nickname": kind, "kind": kind, "from_name": "Acme", "from_address": "deals@acme.example",
         **fields, **extra},
        r,
    )  # fmt: skip
    return callback_path(r, kind)


def ses_envelope(
    signer: Signer, message: Received, event: str, message_id: str, meta: str | None = None
) -> dict[str, Any]:
    """SES's notification of ``event`` for ``message``, its original headers included
    (``meta``: the X-CleverTap_META value SES reports instead of the one sent)."""
    recipient = message.rcpt_tos[0]
    headers = [(n, meta if meta and n == META else v) for n, v in header_fields(message.data)]
    mail = {
        "timestamp": "2024-11-04T10:03:37.412Z",
        "source": "deals@acme.example",
        "messageId": f"0100-{message_id}",
        "destination": message.rcpt_tos,
        "headersTruncated": False,
        "headers": [{"name": n, "value": v} for n, v in headers],
        "commonHeaders": {"to": [recipient], "subject": "s"},
    }
    if event == "Bounce":
        body: dict[str, Any] = {
            "notificationType": "Bounce",
            "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                       "bouncedRecipients": [{"emailAddress": recipient, "status": "5.1.1"}],
                       "timestamp": "2024-11-04T10:03:39.103Z"},
        }  # fmt: skip
    else:
        body = {
            "notificationType": "Delivery",
            "delivery": {"recipients": [recipient], "timestamp": "2024-11-04T10:03:39.103Z"},
        }
    return signer.sign(notification({**body, "mail": mail}, message_id))


def sendgrid_event(message: Received, event: str, n: int) -> dict[str, Any]:
    unique_args = json.loads(wire_header(message, "X-SMTPAPI"))["unique_args"]
    return {
        "email": message.rcpt_tos[0], "timestamp": 1730714620 + n, "event": event,
        "sg_event_id": f"ev-{n}", "sg_message_id": f"sg-{n}", "smtp-id": f"<{n}@x>",
        **({"type": "bounce", "reason": "550 5.1.1"} if event == "bounce" else {}),
        **unique_args,
    }  # fmt: skip


def callback(
    kind: str, message: Received, signer: Signer, n: int, meta: str | None = None
) -> tuple[Any, dict[str, str]]:
    """The hard bounce ``kind``'s provider posts for ``message`` (the ``n``-th): built
    from what it received, or carrying ``meta`` instead of the meta sent."""
    if kind == "ses":
        envelope = ses_envelope(signer, message, "Bounce", f"m4-{n}", meta)
        return envelope, sns_headers(envelope)
    if kind == "sendgrid":
        event = sendgrid_event(message, "bounce", n)
        return [{**event, "clevertap_meta": meta} if meta else event], {}
    event = {"version": "v2", "event": "failed", "type": "hard_bounce",
             "email": message.rcpt_tos[0], "meta": meta or wire_header(message, META),
             "description": "550 5.1.1"}  # fmt: skip
    return event, {}


def check_landed(r: redis.Redis, campaign_id: str, messages: list[Received]) -> None:
    """Each message's hard bounce counted once, published with its meta, suppressed."""
    settle(r)
    assert campaign_reads.get_counters(campaign_id, r)["hard_bounced"] == len(messages)
    entries = [e for e in callback_entries(r) if e["campaign_id"] == campaign_id]
    assert sorted(e["meta"] for e in entries if e["event"] == "Notification Failed") == sorted(
        wire_header(m, META) for m in messages
    )
    assert not any("Meta Email Mismatch" in e["properties"] for e in entries)
    for message in messages:
        assert suppressions.get(message.rcpt_tos[0], client=r) is not None


AWKWARD = [
    "first+tag@example.com",
    "Kai@Bücher.Example",
    "o'brien@example.com",
    "x" * 64 + "@" + ".".join(["a" * 60] * 3) + ".example",
]
SMTP_KINDS = ["smtp", "gmail", "ses", "sendgrid"]


@pytest.mark.parametrize("kind", SMTP_KINDS)
def test_awkward_addresses_round_trip(kind: str, trip: Trip) -> None:
    send(trip.r, kind, f"m4-{kind}", AWKWARD)
    assert len(trip.server.messages) == len(AWKWARD)
    for n, message in enumerate(trip.server.messages):
        trip.bounce(message, n)
    check_landed(trip.r, f"m4-{kind}", trip.server.messages)


@pytest.mark.parametrize("kind", SMTP_KINDS)
def test_a_category_and_variant_with_spaces_round_trip(kind: str, trip: Trip) -> None:
    """Category and variant are printable ASCII (spaces included, at either end): the
    meta carries them as they are, and the callbacks must be read back as the
    campaign's (they were "invalid meta: field variant has surrounding spaces": a
    generic bounce was refused, an SES or SendGrid one counted nowhere)."""
    cid = f"m4-spaces-{kind}"
    send(trip.r, kind, cid, ["a@example.com"], category=" Summer sale ", variant="B ")
    (message,) = trip.server.messages
    assert wire_header(message, META).endswith("|B | Summer sale |0|")
    trip.bounce(message, 0)
    check_landed(trip.r, cid, [message])


def test_generic_http_round_trip(
    redis_client: redis.Redis, api: httpx.Client, celery_worker: WorkerProcess
) -> None:
    """``$$MessageID`` in the body is the meta; the generic callback brings it back."""
    emails = [*AWKWARD, "jörg@bücher.example"]
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        send(redis_client, "esp", "m4-http", emails, category="Summer sale")
        sent = [m for request in sink.requests for m in request.json()["msgs"]]
    assert len(sent) == len(emails)
    events = [
        {"type": "hard_bounce", "email": m["to"], "meta": m["mid"], "description": "550"}
        for m in sent
    ]
    path = callback_path(redis_client, "esp")
    answer = post(api, path, {"version": "v2", "events": {"failed": events}})
    n = len(emails)
    assert answer.json() == {"TOTAL_EVENTS": n, "PROCESSED_EVENTS": n, "UNPROCESSED_EVENTS": []}
    settle(redis_client)
    assert campaign_reads.get_counters("m4-http", redis_client)["hard_bounced"] == len(emails)
    published = {e["meta"] for e in callback_entries(redis_client)}
    assert published == {m["mid"] for m in sent}
    for m in sent:
        assert suppressions.get(m["to"], client=redis_client) is not None


@pytest.mark.parametrize("kind", SMTP_KINDS)
def test_a_meta_whose_seq_names_another_recipients_message_counts_nowhere(
    kind: str, trip: Trip
) -> None:
    """a@'s bounce carrying a meta altered to seq 1 (b@'s message): still a@'s bounce
    (recorded, a@ suppressed), but it must not count b@'s message bounced, nor keep b@'s
    own bounce from counting. It counted b@'s message, and b@'s bounce then counted
    nothing (its message was already counted)."""
    cid = f"m4-seq-{kind}"
    send(trip.r, kind, cid, ["a@example.com", "b@example.com"])
    a, b = sorted(trip.server.messages, key=lambda m: m.rcpt_tos[0])
    sent = wire_header(a, META)
    assert sent.endswith("|0|") and sent.startswith("a@example.com|")
    altered = sent[: -len("0|")] + "1|"
    trip.bounce(a, 0, meta=altered)
    settle(trip.r)
    assert campaign_reads.get_counters(cid, trip.r)["hard_bounced"] == 0
    assert suppressions.get("a@example.com", client=trip.r) is not None
    assert {e["meta"] for e in callback_entries(trip.r)} == {altered}

    trip.bounce(b, 1)
    settle(trip.r)
    assert campaign_reads.get_counters(cid, trip.r)["hard_bounced"] == 1
    assert suppressions.get("b@example.com", client=trip.r) is not None
