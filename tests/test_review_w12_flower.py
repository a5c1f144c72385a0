"""What Flower shows of a task's arguments (review W12): ``dispatch.enqueue_campaign``'s one
argument is a whole campaign, its recipients' addresses and vars and its html among it. A
worker hands it to monitors twice: in the ``task-received`` event (Flower's task list) and
in its answers to ``inspect active | reserved | scheduled`` (a worker's page in Flower).
Both show the campaign's id and size, never its data. The other tasks take small ids
(DESIGN §7), shown as they are."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from celery import Celery

from dispatch.redis_server import RedisServer
from tests.worker import WorkerProcess, wait_for

BODY = {
    "id": "w12-flower",
    "provider": "nope",
    "subject": "SUBJECT-TEXT",
    "html": "<p>BODY-TEXT</p>",
    "cc": ["copy.person@example.com"],
    "vars": {"offer": "CAMPAIGN-VAR"},
    "recipients": [
        {"email": "jane.doe@example.com", "vars": {"code": "VAR-VALUE"}},
        {"email": "john.roe@example.com"},
    ],
}
PRIVATE = (
    "SUBJECT-TEXT",
    "BODY-TEXT",
    "copy.person",
    "CAMPAIGN-VAR",
    "jane.doe",
    "VAR-VALUE",
    "john.roe",
)


@pytest.fixture
def watched_worker(own_redis: RedisServer) -> Iterator[tuple[Celery, list[dict[str, Any]]]]:
    """A worker of the test's own with task events on (as Flower turns them on), and the
    events it sends, as Flower receives them."""
    worker = WorkerProcess(own_redis.url, concurrency=1).start()
    app = Celery(broker=own_redis.url, backend=own_redis.url)
    events: list[dict[str, Any]] = []
    receiver: list[Any] = []

    def listen() -> None:
        with app.connection() as conn:
            recv = app.events.Receiver(conn, handlers={"*": events.append})
            receiver.append(recv)
            recv.capture(limit=None, timeout=None, wakeup=True)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        wait_for(lambda: bool(app.control.ping(timeout=0.5)), timeout=60)
        wait_for(lambda: bool(app.control.enable_events(reply=True, timeout=0.5)), timeout=30)
        yield app, events
    finally:
        if receiver:
            receiver[0].should_stop = True
        listener.join(timeout=10)
        worker.stop()


def test_monitors_see_the_campaigns_id_and_size_not_its_recipients_or_content(
    watched_worker: tuple[Celery, list[dict[str, Any]]],
) -> None:
    app, events = watched_worker
    # Waiting for its countdown, the task is in the worker's "scheduled" list.
    result = app.send_task("dispatch.enqueue_campaign", (BODY,), countdown=30)
    scheduled: list[dict[str, Any]] = []

    def listed() -> bool:
        answer = app.control.inspect(timeout=1).scheduled() or {}
        scheduled[:] = [entry for entries in answer.values() for entry in entries]
        return bool(scheduled)

    wait_for(listed, timeout=30)

    def received() -> list[dict[str, Any]]:
        return [e for e in events if e.get("type") == "task-received" and e["uuid"] == result.id]

    wait_for(lambda: bool(received()), timeout=30)
    shown = orjson.dumps([scheduled, received()]).decode()
    for private in PRIVATE:
        assert private not in shown, (private, shown)
    request = scheduled[0]["request"]
    assert request["name"] == "dispatch.enqueue_campaign" and request["id"] == result.id
    assert request["args"] == "(campaign 'w12-flower' with 2 recipients: body not shown)"
    assert received()[0]["args"] == request["args"]
    app.control.revoke(result.id)


def test_the_other_tasks_small_ids_are_shown_as_they_are(
    watched_worker: tuple[Celery, list[dict[str, Any]]],
) -> None:
    app, events = watched_worker
    result = app.send_task("dispatch.start_campaign", ("w12-no-such-campaign",))
    wait_for(
        lambda: any(e.get("type") == "task-received" and e["uuid"] == result.id for e in events),
        timeout=30,
    )
    event = next(e for e in events if e.get("type") == "task-received" and e["uuid"] == result.id)
    assert "w12-no-such-campaign" in event["args"]
