"""Review O3: a signed SNS notification older than SNS's retry window is refused.

SNS retries an HTTP/S delivery for at most an hour; redeliveries are recognised for the
dedupe TTL (72 h). A captured, validly signed notification replayed later than that was
applied again (a hard bounce suppressing again an address removed from the list on
purpose). The reference's samples keep their 2024 timestamps: the clock is injected.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from dispatch import store, suppressions
from dispatch.effects import apply_batch
from dispatch.settings import get_settings
from providers.callbacks import (
    CallbackRejected,
    DirectoryCertificateSource,
    SnsVerifier,
    parse_ses_callback,
)
from tests.callback_support import DATA, SAMPLE_CERT_NAME, TOPIC, post, sample
from tests.test_callbacks_ses import OWN_CERT_URL, Signer, notification, ses_bounce

BOUNCE = "ses-sns-bounce-permanent.json"


SNS_HEADERS = {
    "Content-Type": "text/plain; charset=UTF-8",
    "x-amz-sns-message-type": "Notification",
}


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture
def cert_dir(tmp_path: Path, signer: Signer) -> Path:
    shutil.copy(DATA / "sns-test-signing-cert.pem", tmp_path / SAMPLE_CERT_NAME)
    (tmp_path / Path(urlsplit(OWN_CERT_URL).path).name).write_bytes(signer.pem)
    return tmp_path


@pytest.fixture
def default_bound(cert_dir: Path) -> Iterator[None]:
    """The gateway's settings as deployed: the default age bound, the test certificates."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DISPATCH_SNS_MAX_AGE_SECONDS", raising=False)
        mp.setenv("DISPATCH_SNS_CERT_DIR", str(cert_dir))
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


def apply_inbox(r: redis.Redis) -> None:
    """Apply what the inbox still holds (a session's worker may have applied it first)."""
    for batch_id in r.hkeys(store.CALLBACK_INBOX_HASH):
        apply_batch(batch_id, r)


def suppressed(r: redis.Redis, email: str) -> bool:
    return suppressions.get(email, client=r) is not None


def signed_at(signer: Signer, when: datetime, email: str) -> dict[str, str]:
    envelope = notification(ses_bounce([email]), message_id=email)
    envelope["Timestamp"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return signer.sign(envelope)


def sample_time(name: str) -> datetime:
    return datetime.fromisoformat(sample(name)["Timestamp"])


def parse_at(cert_dir: Path, now: datetime, body: bytes) -> int:
    verifier = SnsVerifier(DirectoryCertificateSource(cert_dir))
    result = parse_ses_callback(
        body, verifier=verifier, topic_arns=[TOPIC], max_age=timedelta(hours=2), now=now
    )
    return len(result.events)


def test_a_notification_within_the_window_is_parsed(cert_dir: Path) -> None:
    body = json.dumps(sample(BOUNCE)).encode()
    now = sample_time(BOUNCE) + timedelta(hours=1, minutes=59)

    assert parse_at(cert_dir, now, body) == 1


def test_a_notification_past_the_window_is_refused_naming_its_age(cert_dir: Path) -> None:
    body = json.dumps(sample(BOUNCE)).encode()
    now = sample_time(BOUNCE) + timedelta(hours=2, minutes=1)

    with pytest.raises(CallbackRejected) as refused:
        parse_at(cert_dir, now, body)

    assert refused.value.status == 400
    assert "too old" in refused.value.message
    assert sample(BOUNCE)["Timestamp"] in refused.value.message


def test_an_unreadable_signed_timestamp_is_refused(cert_dir: Path, signer: Signer) -> None:
    envelope = notification(ses_bounce(["a@example.com"]))
    envelope["Timestamp"] = "yesterday"
    body = json.dumps(signer.sign(envelope)).encode()

    with pytest.raises(CallbackRejected) as refused:
        parse_at(cert_dir, datetime.now(UTC), body)

    assert "Timestamp 'yesterday' is not an ISO 8601 time" in refused.value.message


@pytest.mark.usefixtures("default_bound")
def test_the_gateway_refuses_a_replayed_sample_and_keeps_nothing(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    envelope = sample(BOUNCE)

    answer = post(api, paths["ses"], envelope, SNS_HEADERS)

    assert answer.status_code == 400
    assert answer.json()["status"] == "error"
    assert "SNS message too old" in answer.json()["message"]
    apply_inbox(redis_client)
    assert not suppressed(redis_client, "user1@example.com")  # the sample's hard bounce


@pytest.mark.usefixtures("default_bound")
def test_the_gateway_takes_a_retry_within_the_hour_and_refuses_a_late_one(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis, signer: Signer
) -> None:
    now = datetime.now(UTC)
    retried = signed_at(signer, now - timedelta(minutes=55), "retried@example.com")
    late = signed_at(signer, now - timedelta(hours=3), "late@example.com")

    first = post(api, paths["ses"], retried, SNS_HEADERS)
    second = post(api, paths["ses"], late, SNS_HEADERS)

    assert first.status_code == 200
    assert second.status_code == 400
    assert "SNS message too old" in second.json()["message"]
    apply_inbox(redis_client)
    assert suppressed(redis_client, "retried@example.com")
    assert not suppressed(redis_client, "late@example.com")
