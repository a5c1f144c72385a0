"""Redis connections and the names of every key the service keeps (one place)."""

from __future__ import annotations

import os

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from dispatch.redis_server import EMBEDDED_DIR_NAME, ensure_redis_url

PREFIX = "dispatch"
EVENTS_STREAM = f"{PREFIX}:events"
# Consumer group of the events stream -> what /metrics last saw of it: "<last-delivered-id>
# <entries the group's reads account for> <entries it missed, as then seen> <missed in all>"
# (dispatch.metrics: entries trimmed before the group read them).
EVENTS_MISSED_HASH = f"{PREFIX}:events:missed"
PROVIDERS_SET = f"{PREFIX}:providers"
CAMPAIGNS_ZSET = f"{PREFIX}:campaigns"  # campaign id by creation time
# Campaign id by creation time while its per-message data is kept (dispatch.retention
# reads this, not every campaign), and the mark that every older campaign is in it.
KEPT_ZSET = f"{PREFIX}:campaigns:kept"
KEPT_INDEXED = f"{PREFIX}:campaigns:kept:indexed"
# The mark that every campaign purged before purges closed their counts was given its
# time to (dispatch.retention).
COUNTS_CLOSING_INDEXED = f"{PREFIX}:campaigns:counts-closing:indexed"
SCHEDULED_ZSET = f"{PREFIX}:scheduled"  # campaign id by send_at
# Campaign id by when it last went ``running``, until housekeeping finds it finished
# (completed, cancelled, expired): what the sweep and /metrics watch, however many
# campaigns were created since it started.
ACTIVE_ZSET = f"{PREFIX}:campaigns:active"
SUPPRESSIONS_HASH = f"{PREFIX}:suppressions"  # email -> JSON entry
EXPIRING_ZSET = f"{PREFIX}:expiring"  # campaign id by expires_at
MESSAGE_STATS_HASH = f"{PREFIX}:stats:messages"  # "<provider>|<state>" -> count (metrics)
SEND_STATS_HASH = f"{PREFIX}:stats:sends"  # send latency and throttles (dispatch.send_stats)
# The provider a campaign stored without one counts its messages under in those hashes
# (dispatch.ledger, dispatch.lifecycle): /metrics reports it as if it were saved.
NO_PROVIDER = "unknown"
# What went wrong that a person must know (dispatch.incidents): automatic pauses by kind,
# stalled campaigns restarted, and when beat's housekeeping last swept.
INCIDENTS_HASH = f"{PREFIX}:stats:incidents"
# Worker hostname by the time it last took its canary task (dispatch.worker_health): what
# /metrics reads, without scanning the keyspace for the per-worker keys.
WORKERS_ZSET = f"{PREFIX}:workers"
# The queues a worker consumes. ``celery`` is Celery's own default: a task another
# service sends by name with only the broker URL (``app.send_task(
# "dispatch.enqueue_campaign", ...)``, DESIGN §5) lands there unless it names a queue.
CELERY_QUEUES = ("default", "sends", "events", "celery")
SENDS_QUEUE = "sends"  # where batch tasks wait
EVENTS_QUEUE = "events"  # where callback batches wait (dispatch.process_callback)
# Message priorities on the broker (kombu's Redis transport: 0 is served first). A task
# of priority p > 0 waits in the list "<queue>" + PRIORITY_SEP + "<p>", of 0 in "<queue>".
PRIORITY_STEPS = tuple(range(10))
PRIORITY_SEP = "\x06\x16"  # kombu's default separator
# The broker transport options that make them so (every Celery app that publishes
# batch tasks needs them: one with kombu's four default steps rounds priorities down).
PRIORITY_OPTIONS = {"priority_steps": list(PRIORITY_STEPS), "sep": PRIORITY_SEP}

CATEGORIES_SET = f"{PREFIX}:categories"  # every campaign category sent (preference center)
# Field of a campaign's hash: its failures not the recipient's own while nothing was sent
# (the failure breaker, dispatch.batch_outcomes); a resume or retry-failed clears it.
BREAKER_FIELD = "unsent_failures"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists a Celery queue's tasks wait in, one per priority."""
    return [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS[1:])]


def batch_priority(batch: int) -> int:
    """A batch task's priority: a campaign's first batches go first. Batch 0 has 0,
    1 has 1, 2-3 have 2, 4-7 have 3 ... 256 and on have 9: a campaign created behind a
    large one starts as soon as a worker process is free, and a small campaign's batches
    pass the large one's later ones, instead of waiting behind all of them."""
    return min(batch.bit_length(), PRIORITY_STEPS[-1])


