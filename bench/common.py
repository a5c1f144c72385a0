"""Shared pieces of the benchmarks: servers they start, processes they watch, output."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_tool(name: str) -> str:
    """Path of a Postfix tool (smtp-sink, smtp-source); exits with a hint if missing."""
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None
    )
    if found is None:
        sys.exit(f"{name} not found: apt-get install postfix (it brings smtp-sink/smtp-source)")
    return found


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1, counting the messages it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self._count_re = re.compile(rb"mesg=(\d+)")
        self.proc = subprocess.Popen(
            [find_tool("smtp-sink"), "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "1000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._count = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(self.port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            buf = (buf + chunk)[-256:]
            found = self._count_re.findall(buf)
            if found:
                self._count = int(found[-1])

    @property
    def count(self) -> int:
        """Messages accepted so far (smtp-sink's own running counter)."""
        return self._count

    def wait_count(self, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self._count < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _proc_mb(path: str, field: str) -> float:
    """A ``<field>: <n> kB`` line of a /proc file, in MB; 0 if the process is gone."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process in MB, 0 if it is gone."""
    return _proc_mb(f"/proc/{pid}/status", "VmHWM:")


def pss_mb(pid: int) -> float:
    """Proportional set size of a process in MB (pages shared with others counted in
    part), 0 if it is gone: summed over a prefork tree, shared pages count once."""
    return _proc_mb(f"/proc/{pid}/smaps_rollup", "Pss:")


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Celery's prefork children)."""
    out: list[int] = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for kid in map(int, kids):
        out.append(kid)
        out.extend(children(kid))
    return out


class RssWatcher:
    """Samples the peak RSS of each process of a tree while a benchmark runs, and the
    peak of the tree's summed PSS (the whole worker's memory, shared pages once)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: dict[int, float] = {}
        self.tree_pss_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0
        # VmHWM is each process's own peak: read every second (and at the end) in case
        # one exits. PSS walks the page tables (CPU the run would miss): every 5 s.
        while not self._stop.wait(1.0):
            pids = [self.pid, *children(self.pid)]
            self._sample_peaks(pids)
            tick += 1
            if tick % 5 == 0:
                self._sample_pss(pids)

    def _sample_peaks(self, pids: list[int]) -> None:
        for pid in pids:
            self.peak[pid] = max(self.peak.get(pid, 0.0), peak_rss_mb(pid))

    def _sample_pss(self, pids: list[int]) -> None:
        self.tree_pss_peak = max(self.tree_pss_peak, sum(map(pss_mb, pids)))

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._thread.join()
        pids = [self.pid, *children(self.pid)]
        self._sample_peaks(pids)
        self._sample_pss(pids)
        return self.peak

    def report(self) -> str:
        """One line: the largest process's peak RSS, each one's, and the whole tree's."""
        each = ", ".join(f"{v:.0f}" for v in sorted(self.peak.values()))
        return (
            f"worker peak RSS: {max(self.peak.values(), default=0):.0f} MB (processes: "
            f"{each} MB); whole worker {self.tree_pss_peak:.0f} MB (PSS: pages the "
            "processes share counted once)"
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each named process tree spends between :meth:`start` and :meth:`report`.

    The ratio alone says how far from the limit a run is; this says which process the
    cores went to (on two cores the sink, Redis and the workers all compete).
    """

    def __init__(self, trees: dict[str, int], single: dict[str, int] | None = None) -> None:
        self.roots = {**trees, **(single or {})}
        self.trees = set(trees)
        self.before: dict[str, float] = {}

    def _used(self, name: str) -> float:
        pid = self.roots[name]
        pids = [pid, *children(pid)] if name in self.trees else [pid]
        return sum(cpu_seconds(p) for p in pids)

    def start(self) -> None:
        self.before = {name: self._used(name) for name in self.roots}
        self.before.update({f"{n}:root": cpu_seconds(self.roots[n]) for n in self.trees})

    def report(self, messages: int) -> str:
        parts = []
        for name in self.roots:
            used = self._used(name) - self.before.get(name, 0.0)
            part = f"{name} {used:.1f} s ({used / messages * 1e6:.1f} us/msg)"
            if name in self.trees:  # the root's own share (Celery's consumer, for workers)
                own = cpu_seconds(self.roots[name]) - self.before.get(f"{name}:root", 0.0)
                part += f" [root process {own:.2f} s, {own / messages * 1e6:.2f} us/msg]"
            parts.append(part)
        return "CPU: " + ", ".join(parts)


def redis_command_stats(url: str, top: int = 8, per: int = 0) -> str:
    """Redis's own time by command since the last reset (``CONFIG RESETSTAT``); with
    ``per``, in microseconds and calls per one of ``per`` items (a script's own time
    includes the commands it calls, which have their entries too)."""
    import redis

    client = redis.Redis.from_url(url)
    stats = client.info("commandstats")
    client.close()
    rows = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:top]
    if per:
        return "Redis time by command, us an item: " + ", ".join(
            f"{name.removeprefix('cmdstat_')} {v['usec'] / per:.2f} ({v['calls'] / per:.2f} calls)"
            for name, v in rows
        )
    return "Redis time by command: " + ", ".join(
        f"{name.removeprefix('cmdstat_')} {v['usec'] / 1e6:.2f} s/{v['calls']:,} calls"
        for name, v in rows
    )


def start_worker(
    redis_url: str, concurrency: int, extra_env: dict[str, str] | None = None, app: str = ""
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DISPATCH_REDIS_URL": redis_url, **(extra_env or {})}
    if app:
        cmd = [sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "WARNING",
               "--concurrency", str(concurrency), "-Q", "naive"]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "dispatch.cli", "worker", "--loglevel", "WARNING",
               "--concurrency", str(concurrency)]  # fmt: skip
    # Worker warnings and errors go to bench-worker.log, so a run that goes wrong says why.
    log = open(Path(tempfile.gettempdir()) / "bench-worker.log", "ab")  # noqa: SIM115
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def print_rate(label: str, count: int, seconds: float) -> None:
    print(f"  {label:<44} {count:>9,} msgs {seconds:8.2f} s {count / seconds:>10,.0f} msg/s")


def timed(label: str, fn: Callable[[], int]) -> tuple[int, float]:
    """Run ``fn`` (returns a message count); print and return (count, seconds)."""
    start = time.perf_counter()
    count = fn()
    seconds = time.perf_counter() - start
    print_rate(label, count, seconds)
    return count, seconds


def campaign_seconds(campaign_id: str, started: float) -> float:
    """Wait for a campaign to leave ``running``; the seconds from ``started`` (a
    ``time.time()``) to its ``completed_at``, which the write that settled its last
    message set (Redis's clock, this machine's): not the waiting loop's own step."""
    from dispatch import campaign_reads, store

    r = store.sync_client()
    while campaign_reads.get_status(campaign_id, r).value == "running":
        time.sleep(0.05)
    completed = r.hget(store.campaign_key(campaign_id), "completed_at")
    return float(completed or time.time()) - started


def warm_process() -> None:
    """Import what a long-running API or worker process has imported before its first
    campaign (the task module pulls in every module a batch's hand-off needs)."""
    import dispatch.tasks  # noqa: F401


def tempdir() -> str:
    return tempfile.mkdtemp(prefix="dispatch-bench-")


if TYPE_CHECKING:
    from dispatch.redis_server import RedisServer

BENCH_ENV = {"DISPATCH_SECRET_KEY": "bench", "DISPATCH_ALLOW_PRIVATE_ENDPOINTS": "true"}


def bench_redis() -> RedisServer:
    """A Redis of the benchmark's own, started, with this process's dispatch settings
    (and those of the processes it starts) pointed at it: ``DISPATCH_REDIS_URL`` and
    :data:`BENCH_ENV` (a secret key, local sinks allowed)."""
    from dispatch.redis_server import RedisServer

    server = RedisServer().start()
    os.environ.update(DISPATCH_REDIS_URL=server.url, **BENCH_ENV)
    return server
