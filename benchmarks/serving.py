"""Serving benchmark: throughput, latency and TTFT of each system at each client count.

Systems (the `system` field of a result):
- ``spul``: `spul serve` with its prefix cache on, requests spread over mixed-P profiles;
- ``no_profile``: the bare model through the same engine: `bare_server.py`, i.e. `spul serve`
  plus one benchmark-only profile with a zero-length prompt (the product fails closed and
  cannot serve the bare model);
- ``spul_no_cache``: `spul serve` with the prefix cache disabled, same requests as ``spul``;
- ``naive``: `naive_server.py`, one `generate(inputs_embeds=...)` at a time;
- ``transformers_cb``: `cb_server.py`, transformers' own continuous batching on the bare model.

Every spul-engine row also carries the engine's mean decode step and mean batch size over the
run (from its /metrics), and the roofline: the time of one bare batched forward of that batch
size on the same model, measured in the same run (`roofline.py`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from spul.benchmarks.bare_server import BARE
from spul.benchmarks.loadgen import LoadResult, Workload, run_load
from spul.benchmarks.longprompt import LongPromptConfig, long_prompt_text, run_long_prompt
from spul.benchmarks.models import BenchModel, query_texts
from spul.benchmarks.servers import (
    RunningServer,
    ServerSpec,
    bare_server,
    cb_server,
    naive_server,
    running_all,
    spul_server,
)

log = logging.getLogger(__name__)

SYSTEMS = ("spul", "no_profile", "spul_no_cache", "naive", "transformers_cb")
SPUL_ENGINES = ("spul", "no_profile", "spul_no_cache")  # systems whose /metrics has the engine's figures
LONG_PROMPT_SYSTEMS = ("spul", "transformers_cb")
# Settings of `spul serve` the benchmark relies on (service/settings.py, env prefix SPUL_).
NO_CACHE_ENV = {"SPUL_PREFIX_CACHE_BYTES": "0"}
# every spul server: room for the long prompt; requests are cut by the load generator, not by the server
SERVER_ENV: dict[str, str] = {"SPUL_MAX_PROMPT_TOKENS": "4096", "SPUL_REQUEST_TIMEOUT_S": "900"}
PAGE = 64  # transformers_cb KV page size (tokens)


@dataclass(frozen=True)
class ServingConfig:
    model: BenchModel
    store: Path  # a store holding `profiles` for the model
    profiles: Sequence[str]
    workdir: Path  # server logs go here
    clients: Sequence[int] = (1, 8, 32, 64)
    requests: int = 64  # per (system, clients) run; raised to 2 x clients so every client repeats
    max_seconds: float = 120.0  # per run: no new request starts after this
    max_new_tokens: int = 16
    systems: Sequence[str] = SYSTEMS
    server_env: dict = field(default_factory=dict)  # added to every server's environment (threads)
    server_threads: int | None = None  # torch threads of each server, and of the roofline forward
    extra_request_fields: dict = field(default_factory=dict)
    long_prompt_tokens: int = 2000  # 0: skip the long-prompt scenario
    long_decodes: int = 16
    long_before_s: float = 10.0
    rounds: int = 1  # each system's run at a client count is split into this many turns, interleaved
    cb_max_batch_tokens: int = 256  # transformers_cb's token budget per forward (spul's max_step_tokens: 256)
    roofline: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.systems) - set(SYSTEMS))
        if unknown:
            raise ValueError(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
        if not self.clients or min(self.clients) < 1:
            raise ValueError(f"client counts must be >= 1; got {list(self.clients)}")
        if not self.profiles:
            raise ValueError("the serving benchmark needs at least one profile in the store")


def run_serving(config: ServingConfig) -> tuple[list[dict], list[dict]]:
    """Run every requested system at every client count; one result dict per (system, clients),
    and one per system of the long-prompt scenario.

    All servers stay up together and the systems take turns at each client count, so a
    neighbour's load burst on a shared machine lands on all of them rather than on whichever
    system happened to run then (idle servers only wait on a condition variable).
    """
    results: list[dict] = []
    long_results: list[dict] = []
    plan = [(spec, system) for spec, system in _server_plan(config) if system in config.systems]
    log.info("starting %s", [system for _, system in plan])
    with running_all([(spec, config.workdir / f"{spec.name}.log") for spec, _ in plan]) as servers:
        turns = [(server, system) for server, (_, system) in zip(servers, plan, strict=True)]
        for server, system in turns:
            _warm_up(server, config, system)
        for clients in config.clients:
            parts: dict[str, list[tuple[LoadResult, dict]]] = {system: [] for _, system in turns}
            for _ in range(config.rounds):  # ABAB...: load drift on a shared machine hits every system
                for server, system in turns:
                    parts[system].append(_measure(server, config, system, clients))
            rows = [_summary(system, parts[system]) for _, system in turns]
            if config.roofline:
                _add_roofline(config, rows)
            results += rows
        if config.long_prompt_tokens > 0:
            long_results = [
                _long_prompt(server, config, system) for server, system in turns if system in LONG_PROMPT_SYSTEMS
            ]
    order = {name: i for i, name in enumerate(SYSTEMS)}
    return sorted(results, key=lambda r: (order[r["system"]], r["clients"])), long_results


def _server_plan(config: ServingConfig) -> list[tuple[ServerSpec, str]]:
    """One server per system, in SYSTEMS order."""
    path, store = config.model.path, config.store
    env = {**SERVER_ENV, **config.server_env}
    plan = [
        (spul_server(path, store, env=env), "spul"),
        (bare_server(path, store, env=env), "no_profile"),
        (spul_server(path, store, env={**env, **NO_CACHE_ENV}, name="spul_no_cache"), "spul_no_cache"),
        (naive_server(path, store, env=config.server_env), "naive"),
        (cb_server(path, env={**config.server_env, **_cb_env(config)}), "transformers_cb"),
    ]
    return plan


def spul_settings() -> dict:
    """The settings every spul server under test runs with (defaults plus SERVER_ENV), for the report."""
    from spul.service.settings import Settings

    overrides = {name.removeprefix("SPUL_").lower(): value for name, value in SERVER_ENV.items()}
    return Settings(**overrides).model_dump(mode="json", exclude={"admin_token", "model", "store", "host", "port"})


def _cb_env(config: ServingConfig) -> dict[str, str]:
    """Size transformers_cb's KV pages for the largest load: every client's request plus the long prompt."""
    per_request = math.ceil((64 + config.max_new_tokens) / PAGE)  # the short prompts are under 64 tokens
    long = math.ceil((config.long_prompt_tokens + 64 + config.max_new_tokens) / PAGE)
    blocks = (max(max(config.clients), config.long_decodes) + 1) * per_request + long
    return {
        "SPUL_CB_PAGE_SIZE": str(PAGE),
        "SPUL_CB_NUM_BLOCKS": str(blocks),
        "SPUL_CB_MAX_BATCH_TOKENS": str(config.cb_max_batch_tokens),
        "SPUL_CB_MAX_PROMPT_TOKENS": "4096",
    }


def workload_for(config: ServingConfig, system: str) -> Workload:
    profiles: Sequence[str | None] = list(config.profiles)
    if system == "no_profile":
        profiles = [BARE]
    elif system in ("transformers_cb",):
        profiles = [None]
    return Workload(query_texts(), profiles, config.max_new_tokens, dict(config.extra_request_fields))


def _warm_up(server: RunningServer, config: ServingConfig, system: str) -> None:
    """One request per profile (fills the prefix cache, as in steady state); fails loudly."""
    result = _load(server, workload_for(config, system), clients=2, requests=max(2, len(config.profiles)))
    if result.errors:
        raise RuntimeError(f"{system} warm-up failed: {next(r.error for r in result.records if r.error)}")


def _load(server: RunningServer, workload: Workload, *, clients: int, requests: int):
    return asyncio.run(run_load(server.url, workload, clients=clients, requests=requests, max_seconds=60.0))


def _measure(server: RunningServer, config: ServingConfig, system: str, clients: int) -> tuple[LoadResult, dict]:
    """One turn: the load result and the engine's counter deltas over it ({} for other systems)."""
    workload = workload_for(config, system)
    requests = max(clients, math.ceil(max(config.requests, 2 * clients) / config.rounds))
    if system in SPUL_ENGINES:
        wait_idle(server.url)
    before = engine_counters(server.url) if system in SPUL_ENGINES else {}
    result = asyncio.run(
        run_load(
            server.url, workload, clients=clients, requests=requests, max_seconds=config.max_seconds / config.rounds
        )
    )
    after = engine_counters(server.url) if system in SPUL_ENGINES else {}
    log.info("%s turn: %s", system, result.summary())
    return result, {name: after[name] - before.get(name, 0.0) for name in after}


