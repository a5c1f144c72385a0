"""A test email's answer through ``DispatchClient``: read for the API's whole deadline."""

from __future__ import annotations

import time

import redis

from dispatch.client import DispatchClient
from tests.api_server import ApiServer
from tests.api_support import API_TOKEN, smtp_body
from tests.smtp_server import SmtpTestServer


def test_a_test_email_answered_after_the_clients_read_timeout_still_arrives(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    # The server answers the message's end after 2.5 s; the client reads for 1 s a step.
    # The API may take up to its 60 s deadline, so the client waits for the test's answer
    # (it gave up before: "the request may have arrived, its answer did not").
    with SmtpTestServer() as smtp:
        smtp.handler.data_reply = lambda envelope: time.sleep(2.5)  # type: ignore[func-returns-value]
        with DispatchClient(api_server.url, API_TOKEN, timeout=1.0) as api:
            api.put_provider("slow", smtp_body(smtp.port))
            result = api.test_provider("slow", "ops@example.com")
            assert (result.ok, result.error) == (True, None)
            assert [m.rcpt_tos for m in smtp.handler.messages] == [["ops@example.com"]]
            assert api._http.timeout.read == 1.0  # other requests keep the client's own
