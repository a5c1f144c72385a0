"""SES notifications through SNS: envelope checks, signatures, certificates, SES payloads.

The reference samples are signed by a throwaway key whose certificate is
``sns-test-signing-cert.pem``; new payloads are signed here with a key made per test run.
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.header import Header
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from providers.callbacks import (
    CallbackEvent,
    CallbackRejected,
    CallbackResult,
    CertificateUnavailable,
    ChainedCertificateSource,
    DirectoryCertificateSource,
    EventType,
    HttpsCertificateSource,
    SnsVerifier,
    parse_ses_callback,
    parse_ses_message,
)
from providers.callbacks.sns import certificate_file_name, parse_envelope

DATA = Path(__file__).parent / "data" / "callbacks"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-campaign-events"
META = "user1@example.com|1568798080|1730714617|20241104|0|wzrk_default|-17005904|"
OWN_CERT_URL = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
SIGNED_SAMPLES = [
    "sns-subscription-confirmation.json",
    "sns-unsubscribe-confirmation.json",
    "ses-sns-subscription-succeeded.json",
    "ses-sns-bounce-permanent.json",
    "ses-sns-bounce-transient.json",
    "ses-sns-complaint.json",
    "ses-sns-delivery.json",
    "ses-sns-click.json",
    "ses-sns-delivery-delay.json",
]


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def dumps(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode()


class FixedSource:
    """Serves one PEM for every URL and records what was asked."""

    def __init__(self, pem: bytes) -> None:
        self.pem = pem
        self.calls: list[str] = []

    def load(self, url: str) -> bytes:
        self.calls.append(url)
        return self.pem


class Signer:
    """A test RSA key with a self-signed certificate, signing SNS envelopes."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com (TEST)")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, envelope: dict[str, Any], version: str = "1") -> dict[str, Any]:
        signed = dict(envelope, SignatureVersion=version, SigningCertURL=OWN_CERT_URL)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(canonical(signed), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode()
        return signed


def canonical(envelope: dict[str, Any]) -> bytes:
    """Reference §1.3, written again here so the module is checked against it."""
    if envelope["Type"] == "Notification":
        keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        keys = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{k}\n{envelope[k]}\n" for k in keys if k in envelope).encode()


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture
def sample_verifier(tmp_path: Path) -> SnsVerifier:
    # The samples' certificate, filed under the file name of their SigningCertURL.
    name = certificate_file_name(sample("ses-sns-delivery.json")["SigningCertURL"])
    assert name == "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
    shutil.copy(DATA / "sns-test-signing-cert.pem", tmp_path / name)
    return SnsVerifier(DirectoryCertificateSource(tmp_path))


@pytest.fixture
def own_source(signer: Signer) -> FixedSource:
    return FixedSource(signer.pem)


def mail(destination: list[str], headers: list[dict[str, str]] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "timestamp": "2024-11-04T10:03:37.412Z",
        "source": "offers@mail.shop.example.com",
        "messageId": "0100019276a1b2c3-5f1e2d3c-000000",
        "destination": destination,
        "headersTruncated": False,
        "headers": [{"name": "X-CleverTap_META", "value": META}] if headers is None else headers,
    }
    return found


def notification(message: dict[str, Any] | str, message_id: str = "m-1") -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2024-11-04T10:03:40.000Z",
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe",
    }


def parse_signed(signer: Signer, source: FixedSource, envelope: dict[str, Any]) -> CallbackResult:
    verifier = SnsVerifier(source)
    return parse_ses_callback(dumps(signer.sign(envelope)), verifier=verifier, topic_arns=[TOPIC])


