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


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_an_appended_line_that_is_not_utf8_is_named_by_its_byte(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A Latin-1 export's "é" (or a body saved as UTF-16) was rejected as "not valid
    JSON: str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)",
    orjson's words for any such byte wherever it is; its neighbours are still kept."""
    smtp_provider(redis_client, 2525)
    body = {"id": "i22-latin1", "provider": "local", "subject": "s", "html": "h", "draft": True}
    lines = [
        b'{"email": "ann@example.com"}',
        '{"email": "jose@example.com", "vars": {"name": "Jos\xe9"}}'.encode("latin-1"),
        b'{"email": "bob@example.com"}',
    ]
    with api_client(api_server) as api:
        assert api.post("/v1/campaigns", json=body).status_code == 201
        path = "/v1/campaigns/i22-latin1/recipients"
        answer = api.post(path, content=b"\r\n".join(lines))
        utf16 = api.post(path, content='{"email": "carl@example.com"}\n'.encode("utf-16"))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["appended"], result["rejected"]) == (2, 1)
    (error,) = result["errors"]
    assert (error["line"], error["field"]) == (2, "body")
    assert error["message"].startswith("not UTF-8 text: byte 0xe9 at column 52;"), error
    first = utf16.json()["errors"][0]
    assert first["line"] == 1
    assert first["message"].startswith("not UTF-8 text (UTF-16, by its byte order mark)")
