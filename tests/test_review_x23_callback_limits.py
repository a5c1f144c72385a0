"""The event cap of a callback request as the README and the OpenAPI document state it
(DESIGN §6): more than 1000 events is a 400 for the generic kinds, but a ``sendgrid``
post (up to 768 KB, reference §2.1) may hold more and is refused only past
``MAX_SENDGRID_EVENTS``. Both documents said "more than 1000 events" for every kind, so
a SendGrid integrator expected a 400 the service never answers."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import redis

from providers.callbacks.events import MAX_EVENTS
from providers.callbacks.sendgrid import MAX_SENDGRID_EVENTS
from tests.callback_support import draft_campaign, generic_event, post

pytestmark = pytest.mark.usefixtures("sns_settings")
README = Path(__file__).parent.parent / "README.md"


def _sendgrid_events(meta: str, count: int) -> list[dict[str, object]]:
    return [
        {"email": "a@example.com", "event": "delivered", "timestamp": 1795000000,
         "clevertap_meta": meta, "sg_event_id": f"x23-{n}"}
        for n in range(count)
    ]  # fmt: skip


def test_the_cap_depends_on_the_kind_as_both_documents_say(
    api: httpx.Client, redis_client: redis.Redis, paths: dict[str, str]
) -> None:
    (meta,) = draft_campaign(redis_client, "x23-cap", ["a@example.com"])
    event = generic_event("delivered", "a@example.com", meta)
    over = {"version": "v2", "events": {"success": [event] * (MAX_EVENTS + 1)}}
    assert post(api, paths["gen"], over).status_code == 400
    assert post(api, paths["sg"], _sendgrid_events(meta, MAX_EVENTS + 1)).json() == {
        "status": "success",
        "message": "Callback processed successfully",
    }
    refused = post(api, paths["sg"], _sendgrid_events(meta, MAX_SENDGRID_EVENTS + 1))
    assert refused.status_code == 400

    # The OpenAPI document's 400 of the callback route names the SendGrid cap.
    document = api.get("/openapi.json").json()
    operation = document["paths"]["/v1/callbacks/{nickname}/{token}"]["post"]
    described = operation["responses"]["400"]["description"]
    assert f"{MAX_SENDGRID_EVENTS:,}" in described and "sendgrid" in described

    # So does the README's list of what is refused as a whole.
    text = " ".join(README.read_text().split())
    refusals = re.search(r"a request malformed as a whole \((.*?)\) is a 400", text)
    assert refusals is not None
    assert f"{MAX_SENDGRID_EVENTS:,} for `sendgrid`" in refusals[1]
