"""The peer: transformers' own continuous batching behind the same HTTP API as `spul serve`.

A thin FastAPI app around one `ContinuousBatchingManager` (`model.init_continuous_batching`):
each `POST /v1/generate` tokenises the prompt exactly as `spul serve` does (the tokenizer's own
defaults), submits it with `add_request(streaming=True)` and streams one server-sent event per
new token, then a final event with `completion_tokens` and `finish_reason`. The manager serves
the bare model: a request that names a profile is refused (this baseline has no soft prompts).
Only `POST /v1/generate` and `GET /readyz` exist, which is all the load generator needs.

Start it with ``uvicorn spul.benchmarks.cb_server:create_app --factory`` and `SPUL_CB_*`
settings in the environment (`CBSettings`). The KV cache is sized explicitly (`num_blocks` x
`page_size` tokens): left to itself, transformers sizes it to 60 % of the machine's RAM on CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from spul.benchmarks.naive_server import GenerateRequest  # the same request body as every bench server

log = logging.getLogger(__name__)


class CBSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPUL_CB_")

    model: Path
    threads: int | None = Field(default=None, ge=1, description="None: torch's default (OMP_NUM_THREADS)")
    attn: Literal["sdpa", "paged|eager"] = "sdpa"  # both run on CPU; flash kernels need CUDA
    page_size: int = Field(64, ge=4, description="tokens per KV page")
    num_blocks: int = Field(256, ge=1, description="KV pages per layer: num_blocks x page_size tokens in all")
    max_batch_tokens: int = Field(256, ge=1, description="token budget of one forward (prefill is chunked)")
    max_prompt_tokens: int = Field(4096, ge=1)


def load(settings: CBSettings) -> tuple[Any, Any, set[int]]:
    """Tokenizer, a started manager (it holds the model; greedy decoding) and the EOS ids it stops on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=torch.float32).eval()
    model.set_attn_implementation(settings.attn)
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    generation = GenerationConfig(
        do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )
    cb_config = ContinuousBatchingConfig(
        page_size=settings.page_size,
        num_blocks=settings.num_blocks,
        max_batch_tokens=settings.max_batch_tokens,
        auto_switch_to_flash=False,
    )
    with torch.inference_mode():
        manager = model.init_continuous_batching(generation_config=generation, continuous_batching_config=cb_config)
    manager.start()
    return tokenizer, manager, set(eos) if isinstance(eos, list) else {eos}


def create_app(settings: CBSettings | None = None) -> FastAPI:
    settings = settings or CBSettings()
    tokenizer, manager, eos_ids = load(settings)
    ids = itertools.count()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(manager.stop, block=True, timeout=10.0, hard_stop=True)

    app = FastAPI(title="transformers continuous batching", lifespan=lifespan)

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        if not manager.is_running():
            raise HTTPException(503, "continuous batching thread is not running")
        return {"status": "ready"}

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest):
        if req.profile is not None:
            raise HTTPException(400, "this baseline serves the bare model only: send no profile")
        if req.temperature > 0:
            raise HTTPException(400, "this baseline decodes greedily only: send temperature 0")
        prompt_ids = [int(i) for i in tokenizer(req.prompt)["input_ids"]]
        if len(prompt_ids) > settings.max_prompt_tokens:
            raise HTTPException(400, f"the prompt has {len(prompt_ids)} tokens; the limit is {settings.max_prompt_tokens}")
        request_id = f"r{next(ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        manager.register_result_handler(request_id, queue.put_nowait)  # before add_request: no output is missed
        accepted = manager.add_request(
            prompt_ids, request_id=request_id, max_new_tokens=req.max_new_tokens, streaming=True
        )
        if accepted is None:
            raise HTTPException(503, "continuous batching manager is not accepting requests")
        stream = _stream(tokenizer, manager, eos_ids, request_id, queue, req.max_new_tokens)
        if req.stream:
            return StreamingResponse(stream, media_type="text/event-stream")
        events = [json.loads(e[len("data: ") :]) async for e in stream if e.startswith("data: {")]
        return events[-1]

    return app


async def _stream(
    tokenizer: Any, manager: Any, eos_ids: set[int], request_id: str, queue: asyncio.Queue, max_new_tokens: int
) -> AsyncIterator[str]:
    """One event per new token but EOS (outputs carry every token so far), then the final summary;
    `completion_tokens` counts EOS, as `spul serve` does."""
    sent, finished = 0, False
    try:
        while not finished:
            output = await queue.get()
            tokens = list(output.generated_tokens)
            for token in tokens[sent:]:
                if token in eos_ids:
                    continue
                yield _event({"token_id": token, "text": tokenizer.decode([token])})
            sent = len(tokens)
            finished = output.is_finished() or output.error is not None
            if output.error is not None:
                yield _event({"text": "", "finish_reason": "error", "error": output.error, "completion_tokens": sent})
            elif finished:
                finish = "length" if sent >= max_new_tokens else "stop"
                yield _event({"text": "", "finish_reason": finish, "completion_tokens": sent})
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            manager.cancel_request(request_id)  # the client went away: free its slot


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
