"""A ``dispatch.enqueue_campaign`` refusal tells whose id it judged, and the worker's
warning names the campaign (review H24's leftovers).

A body without an ``id`` takes the task's; a caller's own ``task_id`` such as
``invoice/123`` was refused as ``id: String should match pattern ...``, an id the caller
never sent. And the warning carried the task id and field but not the campaign's id,
the one its sender searches the logs by."""

from __future__ import annotations

import logging

import pytest
import redis

from dispatch import campaign_reads, tasks
from tests.helpers import recipients, smtp_provider

BODY = {"provider": "refusal-ids", "subject": "Hi", "text": "Hi"}


def test_a_task_id_that_is_no_campaign_id_is_refused_saying_it_was_the_tasks(
    redis_client: redis.Redis,
) -> None:
    smtp_provider(redis_client, 2525, nickname="refusal-ids")
    result = tasks.enqueue_campaign.apply(
        args=[{**BODY, "recipients": recipients(2)}], task_id="invoice/123"
    )
    with pytest.raises(Exception) as refused:
        result.get()
    text = str(refused.value)
    assert text.startswith("id: the body has none, so the task id 'invoice/123' was taken")
    assert "give an `id` in the body" in text
    # The same body with an id of its own is taken under that id.
    ok = tasks.enqueue_campaign.apply(
        args=[{**BODY, "id": "invoice-123", "draft": True, "recipients": recipients(2)}],
        task_id="invoice/123",
    )
    assert ok.get() == "invoice-123"
    assert campaign_reads.get_counters("invoice-123", redis_client)["total"] == 2


@pytest.mark.parametrize(
    ("body", "task_id", "campaign_id"),
    [
        ({**BODY, "id": "spring-sale", "subject": ""}, "t-1", "spring-sale"),
        ({**BODY, "subject": ""}, "t-2", "t-2"),
    ],
)
def test_the_refusal_warning_names_the_campaign(
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    body: dict[str, object],
    task_id: str,
    campaign_id: str,
) -> None:
    smtp_provider(redis_client, 2525, nickname="refusal-ids")
    with caplog.at_level(logging.WARNING, logger="dispatch.tasks"):
        result = tasks.enqueue_campaign.apply(kwargs={"body": body}, task_id=task_id)
    with pytest.raises(Exception, match=r"^subject: "):
        result.get()
    [warning] = [r for r in caplog.records if r.getMessage().startswith("campaign refused")]
    assert warning.__dict__["campaign_id"] == campaign_id
    assert warning.__dict__["task_id"] == task_id
