"""Review G9: what anyone on the internet can reach, attacked over HTTP (real uvicorn)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
import redis

from providers.callbacks.sendgrid import SIGNATURE_HEADER
from tests.api_server import ApiServer
from tests.callback_support import SAMPLE_CERT_NAME, TOPIC, save_providers
from tests.test_callbacks_sendgrid import Key

# A body the caller announces but never sends: an answer proves the body was not needed.
ANNOUNCED_BYTES = 32 * 1024 * 1024
NO_ANSWER_SECONDS = 20


def _answer_without_body(
    server: ApiServer, method: str, path: str, announced: int = ANNOUNCED_BYTES
) -> bytes:
    """The status line and headers answered to a request whose body is announced (JSON,
    ``announced`` bytes) but not sent; raises TimeoutError when the server waits for it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=NO_ANSWER_SECONDS) as s:
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {announced}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/campaigns"),
        ("PUT", "/v1/providers/g9"),
        ("POST", "/v1/providers/g9/test"),
        ("PUT", "/v1/suppressions/g9@example.com"),
        ("PUT", "/v1/preferences/g9@example.com"),
        ("POST", "/v1/campaigns/g9/test"),
        ("POST", "/v1/campaigns/g9/recipients"),
    ],
)
def test_a_request_without_the_api_token_is_refused_before_its_body_is_read(
    api_server: ApiServer, method: str, path: str
) -> None:
    # FastAPI reads and parses a JSON body before it solves the route's dependencies, the
    # token check among them: anyone could make the API take up to 64 MB and parse it
    # (measured: a 60 MB array from a caller with no token took the API from 82 to 450 MB
    # of memory and 2 s of CPU before its 401). The token is checked first now.
    answer = _answer_without_body(api_server, method, path)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"www-authenticate: bearer" in answer.lower()


def test_a_sendgrid_signature_header_of_non_ascii_bytes_is_a_400(
    api_server: ApiServer, api: httpx.Client, redis_client: redis.Redis
) -> None:
    # Starlette reads header bytes as Latin-1: base64.b64decode raised ValueError (not
    # binascii.Error) for the non-ASCII text, and the callback was answered 500 with a
    # traceback in the log, so the sender retried it as the service's fault.
    key = Key()
    paths = save_providers(redis_client, sg={"kind": "sendgrid", "webhook_public_key": key.public})
    body = b'[{"event": "delivered", "email": "g9@example.com"}]'
    headers = {
        **key.headers(body, int(time.time())),
        SIGNATURE_HEADER: "\xff\xfe".encode("latin-1"),
    }
    answer = api.post(paths["sg"], content=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"] == f"invalid payload: {SIGNATURE_HEADER} is not base64"


def test_an_sns_signature_of_non_ascii_text_is_a_400(
    api_server: ApiServer, api: httpx.Client, redis_client: redis.Redis
) -> None:
    # The same for an SNS envelope's Signature (any JSON string): 500 before.
    paths = save_providers(redis_client)
    envelope = {
        "Type": "Notification",
        "MessageId": "g9-1",
        "TopicArn": TOPIC,
        "Message": "{}",
        "Timestamp": "2024-01-01T00:00:00.000Z",
        "SignatureVersion": "1",
        "Signature": "é",
        "SigningCertURL": f"https://sns.us-east-1.amazonaws.com/{SAMPLE_CERT_NAME}",
    }
    answer = api.post(paths["ses"], content=json.dumps(envelope).encode())
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"] == "invalid payload: Signature is not base64"


def test_a_callback_with_a_wrong_token_is_refused_before_its_body_is_read(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A callback's body (up to 8 MB) was read whole before the URL's token was checked:
    anyone could make the API hold it for each request they kept open. The token is
    checked first now; a right one still reads the body (it waits for it)."""
    paths = save_providers(redis_client)
    wrong = paths["gen"].rsplit("/", 1)[0] + "/not-the-token"
    for path in (wrong, "/v1/callbacks/nobody/whatever"):
        answer = _answer_without_body(api_server, "POST", path, announced=4 * 1024 * 1024)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    connection = socket.create_connection(("127.0.0.1", api_server.port), timeout=2)
    with pytest.raises(TimeoutError), connection as s:
        s.sendall(
            f"POST {paths['gen']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n".encode()
        )
        s.recv(4096)
