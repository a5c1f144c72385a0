"""The ``dispatch`` command line (DESIGN §8)."""

from __future__ import annotations

import argparse
import codecs
import functools
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import redis
import yaml

from dispatch.progress import ProgressBar

if TYPE_CHECKING:
    from dispatch.models import CampaignRequest


class CommandError(Exception):
    """What the user asked for cannot be done; the message says why (exit status 2)."""


# Byte order marks a Windows editor or shell may put first (PowerShell 5 writes UTF-16).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


# libyaml's loader when PyYAML has it: 100,000 recipients load in 8 s instead of 34.
try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]
_TWICE = "only the last would count"


class _YamlLoader(_SafeLoader):
    """The safe loader, refusing a key given twice in one mapping: YAML's loaders keep the
    last silently (a second ``recipients:`` dropped the people of the first)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()  # the mapping nodes looked at (alive all the load)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Looked at before its merge keys (``<<``) put the keys they bring in its place:
        # overriding those is their use. Each node once, when first flattened: a merge
        # into another mapping may flatten it before its own construction does (an
        # anchored mapping with a merge key, nested, then merged elsewhere), and its keys
        # then include the ones merged in.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._refuse_twice(node)
        super().flatten_mapping(node)

    def _refuse_twice(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)  # (kept: the base reuses it)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base refuses it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    f"while constructing a mapping (key {key!r} first on line {first.line + 1})",
                    node.start_mark,
                    f"found key {key!r} again: {_TWICE}",
                    key_node.start_mark,
                )


class _DuplicateKeyError(ValueError):
    """A JSON object names a key twice (json keeps the last silently)."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; raises :class:`_DuplicateKeyError` for a key
    given twice."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKeyError(f"key {key!r} given twice in one object: {_TWICE}")
        data[key] = value
    return data


def _decode(raw: bytes, path: str) -> str:
    """The text of a file: UTF-8 whatever the locale, or UTF-16/32 after their byte order
    mark; raises :class:`CommandError` naming the line of a byte that is not UTF-8."""
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        name = encoding.upper().removesuffix("-SIG")
        raise CommandError(
            f"{path}: not {name} text (byte 0x{raw[exc.start]:02x} on line {line}); save it "
            "as UTF-8"
        ) from exc


def _load_file(path: str) -> Any:
    """A YAML or JSON document from ``path`` (``-`` for standard input); raises
    :class:`CommandError` when it cannot be read or parsed. A ``.json`` file is JSON; any
    other that starts as JSON does (``jq ... | dispatch send -``) is read as JSON when it
    is (YAML misreads JSON's tab indents, ``\\ud83d\\ude00`` escapes and ``1e3``)."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: cannot read it: {exc}") from exc
    text = _decode(raw, path)
    is_json = path.lower().endswith(".json")
    if not is_json and text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text, object_pairs_hook=_json_object)
        except _DuplicateKeyError as exc:
            raise CommandError(f"{path}: not valid JSON: {exc}") from exc
        except ValueError:
            pass  # a YAML flow mapping or sequence
    try:
        if is_json:
            return json.loads(text, object_pairs_hook=_json_object)
        return yaml.load(text, Loader=_YamlLoader)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if is_json else "YAML"
        raise CommandError(f"{path}: not valid {kind}: {exc}") from exc


def _text(raw: BinaryIO) -> io.TextIOWrapper:
    """``raw`` as text read as it comes, as :func:`_decode` reads a whole file: UTF-8
    whatever the locale, or UTF-16/32 after their byte order mark (an Excel "CSV UTF-8"
    export starts with one: its first address was refused as holding U+FEFF). In UTF-8 a
    byte that is not is read as a lone surrogate (U+DC80 to U+DCFF, :data:`_UNDECODED`),
    for its line to be named (:func:`_undecoded`); UTF-16/32 raise at it."""
    start = raw.peek(4)[:4] if isinstance(raw, io.BufferedReader) else b""
    encoding = next((name for bom, name in _BOMS if start.startswith(bom)), "utf-8")
    errors = "surrogateescape" if encoding.startswith("utf-8") else "strict"
    return io.TextIOWrapper(raw, encoding=encoding, errors=errors)


# What "surrogateescape" reads a byte that is not UTF-8 as (a real character never is).
_UNDECODED = re.compile("[\udc80-\udcff]")


def _undecoded(line: str) -> str | None:
    """Why ``line`` (as :func:`_text` read it) is not text, or None when it is."""
    found = _UNDECODED.search(line)
    if found is None:
        return None
    return f"not UTF-8 text (byte 0x{ord(found[0]) - 0xDC00:02x}); save it as UTF-8"


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _validation_message(exc: Exception, kind: object = None) -> str:
    """Every problem of ``exc``, each as ``field: message``, named as the API names them
    (``max_connections``, not the provider union's ``smtp.max_connections``; ``kind`` for
    an unknown kind, not ``body``; no pydantic ``Value error,`` prefix)."""
    from pydantic import ValidationError

    from dispatch.campaign_checks import validation_problems

    if isinstance(exc, ValidationError):
        tag = (kind,) if isinstance(kind, str) and kind else ()
        problems = validation_problems(exc.errors(), drop_prefix=tag)
        return "; ".join(f"{field}: {message}" for field, message in problems)
    field = getattr(exc, "field", "")  # a CampaignError's: named first, as the API's detail
    if field and not str(exc).startswith(f"{field}: "):
        return f"{field}: {exc}"
    return str(exc)


# -- verbs -------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from dispatch.demo import DemoError, run_demo

    # SIGTERM (`timeout`, a supervisor) stops it as Ctrl-C does: by default it would end
    # this process at once, leaving its embedded Redis (in a session of its own) running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run_demo(recipients=args.recipients, as_json=args.json, workers=args.concurrency)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _default_public_url(host: str, port: int) -> None:
    """Without ``DISPATCH_PUBLIC_URL``, the links in messages (unsubscribe, preferences)
    and the callback URLs of ``up``'s processes point at the API it serves, not at port
    8000 (the processes of ``up`` inherit it; ``up`` records it for the other commands)."""
    from dispatch.settings import get_settings

    if "public_url" in get_settings().model_fields_set:
        return
    os.environ["DISPATCH_PUBLIC_URL"] = _local_url(host, port)
    get_settings.cache_clear()


def _check_port(host: str, port: int) -> None:
    """Raise :class:`CommandError` when ``host:port`` is taken, before anything starts
    (uvicorn would fail to bind it, and ``up`` would try again for half a minute)."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CommandError(f"--host {host}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise CommandError(
                f"cannot serve on {host}:{port}: {exc.strerror} (another `dispatch up` or "
                "`dispatch api`? choose another --port)"
            ) from exc


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _local_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):  # every interface: this machine's loopback reaches it
        host = "127.0.0.1"
    return _url(host, port)