def rejected(verifier: SnsVerifier, body: bytes, **kwargs: Any) -> CallbackRejected:
    with pytest.raises(CallbackRejected) as info:
        parse_ses_callback(body, verifier=verifier, topic_arns=[TOPIC], **kwargs)
    return info.value


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- the signed reference samples -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "provider_type", "email", "description", "when"),
    [
        (
            "ses-sns-bounce-permanent.json",
            EventType.HARD_BOUNCE,
            "Bounce",
            "user1@example.com",
            "Permanent/General: smtp; 550 5.1.1 <user1@example.com>: Recipient address rejected",
            "2024-11-04T10:03:39.103Z",
        ),
        (
            "ses-sns-bounce-transient.json",
            EventType.SOFT_BOUNCE,
            "Bounce",
            "user4@example.com",
            "Transient/MailboxFull: smtp; 552 5.2.2 The email account",
            "2024-11-04T22:05:11.000Z",
        ),
        (
            "ses-sns-complaint.json",
            EventType.SPAM,
            "Complaint",
            "user3@example.com",
            "Complaint: abuse",
            "2024-11-05T07:41:29.000Z",
        ),
        (
            "ses-sns-delivery.json",
            EventType.DELIVERED,
            "Delivery",
            "user2@example.com",
            "250 2.0.0 OK  1730714619",
            "2024-11-04T10:03:38.930Z",
        ),
        (
            "ses-sns-click.json",
            EventType.CLICKED,
            "Click",
            "user5@example.com",
            "https://shop.example.com/nov-picks?utm_source=email&utm_campaign=1568798080",
            "2024-11-04T18:22:05.331Z",
        ),
        (
            "ses-sns-delivery-delay.json",
            EventType.OTHER,
            "DeliveryDelay",
            "user6@example.com",
            "TransientCommunicationFailure: smtp; 421 4.4.1 Unable to connect",
            "2024-11-04T10:33:41.220Z",
        ),
    ],
)
def test_signed_samples_yield_expected_events(
    sample_verifier: SnsVerifier,
    name: str,
    kind: EventType,
    provider_type: str,
    email: str,
    description: str,
    when: str,
) -> None:
    envelope = sample(name)

    result = parse_ses_callback(dumps(envelope), verifier=sample_verifier, topic_arns=[TOPIC])

    assert result.total == 1 and result.failed == 0 and not result.ignored
    event = result.events[0]
    assert (event.type, event.provider_type, event.email) == (kind, provider_type, email)
    assert event.description.startswith(description)
    assert event.timestamp == ts(when)
    # Every sample carries X-CleverTap_META with the recipient as its first field.
    assert event.meta_fields is not None and event.meta_fields.email == email
    assert event.campaign_id == "1730714617" and event.notes == ()
    ses = json.loads(envelope["Message"])
    assert event.raw == ses and event.provider_message_id == ses["mail"]["messageId"]
    assert event.provider_event_id == f"{envelope['MessageId']}/0" and event.id_is_stable
    assert event.dedupe_key() == f"ses:id:{envelope['MessageId']}/0"
    if kind is EventType.CLICKED:
        assert event.url == description


def test_subscription_confirmation_sample_asks_for_a_get_of_subscribe_url(
    sample_verifier: SnsVerifier,
) -> None:
    envelope = sample("sns-subscription-confirmation.json")

    result = parse_ses_callback(dumps(envelope), verifier=sample_verifier, topic_arns=[TOPIC])

    assert result.subscribe_url == envelope["SubscribeURL"]
    assert result.items == () and "SubscriptionConfirmation" in result.ignored


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("sns-unsubscribe-confirmation.json", "UnsubscribeConfirmation"),
        ("ses-sns-subscription-succeeded.json", "AmazonSnsSubscriptionSucceeded"),
    ],
)
def test_confirmation_and_setup_messages_are_ignored(
    sample_verifier: SnsVerifier, name: str, why: str
) -> None:
    result = parse_ses_callback(dumps(sample(name)), verifier=sample_verifier, topic_arns=[TOPIC])

    assert result.items == () and result.subscribe_url == "" and why in result.ignored


