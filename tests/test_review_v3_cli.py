"""Review V3: the ``dispatch`` command line on a platform engineer's first days."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis
import yaml

from dispatch import campaign_reads, campaigns, lifecycle, store
from dispatch.cli import main
from dispatch.client import DispatchClient, Unavailable
from dispatch.models import campaign_request
from dispatch.progress import ProgressBar
from dispatch.provider_store import save_provider
from dispatch.redis_server import RedisServer
from tests.test_oncall import lost_redis  # noqa: F401 (a fixture: a Redis to stop)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("lost_redis")  # the process on own_redis
def test_follow_waits_out_a_redis_restart(
    own_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``status --follow`` ended with ``error: Redis at ...`` (exit 1) when Redis went
    away for a moment while the campaign went on: a restart or failover ended the watch."""
    import dispatch.cli

    save_provider(
        {"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 2525,
         "security": "none", "from_address": "a@acme.example"}
    )  # fmt: skip
    request = campaign_request(
        {"id": "c-restart", "provider": "p", "subject": "Hi", "html": "<p>hi</p>",
         "recipients": [{"email": f"r{i}@example.com"} for i in range(3)]}
    )  # fmt: skip
    # Nothing enqueued (Celery would keep a connection to this Redis): it stays running.
    campaigns.create_campaign(request, enqueue=lambda campaign_id, batch: None)
    naps = 0

    def nap(seconds: float) -> None:
        nonlocal naps
        naps += 1
        if naps == 1:
            own_redis.halt()  # two reads find it gone
        elif naps == 3:
            own_redis.start()  # the same folder: its data is back
            lifecycle.cancel(
                "c-restart",
                enqueue=lambda campaign_id, batch: None,
                settle_later=lambda campaign_id, status: None,
            )

    # (not time.sleep itself: redis-py and RedisServer.start sleep too)
    monkeypatch.setattr(dispatch.cli, "time", SimpleNamespace(sleep=nap, monotonic=time.monotonic))
    code, out, err = run(capsys, "status", "c-restart", "--follow")
    assert code == 1, err  # it waited, then saw the cancel (unsent messages: exit 1)
    assert json.loads(out)["status"] == "cancelled"
    assert "Redis unreachable, trying again" in err, err


def test_follow_gives_up_on_a_redis_gone_for_good(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dispatch.cli

    reads = iter([{"status": "running", "total": 2, "queued": 2, "sent": 0, "failed": 0}])

    def read(campaign_id: str) -> dict[str, object]:
        for summary in reads:
            return summary
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(campaign_reads, "campaign_summary", read)
    monkeypatch.setattr(dispatch.cli, "FOLLOW_OUTAGE_SECONDS", 0.0)
    fake_time = SimpleNamespace(sleep=lambda seconds: None, monotonic=time.monotonic)
    monkeypatch.setattr(dispatch.cli, "time", fake_time)
    code, out, err = run(capsys, "status", "c", "--follow")
    assert (code, out) == (1, "")
    assert "unreachable for 0 s while following campaign 'c'" in err, err


def test_a_progress_bar_without_a_terminal_ends_on_its_last_state() -> None:
    """Lines are written every 2 s without a terminal: a campaign that paused part-way
    less than that after the last line ended on an older count than the real one."""
    stream = io.StringIO()
    bar = ProgressBar("c", stream=stream)
    bar.update(1, 10, "sent 1")
    bar.update(4, 10, "sent 4")  # at once: not written yet
    bar.close()
    lines = stream.getvalue().splitlines()
    assert " 4/10 " in lines[-1] and lines[-1].endswith("sent 4"), lines
    assert len(lines) == 2


def _provider(nickname: str, **fields: object) -> dict[str, object]:
    return {"nickname": nickname, "kind": "smtp", "host": "127.0.0.1", "port": 2525,
            "security": "none", "from_address": "a@acme.example", **fields}  # fmt: skip


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="ascii"))


