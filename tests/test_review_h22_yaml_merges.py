"""Review H22: `dispatch send` refusing keys given twice must not refuse YAML's merges.

The loader looked for a key given twice in each mapping when it was constructed. A
mapping merged into another (``<<: *summer``) is flattened by that merge, its keys and
those merged into it then side by side; when the merge was constructed first (the merging
mapping less deeply nested than the anchor), the anchor's own check found the key it
overrides "again" and a valid file was refused (exit 2); a key the anchor did give twice
was said to come first on the line of the mapping merged into it. Each mapping's own
keys are now looked at before a merge flattens it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from dispatch import campaign_reads
from dispatch.campaign_reads import load_content
from dispatch.cli import main
from dispatch.provider_store import save_provider
from tests.test_review_c22_cli_files import PROVIDER

MERGED = """\
id: merged-1
provider: local
subject: Hello
html: <p>{{ offer.code }} {{ offer.percent }}</p>
draft: true
vars:
  offers:
    base: &base {code: BASE, percent: 10}
    summer: &summer
      <<: *base
      code: SUMMER
  offer:
    <<: *summer
recipients:
  - email: sara@example.com
"""

TWICE_UNDER_A_MERGE = """\
id: merged-2
provider: local
subject: Hello
html: <p>Hi</p>
draft: true
vars:
  offers:
    base: &base {code: BASE}
    summer: &summer
      <<: *base
      code: SUMMER
      code: AUTUMN
  offer:
    <<: *summer
"""


def _send(folder: Path, text: str) -> int:
    """``dispatch send`` of a campaign file holding ``text``, its provider saved."""
    save_provider(dict(PROVIDER))
    file = folder / "campaign.yaml"
    file.write_text(text)
    return main(["send", str(file)])


def test_an_anchor_that_overrides_a_merge_and_is_merged_elsewhere_is_read(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _send(tmp_path, MERGED) == 0, capsys.readouterr().err
    assert campaign_reads.campaign_summary("merged-1")["total"] == 1
    offers = {"base": {"code": "BASE", "percent": 10}, "summer": {"code": "SUMMER", "percent": 10}}
    assert load_content("merged-1").vars == {"offers": offers, "offer": offers["summer"]}


def test_a_key_given_twice_in_a_merged_anchor_is_still_refused(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _send(tmp_path, TWICE_UNDER_A_MERGE) == 2
    err = capsys.readouterr().err
    assert "key 'code' first on line 11" in err and "line 12" in err
    assert "Traceback" not in err
