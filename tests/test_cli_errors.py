"""What the ``dispatch`` command says when a setting, a file or Redis is wrong: one line
naming the culprit and an exit status, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from dispatch import store
from dispatch.cli import main
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings
from tests.smtp_server import free_port


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Settings and Redis clients read again from the environment the test sets, and
    again from the restored one after it (no ``dispatch up`` record is looked at)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    get_settings.cache_clear()
    store.reset_clients()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    store.reset_clients()


def run_alone(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """``dispatch *argv`` in a process group of its own: its exit status and stderr; on
    a timeout the whole group is killed (nothing it started is left running)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"dispatch {' '.join(argv)} still ran after {timeout} s")
    return proc.returncode, err


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISPATCH_BATCH_SIZE", "abc"),
        ("DISPATCH_MAX_ATTEMPTS", "-3"),
        ("DISPATCH_LOG_LEVEL", "LOUD"),
        ("DISPATCH_REDIS_URL", "localhost:6379"),
        ("DISPATCH_REDIS_URL", "redis://localhost:port/0"),
        ("DISPATCH_PUBLIC_URL", "mail.acme.example"),
        ("DISPATCH_PUBLIC_URL", "https://bücher.example"),
        ("DISPATCH_ACCOUNT_ID", "acmé"),
        ("DISPATCH_ACCOUNT_ID", "a|b"),
        ("DISPATCH_SNS_HOST_PATTERN", "^sns(("),
        ("DISPATCH_ALLOW_PRIVATE_ENDPOINTS", "maybe"),
    ],
)
def test_a_bad_setting_is_named_at_start(
    name: str,
    value: str,
    fresh_settings: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "status", "any")
    assert code == 2 and out == ""
    assert err.startswith(f"error: {name}") and len(err.splitlines()) == 1, err


