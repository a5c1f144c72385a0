"""``dispatch_events_consumer_missed_total``: entries of ``dispatch:events`` trimmed before a
consumer group read them, which its consumer never gets (review C24). Before it, a group
that fell behind the stream's cap and caught up before the lag alert's ``for`` left no
trace of the events it lost."""

from __future__ import annotations

import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.test_metrics import _metric
from tests.test_oncall import _rules, _scrape
from tests.test_oncall_promql import Scrapes
from tests.test_review_ab23_events_lag import _append, _read_all

STREAM = store.EVENTS_STREAM


def _missed(text: str, group: str) -> float:
    return _metric(text, "dispatch_events_consumer_missed_total", group=group)


def _trimmed(r: redis.Redis) -> int:
    info = r.xinfo_stream(STREAM)
    return int(info["entries-added"]) - int(info["length"])


def test_a_burst_past_the_cap_read_up_to_before_the_next_scrape_is_counted(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The group read the stream to its end (Redis knows its entries-read), fell behind
    by a burst past the cap and caught up, all between two scrapes."""
    _append(redis_client, 10)
    redis_client.xgroup_create(STREAM, "crm", id="0")
    assert _read_all(redis_client, "crm") == 10
    assert _missed(_scrape(api_server), "crm") == 0
    _append(redis_client, 2990)
    lost = _trimmed(redis_client) - 10  # the ten read are trimmed too
    assert lost > 1000
    assert _read_all(redis_client, "crm") == redis_client.xlen(STREAM)
    text = _scrape(api_server)
    assert _metric(text, "dispatch_events_consumer_lag", group="crm") == 0
    assert _missed(text, "crm") == lost
    _append(redis_client, 7)
    _read_all(redis_client, "crm")
    assert _missed(_scrape(api_server), "crm") == lost  # it does not count twice


def test_groups_without_entries_read_count_what_is_trimmed_unread(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Groups made with ``$`` or ``0`` that have not read (Redis has no entries-read for
    them, and a ``$`` group no lag once entries follow): what the scrape before saw of
    them is what their reads account for. Reading past the trim then makes Redis count
    the lost entries as read; the counter keeps them."""
    _append(redis_client, 1500)
    redis_client.xgroup_create(STREAM, "new", id="$")
    redis_client.xgroup_create(STREAM, "all", id="0")
    text = _scrape(api_server)
    assert _missed(text, "new") == 0
    assert _missed(text, "all") == 0  # trimmed before it was made: not its loss
    added, trimmed = redis_client.xinfo_stream(STREAM)["entries-added"], _trimmed(redis_client)
    _append(redis_client, 2000)
    assert redis_client.xinfo_groups(STREAM)[0]["entries-read"] is None
    text = _scrape(api_server)
    # "new" needed every entry added after it; "all" every entry there when it was seen
    new_lost = redis_client.xinfo_stream(STREAM)["entries-added"] - added
    new_lost -= redis_client.xlen(STREAM)
    all_lost = _trimmed(redis_client) - trimmed
    assert new_lost >= 1000
    assert all_lost > new_lost
    assert _missed(text, "new") == new_lost
    assert _missed(text, "all") == all_lost
    assert _read_all(redis_client, "new") == redis_client.xlen(STREAM)
    assert _read_all(redis_client, "all") == redis_client.xlen(STREAM)
    text = _scrape(api_server)
    assert _missed(text, "new") == new_lost
    assert _missed(text, "all") == all_lost
    redis_client.xgroup_destroy(STREAM, "all")
    assert 'group="all"' not in _scrape(api_server)
    assert "all" not in redis_client.hgetall(store.EVENTS_MISSED_HASH)


def test_the_missed_events_alert_fires_for_a_loss_the_lag_alert_never_saw(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Scrapes a minute apart: the group falls behind the cap and catches up between two
    of them. The lag alert (for: 10m) cannot fire; the missed-events one does, once,
    naming the group."""
    scrapes, at = Scrapes(), 1_000_000.0
    _append(redis_client, 10)
    redis_client.xgroup_create(STREAM, "crm", id="0")
    _read_all(redis_client, "crm")
    for _ in range(3):
        at += 60
        scrapes.add(_scrape(api_server), at=at)
    assert "DispatchEventsConsumerMissedEvents" not in scrapes.firing(_rules())
    _append(redis_client, 3000)
    _read_all(redis_client, "crm")
    at += 60
    scrapes.add(_scrape(api_server), at=at)
    firing = scrapes.firing(_rules())
    assert set(firing["DispatchEventsConsumerMissedEvents"]) == {frozenset({("group", "crm")})}
    assert "DispatchEventsConsumerFallingBehind" not in firing