@pytest.mark.parametrize("name", SIGNED_SAMPLES)
def test_string_to_sign_matches_the_reference(name: str) -> None:
    expected = json.loads((DATA / "sns-canonical-strings.json").read_text())["canonical"][name]

    envelope = parse_envelope(dumps(sample(name)))

    assert envelope.string_to_sign() == expected.encode()
    assert canonical(sample(name)) == expected.encode()


@pytest.mark.parametrize("name", SIGNED_SAMPLES)
@pytest.mark.parametrize("key", ["Message", "MessageId", "Timestamp"])
def test_one_changed_byte_fails(sample_verifier: SnsVerifier, name: str, key: str) -> None:
    envelope = sample(name)
    value = envelope[key]
    middle = len(value) // 2
    envelope[key] = value[:middle] + ("X" if value[middle] != "X" else "Y") + value[middle + 1 :]

    error = rejected(sample_verifier, dumps(envelope))

    assert error.status == 400 and "signature does not verify" in error.message


def test_one_changed_signature_byte_fails(sample_verifier: SnsVerifier) -> None:
    envelope = sample("ses-sns-bounce-permanent.json")
    signature = bytearray(base64.b64decode(envelope["Signature"]))
    signature[10] ^= 0x01
    envelope["Signature"] = base64.b64encode(bytes(signature)).decode()

    assert "does not verify" in rejected(sample_verifier, dumps(envelope)).message


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
        "https://s3.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns-bucket.s3.amazonaws.com/SimpleNotificationService-1.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.txt",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem?x=.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/SimpleNotificationService-1.pem",
        "https://evil.example@sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com:443/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com\\@evil.example/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com\n/SimpleNotificationService-1.pem",
        "https://evilsns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com.cn.evil.example/SimpleNotificationService-1.pem",
        "https://sns.amazonaws.com/SimpleNotificationService-1.pem",
        "//sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
    ],
)
def test_certificate_urls_off_the_sns_host_are_refused_before_any_fetch(url: str) -> None:
    source = FixedSource((DATA / "sns-test-signing-cert.pem").read_bytes())
    envelope = sample("ses-sns-bounce-permanent.json")
    envelope["SigningCertURL"] = url  # not signed: only the URL checks can refuse it

    error = rejected(SnsVerifier(source), dumps(envelope))

    assert error.status == 400 and "SigningCertURL" in error.message
    assert source.calls == []


@pytest.mark.parametrize(
    "host",
    [
        "sns.us-gov-west-1.amazonaws.com",
        "sns.cn-north-1.amazonaws.com.cn",
        "SNS.EU-WEST-1.amazonaws.com",
    ],
)
def test_regional_govcloud_and_china_hosts_are_sns_hosts(host: str) -> None:
    verifier = SnsVerifier(FixedSource(b""))

    parts = verifier.check_url(
        f"https://{host}/SimpleNotificationService-1.pem", "x", certificate=True
    )

    assert parts.hostname == host.lower()


def test_host_pattern_is_configurable(signer: Signer, own_source: FixedSource) -> None:
    envelope = signer.sign(notification(ses_bounce(["a@example.com"])))
    envelope["SigningCertURL"] = "https://certs.example.test/SimpleNotificationService-1.pem"
    envelope = dict(envelope)  # the cert URL is not signed

    default = rejected(SnsVerifier(own_source), dumps(envelope))
    custom = SnsVerifier(own_source, host_pattern=r"^certs\.example\.test$")
    result = parse_ses_callback(dumps(envelope), verifier=custom, topic_arns=[TOPIC])

    assert "not an SNS host" in default.message
    assert [e.email for e in result.events] == ["a@example.com"]


