"""Recipients' addresses can be kept out of the logs (review W12): with
``DISPATCH_LOG_ADDRESSES=masked`` every JSON log line shows an address as
``j***@example.com``: a failed message's meta and the provider's reply quoting the
recipient, a suppression removed, an exception's text, the API's access log. The API,
which exists to track messages, keeps them whole. Unset, lines are as before."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from uvicorn.logging import AccessFormatter

from dispatch import suppressions
from dispatch.logs import configure
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.helpers import campaign_body, http_provider, run_inline
from tests.http_sink import HttpSink, RecordedRequest, Reply


@pytest.fixture
def json_logs() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    access_filters = access.filters[:]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    access.filters[:] = access_filters
    for name in ("celery.app.trace", "celery.beat", "celery.worker.strategy", "celery.pool"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line]


def _refuse_quoting_the_recipient(request: RecordedRequest) -> Reply:
    to = request.json()["msgs"][0]["to"]
    return Reply(400, json.dumps({"error": f"mailbox {to} does not exist"}).encode())


def _failed_campaign_and_removal(r: redis.Redis) -> str:
    """A campaign of one message the provider refuses, quoting its address; one
    suppression removed; an exception quoting an address. The campaign's id."""
    with HttpSink(answer=_refuse_quoting_the_recipient) as sink:
        http_provider(r, sink.url, batch_size=1)
        body = campaign_body("w12-logs", 1, provider="esp")
        body["recipients"][0]["email"] = "jane.doe@example.com"
        campaign_id, _ = run_inline(r, body)
    suppressions.add("removed.person@example.com", reason="manual", source="test")
    assert suppressions.remove("removed.person@example.com")
    try:
        raise ValueError("'broken.person@example.com' is not an email address")
    except ValueError:
        logging.getLogger("dispatch.test").exception("refused")
    return campaign_id


def test_masked_log_lines_carry_no_address_and_still_name_the_message(
    redis_client: redis.Redis,
    api_server: ApiServer,
    json_logs: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("INFO", addresses="masked")
    capsys.readouterr()
    campaign_id = _failed_campaign_and_removal(redis_client)
    lines = _lines(capsys)
    text = orjson.dumps(lines).decode()
    for local in ("jane.doe", "removed.person", "broken.person"):
        assert f"{local}@" not in text, (local, text)
    failed = [e for e in lines if e["logger"] == "dispatch.messages"]
    assert failed, lines
    entry = failed[0]
    assert entry["meta"].startswith(f"j***@example.com|1|{campaign_id}|")
    assert entry["seq"] == 0 and entry["campaign_id"] == campaign_id
    assert "mailbox j***@example.com does not exist" in entry["message"]
    removed = next(e for e in lines if e["message"].startswith("suppression removed"))
    assert removed["email"] == "r***@example.com"
    error = next(e for e in lines if e["logger"] == "dispatch.test")
    assert "'b***@example.com' is not an email address" in error["exception"]
    # What exists to track messages keeps the address whole.
    with api_client(api_server) as api:
        messages = api.get(f"/v1/campaigns/{campaign_id}/messages").json()["items"]
    assert messages[0]["email"] == "jane.doe@example.com"


def test_the_access_log_shows_an_address_in_a_path_masked(json_logs: None) -> None:
    configure("INFO", addresses="masked")
    access = logging.getLogger("uvicorn.access")
    record = access.makeRecord(
        access.name,
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/suppressions/jane.doe%40example.com", "1.1", 200),
        None,
    )
    assert access.filter(record)
    line = AccessFormatter(use_colors=False).format(record)
    assert "/v1/suppressions/j***%40example.com" in line and "jane.doe" not in line


def test_unset_log_lines_keep_addresses_whole(
    redis_client: redis.Redis, json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("INFO")
    capsys.readouterr()
    campaign_id = _failed_campaign_and_removal(redis_client)
    lines = _lines(capsys)
    entry = next(e for e in lines if e["logger"] == "dispatch.messages")
    assert entry["meta"].startswith(f"jane.doe@example.com|1|{campaign_id}|")
    assert "removed.person@example.com" in orjson.dumps(lines).decode()
