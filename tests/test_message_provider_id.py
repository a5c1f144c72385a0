"""A message's listing shows the id its provider gave it (what to ask the provider about).

The id was kept in the ledger record (``queued as ...``) and shown nowhere: the README's
advice for messages ended ``unknown`` ("ask the ESP what it took") had nothing to ask with.
"""

from __future__ import annotations

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, save_smtp_provider, wait_for_campaign
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess


@covers("GET /v1/campaigns/{campaign_id}/messages")
def test_messages_show_the_id_the_server_gave(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    # One address's server names an id ("queued as"), the other's does not ("OK queued").
    smtp.handler.data_reply = lambda envelope: (
        "250 2.0.0 Ok: queued as 4Xq9Zt1K" if envelope.rcpt_tos[0].startswith("ann") else None
    )
    body = {"id": "ids-1", "provider": "local", "subject": "Hi", "html": "<p>hi</p>",
            "recipients": [{"email": "ann@example.com"}, {"email": "bo@example.com"}]}  # fmt: skip
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        assert api.post("/v1/campaigns", json=body).status_code == 201
        wait_for_campaign(api, "ids-1", lambda s: s["status"] == "completed")
        items = api.get("/v1/campaigns/ids-1/messages").json()["items"]
    assert {m["email"]: (m["status"], m["provider_message_id"]) for m in items} == {
        "ann@example.com": ("sent", "4Xq9Zt1K"),
        "bo@example.com": ("sent", ""),
    }
