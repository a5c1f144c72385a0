"""Prometheus metrics of the whole service, read from Redis when /metrics is scraped.

Workers are separate processes (and machines); what they did is kept in Redis by the
ledger script, so the API can report it without a push gateway: messages by provider
and outcome, retries, send latency, throttles, batches deferred for want of a
connection and connection slots lost (dispatch.send_stats), and the depth of each Celery
queue. What a person must act on is kept there too, by the code path it happens on:
campaigns paused automatically by kind, stalled campaigns restarted and beat's last
sweep (dispatch.incidents), campaigns beat's passes skipped, errors that are not
Redis's lived through by a worker's background loops, and task messages refused unread
(dispatch.faults), each worker's last canary (dispatch.worker_health). Campaigns by
status, the suppression list, callback batches waiting or set aside, the events stream
against its cap, and Redis's memory and eviction policy are read as they are.

A scrape's cost does not grow with every campaign ever sent: one pipeline of constant
size, plus one ``HGET`` per campaign started and not yet found finished
(``store.ACTIVE_ZSET``, which housekeeping keeps).
Callback counts are kept by the API process itself (dispatch.callbacks): each scrape
gives every saved provider its refused-events series at 0 before it is written (an API
started, or a provider saved, since the last scrape: the first refusal is an increase) and
drops those of providers no longer saved.

Every saved provider has every series of its own from the start, at 0: Prometheus's
``increase()`` sees nothing in a series' first sample, so one that appeared only with
its first failure (a whole batch ``unknown`` in one write) would never fire an alert.
A deleted provider has none, whatever its campaigns count after its deletion.
``dispatch_redis_up`` is 0 when Redis does not answer the scrape (every family read from
it is then absent). A value that cannot be read (a count that is not a number, a key
holding another type: written by hand or by a bug) leaves out its own series, or the
families read from that key, and nothing else; each scrape logs them at ERROR, in one
line naming each key and field.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dispatch import faults, incidents, store, worker_health
from dispatch.callbacks import CALLBACK_EVENTS
from dispatch.models import CampaignStatus, MessageState
from dispatch.send_stats import histograms
from dispatch.settings import get_settings

log = logging.getLogger(__name__)
Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
_STATUS_CHUNK = 1000  # campaign statuses read per round trip
_WATCHED_STATUSES = ("running", "paused", "scheduled")  # the statuses dispatch_campaigns counts
_ACTIVE_STATUSES = ("running", "paused")  # those of them read from store.ACTIVE_ZSET
_UNREAD_COUNTED = 1000  # a consumer group's unread events counted one by one, at most
_UNREADABLE_SHOWN = 20  # unreadable values named in a scrape's log line, at most
# The length of the stream KEYS[1] and each of its consumer groups: its name, how many
# entries follow its last-delivered id (counted up to ARGV[1]: the entries stay in Redis,
# only their number comes back), Redis's lag (-1: none) and how many entries were
# trimmed before the group read them, in all (KEYS[2] keeps it, see _consumer_groups).
# Entries missed are those the stream ever had (entries-added) less those the group's
# reads account for less those still there to read. What the reads account for is
# entries-read when Redis knows it; else, for a group that has not read since the last
# scrape, what that scrape found (a read from an unknown entries-read makes Redis
# estimate it, and the estimate counts the trimmed entries as read); else Redis's
# estimate (a group seen for the first time: entries trimmed before that are not
# counted). Writes are pcalls: a Redis out of memory still answers the scrape, with the
# last figures.
_GROUPS = """
local stream, kept, cap = KEYS[1], KEYS[2], tonumber(ARGV[1])
if redis.call('TYPE', stream).ok ~= 'stream' then
  redis.pcall('DEL', kept)
  return {0, {}}
end
local function get(list, name)
  for i = 1, #list, 2 do
    if list[i] == name then return list[i + 1] end
  end
  return false
end
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local info = redis.call('XINFO', 'STREAM', stream)
local added, length = get(info, 'entries-added'), get(info, 'length')
local first = get(info, 'first-entry')
local previous = {}
local fields = redis.call('HGETALL', kept)
for i = 1, #fields, 2 do
  local id, read, seen, missed = string.match(fields[i + 1], '^(%S+) (%d+) (%d+) (%d+)$')
  if id then
    previous[fields[i]] = {
      id = id, read = tonumber(read), seen = tonumber(seen), missed = tonumber(missed)}
  end
