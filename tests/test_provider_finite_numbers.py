"""A provider's numbers must be finite: JSON cannot store NaN or infinity (orjson writes
null), so a provider saved with one could no longer be read, and the list of providers
failed with it. YAML writes them `.inf` and `.nan` (`dispatch providers add FILE`); the
API's JSON reader refuses them itself (tests/test_review_t5_api.py)."""

from __future__ import annotations

import pytest
import redis
import yaml
from pydantic import ValidationError

from dispatch.provider_store import list_providers, load_provider, save_provider

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
