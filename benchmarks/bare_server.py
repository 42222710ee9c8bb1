"""`spul serve` with one extra, benchmark-only profile: `BARE`, a soft prompt of length zero.

The product fails closed (a request without a profile is refused, and the store refuses an
empty prompt), so it has no path that serves the bare base model. To measure what the soft
prompt costs, this server builds the normal app (same settings, engine, scheduler and HTTP
layer) and, once the runtime is loaded, lets the registry resolve `BARE` to a handle with a
(0, H) prompt: requests naming it run the bare model through the very same engine. Nothing
in `spul serve` can enable this; it exists only in this benchmark process. An empty prompt has
no prefix to cache, so this process runs with the prefix cache off: each request's forward
passes are exactly the query's, as with the bare model.

Start it with ``uvicorn spul.benchmarks.bare_server:create_app --factory`` and the usual
`SPUL_*` settings in the environment.
"""

from __future__ import annotations

import logging

import torch
from fastapi import FastAPI

from spul.service import app as service_app
from spul.service.registry import PromptHandle, PromptRegistry
from spul.service.settings import Settings

log = logging.getLogger(__name__)

BARE = "bench-bare"  # the profile name that stands for "no soft prompt"
BARE_SHA = "0" * 64  # prefix-cache key of the empty prompt


def add_bare_profile(registry: PromptRegistry) -> PromptHandle:
    """Make `registry.resolve(BARE)` return a zero-length prompt; every other name resolves as before."""
    identity = registry.identity
    handle = PromptHandle(
        BARE, 0, BARE_SHA, torch.empty(0, identity.hidden_size, device=identity.device, dtype=identity.dtype)
    )
    resolve = registry.resolve

    def resolve_with_bare(profile: str) -> PromptHandle:
        return handle if profile == BARE else resolve(profile)

    registry.resolve = resolve_with_bare  # type: ignore[method-assign]  # this instance only
    return handle


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = (settings or Settings()).model_copy(update={"prefix_cache_bytes": 0})
    build = service_app.build_runtime

    def build_with_bare(settings: Settings, metrics):  # the signature of build_runtime
        runtime = build(settings, metrics)
        add_bare_profile(runtime.registry)
        log.info("benchmark-only profile %r: a zero-length prompt (the bare model)", BARE)
        return runtime

    service_app.build_runtime = build_with_bare  # this process only: the app's lifespan calls it
    return service_app.create_app(settings)
