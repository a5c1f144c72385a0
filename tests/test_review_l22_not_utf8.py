"""Review L22: where an appended recipient's first byte that is not UTF-8 is (I22's
message). Its "column" was the byte's offset in the recipient's raw JSON: one too many
for each "é" (two bytes) before it on the line, and for an element of a JSON array
written over several lines, a count through all its lines that matched no line of the
body ("column 60" for a byte at column 26 of the element's third line)."""

from __future__ import annotations

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import smtp_provider


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_a_byte_that_is_not_utf8_is_placed_by_line_and_character(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    smtp_provider(redis_client, 2525)
    body = {"id": "l22-latin1", "provider": "local", "subject": "s", "html": "h", "draft": True}
    # A Latin-1 "é" in a recipient that also holds a UTF-8 "ö" before it, on one line.
    mixed = '{"email": "ann@example.com", "vars": {"city": "Malmö", "name": "Renée"}}'
    line = mixed.encode().replace("Renée".encode(), "Renée".encode("latin-1"))
    # A pretty-printed array (as json.dump(indent=2) writes it) from a Latin-1 export.
    array = '[\n  {\n    "email": "bob@example.com",\n    "vars": {"name": "José"}\n  }\n]\n'
    with api_client(api_server) as api:
        assert api.post("/v1/campaigns", json=body).status_code == 201
        path = "/v1/campaigns/l22-latin1/recipients"
        on_a_line = api.post(path, content=line + b"\n")
        in_an_array = api.post(path, content=array.encode("latin-1"))
    (error,) = on_a_line.json()["errors"]
    assert error["line"] == 1
    assert error["message"].startswith("not UTF-8 text: byte 0xe9 at column 68;"), error
    assert mixed[67] == "é"  # (column 68; it said 69)
    (error,) = in_an_array.json()["errors"]
    assert error["index"] == 0
    assert error["message"].startswith(
        "not UTF-8 text: byte 0xe9 at line 3, column 26 of this recipient;"  # (column 60)
    ), error
    assert array.splitlines()[3][25] == "é"  # the element's third line, column 26