def optout_key(category: str) -> str:
    """Set of the address keys that opted out of ``category`` in the preference center.

    One set per category, so that a batch checks all its addresses with one SMISMEMBER.
    """
    return f"{PREFIX}:optout:{category}"


# Callback batches accepted but not yet applied: id -> JSON, and id by time received.
CALLBACK_INBOX_HASH = f"{PREFIX}:callbacks:inbox"
CALLBACK_PENDING_ZSET = f"{PREFIX}:callbacks:pending"
CALLBACK_DEAD_HASH = f"{PREFIX}:callbacks:dead"  # id -> JSON of a batch that cannot be read


def provider_key(nickname: str) -> str:
    return f"{PREFIX}:provider:{nickname}"


def campaign_key(campaign_id: str) -> str:
    """Hash: content (JSON), provider (its nickname), status, reason, created_at,
    send_date, ..."""
    return f"{PREFIX}:campaign:{campaign_id}"


def recipients_key(campaign_id: str) -> str:
    """List of pages of recipient JSON documents, one per line, by seq (see
    dispatch.recipient_pages)."""
    return f"{PREFIX}:campaign:{campaign_id}:recipients"


def counters_key(campaign_id: str) -> str:
    return f"{PREFIX}:campaign:{campaign_id}:counters"


def ledger_key(campaign_id: str) -> str:
    """Hash seq -> ledger record JSON; a missing seq is still queued."""
    return f"{PREFIX}:campaign:{campaign_id}:ledger"


def address_keys_key(campaign_id: str) -> str:
    """List of pages of the recipients' address keys (suppressions.suppression_key), laid
    out as the documents' pages: a batch checks them against the suppression list
    without decoding any document."""
    return f"{PREFIX}:campaign:{campaign_id}:address-keys"


def addresses_key(campaign_id: str) -> str:
    """Set of a draft's recipient address keys: one message per address across appends,
    removed when the campaign leaves ``draft``. (A list posted with its campaign is
    checked by create_campaign itself.)"""
    return f"{PREFIX}:campaign:{campaign_id}:addresses"


def retried_key(campaign_id: str) -> str:
    """Set of the seqs that retry-failed has queued again (each at most once)."""
    return f"{PREFIX}:campaign:{campaign_id}:retried"


def batch_lease_key(campaign_id: str, batch: int) -> str:
    return f"{PREFIX}:campaign:{campaign_id}:lease:{batch}"


# Every batch lease key by when it expires (ms, Redis's clock), kept by the scripts that
# take, renew and release a lease (dispatch.ledger): whether any batch runs is asked of
# it, not of a SCAN of the keyspace. A lease whose holder was killed leaves its entry
# behind until that time, as it leaves its key.
LEASES_ZSET = f"{PREFIX}:leases"
# The Redis beat's housekeeping last saw (``run_id``) and since when (``since``): a new
# one (a restart, a failover) means the workers lost the batch tasks they held.
REDIS_RUN_HASH = f"{PREFIX}:housekeeping:redis"


def worker_stopping_key(hostname: str) -> str:
    """Exists while the Celery worker ``hostname`` shuts down: its running batches hand
    their messages on (dispatch.sending.run_batch)."""
    return f"{PREFIX}:worker:{hostname}:stopping"


def worker_alive_key(hostname: str) -> str:
    """When the Celery worker ``hostname`` last took its canary task (dispatch.worker_health)."""
    return f"{PREFIX}:worker:{hostname}:consumed_at"


def callback_seen_key(provider: str, digest: str) -> str:
    """String with a TTL: the callback event ``digest`` of ``provider`` was applied."""
    return f"{PREFIX}:callbacks:seen:{provider}:{digest}"


def callback_bits_key(campaign_id: str, counter: str) -> str:
    """Bitmap by seq: the messages already counted in a callback counter (``delivered``)."""
    return f"{PREFIX}:campaign:{campaign_id}:callbacks:{counter}"


def eviction_problem(client: redis.Redis) -> str | None:
    """What is wrong with the Redis's ``maxmemory-policy``, or None when it is
    ``noeviction`` (or cannot be read: a Redis that refuses both INFO and CONFIG).

    Redis is the system of record: an evicted ledger record reads as "still queued" and
    its message would be sent again, an evicted lease or dedupe key lets a batch or a
    callback run twice. Every other policy evicts some of them under memory pressure.

    Read from ``INFO memory`` (as /metrics reads it), else CONFIG: the managed Redis
    services refuse CONFIG but answer INFO, and their default policy is volatile-lru
    (ElastiCache, Memorystore, Azure Cache), which evicts leases, dedupe keys, paces and
    quotas: a check by CONFIG alone never warned there.
    """
    try:
        policy = str(client.info("memory").get("maxmemory_policy", ""))
    except redis.ResponseError:  # INFO refused: CONFIG may still answer
        policy = ""
    if not policy:
        try:
            policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
        except redis.ResponseError:
            return None
    if policy in ("", "noeviction"):
        return None
    return (
        f"Redis maxmemory-policy is {policy}: under memory pressure Redis would drop "
        "dispatch's records and messages could be sent twice; set maxmemory-policy "
        "noeviction (and give Redis the memory the README's Redis memory section plans)"
    )


