"""The Celery application: Redis broker, late acks, small task arguments."""

from __future__ import annotations

import bz2
import contextlib
import gc
import lzma
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import orjson
import redis
from celery import Celery, Task
from celery.exceptions import InvalidTaskError
from celery.signals import setup_logging, task_rejected, worker_init, worker_process_init
from celery.worker import strategy as celery_strategy
from celery.worker.consumer import consumer as celery_consumer
from kombu import compression as kombu_compression
from kombu.exceptions import DecodeError
from kombu.transport import redis as kombu_redis

from dispatch import store
from dispatch.api.body_limits import MAX_API_BODY_BYTES
from dispatch.redis_server import ensure_redis_url
from dispatch.settings import get_settings, task_time_limit

QUEUES = store.CELERY_QUEUES
BEAT_TASK_EXPIRES = 600  # seconds (see beat_schedule)
BROKER_SOCKET_TIMEOUT = 10.0  # seconds a broker command waits for Redis's answer
RESULT_EXPIRES_SECONDS = 86_400  # how long a dispatch.enqueue_campaign result is kept
# A task's body is decoded whole in the worker's main process, and again in the process
# that runs it (measured, dispatch.enqueue_campaign with a million recipients, a 70 MB
# body: about 1.1 GB more in each): a larger one is refused unread, as the API refuses
# a larger request (the same cap); big lists are appended to a draft, streamed.
MAX_TASK_BODY_BYTES = MAX_API_BODY_BYTES


