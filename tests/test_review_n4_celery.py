"""``dispatch.enqueue_campaign`` from another service that sends it in another serializer:
refused (the workers take JSON only), and the caller is told so instead of waiting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from dispatch.redis_server import RedisServer
from tests.helpers import recipients, smtp_provider
from tests.worker import WorkerProcess

TASK = "dispatch.enqueue_campaign"


@pytest.fixture
def pickling_service(redis_server: RedisServer) -> Iterator[Celery]:
    """Another service's app that sends its tasks pickled (reading answers as JSON)."""
    app = Celery("pickling-service", broker=redis_server.url, backend=redis_server.url)
    app.conf.task_serializer = "pickle"
    app.conf.accept_content = ["json", "pickle"]
    yield app
    app.close()


def test_a_pickled_task_is_refused_and_the_caller_told_why(
    redis_client: redis.Redis, celery_worker: WorkerProcess, pickling_service: Celery
) -> None:
    smtp_provider(redis_client, 2525)
    body = {
        "id": "pickled",
        "provider": "local",
        "subject": "Hello {{ name }}",
        "html": "<p>Hi {{ name }}</p>",
        "recipients": recipients(2),
    }
    sent = pickling_service.send_task(TASK, args=[body])
    # (Before: Celery dropped it with a log line; .get() waited for its timeout.)
    with pytest.raises(Exception, match=r"^body: sent as pickle .*JSON only") as refused:
        sent.get(timeout=30)
    assert type(refused.value).__name__ == "CampaignError"
    assert not redis_client.exists("dispatch:campaign:pickled")


def test_a_message_the_worker_cannot_use_is_logged_without_its_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Celery logged up to 1 KB of such a message: a campaign's recipients and vars."""
    from celery.worker.consumer.consumer import Consumer
    from kombu.exceptions import ContentDisallowed

    import dispatch.celery_app  # noqa: F401  (what the worker imports)

    class Refused:
        body = b'{"recipients": [{"email": "alice@example.com", "vars": {"x": "SECRET"}}]}'
        content_type, content_encoding = "application/x-python-serialize", "binary"

        def __init__(self) -> None:
            self.headers = {"task": TASK, "id": "t-1"}
            self.acked = False

        def ack(self) -> None:
            self.acked = True

    message = Refused()
    with caplog.at_level("CRITICAL", logger="celery.worker.consumer.consumer"):
        Consumer.on_decode_error(None, message, ContentDisallowed("pickle refused"))  # type: ignore[arg-type]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Can't decode message body" in logged and "t-1" in logged
    assert f"(body of {len(Refused.body)} bytes, not logged)" in logged
    assert "alice@example.com" not in logged and "SECRET" not in logged
    assert message.acked
