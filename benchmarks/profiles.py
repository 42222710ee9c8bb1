"""Many resident profiles: 10,000 profiles must load, list and serve as fast as one.

Two `spul serve` processes on the same model: one with a store of 1 profile, one with N, all of
P = 30. For each: seconds to ready, RSS once ready, `GET /v1/models` time and count, and
throughput at `clients` with every request naming a different profile (uniformly spread: the
worst case for the prefix cache, which holds only as many profiles' K/V as its byte budget), and
for the N-profile server also with the traffic on a hot set of `HOT` of its profiles (residency
alone, with the prefix cache warm).
Memory per profile is computed (P x H x 4 bytes, the artifacts are float32) and measured as the
RSS difference between the two servers divided by N - 1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx

from spul.benchmarks.loadgen import Workload, run_load
from spul.benchmarks.models import BenchModel, query_texts, write_profiles
from spul.benchmarks.servers import RunningServer, running, server_pid_rss, spul_server

log = logging.getLogger(__name__)

NUM_VIRTUAL_TOKENS = 30
HOT = 8  # profiles receiving the traffic in the hot-set measurement
FLOAT32_BYTES = 4


def run_many_profiles(
    model: BenchModel,
    *,
    workdir: Path,
    count: int,
    max_new_tokens: int = 16,
    clients: int = 8,
    requests: int = 64,
    max_seconds: float = 120.0,
    server_env: dict[str, str] | None = None,
) -> dict:
    """Measure one server with 1 profile against one with `count`; returns a flat dict of figures."""
    if count < 2:
        raise ValueError(f"the many-profiles suite needs at least 2 profiles; got {count}")
    started = time.perf_counter()
    many = _ensure_store(workdir / "store-many", model, count)
    write_s = time.perf_counter() - started
    one = _ensure_store(workdir / "store-one", model, 1)
    out: dict = {
        "profiles": count,
        "num_virtual_tokens": NUM_VIRTUAL_TOKENS,
        "clients": clients,
        "store_write_s": round(write_s, 2),
    }
    for label, store, ids in (("one", workdir / "store-one", one), ("many", workdir / "store-many", many)):
        figures = _measure(
            model,
            store,
            ids,
            workdir,
            clients=clients,
            requests=requests,
            max_seconds=max_seconds,
            max_new_tokens=max_new_tokens,
            env=server_env or {},
        )
        out.update({f"{label}_{k}": v for k, v in figures.items()})
    computed = NUM_VIRTUAL_TOKENS * model.hidden_size * FLOAT32_BYTES
    out["bytes_per_profile_computed"] = computed
    out["bytes_per_profile_measured"] = round((out["many_rss_bytes"] - out["one_rss_bytes"]) / (count - 1))
    out["throughput_ratio"] = round(out["many_tokens_per_s"] / out["one_tokens_per_s"], 3)
    out["hot_throughput_ratio"] = round(out["many_hot_tokens_per_s"] / out["one_tokens_per_s"], 3)
    return out


def _ensure_store(root: Path, model: BenchModel, count: int) -> list[str]:
    """The store of `count` P=30 profiles, reused when a kept --workdir already holds exactly them."""
    from spul.prompts_store import PromptStore

    if root.is_dir():
        existing = PromptStore(root).profiles()
        if len(existing) == count and all(PromptStore(root).active_version(p) for p in existing[:1]):
            log.info("reusing the %d-profile store at %s", count, root)
            return existing
    return write_profiles(root, model.path, count=count, lengths=(NUM_VIRTUAL_TOKENS,))


def _measure(
    model: BenchModel,
    store: Path,
    ids: list[str],
    workdir: Path,
    *,
    clients: int,
    requests: int,
    max_seconds: float,
    max_new_tokens: int,
    env: dict[str, str],
) -> dict:
    spec = spul_server(model.path, store, env=env, name=f"profiles-{len(ids)}")
    started = time.perf_counter()
    with running(spec, log_path=workdir / f"server-{len(ids)}.log", ready_timeout_s=600.0) as server:
        ready_s = time.perf_counter() - started
        rss = server_pid_rss(server.pid)
        list_s, listed = _list_models(server)
        summary = _serve(
            server,
            ids,
            clients=clients,
            requests=requests,
            max_seconds=max_seconds,
            max_new_tokens=max_new_tokens,
        )
        hot = None
        if len(ids) > 1:  # the N-profile server: also traffic on a hot set of its profiles
            hot = _serve(
                server,
                ids[:HOT],
                clients=clients,
                requests=requests,
                max_seconds=max_seconds,
                max_new_tokens=max_new_tokens,
                warm=True,
            )
    figures = {
        "ready_s": round(ready_s, 2),
        "rss_bytes": rss,
        "list_s": round(list_s, 3),
        "listed": listed,
        "tokens_per_s": summary["tokens_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "errors": summary["errors"],
        "unfinished": summary["unfinished"],
    }
    if hot is not None:
        figures.update(
            hot_tokens_per_s=hot["tokens_per_s"], hot_p50_ms=hot["p50_ms"], hot_errors=hot["errors"]
        )
    return figures


def _serve(
    server: RunningServer,
    ids: list[str],
    *,
    clients: int,
    requests: int,
    max_seconds: float,
    max_new_tokens: int,
    warm: bool = False,
) -> dict:
    """Closed-loop load over `ids` (cycled in order); `warm` first sends one request per profile."""
    workload = Workload(query_texts(), ids, max_new_tokens)
    if warm:
        asyncio.run(run_load(server.url, workload, clients=2, requests=len(ids), max_seconds=max_seconds))
    result = asyncio.run(
        run_load(server.url, workload, clients=clients, requests=requests, max_seconds=max_seconds)
    )
    return result.summary()


def _list_models(server: RunningServer) -> tuple[float, int]:
    """Time `GET /v1/models` (the OpenAI-style profile list) and count its entries."""
    started = time.perf_counter()
    response = httpx.get(f"{server.url}/v1/models", timeout=60.0)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, len(response.json().get("data", []))
