"""RedisServer.start: ready only once its data is back, and a port taken by something
other than a listening Redis (an outgoing connection's port, a non-Redis service) is
recognised as taken (review W14)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from dispatch.redis_server import RedisServer

KEYS = 300_000
FILL = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'k' .. i, ARGV[2]) end"


def test_a_restart_returns_once_the_append_only_file_is_replayed() -> None:
    """INFO answers while the server loads its data (LOADING to every other command): a
    restart returned then, and its callers' first commands failed."""
    server = RedisServer(appendonly=True).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.eval(FILL, 0, KEYS, "x" * 64)
        client.close()
        server.restart()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.dbsize() == KEYS
        finally:
            client.close()
    finally:
        server.stop()


@pytest.fixture(params=["held without a listener", "another service answers"])
def taken_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port held by a socket that does not listen (as an outgoing connection's), or
    where something other than Redis answers."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        if request.param == "another service answers":
            held.listen(8)
            threading.Thread(target=_answer_http, args=(held,), daemon=True).start()
        yield held.getsockname()[1]
        if request.param == "another service answers":
            held.shutdown(socket.SHUT_RDWR)


def _answer_http(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def test_a_chosen_port_taken_is_chosen_again(taken_port: int) -> None:
    late = RedisServer()
    late.port = taken_port
    try:
        late.start()
        assert late.port != taken_port
        client = redis.Redis.from_url(late.url)
        assert int(client.info("server")["process_id"]) == late.pid
        client.close()
    finally:
        late.stop()


def test_a_given_port_taken_is_named(taken_port: int) -> None:
    given = RedisServer(port=taken_port)
    with pytest.raises(RuntimeError, match=f"port {taken_port} is taken"):
        given.start()
