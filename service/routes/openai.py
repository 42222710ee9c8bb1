"""OpenAI-compatible endpoints: the profile is named in `model`, so the official client works unchanged.

`system_fingerprint` carries "<profile>@v<version>" so a client can see which version answered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from spul.service.routes.deps import RuntimeDep, start_generation
from spul.service.routes.errors import LIST_HINT, ApiError
from spul.service.routes.streams import collect, sse
from spul.service.runtime import Runtime
from spul.service.sampling import SamplingParams
from spul.service.scheduler import GenerationRequest, RequestStream, TokenEvent
from spul.service.schemas import ChatCompletionRequest, CompletionRequest, _OpenAIBase, stop_tuple

router = APIRouter(prefix="/v1", tags=["openai"])
DEFAULT_MODEL_NAMES = ("default", "")


@router.get("/models")
def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    """Every profile that can answer now, as an OpenAI model object (plus its serving version)."""
    handles = runtime.registry.handles()
    return {"object": "list", "data": [_model(name, h.version) for name, h in sorted(handles.items())]}


@router.get("/models/{model_id}")
def retrieve_model(model_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    handle = runtime.registry.handles().get(model_id)
    if handle is None:
        raise ApiError(404, f"no profile {model_id!r} is being served; {LIST_HINT}", code="profile_not_found",
                       param="model")
    return _model(model_id, handle.version)


def _model(name: str, version: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "spul", "version": version}


@router.post("/completions")
async def completions(body: CompletionRequest, runtime: RuntimeDep, http_request: Request) -> Any:
    if body.logprobs is not None or body.echo:
        _unsupported("logprobs" if body.logprobs is not None else "echo")
    request, stream = await _start(runtime, body, body.prompt, body.max_tokens, "max_tokens")
    reply = _Reply("cmpl", "text_completion", request)
    if body.stream:
        return _stream(reply.completion_chunks(stream, usage=body.include_usage), stream)
    text, final = await collect(stream, http_request)
    return reply.completion(text, final)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, runtime: RuntimeDep, http_request: Request) -> Any:
    if body.logprobs:
        _unsupported("logprobs")
    if not runtime.has_chat_template:
        raise ApiError(400, "this model's tokenizer has no chat template; use /v1/completions",
                       code="no_chat_template", param="messages")
    messages = [m.model_dump() for m in body.messages]
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    request, stream = await _start(runtime, body, messages, body.max_completion_tokens or body.max_tokens, param)
    reply = _Reply("chatcmpl", "chat.completion", request)
    if body.stream:
        return _stream(reply.chat_chunks(stream, usage=body.include_usage), stream)
    text, final = await collect(stream, http_request)
    return reply.chat(text, final)


def _unsupported(param: str) -> None:
    raise ApiError(400, f"{param} is not supported by this server; leave it unset", code="unsupported_parameter",
                   param=param)


async def _start(
    runtime: Runtime, body: _OpenAIBase, prompt: str | list[dict[str, str]], max_tokens: int | None, param: str
) -> tuple[GenerationRequest, RequestStream]:
    if body.top_logprobs:
        _unsupported("top_logprobs")
    return await start_generation(
        runtime,
        profile=_named_profile(runtime, body.model),
        prompt=prompt,
        max_new_tokens=max_tokens,
        max_tokens_param=param,
        sampling=SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=body.seed),
        stop=stop_tuple(body.stop),
    )


def _named_profile(runtime: Runtime, model: str) -> str | None:
    """The profile `model` names; None for "default", "" or the served model's name: no profile named,
    the policy decides (the store refuses these as profile ids)."""
    return None if model in (*DEFAULT_MODEL_NAMES, runtime.model_name) else model


def _stream(events: AsyncIterator[dict[str, Any]], stream: RequestStream) -> StreamingResponse:
    return StreamingResponse(sse(events, stream), media_type="text/event-stream")


class _Reply:
    """Builds OpenAI-shaped bodies for one request."""

    def __init__(self, id_prefix: str, kind: str, request: GenerationRequest) -> None:
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.kind = kind
        self.created = int(time.time())
        self.handle = request.handle

    def _base(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.handle.profile,
            "system_fingerprint": f"{self.handle.profile}@v{self.handle.version}",
        }

    @staticmethod
    def _usage(final: TokenEvent) -> dict[str, int]:
        total = final.prompt_tokens + final.completion_tokens
        return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens, "total_tokens": total}

    def completion(self, text: str, final: TokenEvent) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": final.finish_reason}
        return {**self._base(self.kind), "choices": [choice], "usage": self._usage(final)}

    def chat(self, text: str, final: TokenEvent) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": final.finish_reason}
        return {**self._base(self.kind), "choices": [choice], "usage": self._usage(final)}

    async def completion_chunks(self, stream: RequestStream, *, usage: bool) -> AsyncIterator[dict[str, Any]]:
        async for event in stream:
            choice = {"index": 0, "text": event.text, "logprobs": None, "finish_reason": event.finish_reason}
            yield {**self._base(self.kind), "choices": [choice], **({"usage": None} if usage else {})}
            if usage and event.finish_reason is not None:
                yield {**self._base(self.kind), "choices": [], "usage": self._usage(event)}

    async def chat_chunks(self, stream: RequestStream, *, usage: bool) -> AsyncIterator[dict[str, Any]]:
        """As OpenAI streams chat: the first delta carries the role; with `include_usage`, a last
        chunk with no choices carries the token counts."""
        first = True
        kind = "chat.completion.chunk"
        async for event in stream:
            delta = {"role": "assistant", "content": event.text} if first else {"content": event.text}
            first = False
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": event.finish_reason}
            yield {**self._base(kind), "choices": [choice], **({"usage": None} if usage else {})}
            if usage and event.finish_reason is not None:
                yield {**self._base(kind), "choices": [], "usage": self._usage(event)}
