"""Helpers for the API tests: clients that record the routes they hit, and ``@covers``.

A test declares the routes it exercises with ``@covers("POST /v1/campaigns", ...)``; once
the test body has run, the decorator checks that each declared route was really
requested through a :func:`api_client`. ``tests/test_api_openapi.py`` then checks that
the declarations cover every route of the OpenAPI document.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import httpx

from dispatch.client import DispatchClient
from tests.api_server import ApiServer
from tests.conftest import API_TOKEN

F = TypeVar("F", bound=Callable[..., Any])

# (method, path) of every request made through a recording client in this process.
REQUESTS: list[tuple[str, str]] = []


def _record(request: httpx.Request) -> None:
    REQUESTS.append((request.method, request.url.path))


def api_client(server: ApiServer, token: str | None = API_TOKEN) -> httpx.Client:
    """An httpx client on the real server, with the bearer token unless ``token`` is None."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=server.url, headers=headers, timeout=120, event_hooks={"request": [_record]}
    )


def dispatch_client(server: ApiServer, token: str = API_TOKEN) -> DispatchClient:
    """``dispatch.client.DispatchClient`` on the real server, recording its routes."""
    http = httpx.Client(event_hooks={"request": [_record]})
    return DispatchClient(server.url, token, timeout=120, http=http)


def route_pattern(route: str) -> tuple[str, re.Pattern[str]]:
    """``"GET /v1/campaigns/{campaign_id}"`` as (method, regex of matching paths)."""
    method, _, template = route.partition(" ")
    regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
    return method.upper(), re.compile(f"^{regex}$")


def covers(*routes: str) -> Callable[[F], F]:
    """Declare the routes a test exercises; the test fails if it did not request them."""
    patterns = [route_pattern(route) for route in routes]

    def decorate(test: F) -> F:
        @functools.wraps(test)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = len(REQUESTS)
            result = test(*args, **kwargs)
            made = REQUESTS[start:]
            missing = [
                route
                for route, (method, regex) in zip(routes, patterns, strict=True)
                if not any(m == method and regex.match(p) for m, p in made)
            ]
            assert not missing, f"{test.__name__} declares routes it never requested: {missing}"
            return result

        wrapper.covered_routes = routes  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def ndjson(recipients: Iterable[dict[str, Any]], per_chunk: int = 250) -> Iterator[bytes]:
    """Recipients as a streamed NDJSON body (a few hundred lines per chunk)."""
    lines: list[bytes] = []
    for recipient in recipients:
        lines.append(json.dumps(recipient).encode())
        if len(lines) >= per_chunk:
            yield b"\n".join(lines) + b"\n"
            lines = []
    if lines:
        yield b"\n".join(lines) + b"\n"


def smtp_body(port: int, **fields: Any) -> dict[str, Any]:
    """A provider configuration for the local SMTP test server."""
    return {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_name": "Acme Deals",
        "from_address": "deals@acme.example",
        **fields,
    }


def save_smtp_provider(
    api: httpx.Client, port: int, nickname: str = "local", **fields: Any
) -> None:
    """PUT a provider pointing at the local SMTP test server."""
    answer = api.put(f"/v1/providers/{nickname}", json=smtp_body(port, **fields))
    assert answer.status_code in (200, 201), answer.text


def campaign(api: httpx.Client, campaign_id: str) -> dict[str, Any]:
    answer = api.get(f"/v1/campaigns/{campaign_id}")
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def wait_for_campaign(
    api: httpx.Client,
    campaign_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Poll ``GET /v1/campaigns/{id}`` until ``predicate(summary)``; the summary."""
    deadline = time.monotonic() + timeout
    while True:
        summary = campaign(api, campaign_id)
        if predicate(summary):
            return summary
        if time.monotonic() > deadline:
            raise AssertionError(f"campaign never got there within {timeout} s: {summary}")
        time.sleep(0.1)
