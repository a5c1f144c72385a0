"""Review Z11: a run handed on at its time budget (dispatch.status_watch.run_budget) must
not throw away the pace its senders reserved. Each sender reserves its next send on the
provider's pace (GCRA, not given back) and rests until then: a hand-on that cut those
rests short left the reservations unused, and the next run reserved after them, further
ahead. When a provider's connections times its interval reach past the budget, each run
pushed the pace further than the budget let it wait, and no run sent anything again."""

from __future__ import annotations

from tests.test_batch_time_limit import sends_each_once_under_a_short_time_limit


def test_a_batch_whose_pace_reaches_past_the_run_budget_still_completes() -> None:
    """Visibility timeout 60 s: a run hands on after 15 s (the hard limit is 30 s). Two
    connections at one message every 10 s reserve sends 20 s ahead of each other: on the
    old code the first run sent two, every later run none (the reservations it cut reached
    further each time); now a run sends what its pace lets go within 7.5 s more."""
    sends_each_once_under_a_short_time_limit(5, max_connections=2, rate_per_second=0.1)
