"""Review D24, Generic HTTP provider: answers of real ESP servers that say nothing about
the message, through a campaign (real Redis, a real HTTP server on 127.0.0.1).

* a redirect (301, 302, 307, 308) is the endpoint's (``http://`` moved to ``https://``, an
  API moved, a proxy's login page): every message of the campaign failed with it, each
  recipient given a "Notification Failed" for a request none was sent in, and the failure
  breaker only acts while nothing was sent, so a redirect half-way failed the rest of the
  list. The campaign now pauses naming the ``Location``, the rest queued, as for a 403;
* 408 (request timeout: the server did not get the whole request, RFC 9110 §15.5.9; also
  what some servers send unasked on a keep-alive connection they close) failed its
  messages for good though the provider never had them: they are now retried;
* a 504 (or Cloudflare's 524) is a gateway's read timeout after it passed the request on:
  it was retried, a batch the ESP may have taken sent again to all its recipients; it now
  leaves them ``unknown``, as our own read timeout does (DESIGN §5: never sent twice).
"""

from __future__ import annotations

import pytest
import redis

from dispatch import campaign_reads, message_pages
from tests.helpers import http_provider, run_inline
from tests.http_sink import HttpSink, Reply
from tests.test_http_campaigns import FAST, _body, paused_half_way


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_half_way_pauses_the_campaign_with_the_rest_queued(
    redis_client: redis.Redis, status: int
) -> None:
    moved = (("Location", "https://api.esp.example/v3/send"),)
    reason = paused_half_way(redis_client, Reply(status, b"", headers=moved))
    assert reason == (
        f"Dispatch failed: the endpoint redirects: HTTP {status}: redirects are not "
        "followed (Location: https://api.esp.example/v3/send); set the endpoint to "
        "where it points"
    )


def test_a_408_is_retried_not_failed(redis_client: redis.Redis) -> None:
    with HttpSink() as sink:
        sink.script(Reply(408, b"request timed out", headers=(("Connection", "close"),)))
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(3), FAST)
        requests = sink.requests
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 3, 0)
    first, second = ({m["to"] for m in r.json()["msgs"]} for r in requests)
    assert first == second and len(first) == 3  # the whole batch again, once


@pytest.mark.parametrize("status", [504, 524])
def test_a_gateway_timeout_leaves_the_batch_unknown_never_sent_twice(
    redis_client: redis.Redis, status: int
) -> None:
    """A proxy in front of the ESP passed the batch on and got no answer in time (nginx,
    AWS API Gateway's 29 s, Cloudflare's 524): the ESP may have taken it, as after a read
    timeout of our own. It was retried, the whole batch sent again to every recipient."""
    with HttpSink() as sink:
        sink.script(Reply(status, b"<html>Gateway Time-out</html>"))
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, _body(3), FAST)
        assert len(sink.requests) == 1
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["sent"], summary["failed"], summary["unknown"]) == (0, 0, 3)
    page, _ = message_pages.messages_page(cid, client=redis_client, status="unknown")
    assert len(page) == 3 and all("the provider may have taken it" in m["detail"] for m in page)
