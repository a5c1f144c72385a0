"""``dispatch.enqueue_campaign`` whose Redis connection breaks while it stores the list
(review H24): Redis restarted or failed over with 300,000 recipients half stored. The
task failed with ``ConnectionError`` and was acknowledged, never run again: a draft kept
131,000 of its 300,000 recipients (started later, the rest never got it), a campaign
went on ``running`` with the reason "creation interrupted: post the same request again",
waiting for a repeat that a caller firing and forgetting never sends. It runs again, as
the other tasks do on a broken connection, and stores the rest, each recipient once.

Celery's eager mode runs the retry at once, with the same task id and body, as the
broker would hand it out again (a real worker was checked by hand: Redis's clients
killed for 12 s while it stored 300,000)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from dispatch import batch_enqueue, campaign_reads, store, tasks
from dispatch.recipient_append import RecipientAppender
from tests.helpers import recipients, smtp_provider


@pytest.fixture
def redis_breaks_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The second chunk stored meets a broken connection, once; the chunks stored."""
    add = RecipientAppender.add
    calls: list[int] = []

    def breaking(self: RecipientAppender, chunk: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(chunk))
        if len(calls) == 2:
            raise redis.ConnectionError("Connection closed by server.")
        return add(self, chunk, *args, **kwargs)

    monkeypatch.setattr(RecipientAppender, "add", breaking)
    yield calls


@pytest.mark.parametrize("later", [{"draft": True}, {"send_at": "2099-01-01T00:00:00+05:30"}])
def test_a_list_half_stored_when_redis_broke_is_stored_whole(
    redis_client: redis.Redis, redis_breaks_once: list[int], later: dict[str, Any]
) -> None:
    smtp_provider(redis_client, 2525, nickname="h24")
    body = {"provider": "h24", "subject": "Hi", "text": "Hi", "recipients": recipients(2500)}
    result = tasks.enqueue_campaign.apply(args=[{**body, **later}], task_id="h24-task")
    assert result.get() == "h24-task"
    assert len(redis_breaks_once) > 3  # broken at the second chunk, then all again
    assert campaign_reads.get_counters("h24-task", redis_client)["total"] == 2500
    expected = "draft" if "draft" in later else "scheduled"
    assert campaign_reads.get_status("h24-task", redis_client).value == expected


def test_a_campaign_half_stored_when_redis_broke_sends_to_its_whole_list(
    redis_client: redis.Redis, redis_breaks_once: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started at once: its batches are handed out as its list is stored (recorded here,
    not sent: no worker runs them), every one of them once the rest is stored."""
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "500")
    enqueued: set[int] = set()

    @contextmanager
    def recorded(_: object = None) -> Iterator[batch_enqueue.EnqueueBatch]:
        yield lambda campaign_id, batch: enqueued.add(batch)

    monkeypatch.setattr(batch_enqueue, "batch_enqueuer", recorded)
    smtp_provider(redis_client, 2525, nickname="h24")
    body = {"provider": "h24", "subject": "Hi", "text": "Hi", "recipients": recipients(2500)}
    result = tasks.enqueue_campaign.apply(args=[body], task_id="h24-now")
    assert result.get() == "h24-now"
    assert campaign_reads.get_counters("h24-now", redis_client)["total"] == 2500
    campaign = redis_client.hgetall(store.campaign_key("h24-now"))
    assert campaign["status"] == "running"
    assert "appending" not in campaign  # not waiting for a repeat of the request
    assert campaign["reason"] == ""
    assert enqueued == set(range(5))