def test_host_pattern_is_matched_with_the_port() -> None:
    """A pattern naming a port admits it (local test servers); the default admits none."""
    local = SnsVerifier(FixedSource(b""), host_pattern=r"^127\.0\.0\.1:[0-9]+$")

    assert local.check_url("https://127.0.0.1:8443/c.pem", "u", certificate=True).port == 8443
    for url in (
        "https://127.0.0.1/c.pem",
        "https://127.0.0.2:8443/c.pem",
        "https://x@127.0.0.1:8443/c.pem",
        "http://127.0.0.1:8443/c.pem",
        "https://127.0.0.1:08443/c.pem",
    ):
        with pytest.raises(CallbackRejected):
            local.check_url(url, "u", certificate=True)
    with pytest.raises(CallbackRejected, match="must not carry a port"):
        SnsVerifier(FixedSource(b"")).check_url("https://sns.us-east-1.amazonaws.com:443/c", "u")


def test_topic_outside_the_allow_list_is_refused(sample_verifier: SnsVerifier) -> None:
    body = dumps(sample("ses-sns-delivery.json"))

    for topics in ([], ["arn:aws:sns:us-east-1:123456789012:other-topic"]):
        with pytest.raises(CallbackRejected, match="not on the provider's allow-list") as info:
            parse_ses_callback(body, verifier=sample_verifier, topic_arns=topics)
        assert info.value.status == 400


def test_signature_version_3_is_refused(sample_verifier: SnsVerifier) -> None:
    envelope = sample("ses-sns-delivery.json")
    envelope["SignatureVersion"] = "3"

    error = rejected(sample_verifier, dumps(envelope))

    assert error.status == 400 and "SignatureVersion '3' is not supported" in error.message


@pytest.mark.parametrize(
    ("name", "presented"),
    [("ses-sns-delivery.json", "2"), ("ses-sns-click.json", "1")],
    ids=["v1-as-v2", "v2-as-v1"],
)
def test_signature_presented_as_the_other_version_fails(
    sample_verifier: SnsVerifier, name: str, presented: str
) -> None:
    envelope = sample(name)
    assert envelope["SignatureVersion"] != presented
    envelope["SignatureVersion"] = presented

    assert "does not verify" in rejected(sample_verifier, dumps(envelope)).message


# --- payloads signed here ------------------------------------------------------------------


def ses_bounce(
    recipients: list[Any], bounce_type: str = "Permanent", **mail_fields: Any
) -> dict[str, Any]:
    addresses = [r["emailAddress"] if isinstance(r, dict) else r for r in recipients]
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                r if isinstance(r, dict) else {"emailAddress": r, "status": "5.1.1"}
                for r in recipients
            ],
            "timestamp": "2024-11-04T10:03:39.103Z",
        },
        "mail": {**mail([a for a in addresses if isinstance(a, str)]), **mail_fields},
    }


@pytest.mark.parametrize("version", ["1", "2"])
def test_own_signed_notification_verifies_in_both_versions(
    signer: Signer, own_source: FixedSource, version: str
) -> None:
    envelope = signer.sign(notification(ses_bounce(["user1@example.com"])), version)

    result = parse_ses_callback(
        dumps(envelope), verifier=SnsVerifier(own_source), topic_arns=[TOPIC]
    )

    assert [(e.type, e.email, e.meta) for e in result.events] == [
        (EventType.HARD_BOUNCE, "user1@example.com", META)
    ]
    assert own_source.calls == [OWN_CERT_URL]


def test_subject_is_signed_when_present(signer: Signer, own_source: FixedSource) -> None:
    verifier = SnsVerifier(own_source)
    with_subject = signer.sign({**notification(ses_bounce(["a@example.com"])), "Subject": "Bounce"})
    without_subject = signer.sign(notification(ses_bounce(["a@example.com"])))

    assert parse_ses_callback(dumps(with_subject), verifier=verifier, topic_arns=[TOPIC]).total == 1
    removed = {k: v for k, v in with_subject.items() if k != "Subject"}
    added = {**without_subject, "Subject": "Bounce"}
    for envelope in (removed, added):
        assert "does not verify" in rejected(verifier, dumps(envelope)).message


