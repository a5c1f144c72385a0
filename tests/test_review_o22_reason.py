"""Review O22: a ``--reason`` that is not UTF-8 text.

Python reads a command line's bytes that are not UTF-8 as lone surrogates (a Latin-1
"ü" of ``--reason "$(head -1 export.txt)"``, or typed in a Latin-1 terminal). Such a
reason passed N22's check of ``--reason``, and ``dispatch suppressions add`` ended in a
traceback, "TypeError: str is not valid UTF-8: surrogates not allowed", when the entry
was written (with ``--file``, before any line was added). It is now refused as the
blank reason is, before anything is added, exit status 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from dispatch import store
from dispatch.cli import main


@pytest.mark.parametrize("file", [False, True])
def test_a_reason_that_is_not_utf8_is_refused_before_anything_is_added(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path, file: bool
) -> None:
    reason = os.fsdecode("r\u00fcckl\u00e4ufer".encode("latin-1"))  # as sys.argv holds it
    addresses = tmp_path / "bounces.txt"
    addresses.write_text("a@example.com\nb@example.com\n", encoding="utf-8")
    what = ["--file", str(addresses)] if file else ["a@example.com"]

    with pytest.raises(SystemExit) as refused:
        main(["suppressions", "add", "--reason", reason, *what])

    assert refused.value.code == 2
    assert "argument --reason: a reason must be UTF-8 text" in capsys.readouterr().err
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0
