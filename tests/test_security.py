"""Security checks over HTTP on the real app and a real Redis: bearer tokens, signed
recipient tokens, what the recipient pages show and how much of a body they read."""

from __future__ import annotations

import httpx

from tests.api_server import ApiServer
from tests.api_support import api_client, covers


def _raw_client(server: ApiServer) -> httpx.Client:
    """A client without the recording hook or a default token (one connection per test)."""
    return httpx.Client(base_url=server.url, timeout=30)


@covers("GET /v1/campaigns")
def test_a_non_ascii_bearer_token_is_refused_not_a_server_error(api_server: ApiServer) -> None:
    # Starlette decodes headers as Latin-1; hmac.compare_digest refuses such str.
    with api_client(api_server, token=None) as http:
        answer = http.get("/v1/campaigns", headers={"Authorization": b"Bearer t\xe9st-token"})
        empty = http.get("/v1/campaigns", headers={"Authorization": "Bearer"})
        spaced = http.get("/v1/campaigns", headers={"Authorization": "Bearer  test-token"})
        lower = http.get("/v1/campaigns", headers={"Authorization": "bearer test-token"})
    assert answer.status_code == 401, answer.text
    assert answer.json()["field"] == "authorization"
    assert empty.status_code == 401 and spaced.status_code == 401
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 9110 §11.1)


def test_every_v1_route_but_callbacks_needs_the_bearer_token(api_server: ApiServer) -> None:
    with _raw_client(api_server) as http:
        spec = http.get("/openapi.json").json()
        refused, open_routes = [], []
        for path, operations in spec["paths"].items():
            if not path.startswith("/v1/") or path.startswith("/v1/callbacks/"):
                continue
            for method in operations:
                url = path.replace("{", "x").replace("}", "")
                status = http.request(method.upper(), url, json={}).status_code
                (refused if status == 401 else open_routes).append(f"{method} {path}")
    assert refused and not open_routes
