"""README "HTTP API and Python client": a refusal of ``dispatch.enqueue_campaign`` is what
would be a 422 or a 409 over HTTP, its message starting with the field at fault, as the
HTTP answer's ``detail`` does (another service reads only that text)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from dispatch.redis_server import RedisServer
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import smtp_provider
from tests.worker import WorkerProcess

TASK = "dispatch.enqueue_campaign"
BASE: dict[str, Any] = {
    "provider": "local",
    "subject": "Hello {{ name }}",
    "html": "<p>Hi {{ name }}</p>",
    "recipients": [{"email": "a@example.com", "vars": {"name": "A"}}],
    "draft": True,
}
REFUSED = {
    "unknown provider": {"provider": "nope"},
    "unknown template variable": {"html": "{{ nope }}"},
    "bad address": {"from_address": "not-an-address"},
    "other content for an id": {"id": "taken-id", "subject": "Other"},
}


@pytest.fixture
def other_service(redis_server: RedisServer) -> Iterator[Celery]:
    app = Celery("other-service", broker=redis_server.url, backend=redis_server.url)
    yield app
    app.close()


@covers("POST /v1/campaigns")
def test_a_refused_task_says_what_the_api_says(
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    api_server: ApiServer,
    other_service: Celery,
) -> None:
    smtp_provider(redis_client, 2525)
    with api_client(api_server) as api:
        assert api.post("/v1/campaigns", json={**BASE, "id": "taken-id"}).status_code == 201
        for name, change in REFUSED.items():
            body = {**BASE, **change}
            answer = api.post("/v1/campaigns", json=body)
            assert answer.status_code in (409, 422), (name, answer.text)
            detail = answer.json()["detail"]
            assert detail.startswith(f"{answer.json()['field']}: "), (name, detail)
            sent = other_service.send_task(TASK, args=[body])
            with pytest.raises(Exception) as refused:
                sent.get(timeout=60)
            assert str(refused.value) == detail, name
