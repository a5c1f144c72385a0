"""The message meta string (DESIGN §3): build it for a message, parse it from a callback.

Format, seven fields each followed by ``|``::

    <email>|<account_id>|<campaign_id>|<YYYYMMDD>|<variant>|<category>|<seq>|

Every outgoing message carries it in the ``X-CleverTap_META`` header (and as
``$$MessageID``); providers echo it back in callbacks, where it attributes the event to a
campaign and a recipient.
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime

from pydantic import BaseModel, ConfigDict

META_HEADER = "X-CleverTap_META"
META_FIELDS = ("email", "account_id", "campaign_id", "yyyymmdd", "variant", "category", "seq")
DEFAULT_VARIANT = "0"
DEFAULT_CATEGORY = "default"
SEPARATOR = "|"

_SEQ = re.compile(r"-?[0-9]+")
# Meta travels in a header: no line breaks or other control characters in any field.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


class Meta(BaseModel):
    """The seven fields of a meta string, validated; ``str(meta)`` gives the string back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    email: str
    account_id: str
    campaign_id: str
    yyyymmdd: str
    variant: str
    category: str
    # The seed example carries a negative sequence number (``-17005904``): any integer.
    seq: int

    @property
    def send_date(self) -> date:
        """The campaign's send date (UTC) as a date."""
        return datetime.strptime(self.yyyymmdd, "%Y%m%d").date()

    def __str__(self) -> str:
        fields = (self.email, self.account_id, self.campaign_id, self.yyyymmdd)
        return SEPARATOR.join((*fields, self.variant, self.category, str(self.seq))) + SEPARATOR


@functools.lru_cache(maxsize=256)
def _is_date(yyyymmdd: str) -> bool:
    """Whether ``yyyymmdd`` is a real date; cached, as a campaign's metas share one."""
    try:
        return len(yyyymmdd) == 8 and bool(datetime.strptime(yyyymmdd, "%Y%m%d"))
    except ValueError:
        return False


def _check_fields(values: dict[str, str]) -> None:
    """Raise ``ValueError`` naming the first field that cannot be in a meta string."""
    for name in META_FIELDS:
        value = values[name]
        if not value:
            raise ValueError(f"invalid meta: field {name} is empty")
        if SEPARATOR in value:
            raise ValueError(f"invalid meta: field {name} contains '|'")
        if _CONTROL.search(value):
            raise ValueError(f"invalid meta: field {name} has control characters")
    # Spaces are data in the other fields: a campaign's category or variant, and the
    # account id, are printable ASCII, so " Summer sale " goes out as it is, and its
    # callbacks must be read back as that campaign's.
    if values["email"] != values["email"].strip():
        raise ValueError("invalid meta: field email has surrounding spaces")
    if "@" not in values["email"]:
        raise ValueError(f"invalid meta: field email {values['email']!r} is not an address")
    if not _is_date(values["yyyymmdd"]):
        raise ValueError(
            f"invalid meta: field yyyymmdd {values['yyyymmdd']!r} is not a date YYYYMMDD"
        )
    if not _SEQ.fullmatch(values["seq"]):
        raise ValueError(f"invalid meta: field seq {values['seq']!r} is not an integer")


def _meta(values: dict[str, str], *, checked: bool = False) -> Meta:
    """The meta of ``values``; ``checked``: :func:`_check_fields` passed already."""
    if not checked:
        _check_fields(values)
    return Meta(
        email=values["email"],
        account_id=values["account_id"],
        campaign_id=values["campaign_id"],
        yyyymmdd=values["yyyymmdd"],
        variant=values["variant"],
        category=values["category"],
        seq=int(values["seq"]),
    )


def parse_meta(meta: str) -> Meta:
    """Parse a meta string echoed back by a provider.

    Raises ``ValueError`` naming the problem: not seven ``|``-terminated fields, an empty
    field, an email without ``@``, a date that is not ``YYYYMMDD``, a non-integer ``seq``.
    """
    if not isinstance(meta, str):
        raise ValueError(f"invalid meta: expected a string, got {type(meta).__name__}")
    if not meta.endswith(SEPARATOR):
        raise ValueError("invalid meta: must end with '|'")
    parts = meta[:-1].split(SEPARATOR)
    if len(parts) != len(META_FIELDS):
        raise ValueError(
            f"invalid meta: expected {len(META_FIELDS)} fields "
            f"({'|'.join(META_FIELDS)}|), got {len(parts)}"
        )
    email, yyyymmdd, seq = parts[0], parts[3], parts[6]
    # _check_fields's checks at once (no field can hold '|' here): callbacks parse a
    # meta an event, and nearly all are good; a bad one is named by the full check.
    checked = bool(
        all(parts)
        and not _CONTROL.search(meta)
        and "@" in email
        and email == email.strip()
        and _SEQ.fullmatch(seq)
        and _is_date(yyyymmdd)
    )
    return _meta(dict(zip(META_FIELDS, parts, strict=True)), checked=checked)


def build_meta(
    *,
    email: str,
    account_id: str,
    campaign_id: str,
    send_date: date | str,
    seq: int,
    variant: str = DEFAULT_VARIANT,
    category: str = DEFAULT_CATEGORY,
) -> str:
    """Format the meta string of one message; ``send_date`` is a date or ``YYYYMMDD``.

    Raises ``ValueError`` naming the field when one is empty, holds ``|`` or a line break,
    when the email has surrounding spaces, or when the date is not a date.
    """
    yyyymmdd = send_date.strftime("%Y%m%d") if isinstance(send_date, date) else send_date
    values = {
        "email": email,
        "account_id": account_id,
        "campaign_id": campaign_id,
        "yyyymmdd": yyyymmdd,
        "variant": variant,
        "category": category,
        "seq": str(seq),
    }
    return str(_meta(values))
