"""Log lines for the messages of a batch run that did not go out.

Each failed, unknown or retried message gets one line with its context as fields
(``campaign_id``, ``batch``, ``provider``, ``seq``, ``meta``, ``state``, ``error_class``):
an operator who holds a meta from a complaint finds it in the logs. Up to
:data:`LINES_PER_RUN` per batch run: a campaign whose every message fails (a template
error, an ESP refusing everything) would otherwise write a line per recipient; the rest
are counted in one closing line, and ``GET /v1/campaigns/{id}/messages?status=...`` lists
them all. Sent messages are not logged (they are counted, and each has its system event).
"""

from __future__ import annotations

import logging

log = logging.getLogger("dispatch.messages")

LINES_PER_RUN = 20
# A detail is logged as the ledger keeps it, cut at this many characters: a server's
# reply can be 32 KB (aiosmtplib's limit), one that quotes the whole message.
DETAIL_LOGGED = 500

_WHAT = {
    "failed": "failed",
    "unknown": "outcome unknown (it may have reached the provider; it is not sent again)",
}


class OutcomeLog:
    """The message log lines of one batch run."""

    def __init__(self, campaign_id: str, batch: int, provider: str) -> None:
        self.context = {"campaign_id": campaign_id, "batch": batch, "provider": provider}
        self.logged = 0
        self.unlogged: dict[str, int] = {}

    def note(
        self,
        seq: int,
        meta: str,
        state: str,
        error_class: str,
        detail: str,
        retry_in: float | None = None,
    ) -> None:
        """One message that did not go out: ``state`` failed, unknown or retry (then
        ``retry_in`` seconds)."""
        if self.logged >= LINES_PER_RUN:
            self.unlogged[state] = self.unlogged.get(state, 0) + 1
            return
        self.logged += 1
        if len(detail) > DETAIL_LOGGED:
            detail = f"{detail[:DETAIL_LOGGED]}... ({len(detail)} characters)"
        extra = {**self.context, "seq": seq, "meta": meta, "state": state}
        extra["error_class"] = error_class
        campaign = self.context["campaign_id"]
        if state == "retry":
            log.info(
                "campaign %s message %d: %s: %s; retried in %.1f s",
                campaign, seq, error_class, detail, retry_in or 0.0, extra=extra,
            )  # fmt: skip
            return
        what = _WHAT.get(state, state)
        log.warning(
            "campaign %s message %d %s: %s: %s", campaign, seq, what, error_class, detail,
            extra=extra,
        )  # fmt: skip

    def close(self) -> None:
        """The closing line for the messages past the cap, if any."""
        if not self.unlogged:
            return
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.unlogged.items()))
        campaign = self.context["campaign_id"]
        log.warning(
            "campaign %s batch %s: %s more messages not logged one by one (GET "
            "/v1/campaigns/%s/messages?status=<state> lists them)",
            campaign, self.context["batch"], counts, campaign,
            extra={**self.context, "unlogged": dict(self.unlogged)},
        )  # fmt: skip
        self.unlogged.clear()
        self.logged = 0


def log_lost_claims(campaign_id: str, batch: int, seqs: list[int]) -> None:
    """Messages a run that ended without recording them had claimed: now ``unknown``."""
    shown = ", ".join(str(seq) for seq in seqs[:LINES_PER_RUN])
    log.warning(
        "campaign %s batch %s: %d messages claimed by a run that ended without recording "
        "them are unknown (they may have reached the provider; not sent again): seqs %s%s",
        campaign_id, batch, len(seqs), shown, " ..." if len(seqs) > LINES_PER_RUN else "",
        extra={"campaign_id": campaign_id, "batch": batch, "state": "unknown", "seqs": seqs},
    )  # fmt: skip
