"""Closed-loop HTTP load generator: N concurrent clients over loopback, streaming, bounded.

Every client sends one streaming `POST /v1/generate` at a time and sends the next as soon as
the previous one ends, until the shared request budget or the time budget runs out. Latency is
measured per request from send to the last byte; time to first token (TTFT) from send to the
first server-sent event that carries text; inter-token latency (ITL) between consecutive
events of one request that carry text (every arrival time is kept in `token_times`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx

log = logging.getLogger(__name__)

FAILED_FINISH = {"timeout", "cancelled", "error"}


@dataclass(frozen=True)
class Workload:
    """What to ask: prompts and profiles are cycled (offset so neighbours differ), greedy decoding."""

    prompts: Sequence[str]
    profiles: Sequence[str | None]  # [None] = no profile
    max_new_tokens: int = 16
    extra: dict = field(default_factory=dict)  # further request fields, e.g. {"ignore_eos": True}

    def bodies(self) -> Iterator[dict]:
        for i in itertools.count():
            yield {
                "profile": self.profiles[i % len(self.profiles)],
                "prompt": self.prompts[(i * 7) % len(self.prompts)],
                "max_new_tokens": self.max_new_tokens,
                "temperature": 0.0,
                "stream": True,
                **self.extra,
            }


@dataclass(frozen=True)
class RequestRecord:
    latency_s: float
    ttft_s: float | None
    tokens: int
    error: str | None = None
    finish_reason: str | None = None
    token_times: tuple[float, ...] = ()  # perf_counter() at each event that carried text

    def gaps(self) -> list[float]:
        """Seconds between consecutive text-carrying events (the inter-token latencies)."""
        return [b - a for a, b in itertools.pairwise(self.token_times)]


@dataclass(frozen=True)
class LoadResult:
    clients: int
    wall_s: float
    records: list[RequestRecord]
    unfinished: int = 0  # requests cut off at the drain deadline (not in `records`)
    unfinished_tokens: int = 0  # tokens those requests had streamed when they were cut off
    unfinished_ttfts: tuple[float, ...] = ()  # seconds to the first token of those that had one

    @property
    def ok(self) -> list[RequestRecord]:
        return [r for r in self.records if r.error is None]

    @property
    def errors(self) -> int:
        return len(self.records) - len(self.ok)

    def summary(self) -> dict[str, float | int]:
        ok = self.ok
        tokens = sum(r.tokens for r in ok) + self.unfinished_tokens
        latencies = [r.latency_s * 1000 for r in ok]
        ttfts = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None] + [t * 1000 for t in self.unfinished_ttfts]
        itls = [gap * 1000 for r in ok for gap in r.gaps()]
        return {
            "clients": self.clients,
            "requests": len(ok),
            "errors": self.errors,
            "unfinished": self.unfinished,
            "unfinished_tokens": self.unfinished_tokens,
            "generated_tokens": tokens,
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(tokens / self.wall_s, 2) if self.wall_s > 0 else 0.0,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "ttft_p50_ms": percentile(ttfts, 50),
            "ttft_p99_ms": percentile(ttfts, 99),
            "itl_p50_ms": percentile(itls, 50),
            "itl_p99_ms": percentile(itls, 99),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 2)


async def run_load(
    base_url: str,
    workload: Workload,
    *,
    clients: int,
    requests: int,
    max_seconds: float,
    drain_seconds: float | None = None,
    timeout_s: float = 300.0,
    transport: httpx.AsyncBaseTransport | None = None,  # tests pass a mock
) -> LoadResult:
    """Drive `clients` concurrent streams until `requests` are done or `max_seconds` have passed.

    After `max_seconds` no request starts; requests still running `drain_seconds` later (default:
    max_seconds again) are cancelled and counted as `unfinished`, so a run always ends; the tokens
    they had streamed count as generated (`unfinished_tokens`): the server did produce them.
    """
    bodies = itertools.islice(workload.bodies(), requests)
    deadline = time.perf_counter() + max_seconds
    drain = max_seconds if drain_seconds is None else drain_seconds
    records: list[RequestRecord] = []
    in_flight: dict[int, tuple[float, list[float]]] = {}  # client -> (start, token times) of its request
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout_s, limits=limits, transport=transport
    ) as client:
        start = time.perf_counter()
        tasks = [
            asyncio.ensure_future(_client_loop(client, bodies, deadline, records, in_flight, i))
            for i in range(clients)
        ]
        _, pending = await asyncio.wait(tasks, timeout=max_seconds + drain)
        unfinished = len(in_flight)
        unfinished_tokens = sum(len(times) for _, times in in_flight.values())
        unfinished_ttfts = tuple(times[0] - sent for sent, times in in_flight.values() if times)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - start
    if unfinished:
        log.warning("%d requests still running %.0fs after the last start were cut off", unfinished, drain)
    return LoadResult(clients, wall, records, unfinished, unfinished_tokens, unfinished_ttfts)


async def _client_loop(
    client: httpx.AsyncClient,
    bodies: Iterator[dict],
    deadline: float,
    records: list[RequestRecord],
    in_flight: dict[int, tuple[float, list[float]]],
    me: int,
) -> None:
    # the shared iterator is only advanced from the event loop thread, so no lock is needed
    for body in bodies:
        if time.perf_counter() >= deadline:
            return
        in_flight[me] = (time.perf_counter(), [])
        record = await one_request(client, body, times=in_flight[me][1])
        del in_flight[me]
        records.append(record)


async def one_request(client: httpx.AsyncClient, body: dict, *, times: list[float] | None = None) -> RequestRecord:
    """Send one streaming request; parse server-sent events `data: {json}` until `[DONE]` or EOF.

    `times`, when given, receives each token's arrival time as it comes (a caller that cancels
    the request still sees how far it got)."""
    start = time.perf_counter()
    ttft: float | None = None
    times = [] if times is None else times
    reported: int | None = None
    finish: str | None = None
    error: str | None = None
    try:
        async with client.stream("POST", "/v1/generate", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:200]
                return RequestRecord(
                    time.perf_counter() - start, None, 0, f"HTTP {response.status_code}: {detail}"
                )
            async for line in response.aiter_lines():
                event = parse_event(line)
                if event is None:
                    continue
                if _carries_token(event):
                    times.append(time.perf_counter())
                    ttft = times[0] - start
                reported = completion_tokens(event) or reported
                finish = event.get("finish_reason") or finish
                error = event.get("error") or error
    except httpx.HTTPError as err:
        return RequestRecord(
            time.perf_counter() - start, ttft, 0, f"{type(err).__name__}: {err}", token_times=tuple(times)
        )
    if finish in FAILED_FINISH and error is None:
        error = f"finish_reason {finish}"  # a stream that ended without a normal finish
    tokens = reported if reported is not None else len(times)
    return RequestRecord(time.perf_counter() - start, ttft, tokens, error, finish, tuple(times))


def parse_event(line: str) -> dict | None:
    """`data: {...}` -> the JSON object; anything else (comments, `[DONE]`, blank) -> None."""
    if not line.startswith("data:"):
        return None
    payload = line[len("data:") :].strip()
    if not payload or payload == "[DONE]":
        return None
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _carries_token(event: dict) -> bool:
    """A token event: has a token id or a non-empty text delta, and is not the final summary."""
    if event.get("finish_reason") is not None:
        return False
    return event.get("token_id") is not None or bool(event.get("text") or event.get("delta"))


def completion_tokens(event: dict) -> int | None:
    """The final event's generated-token count, flat or under `usage` (OpenAI style)."""
    usage = event.get("usage") if isinstance(event.get("usage"), dict) else event
    value = usage.get("completion_tokens", usage.get("generated_tokens"))
    return int(value) if isinstance(value, (int, float)) else None
