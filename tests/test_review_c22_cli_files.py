"""Review C22: the files `dispatch send` and `dispatch providers add` read.

A key given twice in one mapping (a second `recipients:` pasted below the first, a vars
key repeated) was kept silently as YAML's and json's loaders do: the last won, and the
campaign went out without the people of the first list. It is refused now, naming the
key (and, in YAML, both lines); YAML's merge keys (`<<: *defaults`) still override.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from dispatch import campaign_reads, campaigns, store
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
