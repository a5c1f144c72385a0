"""``dispatch.enqueue_campaign`` as another service calls it (DESIGN §5): a Celery app of
its own that knows only the broker URL, sending the task by name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from dispatch import campaign_reads, campaigns
from dispatch.redis_server import RedisServer
from tests.helpers import recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for

TASK = "dispatch.enqueue_campaign"


@pytest.fixture
def other_service(redis_server: RedisServer) -> Iterator[Celery]:
    """Another service's Celery app: the broker URL (and, to read answers, as backend)."""
    app = Celery("other-service", broker=redis_server.url, backend=redis_server.url)
    yield app
    app.close()


def _body(campaign_id: str | None, n: int, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "provider": "local",
        "subject": "Hello {{ name }}",
        "html": "<p>Hi {{ name }}</p>",
        "recipients": recipients(n),
        **fields,
    }
    if campaign_id is not None:
        body["id"] = campaign_id
    return body


def _completed(campaign_id: str, r: redis.Redis) -> bool:
    try:
        return campaign_reads.get_status(campaign_id, r).value == "completed"
    except campaigns.CampaignNotFoundError:
        return False


def test_a_task_sent_by_name_from_another_app_runs_and_answers(
    redis_client: redis.Redis, celery_worker: WorkerProcess, other_service: Celery
) -> None:
    """Sent without a queue, the task lands in Celery's default queue (``celery``): the
    worker takes it from there. The caller reads the id, or the refusal naming the field;
    the same id with the same content answers the id again, with other content a
    conflict."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        sent = other_service.send_task(TASK, args=[_body("from-other", 30)])
        assert sent.get(timeout=60) == "from-other"
        wait_for(lambda: _completed("from-other", redis_client), timeout=60)
        assert Counter(m.rcpt_tos[0] for m in smtp.messages) == Counter(
            r["email"] for r in recipients(30)
        )

        again = other_service.send_task(TASK, args=[_body("from-other", 30)])
        assert again.get(timeout=60) == "from-other"
        other = other_service.send_task(TASK, args=[_body("from-other", 30, subject="Other")])
        with pytest.raises(Exception, match="exists with other content"):
            other.get(timeout=60)
        bad = other_service.send_task(TASK, args=[_body("bad-one", 1, send_at="tomorrow")])
        with pytest.raises(Exception, match=r"^send_at: "):
            bad.get(timeout=60)
        not_json_object = other_service.send_task(TASK, args=["a string"])
        with pytest.raises(Exception, match=r"^body: "):
            not_json_object.get(timeout=60)
        assert not redis_client.exists("dispatch:campaign:bad-one")
        assert len(smtp.messages) == 30  # nothing sent twice


def test_a_task_run_again_is_the_same_campaign_even_without_an_id(
    redis_client: redis.Redis, celery_worker: WorkerProcess, other_service: Celery
) -> None:
    """A body without ``id`` takes the task's id: a task delivered twice (a worker died
    before acknowledging it) sends its recipients once, and the caller follows the
    campaign by the id ``send_task`` gave it."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        first = other_service.send_task(TASK, args=[_body(None, 20)], task_id="task-once")
        assert first.get(timeout=60) == "task-once"
        wait_for(lambda: _completed("task-once", redis_client), timeout=60)
        redelivered = other_service.send_task(TASK, args=[_body(None, 20)], task_id="task-once")
        assert redelivered.get(timeout=60) == "task-once"
        assert campaign_reads.get_counters("task-once", redis_client)["sent"] == 20
        assert len(smtp.messages) == 20
        assert max(Counter(m.rcpt_tos[0] for m in smtp.messages).values()) == 1
