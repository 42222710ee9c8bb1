"""Conformance matrix: served greedy tokens equal a one-row full recompute, on many architectures.

Tiny random models of 16 Hugging Face architectures (four with sliding-window layers whose
window is far shorter than the prompts), served by the real scheduler with two soft prompts of
different length, rows joining a running batch and leaving it at different times, a long query
prefilled in budget-sized chunks, the prefix cache on and off, in float32 and bfloat16. The
reference runs [prompt ; query ; generated] through the model alone, with no cache, every step.

bfloat16: the batched, cached computation rounds differently from the one-row recompute, so two
near-equal logits may swap. The tokens must agree up to the first difference, and there the
reference must have been a near tie (its two logits within `BF16_TIE`); after it, the
sequences legitimately diverge.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from spul.prompts_store import (
    PromptStore,
    artifact_bytes,
    model_fingerprint,
    position_ids_from_mask,
    prepend_prompt,
)
from spul.service.app import create_app
from spul.service.engine import Engine
from spul.service.metrics import Metrics
from spul.service.registry import PromptHandle
from spul.service.scheduler import GenerationRequest, Scheduler
from spul.service.settings import Settings
from support.liveserver import LiveServer
from support.server import ADMIN_TOKEN
from support.tinyarchs import ARCHS, WINDOW, make_arch_model

QUERIES = [
    "where was alba born ? ### answer :",
    "hello",
    "### text : the film with cora was great . ### sentiment : " * 3,  # longer than a step's budget
    "what does brin do ?",
]
PROMPT_LENGTHS = (2, 5)
NEW_TOKENS = (6, 3, 5, 4)  # rows leave the batch at different steps
STEP_TOKENS = 16
BF16_TIE = 0.125  # bfloat16 keeps 8 bits of mantissa: logits of size ~4 are exact to ~0.03


class IdText:
    """A detokeniser that writes the ids themselves, so the served text gives back every token."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"{i}," for i in ids)


def reference(model, prompt: torch.Tensor, ids: tuple[int, ...], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens of [prompt ; query] alone, recomputed from scratch each step, and their logits."""
    ids_, logits_ = list(ids), []
    embed = model.get_input_embeddings()
    for _ in range(steps):
        tokens = torch.tensor([ids_])
        embeds, mask, _ = prepend_prompt(prompt, embed(tokens), torch.ones_like(tokens))
        with torch.no_grad():
            out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask))
        logits_.append(out.logits[0, -1].float())
        ids_.append(int(logits_[-1].argmax()))
    return ids_[len(ids) :], logits_


async def serve(scheduler: Scheduler, requests: list[GenerationRequest]) -> list[list[int]]:
    """Half the requests first; the rest join once the first ones are decoding."""

    async def drain(stream, first: list[str]) -> list[int]:
        parts = first
        async for event in stream:
            parts.append(event.text)
        return [int(t) for t in "".join(parts).split(",")[:-1]]

    half = len(requests) // 2
    early = [scheduler.submit(r) for r in requests[:half]]
    firsts = [[(await stream.__anext__()).text] for stream in early]
    late = [scheduler.submit(r) for r in requests[half:]]
    return await asyncio.gather(*(drain(s, f) for s, f in zip(early, firsts)), *(drain(s, []) for s in late))


def check(served: list[int], expected: list[int], logits: list[torch.Tensor], dtype: torch.dtype) -> None:
    if dtype == torch.float32 or served == expected:
        assert served == expected
        return
    i = next(i for i, (a, b) in enumerate(zip(served, expected)) if a != b)
    gap = float(logits[i][expected[i]] - logits[i][served[i]])
    assert gap <= BF16_TIE, f"token {i}: served {served[i]}, reference {expected[i]} ahead by {gap:.3f}"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_served_greedy_tokens_equal_a_full_recompute(arch):
    for dtype in (torch.float32, torch.bfloat16):
        model, tokenizer = make_arch_model(arch, dtype=dtype)
        hidden = model.get_input_embeddings().weight.shape[1]
        generator = torch.Generator().manual_seed(5)
        handles = [
            PromptHandle(f"p{p}", 1, f"sha-{p}", torch.randn(p, hidden, generator=generator).to(dtype))
            for p in PROMPT_LENGTHS
        ]
        requests = [
            GenerationRequest(handle=handles[i % 2], token_ids=tuple(tokenizer(q)["input_ids"]), max_new_tokens=n)
            for i, (q, n) in enumerate(zip(QUERIES, NEW_TOKENS))
        ]
        assert len(requests[2].token_ids) > STEP_TOKENS and len(requests[0].token_ids) + 2 > WINDOW
        expected = [reference(model, r.handle.embeddings, r.token_ids, r.max_new_tokens) for r in requests]
        for cache_bytes in (0, 1 << 22):
            engine = Engine(model, prefix_cache_bytes=cache_bytes)
            scheduler = Scheduler(engine, IdText(), Metrics(), max_step_tokens=STEP_TOKENS, eos_token_ids={-1})

            async def body(scheduler=scheduler, requests=requests):
                scheduler.start()
                try:
                    return await serve(scheduler, requests)
                finally:
                    await scheduler.shutdown(grace_s=1.0)

            for served, (ids, logits) in zip(asyncio.run(body()), expected):
                check(served, ids, logits, dtype)


SERVED = [("mistral-window", False, 1 << 22), ("gemma2-window", False, 0), ("gpt2", True, 1 << 22)]


@pytest.mark.parametrize(("arch", "byte_level", "cache_bytes"), SERVED, ids=[a for a, _, _ in SERVED])
def test_a_real_server_answers_what_the_full_recompute_says(tmp_path, arch, byte_level, cache_bytes):
    """Over HTTP with the openai client: concurrent streamed and whole answers, mixed profiles."""
    model, tokenizer = make_arch_model(arch, byte_level=byte_level)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    hidden = model.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(9)
    prompts = {f"p{p}": torch.randn(p, hidden, generator=generator) for p in PROMPT_LENGTHS}
    store = PromptStore(tmp_path / "store")
    fingerprint = model_fingerprint(model, tokenizer)
    for name, embeddings in prompts.items():
        store.put(name, artifact_bytes(embeddings, profile=name, base_model=arch, base_fingerprint=fingerprint))
    queries = [*QUERIES, "Привет 世界"] if byte_level else QUERIES
    eos = {tokenizer.eos_token_id}
    expected = {}
    for i, query in enumerate(queries):
        name = f"p{PROMPT_LENGTHS[i % 2]}"
        ids, _ = reference(model, prompts[name], tuple(tokenizer(query)["input_ids"]), 6)
        ids = ids[: next((k for k, t in enumerate(ids) if t in eos), len(ids))]
        expected[(name, query)] = tokenizer.decode(ids, skip_special_tokens=True)
    settings = Settings(model=str(tmp_path / "model"), store=store.root, admin_token=ADMIN_TOKEN, store_poll_s=0,
                        max_new_tokens=6, prefix_cache_bytes=cache_bytes, shutdown_grace_s=1.0)
    with LiveServer(create_app(settings)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def ask(key: tuple[str, str], stream: bool) -> str:
            name, query = key
            answer = client.completions.create(model=name, prompt=query, max_tokens=6, temperature=0, stream=stream)
            return "".join(c.choices[0].text for c in answer) if stream else answer.choices[0].text

        jobs = [(key, stream) for key in expected for stream in (False, True)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda job: ask(*job), jobs))
    assert answers == [expected[key] for key, _ in jobs]