def test_inner_json_reserialised_fails(signer: Signer, own_source: FixedSource) -> None:
    envelope = signer.sign(notification(ses_bounce(["a@example.com"])))
    envelope["Message"] = json.dumps(json.loads(envelope["Message"]), indent=1)

    assert "does not verify" in rejected(SnsVerifier(own_source), dumps(envelope)).message


def test_tampered_and_resigned_by_another_key_fails(
    signer: Signer, own_source: FixedSource
) -> None:
    forged = Signer().sign(notification(ses_bounce(["victim@example.com"])))

    assert "does not verify" in rejected(SnsVerifier(own_source), dumps(forged)).message


def test_missing_required_keys_are_named(signer: Signer, own_source: FixedSource) -> None:
    verifier = SnsVerifier(own_source)
    envelope = signer.sign(notification(ses_bounce(["a@example.com"])))
    confirmation = sample("sns-subscription-confirmation.json")

    for key in ("Signature", "MessageId", "SigningCertURL", "Type"):
        body = dumps({k: v for k, v in envelope.items() if k != key})
        assert rejected(verifier, body).message == f"Mandatory parameter missing: {key}"
    no_token = dumps({k: v for k, v in confirmation.items() if k != "Token"})
    assert rejected(verifier, no_token).message == "Mandatory parameter missing: Token"
    assert own_source.calls == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (json.dumps({"Type": "Gossip"}).encode(), "unknown SNS Type"),
        (json.dumps({"Type": ["Notification"]}).encode(), "unknown SNS Type"),
    ],
)
def test_malformed_envelopes_are_refused(body: bytes, message: str) -> None:
    error = rejected(SnsVerifier(FixedSource(b"")), body)

    assert error.status == 400 and message in error.message


def test_non_string_values_are_refused(signer: Signer, own_source: FixedSource) -> None:
    envelope = {**signer.sign(notification(ses_bounce(["a@example.com"]))), "Timestamp": 17}

    assert (
        "Timestamp must be a string" in rejected(SnsVerifier(own_source), dumps(envelope)).message
    )


def test_headers_are_cross_checked_with_the_body(sample_verifier: SnsVerifier) -> None:
    envelope = sample("ses-sns-delivery.json")
    body = dumps(envelope)
    good = {"X-Amz-Sns-Message-Type": "Notification", "x-amz-sns-message-id": envelope["MessageId"]}

    ok = parse_ses_callback(body, verifier=sample_verifier, topic_arns=[TOPIC], headers=good)
    wrong_type = rejected(
        sample_verifier, body, headers={"x-amz-sns-message-type": "SubscriptionConfirmation"}
    )
    wrong_id = rejected(sample_verifier, body, headers={"x-amz-sns-message-id": "other"})

    assert ok.total == 1
    assert "x-amz-sns-message-type does not match body Type" in wrong_type.message
    assert "x-amz-sns-message-id does not match body MessageId" in wrong_id.message


def test_raw_message_delivery_is_refused(sample_verifier: SnsVerifier) -> None:
    bare = sample("ses-sns-delivery.json")["Message"].encode()

    by_body = rejected(sample_verifier, bare)
    by_header = rejected(
        sample_verifier,
        dumps(sample("ses-sns-delivery.json")),
        headers={"x-amz-sns-rawdelivery": "true"},
    )

    for error in (by_body, by_header):
        assert error.status == 400 and "raw message delivery is not supported" in error.message


def test_subscribe_url_must_be_an_sns_confirm_url(signer: Signer, own_source: FixedSource) -> None:
    confirmation = {k: v for k, v in sample("sns-subscription-confirmation.json").items()}
    good_url = confirmation["SubscribeURL"]
    verifier = SnsVerifier(own_source)

    result = parse_ses_callback(
        dumps(signer.sign(confirmation)), verifier=verifier, topic_arns=[TOPIC]
    )
    assert result.subscribe_url == good_url
    for url, message in [
        (
            good_url.replace(
                "sns.us-east-1.amazonaws.com", "sns.us-east-1.amazonaws.com.evil.example"
            ),
            "not an SNS host",
        ),
        (good_url.replace("https://", "http://"), "https URL"),
        (good_url.replace("ConfirmSubscription", "Unsubscribe"), "not a ConfirmSubscription"),
        (
            good_url.replace("TopicArn=arn:aws:sns:us-east-1", "TopicArn=arn:aws:sns:eu-west-1"),
            "another topic",
        ),
    ]:
        envelope = signer.sign({**confirmation, "SubscribeURL": url})
        assert message in rejected(verifier, dumps(envelope)).message