def _warn_public_url(host: str, port: int) -> None:
    """A lone ``api`` cannot give the workers its address: say when the default is wrong."""
    from dispatch.settings import get_settings

    settings = get_settings()
    if "public_url" not in settings.model_fields_set and settings.public_url != _url(host, port):
        print(
            f"warning: DISPATCH_PUBLIC_URL is not set: links in messages and callback URLs "
            f"point at {settings.public_url}, not at this API; set it in every process",
            file=sys.stderr,
        )


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from dispatch.redis_server import ensure_redis_url
    from dispatch.settings import get_settings

    _check_port(args.host, args.port)
    ensure_redis_url()
    _warn_public_url(args.host, args.port)
    if not get_settings().api_tokens:
        print(
            "warning: DISPATCH_API_TOKENS is empty: /v1 is open to anyone who can reach "
            f"{args.host}:{args.port}",
            file=sys.stderr,
        )
    from dispatch.api.server import HeadDeadlineProtocol

    level = get_settings().log_level.lower()
    uvicorn.run(
        "dispatch.api.app:app",
        host=args.host,
        port=args.port,
        log_level=level,
        http=HeadDeadlineProtocol,
    )
    return 0


def _celery(argv: list[str]) -> int:
    """Celery's command line on our app, with its exit status (1 after an "Unrecoverable
    error"), which ``app.start`` drops: a supervisor that restarts on failure must see it."""
    from celery.bin.celery import celery
    from click import ClickException

    try:
        status = celery.main(args=["-A", "dispatch.celery_app", *argv], standalone_mode=False)
    except ClickException as exc:  # an option it refuses (--loglevel LOUD): not a traceback
        raise CommandError(exc.format_message()) from exc
    return status if isinstance(status, int) else 0


def _loglevel(args: argparse.Namespace) -> str:
    """``--loglevel`` if given, else ``DISPATCH_LOG_LEVEL`` (as for the API)."""
    from dispatch.settings import get_settings

    return str(args.loglevel or get_settings().log_level)


def cmd_worker(args: argparse.Namespace) -> int:
    from dispatch import store

    argv = ["worker", "-Q", ",".join(store.CELERY_QUEUES), "--loglevel", _loglevel(args)]
    # A name of its own even beside another worker on this host: what a stopping worker
    # tells its batches is keyed by it (dispatch.tasks), and Flower tells them apart.
    # The pid alone repeats across containers on the host's network (each is pid 1).
    argv += ["--hostname", args.hostname or f"dispatch-{os.getpid()}-{secrets.token_hex(3)}@%h"]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    return _celery(argv)


