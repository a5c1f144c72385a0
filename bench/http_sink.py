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
        self.head = bytearray()  # the request head being read
        self.body: list[bytes] = []  # the body's pieces as they came
        self.missing = -1  # body bytes still to come; -1: reading a head

    def data_received(self, data: bytes) -> None:
        # Each byte is looked at once: a 300 KB body arrives in many pieces.
        while data:
            if self.missing < 0:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                data = bytes(self.head[end + 4 :])
                self.request = bytes(self.head[:end]).decode("latin-1")
                self.head.clear()
                self.missing = 0
                for line in self.request.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        self.missing = int(value)
            piece = data[: self.missing]
            data = data[self.missing :]
            self.body.append(piece)
            self.missing -= len(piece)
            if self.missing == 0:
                self.missing = -1
                body = b"".join(self.body)
                self.body.clear()
                self.answer(body)

    def answer(self, body: bytes) -> None:
        if self.request.startswith("GET /count"):
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
