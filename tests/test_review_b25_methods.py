"""HTTP methods over the real API: HEAD wherever GET, and a 405's Allow listing every method."""

from __future__ import annotations

import pytest

from tests.api_server import ApiServer
from tests.conftest import API_TOKEN


def test_head_answers_as_get_does_without_a_body(api_server: ApiServer) -> None:
    """A HEAD to a GET route was a 405 (``Allow: GET``): an uptime check asking
    ``/healthz`` with HEAD saw the service down, and RFC 9110 §9.1 wants HEAD wherever
    GET is taken."""
    with api_server.client(API_TOKEN) as http, api_server.client() as anonymous:
        for path in ("/healthz", "/v1/campaigns", "/v1/providers", "/v1/suppressions"):
            got, head = http.get(path), http.head(path)
            assert got.status_code == 200, (path, got.text)
            assert head.status_code == 200, (path, head.status_code, head.text)
            assert head.content == b""
            assert head.headers["content-type"] == got.headers["content-type"]
            assert head.headers["content-length"] == got.headers["content-length"]

        unknown = http.head("/v1/campaigns/no-such-one")
        assert unknown.status_code == 404 and unknown.content == b""

        # The token is checked as for the GET.
        refused = anonymous.head("/v1/campaigns")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"

        # A path with no GET takes no HEAD either.
        start = http.head("/v1/campaigns/some-id/start")
        assert start.status_code == 405 and start.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/campaigns", "GET, HEAD, POST"),
        ("PATCH", "/v1/providers/some-nick", "GET, HEAD, PUT, DELETE"),
        ("POST", "/v1/providers", "GET, HEAD"),
        ("DELETE", "/v1/suppressions", "GET, HEAD, POST"),
        ("PATCH", "/v1/suppressions/a@example.com", "GET, HEAD, PUT, DELETE"),
        ("DELETE", "/v1/preferences/a@example.com", "GET, HEAD, PUT"),
    ],
)
def test_a_405_allows_every_method_of_the_path_and_names_them(
    api_server: ApiServer, method: str, path: str, allow: str
) -> None:
    """``Allow`` named the methods of the path's first route alone (``DELETE
    /v1/campaigns``: ``Allow: POST``, though GET lists them), and the detail was a bare
    "Method Not Allowed"; RFC 9110 §15.5.6 wants every method the resource takes."""
    with api_server.client(API_TOKEN) as http:
        answer = http.request(method, path)
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allow
    assert answer.json() == {
        "detail": f"{method} is not allowed on {path}: it takes {allow}",
        "field": None,
        "errors": [],
    }


def test_a_405_outside_the_api_keeps_its_body_with_the_whole_allow(
    api_server: ApiServer,
) -> None:
    """Callbacks (DESIGN §6) and pages keep Starlette's body; their Allow is whole too
    (``PUT`` to a callback URL answered ``Allow: POST``, though providers probe it with
    GET and HEAD)."""
    with api_server.client() as http:
        for path, allow in (
            ("/v1/callbacks/nick/token", "GET, HEAD, POST"),
            ("/u/some-token", "GET, HEAD, POST"),
            ("/healthz", "GET, HEAD"),
        ):
            answer = http.put(path)
            assert answer.status_code == 405, (path, answer.text)
            assert answer.headers["allow"] == allow, path
            assert answer.json() == {"detail": "Method Not Allowed"}
