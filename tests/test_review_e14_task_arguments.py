"""``dispatch.enqueue_campaign`` sent with another count of arguments than its one body
(review E14): a foreign team's ``kwargs={"campaign": ...}``, two arguments, none. Celery
answered with Python's ``TypeError`` (``takes 2 positional arguments but 3 were
given`` for the two arguments the caller sent: its count includes the bound task) and
the worker logged a traceback at ERROR. It is refused like any other body: the caller's
``.get()`` raises the refusal naming the field and what it sent, the worker warns."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery

from dispatch import tasks
from dispatch.redis_server import RedisServer
from tests.helpers import smtp_provider
from tests.worker import WorkerProcess

TASK = "dispatch.enqueue_campaign"
BODY: dict[str, Any] = {
    "provider": "local",
    "subject": "Hello",
    "text": "Hi",
    "recipients": [{"email": "a@example.com"}],
    "draft": True,
}


@pytest.mark.parametrize(
    ("args", "kwargs", "sent"),
    [
        ((BODY, BODY), {}, "2 positional arguments"),
        ((), {}, "no argument"),
        ((), {"campaign": BODY}, "keyword argument 'campaign'"),
        ((BODY,), {"body": BODY}, "1 positional argument and keyword argument 'body'"),
    ],
    ids=["two", "none", "other-keyword", "both"],
)
def test_another_count_of_arguments_is_refused_naming_what_was_sent(
    redis_client: redis.Redis, args: tuple[Any, ...], kwargs: dict[str, Any], sent: str
) -> None:
    result = tasks.enqueue_campaign.apply(args=args, kwargs=kwargs)
    assert result.state == "FAILURE"
    refusal = result.result
    assert type(refusal).__name__ == "CampaignError", refusal
    assert str(refusal).startswith("body: dispatch.enqueue_campaign takes one argument")
    assert str(refusal).endswith(f"it was sent {sent}")
    assert refusal.field == "body"
    assert not list(redis_client.scan_iter("dispatch:campaign:*"))


def test_a_foreign_app_is_told_which_argument_it_got_wrong(
    redis_client: redis.Redis, redis_server: RedisServer, celery_worker: WorkerProcess
) -> None:
    smtp_provider(redis_client, 2525)
    billing = Celery("billing", broker=redis_server.url, backend=redis_server.url)  # README's
    wrong = billing.send_task(TASK, kwargs={"campaign": {**BODY, "id": "e14-kw"}})
    with pytest.raises(Exception, match=r"^body: .*sent keyword argument 'campaign'$") as refused:
        wrong.get(timeout=60)
    assert type(refused.value).__name__ == "CampaignError"  # not Python's TypeError
    assert not redis_client.exists("dispatch:campaign:e14-kw")
    # The body as a keyword named ``body`` (the parameter's name) is still taken.
    named = billing.send_task(TASK, kwargs={"body": {**BODY, "id": "e14-body"}})
    assert named.get(timeout=60) == "e14-body"
    billing.close()
