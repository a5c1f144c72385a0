"""Compose's Redis as Docker judges it while it loads its data (review C25).

``depends_on: condition: service_healthy`` makes ``docker compose up`` wait for Redis to
be healthy, and fail ("dependency failed to start: container ... is unhealthy", nothing
else started) once Docker marks it unhealthy. Redis answers LOADING until its AOF is
read: about 16 s for a 720 MB dataset (3 million hashes) measured here. The healthcheck
had no ``start_period``: its ten failed checks, 5 s apart, marked unhealthy any Redis
loading for longer than about 50 s (some 2 GB of data, which the README's sizing reaches
with a few million recipients kept). Failures within the start period do not count.

Docker's health monitor (moby ``daemon/health.go``) is followed below on a simulated
clock; each check's result is that of compose's own probe run for real, against a server
answering as a loading Redis and against a real Redis."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatch.redis_server import RedisServer
from tests.test_review_m9_deploy import _redis_healthcheck, loading_redis  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_START_INTERVAL = 5.0  # Docker's, between checks within the start period


def _seconds(duration: str | None) -> float:
    """A compose duration (``10m``, ``1m30s``, ``5s``) in seconds; unset is 0."""
    if not duration:
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def docker_health(
    healthcheck: dict[str, Any], passes: Callable[[float], bool]
) -> tuple[str, float]:
    """The first settled status, "healthy" or "unhealthy", and when, of a container with
    ``healthcheck`` whose probe at time t (seconds after start) passes when ``passes(t)``,
    as Docker's monitor reaches it (checks taken as instant)."""
    interval = _seconds(healthcheck.get("interval", "30s"))
    start_period = _seconds(healthcheck.get("start_period"))
    start_interval = _seconds(healthcheck.get("start_interval")) or DEFAULT_START_INTERVAL
    retries = int(healthcheck.get("retries", 3))

    def next_wait(now: float) -> float:  # moby's getInterval (the status is "starting")
        if now >= start_period:
            return interval
        return start_period - now if start_period - now < interval else start_interval

    now, streak = 0.0, 0
    while now < 24 * 3600:
        now += next_wait(now)
        if passes(now):
            return "healthy", now
        if now >= start_period:  # within it a failure is not counted while starting
            streak += 1
            if streak >= retries:
                return "unhealthy", now
    raise AssertionError("never settled")


@pytest.mark.parametrize("loading_for", [30.0, 300.0])
def test_compose_waits_for_a_redis_that_loads_its_data(
    loading_for: float,
    loading_redis: int,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    """Loading for 5 minutes (some 13 GB at the rate measured) is waited for: before,
    Redis was unhealthy 50 s after its start and ``docker compose up`` failed."""
    loading = _redis_healthcheck(loading_redis) == 0
    ready = _redis_healthcheck(redis_server.port) == 0
    assert (loading, ready) == (False, True)  # the probe itself tells the two apart
    healthcheck = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"][
        "healthcheck"
    ]
    status, at = docker_health(healthcheck, lambda t: ready if t >= loading_for else loading)
    assert status == "healthy", (status, at)
    assert at - loading_for <= DEFAULT_START_INTERVAL  # and at once: no wait added


def test_a_redis_that_never_answers_is_still_found_unhealthy(
    loading_redis: int,  # noqa: F811
) -> None:
    """The start period bounds the wait: a Redis stuck loading turns unhealthy, and compose
    says so, within a quarter of an hour."""
    loading = _redis_healthcheck(loading_redis) == 0
    healthcheck = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"][
        "healthcheck"
    ]
    status, at = docker_health(healthcheck, lambda t: loading)
    assert status == "unhealthy" and at <= 15 * 60, (status, at)


def test_the_model_follows_docker_without_a_start_period() -> None:
    """Docker's documented case: no start period, ``retries`` failures ``interval`` apart."""
    check = {"interval": "5s", "retries": 10}
    assert docker_health(check, lambda t: False) == ("unhealthy", 50.0)
    assert docker_health(check, lambda t: t >= 20) == ("healthy", 20.0)
    assert docker_health({**check, "start_period": "1m"}, lambda t: False) == ("unhealthy", 105.0)


def _worker_lines(env: dict[str, str]) -> list[str]:
    """What the Procfile's ``worker`` logs until it is ready (then it is stopped)."""
    line = next(x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("worker:"))
    argv = [sys.executable, "-m", "dispatch.cli", *shlex.split(line.split(":", 1)[1])[1:]]
    proc = subprocess.Popen(
        [*argv, "--concurrency", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:  # (a thread: a worker that never gets ready must not hang the test)
        assert proc.stderr is not None
        for text in proc.stderr:
            lines.append(text)
            if " ready." in text:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready.wait(timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
    assert any(" ready." in x for x in lines), lines
    return lines


def test_a_worker_without_the_public_url_says_where_its_links_point() -> None:
    """The Procfile's processes given the Redis URL and the key (as the README said) sent
    every message's unsubscribe and preference links to http://127.0.0.1:8000 and the
    worker, which writes them, said nothing; it now logs a warning at its start. (A Redis
    of its own: on the session's, this worker took other tests' tasks, and met the
    session worker in its start-up handshake.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    server = RedisServer().start()
    try:
        env.update(DISPATCH_REDIS_URL=server.url, DISPATCH_SECRET_KEY="k" * 43)
        lines = _worker_lines(env)
    finally:
        server.stop()
    warned = [x for x in lines if "DISPATCH_PUBLIC_URL is not set" in x]
    assert len(warned) == 1 and "http://127.0.0.1:8000" in warned[0], warned
    assert json.loads(warned[0])["level"] == "WARNING"


def test_a_worker_given_the_public_url_does_not_warn(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dispatch.celery_app import _warn_of_an_unset_public_url
    from dispatch.settings import get_settings

    monkeypatch.setenv("DISPATCH_PUBLIC_URL", "https://mail.acme.example")
    get_settings.cache_clear()
    with caplog.at_level(logging.WARNING):
        _warn_of_an_unset_public_url()
    assert not caplog.records
    monkeypatch.delenv("DISPATCH_PUBLIC_URL")
    get_settings.cache_clear()
    with caplog.at_level(logging.WARNING):
        _warn_of_an_unset_public_url()
    assert "DISPATCH_PUBLIC_URL is not set" in caplog.text


def test_the_env_file_compose_reads_stays_out_of_git_and_the_image() -> None:
    """Compose reads the secret key and the API tokens from a ``.env`` beside the compose
    file (the README's other way to give them): git did not ignore it, so a ``git add .``
    committed the key; nor did the build context leave it out."""
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0
    patterns = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in patterns
