"""The compose file as a platform team meets it (review F23): Flower's login reaches Flower,
and no message goes out with links to localhost.

The README and the compose file say to give Flower ``FLOWER_BASIC_AUTH`` before publishing
it beyond the host, and the compose path of the README exports the settings where compose
runs. The flower service took only the dispatch services' environment: a login exported
there never reached Flower, which then served its pages (revoke tasks, stop workers) to
anyone once its port was published. It is now passed on when set, and left unset, not
empty, when not (Flower takes an empty value for a login nobody can give).

``DISPATCH_PUBLIC_URL`` fell back to ``http://localhost:8000`` when it was not exported:
every message's unsubscribe links (List-Unsubscribe, the one-click of RFC 8058) and the
providers' callback URLs then named localhost, and nothing warned (a loopback URL is a
trial's). Compose now refuses to start without it, as without the secret key and tokens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from dispatch.redis_server import RedisServer
from dispatch.sinks import free_port

ROOT = Path(__file__).resolve().parent.parent
# Where compose runs: what the README's compose path exports.
EXPORTED = {
    "DISPATCH_SECRET_KEY": "k" * 43,
    "DISPATCH_API_TOKENS": "tok",
    "DISPATCH_PUBLIC_URL": "https://mail.acme.example",
}


class ComposeRefuses(Exception):
    """``${VAR:?error}`` of an unset variable: compose stops before any container starts."""


def _interpolate(value: str, host: Mapping[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` as compose reads them."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if host.get(name):
            return host[name]
        if op == ":?":
            raise ComposeRefuses(arg)
        return arg if op == ":-" else host.get(name, "")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def resolved_environment(service: str, host: Mapping[str, str]) -> dict[str, str]:
    """The environment compose gives ``service``'s container, run where ``host`` is the
    environment: a variable without a value is passed on from there, or left unset."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    declared = compose["services"][service]["environment"]
    assert isinstance(declared, dict), declared
    return {
        name: host[name] if value is None else _interpolate(str(value), host)
        for name, value in declared.items()
        if value is not None or name in host
    }


@pytest.mark.parametrize("login", ["ops:s3cret", None])
def test_flower_gets_the_login_exported_where_compose_runs(login: str | None) -> None:
    host = {**EXPORTED, **({"FLOWER_BASIC_AUTH": login} if login else {})}
    flower = resolved_environment("flower", host)
    assert flower.get("FLOWER_BASIC_AUTH") == login  # unset, not "", without one
    # Everything else as the dispatch services have it.
    flower.pop("FLOWER_BASIC_AUTH", None)
    assert flower == resolved_environment("worker", host)
    assert "FLOWER_BASIC_AUTH" not in resolved_environment("worker", host)


@pytest.mark.parametrize("service", ["web", "worker", "beat"])
def test_compose_wants_the_public_url_that_every_link_is_built_on(service: str) -> None:
    forgotten = {k: v for k, v in EXPORTED.items() if k != "DISPATCH_PUBLIC_URL"}
    with pytest.raises(ComposeRefuses, match="DISPATCH_PUBLIC_URL"):
        resolved_environment(service, forgotten)
    given = resolved_environment(service, EXPORTED)
    assert given["DISPATCH_PUBLIC_URL"] == EXPORTED["DISPATCH_PUBLIC_URL"]


@contextmanager
def _flower(env: Mapping[str, str]) -> Iterator[str]:
    """Flower as compose's flower service runs it, with ``env``; yields its base URL."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["flower"]["command"]
    assert command[:4] == ["celery", "-A", "dispatch.celery_app", "flower"], command
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", *command, f"--port={port}", "--address=127.0.0.1"],
        env={"PATH": os.environ["PATH"], **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/healthcheck", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "flower exited"
                time.sleep(0.1)
        else:
            raise AssertionError("flower did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("login, status", [("ops:s3cret", 401), (None, 200)])
def test_flower_under_compose_asks_for_the_login_it_was_given(
    login: str | None, status: int, redis_server: RedisServer
) -> None:
    """Run with compose's environment: with a login exported, Flower's pages want it
    (its healthcheck still answers); without, they are served (not locked by an empty
    login)."""
    host = {**EXPORTED, **({"FLOWER_BASIC_AUTH": login} if login else {})}
    env = resolved_environment("flower", host)
    env["DISPATCH_REDIS_URL"] = redis_server.url  # the compose network's redis, here
    with _flower(env) as url:
        assert httpx.get(url + "/healthcheck", timeout=10).status_code == 200
        assert httpx.get(url + "/", timeout=10).status_code == status
        if login:
            user, password = login.split(":")
            assert httpx.get(url + "/", auth=(user, password), timeout=10).status_code == 200
