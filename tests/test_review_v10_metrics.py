"""Review V10: the callback counters of /metrics, as Prometheus reads them.

They are kept by the API process (not Redis), so a series born with its provider's
first counted event (after the API started, or the provider was saved) would have that
event in its first sample, where ``increase()`` sees nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from dispatch.provider_store import delete_provider, save_provider
from dispatch.settings import get_settings
from providers.meta import build_meta
from tests.api_server import ApiServer
from tests.callback_support import callback_path, nested, post
from tests.test_oncall import Watch, _labels, _scrape


def _save(r: redis.Redis, nickname: str) -> str:
    smtp = {"kind": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none"}
    save_provider({"nickname": nickname, "from_address": "deals@acme.example", **smtp}, r)
    return callback_path(r, nickname)


def _with_a_refused_event() -> dict[str, object]:
    """A callback payload of one event taken in and one refused (a partial success)."""
    email = "a@example.com"
    meta = build_meta(
        email=email,
        account_id=get_settings().account_id,
        campaign_id="v10-none",
        send_date=datetime.now(UTC).date(),
        seq=0,
    )
    return nested({"type": "delivered", "email": email, "meta": meta}, {"type": "nonsense"})


def _refused_series(text: str, nickname: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith("dispatch_callback_events_total{")
        and f'provider="{nickname}"' in line
        and 'type="invalid"' in line
    ]


def test_the_first_refused_callback_event_of_a_provider_fires_its_alert(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The provider's first callback in this API process carries a refused event: the
    series is at 0 in the scrape before, so the refusal is an increase."""
    path = _save(redis_client, "v10-first")
    watch = Watch(api_server)
    watch.scrape()
    with api_server.client() as http:
        reply = post(http, path, _with_a_refused_event())
    assert reply.status_code == 200, reply.text
    assert reply.json()["failed"] == 1
    watch.scrape()
    firing = watch.firing()
    assert _labels(firing["DispatchCallbackEventsRefused"], "provider") == {"v10-first"}


def test_a_saved_provider_has_its_refused_events_series_at_zero_and_a_deleted_one_none(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    path = _save(redis_client, "v10-gone")
    assert _refused_series(_scrape(api_server), "v10-gone") == [
        'dispatch_callback_events_total{provider="v10-gone",type="invalid"} 0.0'
    ]
    with api_server.client() as http:
        assert post(http, path, _with_a_refused_event()).status_code == 200
    text = _scrape(api_server)
    assert _refused_series(text, "v10-gone") == [
        'dispatch_callback_events_total{provider="v10-gone",type="invalid"} 1.0'
    ]
    assert delete_provider("v10-gone", redis_client)
    assert 'provider="v10-gone"' not in _scrape(api_server)
