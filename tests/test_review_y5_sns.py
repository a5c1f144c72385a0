"""Review Y5, fetching SNS signing certificates (providers/callbacks/sns.py) on 127.0.0.1.

An answer http.client refuses (a status line that is no HTTP, a chunked body cut short,
more than 100 header lines) escaped ``HttpsCertificateSource.load`` as
``http.client.HTTPException``, not :class:`CertificateUnavailable`: the callback was
answered 500 "server error" with a stack trace in the log instead of 503 naming the
certificate. A cut connection is an ordinary network failure: it is now unavailable for
the moment (503, SNS sends again), with the server's text on one bounded line.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from providers.callbacks.sns import CertificateUnavailable, HttpsCertificateSource

HEADERS_101 = b"".join(b"X-%d: a\r\n" % i for i in range(101))


@pytest.fixture
def answering() -> Iterator[Callable[[bytes], str]]:
    """Start a one-shot server that reads the request and answers these raw bytes."""
    servers: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(reply: bytes) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        threads.append(thread)
        return f"http://127.0.0.1:{server.getsockname()[1]}/SimpleNotificationService-x.pem"

    yield start
    for thread in threads:
        thread.join(timeout=5)
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    ("reply", "named"),
    [
        (b"SSH-2.0-OpenSSH_9.6 " + b"x" * 5000 + b"\r\n\r\n", "BadStatusLine: SSH-2.0"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n-----BEGIN",
            "IncompleteRead",
        ),
        (b"HTTP/1.1 200 OK\r\n" + HEADERS_101 + b"\r\n", "more than 100 headers"),
    ],
    ids=["no-http", "cut-chunked-body", "101-headers"],
)
def test_an_answer_http_client_refuses_is_a_certificate_unavailable_for_now(
    answering: Callable[[bytes], str], reply: bytes, named: str
) -> None:
    # HttpsCertificateSource trusts its caller (SnsVerifier) to have checked the URL, so a
    # local plain-HTTP server stands in for the SNS host (as in test_callbacks_ses).
    url = answering(reply)
    with pytest.raises(CertificateUnavailable) as info:
        HttpsCertificateSource(timeout=5).load(url)
    message = str(info.value)
    assert not info.value.permanent
    assert named in message and url in message
    assert "\n" not in message and len(message) < len(url) + 300
