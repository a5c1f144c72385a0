"""A fast HTTP sink for benchmarks: answers 200 to every POST and counts the messages.

Runs as its own process so that it never shares a GIL with what it measures. It counts
occurrences of ``--marker`` in each body (a key every message object holds) instead of
parsing the JSON; ``GET /count`` answers the running totals.

    python -m bench.http_sink --port 8099 [--marker '"mid"']
"""

from __future__ import annotations

import argparse
import asyncio
from typing import ClassVar

import orjson


class SinkProtocol(asyncio.Protocol):
    totals: ClassVar[dict[str, int]] = {"requests": 0, "messages": 0, "bytes": 0}
    marker = b'"mid"'

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buffer[:head_end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body = bytes(self.buffer[head_end + 4 : end])
            del self.buffer[:end]
            if head.startswith("GET /count"):
                reply = orjson.dumps(self.totals)
            else:
                SinkProtocol.totals["requests"] += 1
                SinkProtocol.totals["messages"] += body.count(self.marker)
                SinkProtocol.totals["bytes"] += len(body)
                reply = b'{"status":"queued"}'
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(reply)).encode()
                + b"\r\n\r\n"
                + reply
            )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--marker", default='"mid"')
    args = parser.parse_args()
    SinkProtocol.marker = args.marker.encode()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