end
local out, present = {}, {}
for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, last = get(group, 'name'), get(group, 'last-delivered-id')
  local entries_read, lag = get(group, 'entries-read'), get(group, 'lag')
  local counted = #redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', cap)
  local old = previous[name]
  local missed = old and old.missed or 0
  present[name] = true
  if added then
    local read = entries_read
    if not read and old and old.id == last then
      read = old.read
    elseif not read and lag then
      read = added - lag
    end
    local unread = false
    if not first then
      unread = 0
    elseif before(last, first[1]) then
      unread = length
    elseif counted < cap then
      unread = counted
    end
    local seen = old and old.seen or 0
    if read and unread then
      local now = math.max(0, added - read - unread)
      if now > seen then missed = missed + now - seen end
      seen = now
    end
    if read then
      redis.pcall('HSET', kept, name, string.format('%s %d %d %d', last, read, seen, missed))
    end
  end
  table.insert(out, {name, counted, lag or -1, missed})
end
for name in pairs(previous) do
  if not present[name] then redis.pcall('HDEL', kept, name) end
end
return {length, out}
"""
# The outcomes dispatch_messages_total counts (the ledger's states but ``claimed``).
OUTCOMES = tuple(s.value for s in MessageState if s is not MessageState.CLAIMED)


class RedisStateCollector(Collector):
    """Collects from Redis at scrape time; yields nothing when Redis is unreachable."""

    def collect(self) -> Iterator[Family]:
        r = store.sync_client()
        unreadable: list[str] = []  # what this scrape could not read, logged at its end
        try:
            pipe = r.pipeline(transaction=False)
            keys = [
                store.PROVIDERS_SET,
                store.MESSAGE_STATS_HASH,
                store.SEND_STATS_HASH,
                store.INCIDENTS_HASH,
                store.WORKERS_ZSET,
                store.SUPPRESSIONS_HASH,
                store.CALLBACK_PENDING_ZSET,
                store.CALLBACK_DEAD_HASH,
                store.EVENTS_STREAM,
            ]
            pipe.smembers(store.PROVIDERS_SET)
            pipe.hgetall(store.MESSAGE_STATS_HASH)
            pipe.hgetall(store.SEND_STATS_HASH)
            pipe.hgetall(store.INCIDENTS_HASH)
            pipe.zrange(store.WORKERS_ZSET, 0, -1, withscores=True)
            pipe.hlen(store.SUPPRESSIONS_HASH)
            pipe.zcard(store.CALLBACK_PENDING_ZSET)
            pipe.hlen(store.CALLBACK_DEAD_HASH)
            pipe.xlen(store.EVENTS_STREAM)
            pipe.info("memory")
            pipe.info("stats")
            keys += ["INFO memory", "INFO stats"]
            for queue in store.CELERY_QUEUES:
                for key in store.queue_keys(queue):  # one list per priority
                    pipe.llen(key)
                    keys.append(key)
            answers = [
                _of_type(key, answer, unreadable)
                for key, answer in zip(keys, pipe.execute(raise_on_error=False), strict=True)
            ]
            providers, stats, sends, found, workers, suppressed, pending, dead = answers[:8]
            stream, memory, info, depths = answers[8], answers[9], answers[10], answers[11:]
            statuses = _campaign_statuses(r, unreadable)
            groups = _consumer_groups(r, unreadable)
        except Exception:  # metrics must not fail the scrape; /healthz reports Redis
            yield _redis_up(False)
            return
        yield _redis_up(True)
        saved = {str(p) for p in providers or ()}
        if providers is not None:  # else this process's counts stay as they are
            _callback_series(saved)
        yield from _sends(saved, stats, sends, unreadable)
        if found is not None:
            yield from _incidents(_numbers(store.INCIDENTS_HASH, found, unreadable))
        if workers is not None:
            yield from _workers(workers)
        campaigns = GaugeMetricFamily(
            "dispatch_campaigns",
            "Campaigns started and not finished, by status (running, paused), and "
            "campaigns scheduled; drafts and finished campaigns are not counted",
            labels=["status"],
        )
        for status in _WATCHED_STATUSES:
            if status in statuses:
                campaigns.add_metric([status], float(statuses[status]))
        yield campaigns
        gauges = (
            ("dispatch_suppressions", "Addresses on the suppression list", suppressed),
            (
                "dispatch_callback_batches_pending",
                "Callback batches accepted and not applied yet (a worker applies them)",
                pending,
            ),
            (
                "dispatch_callback_batches_dead",
                "Callback batches that could not be read and were set aside "
                f"({store.CALLBACK_DEAD_HASH})",
                dead,
            ),
            (
                "dispatch_events_stream_length",
                f"Entries in the {store.EVENTS_STREAM} stream; at its cap the oldest are dropped",
                stream,
            ),
        )
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily(
            "dispatch_events_stream_max_length",
            f"The cap of the {store.EVENTS_STREAM} stream (DISPATCH_EVENTS_MAXLEN)",
            value=get_settings().events_maxlen,
        )
        lag = GaugeMetricFamily(
            "dispatch_events_consumer_lag",
            f"Entries of {store.EVENTS_STREAM} not yet delivered to each consumer group; "
            "past the stream's cap the oldest are dropped before the group reads them",
            labels=["group"],
        )
        missed = CounterMetricFamily(
            "dispatch_events_consumer_missed",
            f"Entries of {store.EVENTS_STREAM} trimmed before each consumer group read "
            "them (the stream's cap): events the group's consumer never got",
            labels=["group"],
        )
        for name, behind, lost in groups or ():
            lag.add_metric([name], behind)
            missed.add_metric([name], lost)
        if groups is not None:
            yield lag
            yield missed
        yield from _redis(memory, info)
        queues = GaugeMetricFamily(
            "dispatch_queue_depth", "Tasks waiting in each Celery queue", labels=["queue"]
        )
        per_queue = len(store.PRIORITY_STEPS)
        for i, queue in enumerate(store.CELERY_QUEUES):
            lengths = depths[i * per_queue : (i + 1) * per_queue]
            if None not in lengths:  # else one of its lists holds another type
                queues.add_metric([queue], float(sum(lengths)))
        yield queues
        if unreadable:
            more = len(unreadable) - _UNREADABLE_SHOWN
            log.error(
                "/metrics left out what it could not read (their series are absent): %s%s",
                "; ".join(unreadable[:_UNREADABLE_SHOWN]),
                f"; and {more} more" if more > 0 else "",
            )


def _of_type(key: str, answer: Any, unreadable: list[str]) -> Any:
    """A pipeline's answer, ``None`` for a key that holds another type (noted in
    ``unreadable``: the families read from it are left out); any other error raises."""
    if isinstance(answer, redis.ResponseError) and str(answer).startswith("WRONGTYPE"):
        unreadable.append(f"{key} holds another type")
        return None
    if isinstance(answer, Exception):
        raise answer
    return answer


def _numbers(key: str, fields: Mapping[Any, Any], unreadable: list[str]) -> dict[str, float | None]:
    """A hash's fields read as numbers, ``None`` for one that is not (noted in
    ``unreadable``: its series is left out, not counted as 0, which Prometheus would take
    for a reset and its return for an increase)."""
    numbers: dict[str, float | None] = {}
    for field, value in fields.items():
        try:
            numbers[str(field)] = float(value)
        except ValueError:
            numbers[str(field)] = None
            unreadable.append(f"{key} field {str(field)!r} is {str(value)[:40]!r}")
    return numbers


def _callback_series(providers: set[str]) -> None:
    """This process's ``dispatch_callback_events_total``: the ``invalid`` series of every
    saved provider, at 0 until its first refusal, and none of a deleted one (the API
    exports the service's figures before its own: see dispatch.api.app)."""
    for provider in providers:
        CALLBACK_EVENTS.labels(provider, "invalid")
    for family in CALLBACK_EVENTS.collect():
        gone = {
            (s.labels["provider"], s.labels["type"])
            for s in family.samples
            if s.labels["provider"] not in providers
        }
        for labels in gone:
            CALLBACK_EVENTS.remove(*labels)


def _campaign_statuses(r: redis.Redis, unreadable: list[str]) -> dict[str, int]:
    """How many active campaigns have each status (running, paused; a finished one until
    housekeeping takes it off the index), and how many are scheduled. A campaign whose
    key holds another type (written by hand: housekeeping skips it, so it stays in the
    index) is left out: it raised, and every scrape reported Redis down, no family read
    from it, for as long as it stayed. An index holding another type leaves out its
    statuses (noted in ``unreadable``)."""
    counts: dict[str, int] = {}
    try:
        counts[CampaignStatus.SCHEDULED.value] = int(r.zcard(store.SCHEDULED_ZSET))
    except redis.ResponseError as exc:
        _of_type(store.SCHEDULED_ZSET, exc, unreadable)
    start = 0
    while True:
        try:
            ids = r.zrange(store.ACTIVE_ZSET, start, start + _STATUS_CHUNK - 1)
        except redis.ResponseError as exc:
            _of_type(store.ACTIVE_ZSET, exc, unreadable)
            return counts
        if start == 0:  # the index is read: its statuses are reported, 0 when none
            counts.update(dict.fromkeys(_ACTIVE_STATUSES, 0))
        if not ids:
            return counts
        pipe = r.pipeline(transaction=False)
        for campaign_id in ids:
            pipe.hget(store.campaign_key(str(campaign_id)), "status")
        for status in pipe.execute(raise_on_error=False):
            if isinstance(status, str):
                counts[str(status)] = counts.get(str(status), 0) + 1
        start += len(ids)


def _consumer_groups(
    r: redis.Redis, unreadable: list[str]
) -> list[tuple[str, float, float]] | None:
    """Each consumer group of the events stream, how many of its entries the group has
    not been given yet, and how many were trimmed before the group read them, in all.

    Redis's own ``lag`` is not taken as it is: before Redis 8 (redis#13957) a group that
    fell behind the trim keeps it too high, for good, by every entry trimmed before the
    group read it (so a consumer that caught up stayed near the cap), and a group that
    has not read since its creation has none. Up to _UNREAD_COUNTED entries are counted;
    a group further behind gets Redis's figure, at most the stream's length.

    Entries missed are kept in Redis (store.EVENTS_MISSED_HASH) from scrape to scrape and
    only grow: they are seen while the group is behind the trim, and, on Redis 7 once
    the group has an ``entries-read`` (it read up to the stream's end once, or was
    created with ENTRIESREAD), after it caught up too; on Redis 8, which recounts a
    group's reads when it reads past the trim, entries missed and read past between two
    scrapes are not seen. A group further than _UNREAD_COUNTED entries from both ends of
    the trimmed stream keeps its last figure until it nears one. ``None`` when
    store.EVENTS_MISSED_HASH holds another type (noted in ``unreadable``)."""
    try:
        length, groups = r.eval(
            _GROUPS, 2, store.EVENTS_STREAM, store.EVENTS_MISSED_HASH, _UNREAD_COUNTED
        )
    except redis.ResponseError as exc:
        _of_type(store.EVENTS_MISSED_HASH, exc, unreadable)  # raises unless WRONGTYPE
        return None
    figures = []
    for name, counted, told, missed in groups:
        lag = int(counted)
        if lag >= _UNREAD_COUNTED:
            lag = max(lag, min(int(length), int(length) if int(told) < 0 else int(told)))
        figures.append((str(name), float(lag), float(missed)))
    return figures


def _redis_up(up: bool) -> Family:
    return GaugeMetricFamily(
        "dispatch_redis_up",
        "1 when Redis answered this scrape, else 0 (then no family read from Redis is "
        "reported: the service can neither send nor take callbacks)",
        value=float(up),
    )


def _of_saved(fields: dict[str, str], providers: set[str]) -> dict[str, str]:
    """The ``<provider>|...`` fields of saved providers: what a deleted provider's
    campaigns count after its deletion (a cancel settling their messages, a batch's
    lease released with its send figures) is never exported, so its series do not come
    back for good (one set per customer who ever left)."""
    shown = providers | {store.NO_PROVIDER}
    return {key: value for key, value in fields.items() if str(key).rpartition("|")[0] in shown}


def _sends(
    providers: set[str],
    stats: dict[str, str] | None,
    sends: dict[str, str] | None,
    unreadable: list[str],
) -> Iterator[Family]:
    """The per-provider families; those of a hash holding another type (``None``) are
    left out, and so is the series of a field that is not a number."""
    if stats is not None:
        yield _messages(
            providers,
            _numbers(store.MESSAGE_STATS_HASH, _of_saved(stats, providers), unreadable),
        )
    if sends is not None:
        yield from _send_figures(
            providers, _numbers(store.SEND_STATS_HASH, _of_saved(sends, providers), unreadable)
        )


def _messages(providers: set[str], stats: dict[str, float | None]) -> Family:
    messages = CounterMetricFamily(
        "dispatch_messages",
        "Messages by provider and outcome (sent, failed, suppressed, unknown, "
        "cancelled, expired; retry counts each scheduled retry)",
        labels=["provider", "outcome"],
    )
    counts: dict[tuple[str, str], float | None] = {(p, o): 0.0 for p in providers for o in OUTCOMES}
    for key, value in stats.items():
        provider, _, outcome = str(key).rpartition("|")
        counts[provider, outcome] = value
    for labels, count in sorted(counts.items()):
        if count is not None:
            messages.add_metric(list(labels), count)
    return messages


def _send_figures(providers: set[str], sends: dict[str, float | None]) -> Iterator[Family]:
    latency = HistogramMetricFamily(
        "dispatch_send_seconds",
        "Seconds each message's hand-over to the provider took: the exchange that "
        "carried it (up to 4 SMTP messages pipelined on one connection, or one HTTP "
        "request: a whole batch for batching providers)",
        labels=["provider"],
    )
    throttles = CounterMetricFamily(
        "dispatch_throttles",
        "Exchanges whose reply asked to slow down (SMTP 421/450/451/454, HTTP 429/503): "
        "one per HTTP request or SMTP chunk of up to 4 messages, however many of its "
        "messages were throttled, by provider",
        labels=["provider"],
    )
    deferred = CounterMetricFamily(
        "dispatch_batches_deferred",
        "Batch runs that found every connection slot of their provider in use for "
        "DISPATCH_SLOT_WAIT_SECONDS and went back to the broker, by provider",
        labels=["provider"],
    )
    slots_lost = CounterMetricFamily(
        "dispatch_connection_slots_lost",
        "Connection slots a session lost, by provider: not renewed in time (a stalled "
        "worker process, Redis slow or away, or a bug, logged); the session closed and "
        "waited for a slot again",
        labels=["provider"],
    )
    numbers = {key: value for key, value in sends.items() if value is not None}
    unread = {tuple(key.rpartition("|")[::2]) for key, value in sends.items() if value is None}
    for provider, figures in histograms(numbers, providers).items():
        names = {name for unread_provider, name in unread if unread_provider == provider}
        # A bucket or the sum unread: the histogram's other figures would be wrong.
        if figures.buckets[-1][1] and not {n for n in names if n == "sum" or n[:3] == "le="}:
            latency.add_metric([provider], figures.buckets, sum_value=figures.seconds)
        for family, name, count in (
            (throttles, "throttles", figures.throttles),
            (deferred, "deferred", figures.deferred),
            (slots_lost, "slots_lost", figures.slots_lost),
        ):
            if name not in names:
                family.add_metric([provider], count)
    yield latency
    yield throttles
    yield deferred
    yield slots_lost


def _incidents(found: dict[str, float | None]) -> Iterator[Family]:
    """The incidents hash's families (a field that is not a number: ``None``, its series
    left out)."""
    pauses = CounterMetricFamily(
        "dispatch_campaign_pauses",
        "Campaigns paused automatically, by kind: authentication (credentials refused), "
        "configuration (STARTTLS or AUTH not offered, TLS failed, session refused), quota "
        "(daily quota used up), private_endpoint (http endpoint resolved to a private "
        "address), reputation (bounce or complaint rate past the guard), provider_deleted, "
        "failures (the first messages all failed, none sent), start_failed (a scheduled "
        "campaign that could not start at its send_at)",
        labels=["kind"],
    )
    for kind, count in incidents.pause_counts(found).items():
        pauses.add_metric([kind.value], count)
    yield pauses
    restarted = found.get(incidents.RESTARTED, 0.0)
    if restarted is not None:
        yield CounterMetricFamily(
            "dispatch_campaigns_restarted",
            "Running campaigns whose batches stopped and that housekeeping enqueued again",
            value=restarted,
        )
    yield from _faults(found)
    swept_at = found.get(incidents.SWEPT_AT)
    if swept_at is not None:
        yield GaugeMetricFamily(
            "dispatch_housekeeping_last_sweep_timestamp_seconds",
            "When beat's housekeeping last ran (Unix time); absent until it first runs",
            value=swept_at,
        )


def _faults(found: dict[str, float | None]) -> Iterator[Family]:
    """dispatch.faults' counts: every label at 0 from the first scrape."""
    help_and_labels = (
        (
            "dispatch_beat_campaigns_skipped",
            "Campaigns one of beat's passes could not read and skipped (logged at ERROR "
            "with the traceback), by pass; once per pass, so one left unreadable counts "
            "at every tick",
            "pass",
            "skipped",
            faults.BEAT_PASSES,
        ),
        (
            "dispatch_beat_passes_failed",
            "Runs of beat's passes that failed as a whole with an error that is not "
            "Redis's (a bug, logged by Celery with the traceback), by pass: the pass "
            "stopped there, and meets it again at every tick",
            "pass",
            "failed",
            faults.FAILED_PASSES,
        ),
        (
            "dispatch_unexpected_errors",
            "Errors that are not Redis's (a bug, logged with the traceback) lived through "
            "by a worker's background loop, by where: a batch lease's or a connection "
            "slot's renewal, a batch's status watch (its batch handed on), the closer of "
            "idle provider sessions",
            "where",
            "error",
            faults.ERROR_PLACES,
        ),
        (
            "dispatch_task_messages_refused",
            "Task messages a worker refused unread, by reason: serializer (not JSON), "
            "too_large (over 64 MiB), undecodable, malformed (not a task message Celery "
            "can run), unregistered (a task name no worker knows)",
            "reason",
            "refused",
            faults.REFUSALS,
        ),
    )
    for name, documentation, label, kind, values in help_and_labels:
        family = CounterMetricFamily(name, documentation, labels=[label])
        for value, count in faults.counts(found, kind, values).items():
            family.add_metric([value], count)
        yield family
    for lost in faults.counts(found, "lost", (faults.BATCH_LEASE,)).values():
        yield CounterMetricFamily(
            "dispatch_batch_leases_lost",
            "Batch runs that stopped because their lease lapsed under them: a worker "
            "process that stalled past DISPATCH_LEASE_TTL_MS (CPU or memory starvation, a "
            "frozen host), or Redis away that long. Each run enqueued its batch again at "
            "once; what it had on the wire ends unknown",
            value=lost,
        )


def _workers(workers: list[tuple[Any, float]]) -> Iterator[Family]:
    interval = get_settings().worker_canary_seconds
    now = time.time()
    last = GaugeMetricFamily(
        "dispatch_worker_last_canary_timestamp_seconds",
        "When each worker last took its canary task (Unix time); one that stopped "
        "consuming falls behind while its process lives on",
        labels=["worker"],
    )
    consuming = 0
    stale = 0
    for hostname, at in workers:
        if now - at > interval * worker_health.KEEP_INTERVALS:
            continue  # gone long ago (killed without its shutdown)
        last.add_metric([str(hostname)], at)
        if now - at > interval * worker_health.STALE_INTERVALS:
            stale += 1
        else:
            consuming += 1
    yield last
    yield GaugeMetricFamily(
        "dispatch_workers_consuming",
        "Workers that took their canary task within "
        f"{worker_health.STALE_INTERVALS} x DISPATCH_WORKER_CANARY_SECONDS",
        value=consuming,
    )
    yield GaugeMetricFamily(
        "dispatch_workers_not_consuming",
        "Workers whose last canary is older than that (dispatch health fails for them)",
        value=stale,
    )


def _redis(memory: dict[str, Any], info: dict[str, Any]) -> Iterator[Family]:
    yield GaugeMetricFamily(
        "dispatch_redis_used_memory_bytes", "Memory Redis uses", value=memory["used_memory"]
    )
    yield GaugeMetricFamily(
        "dispatch_redis_maxmemory_bytes",
        "Redis's maxmemory (0: no limit)",
        value=memory.get("maxmemory", 0),
    )
    policy = str(memory.get("maxmemory_policy", ""))
    yield GaugeMetricFamily(
        "dispatch_redis_evicting_policy",
        "1 when Redis's maxmemory-policy may evict dispatch's records (anything but "
        f"noeviction; now {policy or 'unknown'}), else 0",
        value=float(policy not in ("", "noeviction")),
    )
    yield CounterMetricFamily(
        "dispatch_redis_evicted_keys",
        "Keys Redis evicted under memory pressure (any is a record lost)",
        value=info.get("evicted_keys", 0),
    )
