"""A provider's numbers, and a campaign's values, must be finite: JSON cannot store NaN
or infinity (orjson writes null), so a provider saved with one could no longer be read,
and the list of providers failed with it. YAML writes them `.inf` and `.nan` (`dispatch
providers add FILE`, `dispatch send FILE`); the API's JSON reader refuses them itself
(tests/test_review_t5_api.py)."""

from __future__ import annotations

import pytest
import redis
import yaml
from pydantic import ValidationError

from dispatch import store
from dispatch.campaigns import CampaignError, create_campaign
from dispatch.models import campaign_request
from dispatch.provider_store import list_providers, load_provider, save_provider
from dispatch.recipient_pages import stored_count
from providers.config import NOT_FINITE_PROBLEM

PROVIDER = """
nickname: relay
kind: smtp
host: mail.example.com
from_address: deals@acme.example
"""


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("rate_per_second: .inf", "rate_per_second"),
        ("rate_per_second: .nan", "rate_per_second"),
        ("timeout: .inf", "timeout"),
        ("rate_per_second: 1e400", "rate_per_second"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_naming_its_field(
    redis_client: redis.Redis, line: str, field: str
) -> None:
    save_provider(yaml.safe_load(PROVIDER), redis_client)
    with pytest.raises(ValidationError) as info:
        save_provider(yaml.safe_load(PROVIDER + line.replace("1e400", "1.0e+400")), redis_client)
    assert [e["loc"][-1] for e in info.value.errors()] == [field]
    assert list_providers(redis_client) == ["relay"]
    assert load_provider("relay", redis_client).timeout == 30.0  # still readable


CAMPAIGN = """
provider: relay
subject: Hi {{ name }}
html: <p>{{ name }} {{ price }}</p>
vars: {price: 1.5}
recipients:
  - {email: a@example.com, vars: {name: A}}
  - {email: b@example.com, vars: {name: B, price: 2}}
"""


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("vars: {price: 1.5}", "vars: {price: .nan}", "vars.price"),
        ("price: 2}", "price: -.inf}", "recipients.1.vars.price"),
        ("price: 2}", "price: [1, {x: .inf}]}", "recipients.1.vars.price.1.x"),
    ],
)
def test_a_campaign_value_that_is_not_finite_is_refused_naming_it(
    redis_client: redis.Redis, old: str, new: str, field: str
) -> None:
    """A campaign file (`dispatch send`) or a Celery task body with NaN or infinity in its
    vars: stored, it became null, and the message said nothing where the value was."""
    save_provider(yaml.safe_load(PROVIDER), redis_client)
    body = yaml.safe_load(CAMPAIGN.replace(old, new))
    with pytest.raises(CampaignError) as info:
        create_campaign(campaign_request(body), client=redis_client, enqueue=lambda c, b: None)
    assert (info.value.field, str(info.value)) == (field, NOT_FINITE_PROBLEM)
    assert redis_client.zcard(store.CAMPAIGNS_ZSET) == 0  # nothing half-made


def test_nulls_and_finite_numbers_are_kept(redis_client: redis.Redis) -> None:
    save_provider(yaml.safe_load(PROVIDER), redis_client)
    body = yaml.safe_load(CAMPAIGN.replace("price: 2}", "price: null, note: 1.0e+300}"))
    cid, created = create_campaign(
        campaign_request(body), client=redis_client, enqueue=lambda c, b: None
    )
    assert created and stored_count(redis_client, cid) == 2
