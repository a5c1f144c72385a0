"""A Redis failover behind the name in DISPATCH_REDIS_URL (a DNS name, a proxy, a managed
service's endpoint moved to the promoted replica): the connections dispatch holds stay
with the old primary, now a replica, which answers every write READONLY. redis-py keeps
such a connection, so the API answered 503 and every batch failed until the process was
restarted (review A27). Here a real TCP proxy is the name: two real Redis servers, the
second a replica of the first until it is promoted and the proxy sends new connections
to it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery

from dispatch import campaign_reads, store
from dispatch.redis_server import RedisServer
from dispatch.sending import run_batch
from dispatch.settings import get_settings
from tests.api_server import ApiServer
from tests.callback_support import api_process
from tests.conftest import API_TOKEN
from tests.helpers import create_held, http_provider, recipients
from tests.http_sink import HttpSink
from tests.worker import WorkerProcess, wait_for


class SwitchingProxy:
    """Passes each TCP connection to ``target`` (a port on 127.0.0.1) as it was when the
    connection came: a connection made before a switch stays with the old target."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for s in self._open:
            s.close()


@dataclass
class Pair:
    primary: RedisServer
    replica: RedisServer
    proxy: SwitchingProxy

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.proxy.port}/0"

    def fail_over(self) -> None:
        """Promote the replica (once it has every write), demote the old primary to a
        replica of it, and send new connections to the new primary."""
        old = redis.Redis(port=self.primary.port)
        new = redis.Redis(port=self.replica.port)
        try:
            assert old.wait(1, 5000) == 1
            new.replicaof("NO", "ONE")
            old.replicaof("127.0.0.1", str(self.replica.port))
            self.proxy.target = self.replica.port
            with pytest.raises(redis.ReadOnlyError):
                old.set("dispatch:probe", "1")  # (the old connections' Redis refuses writes)
        finally:
            old.close()
            new.close()


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    """dispatch's clients on the proxy, in front of a primary with one replica."""
    primary, replica = RedisServer().start(), RedisServer().start()
    proxy = SwitchingProxy(primary.port)
    follower = redis.Redis(port=replica.port, decode_responses=True)
    follower.replicaof("127.0.0.1", str(primary.port))
    wait_for(lambda: follower.info("replication")["master_link_status"] == "up", timeout=30)
    follower.close()
    pair = Pair(primary, replica, proxy)
    monkeypatch.setenv("DISPATCH_REDIS_URL", pair.url)
    monkeypatch.setenv("DISPATCH_API_TOKENS", API_TOKEN)
    get_settings.cache_clear()
    store.reset_clients()
    try:
        yield pair
    finally:
        store.sync_client().close()
        monkeypatch.undo()
        get_settings.cache_clear()
        store.reset_clients()
        proxy.close()
        primary.stop()
        replica.stop()


def test_the_api_takes_writes_again_right_after_the_failover(pair: Pair) -> None:
    api = ApiServer().start()
    try:
        with api.client(API_TOKEN) as client:
            before = client.put("/v1/suppressions/before@example.com", json={"reason": "manual"})
            assert before.status_code == 201, before.text
            pair.fail_over()
            # Each answered 503 ("You can't write against a read only replica") for good.
            for n in range(3):
                after = client.put(f"/v1/suppressions/after{n}@example.com", json={})
                assert after.status_code == 201, after.text
            listed = client.get("/v1/suppressions/before@example.com")
            assert listed.status_code == 200, listed.text
    finally:
        api.stop()
    new_primary = redis.Redis(port=pair.replica.port, decode_responses=True)
    try:
        assert new_primary.hexists(store.SUPPRESSIONS_HASH, "after2@example.com")
    finally:
        new_primary.close()


def test_a_workers_client_sends_the_next_batch_right_after_the_failover(pair: Pair) -> None:
    """One asyncio client across both batches, as each worker process keeps its own
    (dispatch.runtime); its first batch's connections are the old primary's."""
    r = store.sync_client()
    body = {"provider": "esp", "subject": "Hi {{ name }}", "html": "<p>{{ name }}</p>"}
    with HttpSink() as sink:
        http_provider(r, sink.url)
        first, first_batches = create_held(r, {**body, "recipients": recipients(3)})

        async def go() -> list[dict[str, int]]:
            client = store.async_client()
            try:
                for cid, batch in first_batches:
                    await run_batch(cid, batch, r=client)
                pair.fail_over()
                second, batches = create_held(r, {**body, "recipients": recipients(4, "b.example")})
                for cid, batch in batches:  # (raised ReadOnlyError)
                    await run_batch(cid, batch, r=client)
                return [campaign_reads.campaign_summary(c, r) for c in (first, second)]
            finally:
                await client.aclose()

        summaries = asyncio.run(go())
        sent_to = sorted(m["to"] for q in sink.requests for m in q.json()["msgs"])
    assert [(s["sent"], s["status"]) for s in summaries] == [(3, "completed"), (4, "completed")]
    assert len(sent_to) == 7 and len(set(sent_to)) == 7


def test_a_campaign_created_right_after_the_failover_is_enqueued_and_sent(
    pair: Pair, tmp_path: Path
) -> None:
    """``dispatch api`` and a worker, each in its own process: the API's first enqueue
    of batch tasks after the failover met its producer's connection to the old primary
    (kombu's batch publish: READONLY), and the create answered 500, its batches never
    enqueued (left to housekeeping's sweep, minutes later); a create through the Celery
    task read a failure."""
    r = store.sync_client()
    body = {"provider": "esp", "subject": "Hi {{ name }}", "html": "<p>{{ name }}</p>"}
    worker = WorkerProcess(pair.url, concurrency=1, log_path=str(tmp_path / "worker.log"))
    other = Celery("other-service", broker=pair.url, backend=pair.url)
    ids: list[str] = []

    def create_both(api: httpx.Client, tag: str) -> None:
        """One campaign through the API, one through the Celery task (as another
        service sends it, reading the answer), each sent before the next."""
        created = api.post("/v1/campaigns", json={**body, "recipients": recipients(3, f"{tag}.a")})
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
        wait_for(lambda: _status(r, ids[-1]) == "completed", timeout=60)
        sent = other.send_task(
            "dispatch.enqueue_campaign", args=[{**body, "recipients": recipients(3, f"{tag}.c")}]
        )
        ids.append(sent.get(timeout=60))  # (raised ReadOnlyError: its answer not stored)
        wait_for(lambda: _status(r, ids[-1]) == "completed", timeout=60)

    with HttpSink() as sink, api_process(pair.url) as api:
        http_provider(r, sink.url)
        worker.start()
        try:
            create_both(api, "before")
            pair.fail_over()
            create_both(api, "after")
        finally:
            worker.stop()
            other.close()
        sent_to = sorted(m["to"] for q in sink.requests for m in q.json()["msgs"])
    assert [campaign_reads.campaign_summary(c, r)["sent"] for c in ids] == [3, 3, 3, 3]
    assert len(sent_to) == 12 and len(set(sent_to)) == 12


def _status(r: redis.Redis, campaign_id: str) -> str:
    return str(campaign_reads.campaign_summary(campaign_id, r)["status"])
