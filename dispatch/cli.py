"""The ``dispatch`` command line (DESIGN §8)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from dispatch.progress import ProgressBar


def _load_file(path: str) -> Any:
    """A YAML or JSON document from ``path`` (``-`` for standard input)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _validation_message(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
    return str(exc)


# -- verbs -------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from dispatch.demo import run_demo

    return run_demo(recipients=args.recipients, as_json=args.json, workers=args.concurrency)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from dispatch.redis_server import ensure_redis_url
    from dispatch.settings import get_settings

    ensure_redis_url()
    if not get_settings().api_tokens:
        print(
            "warning: DISPATCH_API_TOKENS is empty: /v1 is open to anyone who can reach "
            f"{args.host}:{args.port}",
            file=sys.stderr,
        )
    level = get_settings().log_level.lower()
    uvicorn.run("dispatch.api.app:app", host=args.host, port=args.port, log_level=level)
    return 0


def _celery(argv: list[str]) -> int:
    from dispatch.celery_app import app

    app.start(argv)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from dispatch import store

    argv = ["worker", "-Q", ",".join(store.CELERY_QUEUES), "--loglevel", args.loglevel]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    return _celery(argv)


def cmd_beat(args: argparse.Namespace) -> int:
    return _celery(["beat", "--loglevel", args.loglevel])


def cmd_up(args: argparse.Namespace) -> int:
    """API, worker and beat in the foreground on one (embedded, if unset) Redis.

    An embedded Redis is recorded for the other commands (``dispatch providers add`` in
    another shell) while this runs; SIGTERM stops it as Ctrl-C does.
    """
    from dispatch.crypto import ensure_secret_key
    from dispatch.redis_server import ensure_redis_url, forget_running_up, record_running_up
    from dispatch.settings import get_settings

    generated_key = not get_settings().secret_key.get_secret_value()
    ensure_redis_url()
    ensure_secret_key()
    key = get_settings().secret_key.get_secret_value() if generated_key else ""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop
    exe = [sys.executable, "-m", "dispatch.cli"]
    verbs = [["worker"], ["beat"], ["api", "--host", args.host, "--port", str(args.port)]]
    procs: list[subprocess.Popen[bytes]] = []
    status = 0
    running = None
    try:
        procs += [subprocess.Popen([*exe, *verb]) for verb in verbs]
        try:
            running = record_running_up(secret_key=key)
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
            forget_running_up(running)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
    return status


QUICK_EXIT_SECONDS = 30  # a process that ran shorter than this exited "at once"
QUICK_EXITS_ALLOWED = 5  # in a row, before ``up`` gives up


def _supervise(procs: list[subprocess.Popen[bytes]], commands: list[list[str]]) -> int:
    """Start again a process of ``up`` that exits (as compose's ``restart`` does): a
    Celery worker can exit when its broker connection breaks, e.g. when Redis restarts.
    Returns 1 when one keeps exiting at once (its log says why)."""
    started = [time.monotonic()] * len(procs)
    quick = [0] * len(procs)
    while True:
        time.sleep(0.5)
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

    try:
        request = campaign_request(_load_file(args.file))
        campaign_id, created = campaigns.create_campaign(request)
    except (ValueError, campaigns.CampaignError) as exc:
        print(f"error: {_validation_message(exc)}", file=sys.stderr)
        return 2
    print(campaign_id)
    if not created:
        print("(already existed with the same content: nothing changed)", file=sys.stderr)
    if args.follow:
        return follow(campaign_id)
    return 0


def follow(campaign_id: str, interval: float = 0.5) -> int:
    """A live progress bar until the campaign stops running; 0 if every message settled."""
    from dispatch import campaigns

    bar = ProgressBar(label=campaign_id)
    while True:
        summary = campaigns.campaign_summary(campaign_id)
        done = summary["total"] - summary["queued"]
        bar.update(done, summary["total"], f"sent {summary['sent']} failed {summary['failed']}")
        if summary["status"] not in ("running", "scheduled"):
            bar.close()
            _print(summary)
            return 0 if summary["queued"] == 0 else 1
        time.sleep(interval)


def cmd_status(args: argparse.Namespace) -> int:
    from dispatch import campaigns

    try:
        if args.follow:
            return follow(args.id)
        _print(campaigns.campaign_summary(args.id))
    except campaigns.CampaignNotFoundError:
        print(f"error: no campaign {args.id!r}", file=sys.stderr)
        return 1
    return 0


def cmd_providers_add(args: argparse.Namespace) -> int:
    from dispatch.provider_store import provider_view, save_provider

    data = _load_file(args.file)
    for item in data if isinstance(data, list) else [data]:
        try:
            config = save_provider(item)
        except ValueError as exc:
            print(f"error: {_validation_message(exc)}", file=sys.stderr)
            return 2
        _print(provider_view(config.nickname))
    return 0


def cmd_providers_list(args: argparse.Namespace) -> int:
    from dispatch.provider_store import list_providers, provider_view

    _print([provider_view(n) for n in list_providers()])
    return 0


def cmd_providers_test(args: argparse.Namespace) -> int:
    """Send one real test message through a saved provider; 0 if it was taken."""
    import asyncio

    from dispatch.provider_store import ProviderNotFoundError, load_provider
    from dispatch.test_email import send_test_email
    from providers.addresses import InvalidAddressError

    try:
        config = load_provider(args.nickname)
        result = asyncio.run(send_test_email(config, args.to, vars=dict(args.var)))
    except ProviderNotFoundError:
        print(f"error: no provider {args.nickname!r}", file=sys.stderr)
        return 2
    except InvalidAddressError as exc:
        print(f"error: --to: {exc}", file=sys.stderr)
        return 2
    _print({"ok": result.ok, "error": result.error, "detail": result.detail})
    return 0 if result.ok else 1


def cmd_suppressions_list(args: argparse.Namespace) -> int:
    from dispatch import suppressions

    cursor, out = 0, []
    while True:
        cursor, items = suppressions.page(cursor)
        out.extend(items)
        if cursor == 0:
            break
    _print(sorted(out, key=lambda e: e["email"]))
    return 0


def cmd_suppressions_add(args: argparse.Namespace) -> int:
    from dispatch import suppressions
    from providers.addresses import InvalidAddressError

    try:
        _print(suppressions.add(args.email, reason=args.reason, source="cli"))
    except InvalidAddressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def verb(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> Any:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    p = verb("demo", cmd_demo, "the whole system on this machine: send, replay callbacks, report")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--recipients", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes")
    p = verb("up", cmd_up, "API + worker + beat in the foreground")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p = verb("api", cmd_api, "serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p = verb("worker", cmd_worker, "run a Celery worker")
    p.add_argument("--concurrency", type=int, default=0, help="processes (two per core)")
    p.add_argument("--loglevel", default="INFO")
    p = verb("beat", cmd_beat, "run Celery beat (scheduled campaigns, housekeeping)")
    p.add_argument("--loglevel", default="INFO")
    p = verb("send", cmd_send, "create and start a campaign from a YAML or JSON file")
    p.add_argument("file")
    p.add_argument("--follow", action="store_true", help="show progress until it ends")
    p = verb("status", cmd_status, "a campaign's status and counters")
    p.add_argument("id")
    p.add_argument("--follow", action="store_true", help="a live progress bar")

    providers = sub.add_parser("providers", help="manage providers")
    psub = providers.add_subparsers(dest="action", required=True)
    p = psub.add_parser("add", help="save provider(s) from a YAML or JSON file")
    p.add_argument("file")
    p.set_defaults(func=cmd_providers_add)
    psub.add_parser("list", help="list providers").set_defaults(func=cmd_providers_list)
    p = psub.add_parser("test", help="send one real test message through a provider")
    p.add_argument("nickname")
    p.add_argument("--to", required=True, help="the address that gets the test message")
    p.add_argument(
        "--var",
        action="append",
        default=[],
        type=_var,
        metavar="NAME=VALUE",
        help="a recipient var for the $$NAME placeholders of an HTTP payload (repeatable)",
    )
    p.set_defaults(func=cmd_providers_test)

    supp = sub.add_parser("suppressions", help="manage the suppression list")
    ssub = supp.add_subparsers(dest="action", required=True)
    ssub.add_parser("list").set_defaults(func=cmd_suppressions_list)
    p = ssub.add_parser("add")
    p.add_argument("email")
    p.add_argument("--reason", default="manual")
    p.set_defaults(func=cmd_suppressions_add)
    p = ssub.add_parser("remove")
    p.add_argument("email")
    p.set_defaults(func=cmd_suppressions_remove)
    return parser


# Verbs that run as services (or the demo) log JSON lines; the short ones keep Python's
# default (warnings to stderr), and leave logging alone when they run inside a host.
SERVICE_VERBS = frozenset({"api", "up", "demo"})  # worker and beat: Celery's setup_logging
# Verbs that bring their own embedded Redis when DISPATCH_REDIS_URL is unset; the others
# use the one of a running `dispatch up` if there is one (else they start their own too).
OWN_REDIS_VERBS = frozenset({"up", "demo"})


def _join_running_up() -> None:
    """Use the embedded Redis of a running ``dispatch up``, and say so."""
    from dispatch.redis_server import join_running_up, state_file

    running = join_running_up()
    if running is not None:
        print(
            f"dispatch: using the Redis of the running `dispatch up` (pid {running.pid}) at "
            f"{running.redis_url}, recorded in {state_file()}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    from dispatch.logs import configure
    from dispatch.settings import get_settings

    args = build_parser().parse_args(argv)
    if args.command in SERVICE_VERBS:
        configure(get_settings().log_level)
    else:
        logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.command not in OWN_REDIS_VERBS:
        _join_running_up()
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
