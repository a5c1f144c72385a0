"""The callback gateway end to end: the real app over HTTP, a real Redis, a real worker.

Each test posts what a provider would post to ``/v1/callbacks/{nickname}/{token}`` and
checks the answer (DESIGN §6 shapes) and, once the worker has applied the events, the
campaign counters, the suppression list and the ``dispatch:events`` stream.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dispatch import callbacks, campaign_reads, campaigns, store, suppressions
from dispatch.effects import InboxEvent
from dispatch.models import CampaignRequest
from dispatch.settings import get_settings
from dispatch.tasks import recover_callbacks
from tests.callback_support import (
    DATA,
    TOPIC,
    ConnectProxy,
    HttpsServer,
    callback_entries,
    draft_campaign,
    generic_event,
    inbox_empty,
    nested,
    post,
    sample,
    save_providers,
    stream,
)
from tests.helpers import smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_callbacks_sendgrid import Key
from tests.test_callbacks_ses import Signer, notification, ses_bounce
from tests.worker import WorkerProcess, wait_for

pytestmark = pytest.mark.usefixtures("sns_settings")

SUCCESS = {"status": "success", "message": "Callback processed successfully"}
SIGNED_SES_SAMPLES = {
    # sample -> (recipient, event type or None when the message carries no event)
    "ses-sns-subscription-succeeded.json": (None, None),
    "sns-unsubscribe-confirmation.json": (None, None),
    "ses-sns-bounce-permanent.json": ("user1@example.com", "hard_bounce"),
    "ses-sns-bounce-transient.json": ("user4@example.com", "soft_bounce"),
    "ses-sns-complaint.json": ("user3@example.com", "spam"),
    "ses-sns-delivery.json": ("user2@example.com", "delivered"),
    "ses-sns-click.json": ("user5@example.com", "clicked"),
    "ses-sns-delivery-delay.json": (None, None),  # recorded and ignored (other)
}


@pytest.fixture
def worker(celery_worker: WorkerProcess, redis_client: redis.Redis) -> WorkerProcess:
    return celery_worker


def settle(r: redis.Redis) -> None:
    """Wait until the worker has applied every stored batch."""
    wait_for(lambda: inbox_empty(r), timeout=60)


def sns_headers(envelope: dict[str, Any]) -> dict[str, str]:
    return {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": envelope["Type"],
        "x-amz-sns-message-id": envelope["MessageId"],
        "x-amz-sns-topic-arn": envelope["TopicArn"],
    }


# -- authentication and probes ----------------------------------------------------------


def test_wrong_token_and_unknown_nickname_get_the_same_refusal(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    payload = nested(generic_event("delivered", "a@example.com", "x"))
    good = paths["gen"]
    token = good.rsplit("/", 1)[1]
    wrong = [
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # one character off
        f"/v1/callbacks/nobody/{token}",  # a real token under another nickname
        f"/v1/callbacks/sg/{token}",  # another provider's nickname
        "/v1/callbacks/NOT_A_NICKNAME/x",
    ]
    answers = [post(api, path, payload) for path in wrong]

    assert {a.status_code for a in answers} == {400}
    assert all(
        a.json() == {"status": "error", "message": "invalid callback URL", "error_code": 400}
        for a in answers
    )
    assert redis_client.hlen(store.CALLBACK_INBOX_HASH) == 0


def test_get_and_head_answer_provider_probes(api: httpx.Client, paths: dict[str, str]) -> None:
    assert api.get(paths["gen"]).status_code == 200
    assert api.head(paths["sg"]).status_code == 200
    assert api.get(paths["gen"] + "x").status_code == 400
    assert api.head("/v1/callbacks/nobody/x").status_code == 400


def test_callbacks_need_no_bearer_token(api: httpx.Client, paths: dict[str, str]) -> None:
    answer = post(api, paths["gen"], nested())  # an empty batch, as a provider's test post

    assert "authorization" not in {k.lower() for k in api.headers}
    assert (answer.status_code, answer.json()) == (200, SUCCESS)


# -- generic format: seeds, shapes, limits ----------------------------------------------


def seed_flat() -> dict[str, Any]:
    return {
        "version": "v2",
        "event": "failed",
        "type": "hard_bounce",
        "email": "user1@example.com",
        "meta": "user1@example.com|1568798080|1730714617|20241104|0|wzrk_default|-17005904|",
        "description": "Hard bounce detected",
    }


@pytest.mark.parametrize("nickname", ["gen", "mail"])
def test_seed_examples_get_the_smtp_seed_answer(
    api: httpx.Client, paths: dict[str, str], nickname: str
) -> None:
    nested_answer = post(api, paths[nickname], sample("generic-seed-nested.json"))
    flat_answer = post(api, paths[nickname], seed_flat())

    assert (nested_answer.status_code, nested_answer.json()) == (200, SUCCESS)
    assert (flat_answer.status_code, flat_answer.json()) == (200, SUCCESS)


def test_seed_examples_get_the_http_seed_answer(api: httpx.Client, paths: dict[str, str]) -> None:
    nested_answer = post(api, paths["web"], sample("generic-seed-nested.json"))
    flat_answer = post(api, paths["web"], seed_flat())

    assert nested_answer.status_code == 200
    assert nested_answer.json() == {"TOTAL_EVENTS": 5, "PROCESSED_EVENTS": 5,
                                    "UNPROCESSED_EVENTS": []}  # fmt: skip
    assert flat_answer.json() == {"TOTAL_EVENTS": 1, "PROCESSED_EVENTS": 1,
                                  "UNPROCESSED_EVENTS": []}  # fmt: skip


def test_seed_nested_example_has_the_table_effects(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    assert post(api, paths["gen"], sample("generic-seed-nested.json")).status_code == 200
    settle(redis_client)

    names = Counter((e["email"], e["event"]) for e in callback_entries(redis_client))
    assert names == Counter(
        {
            ("user@example.com", "Notification Delivered"): 1,
            ("user1@example.com", "Channel Unsubscribed"): 1,
            ("user3@example.com", "Notification Failed"): 1,
            ("user3@example.com", "Channel Unsubscribed"): 1,
            ("user5@example.com", "Notification Failed"): 1,
            ("user4@example.com", "Channel Unsubscribed"): 1,
        }
    )
    entries = {(e["email"], e["event"]): e for e in callback_entries(redis_client)}
    delivered = entries[("user@example.com", "Notification Delivered")]
    assert delivered["properties"]["CT Source"] == "Generic email"
    assert delivered["provider"] == "gen" and delivered["campaign_id"] == "1730799638"
    assert entries[("user3@example.com", "Notification Failed")]["properties"]["Error"] == (
        "Hard bounce detected"
    )
    assert entries[("user1@example.com", "Channel Unsubscribed")]["properties"]["Type"] == (
        "User Unsubscribed"
    )
    suppressed = {e: suppressions.get(e, client=redis_client) for e in ("user1@example.com",
                  "user3@example.com", "user4@example.com", "user5@example.com",
                  "user@example.com")}  # fmt: skip
    assert {e for e, s in suppressed.items() if s} == {
        "user1@example.com",
        "user3@example.com",
        "user4@example.com",
    }
    entry = suppressed["user3@example.com"]
    assert entry is not None and entry["reason"] == "hard_bounce"
    assert entry["source"] == "callback:gen:hard_bounce" and entry["ts"] > 0


def test_more_than_1000_events_is_refused(api: httpx.Client, paths: dict[str, str]) -> None:
    events = [generic_event("delivered", f"u{i}@example.com", "m") for i in range(1001)]
    refused = {"status": "error", "message": "More than allowed events were sent",
               "error_code": 400}  # fmt: skip
    for nickname in ("gen", "web"):
        answer = post(api, paths[nickname], nested(*events))
        assert (answer.status_code, answer.json()) == (400, refused)
    assert post(api, paths["gen"], events).json() == refused  # a JSON array of flat events


def test_a_body_over_8_mb_is_refused_as_malformed_as_a_whole(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    """DESIGN §6: 400 for a request malformed as a whole, declared length or streamed."""
    events = [generic_event("delivered", "a@example.com", seed_flat()["meta"])]
    body = json.dumps(nested(*events)).encode()

    def padded(size: int) -> bytes:  # white space before the closing braces
        return body[:-2] + b" " * (size - len(body)) + body[-2:]

    big = padded(callbacks.MAX_BODY_BYTES + 1)
    refused = {
        "status": "error",
        "message": "invalid payload: body larger than 8388608 bytes",
        "error_code": 400,
    }
    declared = post(api, paths["gen"], big)
    streamed = api.post(paths["gen"], content=iter([big[:4096], big[4096:]]))
    at_limit = post(api, paths["gen"], padded(callbacks.MAX_BODY_BYTES))

    assert (declared.status_code, declared.json()) == (400, refused)
    assert "content-length" not in streamed.request.headers
    assert (streamed.status_code, streamed.json()) == (400, refused)
    assert (at_limit.status_code, at_limit.json()) == (200, SUCCESS)
    settle(redis_client)  # (the worker applies what was stored: only the one at the limit)
    applied = [e for e in callback_entries(redis_client) if e["event"] == "Notification Delivered"]
    assert [e["email"] for e in applied] == ["a@example.com"]


def test_one_bad_event_gives_partial_success_naming_its_index(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    metas = draft_campaign(redis_client, "c-partial", ["a@example.com", "b@example.com"])
    payload = {
        "version": "v2",
        "events": {
            "success": [generic_event("delivered", "a@example.com", metas[0])],
            "failed": [
                {"type": "hard_bounce", "meta": metas[1]},  # index 1: no email
                generic_event("hard_bounce", "b@example.com", metas[1]),
            ],
        },
    }
    smtp_answer = post(api, paths["gen"], payload)
    http_answer = post(api, paths["web"], payload)

    assert smtp_answer.status_code == 200
    assert smtp_answer.json() == {
        "status": "partial_success",
        "processed": 2,
        "failed": 1,
        "errors": [{"event_index": 1, "error": "Mandatory parameter missing: email"}],
    }
    assert http_answer.status_code == 200
    assert http_answer.json() == {
        "TOTAL_EVENTS": 3,
        "PROCESSED_EVENTS": 2,
        "UNPROCESSED_EVENTS": [{"index": 1, "error": "Mandatory parameter missing: email"}],
    }
    settle(redis_client)
    counters = campaign_reads.get_counters("c-partial", redis_client)
    assert (counters["delivered"], counters["hard_bounced"]) == (1, 1)


def test_event_level_errors_are_reported_by_index(api: httpx.Client, paths: dict[str, str]) -> None:
    good = generic_event("delivered", "a@example.com", seed_flat()["meta"].replace("user1", "a"))
    payload = [
        good,
        generic_event("bounced", "a@example.com", good["meta"]),
        generic_event("delivered", "a@example.com", "not|a|meta|"),
        generic_event("delivered", "not-an-address", good["meta"]),
    ]
    body = post(api, paths["gen"], payload).json()

    assert body["status"] == "partial_success" and body["processed"] == 1
    errors = {e["event_index"]: e["error"] for e in body["errors"]}
    assert set(errors) == {1, 2, 3}
    assert "Unknown type" in errors[1] and "invalid meta" in errors[2]
    assert "Invalid email format" in errors[3]


def test_a_request_with_no_usable_event_is_refused(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    flat = seed_flat()
    del flat["meta"]
    answer = post(api, paths["gen"], flat)

    assert answer.status_code == 400
    assert answer.json() == {"status": "error", "message": "Mandatory parameter missing: meta",
                             "error_code": 400}  # fmt: skip
    for body in (b"{not json", b"[1, 2", b'"text"', b'{"version": "v1", "type": "x"}'):
        answer = post(api, paths["gen"], body)
        assert answer.status_code == 400 and answer.json()["status"] == "error"
    assert redis_client.hlen(store.CALLBACK_INBOX_HASH) == 0


def test_legacy_gmail_form_is_accepted(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    payload = {"event": "hardbounce", "data": [{"e": "old@example.com", "ts": 1730714617}]}
    answer = post(api, paths["mail"], payload)

    assert (answer.status_code, answer.json()) == (200, SUCCESS)
    settle(redis_client)
    entry = suppressions.get("old@example.com", client=redis_client)
    assert entry is not None and entry["reason"] == "hard_bounce"
    assert {e["ts"] for e in callback_entries(redis_client)} == {1730714617.0}


# -- SES through SNS ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SIGNED_SES_SAMPLES))
def test_signed_ses_samples_are_accepted(
    api: httpx.Client, paths: dict[str, str], name: str
) -> None:
    envelope = sample(name)
    answer = post(api, paths["ses"], envelope, sns_headers(envelope))

    assert (answer.status_code, answer.json()) == (200, SUCCESS)


def test_signed_ses_samples_have_the_expected_effects(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    for name in SIGNED_SES_SAMPLES:
        envelope = sample(name)
        assert post(api, paths["ses"], envelope, sns_headers(envelope)).status_code == 200
    settle(redis_client)

    seen = Counter(
        (e["email"], e["properties"]["Callback Type"]) for e in callback_entries(redis_client)
    )
    expected = Counter(
        (email, kind) for email, kind in SIGNED_SES_SAMPLES.values() if email is not None
    )
    expected[("user1@example.com", "hard_bounce")] += 1  # Notification Failed + Unsubscribed
    assert seen == expected
    assert suppressions.get("user1@example.com", client=redis_client) is not None
    assert suppressions.get("user3@example.com", client=redis_client) is not None
    assert suppressions.get("user4@example.com", client=redis_client) is None  # transient
    assert suppressions.get("user2@example.com", client=redis_client) is None
    entries = callback_entries(redis_client)
    assert all(e["provider"] == "ses" and e["campaign_id"] == "1730714617" for e in entries)
    delivered = [e for e in entries if e["event"] == "Notification Delivered"]
    assert delivered[0]["properties"]["CT Source"] == "ses"
    click = next(e for e in entries if e["event"] == "Notification Clicked")
    assert click["properties"]["URL"].startswith("https://")


def test_a_subscribe_url_answer_is_confirmed_by_its_status_its_body_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the status of the confirmation's answer matters: its body (of any size, or
    cut short) is not read. The whole body was read before, without a size cap."""
    with HttpsServer(promised_length=10**12) as server:
        monkeypatch.setenv("SSL_CERT_FILE", server.ca_file)
        callbacks.confirm_subscription(f"https://{server.authority}/?Action=ConfirmSubscription")
    assert server.paths == ["/?Action=ConfirmSubscription"]


