"""Review W10: the API's contract and its client, tried over HTTP (odd values the
routes must refuse with a 422, ids the client must send as one path segment, a DELETE
whose answer was lost, and a create whose answer a real proxy dropped)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import redis

from dispatch import campaign_reads, store
from dispatch.client import DispatchAPIError, DispatchClient, InvalidRequest, NotFound
from tests.api_server import ApiServer
from tests.api_support import api_client, dispatch_client, smtp_body
from tests.conftest import API_TOKEN
from tests.test_api_integration import LosesAnswers


def _draft(api: DispatchClient, campaign_id: str) -> None:
    body = {"id": campaign_id, "provider": "local", "subject": "s", "html": "h", "draft": True}
    api.create_campaign(body)


def test_a_campaign_test_for_a_seq_beyond_64_bits_is_a_422_naming_seq(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """``seq`` reached Redis's LRANGE as an index past 64 bits: an undeclared 500
    (``value is not an integer or out of range``) instead of the route's 422."""
    with dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(2525))
        _draft(api, "t-1")
    with api_client(api_server) as raw:
        answer = raw.post("/v1/campaigns/t-1/test", json={"to": "ann@example.com", "seq": 10**26})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["field"] == "seq" and set(body) == {"detail", "field", "errors"}


def test_the_client_sends_an_id_as_one_path_segment(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """An id was put in the path as it was: ``delete_provider("local?x")`` deleted
    ``local``, ``delete_provider("../suppressions/<address>")`` removed a suppression,
    ``cancel_campaign("c-1#x")`` cancelled ``c-1``. Each is now a refusal of that id."""
    with dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(2525))
        _draft(api, "c-1")
        api.suppress("ann@example.com")
        with pytest.raises(InvalidRequest) as refused:
            api.delete_provider("local?x")
        assert refused.value.field == "nickname"
        with pytest.raises(InvalidRequest) as refused:
            api.cancel_campaign("c-1#x")
        assert refused.value.field == "campaign_id"
        with pytest.raises(NotFound) as missing:
            api.get_campaign("..")  # resolved away by httpx: it read /v1/campaigns
        assert missing.value.field == "campaign_id"
        with pytest.raises(DispatchAPIError) as refused:  # a nickname holding "/": no route
            api.delete_provider("../suppressions/ann@example.com")
        assert refused.value.status_code == 404
        assert api.get_provider("local").nickname == "local"
        assert api.get_campaign("c-1").status.value == "draft"
        assert api.get_suppression("ann@example.com") is not None
        with pytest.raises(ValueError, match="campaign_id"):
            api.get_campaign("")


def test_a_delete_whose_answer_was_lost_is_done_not_not_found(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A DELETE is sent again after a lost answer; the repeat finds nothing left to
    delete (404): that is the first one's success, not "not found" (delete_provider
    raised NotFound, unsuppress answered False for an address it had removed)."""
    with dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(2525))
        api.suppress("ann@example.com")
    lossy = LosesAnswers("/v1/providers/local")
    with DispatchClient(api_server.url, API_TOKEN, http=httpx.Client(transport=lossy)) as api:
        api.delete_provider("local")
        assert lossy.sent == 2
        with pytest.raises(NotFound):
            api.get_provider("local")
        with pytest.raises(NotFound):  # a DELETE answered at once still says so
            api.delete_provider("local")
    lossy = LosesAnswers("/v1/suppressions/ann@example.com")
    with DispatchClient(api_server.url, API_TOKEN, http=httpx.Client(transport=lossy)) as api:
        assert api.unsuppress("ann@example.com") is True
        assert lossy.sent == 2
        assert api.get_suppression("ann@example.com") is None
        assert api.unsuppress("ann@example.com") is False


class DroppingProxy:
    """A TCP proxy in front of the API that passes each request whole to it, then, for
    the first ``drops`` requests whose line starts with ``prefix``, closes the caller's
    connection without a word (the server goes on: its answer is read and thrown away)."""

    def __init__(self, upstream_port: int, prefix: bytes, drops: int) -> None:
        self.upstream_port, self.prefix, self.drops = upstream_port, prefix, drops
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _message(sock: socket.socket, buffer: bytearray) -> bytes | None:
        """One HTTP message with a Content-Length body (or none) from ``sock``."""
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return None
            buffer += data
        head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        end = len(head) + 4 + length
        while len(buffer) < end:
            data = sock.recv(65536)
            if not data:
                return None
            buffer += data
        message = bytes(buffer[:end])
        del buffer[:end]
        return message

    def _serve(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        inbound, outbound = bytearray(), bytearray()
        with conn, upstream:
            while (request := self._message(conn, inbound)) is not None:
                upstream.sendall(request)
                if request.startswith(self.prefix) and self.dropped < self.drops:
                    self.dropped += 1
                    conn.shutdown(socket.SHUT_RDWR)
                    self._message(upstream, outbound)  # the server finishes
                    return
                answer = self._message(upstream, outbound)
                if answer is None:
                    return
                conn.sendall(answer)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(api_server: ApiServer) -> Iterator[DroppingProxy]:
    dropping = DroppingProxy(api_server.port, b"POST /v1/campaigns ", drops=1)
    yield dropping
    dropping.close()


def test_a_create_with_recipients_whose_answer_a_proxy_dropped_is_one_campaign(
    api_server: ApiServer, redis_client: redis.Redis, proxy: DroppingProxy
) -> None:
    """A create of a started campaign with its whole list, no id given: the proxy drops
    the connection once the request is through; the client sends it again (with the id
    it made up) and answers with the one campaign, every recipient stored once."""
    with DispatchClient(f"http://127.0.0.1:{proxy.port}", API_TOKEN) as api:
        api.put_provider("local", smtp_body(2525))
        people = [{"email": f"p{i}@example.com"} for i in range(3000)]
        body = {"provider": "local", "subject": "s", "html": "h", "send_at": 4102444800,
                "recipients": people}  # fmt: skip
        summary = api.create_campaign(body)
    assert proxy.dropped == 1
    assert summary.total == 3000 and summary.status.value == "scheduled"
    listed = campaign_reads.list_campaigns(client=redis_client)[0]
    assert [c["id"] for c in listed] == [summary.id]
    assert redis_client.zcard(store.CAMPAIGNS_ZSET) == 1
