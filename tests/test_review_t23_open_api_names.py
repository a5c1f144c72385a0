"""An open API (no DISPATCH_API_TOKENS) and a ``Host`` that names a local host or the
public URL's host as a fully qualified name, with its trailing dot (review T23): the
real API over HTTP.

``localhost.`` and ``dispatch.example.com.`` are the same hosts as without the dot (RFC
1034 §3.1): a client given such a URL sends it so in ``Host``, and was refused 403 as
another site; a rebound name with a dot is still refused.
"""

from __future__ import annotations

from dispatch.redis_server import RedisServer
from tests.callback_support import api_process


def test_a_trailing_dot_names_the_same_host(redis_server: RedisServer) -> None:
    with api_process(redis_server.url, DISPATCH_PUBLIC_URL="https://dispatch.example.com") as http:
        port = http.base_url.port

        def status(host: str, origin: str | None = None) -> int:
            headers = {"Host": host} | ({"Origin": origin} if origin else {})
            return http.post("/v1/campaigns/c1/cancel", headers=headers).status_code

        # (404: no such campaign, the request was taken)
        assert status(f"localhost.:{port}") == 404
        assert status(f"127.0.0.1.:{port}") == 404
        assert status("dispatch.example.com.") == 404
        own = "https://dispatch.example.com."
        assert status("dispatch.example.com.", own) == 404
        # Other names are refused with or without it, and so is another site's page.
        assert status("attacker.example.") == 403
        assert status(f"attacker.example.:{port}") == 403
        assert status("dispatch.example.com.", "https://attacker.example") == 403
