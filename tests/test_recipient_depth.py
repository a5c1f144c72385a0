"""The depth limit on recipients' vars (MAX_VARS_DEPTH, review J4), checked when a
campaign's inline list is fingerprinted by orjson's own depth limit instead of a walk of
every recipient (which took 3 µs a recipient: the check ran for every chunk of 1,000,
whose brackets always outnumber the limit). The limit must stay exact."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import redis

from dispatch import campaign_checks, recipient_pages
from dispatch.campaign_checks import MAX_VARS_DEPTH
from dispatch.campaigns import CampaignError, create_campaign
from dispatch.models import campaign_request
from tests.helpers import recipients, smtp_provider


def _nested(depth: int) -> Any:
    return json.loads("[" * depth + "1" + "]" * depth)


def _create(r: redis.Redis, people: list[dict[str, Any]]) -> str:
    smtp_provider(r, 2525)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": people}
    cid, _ = create_campaign(campaign_request(body), client=r, enqueue=lambda c, b: None)
    return cid


@pytest.mark.parametrize("where", [0, 999, 1000, 1499])
def test_vars_one_level_past_the_limit_are_refused_naming_where(
    redis_client: redis.Redis, where: int
) -> None:
    people = recipients(1500)
    people[where]["vars"]["x"] = _nested(MAX_VARS_DEPTH + 1)
    with pytest.raises(CampaignError) as info:
        _create(redis_client, people)
    assert info.value.field == f"recipients.{where}.vars.x" + ".0" * MAX_VARS_DEPTH
    assert f"nested more than {MAX_VARS_DEPTH} arrays or objects deep" in str(info.value)


def test_objects_count_as_arrays_do(redis_client: redis.Redis) -> None:
    people = recipients(10)
    people[7]["vars"] = {"a": {"b": _nested(MAX_VARS_DEPTH)}}
    with pytest.raises(CampaignError) as info:
        _create(redis_client, people)
    assert info.value.field == "recipients.7.vars.a.b" + ".0" * (MAX_VARS_DEPTH - 1)


def test_vars_at_the_limit_are_stored_as_given(redis_client: redis.Redis) -> None:
    people = recipients(1200)
    people[1100]["vars"]["x"] = _nested(MAX_VARS_DEPTH)
    people[5]["vars"]["y"] = {"a": [{"b": _nested(MAX_VARS_DEPTH - 3)}]}
    cid = _create(redis_client, people)
    assert recipient_pages.stored_count(redis_client, cid) == 1200


def test_the_fingerprint_reads_the_same_bytes_as_before(redis_client: redis.Redis) -> None:
    """A repeat of a campaign created by an older version must still match it: the
    fingerprint hashes what orjson writes of each chunk, unchanged by the wrapping."""
    chunk = recipients(3)
    wrapped = orjson.dumps(campaign_checks._deepened(chunk))
    assert wrapped[campaign_checks._DEEPEN : -campaign_checks._DEEPEN] == orjson.dumps(chunk)