def test_sns_subscription_sample_is_confirmed_at_its_subscribe_url(
    api: httpx.Client, paths: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample's own SubscribeURL, on sns.us-east-1.amazonaws.com, reached offline.

    A local CONNECT proxy (``HTTPS_PROXY``) tunnels to a local HTTPS server whose
    certificate names that host and is trusted through ``SSL_CERT_FILE``.
    """
    envelope = sample("sns-subscription-confirmation.json")
    with (
        HttpsServer(hosts=["sns.us-east-1.amazonaws.com"]) as server,
        ConnectProxy(server.port) as proxy,
    ):
        monkeypatch.setenv("SSL_CERT_FILE", server.ca_file)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        answer = post(api, paths["ses"], envelope, sns_headers(envelope))

    assert (answer.status_code, answer.json()) == (200, SUCCESS)
    assert proxy.targets == ["sns.us-east-1.amazonaws.com:443"]
    assert len(server.paths) == 1
    assert server.paths[0] == envelope["SubscribeURL"].split("amazonaws.com", 1)[1]


def test_subscription_confirmation_gets_the_subscribe_url(
    api: httpx.Client,
    paths: dict[str, str],
    signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = sample("sns-subscription-confirmation.json")
    with HttpsServer() as server:
        monkeypatch.setenv("SSL_CERT_FILE", server.ca_file)  # trust the local server
        url = (f"https://{server.authority}/?Action=ConfirmSubscription&TopicArn={TOPIC}"
               f"&Token={base['Token']}")  # fmt: skip
        envelope = signer.sign(dict(base, SubscribeURL=url))
        answer = post(api, paths["ses"], envelope)

        assert (answer.status_code, answer.json()) == (200, SUCCESS)
        assert len(server.paths) == 1
        query = parse_qs(urlsplit(server.paths[0]).query)
        assert query["Action"] == ["ConfirmSubscription"] and query["Token"] == [base["Token"]]

        server.status = 500
        again = post(api, paths["ses"], envelope)
        assert again.status_code == 502 and "HTTP 500" in again.json()["message"]


def test_subscribe_url_off_the_sns_host_is_refused_without_a_fetch(
    api: httpx.Client, paths: dict[str, str], signer: Signer
) -> None:
    base = sample("sns-subscription-confirmation.json")
    for url in (
        f"https://sns.us-east-1.amazonaws.com.evil.example/?Action=ConfirmSubscription&TopicArn={TOPIC}",
        f"http://127.0.0.1:9/?Action=ConfirmSubscription&TopicArn={TOPIC}",
    ):
        answer = post(api, paths["ses"], signer.sign(dict(base, SubscribeURL=url)))
        assert answer.status_code == 400 and "SubscribeURL" in answer.json()["message"]


def _tampered_message() -> dict[str, Any]:
    envelope = sample("ses-sns-bounce-permanent.json")
    envelope["Message"] = envelope["Message"].replace("Permanent", "Permanenu", 1)
    return envelope


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: _tampered_message(), "does not verify"),
        (lambda e: dict(e, Timestamp=e["Timestamp"].replace("39.688", "39.689")),
         "does not verify"),
        (lambda e: dict(e, SigningCertURL=e["SigningCertURL"].replace(
            "amazonaws.com/", "amazonaws.com.evil.example/")), "not an SNS host"),
        (lambda e: dict(e, SigningCertURL=e["SigningCertURL"].replace(
            "sns.us-east-1.amazonaws.com", "s3.amazonaws.com")), "not an SNS host"),
        (lambda e: dict(e, SigningCertURL=e["SigningCertURL"].replace("https:", "http:")),
         "https URL"),
        (lambda e: dict(e, SignatureVersion="2"), "does not verify"),
        (lambda e: dict(e, SignatureVersion="3"), "not supported"),
    ],
)  # fmt: skip
def test_forged_or_altered_sns_posts_are_refused(
    api: httpx.Client,
    paths: dict[str, str],
    redis_client: redis.Redis,
    change: Any,
    message: str,
) -> None:
    envelope = change(sample("ses-sns-bounce-permanent.json"))
    answer = post(api, paths["ses"], envelope)

    assert answer.status_code == 400
    assert answer.json()["status"] == "error" and message in answer.json()["message"]
    assert redis_client.hlen(store.CALLBACK_INBOX_HASH) == 0


def test_topic_outside_the_allow_list_is_refused(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    envelope = sample("ses-sns-bounce-permanent.json")
    answer = post(api, paths["ses-other"], envelope)

    assert answer.status_code == 400 and "allow-list" in answer.json()["message"]
    assert redis_client.hlen(store.CALLBACK_INBOX_HASH) == 0


def test_raw_message_delivery_is_refused(api: httpx.Client, paths: dict[str, str]) -> None:
    raw = json.loads(sample("ses-sns-bounce-permanent.json")["Message"])
    answer = post(api, paths["ses"], raw)

    assert answer.status_code == 400 and "raw message delivery" in answer.json()["message"]


# -- SendGrid ------------------------------------------------------------------------------


def test_sendgrid_sample_is_accepted_with_expected_effects(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    answer = post(api, paths["sg"], sample("sendgrid-events.json"))

    assert (answer.status_code, answer.json()) == (200, SUCCESS)
    settle(redis_client)
    kinds = Counter(e["properties"]["Callback Type"] for e in callback_entries(redis_client))
    # delivered, bounce (hard: 2 events), blocked (soft), dropped, click, spamreport,
    # unsubscribe, group_unsubscribe; processed/deferred/open/group_resubscribe: ignored.
    assert kinds == Counter({"delivered": 1, "hard_bounce": 2, "soft_bounce": 1,
                             "unsubscribed": 3, "clicked": 1, "spam": 1})  # fmt: skip
    for email in ("user1@example.com", "user2@example.com", "user3@example.com",
                  "user5@example.com"):  # fmt: skip
        assert suppressions.get(email, client=redis_client) is not None, email
    assert suppressions.get("user4@example.com", client=redis_client) is None  # blocked: soft
    delivered = [
        e for e in callback_entries(redis_client) if e["event"] == "Notification Delivered"
    ]
    assert delivered[0]["properties"]["CT Source"] == "sendgrid"


def _vector() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "sendgrid-signed-webhook-vector.json").read_text())
    return data


def test_sendgrid_signed_vector_verifies_through_the_gateway(
    api: httpx.Client, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    vector = _vector()
    paths = save_providers(
        redis_client, sgs={"kind": "sendgrid", "webhook_public_key": vector["public_key"]}
    )
    # The vector was signed long ago: turn the timestamp window off for it.
    monkeypatch.setenv("DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS", "0")
    get_settings.cache_clear()
    try:
        body = vector["raw_body"].encode()
        headers = {k: v for k, v in vector["headers"].items()}
        ok = post(api, paths["sgs"], body, headers)
        tampered = post(api, paths["sgs"], body.replace(b"user2", b"user9", 1), headers)
        unsigned = post(api, paths["sgs"], body)
    finally:
        monkeypatch.delenv("DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS")
        get_settings.cache_clear()

    assert (ok.status_code, ok.json()) == (200, SUCCESS)
    assert tampered.status_code == 400 and "does not verify" in tampered.json()["message"]
    assert unsigned.status_code == 400 and "missing" in unsigned.json()["message"]


def test_sendgrid_signature_timestamp_window(api: httpx.Client, redis_client: redis.Redis) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    paths = save_providers(redis_client, sgs={"kind": "sendgrid", "webhook_public_key": public})
    body = json.dumps(sample("sendgrid-events.json")).encode()

    def signed(ts: int) -> dict[str, str]:
        signature = key.sign(str(ts).encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(ts),
        }

    fresh = post(api, paths["sgs"], body, signed(int(time.time())))
    stale = post(api, paths["sgs"], body, signed(int(time.time()) - 4 * 24 * 3600))

    assert (fresh.status_code, fresh.json()) == (200, SUCCESS)
    assert stale.status_code == 400 and "too far from now" in stale.json()["message"]


# -- text that cannot be encoded ---------------------------------------------------------
# JSON may escape a lone UTF-16 surrogate ("\ud800"); it decodes to a str that nothing can
# encode. Such an event is its index's error; its neighbours are applied.

LONE = "\ud800"


def _surrogate_events(field: str, metas: list[str]) -> list[dict[str, Any]]:
    """Three generic events; the second holds a lone surrogate in ``field``."""
    bad = generic_event("hard_bounce", "b@example.com", metas[1], description="Bounced")
    spoil = {"description": "Bounced", "email": "b@", "meta": "|default|"}[field]
    bad[field] = bad[field].replace(spoil, spoil[:-1] + LONE + spoil[-1])
    return [
        generic_event("delivered", "a@example.com", metas[0]),
        bad,
        generic_event("hard_bounce", "c@example.com", metas[2]),
    ]


@pytest.mark.parametrize("nickname", ["gen", "mail", "web"])
@pytest.mark.parametrize("field", ["description", "email", "meta"])
def test_a_generic_event_with_a_lone_surrogate_is_its_index_error(
    api: httpx.Client,
    paths: dict[str, str],
    redis_client: redis.Redis,
    worker: WorkerProcess,
    nickname: str,
    field: str,
) -> None:
    emails = ["a@example.com", "b@example.com", "c@example.com"]
    metas = draft_campaign(redis_client, "c-text", emails)
    answer = post(api, paths[nickname], nested(*_surrogate_events(field, metas)))

    error = f"Invalid text in {field}: it holds a lone UTF-16 surrogate"
    assert answer.status_code == 200
    if nickname == "web":
        assert answer.json() == {"TOTAL_EVENTS": 3, "PROCESSED_EVENTS": 2,
                                 "UNPROCESSED_EVENTS": [{"index": 1, "error": error}]}  # fmt: skip
    else:
        assert answer.json() == {"status": "partial_success", "processed": 2, "failed": 1,
                                 "errors": [{"event_index": 1, "error": error}]}  # fmt: skip
    settle(redis_client)
    counters = campaign_reads.get_counters("c-text", redis_client)
    assert (counters["delivered"], counters["hard_bounced"]) == (1, 1)
    assert suppressions.get("c@example.com", client=redis_client) is not None
    assert suppressions.get("b@example.com", client=redis_client) is None
    published = {e["email"] for e in callback_entries(redis_client)}
    assert published == {"a@example.com", "c@example.com"}


def test_lone_surrogates_in_legacy_items_and_as_utf8_bytes_are_index_errors(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    legacy = {"event": "hardbounce", "data": [{"e": f"x{LONE}@example.com"},
                                              {"e": "old@example.com"}]}  # fmt: skip
    legacy_answer = post(api, paths["mail"], legacy)
    # The surrogate encoded as bytes (ED A0 80) rather than escaped: json.loads lets it in.
    metas = draft_campaign(redis_client, "c-bytes", ["u@example.com", "v@example.com"])
    events = [generic_event("unsubscribed", e, m) for e, m in zip(["u@example.com",
              "v@example.com"], metas, strict=True)]  # fmt: skip
    raw = json.dumps(nested(*events)).encode().replace(b'"u@', b'"u\xed\xa0\x80@', 1)
    raw_answer = post(api, paths["gen"], raw)

    error = "Invalid text in email: it holds a lone UTF-16 surrogate"
    assert legacy_answer.status_code == raw_answer.status_code == 200
    assert legacy_answer.json()["errors"] == [{"event_index": 0, "error": error}]
    assert raw_answer.json()["errors"] == [{"event_index": 0, "error": error}]
    settle(redis_client)
    assert suppressions.get("old@example.com", client=redis_client) is not None
    assert suppressions.get("v@example.com", client=redis_client) is not None
    assert campaign_reads.get_counters("c-bytes", redis_client)["unsubscribed"] == 1


def test_a_sendgrid_event_with_a_lone_surrogate_is_its_index_error(
    api: httpx.Client, redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    key = Key()
    paths = save_providers(redis_client, sgs={"kind": "sendgrid", "webhook_public_key": key.public})
    events = [
        {"event": "bounce", "type": "bounce", "email": "a@example.com", "reason": f"550 {LONE}"},
        {"event": "bounce", "type": "bounce", "email": f"b{LONE}@example.com", "reason": "550"},
        {"event": "bounce", "type": "bounce", "email": "c@example.com", "reason": "550 gone"},
    ]
    body = json.dumps(events).encode()
    answer = post(api, paths["sgs"], body, key.headers(body, int(time.time())))

    assert answer.status_code == 200
    assert answer.json() == {
        "status": "partial_success",
        "processed": 1,
        "failed": 2,
        "errors": [
            {"event_index": 0,
             "error": "Invalid text in description: it holds a lone UTF-16 surrogate"},
            {"event_index": 1, "error": "Invalid text in email: it holds a lone UTF-16 surrogate"},
        ],
    }  # fmt: skip
    settle(redis_client)
    assert suppressions.get("c@example.com", client=redis_client) is not None
    assert suppressions.get("a@example.com", client=redis_client) is None


def test_an_ses_event_with_a_lone_surrogate_is_its_index_error(
    api: httpx.Client,
    paths: dict[str, str],
    signer: Signer,
    redis_client: redis.Redis,
    worker: WorkerProcess,
) -> None:
    """The SNS envelope is valid and signed; the SES JSON inside it escapes a surrogate."""
    message = ses_bounce(
        [
            {"emailAddress": "a@example.com", "diagnosticCode": f"smtp; 550 {LONE}"},
            {"emailAddress": "b@example.com", "diagnosticCode": "smtp; 550 gone"},
        ]
    )
    envelope = signer.sign(notification(message, message_id="m-text"))
    assert "\\ud800" in envelope["Message"]  # the inner JSON's escape, in plain ASCII
    answer = post(api, paths["ses"], envelope, sns_headers(envelope))

    error = "Invalid text in description: it holds a lone UTF-16 surrogate"
    assert answer.status_code == 200
    assert answer.json() == {"status": "partial_success", "processed": 1, "failed": 1,
                             "errors": [{"event_index": 0, "error": error}]}  # fmt: skip
    settle(redis_client)
    assert suppressions.get("b@example.com", client=redis_client) is not None
    assert suppressions.get("a@example.com", client=redis_client) is None


@pytest.mark.parametrize("key", ["Message", "MessageId", "Subject"])
def test_an_sns_envelope_with_a_lone_surrogate_is_refused(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, key: str
) -> None:
    """SNS signs UTF-8 text: an envelope value that cannot be encoded was not signed."""
    envelope = sample("ses-sns-bounce-permanent.json")
    envelope[key] = envelope.get(key, "Bounce") + LONE
    answer = post(api, paths["ses"], envelope)

    message = f"invalid payload: {key} holds a lone UTF-16 surrogate"
    assert answer.status_code == 400
    assert answer.json() == {"status": "error", "message": message, "error_code": 400}
    assert redis_client.hlen(store.CALLBACK_INBOX_HASH) == 0


def test_a_refusal_quoting_a_lone_surrogate_is_answered(
    api: httpx.Client, paths: dict[str, str], signer: Signer
) -> None:
    """A signed SES message of an unknown type with no recipients: 400 quoting the type."""
    message = {"notificationType": f"Bounce{LONE}", "mail": {"destination": "x"}}
    answer = post(api, paths["ses"], signer.sign(notification(message)))

    assert answer.status_code == 400
    assert answer.json()["message"] == (
        "invalid payload: SES Bounce\\ud800 message lists no recipients"
    )


# -- dedupe ------------------------------------------------------------------------------


def test_the_same_payload_twice_is_applied_once(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    emails = [f"r{i}@example.com" for i in range(6)]
    metas = draft_campaign(redis_client, "c-dup", emails)
    kinds = ["delivered", "hard_bounce", "soft_bounce", "spam", "unsubscribed", "clicked"]
    payload = nested(*(generic_event(k, e, m) for k, e, m in zip(kinds, emails, metas,
                                                                  strict=True)))  # fmt: skip
    ses = sample("ses-sns-bounce-permanent.json")
    sendgrid = sample("sendgrid-events.json")

    def post_all() -> None:
        assert post(api, paths["gen"], payload).json() == SUCCESS
        assert post(api, paths["ses"], ses).json() == SUCCESS
        assert post(api, paths["sg"], sendgrid).json() == SUCCESS

    post_all()
    settle(redis_client)
    counters = campaign_reads.get_counters("c-dup", redis_client)
    entries = stream(redis_client)
    suppressed = suppressions.page(client=redis_client)[1]

    post_all()  # one after the other ...
    threads = [threading.Thread(target=post_all) for _ in range(3)]  # ... and at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    settle(redis_client)

    assert {k: counters[k] for k in ("delivered", "hard_bounced", "soft_bounced", "spam",
            "unsubscribed", "clicked")} == dict.fromkeys(
        ("delivered", "hard_bounced", "soft_bounced", "spam", "unsubscribed", "clicked"), 1
    )  # fmt: skip
    assert campaign_reads.get_counters("c-dup", redis_client) == counters
    assert stream(redis_client) == entries
    assert suppressions.page(client=redis_client)[1] == suppressed
    assert len(entries) == 7 + 2 + 9  # generic 7, SES hard bounce 2, SendGrid 9


def test_a_message_is_counted_once_per_counter(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    """Two clicks at different times are two events, but one clicked message."""
    metas = draft_campaign(redis_client, "c-clicks", ["a@example.com"])
    clicks = [generic_event("clicked", "a@example.com", metas[0], timestamp=t) for t in (1, 2)]
    assert post(api, paths["gen"], nested(*clicks)).json() == SUCCESS
    settle(redis_client)

    assert len(callback_entries(redis_client)) == 2
    assert campaign_reads.get_counters("c-clicks", redis_client)["clicked"] == 1


# -- attribution ------------------------------------------------------------------------


def test_meta_of_another_recipient_applies_to_the_event_email(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    metas = draft_campaign(redis_client, "c-mix", ["meta@example.com"])
    event = generic_event("unsubscribed", "forwarded@example.com", metas[0])
    assert post(api, paths["gen"], nested(event)).json() == SUCCESS
    settle(redis_client)

    assert suppressions.get("forwarded@example.com", client=redis_client) is not None
    assert suppressions.get("meta@example.com", client=redis_client) is None
    (entry,) = callback_entries(redis_client)
    assert entry["email"] == "forwarded@example.com" and entry["campaign_id"] == "c-mix"
    assert entry["properties"]["Meta Email"] == "meta@example.com"
    assert entry["properties"]["Meta Email Mismatch"] is True
    # The meta's seq is meta@'s message, which nobody unsubscribed from.
    assert campaign_reads.get_counters("c-mix", redis_client)["unsubscribed"] == 0


def test_an_ses_bounce_carrying_another_recipients_meta_moves_no_counter(
    api: httpx.Client,
    paths: dict[str, str],
    signer: Signer,
    redis_client: redis.Redis,
    worker: WorkerProcess,
) -> None:
    metas = draft_campaign(redis_client, "c-other", ["a1@example.com", "a2@example.com"])

    def bounce(email: str, meta: str, message_id: str) -> int:
        headers = [{"name": "X-CleverTap_META", "value": meta}]
        envelope = signer.sign(notification(ses_bounce([email], headers=headers), message_id))
        return post(api, paths["ses"], envelope, sns_headers(envelope)).status_code

    assert bounce("A1@Example.COM", metas[1], "m-a1") == 200  # a2's meta on a1's bounce
    settle(redis_client)
    assert campaign_reads.get_counters("c-other", redis_client)["hard_bounced"] == 0
    assert suppressions.get("a1@example.com", client=redis_client) is not None
    assert suppressions.get("a2@example.com", client=redis_client) is None
    entries = callback_entries(redis_client)
    assert {e["email"] for e in entries} == {"A1@example.com"}
    assert all(e["properties"]["Meta Email Mismatch"] is True for e in entries)

    assert bounce("A2@Example.COM", metas[1], "m-a2") == 200  # its own meta, other case
    settle(redis_client)
    assert campaign_reads.get_counters("c-other", redis_client)["hard_bounced"] == 1
    own = [e for e in callback_entries(redis_client) if e["email"] == "A2@example.com"]
    assert len(own) == 2 and not any("Meta Email Mismatch" in e["properties"] for e in own)


def test_a_meta_naming_the_idna_spelling_of_the_event_email_counts(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    """Messages go out (and metas are built) with the domain in IDNA form; a provider
    may report it in Unicode: the same recipient, so the same message."""
    metas = draft_campaign(redis_client, "c-idna", ["kai@xn--bcher-kva.example"])
    event = generic_event("delivered", "Kai@Bücher.Example", metas[0])
    assert post(api, paths["gen"], nested(event)).json() == SUCCESS
    settle(redis_client)

    assert campaign_reads.get_counters("c-idna", redis_client)["delivered"] == 1
    (entry,) = callback_entries(redis_client)
    assert "Meta Email Mismatch" not in entry["properties"]


def test_metas_of_unknown_campaigns_or_messages_count_nowhere(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    metas = draft_campaign(redis_client, "c-one", ["a@example.com"])
    outside = metas[0].replace("|0|", "|7|")  # seq 7 of a campaign of one
    other = metas[0].replace("|c-one|", "|c-none|")
    events = [generic_event("delivered", "a@example.com", m) for m in (outside, other)]
    assert post(api, paths["gen"], nested(*events)).json() == SUCCESS
    settle(redis_client)

    assert campaign_reads.get_counters("c-one", redis_client)["delivered"] == 0
    assert not redis_client.exists(store.counters_key("c-none"))
    assert len(callback_entries(redis_client)) == 2  # still recorded


# -- suppression and the next campaign ----------------------------------------------------


def test_suppressed_recipients_are_skipped_by_the_next_campaign(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, worker: WorkerProcess
) -> None:
    emails = ["hard@example.com", "spam@example.com", "unsub@example.com",
              "soft@example.com", "fine@example.com"]  # fmt: skip
    metas = draft_campaign(redis_client, "c-first", emails)
    kinds = ["hard_bounce", "spam", "unsubscribed", "soft_bounce", "delivered"]
    payload = nested(*(generic_event(k, e, m) for k, e, m in zip(kinds, emails, metas,
                                                                  strict=True)))  # fmt: skip
    assert post(api, paths["gen"], payload).json() == SUCCESS
    settle(redis_client)
    assert {e for e in emails if suppressions.get(e, client=redis_client)} == set(emails[:3])

    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, nickname="next")
        request = CampaignRequest.model_validate(
            {"id": "c-next", "provider": "next", "subject": "s", "html": "h",
             "recipients": [{"email": e.upper()} for e in emails]}
        )  # fmt: skip
        campaigns.create_campaign(request, client=redis_client)
        wait_for(lambda: campaign_reads.get_status("c-next", redis_client).value == "completed")
        received = {rcpt.lower() for m in smtp.messages for rcpt in m.rcpt_tos}

    counters = campaign_reads.get_counters("c-next", redis_client)
    assert (counters["suppressed"], counters["sent"]) == (3, 2)
    assert received == {"soft@example.com", "fine@example.com"}


# -- durability ----------------------------------------------------------------------------


def test_a_stored_batch_whose_task_was_lost_is_recovered(
    redis_client: redis.Redis, paths: dict[str, str], worker: WorkerProcess
) -> None:
    metas = draft_campaign(redis_client, "c-lost", ["a@example.com"])
    answer = callbacks.ingest(
        "gen",
        paths["gen"].rsplit("/", 1)[1],
        json.dumps(nested(generic_event("delivered", "a@example.com", metas[0]))).encode(),
        {},
        client=redis_client,
        enqueue=lambda batch_id: None,  # the task is lost
    )
    assert answer.body == SUCCESS
    time.sleep(0.5)
    assert redis_client.hlen(store.CALLBACK_INBOX_HASH) == 1  # nobody applied it

    assert recover_callbacks(grace=0) == 1
    settle(redis_client)

    assert campaign_reads.get_counters("c-lost", redis_client)["delivered"] == 1


def test_recovery_leaves_fresh_batches_to_their_task(redis_client: redis.Redis) -> None:
    from dispatch import effects

    event = InboxEvent(type="delivered", provider_type="delivered", email="a@example.com",
                       dedupe="generic:sha256:x")  # type: ignore[arg-type]  # fmt: skip
    batch_id = callbacks.store_batch("gen", "smtp", [event.model_dump(mode="json")], redis_client)

    assert effects.lost_batches(60, redis_client) == []
    assert effects.lost_batches(0, redis_client) == [batch_id]
    assert effects.lost_batches(30, redis_client) == []  # handed out: not again at once