def durability_problem(client: redis.Redis) -> str | None:
    """What is wrong with how the Redis keeps its data, or None when it writes an
    append-only file (or is the embedded Redis of ``dispatch up`` and the demo, which
    keeps nothing by design, or cannot be read).

    Redis is the system of record: without an AOF (Debian's and most packages' default
    ``redis.conf`` only snapshots now and then) a restart or a failover loses the ledger
    of the campaigns in flight and the callbacks already answered, and a campaign posted
    again would be sent to every recipient again (review E23: a SIGKILL 740 sends into a
    campaign left no trace of it).
    """
    try:
        if str(client.info("persistence").get("aof_enabled", "1")) != "0":
            return None
    except redis.ResponseError:
        return None
    try:  # the embedded server's folder, and it saves no snapshot (RedisServer's --save "")
        folder = str(client.config_get("dir").get("dir", ""))
        snapshots = str(client.config_get("save").get("save", ""))
    except redis.ResponseError:  # managed Redis refuses CONFIG
        folder = snapshots = ""
    # (a folder's name alone is an operator's too: /var/lib/dispatch-redis-replica1)
    if not snapshots and EMBEDDED_DIR_NAME.fullmatch(os.path.basename(folder.rstrip("/"))):
        return None
    return (
        "Redis keeps no append-only file (appendonly no): a restart or failover loses the "
        "records of campaigns in flight and of callbacks already answered, and messages "
        "could be sent twice; run Redis with appendonly yes (README: Operations)"
    )


def redis_problems(client: redis.Redis) -> list[str]:
    """What the API and every worker warn about at start: how the Redis would lose data."""
    found = (eviction_problem(client), durability_problem(client))
    return [problem for problem in found if problem]


_sync_client: redis.Redis | None = None


def redis_time(r: redis.Redis) -> float:
    """Redis's clock (the Unix time of its host), as the ledger's scripts read it."""
    seconds, micros = r.time()
    return float(seconds) + micros / 1e6


# After a failover that moves the Redis URL's name to the new primary (a DNS name, a
# proxy, a managed service's endpoint), a connection still open to the old primary, now
# a replica, answers every write READONLY, and redis-py keeps it: the API answered 503
# and every batch failed until the process restarted. Such a connection is closed and
# the command sent once more on a new one, which reaches the new primary. Safe to send
# again: a replica refuses a write before doing any (a script raises at its first write,
# a transaction is aborted whole). Only READONLY: a command whose connection broke may
# have run (a ledger script sent twice would find its own claims taken), so those still
# raise at once, as before.
def reconnect_on_readonly() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(redis.ReadOnlyError,))


def _reconnect_on_readonly_async() -> AsyncRetry:
    return AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ReadOnlyError,))


# redis-py 8 turns its maintenance notifications (a managed service's push messages
# before it moves a shard) on by itself with RESP3 ("auto"), and its asyncio pool then
# hands out a pooled connection without checking that the server has not closed it:
# after Redis's idle ``timeout`` (common on managed services) an asyncio client's next
# command failed, "Connection closed by server" (a worker's batches did not meet it in a
# test, for reasons not found; a client kept across a quiet spell did, asyncio's loop or
# uvloop's). dispatch uses none of them; off, the pool checks each connection again.
_NO_MAINT_NOTIFICATIONS = MaintNotificationsConfig(enabled=False)


def sync_client() -> redis.Redis:
    """A shared synchronous client (API, CLI, Celery task glue)."""
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(
            ensure_redis_url(),
            decode_responses=True,
            retry=reconnect_on_readonly(),
            maint_notifications_config=_NO_MAINT_NOTIFICATIONS,
        )
    return _sync_client


def async_client() -> aioredis.Redis:
    """A new asyncio client; bind it to one event loop and close it with that loop."""
    return aioredis.Redis.from_url(
        ensure_redis_url(),
        decode_responses=True,
        retry=_reconnect_on_readonly_async(),
        maint_notifications_config=_NO_MAINT_NOTIFICATIONS,
    )


def reset_clients() -> None:
    """Forget cached clients (tests that start a new Redis, forked workers)."""
    global _sync_client
    _sync_client = None
