"""A message's ``meta`` in ``GET /v1/campaigns/{id}/messages`` is the one its mail carried,
and empty for a recipient no mail could carry one for (review F25).

An address with a ``|`` (the meta's separator, a valid local-part character) or a text
that is no address (an inline list is stored as given) fails at send time without a
meta, and its log line has none; the page showed ``a|b@example.com|1|...``, a meta of
nine fields that no mail carried and that reads as email ``a``, account
``b@example.com``."""

from __future__ import annotations

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, save_smtp_provider, wait_for_campaign
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess


@covers("GET /v1/campaigns/{campaign_id}/messages")
def test_a_message_sent_without_a_meta_shows_none(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    people = [{"email": "a|b@example.com"}, {"email": "Ok@Example.COM"}, {"email": "notanaddr"}]
    body = {"id": "f25-meta", "provider": "local", "subject": "s", "html": "h"}
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        created = api.post("/v1/campaigns", json={**body, "recipients": people})
        assert created.status_code == 201, created.text
        done = wait_for_campaign(api, "f25-meta", lambda s: s["status"] != "running", 60)
        page = api.get("/v1/campaigns/f25-meta/messages").json()["items"]
    assert (done["sent"], done["failed"]) == (1, 2)
    by_email = {m["email"]: m for m in page}
    assert by_email["a|b@example.com"]["status"] == "failed"
    assert by_email["a|b@example.com"]["meta"] == ""
    assert by_email["notanaddr"]["status"] == "failed"
    assert by_email["notanaddr"]["meta"] == ""
    [received] = smtp.messages
    assert by_email["Ok@Example.COM"]["meta"] == received.message["X-CleverTap_META"]
    assert received.message["X-CleverTap_META"].startswith("Ok@example.com|")