# --- certificate sources -------------------------------------------------------------------


def test_certificates_are_cached_by_url(signer: Signer, own_source: FixedSource) -> None:
    verifier = SnsVerifier(own_source)

    for message_id in ("m-1", "m-2", "m-3"):
        envelope = signer.sign(notification(ses_bounce(["a@example.com"]), message_id))
        parse_ses_callback(dumps(envelope), verifier=verifier, topic_arns=[TOPIC])

    assert own_source.calls == [OWN_CERT_URL]


def test_certificate_missing_from_the_folder_is_a_503(tmp_path: Path) -> None:
    verifier = SnsVerifier(DirectoryCertificateSource(tmp_path))

    error = rejected(verifier, dumps(sample("ses-sns-delivery.json")))

    assert error.status == 503 and "not in" in error.message


def test_unreadable_certificate_is_a_503_and_not_cached(tmp_path: Path) -> None:
    name = certificate_file_name(sample("ses-sns-delivery.json")["SigningCertURL"])
    (tmp_path / name).write_text(
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"
    )
    verifier = SnsVerifier(DirectoryCertificateSource(tmp_path))
    body = dumps(sample("ses-sns-delivery.json"))

    assert rejected(verifier, body).status == 503
    shutil.copy(DATA / "sns-test-signing-cert.pem", tmp_path / name)
    assert parse_ses_callback(body, verifier=verifier, topic_arns=[TOPIC]).total == 1


class _CertHandler(http.server.BaseHTTPRequestHandler):
    pem = b""

    def do_GET(self) -> None:
        if self.path == "/cert.pem":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(self.pem)
        elif self.path == "/moved.pem":
            self.send_response(302)
            self.send_header("Location", "/cert.pem")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def cert_server(signer: Signer) -> Iterator[str]:
    _CertHandler.pem = signer.pem
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CertHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_https_source_fetches_and_refuses_redirects_and_404(
    cert_server: str, signer: Signer
) -> None:
    # HttpsCertificateSource trusts its caller (SnsVerifier) to have checked the URL, so a
    # local plain-HTTP server can stand in for the SNS host here.
    source = HttpsCertificateSource(timeout=5)

    assert source.load(f"{cert_server}/cert.pem") == signer.pem
    with pytest.raises(CertificateUnavailable) as missing:
        source.load(f"{cert_server}/missing.pem")
    with pytest.raises(CertificateUnavailable) as moved:
        source.load(f"{cert_server}/moved.pem")

    assert missing.value.permanent
    assert not moved.value.permanent and "302" in str(moved.value)


def test_unreachable_https_source_is_not_permanent() -> None:
    with pytest.raises(CertificateUnavailable) as info:
        HttpsCertificateSource(timeout=2).load("http://127.0.0.1:9/cert.pem")

    assert not info.value.permanent


def test_chained_source_tries_the_folder_first_then_the_next(
    tmp_path: Path, signer: Signer
) -> None:
    fallback = FixedSource(signer.pem)
    (tmp_path / "SimpleNotificationService-local.pem").write_bytes(b"local")
    source = ChainedCertificateSource(DirectoryCertificateSource(tmp_path), fallback)

    assert (
        source.load("https://sns.x.amazonaws.com/SimpleNotificationService-local.pem") == b"local"
    )
    assert source.load(OWN_CERT_URL) == signer.pem
    assert fallback.calls == [OWN_CERT_URL]


# --- SES payloads --------------------------------------------------------------------------


