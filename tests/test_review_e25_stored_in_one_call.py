"""A chunk's documents and address keys are written in one call each (review E25): the
result must be what one call a recipient wrote, for the inputs the fast paths hand back."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from dispatch import store
from dispatch.recipient_append import RecipientAppender, stored_recipient, stored_recipients
from dispatch.suppressions import suppression_key, suppression_keys
from tests.test_recipient_store import _draft, _stored

# Each list holds something a one-call path could get wrong.
ODD_LISTS: list[list[Any]] = [
    [{"email": "a@b.example", "vars": {"x": [1, None, 2]}}, {"email": "c@d.example"}],
    [{"email": "a@b.example"}, {"email": "c@d.example", "vars": {"x": [None, None, None]}}],
    [{"email": "a@b.example", "vars": {"s": "},null,{"}}, {"email": "c@d.example"}],
    [{"email": "a@b.example", "vars": {"o": [{}, None, {}]}}, {"email": "c@d.example"}],
    [{"email": "a@b.example", "vars": {"wide": 2**70}}, {"email": "c@d.example"}],
    [{"email": "é@b.example", "user_id": "line\nbreak"}],
    [{"email": "a@b.example"}],
    [],
]

ODD_ADDRESSES = [
    ["A@B.example", " a@b.example"],
    ["A@B.example", "a@b.example."],
    ["A@B.example", "a@b.example.."],
    ["A@B.example", "a@b.Example\t"],
    ["A@B.example", "a\n@b.example"],
    ["A@B.example", "é@B.example"],
    ["A@B.example", "a@b.example\x1c"],
    ["A@B.example", ""],
    ["a@b.example.", "c@d.example"],
    [],
]


def test_documents_of_a_chunk_are_those_written_one_at_a_time() -> None:
    for recipients in ODD_LISTS:
        assert stored_recipients(recipients) == "\n".join(map(stored_recipient, recipients))


def test_address_keys_of_a_chunk_are_those_of_each_address() -> None:
    for emails in ODD_ADDRESSES:
        assert suppression_keys(emails) == [suppression_key(e) for e in emails]
    assert suppression_keys(["A@B.Example", "c@D.example"]) == ["a@b.example", "c@d.example"]


def test_a_list_with_nulls_in_vars_is_stored_a_document_a_line(redis_client: redis.Redis) -> None:
    cid = _draft(redis_client)
    people = [
        {"email": f"User{i}@Example.com", "vars": {"name": "n", "x": [None, {}, None]}}
        for i in range(5)
    ]
    assert RecipientAppender(cid, redis_client).add(people) == (5, [])  # type: ignore[arg-type]
    docs, keys = _stored(redis_client, cid)
    assert docs == [p["email"] for p in people]
    assert keys == [f"user{i}@example.com" for i in range(5)]
    pages = redis_client.lrange(store.recipients_key(cid), 0, -1)
    assert [orjson.loads(d) for d in pages[0].split("\n")] == people
