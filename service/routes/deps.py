"""Route dependencies: the runtime, the admin token check, and starting a generation."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from spul.service.policy import choose_profile, encode_chat, encode_prompt
from spul.service.routes.errors import ApiError, http_errors
from spul.service.runtime import Runtime
from spul.service.sampling import SamplingParams
from spul.service.scheduler import GenerationRequest, RequestStream


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        raise ApiError(503, "the model and profiles are still loading; see /readyz", code="loading",
                       headers={"Retry-After": "5"})
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
        raise ApiError(401, "missing or wrong admin bearer token (Authorization: Bearer $SPUL_ADMIN_TOKEN)",
                       code="unauthorized", headers={"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)


async def start_generation(
    runtime: Runtime,
    *,
    profile: str | None,
    prompt: str | list[dict[str, str]],
    max_new_tokens: int | None,
    max_tokens_param: str,
    sampling: SamplingParams,
    stop: tuple[str, ...],
) -> tuple[GenerationRequest, RequestStream]:
    """Policy, limits, tokenisation (a text prompt, or chat messages through the chat template), submit.

    Tokenisation and template rendering run in a worker thread: a large body never stalls the
    event loop. Raises `ApiError` on anything the client must change.
    """
    settings = runtime.settings
    if max_new_tokens is not None and max_new_tokens > settings.max_new_tokens:
        raise ApiError(400, f"{max_tokens_param} {max_new_tokens} exceeds this server's limit "
                       f"{settings.max_new_tokens}", code="max_tokens_too_large", param=max_tokens_param)
    with http_errors():
        handle = choose_profile(settings, runtime.registry, profile)
        encode = encode_chat if isinstance(prompt, list) else encode_prompt
        ids = await run_in_threadpool(encode, runtime.tokenizer, prompt, max_tokens=settings.max_prompt_tokens)
        request = GenerationRequest(
            handle=handle,
            token_ids=ids,
            max_new_tokens=max_new_tokens or settings.max_new_tokens,
            sampling=sampling,
            stop=stop,
            timeout_s=settings.request_timeout_s,
        )
        return request, runtime.scheduler.submit(request)
