"""Review Y12: a custom preference center's URL that holds a ``token`` parameter itself."""

from __future__ import annotations

import html
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.test_pages import _custom_center_links


@covers("GET /u/{token}")
@pytest.mark.parametrize("query", ["token=", "lang=en&token={token}", "token=x&token=y&lang=en"])
def test_the_centers_own_token_parameter_is_replaced_not_doubled(
    api_server: ApiServer, redis_client: redis.Redis, query: str
) -> None:
    """An operator who left a place for the token (``?token=``, a template's
    ``{token}``) got ``?token=&token=<ours>``: a center reading the first value (Flask's
    ``request.args.get``, Go's ``Query().Get``) read "" or "{token}", and could not tell
    whose page it was. Now the URL carries one ``token``, ours, and the rest as written."""
    center = f"https://prefs.acme.example/center?{query}#top"
    links = _custom_center_links(redis_client, center)
    token = urlsplit(links["unsubscribe"]).path.rsplit("/", 1)[1]
    with api_client(api_server, token=None) as http:
        answer = http.get(f"/u/{token}")
    assert answer.status_code == 303
    location = answer.headers["location"]
    in_body = html.unescape(links["html"]).rsplit(" ", 1)[1]  # {{ preferences_url }}
    assert in_body.startswith("https://prefs.acme.example/center?")
    for url in (location, in_body):
        parts = urlsplit(url)
        params = parse_qs(parts.query, keep_blank_values=True)
        assert params["token"] == [token], url
        assert params.get("lang", ["en"]) == ["en"] and parts.fragment == "top"