def _summary(system: str, parts: list[tuple[LoadResult, dict]]) -> dict:
    """One row from a system's turns: their requests pooled, wall times and counter deltas summed."""
    results = [r for r, _ in parts]
    pooled = LoadResult(
        results[0].clients,
        sum(r.wall_s for r in results),
        [record for r in results for record in r.records],
        sum(r.unfinished for r in results),
        sum(r.unfinished_tokens for r in results),
        tuple(t for r in results for t in r.unfinished_ttfts),
    )
    summary = {"system": system, "turns": len(parts), **pooled.summary()}
    deltas: dict[str, float] = {}
    for _, delta in parts:
        for name, value in delta.items():
            deltas[name] = deltas.get(name, 0.0) + value
    if deltas:
        summary.update(engine_figures({}, deltas))
    if pooled.errors:
        first = next(r.error for r in pooled.records if r.error)
        log.warning("%s at %d clients: %d errors, first: %s", system, pooled.clients, pooled.errors, first)
        summary["first_error"] = first
    log.info("%s", summary)
    return summary


# ---- engine figures from /metrics ----------------------------------------------------------
COUNTERS = ("spul_decode_seconds_sum", "spul_decode_seconds_count", "spul_batch_size_sum", "spul_batch_size_count")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([-+0-9.eEinfaN]+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name: value}, summing the samples of one name over its labels."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match:
            values[match[1]] = values.get(match[1], 0.0) + float(match[2])
    return values


