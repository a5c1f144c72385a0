"""Review V12: a provider's waits against the batch task's time limit.

Celery kills a batch task at half DISPATCH_VISIBILITY_TIMEOUT (its soft limit does
nothing inside the event loop), and a run takes no new chunk after a quarter of it (an
eighth more for a chunk its pace holds): but an SMTP reply to the end of a message may
take data_timeout (600 s by default, up to 900), so a chunk started late, or answered
late, was killed mid-send: every session's chunk of the process unknown, the task gone
and the batch stalled until beat's sweep. Now a wait still on just before the limit is
cut short: that chunk alone ends unknown and the batch is handed on at once. Providers
whose waits cannot fit are said so (their view, ``dispatch health``, the worker's
start), and ``timeout`` has a maximum (it lengthened the end of data's wait unbounded).
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import redis
from pydantic import ValidationError

from dispatch import campaign_reads, campaigns, celery_app, cli, store
from dispatch.models import CampaignRequest
from dispatch.provider_store import load_provider, provider_view, save_provider
from dispatch.redis_server import RedisServer
from dispatch.settings import wait_problem
from providers.config import MAX_TIMEOUT, HttpConfig, SmtpConfig
from tests.helpers import recipients, smtp_provider
from tests.test_review_c11_data_timeout import _server
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues

HTTP_BODY = {
    "to": "$$To",
    "from": "$$FromAddress",
    "name": "$$FromName",
    "subject": "$$Subject",
    "html": "$$HTML",
}


def test_a_wait_still_on_at_the_time_limit_is_cut_short_and_the_batch_handed_on() -> None:
    """Visibility timeout 60 s: the task is killed at 30 s. The server answers the end of
    the first message 35 s late (within data_timeout 40 s): on the old code the worker
    killed the task mid-wait and the batch stalled (the others never sent). Now the wait
    is cut short before the limit: that message is unknown, the others are sent by the
    next run."""
    server = RedisServer().start()
    worker = WorkerProcess(server.url, concurrency=1, DISPATCH_VISIBILITY_TIMEOUT="60").start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        wait_for_queues(r)
        with _server(data_delays=[35.0]) as smtp:
            # One message a chunk (rate 1), one connection.
            fields = {"rate_per_second": 1.0, "max_connections": 1}
            smtp_provider(r, smtp.port, timeout=1.0, data_timeout=40.0, **fields)
            body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3)}
            cid, _ = campaigns.create_campaign(
                CampaignRequest.model_validate(body), client=r, enqueue=batch_enqueuer(server.url)
            )
            done = lambda: campaign_reads.get_status(cid, r).value == "completed"  # noqa: E731
            wait_for(done, timeout=90, interval=0.5)
            received = Counter(m.rcpt_tos[0] for m in smtp.messages)
        # (the server, whose connection was dropped, did not record the first)
        assert received == {"user1@example.com": 1, "user2@example.com": 1}, received
        summary = campaign_reads.campaign_summary(cid, r)
        assert (summary["sent"], summary["unknown"], summary["failed"]) == (2, 1, 0), summary
    finally:
        worker.stop()
        server.stop()


@pytest.mark.parametrize("kind", ["smtp", "http"])
def test_a_timeout_over_the_maximum_is_refused_naming_it(
    kind: str, redis_client: redis.Redis
) -> None:
    """An SMTP timeout of 100,000 s made the end of data wait that long (the longer of
    data_timeout and timeout): data_timeout's maximum held nothing."""
    base = (
        {"nickname": "p", "kind": "smtp", "host": "mail.example.com"}
        if kind == "smtp"
        else {"nickname": "p", "kind": "http", "endpoint": "https://esp.example/send"}
        | {"body": HTTP_BODY}
    )
    with pytest.raises(ValidationError) as info:
        save_provider({**base, "timeout": 100_000.0}, redis_client)
    [error] = info.value.errors()
    assert error["loc"][-1] == "timeout" and f"{MAX_TIMEOUT:g} s" in error["msg"], error
    save_provider({**base, "timeout": MAX_TIMEOUT}, redis_client)
    # One saved before the maximum came reads as it was (its campaigns go on).
    stored = str(redis_client.get(store.provider_key("p")))
    assert '"timeout":900.0' in stored, stored
    redis_client.set(store.provider_key("p"), stored.replace('"timeout":900.0', '"timeout":5000.0'))
    assert load_provider("p", redis_client).timeout == 5000.0  # type: ignore[union-attr]


def test_waits_that_outlast_a_run_are_said_naming_the_setting_and_fields() -> None:
    """Defaults: an SMTP provider's last chunk starts at 900 s and has 890 s before the
    cut for its 660 s of waits (data_timeout after two of timeout). A visibility timeout
    under 2,680 s leaves it too little."""
    smtp = SmtpConfig(nickname="s", host="h")
    assert smtp.longest_wait == 660.0
    assert wait_problem(3600, smtp.longest_wait, smtp.wait_fields()) == ""
    assert wait_problem(2680, smtp.longest_wait, smtp.wait_fields()) == ""
    short = wait_problem(2000, smtp.longest_wait, smtp.wait_fields())
    assert "DISPATCH_VISIBILITY_TIMEOUT=2000" in short and "2680 or more" in short, short
    assert "data_timeout 600 s, timeout 30 s" in short, short
    http = HttpConfig(nickname="h", endpoint="https://esp.example/send", body=HTTP_BODY)
    assert http.longest_wait == 90.0 and "timeout 30 s" in http.wait_fields()


def test_the_view_health_and_worker_start_name_a_provider_whose_waits_outlast_a_run(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    save_provider(
        {"nickname": "slow", "kind": "smtp", "host": "mail.example.com", "data_timeout": 900.0},
        redis_client,
    )
    save_provider(
        {"nickname": "quick", "kind": "smtp", "host": "mail.example.com", "data_timeout": 60.0},
        redis_client,
    )
    [warning] = [w for w in provider_view("slow", redis_client)["warnings"] if "VISIBILITY" in w]
    assert "data_timeout 900 s" in warning, warning
    assert not [w for w in provider_view("quick", redis_client)["warnings"] if "VISIBILITY" in w]
    monkeypatch.setattr(sys, "argv", ["dispatch"])
    monkeypatch.setattr("dispatch.store.sync_client", lambda: redis_client)
    cli.main(["health"])  # no worker: unhealthy, but the providers are looked at
    err = capsys.readouterr().err
    assert "warning: provider 'slow'" in err and "'quick'" not in err, err
    celery_app._warn_of_waits_past_the_time_limit()  # (what the worker's start calls)
    logged = [r.getMessage() for r in caplog.records if r.name == "dispatch.celery_app"]
    assert len(logged) == 1 and logged[0].startswith("provider 'slow': "), logged
