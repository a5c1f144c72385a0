"""A Redis server this process starts on a port it chose, which something else took
before the server bound it (the suite runs in two processes, each starting servers; a
demo beside them), starts on another port: a ping reached the other Redis, and two
users shared one (one's flush emptied the other's)."""

from __future__ import annotations

import socket

import redis

from dispatch.redis_server import RedisServer


def _answering_pid(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def test_a_port_another_redis_took_is_chosen_again(redis_server: RedisServer) -> None:
    late = RedisServer()
    late.port = redis_server.port  # (as if the other had bound it first)
    try:
        late.start()
        assert late.port != redis_server.port
        assert _answering_pid(late) == late.pid != redis_server.pid
    finally:
        late.stop()


def test_a_port_another_listener_took_is_chosen_again() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(8)
        late = RedisServer()
        late.port = taken.getsockname()[1]
        try:
            late.start()
            assert late.port != taken.getsockname()[1]
            assert _answering_pid(late) == late.pid
        finally:
            late.stop()


def test_a_server_given_its_port_keeps_it_and_says_it_is_taken(
    redis_server: RedisServer,
) -> None:
    """A port asked for (``dispatch up --port``, a restart) is not changed behind its
    caller's back: taken, the start fails naming it."""
    given = RedisServer(port=redis_server.port)
    try:
        given.start()
    except RuntimeError as exc:
        assert f"port {redis_server.port} is taken" in str(exc)
    else:
        raise AssertionError("started on a port another Redis holds")
    assert given.pid is None and given.port == redis_server.port
