"""The app under uvicorn, with connection limits and timeouts from the settings.

- `max_connections`: open connections plus running requests; beyond it uvicorn answers 503.
- `keep_alive_timeout_s`: an idle keep-alive connection is closed after this.
- `read_timeout_s`: a connection must start a request within this (after it opens or after its
  previous response), so idle or trickling connections cannot pile up; request bodies have the
  same bound (`bodylimit.BodyLimit`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from spul.service.settings import Settings


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    values: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "timeout_graceful_shutdown": settings.shutdown_grace_s + 5,
        "http": read_timeout_protocol(settings.read_timeout_s),
    }
    values.update(overrides)
    return uvicorn.Config(app, **values)


def read_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing a connection on which no request began for `timeout_s`."""
    base: Any = AutoHTTPProtocol

    class ReadTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._seen_cycle = self.cycle
            self._read_timer = self.loop.call_later(timeout_s, self._check_progress)

        def _check_progress(self) -> None:
            cycle = self.cycle
            idle = cycle is None or cycle.response_complete
            if idle and cycle is self._seen_cycle:  # no new request began within a whole period
                if not self.transport.is_closing():
                    self.transport.close()
                return
            self._seen_cycle = cycle
            self._read_timer = self.loop.call_later(timeout_s, self._check_progress)

        def connection_lost(self, exc: Exception | None) -> None:
            self._read_timer.cancel()
            super().connection_lost(exc)

    return ReadTimeoutProtocol
