"""The ``dispatch`` CLI verbs of DESIGN §8 that manage providers, campaigns and suppressions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import httpx
import pytest
import redis
import yaml

from dispatch.cli import main
from dispatch.redis_server import RedisServer, RunningUp, running_up, state_file
from tests.api_support import smtp_body
from tests.conftest import API_TOKEN
from tests.helpers import recipients
from tests.smtp_server import SmtpTestServer, free_port
from tests.worker import WorkerProcess, wait_for


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_providers_add_list_and_test(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with SmtpTestServer() as smtp:
        config = tmp_path / "local.yaml"
        config.write_text(yaml.safe_dump({"nickname": "local", **smtp_body(smtp.port)}))
        code, out, _ = run(capsys, "providers", "add", str(config))
        assert code == 0 and json.loads(out)["callback_url"]
        code, out, _ = run(capsys, "providers", "list")
        assert [p["nickname"] for p in json.loads(out)] == ["local"]

        code, out, _ = run(capsys, "providers", "test", "local", "--to", "ops@example.com")
        assert code == 0 and json.loads(out) == {"ok": True, "error": None, "detail": "accepted"}
        assert smtp.messages[0].rcpt_tos == ["ops@example.com"]

        smtp.handler.rcpt_reply = lambda address: "550 5.1.1 unknown user"
        code, out, _ = run(capsys, "providers", "test", "local", "--to", "ops@example.com")
        assert code == 1 and json.loads(out)["error"] == "SMTP invalid email ID"
        code, _, err = run(capsys, "providers", "test", "local", "--to", "nope")
        assert code == 2 and "--to" in err
        code, _, err = run(capsys, "providers", "test", "ghost", "--to", "a@example.com")
        assert code == 2 and "ghost" in err


def test_send_follow_status_and_suppressions(
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    with SmtpTestServer() as smtp:
        config = tmp_path / "local.json"
        config.write_text(json.dumps({"nickname": "local", **smtp_body(smtp.port)}))
        assert run(capsys, "providers", "add", str(config))[0] == 0
        code, out, _ = run(capsys, "suppressions", "add", "user1@example.com", "--reason", "asked")
        assert code == 0 and json.loads(out)["reason"] == "asked"

        campaign = tmp_path / "campaign.yaml"
        campaign.write_text(
            yaml.safe_dump({"id": "cli-1", "provider": "local", "subject": "Hi {{ name }}",
                            "html": "<p>{{ name }}</p>", "recipients": recipients(50)})
        )  # fmt: skip
        code, out, err = run(capsys, "send", str(campaign), "--follow")
        assert code == 0, err
        assert out.splitlines()[0] == "cli-1"
        assert "cli-1 [" in err  # the progress bar
        summary = json.loads(out.split("\n", 1)[1])
        assert (summary["status"], summary["sent"], summary["suppressed"]) == ("completed", 49, 1)
        assert len(smtp.messages) == 49

        code, out, _ = run(capsys, "status", "cli-1")
        assert code == 0 and json.loads(out)["sent"] == 49
        code, _, err = run(capsys, "status", "nope")
        assert code == 1 and "nope" in err

        code, out, _ = run(capsys, "messages", "cli-1")
        lines = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and [m["seq"] for m in lines] == list(range(50))
        code, out, _ = run(capsys, "messages", "cli-1", "--status", "suppressed")
        assert code == 0 and [json.loads(line)["email"] for line in out.splitlines()] == [
            "user1@example.com"
        ]
        code, out, _ = run(capsys, "messages", "cli-1", "--email", "USER7@example.com")
        (seven,) = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and (seven["seq"], seven["status"]) == (7, "sent")
        assert run(capsys, "messages", "nope")[0] == 1
        code, _, err = run(capsys, "messages", "cli-1", "--status", "lost")
        assert code == 2 and err.startswith("error: --status 'lost': give one of")
        code, _, err = run(capsys, "send", str(campaign))
        assert code == 0 and "already existed" in err

        code, out, _ = run(capsys, "suppressions", "list")
        assert [e["email"] for e in json.loads(out)] == ["user1@example.com"]
        assert run(capsys, "suppressions", "remove", "user1@example.com")[0] == 0
        assert run(capsys, "suppressions", "remove", "user1@example.com")[0] == 1
        code, _, err = run(capsys, "suppressions", "add", "not-an-address")
        assert code == 2 and err.startswith("error: 'not-an-address' is not an email address")

        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"id": "cli-2", "provider": "local", "subject": "s"}))
        code, _, err = run(capsys, "send", str(bad))
        assert code == 2 and "html" in err


def dispatch_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``dispatch *argv`` in a process of its own ("another shell")."""
    cmd = [sys.executable, "-m", "dispatch.cli", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def _dispatch(
    args: list[str], env: dict[str, str], log: IO[bytes], own_session: bool = False
) -> subprocess.Popen[bytes]:
    """``dispatch ARGS`` as a process writing ``log``; ``own_session``: its own process
    group, to clean up after a failure."""
    return subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_session,
    )


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_commands_in_another_shell_use_the_redis_of_a_running_up(tmp_path: Path) -> None:
    """README "Using it": ``dispatch up`` on an embedded Redis in one shell, ``dispatch
    providers add`` in another, neither with DISPATCH_REDIS_URL: the provider reaches the
    running service (its secret too: ``up`` generated the key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env |= {  # the state file goes to a folder of the test, never to the real home
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "HOME": str(tmp_path / "home"),
        "DISPATCH_API_TOKENS": API_TOKEN,
        "DISPATCH_LOG_LEVEL": "WARNING",
    }
    state = tmp_path / "run" / "dispatch" / "up.json"
    port = free_port()
    log = (tmp_path / "up.log").open("wb")
    up = _dispatch(["up", "--port", str(port)], env, log, own_session=True)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )

    def api_answers() -> bool:
        try:
            return api.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        with SmtpTestServer(credentials=("mailer", "s3cret")) as smtp:
            wait_for(lambda: state.exists() and api_answers(), timeout=90)
            recorded = json.loads(state.read_text())["redis_url"]
            config = tmp_path / "provider.yaml"
            body = smtp_body(smtp.port, username="mailer", password="s3cret")
            config.write_text(yaml.safe_dump({"nickname": "shared", **body}))

            added = dispatch_cli(env, "providers", "add", str(config))
            assert added.returncode == 0, added.stderr
            assert "using the Redis of the running `dispatch up`" in added.stderr
            assert recorded in added.stderr
            # Links point at the API `up` serves, not at the default port 8000.
            callback_url = json.loads(added.stdout)["callback_url"]
            assert callback_url.startswith(f"http://127.0.0.1:{port}/v1/callbacks/shared/")
            assert api.get("/v1/providers/shared").json()["callback_url"] == callback_url

            seen = api.get("/v1/providers/shared")
            assert seen.status_code == 200, seen.text
            assert seen.json()["port"] == smtp.port
            sent = api.post("/v1/providers/shared/test", json={"to": "ops@example.com"})
            assert sent.json() == {"ok": True, "error": None, "detail": "accepted"}
            listed = dispatch_cli(env, "providers", "list")
            assert [p["nickname"] for p in json.loads(listed.stdout)] == ["shared"]

            # A worker that exits (Celery's can, when Redis restarts) is started again.
            (worker,) = (pid for pid in _children(up.pid) if "worker" in _cmdline(pid))
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: worker not in _children(up.pid), timeout=30)
            wait_for(lambda: any("worker" in _cmdline(p) for p in _children(up.pid)), timeout=30)
            body = {"provider": "shared", "subject": "s", "html": "h", "recipients": [
                {"email": "after-restart@example.com"}]}  # fmt: skip
            cid = api.post("/v1/campaigns", json=body).json()["id"]
            wait_for(lambda: api.get(f"/v1/campaigns/{cid}").json()["sent"] == 1, timeout=60)
    finally:
        api.close()
        up.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            up.wait(timeout=60)
        try:  # what `up` started must have stopped with it; never leave it running
            os.killpg(up.pid, 0)
            left_running = True
            os.killpg(up.pid, signal.SIGKILL)
        except ProcessLookupError:
            left_running = False
        up.wait()
        log.close()
    assert (up.returncode, left_running) == (0, False), (tmp_path / "up.log").read_text()
    assert not state.exists()

    # No `up` any more: a command runs on a throwaway Redis of its own, as before.
    alone = dispatch_cli(env, "providers", "list")
    assert (alone.returncode, json.loads(alone.stdout)) == (0, [])
    assert "using the Redis" not in alone.stderr


def test_a_record_is_trusted_only_while_its_up_and_its_redis_run(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale record (``up`` killed, or its port taken by another Redis since) is not
    followed: the command then starts its own Redis, as without any record."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    run_id = str(redis.Redis.from_url(redis_server.url).info("server")["run_id"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip

    def recorded(**fields: object) -> RunningUp | None:
        state = {"redis_url": redis_server.url, "run_id": run_id, "pid": os.getpid()}
        state_file().parent.mkdir(parents=True, exist_ok=True)
        state_file().write_text(json.dumps(state | fields))
        return running_up()

    assert recorded() == RunningUp(redis_url=redis_server.url, run_id=run_id, pid=os.getpid())
    assert recorded(run_id="0" * 40) is None  # another server on that port
    assert recorded(pid=int(dead.stdout)) is None  # `up` is gone
    assert recorded(redis_url=f"redis://127.0.0.1:{free_port()}/0") is None  # nothing answers
    state_file().write_text("{not json")
    assert running_up() is None


def test_up_stops_when_its_embedded_redis_is_gone(tmp_path: Path) -> None:
    """The embedded Redis keeps everything in memory: once it has died (killed, out of
    memory), the worker, beat and API would only retry it forever. ``up`` says so and
    stops, leaving nothing behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env |= {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "DISPATCH_LOG_LEVEL": "WARNING"}
    state = tmp_path / "run" / "dispatch" / "up.json"
    log = (tmp_path / "up.log").open("wb")
    up = _dispatch(["up", "--port", str(free_port())], env, log, own_session=True)
    try:
        wait_for(state.exists, timeout=90)
        (server,) = (p for p in _children(up.pid) if "redis-server" in _cmdline(p))
        os.kill(server, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
        try:
            os.killpg(up.pid, signal.SIGKILL)
            left_running = True
        except ProcessLookupError:
            left_running = False
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert (up.returncode, left_running) == (1, False), output
    assert "dispatch up: the embedded Redis exited" in output
    assert not state.exists()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_lone_api_stopped_by_sigterm_stops_its_embedded_redis(tmp_path: Path) -> None:
    """``dispatch api`` without DISPATCH_REDIS_URL starts a Redis of its own; a supervisor's
    SIGTERM (or ``timeout``) ends it, and its Redis with it. uvicorn raised the SIGTERM it
    had handled again after its shutdown, which ended the process at once: its Redis, in a
    session of its own, ran on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env |= {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "DISPATCH_LOG_LEVEL": "WARNING"}
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    api = _dispatch(["api", "--port", str(port)], env, log)
    servers: list[int] = []
    try:

        def serving() -> bool:
            servers[:] = [p for p in _children(api.pid) if "redis-server" in _cmdline(p)]
            try:
                answered = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.TransportError:
                return False
            return answered and bool(servers)

        wait_for(serving, timeout=60)
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
        wait_for(lambda: not _alive(servers[0]), timeout=15)
    finally:
        if api.poll() is None:
            api.kill()
        for pid in servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
    assert api.returncode == 128 + signal.SIGTERM, (tmp_path / "api.log").read_text()
