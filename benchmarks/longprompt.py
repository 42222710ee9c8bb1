"""A long prompt arriving during running decodes: how much does it stall them?

`decodes` closed-loop clients stream short requests (the serving workload) for `before_s`
seconds; then one request with a `long_tokens`-token prompt is sent, and the clients keep
going until its first token arrives (its prefill is done). The inter-token latencies (ITL)
of the short requests are split by when they happened: wholly before the long request was
sent, or overlapping the time from its send to its first token ("during"). A server that runs the whole
long prefill in one step stalls every decode for that long; one with a per-step token budget
(chunked prefill) raises their ITL by at most one budget's worth of compute per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass

import httpx

from spul.benchmarks.loadgen import RequestRecord, Workload, one_request, percentile

log = logging.getLogger(__name__)

FILLER = (
    "the quiet film with alba was a moving story and i did not enjoy the long dinner with brin at all "
    "where was cora born and what does dax do for a living "
)


def long_prompt_text(tokenizer, tokens: int) -> tuple[str, int]:
    """A prose prompt of about `tokens` tokens under this tokenizer; returns it and its exact length."""
    words = FILLER.split()
    text = ""
    i = 0
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += " ".join(words[(i + k) % len(words)] for k in range(50)) + " "
        i += 50
    words_in = text.split()
    lo, hi = 1, len(words_in)
    while lo < hi:  # the longest word prefix that stays within `tokens`
        mid = (lo + hi + 1) // 2
        if len(tokenizer(" ".join(words_in[:mid]))["input_ids"]) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words_in[:lo])
    return text, len(tokenizer(text)["input_ids"])


@dataclass(frozen=True)
class LongPromptConfig:
    decodes: int = 16  # concurrent short-request clients
    long_prompt: str = ""
    long_tokens: int = 0  # its length under the model's tokenizer (reported)
    long_profile: str | None = None
    before_s: float = 10.0  # steady state measured before the long request is sent
    warmup_s: float = 3.0  # not measured, before that: the clients' first prefills
    timeout_s: float = 300.0


async def run_long_prompt(base_url: str, workload: Workload, config: LongPromptConfig) -> dict:
    """Returns ITL p50/p99 before and during the long prefill, the ratio of p99s, and the long TTFT."""
    records: list[RequestRecord] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=config.decodes + 1, max_keepalive_connections=config.decodes + 1)
    async with httpx.AsyncClient(base_url=base_url, timeout=config.timeout_s, limits=limits) as client:
        bodies = workload.bodies()

        async def decode_loop() -> None:
            while not stop.is_set():
                records.append(await one_request(client, next(bodies)))

        loops = [asyncio.ensure_future(decode_loop()) for _ in range(config.decodes)]
        start = time.perf_counter()
        await asyncio.sleep(config.warmup_s + config.before_s)
        sent = time.perf_counter()
        body = {
            "profile": config.long_profile,
            "prompt": config.long_prompt,
            "max_new_tokens": 2,
            "temperature": 0.0,
            "stream": True,
        }
        long = await one_request(client, body)
        first = long.token_times[0] if long.token_times else time.perf_counter()
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError):  # the last short requests finish in their own time
            await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), timeout=config.timeout_s)
    before = _gaps_within(records, start + config.warmup_s, sent)
    during = _gaps_overlapping(records, sent, first)
    out = {
        "decodes": config.decodes,
        "long_prompt_tokens": config.long_tokens,
        "long_error": long.error,
        "long_ttft_ms": round(long.ttft_s * 1000, 1) if long.ttft_s is not None else None,
        "before_s": round(sent - start - config.warmup_s, 2),
        "during_s": round(first - sent, 2),
        "itl_count_before": len(before),
        "itl_count_during": len(during),
        "itl_p50_before_ms": percentile(before, 50),
        "itl_p99_before_ms": percentile(before, 99),
        "itl_p50_during_ms": percentile(during, 50),
        "itl_p99_during_ms": percentile(during, 99),
        "itl_max_during_ms": round(max(during), 2) if during else None,
        "short_errors": sum(r.error is not None for r in records),
    }
    if before and during:
        out["itl_p99_raise"] = round(out["itl_p99_during_ms"] / out["itl_p99_before_ms"], 3)
    log.info("long prompt: %s", out)
    return out


def _gaps_within(records: list[RequestRecord], start: float, end: float) -> list[float]:
    """ITLs in ms of the gaps that lie wholly in [start, end)."""
    return [g for r in records for a, b, g in _gaps(r) if start <= a and b < end]


def _gaps_overlapping(records: list[RequestRecord], start: float, end: float) -> list[float]:
    """ITLs in ms of the gaps that overlap [start, end]: a decode stalled by the long prefill
    has one gap spanning it, which may end just after the long request's first token."""
    return [g for r in records for a, b, g in _gaps(r) if a < end and b > start]


def _gaps(record: RequestRecord) -> list[tuple[float, float, float]]:
    times = record.token_times
    return [(a, b, (b - a) * 1000) for a, b in itertools.pairwise(times)]
