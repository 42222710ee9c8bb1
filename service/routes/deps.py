"""Dependencies and the one place where core exceptions become HTTP errors."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from spul.prompts_store import ArtifactError, InvalidProfileId, ProfileNotFound, StoreError
from spul.service.policy import EmptyPrompt, ProfileRequired, PromptTooLong, choose_profile, encode_prompt
from spul.service.registry import ProfileUnavailable, UnknownProfile
from spul.service.runtime import Runtime
from spul.service.sampling import SamplingParams
from spul.service.scheduler import GenerationRequest, QueueFull, RequestStream, ShuttingDown, TokenEvent

LIST_HINT = "GET /v1/models lists the profiles you can use"


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        raise HTTPException(503, "the model and profiles are still loading; see /readyz", {"Retry-After": "5"})
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
_bearer = HTTPBearer(auto_error=False)


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    token = request.app.state.settings.admin_token
    given = credentials.credentials if credentials is not None else ""
    # constant-time comparison: the token must not leak through response timing
    if token is None or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong admin bearer token", {"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)


@contextmanager
def http_errors() -> Iterator[None]:
    """Translate the core's exceptions into HTTP statuses with a reason the client can act on."""
    try:
        yield
    except UnknownProfile as err:
        raise HTTPException(404, f"{err}; {LIST_HINT}") from err
    except ProfileNotFound as err:
        raise HTTPException(404, f"{err}; GET /admin/profiles lists the store") from err
    except ProfileUnavailable as err:
        raise HTTPException(503, str(err)) from err
    except (ProfileRequired, InvalidProfileId) as err:
        raise HTTPException(400, str(err)) from err
    except (PromptTooLong, EmptyPrompt) as err:
        raise HTTPException(400, str(err)) from err
    except ArtifactError as err:
        status = 413 if err.reason == "too_large" else 422
        raise HTTPException(status, {"reason": err.reason, "message": str(err)}) from err
    except StoreError as err:
        raise HTTPException(409, str(err)) from err
    except QueueFull as err:
        raise HTTPException(429, str(err), {"Retry-After": str(err.retry_after)}) from err
    except ShuttingDown as err:
        raise HTTPException(503, str(err), {"Retry-After": "5"}) from err


def start_generation(
    runtime: Runtime,
    *,
    profile: str | None,
    text: str,
    max_new_tokens: int | None,
    sampling: SamplingParams,
    stop: tuple[str, ...],
) -> tuple[GenerationRequest, RequestStream]:
    """Policy + limits + submit; raises HTTPException on anything the client must change."""
    settings = runtime.settings
    if max_new_tokens is not None and max_new_tokens > settings.max_new_tokens:
        raise HTTPException(400, f"max_new_tokens {max_new_tokens} exceeds the limit {settings.max_new_tokens}")
    with http_errors():
        handle = choose_profile(settings, runtime.registry, profile)
        ids = encode_prompt(runtime.tokenizer, text, max_tokens=settings.max_prompt_tokens)
        request = GenerationRequest(
            handle=handle,
            token_ids=ids,
            max_new_tokens=max_new_tokens or settings.max_new_tokens,
            sampling=sampling,
            stop=stop,
            timeout_s=settings.request_timeout_s,
        )
        return request, runtime.scheduler.submit(request)


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
    raise HTTPException(500, "generation ended without a final event")


async def _cancel_on_disconnect(http_request: Request, stream: RequestStream, period_s: float = 0.25) -> None:
    while not await http_request.is_disconnected():
        await asyncio.sleep(period_s)
    stream.cancel()


def check_final(event: TokenEvent) -> None:
    """A non-streamed request that did not finish normally is an HTTP error, not a partial answer."""
    if event.finish_reason == "timeout":
        raise HTTPException(504, "the request timed out before generation finished")
    if event.finish_reason == "cancelled":
        raise HTTPException(503, "the request was cancelled (server shutting down)", {"Retry-After": "5"})
    if event.finish_reason == "error":
        raise HTTPException(500, f"generation failed: {event.error}")


async def sse(events: AsyncIterator[dict[str, object] | str], stream: RequestStream) -> AsyncIterator[str]:
    """Server-sent events; a client that goes away cancels the request and frees its batch slot."""
    try:
        async for item in events:
            yield f"data: {item if isinstance(item, str) else json.dumps(item)}\n\n"
    finally:
        stream.cancel()


async def http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's `detail`, plus OpenAI's `error` object so the openai client shows the reason."""
    detail = exc.detail
    message = detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    body = {"detail": detail, "error": {"message": message, "type": kind, "code": exc.status_code}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))