def test_a_bad_redis_url_is_not_echoed_with_its_password(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISPATCH_REDIS_URL", "redis://:hunter2@localhost:port/0")
    code, _, err = run(capsys, "status", "any")
    assert code == 2 and "DISPATCH_REDIS_URL" in err and "hunter2" not in err


def test_the_log_level_is_read_in_any_case(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_LOG_LEVEL", "debug")
    assert get_settings().log_level == "DEBUG"  # uvicorn and logging both take it


def test_an_unreachable_redis_is_one_line_without_the_password(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("DISPATCH_REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    code, out, err = run(capsys, "providers", "list")
    assert code == 1 and out == ""
    assert err.startswith(f"error: Redis at redis://127.0.0.1:{port}/0: ") and "hunter2" not in err


def test_files_that_cannot_be_used_are_named(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("id: [unclosed\n")
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"id": ')
    words = tmp_path / "words.yaml"
    words.write_text("- smtp\n- http\n")
    for verb, path, says in [
        ("send", missing, "cannot read it"),
        ("providers add", missing, "cannot read it"),
        ("send", broken_yaml, "not valid YAML"),
        ("providers add", broken_json, "not valid JSON"),
        ("providers add", words, "must hold a provider"),
    ]:
        code, out, err = run(capsys, *verb.split(), str(path))
        assert (code, out) == (2, ""), (verb, path, err)
        assert err.startswith(f"error: {path}: {says}"), err
    assert redis_client.keys("dispatch:provider*") == []


def test_saving_a_secret_without_the_key_says_which_setting(
    redis_client: redis.Redis,
    fresh_settings: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("DISPATCH_SECRET_KEY")
    provider = tmp_path / "p.yaml"
    provider.write_text(
        yaml.safe_dump({"nickname": "p", "kind": "smtp", "host": "127.0.0.1", "port": 2525,
                        "username": "u", "password": "pw", "from_address": "a@acme.example"})
    )  # fmt: skip
    code, _, err = run(capsys, "providers", "add", str(provider))
    assert code == 2 and err.startswith("error: DISPATCH_SECRET_KEY is not set"), err


def test_a_service_on_a_shared_redis_refuses_to_start_without_the_key(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An API with a key of its own could not read the secrets the others save, nor the
    unsubscribe links the workers sign: it must not start."""
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_SECRET_KEY"}
    env |= {"DISPATCH_REDIS_URL": redis_server.url, "XDG_RUNTIME_DIR": str(tmp_path)}
    for verb in (["api", "--port", str(free_port())], ["worker"], ["beat"]):
        code, err = run_alone(verb, env, timeout=60)
        assert code == 2, (verb, err[-2000:])
        assert err.startswith("error: DISPATCH_SECRET_KEY is not set"), err


def test_beat_runs_in_a_folder_it_cannot_write(redis_server: RedisServer, tmp_path: Path) -> None:
    """The image's user cannot write the working folder (/app); Celery beat keeps its
    schedule file there by default and died at start."""
    if os.geteuid() == 0:  # root writes anywhere but in sysfs
        folder = Path("/sys")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
    env = os.environ | {"DISPATCH_REDIS_URL": redis_server.url, "PYTHONPATH": _root()}
    env["DISPATCH_LOG_LEVEL"] = "DEBUG"  # beat's "Sending due task" lines
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        beat = subprocess.Popen(
            [sys.executable, "-m", "dispatch.cli", "beat"],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Sending due task" not in log.read_text() and beat.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert beat.poll() is None, log.read_text()  # still running, scheduling
    finally:
        beat.terminate()
        beat.wait(timeout=30)


def _root() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def test_a_providers_file_may_hold_a_list(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    both = tmp_path / "both.json"
    base = {"kind": "smtp", "host": "127.0.0.1", "port": 2525, "from_address": "a@acme.example"}
    both.write_text(json.dumps([{"nickname": "one", **base}, {"nickname": "two", **base}]))
    code, _, err = run(capsys, "providers", "add", str(both))
    assert code == 0, err
    assert sorted(redis_client.smembers(store.PROVIDERS_SET)) == ["one", "two"]


def test_an_api_elsewhere_than_the_public_url_says_so(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lone ``dispatch api`` cannot tell the workers where it is: the links they put in
    messages go to DISPATCH_PUBLIC_URL, which it warns about when unset and not its own."""
    from dispatch.cli import _warn_public_url

    monkeypatch.delenv("DISPATCH_PUBLIC_URL", raising=False)
    _warn_public_url("127.0.0.1", 8000)  # the default is right
    _warn_public_url("0.0.0.0", 9000)
    _, err = capsys.readouterr()
    assert err.count("warning: DISPATCH_PUBLIC_URL is not set") == 1
    assert "http://127.0.0.1:8000" in err
    monkeypatch.setenv("DISPATCH_PUBLIC_URL", "https://mail.acme.example")
    get_settings.cache_clear()
    _warn_public_url("0.0.0.0", 9000)  # set: the operator knows
    assert capsys.readouterr().err == ""


def test_workers_and_beat_log_at_dispatch_log_level_unless_told(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: the level comes from DISPATCH_LOG_LEVEL; ``--loglevel`` overrides it (the
    worker of ``dispatch up`` logged at INFO whatever the setting said)."""
    import dispatch.cli

    started: list[list[str]] = []
    monkeypatch.setattr(dispatch.cli, "_celery", lambda argv: started.append(argv) or 0)
    monkeypatch.setenv("DISPATCH_LOG_LEVEL", "warning")
    for argv in (["worker"], ["beat"], ["worker", "--loglevel", "DEBUG"]):
        assert main(argv) == 0
    levels = [argv[argv.index("--loglevel") + 1] for argv in started]
    assert levels == ["WARNING", "WARNING", "DEBUG"]


def test_up_on_a_port_in_use_says_so_at_once(tmp_path: Path) -> None:
    """The API could not bind and ``up`` started it again and again for half a minute
    before it gave up; now it says so before starting anything."""
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for verb in ("up", "api"):
            code, err = run_alone([verb, "--port", str(port)], env, timeout=25)
            assert code == 2, err[-3000:]
            last = err.splitlines()[-1]
            assert last.startswith(f"error: cannot serve on 127.0.0.1:{port}: "), err
    assert not (tmp_path / "dispatch" / "up.json").exists()
