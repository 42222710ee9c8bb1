"""The naive baseline: one `generate` call per request, behind the same HTTP API as `spul serve`.

One request at a time, each a full `model.generate(inputs_embeds=[prompt ; embed(query)])`:
no batching, no prefix cache. Only `POST /v1/generate` and `GET /readyz` exist, which is all
the load generator needs. Start it with
``uvicorn spul.benchmarks.naive_server:create_app --factory`` and ``SPUL_NAIVE_MODEL`` /
``SPUL_NAIVE_STORE`` in the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from spul.prompts_store import PromptStore, model_fingerprint, prepend_prompt

log = logging.getLogger(__name__)


class NaiveSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPUL_NAIVE_")

    model: Path
    store: Path | None = None
    threads: int | None = Field(default=None, ge=1, description="None: torch's default (OMP_NUM_THREADS)")


class GenerateRequest(BaseModel):
    profile: str | None = None
    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(default=16, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0.0)
    stream: bool = False


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    prompts: dict[str, tuple[int, torch.Tensor]]  # profile -> (version, (P, H))
    lock: threading.Lock  # one generation at a time: that is the point of this baseline


def load(settings: NaiveSettings) -> Loaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    model = AutoModelForCausalLM.from_pretrained(settings.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    prompts: dict[str, tuple[int, torch.Tensor]] = {}
    if settings.store is not None:
        store = PromptStore(settings.store)
        fingerprint = model_fingerprint(model, tokenizer)
        for profile in store.profiles():
            version, artifact = store.get(profile, expected_fingerprint=fingerprint)
            prompts[profile] = (version, artifact.embeddings)
    log.info("naive server: %d profiles loaded", len(prompts))
    return Loaded(model, tokenizer, prompts, threading.Lock())


class _TokenSink:
    """A transformers streamer that hands each new token id to a callback (skips the prompt put)."""

    def __init__(self, on_token) -> None:
        self.on_token = on_token
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True  # generate() first puts the prompt ids (empty with inputs_embeds)
            return
        for token in value.reshape(-1).tolist():
            self.on_token(int(token))

    def end(self) -> None:
        pass


def generate_ids(state: Loaded, req: GenerateRequest, on_token) -> list[int]:
    """Run one request to completion under the global lock; returns the new token ids."""
    ids = state.tokenizer(req.prompt, return_tensors="pt", add_special_tokens=False).input_ids  # (1, T)
    embeds = state.model.get_input_embeddings()(ids)  # (1, T, H)
    mask = torch.ones_like(ids)
    if req.profile is not None:
        embeds, mask, _ = prepend_prompt(state.prompts[req.profile][1], embeds, mask)  # (1, P+T, H)
    sampling = (
        {"do_sample": True, "temperature": req.temperature} if req.temperature > 0 else {"do_sample": False}
    )
    with state.lock, torch.inference_mode():
        out = state.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=req.max_new_tokens,
            pad_token_id=state.tokenizer.pad_token_id,
            streamer=_TokenSink(on_token),
            **sampling,
        )
    return out[0].tolist()


def create_app(settings: NaiveSettings | None = None) -> FastAPI:
    settings = settings or NaiveSettings()
    state = load(settings)
    app = FastAPI(title="naive baseline")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest):
        if req.profile is not None and req.profile not in state.prompts:
            raise HTTPException(404, f"unknown profile {req.profile!r}")
        if req.stream:
            return StreamingResponse(_stream(state, req), media_type="text/event-stream")
        new_ids = await asyncio.to_thread(generate_ids, state, req, lambda _t: None)
        return _final(state, req, new_ids)

    return app


async def _stream(state: Loaded, req: GenerateRequest) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(
        asyncio.to_thread(generate_ids, state, req, lambda t: loop.call_soon_threadsafe(queue.put_nowait, t))
    )
    while not (task.done() and queue.empty()):
        getter = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield _event({"token_id": getter.result(), "text": state.tokenizer.decode([getter.result()])})
        else:
            getter.cancel()
    yield _event(_final(state, req, task.result()))
    yield "data: [DONE]\n\n"


def _final(state: Loaded, req: GenerateRequest, new_ids: list[int]) -> dict[str, Any]:
    eos = state.tokenizer.eos_token_id
    finish = "stop" if new_ids and new_ids[-1] == eos else "length"
    version = state.prompts[req.profile][0] if req.profile is not None else None
    return {
        "text": state.tokenizer.decode(new_ids, skip_special_tokens=True),
        "completion_tokens": len(new_ids),
        "finish_reason": finish,
        "profile": req.profile,
        "version": version,
    }


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