def default_worker_processes() -> int:
    """Worker processes when none are asked for: two per core this process may run on
    (its CPU affinity: a container's cpuset, not the host's count)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 2 * max(1, cores)


def celery_redis_url(url: str) -> str:
    """``DISPATCH_REDIS_URL`` as Celery's broker and result backend read it: the same
    Redis, database and certificate checks as dispatch's own clients (redis-py's
    ``from_url``).

    - ``unix:///path?db=N`` (user and password in the URL or in its query, as redis-py
      reads them): kombu and Celery know no ``unix`` scheme (every worker, ``beat`` and
      the API's enqueues failed with "No such transport: unix"); theirs is
      ``redis+socket:///path?virtual_host=N``. Other query options are redis-py's alone.
    - ``rediss://`` without ``ssl_cert_reqs``: redis-py checks the server's certificate
      against the system's CAs, but kombu then checked nothing (``CERT_NONE``, with a
      warning: the broker's traffic open to whoever sits between) and Celery's result
      backend refused the URL (the worker ended at start); both are asked to check it.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "rediss" and "ssl_cert_reqs" not in query:
        return parts._replace(
            query="&".join(filter(None, (parts.query, "ssl_cert_reqs=required")))
        ).geturl()
    if parts.scheme != "unix":
        return url
    user = unquote(parts.username or "") or query.get("username", "")
    password = unquote(parts.password or "") or query.get("password", "")
    login = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    vhost = urlencode({"virtual_host": query.get("db", "0")})
    return f"redis+socket://{login + '@' if login else ''}{parts.path}?{vhost}"


class _Config:
    """Celery settings, read when Celery first needs them (not at import).

    Importing task modules must not start an embedded Redis or freeze the settings:
    tests and ``dispatch demo`` decide on the Redis URL after import.
    """

    task_default_queue = "default"
    task_routes: ClassVar[dict[str, dict[str, str]]] = {
        "dispatch.send_batch": {"queue": "sends"},
        "dispatch.process_callback": {"queue": "events"},
    }
    # A batch is acknowledged only when done; the ledger makes redelivery harmless.
    task_acks_late = True
    task_reject_on_worker_lost = True
    # Two processes per core: a batch waits on Redis and on the provider for about half
    # its time, so one process per core leaves cores idle (measured with bench.http_e2e:
    # 1 million messages on 2 cores, 43,000 msg/s with 2 processes, 50,000 with 4).
    # ``dispatch worker --concurrency N`` sets it.
    worker_concurrency = default_worker_processes()
    task_ignore_result = True  # but dispatch.enqueue_campaign's (its caller may ask)
    result_expires = RESULT_EXPIRES_SECONDS
    task_serializer = "json"
    accept_content = ("json",)
    broker_connection_retry_on_startup = True
    # Redis out of memory (noeviction) or read-only after a failover answers the broker's
    # writes (an ack, a queue declaration) with an error reply, not a broken connection:
    # Celery would end the worker on it ("Unrecoverable error"). Retried like a lost
    # connection, the worker waits and goes on once Redis accepts writes again.
    broker_channel_error_retry = True
    # Task events cost the workers' main process about 1 ms a task; Flower turns them on
    # in every worker while it runs (its enable_events option, on by default), so they
    # are sent while something watches. task-sent comes from the caller: always on.
    worker_send_task_events = False
    # Each worker also consumes its own queue: its canary arrives there (worker_health).
    worker_direct = True
    task_send_sent_event = True
    # Each beat task expires unrun after BEAT_TASK_EXPIRES: with no worker running, beat
    # still sends about 22 a minute, and a weekend's (about 60,000, 1.5 KB each in
    # Redis) would wait for the workers' return, ahead of the campaigns sent then. The
    # next run of each comes within its period anyway.
    # Beat answers a ping as ``celerybeat@<host>`` while its scheduler ticks (Celery
    # 5.7; silent once a pass is this late): ``dispatch health --beat``, its compose
    # healthcheck. It ticks at least every 5 s (release-scheduled's period).
    beat_enable_remote_control = True
    beat_remote_control_max_tick_age = 120.0
    beat_schedule: ClassVar[dict[str, dict[str, object]]] = {
        name: {"task": task, "schedule": every, "options": {"expires": BEAT_TASK_EXPIRES}}
        for name, task, every in (
            ("release-scheduled", "dispatch.release_scheduled", 5.0),
            ("recover-callbacks", "dispatch.recover_callbacks", 30.0),
            ("expire-campaigns", "dispatch.expire_campaigns", 10.0),
            ("housekeeping", "dispatch.housekeeping", 30.0),
            ("purge-finished", "dispatch.purge_finished", 3600.0),
        )
    }

    @property
    def broker_url(self) -> str:
        return celery_redis_url(ensure_redis_url())

    @property
    def result_backend(self) -> str:
        from dispatch.result_backend import backend_url

        return backend_url(celery_redis_url(ensure_redis_url()))

    @property
    def broker_transport_options(self) -> dict[str, object]:
        return {
            "visibility_timeout": get_settings().visibility_timeout,
            # Ten priorities (kombu's default is four): batch tasks carry their place in
            # their campaign (store.batch_priority), so campaigns share the workers.
            **store.PRIORITY_OPTIONS,
            # kombu waits forever on a Redis that stops answering without closing the
            # connection (frozen, failover, a dropped NAT entry): a publish, and a
            # stopping worker's queue clean-up, would hang until the supervisor's kill.
            # dispatch's own clients time out after redis-py's 5 s.
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT,
        }

    @property
    def worker_prefetch_multiplier(self) -> int:
        # A few tasks reserved per process: the next batch is at hand when one ends (about
        # 3 ms a batch saved against 1; bench.http_e2e and bench.smtp_e2e 2-3 % faster).
        # Reserved tasks are unacknowledged: a dead worker's come back after the
        # visibility timeout, and the ledger makes running them twice harmless. But a
        # campaign created behind a paced one waits for them too (DISPATCH_WORKER_PREFETCH).
        return get_settings().worker_prefetch

    @property
    def task_time_limit(self) -> int:
        # Stay well inside the visibility timeout (PITFALLS: no real acks on Redis).
        return task_time_limit(get_settings().visibility_timeout)

    @property
    def task_soft_time_limit(self) -> int:
        return task_time_limit(get_settings().visibility_timeout) - 30


def _closed_transport_is_a_connection_error() -> None:
    """Keep a worker alive when Redis goes away while it holds unacknowledged tasks.

    On a lost broker connection Celery (5.7) first lets the connection's transport go
    (``Connection.collect``), then closes the connection, whose channel tries to give its
    unacknowledged tasks back to Redis through that released transport. kombu (5.7) then
    reads the URL of a transport that is gone and raises ``AttributeError``, which is no
    connection error: Celery ends the whole worker ("Unrecoverable error", exit status 0,
    so a supervisor that restarts on failure leaves no worker). Raised as the connection
    error it is, it is ignored like the others and the worker reconnects; the tasks stay
    in Redis's unacked set (a batch is also found again by housekeeping).
    """
    channel = kombu_redis.Channel
    connparams = channel._connparams  # type: ignore[attr-defined]
    if getattr(connparams, "_dispatch_guard", False):
        return

    def guarded(self: kombu_redis.Channel, asynchronous: bool = False) -> dict[str, object]:
        # (a channel its connection closed has none: a producer kept in a worker
        # process's pool publishes on it after Redis broke its connection)
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed")
        params: dict[str, object] = connparams(self, asynchronous=asynchronous)
        return params

    guarded._dispatch_guard = True  # type: ignore[attr-defined]
    channel._connparams = guarded  # type: ignore[attr-defined]


def _one_client_per_channel() -> None:
    """Build a channel's Redis client once per connection pool, not for every command.

    kombu (5.7) builds a new ``redis.Redis`` on the channel's pool for each unacknowledged
    message it records and each acknowledgement (``QoS.append``, ``QoS.ack``), for each
    restore of unacknowledged messages, and for each message published outside a batch;
    redis-py 8.1 builds about 170 response callbacks into each (about 100-150 us), twice
    a task in a worker's main process. The client holds no connection of its own (each
    command takes one from the pool, as before), so the channel keeps it while its pool
    lasts; a closed channel has no pool, and asking for one still raises (the guard of
    _closed_transport_is_a_connection_error).
    """
    channel = kombu_redis.Channel
    if getattr(channel.conn_or_acquire, "_dispatch_guard", False):
        return

    @contextlib.contextmanager
    def conn_or_acquire(self: kombu_redis.Channel, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        kept = self.__dict__.get("_dispatch_client")
        if kept is None or kept.connection_pool is not self._pool:  # type: ignore[attr-defined]
            kept = self._create_client()  # type: ignore[attr-defined]  # (a new pool first)
            self.__dict__["_dispatch_client"] = kept
        yield kept

    conn_or_acquire._dispatch_guard = True  # type: ignore[attr-defined]
    channel.conn_or_acquire = conn_or_acquire  # type: ignore[method-assign]


def _bodies_not_logged() -> None:
    """Celery's worker logs up to 1 KB of a message it cannot use (a task sent pickled, an
    unknown or malformed task message): for ``dispatch.enqueue_campaign`` that is a
    campaign, recipients' addresses and vars among it, and logs hold no message bodies
    (DESIGN section 8). Its size is logged instead; the headers (task name and id) stay.
    A body that is not the UTF-8 it claims (a client writing Latin-1) fails to decode
    with a ``UnicodeDecodeError``, whose repr, in the line Celery logs, holds the whole
    body: the error is logged by its text instead (the encoding, the byte's position).
    """

    def size_only(m: Any, body: Any) -> str:  # Celery's dump_body(m, body)
        return f"(body of {len(m.body or b'')} bytes, not logged)"

    celery_consumer.dump_body = size_only
    consumer = celery_consumer.Consumer
    on_decode_error = consumer.on_decode_error
    if getattr(on_decode_error, "_dispatch_guard", False):
        return

    def text_only(self: celery_consumer.Consumer, message: Any, exc: Exception) -> None:
        # (a compressed body over the cap keeps its own refusal: _decompression_bounded)
        error = exc if isinstance(exc, TaskBodyTooLargeError) else DecodeError(str(exc))
        on_decode_error(self, message, error)
        # Told like a message refused unread (Celery tells nobody): a caller waiting
        # for the task's result is answered (tasks._answer_a_message_refused_unread).
        task_rejected.send(sender=self, message=message, exc=error)

    text_only._dispatch_guard = True  # type: ignore[attr-defined]
    consumer.on_decode_error = text_only  # type: ignore[method-assign]


def malformed_body(payload: Any) -> str:
    """What is wrong with a task message's decoded body, or "" when Celery can read it:
    ``[args, kwargs, embed]`` (protocol 2), or a mapping with ``args`` (protocol 1, and
    the hybrid of the two, which Celery checks itself)."""
    if isinstance(payload, dict):
        return "" if "args" in payload else "an object without 'args'"
    if isinstance(payload, list | tuple):
        if len(payload) != 3:
            return f"an array of {len(payload)} items"
        # (args and kwargs of another type fail the task, as Celery makes them)
        if payload[2] is not None and not isinstance(payload[2], dict):
            return "an array whose third item (embed) is not an object"
        return ""
    if payload is None or isinstance(payload, bool):
        return orjson.dumps(payload).decode()
    named = {str: "a string", int: "a number", float: "a number"}
    return named.get(type(payload), f"a {type(payload).__name__}")


class TaskBodyTooLargeError(InvalidTaskError):
    """A task message whose body is over :data:`MAX_TASK_BODY_BYTES` (never decoded);
    ``compressed``: ``size`` is the body as sent, over the cap once decompressed (it
    was decompressed no further)."""

    def __init__(self, size: int, compressed: bool = False) -> None:
        self.size = size
        self.compressed = compressed
        super().__init__(
            f"the message's body is {self.described}, over the {MAX_TASK_BODY_BYTES} bytes "
            "a task's body may be (not read)"
        )

    @property
    def described(self) -> str:
        """The body's size, as the refusals name it."""
        return f"{self.size} bytes" + (" compressed, once decompressed" if self.compressed else "")


# kombu's own compressions (Celery's ``compression=`` or ``task_compression``), as kombu
# registers them: the content type, its encoder, a decompressor of one stream.
_COMPRESSIONS: tuple[tuple[str, Callable[[bytes], bytes], Callable[[], Any]], ...] = (
    ("application/x-gzip", zlib.compress, zlib.decompressobj),  # (zlib's, whatever its name)
    ("application/x-bz2", bz2.compress, bz2.BZ2Decompressor),
    ("application/x-lzma", lzma.compress, lzma.LZMADecompressor),
)


def _decompression_bounded() -> None:
    """Decompress a compressed task message's body no further than the cap on a body.

    kombu (5.7) decompresses a body as it builds the message, in the worker's main
    process, before any task's strategy sees its size (:func:`guarded_strategy`): a
    400 KB message sent with ``compression="gzip"`` took the worker's main process to
    900 MB before it was refused by its size, and a few MB more could get the worker
    killed (and the message, back in its queue, the next worker too). Decompressed up
    to the cap, a body over it is refused with :class:`TaskBodyTooLargeError` (kombu
    hands the error to the consumer's ``on_decode_error``: _bodies_not_logged).
    """
    for content_type, encoder, decompressor in _COMPRESSIONS:
        if getattr(kombu_compression.get_decoder(content_type), "_dispatch_guard", False):
            continue

        def bounded(body: bytes, decompressor: Callable[[], Any] = decompressor) -> bytes:
            stream = decompressor()
            data: bytes = stream.decompress(body, MAX_TASK_BODY_BYTES + 1)
            if len(data) > MAX_TASK_BODY_BYTES:
                raise TaskBodyTooLargeError(len(body), compressed=True)
            if not stream.eof:
                raise DecodeError("the compressed body is incomplete or truncated")
            return data

        bounded._dispatch_guard = True  # type: ignore[attr-defined]
        kombu_compression.register(encoder, bounded, content_type)


def guarded_strategy(task: Task[Any, Any], app: Celery, consumer: Any, **options: Any) -> Any:
    """Celery's strategy for a task's messages, refusing a body too large or of another
    shape first.

    A body over :data:`MAX_TASK_BODY_BYTES` is refused by its size before anything
    decodes it: decoded, it could take more memory than the worker has, and a worker
    killed for it would leave the message in its queue for the next one.

    Celery (5.7) unpacks a protocol 2 body as ``args, kwargs, embed`` in the worker's
    consumer: a body of another shape (a campaign sent as the whole body by a hand-made
    client, ``null``, two items) raised ``ValueError`` or ``TypeError`` there, an
    "Unrecoverable error" that ended the worker, and the message, back in its queue,
    ended each worker that took it next. Refused as an invalid task message, it is
    logged (its size, not its body) and dropped, and the worker goes on.
    """
    handler = celery_strategy.default(task, app, consumer, **options)

    def task_message_handler(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        size = len(message.body or b"")
        if size > MAX_TASK_BODY_BYTES:
            raise TaskBodyTooLargeError(size)
        if body is None:  # protocol 2: decoded here (and kept for the request)
            problem = malformed_body(message.payload)
            if problem:
                raise InvalidTaskError(
                    f"the message's body is {problem}, not [args, kwargs, embed]"
                )
        return handler(message, body, *args, **kwargs)

    return task_message_handler


class DispatchTask(Task[Any, Any]):
    """Every dispatch task: its messages go through :func:`guarded_strategy`."""

    Strategy = f"{__name__}:guarded_strategy"


def make_app() -> Celery[DispatchTask]:
    app = Celery("dispatch", include=["dispatch.tasks"], task_cls=DispatchTask)
    app.config_from_object(_Config())
    return app


_closed_transport_is_a_connection_error()
_one_client_per_channel()
_bodies_not_logged()
_decompression_bounded()
app = make_app()


@setup_logging.connect
def _json_logs(loglevel: int | str | None = None, **_: object) -> None:
    """Workers and beat log JSON lines like the API (Celery's own setup is skipped)."""
    from dispatch.logs import configure

    settings = get_settings()
    configure(loglevel or settings.log_level, addresses=settings.log_addresses)


@worker_init.connect
def _worker_init(**_: object) -> None:
    """Once, in the worker's main process before it forks its pool: what every process
    sends with is loaded here, so that the processes share those pages (copy-on-write)
    instead of each loading its own, and frozen out of the garbage collector's reach, so
    that collections in the processes do not write to them (Python's advice for a parent
    that forks)."""
    import providers.http
    import providers.smtp  # noqa: F401
    from providers.tls import preload

    preload()  # the CA bundles (about 25 ms each)
    # httpx's connections import anyio's asyncio backend on their first request (about
    # 20 ms a process otherwise, inside the first batch).
    import anyio._backends._asyncio  # noqa: F401

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    _warn_of_waits_past_the_time_limit()
    _warn_of_an_unset_public_url()
    gc.collect()
    gc.freeze()


def _warn_of_waits_past_the_time_limit() -> None:
    """Log the stored providers whose waits for answers outlast this worker's batch runs
    (settings.wait_problem): their late answers are cut short, the messages awaiting one
    unknown (those not yet handed over wait again)."""
    import logging

    from dispatch.provider_store import providers_past_time_limit

    try:
        found = providers_past_time_limit()
    except Exception:  # Redis not there yet: the worker starts all the same
        return
    for warning in found:
        logging.getLogger(__name__).warning("%s", warning)


def _warn_of_an_unset_public_url() -> None:
    """Log that ``DISPATCH_PUBLIC_URL`` is not set: the workers write the links of every
    message (unsubscribe, preferences) on it, and its default is a loopback address no
    recipient reaches. ``dispatch api`` says so at its start; a worker, which sends the
    mail, said nothing (given only the Redis URL and the key, as the README's Procfile
    paragraph asked)."""
    import logging

    settings = get_settings()
    if "public_url" not in settings.model_fields_set:
        logging.getLogger(__name__).warning(
            "DISPATCH_PUBLIC_URL is not set: the unsubscribe and preference links in "
            "messages point at %s; set it in every process",
            settings.public_url,
        )


@worker_process_init.connect
def _worker_process_init(**_: object) -> None:
    """Forked worker processes must not share the parent's Redis sockets.

    Everything loaded so far (Celery, pydantic, the providers) lives as long as the
    process: it leaves the garbage collector's generations (gc.freeze), which then only
    walks what batches create. Measured: about 10 % less worker CPU per message.
    """
    store.reset_clients()
    gc.collect()
    gc.freeze()
