"""Review C22: the files `dispatch send` and `dispatch providers add` read.

A key given twice in one mapping (a second `recipients:` pasted below the first, a vars
key repeated) was kept silently as YAML's and json's loaders do: the last won, and the
campaign went out without the people of the first list. It is refused now, naming the
key (and, in YAML, both lines); YAML's merge keys (`<<: *defaults`) still override.

`dispatch suppressions add --file` read its file as UTF-8 text without a byte order
mark, unlike `send`: the first address of an Excel export was refused, a UTF-16 file
not read at all.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import redis

from dispatch import campaign_reads, campaigns, store, suppressions
from dispatch.cli import main
from dispatch.provider_store import load_provider, save_provider

PROVIDER = {
    "nickname": "local",
    "kind": "smtp",
    "host": "127.0.0.1",
    "port": 2525,
    "security": "none",
    "from_address": "deals@acme.example",
}

TWICE_YAML = """\
id: twice-1
provider: local
subject: Hello
html: <p>Hi</p>
recipients:
  - email: sara@example.com
  - email: omar@example.com
recipients:
  - email: lena@example.com
draft: true
"""

TWICE_JSON = (
    '{"id": "twice-1", "provider": "local", "subject": "Hello", "html": "<p>Hi</p>",'
    ' "recipients": [{"email": "sara@example.com", "vars": {"code": "A", "code": "B"}}],'
    ' "draft": true}'
)


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("campaign.yaml", TWICE_YAML, "key 'recipients' first on line 5"),
        ("campaign.json", TWICE_JSON, "not valid JSON: key 'code' given twice"),
        ("campaign.yml", TWICE_JSON, "not valid JSON: key 'code' given twice"),  # sniffed
    ],
)
def test_send_refuses_a_key_given_twice(
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    name: str,
    text: str,
    said: str,
) -> None:
    save_provider(dict(PROVIDER))
    file = tmp_path / name
    file.write_text(text)
    code = main(["send", str(file)])
    err = capsys.readouterr().err
    assert code == 2
    assert said in err
    assert "only the last would count" in err
    assert "Traceback" not in err
    if name.endswith(".yaml"):
        assert "line 8" in err  # where it came again
    with pytest.raises(campaigns.CampaignNotFoundError):
        campaign_reads.campaign_summary("twice-1")  # nothing created


def test_providers_add_refuses_a_key_given_twice_and_merges_still_override(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text(
        "nickname: local\nkind: smtp\nhost: 127.0.0.1\nport: 2525\nsecurity: none\n"
        "from_address: deals@acme.example\nport: 2526\n"
    )
    assert main(["providers", "add", str(twice)]) == 2
    assert "found key 'port' again" in capsys.readouterr().err
    assert not redis_client.exists(store.PROVIDERS_SET)  # nothing saved

    merged = tmp_path / "merged.yaml"
    merged.write_text(
        "- &base {nickname: one, kind: smtp, host: 127.0.0.1, port: 2525, security: none,"
        " from_address: deals@acme.example}\n"
        "- <<: *base\n  nickname: two\n  port: 2526\n"
    )
    assert main(["providers", "add", str(merged)]) == 0
    assert load_provider("one").model_dump()["port"] == 2525
    assert load_provider("two").model_dump()["port"] == 2526


@pytest.mark.parametrize(
    ("encoding", "newline"), [("utf-8-sig", "\r\n"), ("utf-16", "\r\n"), ("utf-8", "\n")]
)
@pytest.mark.parametrize("from_stdin", [False, True])
def test_suppressions_file_with_a_byte_order_mark_suppresses_its_first_address(
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    encoding: str,
    newline: str,
    from_stdin: bool,
) -> None:
    """An Excel "CSV UTF-8" export starts with a byte order mark, PowerShell 5's `>`
    writes UTF-16: the first address was refused as holding U+FEFF (or nothing was
    read at all), and that person stayed on the list of those mailed."""
    data = newline.join(["first@example.com", "second@example.com", ""]).encode(encoding)
    if from_stdin:
        stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(data)), encoding="latin-1")
        monkeypatch.setattr(sys, "stdin", stdin)  # a locale that is not UTF-8
        file = "-"
    else:
        (tmp_path / "bounces.csv").write_bytes(data)
        file = str(tmp_path / "bounces.csv")
    code = main(["suppressions", "add", "--file", file, "--reason", "imported"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out) == {"added": 2, "already_suppressed": 0, "invalid": 0}
    for email in ("first@example.com", "second@example.com"):
        assert (suppressions.get(email) or {}).get("reason") == "imported"


def test_following_a_draft_with_no_recipients_yet_is_no_success(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A draft made to append a large list to ended `send --follow` (and `status
    --follow`) at once with "0/0 100.0%" and exit 0, as a completed campaign does: a
    script's `dispatch send draft.yaml --follow && ...` went on as if it was sent."""
    save_provider(dict(PROVIDER))
    file = tmp_path / "draft.yaml"
    file.write_text("id: big-1\nprovider: local\nsubject: Hi\nhtml: <p>Hi</p>\ndraft: true\n")
    assert main(["send", str(file), "--follow"]) == 1
    err = capsys.readouterr().err
    assert "campaign 'big-1' is draft: it has no recipients yet" in err
    assert "POST /v1/campaigns/big-1/start" in err
    assert main(["status", "big-1", "--follow"]) == 1


@pytest.mark.usefixtures("redis_server")
@pytest.mark.parametrize("verb", ["worker", "beat"])
def test_a_loglevel_celery_refuses_is_named_without_a_traceback(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dispatch worker --loglevel LOUD` ended in click's BadParameter traceback (the
    message at its foot), exit 1."""
    assert main([verb, "--loglevel", "LOUD"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid value for '-l' / '--loglevel': 'LOUD'")
    assert "Traceback" not in err
