"""ASGI middleware: every request body is bounded in size and in time.

A body over `max_bytes` is refused with 413 (from `Content-Length` alone when declared, else as
soon as the streamed bytes pass the limit), and one that has not fully arrived `timeout_s` after
the request started is refused with 408, so neither a huge nor a trickling body can hold a
worker. Paths under an `own_limit` prefix read and bound their bodies themselves (uploads).
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spul.service.routes.errors import ApiError, error_response


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float, own_limit: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.own_limit = own_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = None if scope["path"].startswith(self.own_limit) else self.max_bytes
        declared = _content_length(scope)
        if limit is not None and declared is not None and declared > limit:
            await self._too_large(limit, scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        received, complete = 0, False

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: what follows is waiting for a disconnect, unbounded
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ApiError(408, f"the request body did not arrive within {self.timeout_s:g}s "
                               "(SPUL_READ_TIMEOUT_S)", code="request_timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if limit is not None and received > limit:
                    raise _too_large_error(limit)
            else:
                complete = True
            return message

        await self.app(scope, bounded_receive, send)

    @staticmethod
    async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        err = _too_large_error(limit)
        response = error_response(Request(scope), err.status_code, err.message, code=err.code,
                                  headers={"Connection": "close"})
        await response(scope, receive, send)


def _too_large_error(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over this server's {limit}-byte limit (SPUL_MAX_REQUEST_BYTES)",
                    code="request_too_large")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
