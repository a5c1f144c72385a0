"""What a team that consumes dispatch's callback results (as it consumed django-anymail's
tracking events) reads, and what the README tells it: the real API over HTTP, a real
Redis, a real worker and SMTP server (review A9)."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis

from dispatch import effects, store
from tests.api_server import ApiServer
from tests.api_support import dispatch_client, smtp_body
from tests.callback_support import (
    callback_entries,
    callback_path,
    draft_campaign,
    generic_event,
    inbox_empty,
    metric,
    post,
    sample,
)
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SUCCESS = {"status": "success", "message": "Callback processed successfully"}
T0 = 1_795_000_000


def _prose(start: str, end: str) -> str:
    """The README's text from ``start`` to ``end``, its lines joined."""
    at = README.index(start)
    return " ".join(README[at : README.index(end, at)].split())


def _apply_all(r: redis.Redis) -> None:
    """Apply every stored callback batch, as ``dispatch.process_callback`` does."""
    for batch_id in r.zrange(store.CALLBACK_PENDING_ZSET, 0, -1):
        effects.apply_batch(batch_id, r)
    assert inbox_empty(r)


def test_meta_and_event_are_no_key_of_the_stream_and_its_order_is_not_ts(
    api: httpx.Client, redis_client: redis.Redis, paths: dict[str, str]
) -> None:
    """A consumer that deduplicated on ``meta`` + ``event`` (as the README said) lost a
    hard bounce's diagnostic after the soft bounce before it, and a second click; one that
    took the stream's order for the events' lost their order."""
    meta0, meta1 = draft_campaign(redis_client, "a9-stream", ["ann@example.com", "bob@example.com"])
    posted = [  # one request each, as a provider's separate posts
        generic_event("delivered", "bob@example.com", meta1, timestamp=T0 + 60),
        generic_event("soft_bounce", "ann@example.com", meta0, description="452 4.2.2 full",
                      timestamp=T0),
        generic_event("hard_bounce", "ann@example.com", meta0, description="550 5.1.1 unknown",
                      timestamp=T0 + 30),
        generic_event("clicked", "bob@example.com", meta1, url="https://x.example/a"),
        generic_event("clicked", "bob@example.com", meta1, url="https://x.example/b"),
    ]  # fmt: skip
    for event in posted:
        answer = post(api, paths["gen"], {"version": "v2", **event})
        assert (answer.status_code, answer.json()) == (200, SUCCESS)
        _apply_all(redis_client)

    entries = callback_entries(redis_client)
    failed = [e["properties"]["Error"] for e in entries
              if (e["meta"], e["event"]) == (meta0, "Notification Failed")]  # fmt: skip
    clicked = [e["properties"]["URL"] for e in entries
               if (e["meta"], e["event"]) == (meta1, "Notification Clicked")]  # fmt: skip
    assert failed == ["452 4.2.2 full", "550 5.1.1 unknown"]
    assert clicked == ["https://x.example/a", "https://x.example/b"]
    stamps = [e["ts"] for e in entries[:2]]  # the delivery (posted first), the soft bounce
    assert stamps == [T0 + 60, T0]  # applied order, not ts order

    reading = _prose("**Reading `dispatch:events`**", "```python")
    assert "`meta` + `event` is no key" in reading
    assert "idempotently by that id" in reading
    assert "order one message's entries by `ts`" in reading


def test_a_callback_leaves_the_message_sent_and_its_news_where_the_readme_says(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """After a hard bounce the message is still ``sent`` and not among ``?status=failed``
    (the send's outcome); the campaign's counter and the suppression entry (with the
    campaign, meta and diagnostic) hold the bounce. Events outside DESIGN §6's mapping
    leave a count of ``other`` and nothing else."""
    r = redis_client
    with (
        SmtpTestServer() as smtp,
        dispatch_client(api_server) as client,
        api_server.client() as raw,
    ):
        client.put_provider("a9-smtp", smtp_body(smtp.port))
        client.create_campaign({"id": "a9-sent", "provider": "a9-smtp", "subject": "s",
                                "html": "<p>h</p>",
                                "recipients": [{"email": "ann@example.com"},
                                               {"email": "bob@example.com"}]})  # fmt: skip
        assert client.wait("a9-sent", timeout=60, interval=0.2).sent == 2
        ann = client.messages("a9-sent", email="ann@example.com").items[0]
        bounce = generic_event("hard_bounce", ann.email, ann.meta, description="550 5.1.1 unknown")
        answer = post(raw, callback_path(r, "a9-smtp"), {"version": "v2", **bounce})
        assert (answer.status_code, answer.json()) == (200, SUCCESS)
        wait_for(lambda: inbox_empty(r), timeout=60)

        assert [m.status.value for m in client.iter_messages("a9-sent")] == ["sent", "sent"]
        assert list(client.iter_messages("a9-sent", status="failed")) == []
        assert client.get_campaign("a9-sent").hard_bounced == 1
        entry = client.get_suppression("ann@example.com")
        assert entry is not None
        kept = entry.model_dump()
        assert (kept["campaign_id"], kept["meta"], kept["detail"]) == (
            "a9-sent", ann.meta, "550 5.1.1 unknown")  # fmt: skip

        # SendGrid's processed, deferred, open and group_resubscribe: counted, nothing more.
        client.put_provider("a9-sg", {**smtp_body(smtp.port), "kind": "sendgrid"})
        before = len(callback_entries(r))
        ignored = ("processed", "deferred", "open", "group_resubscribe")
        others = [e for e in sample("sendgrid-events.json") if e["event"] in ignored]
        assert len(others) == 4
        answer = post(raw, callback_path(r, "a9-sg"), others)
        assert (answer.status_code, answer.json()) == (200, SUCCESS)
        assert metric(raw, "dispatch_callback_events_total", provider="a9-sg", type="other") == 4
        assert inbox_empty(r) and len(callback_entries(r)) == before

    callbacks = _prose("## Callbacks, events, suppression", "**One address, any spelling.**")
    assert 'counted in `dispatch_callback_events_total{type="other"}`, nothing more' in callbacks
    assert "a message that hard-bounced stays `sent`" in callbacks
    assert "`?status=failed` lists send failures only" in callbacks
    assert "`detail`, `campaign_id` and `meta`" in callbacks
