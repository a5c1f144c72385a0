"""The real ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import uvicorn

from tests.smtp_server import free_port


class ApiServer:
    def __init__(self, **options: Any) -> None:
        """``options``: more of uvicorn's (``http``: the protocol ``dispatch api`` serves)."""
        from dispatch.api.app import create_app

        self.port = free_port()
        config = uvicorn.Config(
            create_app(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            **options,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("API server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)