def events_of(message: dict[str, Any] | str, message_id: str = "m-1") -> CallbackResult:
    text = message if isinstance(message, str) else json.dumps(message)
    return parse_ses_message(text, message_id=message_id, sns_timestamp="2024-11-04T10:03:40Z")


def test_one_event_per_recipient_with_stable_ids() -> None:
    message = ses_bounce(["user1@Example.COM", "user2@example.com"])

    first = events_of(message)
    again = events_of(message)

    assert [(e.email, e.provider_event_id) for e in first.events] == [
        ("user1@example.com", "m-1/0"),
        ("user2@example.com", "m-1/1"),
    ]
    assert [e.dedupe_key() for e in first.events] == [e.dedupe_key() for e in again.events]
    assert first.events[0].dedupe_key() != first.events[1].dedupe_key()
    # One META header for two recipients: the second recipient's event notes the mismatch.
    assert first.events[0].notes == ()
    assert "differs from event email" in first.events[1].notes[0]


@pytest.mark.parametrize(
    ("bounce_type", "kind"),
    [
        ("Permanent", EventType.HARD_BOUNCE),
        ("Transient", EventType.SOFT_BOUNCE),
        ("Undetermined", EventType.SOFT_BOUNCE),
        ("SomethingNew", EventType.SOFT_BOUNCE),
    ],
)
def test_bounce_type_decides_hard_or_soft(bounce_type: str, kind: EventType) -> None:
    assert events_of(ses_bounce(["a@example.com"], bounce_type)).events[0].type is kind


def only(result: CallbackResult) -> CallbackEvent:
    assert result.total == 1 and result.failed == 0, result.errors
    return result.events[0]


def test_truncated_or_absent_headers_give_an_event_without_meta() -> None:
    truncated = only(events_of(ses_bounce(["user1@example.com"], headersTruncated=True)))
    message = ses_bounce(["user1@example.com"])
    del message["mail"]["headers"]
    absent = only(events_of(message))
    other_headers = only(
        events_of(ses_bounce(["user1@example.com"], headers=[{"name": "Subject", "value": "x"}]))
    )

    for event in (truncated, absent, other_headers):
        assert event.type is EventType.HARD_BOUNCE and event.email == "user1@example.com"
        assert event.meta == "" and event.meta_fields is None and event.campaign_id == ""
    assert "truncated" in truncated.notes[0]
    assert "not included" in absent.notes[0]
    assert "no X-CleverTap_META header" in other_headers.notes[0]


def test_meta_header_name_is_case_insensitive_and_the_first_wins() -> None:
    second = META.replace("1730714617", "9999")
    headers = [
        {"name": "Subject", "value": "x"},
        {"name": "x-clevertap_meta", "value": META},
        {"name": "X-CleverTap_META", "value": second},
    ]

    event = only(events_of(ses_bounce(["user1@example.com"], headers=headers)))

    assert event.meta == META and event.campaign_id == "1730714617"


def test_rfc2047_encoded_meta_is_decoded() -> None:
    long_meta = "some.very.long.address+tracking@subdomain.example.com|1568798080|1|20241104|0|c|7|"
    encoded = Header(long_meta, "utf-8").encode()
    assert encoded.startswith("=?utf-8?")

    event = only(
        events_of(
            ses_bounce(
                ["some.very.long.address+tracking@subdomain.example.com"],
                headers=[{"name": "X-CleverTap_META", "value": encoded}],
            )
        )
    )

    assert event.meta == long_meta and event.meta_fields is not None


def test_unparseable_meta_keeps_the_event_with_a_note() -> None:
    headers = [{"name": "X-CleverTap_META", "value": "garbage"}]

    event = only(events_of(ses_bounce(["user1@example.com"], headers=headers)))

    assert event.type is EventType.HARD_BOUNCE and event.meta == "garbage"
    assert event.meta_fields is None and event.notes[0].startswith("invalid meta")


