"""The Python client and the CLI's help, used as their own docs say (review E24)."""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import pytest
import redis

import dispatch.client
from dispatch.cli import main
from tests.api_server import ApiServer
from tests.api_support import dispatch_client, smtp_body
from tests.conftest import API_TOKEN
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess

README = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())


def _module_example() -> str:
    """The code block of ``dispatch.client``'s docstring, as a reader copies it."""
    doc = dispatch.client.__doc__ or ""
    block = re.search(r"\n\n((?:    .*\n|\n)+?)\n\S", doc)
    assert block, doc
    return textwrap.dedent(block.group(1))


def test_the_client_module_example_sends_to_everyone(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """The example appended ``{"email": e}`` to a campaign whose subject reads
    ``{{ name }}``: every recipient was refused (listed in a result it did not look at),
    and the empty campaign started, completed and printed ``0``."""
    people = [("sara@example.com", "Sara"), ("omar@example.com", "Omar")]
    with SmtpTestServer() as smtp:
        code = _module_example()
        code = code.replace('"https://dispatch.internal"', repr(api_server.url))
        code = code.replace('token="..."', f"token={API_TOKEN!r}")
        code = code.replace('{"kind": "smtp", "host": "...", ...}', repr(smtp_body(smtp.port)))
        assert "..." not in code.replace('"html": "..."', ""), code
        printed = io.StringIO()
        scope = {"people": people, "addresses": [email for email, _ in people]}
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "dispatch.client example", "exec"), scope)
        lines = printed.getvalue().splitlines()
        assert lines[-1] == "2", lines  # api.wait(...).sent
        assert sorted(m.rcpt_tos[0] for m in smtp.messages) == sorted(e for e, _ in people)


def test_wait_answers_a_draft_at_once(api_server: ApiServer, redis_client: redis.Redis) -> None:
    """``wait`` of a draft (start forgotten, or its append refused) polled it until the
    deadline (600 s by default) and raised ``TimeoutError``: only a start moves a draft,
    and ``dispatch status --follow`` answers one at once (exit 1)."""
    with SmtpTestServer() as smtp, dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(smtp.port))
        api.create_campaign(
            {"id": "e24-draft", "provider": "local", "subject": "Hi", "html": "x", "draft": True}
        )
        summary = api.wait("e24-draft", timeout=3, interval=0.1)
    assert (summary.status.value, summary.total) == ("draft", 0)


@pytest.mark.parametrize("verb", ["send", "status"])
def test_follow_help_says_what_the_readme_says_of_its_exit(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--follow``'s help said "1 when it ... sent none": a campaign whose every
    recipient was suppressed sent none and exits 0, as the README says."""
    assert "(each failed or ended unknown; all suppressed is 0)" in README
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "not one was sent (each failed or ended unknown; all suppressed is 0)" in text
