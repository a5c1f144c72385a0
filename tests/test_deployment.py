"""Deployment files: the Compose file is valid, the Procfile names every process, and the
Dockerfile builds from paths that exist and runs the installed wheel as it should."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import jsonschema
import redis
import yaml

from dispatch.redis_server import RedisServer
from tests.api_server import ApiServer

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    assert set(compose["services"]) == {"redis", "web", "worker", "beat", "flower"}
    command = compose["services"]["redis"]["command"]
    assert "--appendonly" in command
    # Expiring keys (a day's hash of provider ids) are freed in the background.
    assert command[command.index("--lazyfree-lazy-expire") + 1] == "yes"
    # Flower has no login and can stop workers: never published beyond the host.
    assert compose["services"]["flower"]["ports"] == ["127.0.0.1:5555:5555"]


def test_compose_schema_catches_mistakes() -> None:
    """The check can fail: a misspelt key is refused."""
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose["services"]["web"]["enviroment"] = {}
    errors = list(jsonschema.Draft201909Validator(schema).iter_errors(compose))
    assert errors


def test_procfile_has_the_four_processes() -> None:
    lines = (ROOT / "Procfile").read_text().splitlines()
    names = [line.split(":", 1)[0] for line in lines if line.strip()]
    assert names == ["web", "worker", "beat", "flower"]
    # Flower has no login and can stop workers: on this host only unless told.
    assert "--address=${FLOWER_ADDRESS:-127.0.0.1}" in lines[3]


def test_a_worker_runs_two_processes_per_core_unless_told() -> None:
    import os

    from dispatch.celery_app import app

    assert app.conf.worker_concurrency == 2 * len(os.sched_getaffinity(0))


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def _copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """The stage's ``COPY`` from the build context: (sources, destination)."""
    found = []
    for instruction, arguments in stage:
        words = shlex.split(arguments)
        if instruction == "COPY" and not any(w.startswith("--from") for w in words):
            found.append((words[:-1], words[-1]))
    return found


def test_every_path_the_image_copies_is_in_the_build_context() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = [s for stage in _dockerfile_stages() for srcs, _ in _copies(stage) for s in srcs]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source not in ignored, source


def test_the_image_builds_a_wheel_with_every_module_and_page(tmp_path: Path) -> None:
    """The build stage's ``pip wheel``, run on exactly what that stage copies, builds
    without deprecation warnings a wheel with every module of both packages, the
    recipient pages (package data) and the license: the image runs from it."""
    build_stage = _dockerfile_stages()[0]
    context = tmp_path / "context"
    context.mkdir()
    for sources, destination in _copies(build_stage):
        for source in sources:
            target = context / destination if destination != "./" else context / source
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(context), "--no-deps", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    # setuptools refuses what it deprecates after a date: a build that warns will break.
    assert "BuildBackendWarning" not in built.stdout + built.stderr, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("dispatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(ROOT).as_posix()
        for package in ("dispatch", "providers")
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert any(name.endswith(".html") for name in expected)
    assert expected <= names, sorted(expected - names)
    # Apache-2.0 wants its text with every copy: the image's wheel carries it.
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)


def test_the_image_runs_the_installed_wheel_as_a_user_with_a_home() -> None:
    """No source tree in the final stage (``celery -A`` and ``python -m`` put the working
    folder first on sys.path); a user that is not root, with a home it can write (``dispatch
    up`` records its Redis there for ``docker exec ... dispatch ...``)."""
    final = _dockerfile_stages()[-1]
    copied = {source for sources, _ in _copies(final) for source in sources}
    assert not copied & {"dispatch", "providers", "."}, copied
    assert any("pip install" in args and ".whl" in args for ins, args in final if ins == "RUN")
    (user,) = [args for ins, args in final if ins == "USER"]
    assert user not in ("root", "0")
    (useradd,) = [args for ins, args in final if ins == "RUN" and "useradd" in args]
    words = shlex.split(useradd[useradd.index("useradd") :])
    assert "--create-home" in words or "-m" in words
    home = words[words.index("--home-dir") + 1] if "--home-dir" in words else f"/home/{user}"
    assert [args for ins, args in final if ins == "WORKDIR"][-1] == home


def test_the_image_serves_the_port_it_exposes_and_compose_checks_a_real_route(
    api_server: ApiServer,
) -> None:
    final = _dockerfile_stages()[-1]
    (exposed,) = [args for ins, args in final if ins == "EXPOSE"]
    (cmd,) = [json.loads(args) for ins, args in final if ins == "CMD"]
    assert cmd[:2] == ["dispatch", "api"] and cmd[cmd.index("--port") + 1] == exposed
    web = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["web"]
    assert web["ports"] == [f"{exposed}:{exposed}"]
    probe = " ".join(web["healthcheck"]["test"])
    (url,) = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", probe)
    assert url[0] == exposed
    assert httpx.get(api_server.url + url[1], timeout=30).status_code == 200


def test_the_embedded_redis_frees_expiring_keys_in_the_background() -> None:
    """As compose's: a day's hash of provider ids, a field a message, expires at once."""
    server = RedisServer().start()
    try:
        config = redis.Redis.from_url(server.url).config_get("lazyfree-lazy-expire")
        assert config == {"lazyfree-lazy-expire": "yes"}
    finally:
        server.stop()


def _flower_probe(port: int) -> int:
    """Exit status of compose's healthcheck of its flower service, run against ``port``."""
    flower = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]
    test = flower["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], test
    argv = [sys.executable, *test[2:]]
    argv[-1] = argv[-1].replace("127.0.0.1:5555", f"127.0.0.1:{port}")
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_compose_checks_flower_on_a_route_it_serves_behind_its_login(
    redis_server: RedisServer,
) -> None:
    """Flower's container was never checked: a Flower that stopped answering stayed up.
    The probe passes against a real Flower that asks for a login, and fails without one."""
    from dispatch.sinks import free_port

    flower = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # the port the probe reads
    port = free_port()
    assert _flower_probe(port) != 0  # nothing listens yet
    env = {"DISPATCH_REDIS_URL": redis_server.url, "FLOWER_BASIC_AUTH": "ops:secret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dispatch.celery_app", "flower",
         f"--port={port}", "--address=127.0.0.1"],
        env={**os.environ, **env}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "flower exited"
            time.sleep(0.1)
        else:
            raise AssertionError("flower did not start")
        assert _flower_probe(port) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
