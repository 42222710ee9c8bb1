"""`POST /v1/generate`: our own API, with the profile and version that answered.

Streamed (`"stream": true`): server-sent events `data: {"text", "profile", "version"}`, the last
one also carrying `finish_reason` and token counts, then `data: [DONE]` as in OpenAI's API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from spul.service.routes.deps import RuntimeDep, start_generation
from spul.service.routes.streams import collect, sse
from spul.service.sampling import SamplingParams
from spul.service.scheduler import GenerationRequest, RequestStream
from spul.service.schemas import GenerateRequest, GenerateResponse, stop_tuple

router = APIRouter(tags=["generate"])


@router.post("/v1/generate", response_model=GenerateResponse)
async def generate(
    body: GenerateRequest, runtime: RuntimeDep, http_request: Request
) -> GenerateResponse | StreamingResponse:
    request, stream = await start_generation(
        runtime,
        profile=body.profile,
        prompt=body.prompt,
        max_new_tokens=body.max_new_tokens,
        max_tokens_param="max_new_tokens",
        sampling=SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=body.seed),
        stop=stop_tuple(body.stop),
    )
    if body.stream:
        return StreamingResponse(sse(_events(request, stream), stream), media_type="text/event-stream")
    text, final = await collect(stream, http_request)
    return GenerateResponse(
        text=text,
        profile=request.handle.profile,
        version=request.handle.version,
        sha256=request.handle.sha256,
        prompt_tokens=final.prompt_tokens,
        completion_tokens=final.completion_tokens,
        finish_reason=final.finish_reason or "",
    )


async def _events(request: GenerationRequest, stream: RequestStream) -> AsyncIterator[dict[str, object]]:
    handle = request.handle
    async for event in stream:
        item: dict[str, object] = {"text": event.text, "profile": handle.profile, "version": handle.version}
        if event.finish_reason is not None:
            item.update(
                finish_reason=event.finish_reason,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
            )
            if event.error:
                item["error"] = event.error
        yield item