def cmd_beat(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    # Beat keeps the last run of each schedule in a file, by default in the working
    # folder, which the image's user cannot write (beat then dies at start). Every
    # schedule here is a short interval: a fresh file per run loses nothing.
    folder = tempfile.mkdtemp(prefix="dispatch-beat-")
    try:
        schedule = str(Path(folder) / "celerybeat-schedule")
        return _celery(["beat", "--loglevel", _loglevel(args), "--schedule", schedule])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cmd_up(args: argparse.Namespace) -> int:
    """API, worker and beat in the foreground on one (embedded, if unset) Redis.

    An embedded Redis is recorded for the other commands (``dispatch providers add`` in
    another shell) while this runs; SIGTERM stops it as Ctrl-C does.
    """
    from dispatch.crypto import ensure_secret_key
    from dispatch.redis_server import (
        ensure_redis_url,
        forget_running_up,
        record_running_up,
        running_up,
    )
    from dispatch.settings import get_settings

    _check_port(args.host, args.port)
    generated_key = not get_settings().secret_key.get_secret_value()
    ensure_redis_url()
    ensure_secret_key()
    _default_public_url(args.host, args.port)
    key = get_settings().secret_key.get_secret_value() if generated_key else ""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop
    exe = [sys.executable, "-m", "dispatch.cli"]
    verbs = [["worker"], ["beat"], ["api", "--host", args.host, "--port", str(args.port)]]
    procs: list[subprocess.Popen[bytes]] = []
    status = 0
    running = None
    replaced = running_up()  # another `up` recorded: its record comes back when this stops
    try:
        procs += [subprocess.Popen([*exe, *verb]) for verb in verbs]
        try:
            running = record_running_up(secret_key=key, public_url=get_settings().public_url)
        except OSError as exc:
            print(f"warning: other commands will not find this Redis: {exc}", file=sys.stderr)
        where = "" if running is None else f", embedded Redis at {running.redis_url}"
        print(
            f"dispatch is up: API on http://{args.host}:{args.port}{where} (Ctrl-C stops)",
            file=sys.stderr,
        )
        status = _supervise(procs, [[*exe, *verb] for verb in verbs])
    except KeyboardInterrupt:
        pass
    finally:
        if running is not None:
            forget_running_up(running, replaced)
        for p in procs:
            p.terminate()
        for p in procs:
            try:  # a worker's batches hand their messages back within seconds; a chunk
                p.wait(timeout=STOP_WAIT_SECONDS)  # waiting on its provider may take longer
            except subprocess.TimeoutExpired:
                print(f"dispatch: pid {p.pid} did not stop in time: killed", file=sys.stderr)
                p.kill()
                p.wait()
    return status


# How long ``up`` waits for a process after Ctrl-C before it kills it: a person at a
# terminal waits a minute, not the 11 minutes the compose file gives workers
# (``stop_grace_period``, a provider's late reply to a message's end); a chunk still waiting
# then ends ``unknown``, as the README's Stopping a worker says of a shorter grace period.
STOP_WAIT_SECONDS = 60


QUICK_EXIT_SECONDS = 30  # a process that ran shorter than this exited "at once"
QUICK_EXITS_ALLOWED = 5  # in a row, before ``up`` gives up


def _supervise(procs: list[subprocess.Popen[bytes]], commands: list[list[str]]) -> int:
    """Start again a process of ``up`` that exits (as compose's ``restart`` does): a
    Celery worker can exit when its broker connection breaks, e.g. when Redis restarts.
    Returns 1 when one keeps exiting at once (its log says why), or when the embedded
    Redis exits (the processes would only retry it forever)."""
    from dispatch.redis_server import embedded_exit_code

    started = [time.monotonic()] * len(procs)
    quick = [0] * len(procs)
    while True:
        time.sleep(0.5)
        lost = embedded_exit_code()
        if lost is not None:  # it kept everything in memory: nothing to go on with
            print(
                f"dispatch up: the embedded Redis exited (code {lost}): stopping", file=sys.stderr
            )
            return 1
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code is None:
                continue
            quick[i] = quick[i] + 1 if time.monotonic() - started[i] < QUICK_EXIT_SECONDS else 1
            what = f"dispatch up: the {commands[i][3]} exited (code {code})"
            if quick[i] > QUICK_EXITS_ALLOWED:
                print(f"{what} {quick[i]} times in a row at once: stopping", file=sys.stderr)
                return 1
            print(f"{what}: starting it again", file=sys.stderr)
            time.sleep(min(2 ** (quick[i] - 1), 10))  # 1, 2, 4, 8, 10 s: no tight loop
            procs[i] = subprocess.Popen(commands[i])
            started[i] = time.monotonic()


def cmd_send(args: argparse.Namespace) -> int:
    from dispatch import campaigns
    from dispatch.models import campaign_request

    if (args.seq is not None or args.allow_suppressed) and not args.test:
        # Without --test this would create and start the whole campaign.
        option = "--seq" if args.seq is not None else "--allow-suppressed"
        raise CommandError(f"{option} goes with --test ADDR (one recipient's message to ADDR)")
    data = _load_file(args.file)
    if not isinstance(data, dict):
        raise CommandError(f"{args.file}: must hold a campaign (a mapping of its fields)")
    try:
        request = campaign_request(data)
        if args.test:
            return _send_test(request, args.test, args.seq or 0, args.allow_suppressed)
        campaign_id, created = campaigns.create_campaign(request)
    except campaigns.CampaignConflictError as exc:
        print(
            f"error: {exc}: an edited campaign needs a new id (the same file again is a repeat)",
            file=sys.stderr,
        )
        return 2
    except (ValueError, campaigns.CampaignError) as exc:
        print(f"error: {_validation_message(exc)}", file=sys.stderr)
        return 2
    print(campaign_id)
    if not created:
        print("(already existed with the same content: nothing changed)", file=sys.stderr)
    _say_if_waiting(campaign_id)
    if args.follow:
        return follow(campaign_id)
    return 0


def _say_if_waiting(campaign_id: str) -> None:
    """A campaign that does not send yet says why (a bare id looked like a started one)."""
    from dispatch import campaign_reads
    from dispatch.models import CampaignStatus

    status = campaign_reads.get_status(campaign_id)
    if status is CampaignStatus.SCHEDULED:
        print(f"(scheduled: starts at {_in_words(campaign_id)})", file=sys.stderr)
    elif status is CampaignStatus.DRAFT:
        print(
            f"(a draft: append its recipients with POST /v1/campaigns/{campaign_id}/recipients, "
            f"then POST /v1/campaigns/{campaign_id}/start)",
            file=sys.stderr,
        )


def _send_test(request: CampaignRequest, to: str, seq: int, allow_suppressed: bool) -> int:
    """Recipient ``seq``'s message of the file's campaign, to ``to`` alone; the campaign
    is not created. 0 if the provider took it; 2, nothing sent, for a suppressed ``to``
    (unless ``allow_suppressed``)."""
    import asyncio

    from dispatch.campaign_checks import check_amp_has_html, check_campaign, check_not_expired
    from dispatch.campaign_test import send_campaign_test
    from dispatch.provider_store import ProviderNotFoundError, load_provider
    from dispatch.test_email import SuppressedTestAddressError
    from providers.addresses import InvalidAddressError, normalize_address

    try:
        address = normalize_address(to)
        config = load_provider(request.provider)
    except InvalidAddressError as exc:
        print(f"error: --test: {exc}", file=sys.stderr)
        return 2
    except ProviderNotFoundError:
        print(f"error: no provider {request.provider!r}", file=sys.stderr)
        return 2
    people = request.recipients
    if not 0 <= seq < max(len(people), 1):
        which = f"0 to {len(people) - 1}" if len(people) > 1 else "0"
        print(
            f"error: --seq {seq}: the file has {len(people)} recipient(s): give {which}",
            file=sys.stderr,
        )
        return 2
    # What the campaign would be refused for, the test is too: a test that went out
    # before the campaign could not be created was no test of it.
    content = check_campaign(request, config, request.id or "file")
    check_amp_has_html(request)
    check_not_expired(content, time.time())
    recipient: Mapping[str, Any] = people[seq] if people else {}
    try:
        result = asyncio.run(
            send_campaign_test(
                content, config, address, recipient, seq, allow_suppressed=allow_suppressed
            )
        )
    except SuppressedTestAddressError as exc:
        print(f"error: --test: {exc}", file=sys.stderr)
        return 2
    _print({"ok": result.ok, "error": result.error, "detail": result.detail})
    return 0 if result.ok else 1


FOLLOW_OUTAGE_SECONDS = 300.0  # a --follow waits this long for its Redis to come back
# A --follow of a cancelled (or expired) campaign waits for its unsent messages to settle
# while their count still falls this often: a big campaign's cancel answers at once and a
# worker settles them right after (lifecycle.INLINE_SETTLE_LIMIT), a few seconds for
# 300,000. With no worker to do it, the follow stops after this long.
FOLLOW_SETTLE_SECONDS = 60.0


def follow(campaign_id: str, interval: float = 0.5) -> int:
    """A live progress bar until the campaign stops running; 0 if it completed and sent
    (or suppressed) its messages, 1 if it stopped with messages unsent or sent none.

    Once the campaign was read, Redis unreachable (a restart, a failover) is waited for
    up to :data:`FOLLOW_OUTAGE_SECONDS`, saying so: the sending goes on meanwhile."""
    from dispatch import campaign_reads

    bar = ProgressBar(label=campaign_id)
    outage_since: float | None = None
    settling = (0, 0.0)  # an ended campaign's queued count, and when it last fell
    try:
        while True:
            try:
                summary = campaign_reads.campaign_summary(campaign_id)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if bar.shown == 0:  # never reached: say so at once, as other commands do
                    raise
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since >= FOLLOW_OUTAGE_SECONDS:
                    bar.close()
                    raise redis.ConnectionError(
                        f"unreachable for {FOLLOW_OUTAGE_SECONDS:.0f} s while following "
                        f"campaign {campaign_id!r} (it may still be sending): {exc}"
                    ) from exc
                bar.note(f"Redis unreachable, trying again ({exc})")
                time.sleep(interval)
                continue
            outage_since = None
            done = summary["total"] - summary["queued"]
            bar.update(done, summary["total"], _follow_note(campaign_id, summary))
            if _settling(summary):
                if not settling[0] or summary["queued"] < settling[0]:
                    settling = (summary["queued"], time.monotonic())
                if time.monotonic() - settling[1] < FOLLOW_SETTLE_SECONDS:
                    time.sleep(interval)
                    continue
            if summary["status"] not in ("running", "scheduled"):
                bar.close()
                _print(summary)
                # (a cancel or the expiry settles what was unsent: queued alone is 0)
                unsent = sum(summary.get(s, 0) for s in ("queued", "cancelled", "expired"))
                if summary["status"] == "draft" and unsent == 0:  # not "0/0 100%", exit 0
                    print(
                        f"campaign {campaign_id!r} is draft: it has no recipients yet (append "
                        f"them, then POST /v1/campaigns/{campaign_id}/start)",
                        file=sys.stderr,
                    )
                    return 1
                if unsent == 0:
                    return _none_sent(campaign_id, summary)
                said = summary.get("reason") not in ("", None, summary["status"])
                reason = f" ({summary['reason']})" if said else ""  # not "cancelled (cancelled)"
                left = (
                    f" ({summary['queued']} still counted queued: a worker settles them "
                    f"{summary['status']})"
                    if _settling(summary)
                    else ""
                )
                print(
                    f"campaign {campaign_id!r} is {summary['status']}{reason}: "
                    f"{unsent} messages not sent{left}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(interval)
    except KeyboardInterrupt:  # Ctrl-C stops the watching, not the sending
        print(
            f"\nstopped following: campaign {campaign_id!r} goes on (`dispatch status "
            f"{campaign_id} --follow` to watch it again; POST /v1/campaigns/{campaign_id}/pause "
            "or /cancel to stop it)",
            file=sys.stderr,
        )
        return 130


def _none_sent(campaign_id: str, summary: Mapping[str, Any]) -> int:
    """A followed campaign that settled every message: 1 when not one was sent and some
    failed or ended unknown (a script's ``send --follow && ...`` must not read that as
    done; every one suppressed is no failure), else 0."""
    lost = summary["failed"] + summary.get("unknown", 0)
    if summary["sent"] or not lost:
        return 0
    print(
        f"campaign {campaign_id!r}: no message was sent ({summary['failed']} failed, "
        f"{summary.get('unknown', 0)} unknown): `dispatch messages {campaign_id} --status "
        "failed` says why",
        file=sys.stderr,
    )
    return 1


def _settling(summary: Mapping[str, Any]) -> bool:
    """:func:`dispatch.models.is_settling` of a summary read from Redis."""
    from dispatch.models import is_settling

    return is_settling(summary["status"], summary["queued"], summary.get("purged_at"))


# Settled states besides sent and failed, named in a --follow's line once one happened:
# "2/2 100% sent 0 failed 0" said nothing of two recipients on the suppression list.
_OTHER_ENDS = ("suppressed", "unknown", "cancelled", "expired")


@functools.lru_cache(maxsize=16)  # a campaign's content never changes: read it once
def _in_words(campaign_id: str, name: str = "send_at") -> str:
    """The campaign's ``send_at`` (or ``expires_at``: ``name``) in words, in UTC."""
    from dispatch import campaign_reads

    at = getattr(campaign_reads.load_content(campaign_id), name)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "?"


_FINISHED = ("completed", "cancelled", "expired")


def _say_when(summary: Mapping[str, Any]) -> None:
    """A status's times in words, on stderr (its JSON gives Unix seconds, 4130647200.0):
    when a scheduled campaign starts, when an unfinished one expires."""
    said = []
    if summary["status"] == "scheduled":
        said.append(f"scheduled: starts at {_in_words(summary['id'])}")
    if summary["status"] not in _FINISHED and summary.get("expires_at") is not None:
        said.append(f"expires at {_in_words(summary['id'], 'expires_at')}")
    if said:
        print(f"({'; '.join(said)})", file=sys.stderr)


def _follow_note(campaign_id: str, summary: Mapping[str, Any]) -> str:
    """What a --follow's line says after its bar: the counts, or when a scheduled
    campaign starts (else it showed 0/s with no word of why nothing moved)."""
    if summary["status"] == "scheduled":
        return f"scheduled: starts at {_in_words(campaign_id)}"
    if _settling(summary):
        return f"{summary['status']}: settling {summary['queued']} unsent messages"
    counts = [f"sent {summary['sent']}", f"failed {summary['failed']}"]
    counts += [f"{name} {summary[name]}" for name in _OTHER_ENDS if summary.get(name)]
    return " ".join(counts)


def cmd_status(args: argparse.Namespace) -> int:
    from dispatch import campaign_reads, campaigns

    try:
        if args.follow:
            return follow(args.id)
        summary = campaign_reads.campaign_summary(args.id)
        _print(summary)
        _say_when(summary)
    except campaigns.CampaignNotFoundError:
        print(f"error: no campaign {args.id!r}", file=sys.stderr)
        return 1
    return 0


def cmd_lifecycle(args: argparse.Namespace) -> int:
    """pause, resume, cancel, retry-failed: what the API's routes of the same names do;
    prints the campaign's summary (retry-failed: its report, the summary in it)."""
    from dispatch import campaigns, lifecycle

    try:
        if args.command == "retry-failed":
            report, summary = lifecycle.retry_failed(args.id)
            counts = ("retried", "skipped_not_retryable", "skipped_already_retried")
            _print({**{name: getattr(report, name) for name in counts}, "campaign": summary})
        else:
            change = {"pause": lifecycle.pause, "resume": lifecycle.resume}
            _print(change.get(args.command, lifecycle.cancel)(args.id))
    except campaigns.CampaignNotFoundError:
        print(f"error: no campaign {args.id!r}", file=sys.stderr)
        return 1
    except campaigns.CampaignError as exc:  # its status refuses it, or it was purged
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_messages(args: argparse.Namespace) -> int:
    """Per-message outcomes as NDJSON, one line each (every page, or one address's)."""
    from dispatch import campaigns, message_pages, retention
    from dispatch.models import CALLBACK_COUNTERS
    from providers.addresses import InvalidAddressError, normalize_address

    for option, given, known in (
        ("--status", args.status, message_pages.MESSAGE_STATUSES),
        ("--callback", args.callback, CALLBACK_COUNTERS),
    ):
        if given is not None and given not in known:
            print(f"error: {option} {given!r}: give one of {', '.join(known)}", file=sys.stderr)
            return 2
    cursor: int | None = 0
    shown = 0
    try:
        if args.email is not None:
            try:
                normalize_address(args.email)
            except InvalidAddressError as exc:  # it printed nothing: a typo looked like "none"
                if not message_pages.holds_address(args.id, args.email):  # (an inline list's)
                    print(f"error: --email: {exc}", file=sys.stderr)
                    return 2
        while cursor is not None:
            items, cursor = message_pages.messages_page(
                args.id,
                status=args.status,
                cursor=cursor,
                limit=1000,
                email=args.email,
                callback=args.callback,
            )
            for item in items:
                print(json.dumps(item, default=str))
            shown += len(items)
    except campaigns.CampaignNotFoundError:
        print(f"error: no campaign {args.id!r}", file=sys.stderr)
        return 1
    except retention.CampaignPurgedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.email is not None and not shown:  # the question had no answer: say so
        which = " ".join(filter(None, (args.status, args.callback, "message")))
        print(f"campaign {args.id!r} has no {which} to {args.email}", file=sys.stderr)
        return 1
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 while the workers (``--beat``: beat) of this host take tasks (a container
    healthcheck)."""
    from dispatch import store, worker_health
    from dispatch.settings import get_settings

    if args.beat:
        health = worker_health.check_beat(args.host)
        warnings = list(health.warnings)
    else:
        r = store.sync_client()
        health = worker_health.check(r, get_settings().worker_canary_seconds, host=args.host)
        warnings = [*health.warnings, *_time_limit_warnings(r)]
    print(health.message, file=sys.stdout if health.ok else sys.stderr)
    # Warnings: a restart would mend neither a clock nor a provider's timeouts.
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0 if health.ok else 1


def _time_limit_warnings(r: Any) -> list[str]:
    """Stored providers whose waits outlast this host's batch runs (never a failure of
    the health check: Redis may be readable only in part)."""
    from dispatch.provider_store import providers_past_time_limit

    try:
        return providers_past_time_limit(r)
    except Exception as exc:  # (the check's answer stands)
        return [f"stored providers not checked against the time limit ({exc})"]


def cmd_providers_add(args: argparse.Namespace) -> int:
    from dispatch.provider_store import provider_view, save_provider

    data = _load_file(args.file)
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise CommandError(f"{args.file}: must hold a provider (a mapping) or a list of them")
    status, shown = 0, False
    for position, item in enumerate(items):  # one refused does not lose those after it
        try:
            config = save_provider(item)
        except ValueError as exc:
            nickname = item.get("nickname")
            which = [f"[{position}]"] if isinstance(data, list) else []
            which += [repr(nickname)] if isinstance(nickname, str) else []
            where = ": ".join([args.file, " ".join(which)] if which else [args.file])
            print(f"error: {where}: {_validation_message(exc, item.get('kind'))}", file=sys.stderr)
            status = 2
            continue
        _print(provider_view(config.nickname))
        shown = True
    if shown:
        _note_callback_base()
    return status


def _note_callback_base() -> None:
    """A provider's ``callback_url`` is built from this process's ``DISPATCH_PUBLIC_URL``:
    unset here (and no ``dispatch up`` on an embedded Redis gave its API's), it shows the
    default, not the address the service gives its ESPs. Say so under what was shown, to
    a person (a script reading stderr is not given a line it did not expect)."""
    from dispatch.settings import get_settings

    settings = get_settings()
    if "public_url" not in settings.model_fields_set and sys.stderr.isatty():
        print(
            "note: DISPATCH_PUBLIC_URL is not set here: the callback_url above starts "
            f"{settings.public_url}; give this command the service's to see the one to "
            "configure at the provider",
            file=sys.stderr,
        )


def cmd_providers_list(args: argparse.Namespace) -> int:
    from dispatch.provider_store import provider_views

    views = provider_views()
    _print(views)
    if views:
        _note_callback_base()
    return 0


def cmd_providers_reseal(args: argparse.Namespace) -> int:
    """Write every provider's secrets that an old key wrote with DISPATCH_SECRET_KEY (with
    ``--check``, only say which). 0 when no provider needs an old key any more (with
    ``--check``: none did); 1 otherwise, naming what needs one."""
    from dispatch.provider_store import ProviderNotFoundError, list_providers, reseal_provider

    status = 0
    for nickname in list_providers():
        try:
            found = reseal_provider(nickname, check=args.check)
        except ProviderNotFoundError:
            continue  # deleted meanwhile
        if found.unreadable:
            status = 1
            print(
                f"error: {nickname}: {', '.join(found.unreadable)}: no key decrypts it: "
                "list the key that wrote it in DISPATCH_PREVIOUS_SECRET_KEYS, or save the "
                "provider again with its secrets",
                file=sys.stderr,
            )
        if found.resealed and args.check:
            status = 1
            print(f"{nickname}: {', '.join(found.resealed)}: written with an old key")
        elif found.resealed:
            print(f"{nickname}: {', '.join(found.resealed)}: written again with the current key")
    if status == 0:
        print(
            "every provider's secrets are written with DISPATCH_SECRET_KEY"
            + ("" if args.check else " now")
            + ": the old keys are needed only for the links of mail already delivered"
        )
    return status


def cmd_providers_test(args: argparse.Namespace) -> int:
    """Send one real test message through a saved provider; 0 if it was taken."""
    import asyncio

    from dispatch.provider_store import ProviderNotFoundError, load_provider
    from dispatch.test_email import SuppressedTestAddressError, send_shared_test_email
    from providers.addresses import InvalidAddressError, normalize_address

    try:
        config = load_provider(args.nickname)
        to = normalize_address(args.to)
        send = send_shared_test_email(
            config, to, vars=dict(args.var), allow_suppressed=args.allow_suppressed
        )
        result = asyncio.run(send)
    except ProviderNotFoundError:
        print(f"error: no provider {args.nickname!r}", file=sys.stderr)
        return 2
    except (InvalidAddressError, SuppressedTestAddressError) as exc:
        print(f"error: --to: {exc}", file=sys.stderr)
        return 2
    _print({"ok": result.ok, "error": result.error, "detail": result.detail})
    if "no value for $$" in result.detail:  # the detail names the API's "vars"
        print("give the recipient's vars with --var NAME=VALUE", file=sys.stderr)
    return 0 if result.ok else 1


def cmd_suppressions_list(args: argparse.Namespace) -> int:
    from dispatch import suppressions

    # A JSON array written entry by entry as the list is read (in no particular order):
    # a list of millions is never held whole.
    first = True
    for entry in suppressions.iter_entries():
        item = json.dumps(entry, indent=2, default=str).replace("\n", "\n  ")
        print("[\n  " if first else ",\n  ", item, sep="", end="")
        first = False
    print("[]" if first else "\n]")
    return 0


def cmd_suppressions_add(args: argparse.Namespace) -> int:
    from dispatch import suppressions
    from providers.addresses import InvalidAddressError

    if args.email is not None and args.file is not None:
        print("error: give an address or --file, not both", file=sys.stderr)
        return 2
    if args.email is None and args.file is None:
        print("error: give the address to suppress, or --file FILE (one a line)", file=sys.stderr)
        return 2
    if args.file is not None:
        return _suppress_file(args.file, args.reason)
    try:
        _print(suppressions.add(args.email, reason=args.reason, source="cli"))
    except InvalidAddressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _suppress_file(path: str, reason: str) -> int:
    """``suppressions add --file``: one address a line, streamed; a line that is no
    address is named on stderr and its neighbours are added. Exit 2 if any was not."""
    from dispatch import suppressions
    from providers.addresses import InvalidAddressError

    refused = 0

    def invalid(line: int, text: str, exc: InvalidAddressError) -> None:
        nonlocal refused
        refused += 1
        print(f"error: {path}:{line}: {_undecoded(text) or exc}", file=sys.stderr)

    def add(lines: Iterable[str]) -> tuple[int, int]:
        emails = _addresses_not_json(line.rstrip("\r\n") for line in lines)
        return suppressions.add_many(emails, reason=reason, source="cli", invalid=invalid)

    try:
        if path == "-":
            raw = getattr(sys.stdin, "buffer", None)  # (none in a text stream put in its place)
            added, already = add(sys.stdin if raw is None else _text(raw))
        else:
            with open(path, "rb") as raw:
                added, already = add(_text(raw))
    except (OSError, UnicodeDecodeError) as exc:  # (UTF-16/32: see _text)
        print(f"error: --file: {exc}", file=sys.stderr)
        return 2
    except _JsonFileError as exc:
        print(
            f"error: {path} is JSON (as 'dispatch suppressions list' writes it), not one "
            "address a line: nothing was added. Import such a list with POST "
            "/v1/suppressions (it keeps each entry's reason), or take its addresses "
            f"first: jq -r '{exc.addresses}' {path}",
            file=sys.stderr,
        )
        return 2
    _print({"added": added, "already_suppressed": already, "invalid": refused})
    return 2 if refused else 0


class _JsonFileError(Exception):
    """``suppressions add --file`` was given JSON, not one address a line: ``addresses``
    is the jq filter that takes its addresses (an array's, or NDJSON's object a line)."""

    def __init__(self, addresses: str) -> None:
        super().__init__(addresses)
        self.addresses = addresses


# The start of a JSON array or object: ``[``, or ``{`` alone or before a quote or a blank
# (``{ "email": ...}``). No address starts so (``{ann}@example.com`` is one).
_JSON_START = re.compile(r'\[|\{(?:$|[\s"])')


def _addresses_not_json(lines: Iterator[str]) -> Iterator[str]:
    """``lines`` as they come, but :class:`_JsonFileError` when the first that is not blank
    starts a JSON array or object (:data:`_JSON_START`): the list ``dispatch suppressions
    list`` writes made an invalid line of every one of its lines, seven an entry, and
    added nothing, without saying why."""
    for line in lines:
        first = line.strip()
        if _JSON_START.match(first):
            raise _JsonFileError(".[].email" if first.startswith("[") else ".email")
        yield line
        if first:
            break
    yield from lines


def cmd_suppressions_remove(args: argparse.Namespace) -> int:
    from dispatch import suppressions

    removed = suppressions.remove(args.email)
    print("removed" if removed else "not suppressed")
    return 0 if removed else 1


# -- parser ------------------------------------------------------------------------------


def _var(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` as a pair; raises ``argparse.ArgumentTypeError`` without ``=``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _reason(text: str) -> str:
    """``--reason``: 1 to MAX_REASON characters of text, as ``PUT /v1/suppressions`` takes
    it (an unset shell variable, ``--reason "$WHY"``, made entries that said no reason)."""
    from dispatch.suppressions import MAX_REASON

    if not text.strip():
        raise argparse.ArgumentTypeError("a reason must not be empty")
    if _UNDECODED.search(text):  # (a Latin-1 byte of the command line: it was a traceback)
        raise argparse.ArgumentTypeError("a reason must be UTF-8 text")
    if len(text) > MAX_REASON:
        raise argparse.ArgumentTypeError(f"a reason is at most {MAX_REASON} characters")
    return text


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number not below ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{text} is below {least}")
        return value

    return parse


def _port(text: str) -> int:
    value = _count(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1-65535)")
    return value


CAMPAIGN_ID = "the campaign's id"
FOLLOW_EXIT = (
    "exit 0 once it completed, 1 when it stopped with messages unsent (paused, "
    "cancelled, expired, a draft) or not one was sent (each failed or ended unknown; "
    "all suppressed is 0)"
)


def _subcommand(group: Any, name: str, help_: str) -> argparse.ArgumentParser:
    """A verb of ``group`` (an ``add_subparsers`` result) whose own ``--help`` says what it
    does, as the list of verbs does (it showed only its options)."""
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_, description=help_)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch",
        description="Send email campaigns through any provider and track every message.",
        epilog="Settings are DISPATCH_* environment variables (README: Settings). Without "
        "DISPATCH_REDIS_URL, `up` and `demo` start a Redis of their own (kept in memory "
        "only) and the other commands use the one of a running `dispatch up`, else a "
        "throwaway one.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def verb(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> Any:
        p = _subcommand(sub, name, help_)
        p.set_defaults(func=func)
        return p

    p = verb("demo", cmd_demo, "the whole system on this machine: send, replay callbacks, report")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--recipients", type=_count(1), default=2000, help="per campaign (default 2000)")
    p.add_argument("--concurrency", type=_count(1), default=2, help="worker processes (default 2)")
    p = verb("up", cmd_up, "API + worker + beat in the foreground")
    p.add_argument("--host", default="127.0.0.1", help="the API's address (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="the API's port (default 8000)")
    p = verb("api", cmd_api, "serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--port", type=_port, default=8000, help="default 8000")
    p = verb("worker", cmd_worker, "run a Celery worker")
    p.add_argument(
        "--concurrency", type=_count(0), default=0, help="processes (default: two per core)"
    )
    p.add_argument("--loglevel", help="default: DISPATCH_LOG_LEVEL")
    p.add_argument("--hostname", help="Celery node name (default: dispatch-<pid>-<random>@<host>)")
    p = verb("beat", cmd_beat, "run Celery beat (scheduled campaigns, housekeeping)")
    p.add_argument("--loglevel", help="default: DISPATCH_LOG_LEVEL")
    p = verb("send", cmd_send, "create and start a campaign from a YAML or JSON file")
    p.add_argument("file", help="a YAML or JSON file; - reads it from standard input")
    p.add_argument(
        "--follow", action="store_true", help=f"show progress until it ends; {FOLLOW_EXIT}"
    )
    p.add_argument(
        "--test",
        metavar="ADDR",
        help="instead: send one recipient's message to ADDR alone (nothing is created)",
    )
    p.add_argument(
        "--seq",
        type=_count(0),
        help="with --test: the recipient's position in the file (default 0, the first)",
    )
    p.add_argument(
        "--allow-suppressed",
        action="store_true",
        help="with --test: send even when ADDR is on the suppression list (else refused)",
    )
    p = verb("status", cmd_status, "a campaign's status and counters")
    p.add_argument("id", help=CAMPAIGN_ID)
    p.add_argument("--follow", action="store_true", help=f"a live progress bar; {FOLLOW_EXIT}")

    for name, what in (
        ("pause", "pause a campaign: sending stops within a second or two"),
        ("resume", "resume a paused campaign: what is left is sent, nothing twice"),
        ("cancel", "cancel a campaign: every message not sent yet ends cancelled"),
        ("retry-failed", "queue a campaign's retryable failed messages again, each once"),
    ):
        verb(name, cmd_lifecycle, what).add_argument("id", help=CAMPAIGN_ID)

    p = verb("messages", cmd_messages, "a campaign's per-message outcomes, one JSON line each")
    p.add_argument("id", help=CAMPAIGN_ID)
    p.add_argument(
        "--status",
        help="only messages in this state (queued, claimed, retry, sent, failed, suppressed, "
        "cancelled, expired, unknown)",
    )
    p.add_argument("--email", help="only the messages to this address")
    p.add_argument(
        "--callback",
        help="only messages a callback of this kind was counted for (delivered, "
        "soft_bounced, hard_bounced, unsubscribed, spam, clicked)",
    )

    p = verb("health", cmd_health, "exit 0 while this host's workers take tasks")
    p.add_argument("--host", help="the workers of this host (default: this machine's name)")
    p.add_argument("--beat", action="store_true", help="beat instead: it runs and schedules")

    providers = _subcommand(sub, "providers", "manage providers")
    psub = providers.add_subparsers(dest="action", required=True)
    p = _subcommand(psub, "add", "save provider(s) from a YAML or JSON file")
    p.add_argument("file", help="a YAML or JSON file; - reads it from standard input")
    p.set_defaults(func=cmd_providers_add)
    _subcommand(psub, "list", "list providers").set_defaults(func=cmd_providers_list)
    p = _subcommand(
        psub,
        "reseal",
        "write the providers' secrets that an old key wrote with DISPATCH_SECRET_KEY",
    )
    p.add_argument(
        "--check", action="store_true", help="only say which still need an old key (exit 1)"
    )
    p.set_defaults(func=cmd_providers_reseal)
    p = _subcommand(psub, "test", "send one real test message through a provider")
    p.add_argument("nickname", help="the provider's nickname (dispatch providers list)")
    p.add_argument("--to", required=True, help="the address that gets the test message")
    p.add_argument(
        "--var",
        action="append",
        default=[],
        type=_var,
        metavar="NAME=VALUE",
        help="a recipient var for the $$NAME placeholders of an HTTP payload (repeatable)",
    )
    p.add_argument(
        "--allow-suppressed",
        action="store_true",
        help="send even when the address is on the suppression list (else refused)",
    )
    p.set_defaults(func=cmd_providers_test)

    supp = _subcommand(sub, "suppressions", "manage the suppression list")
    ssub = supp.add_subparsers(dest="action", required=True)
    _subcommand(ssub, "list", "every suppressed address, with reason and source").set_defaults(
        func=cmd_suppressions_list
    )
    p = _subcommand(ssub, "add", "suppress an address: nothing more is sent to it")
    p.add_argument("email", nargs="?", help="the address to suppress")
    p.add_argument(
        "--file",
        help="suppress every address of FILE instead, one a line (- reads stdin)",
    )
    p.add_argument(
        "--reason", type=_reason, default="manual", help="kept with the entry (default: manual)"
    )
    p.set_defaults(func=cmd_suppressions_add)
    p = _subcommand(ssub, "remove", "send to an address again (exit 1 if it was not suppressed)")
    p.add_argument("email", help="the suppressed address")
    p.set_defaults(func=cmd_suppressions_remove)
    return parser


# Verbs that run as services (or the demo) log JSON lines; the short ones keep Python's
# default (warnings to stderr), and leave logging alone when they run inside a host.
# Worker and beat too, from the start: Celery's setup_logging configures them again (with
# --loglevel), but what its worker_init logged before that came out as plain text.
SERVICE_VERBS = frozenset({"api", "up", "demo", "worker", "beat"})
# Verbs that bring their own embedded Redis when DISPATCH_REDIS_URL is unset; the others
# use the one of a running `dispatch up` if there is one (else they start their own too).
OWN_REDIS_VERBS = frozenset({"up", "demo"})


def _join_running_up() -> None:
    """Use the embedded Redis of a running ``dispatch up``, and say so."""
    from dispatch.redis_server import join_running_up, state_file
    from dispatch.settings import get_settings

    running = join_running_up()
    if running is not None:
        print(
            f"dispatch: using the Redis of the running `dispatch up` (pid {running.pid}) at "
            f"{running.redis_url}, recorded in {state_file()}",
            file=sys.stderr,
        )
    elif not get_settings().redis_url:
        # Else a provider "added" here is gone when the command ends, and `send` then
        # finds no such provider: say so before anything looks saved.
        print(
            f"dispatch: no `dispatch up` runs (none recorded in {state_file()}) and "
            "DISPATCH_REDIS_URL is not set: this command starts a throwaway Redis of its "
            "own, and what it saves is lost when it ends",
            file=sys.stderr,
        )


# Processes that work with others on one Redis: they must all have the same secret key.
SHARED_KEY_VERBS = frozenset({"api", "worker", "beat"})
NO_SHARED_KEY = (
    "DISPATCH_SECRET_KEY is not set: the API, workers and beat that share a Redis must "
    "share the key (it encrypts unsubscribe links and provider secrets); set the "
    "same value in the environment of each"
)


# ``up`` on a Redis of the user's (DISPATCH_REDIS_URL): that Redis keeps what the run
# saves, the key generated for the run (shown nowhere) would not.
NO_KEPT_KEY = (
    "DISPATCH_SECRET_KEY is not set: the Redis of DISPATCH_REDIS_URL keeps what this run "
    "saves, and a key generated for the run would be gone when it stops (the provider "
    "secrets saved unreadable, the unsubscribe links of mail sent broken): set "
    "DISPATCH_SECRET_KEY, the same value at every start"
)


def _check_secret_key(command: str) -> None:
    """A service process on a shared Redis refuses to start without the shared key, and
    ``up`` on a Redis of the user's without a key it would lose; one with a Redis of its
    own generates a key for the run, as ``up`` does on its embedded Redis."""
    from dispatch.crypto import ensure_secret_key
    from dispatch.settings import get_settings

    settings = get_settings()
    if settings.secret_key.get_secret_value():
        return
    if not settings.redis_url:
        if command in SHARED_KEY_VERBS:
            ensure_secret_key()
    elif command in SHARED_KEY_VERBS:
        raise CommandError(NO_SHARED_KEY)
    elif command == "up":
        raise CommandError(NO_KEPT_KEY)


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    from dispatch.crypto import SecretKeyError
    from dispatch.logs import configure
    from dispatch.settings import SettingsError, get_settings

    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command in SERVICE_VERBS:
        configure(settings.log_level, addresses=settings.log_addresses)
    else:
        logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        if args.command not in OWN_REDIS_VERBS:
            _join_running_up()
        _check_secret_key(args.command)
        result: int = args.func(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SecretKeyError as exc:
        print(f"error: {_secret_key_problem(exc)}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"error: Redis at {_redis_address()}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C in `demo` or a `--follow`: what it started stops
        print("\ninterrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except BrokenPipeError:  # `dispatch messages ID | head`: the reader has what it wanted
        # Python's own advice: no second error when the interpreter flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    return result


def _secret_key_problem(exc: Exception) -> str:
    """What a stored secret this command could not read says. Without a key of its own the
    command read nothing, whatever the key the service runs with: say that, not that the
    key was changed (which sends the reader to change the service)."""
    from dispatch.settings import get_settings

    if not get_settings().secret_key.get_secret_value():
        return (
            "DISPATCH_SECRET_KEY is not set in this command's environment: give it the "
            "key the service runs with (provider secrets are stored encrypted with it)"
        )
    return f"{exc} (or this command's DISPATCH_SECRET_KEY is not the one the service runs with)"


def _redis_address() -> str:
    """Where the Redis of this process is, without the password a URL may hold."""
    from urllib.parse import urlsplit

    from dispatch.settings import get_settings

    parts = urlsplit(get_settings().redis_url)
    where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else ""
    return f"{parts.scheme}://{where}{parts.path}"


if __name__ == "__main__":
    sys.exit(main())
