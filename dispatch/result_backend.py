"""Celery's Redis result backend (where ``dispatch.enqueue_campaign`` keeps its answer for
a caller's ``.get()``), reconnecting after a failover as dispatch's own clients do.

After a failover behind the Redis URL's name, the backend's connections still reached
the old primary, a replica now: every answer's store failed (READONLY), and the callers
read a failure, ``ReadOnlyError``, for campaigns that were created, until the worker
restarted (measured: three creates in a row). A READONLY reply now closes the connection
and the write goes once more on a new one (:func:`dispatch.store.reconnect_on_readonly`).
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend

from dispatch.store import reconnect_on_readonly

NAME = "dispatch.result_backend:RedisBackend"


class RedisBackend(CeleryRedisBackend):
    def _create_client(self, **params: Any) -> Any:
        create = super()._create_client  # type: ignore[misc]  # (not in celery-types)
        return create(**{**params, "retry": reconnect_on_readonly()})


def backend_url(url: str) -> str:
    """Celery's ``result_backend`` for a Redis ``url`` as Celery reads it (``redis://``,
    ``rediss://``, ``redis+socket://``): this backend on it. Celery hands a backend the
    part of the URL after the first ``+``."""
    scheme = url.partition("://")[0]
    if "+" in scheme:
        url = url.split("+", 1)[1]
    return f"{NAME}+{url}"