def test_json_on_standard_input_is_read_as_json(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``jq ... | dispatch providers add -`` went to the YAML parser: a tab indent (jq
    --tab, Go's MarshalIndent) was refused as "not valid YAML", an escaped emoji became
    two lone surrogates and ``1e1`` a string."""
    text = json.dumps(_provider("tabbed", from_name="Acme 😀", rate_per_second=1e1), indent="\t")
    _stdin(monkeypatch, text.replace("10.0", "1e1").encode())
    code, out, err = run(capsys, "providers", "add", "-")
    assert code == 0, err
    saved = json.loads(out)
    assert (saved["from_name"], saved["rate_per_second"]) == ("Acme 😀", 10.0)


@pytest.mark.parametrize(
    ("name", "encoding"),
    [("bom.json", "utf-8-sig"), ("wide.json", "utf-16"), ("wide.yaml", "utf-16")],
)  # fmt: skip
def test_files_are_utf8_or_carry_a_byte_order_mark(
    name: str,
    encoding: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A JSON file saved by Notepad (a UTF-8 BOM) was "not valid JSON", one written by
    PowerShell 5's ``>`` (UTF-16) could not be read."""
    path = tmp_path / name
    path.write_text(json.dumps(_provider("enc", from_name="Café Acme")), encoding=encoding)
    code, out, err = run(capsys, "providers", "add", str(path))
    assert code == 0, err
    assert json.loads(out)["from_name"] == "Café Acme"


def test_a_file_that_is_not_utf8_names_the_line(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("nickname: x\nfrom_name: Café\n".encode("latin-1"))
    code, _, err = run(capsys, "providers", "add", str(path))
    assert code == 2
    assert err == f"error: {path}: not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8\n"


def test_files_are_read_as_utf8_whatever_the_locale(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A UTF-8 file was read in the locale's encoding: an ASCII locale refused it (a
    Latin-1 or cp1252 one would have saved "CafÃ©"); standard input likewise."""
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(_provider("enc", from_name="Café Acme"), allow_unicode=True),
        encoding="utf-8",
    )
    env = os.environ | {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env |= {
        "DISPATCH_REDIS_URL": redis_server.url,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    for argv, stdin in ((["providers", "add", str(path)], None), (["providers", "add", "-"], path)):
        with open(stdin or os.devnull, "rb") as given:
            done = subprocess.run(
                [sys.executable, "-m", "dispatch.cli", *argv],
                env=env, stdin=given, capture_output=True, timeout=60,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout)["from_name"] == "Café Acme"


def test_a_refused_provider_in_a_list_loses_none_after_it(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The first refused provider of a file ended the command: those after it were not
    saved, and the error ("smtp.port: ...") did not say which of the list it was."""
    path = tmp_path / "all.yaml"
    items = [_provider("one"), _provider("two", port=99999), _provider("three")]
    path.write_text(yaml.safe_dump(items))
    code, out, err = run(capsys, "providers", "add", str(path))
    assert code == 2
    assert err.startswith(f"error: {path}: [1] 'two': port: "), err
    assert len(err.splitlines()) == 1
    assert sorted(redis_client.smembers(store.PROVIDERS_SET)) == ["one", "three"]
    assert out.count('"nickname"') == 2


def test_the_client_waits_out_an_api_restart() -> None:
    """``DispatchClient.wait`` raised :class:`Unavailable` once one poll failed after the
    client's retries (about 1.5 s): an API restarted during a 10-minute wait ended it."""
    answers: list[httpx.Response | Exception] = [
        httpx.Response(200, json={"id": "c", "provider": "p", "status": "running"}),
        httpx.ConnectError("connection refused"),
        httpx.Response(503, json={"detail": "Redis unavailable"}),
        httpx.Response(200, json={"id": "c", "provider": "p", "status": "completed", "sent": 3}),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        reply = answers.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    http = httpx.Client(transport=httpx.MockTransport(answer))
    with DispatchClient("http://dispatch.test", retries=0, http=http) as api:
        assert api.wait("c", interval=0).sent == 3
    assert answers == []


def test_the_client_gives_up_waiting_at_its_deadline() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "Redis unavailable"})

    http = httpx.Client(transport=httpx.MockTransport(down))
    with (
        DispatchClient("http://dispatch.test", retries=0, http=http) as api,
        pytest.raises(Unavailable, match="Redis unavailable"),
    ):
        api.wait("c", timeout=0, interval=0)


def test_following_a_campaign_that_is_not_sending_says_why(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``send --follow`` of a draft ended at once with exit 1 and no word of why."""
    save_provider(_provider("p"))
    path = tmp_path / "draft.yaml"
    path.write_text(
        yaml.safe_dump({"id": "c-draft", "provider": "p", "subject": "Hi", "html": "<p>hi</p>",
                        "draft": True, "recipients": [{"email": "d@example.com"}]})
    )  # fmt: skip
    code, out, err = run(capsys, "send", str(path), "--follow")
    assert code == 1 and json.loads(out.split("\n", 1)[1])["status"] == "draft"
    assert "campaign 'c-draft' is draft: 1 messages not sent" in err, err
