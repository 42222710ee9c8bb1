"""The roofline of a decode step: one batched forward of the bare model, nothing else.

A decode step of any server is at least one forward of B new tokens, each attending over its
row's context. This measures exactly that, on the same model, thread count and machine as the
servers under test, in the same run: a static (preallocated, written in place) KV cache of
`context` positions per row, an input of (B, 1) token ids, logits for that one position only
(each timed step appends one position; the static cache attends over all its slots, i.e.
context + the few timed steps).
No padding, no scheduling, no sampling, no HTTP: the limit a serving engine's step can approach.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def decode_forward_seconds(
    model_path: Path,
    batch_sizes: list[int],
    *,
    context: int,
    threads: int | None = None,
    repeats: int = 7,
    warmup: int = 1,
) -> dict[int, float]:
    """Median seconds of one (B, 1) forward over a `context`-long cache, for each batch size B."""
    from transformers import AutoModelForCausalLM

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        return {b: _time_step(model, b, context, repeats=repeats, warmup=warmup) for b in sorted(set(batch_sizes))}
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def _time_step(model: torch.nn.Module, batch: int, context: int, *, repeats: int, warmup: int) -> float:
    from transformers import StaticCache

    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(batch)
    prompt = torch.randint(0, vocab, (batch, context), generator=generator)  # (B, L)
    cache = StaticCache(config=model.config, max_cache_len=context + warmup + repeats)
    model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    step_ids = torch.randint(0, vocab, (batch, 1), generator=generator)  # (B, 1)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        out = model(input_ids=step_ids, cache=cache, use_cache=True, logits_to_keep=1)
        out.logits.float().argmax(dim=-1)  # (B, 1): what a step must produce
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    log.info("roofline: batch %d, context %d: %.1f ms per forward", batch, context, seconds * 1000)
    return seconds
