"""Review Z3: the recipient append as another service calls it over HTTP (compressed
bodies, form uploads, bad recipients before a fault, a client that goes away)."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from starlette.requests import ClientDisconnect

from dispatch.api.campaigns import _append_stream
from dispatch.campaign_reads import get_counters
from dispatch.recipient_append import RecipientAppender
from dispatch.recipient_stream import DECODED_PIECE, BodyDecoder, StreamFormatError
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, save_smtp_provider
from tests.smtp_server import SmtpTestServer

LINES = [{"email": f"z{i}@example.com", "user_id": str(i)} for i in range(5)]
NDJSON = b"".join(json.dumps(r).encode() + b"\n" for r in LINES)


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


def inflate_in_pieces(encoding: str, body: bytes, seed: int) -> bytes:
    decoder = BodyDecoder(encoding)
    rng = random.Random(seed)
    out = b""
    pos = 0
    while pos < len(body):
        step = rng.randint(1, 9)
        out += b"".join(decoder.feed(body[pos : pos + step]))
        pos += step
    decoder.finish()
    return out


@pytest.mark.parametrize("seed", range(5))
def test_compressed_bodies_inflate_wherever_they_are_cut(seed: int) -> None:
    assert inflate_in_pieces("gzip", gzip.compress(NDJSON), seed) == NDJSON
    assert inflate_in_pieces("deflate", zlib.compress(NDJSON), seed) == NDJSON
    assert inflate_in_pieces("deflate", raw_deflate(NDJSON), seed) == NDJSON
    two = gzip.compress(NDJSON[:50]) + gzip.compress(NDJSON[50:])  # cat a.gz b.gz
    assert inflate_in_pieces("gzip", two, seed) == NDJSON


def test_a_body_that_inflates_hugely_comes_out_in_bounded_pieces() -> None:
    bomb = gzip.compress(b"\n" * (64 << 20))  # 64 MiB from about 64 KiB
    decoder = BodyDecoder("gzip")
    total = 0
    for piece in decoder.feed(bomb):
        assert len(piece) <= DECODED_PIECE
        total += len(piece)
    decoder.finish()
    assert total == 64 << 20


def test_a_cut_or_mislabelled_compressed_body_is_an_error_of_the_body() -> None:
    with pytest.raises(StreamFormatError, match="ends early"):
        inflate_in_pieces("gzip", gzip.compress(NDJSON)[:-10], 0)
    with pytest.raises(StreamFormatError, match="not valid gzip"):
        inflate_in_pieces("gzip", NDJSON, 0)


def draft(api: Any, smtp: SmtpTestServer, campaign_id: str) -> None:
    save_smtp_provider(api, smtp.port)
    body = {"id": campaign_id, "provider": "local", "subject": "Hi", "html": "<p>Hi</p>"}
    answer = api.post("/v1/campaigns", json={**body, "draft": True})
    assert answer.status_code == 201, answer.text


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_a_gzip_or_deflate_body_is_appended_like_a_plain_one(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """A caller compressing a large list (Content-Encoding) once got 200 with its
    compressed bytes reported as bad NDJSON lines, and nothing appended."""
    bodies = {
        "gzip": gzip.compress(NDJSON),
        "deflate": zlib.compress(json.dumps(LINES).encode()),
        "Deflate": raw_deflate(NDJSON),
    }
    with api_client(api_server) as api:
        for n, (encoding, body) in enumerate(bodies.items()):
            draft(api, smtp, f"z3-gz-{n}")
            headers = {"Content-Encoding": encoding, "Content-Type": "application/x-ndjson"}
            answer = api.post(f"/v1/campaigns/z3-gz-{n}/recipients", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            result = answer.json()
            assert (result["appended"], result["rejected"], result["total"]) == (5, 0, 5), encoding

        # An encoding it cannot read is named, before anything is appended.
        headers = {"Content-Encoding": "br"}
        answer = api.post("/v1/campaigns/z3-gz-0/recipients", content=b"\x0b", headers=headers)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "content-encoding"

        # Cut short on the way: what came whole before the cut is kept, the body named.
        draft(api, smtp, "z3-gz-cut")
        many = b"".join(
            json.dumps({"email": f"c{i}@example.com", "vars": {"n": random.random()}}).encode()
            + b"\n"
            for i in range(3000)
        )
        cut = gzip.compress(many)[: -len(gzip.compress(many)) // 3]
        headers = {"Content-Encoding": "gzip"}
        answer = api.post("/v1/campaigns/z3-gz-cut/recipients", content=cut, headers=headers)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "body"
        assert "ends early" in answer.json()["detail"]
        total = api.get("/v1/campaigns/z3-gz-cut").json()["total"]
        assert 0 < total < 3000


@covers("POST /v1/campaigns")
def test_a_route_reading_its_body_whole_names_a_compressed_body(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """It once answered that the body's bytes were not UTF-8 (``field``: ``body``)."""
    plain = b'{"id": "z3-gz-create", "provider": "local"}'
    for encoding, body in (("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain))):
        headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
        with api_client(api_server) as api:
            answer = api.post("/v1/campaigns", content=body, headers=headers)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "content-encoding", encoding


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_a_multipart_form_upload_is_refused_naming_the_content_type(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """``curl -F file=@list.ndjson`` once appended the file's lines and reported the form's
    boundary and headers as bad recipients, at lines that are not the file's."""
    with api_client(api_server) as api:
        draft(api, smtp, "z3-form")
        files = {"file": ("list.ndjson", NDJSON, "application/x-ndjson")}
        answer = api.post("/v1/campaigns/z3-form/recipients", files=files)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "content-type"
        assert api.get("/v1/campaigns/z3-form").json()["total"] == 0


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_recipients_rejected_before_a_broken_body_are_named_in_the_error(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """The 422 for a body that breaks off (or a 409 for a campaign started meanwhile) once
    said only how many were appended: the bad recipients before it were never named."""
    with api_client(api_server) as api:
        draft(api, smtp, "z3-broken")
        body = b'[{"email": "a@example.com"}, {"email": "nope"}, {"email": "b@example.com"}'
        answer = api.post("/v1/campaigns/z3-broken/recipients", content=body)
        assert answer.status_code == 422, answer.text
        error = answer.json()
        assert error["field"] == "body"
        assert "1 rejected before it" in error["detail"]
        assert error["errors"][0]["field"] == "body"
        assert [(e["field"], e["message"][:8]) for e in error["errors"][1:]] == [
            ("email", "index 1:")
        ]
        assert api.get("/v1/campaigns/z3-broken").json()["total"] == 1  # b: cut off

        draft(api, smtp, "z3-started")
        first = api.post("/v1/campaigns/z3-started/recipients", content=NDJSON)
        assert first.json()["appended"] == 5

        def started_midway() -> Iterator[bytes]:
            yield b'{"email": "x@example.com"}\nnot json\n'
            with api_client(api_server) as other:
                started = other.post("/v1/campaigns/z3-started/start")
                assert started.status_code == 200, started.text
            yield b'{"email": "y@example.com"}\n'

        answer = api.post("/v1/campaigns/z3-started/recipients", content=started_midway())
        assert answer.status_code == 409, answer.text
        error = answer.json()
        assert error["field"] == "status"
        assert [(e["field"], e["message"][:7]) for e in error["errors"][1:]] == [
            ("body", "line 2:")
        ]


@covers("POST /v1/campaigns")
def test_a_client_that_goes_away_keeps_every_whole_line_it_sent(
    api_server: ApiServer,
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client cut off mid-body: the whole lines read are appended (as for a body that
    breaks off), the line cut in two is not. Only full chunks of 1000 once were, and the
    disconnect went up to the server as an exception of the application."""
    with api_client(api_server) as api:
        draft(api, smtp, "z3-gone")
    lines = b"".join(
        json.dumps({"email": f"g{i}@example.com"}).encode() + b"\n" for i in range(1500)
    )

    async def cut_off() -> AsyncIterator[bytes]:
        yield lines
        yield b'{"email": "half@exa'
        raise ClientDisconnect

    appender = RecipientAppender("z3-gone")
    with caplog.at_level(logging.WARNING), pytest.raises(ClientDisconnect):
        asyncio.run(_append_stream(appender, cut_off()))
    assert get_counters("z3-gone")["total"] == 1500
    assert "the client went away mid-body; 1500 recipients appended" in caplog.text
