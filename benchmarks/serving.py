"""Serving benchmark: throughput, latency and TTFT of each system at each client count.

Systems (the `system` field of a result):
- ``spul``: `spul serve` with its prefix cache on, requests spread over mixed-P profiles;
- ``no_profile``: the same server process, requests naming no profile (the SPUL overhead). `spul
  serve` fails closed and has no setting to serve the bare model, so when it refuses such a
  request the benchmark sends them to a profile of P = 1 instead (the least prefix an artifact
  can have); the result row says which (`no_profile_via`);
- ``spul_no_cache``: `spul serve` with the prefix cache disabled, same requests as ``spul``;
- ``naive``: benchmarks/naive_server.py, one `generate(inputs_embeds=...)` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spul.benchmarks.loadgen import Workload, run_load
from spul.benchmarks.models import BenchModel, query_texts
from spul.benchmarks.servers import RunningServer, ServerSpec, naive_server, running, spul_server

log = logging.getLogger(__name__)

SYSTEMS = ("spul", "no_profile", "spul_no_cache", "naive")
# Settings of `spul serve` the benchmark relies on (service/settings.py, env prefix SPUL_).
NO_CACHE_ENV = {"SPUL_PREFIX_CACHE_BYTES": "0"}
SERVER_ENV: dict[str, str] = {}  # common settings for every spul server under test


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
    bare_profile: str | None = None  # a P = 1 profile, the stand-in for "no profile" (see above)
    extra_request_fields: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.systems) - set(SYSTEMS))
        if unknown:
            raise ValueError(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
        if not self.clients or min(self.clients) < 1:
            raise ValueError(f"client counts must be >= 1; got {list(self.clients)}")
        if not self.profiles:
            raise ValueError("the serving benchmark needs at least one profile in the store")


def run_serving(config: ServingConfig) -> list[dict]:
    """Run every requested system at every client count; one result dict per (system, clients).

    All servers stay up together and the systems take turns at each client count, so a
    neighbour's load burst on a shared machine lands on all of them rather than on whichever
    system happened to run then (idle servers only wait on a condition variable).
    """
    results: list[dict] = []
    with contextlib.ExitStack() as stack:
        turns: list[tuple[RunningServer, str, str | None]] = []
        for spec, systems in _server_plan(config):
            if systems:
                log.info("starting %s for %s", spec.name, systems)
                server = stack.enter_context(running(spec, log_path=config.workdir / f"{spec.name}.log"))
                bare = _warm_up(server, config)
                turns += [(server, system, bare) for system in systems]
        for clients in config.clients:
            for server, system, bare in turns:
                results.append(_measure(server, config, system, clients, bare))
    order = {name: i for i, name in enumerate(SYSTEMS)}
    return sorted(results, key=lambda r: (order[r["system"]], r["clients"]))


def _server_plan(config: ServingConfig) -> list[tuple[ServerSpec, list[str]]]:
    wanted = set(config.systems)
    path, store = config.model.path, config.store
    return [
        (
            spul_server(path, store, env={**SERVER_ENV, **config.server_env}),
            [s for s in ("spul", "no_profile") if s in wanted],
        ),
        (
            spul_server(
                path, store, env={**SERVER_ENV, **config.server_env, **NO_CACHE_ENV}, name="spul_no_cache"
            ),
            ["spul_no_cache"] if "spul_no_cache" in wanted else [],
        ),
        (naive_server(path, store, env=config.server_env), ["naive"] if "naive" in wanted else []),
    ]


def workload_for(config: ServingConfig, system: str, bare: str | None = None) -> Workload:
    profiles: Sequence[str | None] = [bare] if system == "no_profile" else list(config.profiles)
    return Workload(query_texts(), profiles, config.max_new_tokens, dict(config.extra_request_fields))


def _warm_up(server: RunningServer, config: ServingConfig) -> str | None:
    """One request per profile (fills the prefix cache, as in steady state); returns what
    `no_profile` requests should name: None if the server serves the bare model, else the P=1 profile."""
    result = _load(server, workload_for(config, "spul"), clients=2, requests=len(config.profiles))
    if result.errors:
        raise RuntimeError(f"warm-up failed: {next(r.error for r in result.records if r.error)}")
    for bare in (None, config.bare_profile):
        if not _load(server, workload_for(config, "no_profile", bare), clients=1, requests=2).errors:
            return bare
    return None  # the no_profile rows will show the server's errors


def _load(server: RunningServer, workload: Workload, *, clients: int, requests: int):
    return asyncio.run(run_load(server.url, workload, clients=clients, requests=requests, max_seconds=60.0))


def _measure(
    server: RunningServer, config: ServingConfig, system: str, clients: int, bare: str | None
) -> dict:
    workload = workload_for(config, system, bare)
    requests = max(config.requests, 2 * clients)
    result = asyncio.run(
        run_load(server.url, workload, clients=clients, requests=requests, max_seconds=config.max_seconds)
    )
    summary = {"system": system, **result.summary()}
    if system == "no_profile":
        summary["no_profile_via"] = "no profile" if bare is None else f"P=1 profile {bare}"
    if result.errors:
        first = next(r.error for r in result.records if r.error)
        log.warning("%s at %d clients: %d errors, first: %s", system, clients, result.errors, first)
        summary["first_error"] = first
    log.info("%s", summary)
    return summary
