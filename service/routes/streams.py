"""Reading a generation's events: to the end (one JSON answer) or as server-sent events.

Either way the request is cancelled, freeing its batch slot, when its client goes away.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request

from spul.service.routes.errors import ApiError
from spul.service.scheduler import RequestStream, TokenEvent

SSE_DONE = "[DONE]"  # the last `data:` line of every stream, as in OpenAI's API


async def collect(stream: RequestStream, http_request: Request | None = None) -> tuple[str, TokenEvent]:
    """Run a request to the end; returns its text and final event.

    The request is cancelled (its batch slot freed) if this handler is cancelled or, given
    `http_request`, as soon as the client disconnects while it waits for the whole answer.
    """
    watcher = asyncio.create_task(_cancel_on_disconnect(http_request, stream)) if http_request else None
    parts: list[str] = []
    try:
        async for event in stream:
            parts.append(event.text)
            if event.finish_reason is not None:
                check_final(event)
                return "".join(parts), event
    finally:
        stream.cancel()  # no-op once finished
        if watcher is not None:
            watcher.cancel()
    raise ApiError(500, "generation ended without a final event", code="generation_failed")


async def _cancel_on_disconnect(http_request: Request, stream: RequestStream, period_s: float = 0.25) -> None:
    while not await http_request.is_disconnected():
        await asyncio.sleep(period_s)
    stream.cancel()


def check_final(event: TokenEvent) -> None:
    """A non-streamed request that did not finish normally is an HTTP error, not a partial answer."""
    if event.finish_reason == "timeout":
        raise ApiError(504, "the request timed out before generation finished (SPUL_REQUEST_TIMEOUT_S)",
                       code="timeout")
    if event.finish_reason == "cancelled":
        raise ApiError(503, "the request was cancelled (server shutting down)", code="cancelled",
                       headers={"Retry-After": "5"})
    if event.finish_reason == "error":
        raise ApiError(500, f"generation failed: {event.error}", code="generation_failed")


async def sse(events: AsyncIterator[dict[str, object]], stream: RequestStream) -> AsyncIterator[str]:
    """Server-sent events: one `data: {json}` per event, then `data: [DONE]`.

    A client that goes away cancels the request and frees its batch slot.
    """
    try:
        async for item in events:
            yield f"data: {json.dumps(item)}\n\n"
        yield f"data: {SSE_DONE}\n\n"
    finally:
        stream.cancel()
