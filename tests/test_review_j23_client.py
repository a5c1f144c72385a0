"""``dispatch.client.DispatchClient`` as other services set it up (review J23)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
import redis

from dispatch.client import DispatchAPIError, DispatchClient
from tests.api_server import ApiServer
from tests.api_support import smtp_body
from tests.conftest import API_TOKEN


def test_the_clients_timeout_holds_for_an_http_client_given_to_it(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """``http=httpx.Client(verify=...)`` is how an HTTPS API with a private CA is
    reached. Its requests went with httpx's default timeout, 5 s, not the client's
    ``timeout`` (60 s by default): a campaign of 300,000 inline recipients (7.6 s to
    store) was ``Unavailable`` after three attempts of 5 s, though the API stored it."""
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    with DispatchClient(api_server.url, API_TOKEN, http=http) as api:
        api.put_provider("local", smtp_body(2525))
        api.create_campaign({"id": "j23-t", "provider": "local", "subject": "s", "html": "h"})
        api.get_campaign("j23-t")
        assert api.test_provider("local", "ops@example.com").ok is False  # (nothing on 2525)
    timeouts = [request.extensions["timeout"] for request in sent]
    assert timeouts[:3] == [dict.fromkeys(("connect", "read", "write", "pool"), 60.0)] * 3
    # A test email's answer is read for its whole deadline, whatever the client's.
    assert timeouts[3] == {"connect": 60.0, "read": 75.0, "write": 60.0, "pool": 60.0}

    sent.clear()
    http = httpx.Client(event_hooks={"request": [sent.append]})
    with DispatchClient(api_server.url, API_TOKEN, timeout=90, http=http) as api:
        assert api.get_campaign("j23-t").id == "j23-t"
    assert sent[0].extensions["timeout"]["read"] == 90.0


class _ToHttps(http.server.BaseHTTPRequestHandler):
    """A reverse proxy's answer on its http:// port: nginx's 301 page to https://."""

    def _redirect(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        page = b"<html><head><title>301 Moved Permanently</title></head><body>nginx</body></html>"
        self.send_response(301)
        self.send_header("Location", f"https://dispatch.example{self.path}")
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_POST = _redirect

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ToHttps)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_redirect_in_front_of_the_api_names_where_it_points(redirecting: str) -> None:
    """A base_url of http:// where a proxy redirects to https:// was refused with the
    proxy's HTML page as its detail; now with where the request was redirected."""
    with DispatchClient(redirecting, API_TOKEN) as api:
        with pytest.raises(DispatchAPIError) as refused:
            api.create_campaign({"id": "j23-r", "provider": "p", "subject": "s", "html": "h"})
        with pytest.raises(DispatchAPIError) as listed:
            next(api.iter_campaigns())
    assert type(refused.value) is DispatchAPIError and refused.value.status_code == 301
    assert refused.value.detail == (
        f"Moved Permanently: {redirecting}/v1/campaigns is redirected to "
        "https://dispatch.example/v1/campaigns (use the API's own address as base_url)"
    )
    assert "https://dispatch.example/v1/campaigns?limit=200" in listed.value.detail
