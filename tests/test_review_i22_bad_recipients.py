"""Review I22: bad recipients among good ones. Each bad one ends alone, with an error
that says what is wrong, and can be found again by what was given."""

from __future__ import annotations

import json

import pytest
import redis

from dispatch.cli import main
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import create_held, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

ODD = ["user@[127.0.0.1]", '"quoted local"@example.com', "plainaddress"]


@covers("GET /v1/campaigns/{campaign_id}/messages")
def test_an_inline_address_that_failed_as_no_address_can_be_looked_up(
    api_server: ApiServer,
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An inline list is stored as given: its bad addresses fail at send time. Asked for
    by ``?email=``, such an address was a 422 ("no address: the campaign cannot have
    it"), and ``dispatch messages --email`` exit 2, so what happened to a recipient the
    campaign had could not be read."""
    smtp_provider(redis_client, smtp.port)
    people = [{"email": "ann@example.com"}, *({"email": odd} for odd in ODD)]
    body = {"id": "i22-odd", "provider": "local", "subject": "s", "html": "h"}
    run_batches(create_held(redis_client, {**body, "recipients": people})[1])
    with api_client(api_server) as api:
        path = "/v1/campaigns/i22-odd/messages"
        for seq, odd in enumerate(ODD, 1):
            answer = api.get(path, params={"email": odd.upper(), "status": "failed"})
            assert answer.status_code == 200, answer.text
            (found,) = answer.json()["items"]
            assert (found["seq"], found["email"]) == (seq, odd)
            assert found["error_class"] == "SMTP invalid email ID"
            assert repr(odd) in found["detail"]
        typo = api.get(path, params={"email": "ann@"})
    assert typo.status_code == 422, typo.text  # still a typo, not "never sent"
    assert typo.json()["field"] == "email"
    assert [m.rcpt_tos for m in smtp.messages] == [["ann@example.com"]]
    assert main(["messages", "i22-odd", "--email", ODD[0]]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "failed"
    assert main(["messages", "i22-odd", "--email", "ann@"]) == 2