def wait_idle(url: str, *, timeout_s: float = 120.0) -> None:
    """Wait until a spul server has no running or waiting request (requests the load generator cut
    off in a previous run are cancelled at the server's next step), so runs do not overlap."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            values = parse_metrics(httpx.get(f"{url}/metrics", timeout=10.0).text)
        except httpx.HTTPError:
            return
        if values.get("spul_requests_running", 0) + values.get("spul_requests_waiting", 0) == 0:
            return
        time.sleep(0.5)
    log.warning("%s still busy after %.0fs", url, timeout_s)


def engine_counters(url: str) -> dict[str, float]:
    try:
        text = httpx.get(f"{url}/metrics", timeout=10.0).text
    except httpx.HTTPError as err:
        log.warning("no /metrics at %s: %s", url, err)
        return {}
    values = parse_metrics(text)
    return {name: values[name] for name in COUNTERS if name in values}


def engine_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean decode step (ms) and mean rows per decode step over the run, from counter deltas."""
    def delta(name: str) -> float:
        return after.get(name, math.nan) - before.get(name, 0.0 if name in after else math.nan)

    steps = delta("spul_decode_seconds_count")
    if not steps or math.isnan(steps):
        return {}
    return {
        "decode_steps": int(steps),
        "decode_step_ms": round(delta("spul_decode_seconds_sum") / steps * 1000, 2),
        "mean_batch": round(delta("spul_batch_size_sum") / delta("spul_batch_size_count"), 2),
    }


def _add_roofline(config: ServingConfig, rows: list[dict]) -> None:
    """Measure one bare forward at each engine row's mean batch size."""
    from spul.benchmarks.roofline import decode_forward_seconds

    engine_rows = [r for r in rows if "mean_batch" in r]
    if not engine_rows:
        return
    batches = {max(1, round(r["mean_batch"])) for r in engine_rows}
    context = typical_context(config)
    seconds = decode_forward_seconds(config.model.path, sorted(batches), context=context, threads=config.server_threads)
    for row in engine_rows:
        batch = max(1, round(row["mean_batch"]))
        row["roofline_batch"] = batch
        row["roofline_context"] = context
        row["roofline_ms"] = round(seconds[batch] * 1000, 2)
        row["step_vs_roofline"] = round(row["decode_step_ms"] / row["roofline_ms"], 3)


def typical_context(config: ServingConfig) -> int:
    """Positions a mid-generation row attends over: mean P + mean query tokens + half the new tokens."""
    from transformers import AutoTokenizer

    from spul.prompts_store import PromptStore

    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    query = statistics.mean(len(tokenizer(t)["input_ids"]) for t in query_texts())
    store = PromptStore(config.store)
    lengths = [store.get(p)[1].embeddings.shape[0] for p in config.profiles]
    return round(statistics.mean(lengths) + query + config.max_new_tokens / 2)


# ---- a long prompt during running decodes ---------------------------------------------------
def _long_prompt(server: RunningServer, config: ServingConfig, system: str) -> dict:
    from transformers import AutoTokenizer

    if system in SPUL_ENGINES:
        wait_idle(server.url)

    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    text, tokens = long_prompt_text(tokenizer, config.long_prompt_tokens)
    workload = workload_for(config, system)
    long = LongPromptConfig(
        decodes=config.long_decodes,
        long_prompt=text,
        long_tokens=tokens,
        long_profile=workload.profiles[0],
        before_s=config.long_before_s,
        warmup_s=min(3.0, config.long_before_s / 2),
    )
    return {"system": system, **asyncio.run(run_long_prompt(server.url, workload, long))}
