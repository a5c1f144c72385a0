"""DESIGN §7: "Delays longer than the broker's visibility timeout are never put in a
countdown." The tasks that retry a lost Redis connection by themselves (Celery's
autoretry, up to 8 times with exponential backoff) keep to that too."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery.exceptions import Retry

from dispatch import tasks  # noqa: F401  (registers the tasks)
from dispatch.celery_app import DispatchTask, app
from dispatch.settings import get_settings

# Every task that retries a lost Redis connection with backoff, and arguments it takes.
AUTORETRIED = {
    "dispatch.enqueue_campaign": ({"id": "c1"},),
    "dispatch.send_batch": ("c1", 0),
    "dispatch.settle_ended": ("c1", "cancelled"),
    "dispatch.process_callback": ("b1",),
}


@pytest.mark.parametrize("name", sorted(AUTORETRIED))
def test_a_redis_retry_countdown_stays_inside_a_short_visibility_timeout(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DISPATCH_VISIBILITY_TIMEOUT=60 (the least it takes): the last retries' backoff (64,
    then 128 s, jitter at its longest) went into the countdown as it was, so the broker
    handed the task out again while it waited (Redis has no real acknowledgements,
    PITFALLS): the task ran twice, the copy kept unacknowledged for the next timeout."""
    monkeypatch.setenv("DISPATCH_VISIBILITY_TIMEOUT", "60")
    get_settings.cache_clear()
    task = app.tasks[name]
    assert isinstance(task, DispatchTask)  # (its messages still go through the guard)
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(task, "apply_async", lambda *a, **options: published.append(options))

    def lost(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(task, "_orig_run", lost)  # (autoretry's wrapper calls it)
    # The jitter draws its longest wait, the worst case a worker can meet.
    monkeypatch.setattr("celery.utils.time.random.randrange", lambda n: n - 1)
    args = AUTORETRIED[name]
    for retries in range(task.max_retries or 0):
        task.push_request(
            id=f"t{retries}",
            retries=retries,
            args=args,
            kwargs={},
            is_eager=False,
            called_directly=False,
        )
        try:
            with pytest.raises(Retry):
                task.run(*args)
        finally:
            task.pop_request()
    countdowns = [options["countdown"] for options in published]
    assert len(countdowns) == task.max_retries
    assert max(countdowns) <= 60 / 4, countdowns  # as a batch's own re-enqueue: a quarter
    assert countdowns[:4] == [1, 2, 4, 8]  # still exponential below the bound