def test_bad_recipient_is_an_index_error_and_neighbours_parse() -> None:
    message = ses_bounce(["a@example.com", {"emailAddress": "b@example.com"}])
    message["bounce"]["bouncedRecipients"].insert(1, {"status": "5.1.1"})
    message["bounce"]["bouncedRecipients"].append("not-an-object")

    result = events_of(message)

    assert [(i.index, i.event.email if i.event else i.error) for i in result.items] == [
        (0, "a@example.com"),
        (1, "Invalid email format"),
        (2, "b@example.com"),
        (3, "recipient 3 is not an object"),
    ]


def test_event_types_without_recipient_lists_cover_every_destination() -> None:
    opened = {
        "eventType": "Open",
        "notificationType": "Bounce",  # eventType is read first
        "mail": mail(["a@example.com", "b@example.com"]),
        "open": {"timestamp": "2024-11-04T11:00:00Z", "ipAddress": "198.51.100.1"},
    }
    send = {"eventType": "Send", "mail": mail(["a@example.com"]), "send": {}}
    reject = {
        "eventType": "Reject",
        "mail": mail(["a@example.com"]),
        "reject": {"reason": "Bad content"},
    }

    result = events_of(opened)

    assert [(e.type, e.provider_type, e.email) for e in result.events] == [
        (EventType.OTHER, "Open", "a@example.com"),
        (EventType.OTHER, "Open", "b@example.com"),
    ]
    assert result.events[0].timestamp == datetime(2024, 11, 4, 11, tzinfo=UTC)
    assert only(events_of(send)).type is EventType.OTHER
    assert only(events_of(send)).timestamp == datetime(2024, 11, 4, 10, 3, 40, tzinfo=UTC)
    assert only(events_of(reject)).description == "Bad content"


def test_validation_text_and_non_ses_messages() -> None:
    validated = events_of("Successfully validated SNS topic for Amazon SES event publishing.")
    assert validated.items == () and "validation" in validated.ignored

    for message, text in [
        ("hello", "not SES JSON"),
        ("[1]", "not SES JSON"),
        (json.dumps({"notificationType": "Bounce"}), "Mandatory parameter missing"),
        (
            json.dumps({"notificationType": "Bounce", "mail": mail(["a@example.com"])}),
            "lists no recipients",
        ),
    ]:
        with pytest.raises(CallbackRejected, match=text):
            events_of(message)


def test_complaint_without_feedback_type_and_delivery_to_several() -> None:
    complaint = {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": "user1@example.com"}],
            "complaintSubType": None,
        },
        "mail": mail(["user1@example.com"]),
    }
    delivery = {
        "notificationType": "Delivery",
        "delivery": {
            "recipients": ["user1@example.com", "x@example.com"],
            "smtpResponse": "250 ok",
        },
        "mail": mail(["user1@example.com", "x@example.com"]),
    }

    spam = only(events_of(complaint))
    delivered = events_of(delivery)

    assert (spam.type, spam.description) == (EventType.SPAM, "Complaint")
    assert spam.timestamp == datetime(2024, 11, 4, 10, 3, 40, tzinfo=UTC)  # SNS time fallback
    assert [(e.type, e.email, e.description) for e in delivered.events] == [
        (EventType.DELIVERED, "user1@example.com", "250 ok"),
        (EventType.DELIVERED, "x@example.com", "250 ok"),
    ]


def test_a_meta_with_encoded_word_text_of_its_own_is_kept_as_it_is() -> None:
    """Decoded only when it does not parse as it is: a category whose text looks like an
    encoded word was decoded (and mangled) before."""
    meta = "user1@example.com|1568798080|1|20241104|0|=?utf-8?q?x?=|7|"
    headers = [{"name": "X-CleverTap_META", "value": meta}]

    event = only(events_of(ses_bounce(["user1@example.com"], headers=headers)))

    assert event.meta == meta and event.meta_fields is not None
    assert event.meta_fields.category == "=?utf-8?q?x?="
