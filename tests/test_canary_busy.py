"""When a worker's main process notes its own canary (review J22's change): every
process of its pool runs a task, each younger than the task time limit. A task older
than that means the main process no longer sees tasks end (its consumer is stuck): the
worker must go stale, not be told busy for ever."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from celery.worker import state as worker_state

from dispatch.tasks import pool_busy

NOW = 1_000_000.0
LIMIT = 600.0


@pytest.fixture
def active(monkeypatch: pytest.MonkeyPatch) -> set[object]:
    requests: set[object] = set()
    monkeypatch.setattr(worker_state, "active_requests", requests)
    return requests


@dataclass(eq=False)  # (hashable by identity, as Celery's requests in the set)
class _Running:
    time_start: float | None


def _running(since: float | None) -> _Running:
    return _Running(since)


def test_a_full_pool_of_young_tasks_is_busy(active: set[object]) -> None:
    active.update({_running(NOW - 5), _running(NOW - LIMIT), _running(None)})
    assert pool_busy(3, LIMIT, NOW)
    assert not pool_busy(4, LIMIT, NOW)  # a process free: the canary runs there


def test_a_task_past_the_time_limit_is_no_sign_of_work(active: set[object]) -> None:
    active.update({_running(NOW - 5), _running(NOW - LIMIT - 61)})
    assert not pool_busy(2, LIMIT, NOW)


def test_no_processes_is_never_busy(active: set[object]) -> None:
    assert not pool_busy(0, LIMIT, NOW)
