"""A ``dispatch.enqueue_campaign`` body with many bad recipients (review E22's note).

The task named the first problem after building every error of the body: for 300,000
recipients with a misnamed key, 600,000 errors, seconds of a worker's time. Now it finds
the first problem and counts the rest without building them.
"""

from __future__ import annotations

import pytest

from dispatch import campaign_checks, campaigns
from dispatch.campaign_errors import CampaignError


def test_the_task_names_the_first_problem_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {"provider": "p", "subject": "Hi", "html": "<p>Hi</p>",
            "recipients": [{"email": "good@example.com"}]
            + [{"mail": f"r{i}@example.com"} for i in range(3000)]}  # fmt: skip
    built: list[int] = []
    real = campaign_checks.validation_problems

    def counting(errors, **kw):  # type: ignore[no-untyped-def]
        errors = list(errors)
        built.append(len(errors))
        return real(errors, **kw)

    monkeypatch.setattr(campaigns, "validation_problems", counting)
    with pytest.raises(CampaignError) as caught:
        campaigns.create_from_task(body, "t-1")
    assert str(caught.value) == "recipients.1.email: Field required (and 5999 more)"
    assert caught.value.field == "recipients.1.email"
    assert built and max(built) <= 2  # the first recipient's errors, not 6000
