"""``dispatch_events_consumer_lag`` as a consumer group of ``dispatch:events`` lives it: a
group that fell behind the stream's trim once, and caught up (review AB23)."""

from __future__ import annotations

import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.test_metrics import _metric

STREAM = store.EVENTS_STREAM
CAP = 1000  # the smallest DISPATCH_EVENTS_MAXLEN, trimmed as dispatch's scripts trim


def _append(r: redis.Redis, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {"json": f'{{"n": {i}}}'}, maxlen=CAP, approximate=True)
    pipe.execute()


def _read_all(r: redis.Redis, group: str) -> int:
    """The README's consumer: read, handle, acknowledge, until nothing new is left."""
    read = 0
    while answer := r.xreadgroup(group, f"{group}-1", {STREAM: ">"}, count=500):
        entries = answer[0][1]
        if not entries:
            break
        r.xack(STREAM, group, *[entry_id for entry_id, _ in entries])
        read += len(entries)
    return read


def _lag(api_server: ApiServer, group: str) -> float:
    with api_server.client() as http:
        return _metric(http.get("/metrics").text, "dispatch_events_consumer_lag", group=group)


def test_a_group_that_lost_entries_to_the_trim_reads_no_lag_once_caught_up(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Redis before 8 (issue 13957) keeps a group's ``entries-read`` short by every entry
    trimmed before the group read it, and its ``lag`` with it: the gauge said 2,000 behind
    for good after the consumer had read everything, so DispatchEventsConsumerFallingBehind
    (0.8 of the cap) kept firing, and a second fall behind looked like the first."""
    _append(redis_client, 10)
    redis_client.xgroup_create(STREAM, "crm", id="0")
    redis_client.xgroup_create(STREAM, "new", id="$")  # the README's "only new ones"
    assert _read_all(redis_client, "crm") == 10
    assert _lag(api_server, "crm") == 0
    _append(redis_client, 5)
    assert _lag(api_server, "new") == 5  # Redis cannot tell: the group was left out
    _append(redis_client, 2995)  # the consumers stopped: about 2,000 entries trimmed unread
    length = redis_client.xlen(STREAM)
    assert CAP <= length < 3000
    assert _lag(api_server, "crm") == length
    assert _read_all(redis_client, "crm") == length
    assert _read_all(redis_client, "new") == length
    assert _lag(api_server, "crm") == 0
    assert _lag(api_server, "new") == 0
    _append(redis_client, 7)
    assert _lag(api_server, "crm") == 7
    assert _lag(api_server, "new") == 7
