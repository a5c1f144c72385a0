"""Review Y24, DESIGN §2 (Providers, interface) read literally: the table's "defaults"
column (smtp: port 587, 465 for ``tls``; ses: host ``email-smtp.<region>.amazonaws.com``,
587 ``starttls`` or 465 ``tls``; sendgrid: ``smtp.sendgrid.net``, 587 ``starttls``; gmail:
``smtp.gmail.com``, 465 ``tls``) are the values of the fields ``host``, ``port`` and
``security``. A provider saved without them was read back with ``host ""``, ``port 0``
and ``security null`` (the presets only in the extra ``connects_to``). They are now
shown applied, and a read saved back still follows the presets (nothing is pinned).
Through the real app over HTTP, on a real Redis.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from dispatch.provider_store import load_provider
from providers.config import SmtpFamilyBase
from tests.api_server import ApiServer
from tests.api_support import api_client, covers


@pytest.mark.parametrize(
    ("given", "host", "port", "security"),
    [
        ({"kind": "smtp", "host": "mail.example.com"}, "mail.example.com", 587, "starttls"),
        ({"kind": "smtp", "host": "mail.example.com", "security": "tls"}, "mail.example.com",
         465, "tls"),
        ({"kind": "ses", "region": "eu-west-1"}, "email-smtp.eu-west-1.amazonaws.com", 587,
         "starttls"),
        ({"kind": "ses", "region": "eu-west-1", "security": "tls"},
         "email-smtp.eu-west-1.amazonaws.com", 465, "tls"),
        ({"kind": "sendgrid"}, "smtp.sendgrid.net", 587, "starttls"),
        ({"kind": "gmail"}, "smtp.gmail.com", 465, "tls"),
    ],
)  # fmt: skip
@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}")
def test_a_read_shows_the_defaults_of_design_2_in_their_fields(
    api_server: ApiServer,
    redis_client: redis.Redis,
    given: dict[str, Any],
    host: str,
    port: int,
    security: str,
) -> None:
    with api_client(api_server) as api:
        saved = api.put("/v1/providers/preset", json=given)
        assert saved.status_code == 201, saved.text
        view = api.get("/v1/providers/preset").json()
    assert (view["host"], view["port"], view["security"]) == (host, port, security)
    assert view["connects_to"] == {"host": host, "port": port, "security": security}


@covers("PUT /v1/providers/{nickname}", "GET /v1/providers/{nickname}")
def test_a_read_saved_back_still_follows_the_presets(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The values a read shows are left empty again when saved (stored as never given):
    the configuration goes on following its presets, and reads the same."""
    with api_client(api_server) as api:
        assert api.put("/v1/providers/gm", json={"kind": "gmail"}).status_code == 201
        read = api.get("/v1/providers/gm").json()
        assert api.put("/v1/providers/gm", json=read).status_code == 200
        stored = load_provider("gm")
        assert isinstance(stored, SmtpFamilyBase)
        assert (stored.host, stored.port, stored.security) == ("", 0, None)
        assert api.get("/v1/providers/gm").json() == read

        ses = {"kind": "ses", "region": "us-east-1"}
        assert api.put("/v1/providers/ses", json=ses).status_code == 201
        read = api.get("/v1/providers/ses").json()
        assert read["host"] == "email-smtp.us-east-1.amazonaws.com"
        assert api.put("/v1/providers/ses", json=read).status_code == 200
        assert api.get("/v1/providers/ses").json()["warnings"] == read["warnings"]
        stored = load_provider("ses")
        assert isinstance(stored, SmtpFamilyBase) and stored.host == ""


def test_values_given_other_than_the_presets_are_kept(redis_client: redis.Redis) -> None:
    """A port or host of one's own is stored as given (a local test server)."""
    from dispatch.provider_store import save_provider

    given = {"nickname": "own", "kind": "sendgrid", "host": "127.0.0.1", "port": 2525,
             "security": "none"}  # fmt: skip
    save_provider(given, redis_client)
    stored = load_provider("own", redis_client)
    assert isinstance(stored, SmtpFamilyBase)
    assert (stored.host, stored.port, stored.security) == ("127.0.0.1", 2525, "none")
