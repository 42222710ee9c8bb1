"""A real uvicorn server in a thread on a free loopback port, for tests that drive it over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from typing import Self

import httpx
import uvicorn


class LiveServer:
    """`with LiveServer(app) as server:` serves `app` at `server.url` until the block ends."""

    def __init__(self, app, *, ready_timeout_s: float = 60.0) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        settings = getattr(app.state, "settings", None)
        if settings is not None:  # configured as `spul serve` configures it (limits, timeouts)
            from spul.service.server import uvicorn_config

            config = uvicorn_config(app, settings, log_level="warning", timeout_graceful_shutdown=5)
        else:
            config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise AssertionError("server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
