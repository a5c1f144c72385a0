"""The provider test email with the recipient vars a Generic HTTP payload needs (DESIGN §2, §4)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from dispatch.cli import main
from dispatch.test_email import send_test_email
from providers.config import HttpConfig, parse_provider_config
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, dispatch_client
from tests.http_sink import HttpSink, Reply

MANDATORY = {
    "to": "$$To",
    "subject": "$$Subject",
    "from": "$$FromName",
    "addr": "$$FromAddress",
    "html": "$$HTML",
}
NAME = {"name": "Ada"}


def http_provider(url: str, **fields: Any) -> dict[str, Any]:
    """A Generic HTTP provider whose payload uses the custom placeholder ``$$name``."""
    return {
        "nickname": "hook",
        "kind": "http",
        "endpoint": f"{url}/send",
        "body": {**MANDATORY, "name": "$$name"},
        "from_name": "Acme",
        "from_address": "deals@acme.example",
        **fields,
    }


def http_config(data: dict[str, Any]) -> HttpConfig:
    config = parse_provider_config(data)
    assert isinstance(config, HttpConfig)
    return config


def test_the_test_email_fills_custom_placeholders_from_the_vars_given() -> None:
    with HttpSink() as sink:
        config = http_config(http_provider(sink.url))
        result = asyncio.run(send_test_email(config, "ops@example.com", vars={"name": "Ada"}))
        assert (result.ok, result.error) == (True, None), result.detail
        assert sink.requests[0].json()["name"] == "Ada"

        # Without them, nothing is sent and the answer says how to give them.
        missing = asyncio.run(send_test_email(config, "ops@example.com"))
        assert (missing.ok, missing.error) == (False, "Invalid message")
        assert "$$name" in missing.detail and '"vars"' in missing.detail
        assert len(sink.requests) == 1


def test_the_vars_also_fill_the_globals_of_a_batch_payload() -> None:
    """One message, no campaign: the test's vars stand for both levels (DESIGN §3)."""
    with HttpSink() as sink:
        body = {"list": "$$list_id", "msgs": [{**MANDATORY, "name": "$$name"}]}
        config = http_config(http_provider(sink.url, batch=True, body=body))
        vars_ = {"name": "Ada", "list_id": 7}
        result = asyncio.run(send_test_email(config, "ops@example.com", vars=vars_))
        assert result.ok, result.detail
        sent = sink.requests[0].json()
        assert (sent["list"], sent["msgs"][0]["name"]) == (7, "Ada")


def test_providers_test_takes_vars_on_the_command_line(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with HttpSink() as sink:
        config = tmp_path / "hook.yaml"
        config.write_text(yaml.safe_dump(http_provider(sink.url)))
        assert main(["providers", "add", str(config)]) == 0
        capsys.readouterr()

        argv = ["providers", "test", "hook", "--to", "ops@example.com"]
        assert main([*argv, "--var", "name=Ada Lovelace", "--var", "x=a=b"]) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        assert sink.requests[0].json()["name"] == "Ada Lovelace"

        assert main(argv) == 1
        assert "$$name" in json.loads(capsys.readouterr().out)["detail"]
        with pytest.raises(SystemExit):
            main([*argv, "--var", "no-equals-sign"])


@covers("POST /v1/providers/{nickname}/test")
def test_the_test_route_takes_the_vars(api_server: ApiServer, redis_client: redis.Redis) -> None:
    """Over HTTP and through the Python client: ``vars`` reach the payload."""
    with HttpSink() as sink, api_client(api_server) as api:
        assert api.put("/v1/providers/hook", json=http_provider(sink.url)).status_code == 201
        client = dispatch_client(api_server)
        sent = client.test_provider("hook", "ops@example.com", vars={"name": "Ada"})
        assert (sent.ok, sent.error) == (True, None), sent.detail
        assert sink.requests[0].json()["name"] == "Ada"
        missing = api.post("/v1/providers/hook/test", json={"to": "ops@example.com"}).json()
        assert (missing["ok"], missing["error"]) == (False, "Invalid message")
        refused = api.post("/v1/providers/hook/test", json={"to": "ops@example.com", "vars": []})
        assert refused.status_code == 422 and refused.json()["field"] == "vars"
    assert len(sink.requests) == 1


def test_the_test_email_keeps_to_the_providers_connections_and_quota(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test sent while campaigns hold every connection waits for one, then says so
    instead of opening one more; it counts against the daily quota (a refused one is
    given back), and a used-up quota answers as a campaign's send would."""
    from dispatch import store, test_email

    monkeypatch.setattr(test_email, "TEST_SLOT_WAIT_SECONDS", 0.5)
    with HttpSink() as sink:
        config = http_config(http_provider(sink.url, max_connections=1, daily_quota=2))
        slots = f"{store.PREFIX}:connections:hook"
        redis_client.zadd(slots, {"a-campaign": time.time() + 60})
        busy = asyncio.run(test_email.send_shared_test_email(config, "a@example.com", vars=NAME))
        assert (busy.ok, busy.error) == (False, "Dispatch failed")
        assert "all 1 connections of provider 'hook' are in use" in busy.detail
        assert sink.requests == []
        redis_client.zrem(slots, "a-campaign")

        sink.script(Reply(400, b"no"))  # refused: not counted
        for expected in (False, True, True, False):
            result = asyncio.run(
                test_email.send_shared_test_email(config, "a@example.com", vars=NAME)
            )
            assert result.ok is expected, result.detail
        assert "daily quota of 2 messages" in result.detail
        assert len(sink.requests) == 3
        assert redis_client.zcard(slots) == 0  # every slot given back
