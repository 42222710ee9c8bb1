"""Builds the FastAPI app. The lifespan loads the model and profiles in the background (readyz
answers 503 meanwhile), polls the store for other writers, and shuts the batcher down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from spul.service.bodylimit import BodyLimit
from spul.service.metrics import Metrics
from spul.service.routes import admin, errors, generate, health, openai
from spul.service.runtime import Runtime, StartupError, build_runtime
from spul.service.schemas import ErrorResponse
from spul.service.settings import Settings

log = logging.getLogger(__name__)
ADMIN_PREFIX = "/admin/"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "Validation error"},
    "default": {"model": ErrorResponse, "description": "Any other error"},
}


def create_app(settings: Settings, *, on_load_failure: Callable[[], None] | None = None) -> FastAPI:
    """`on_load_failure` is called if the model or profiles cannot load (the CLI stops the server)."""
    app = FastAPI(title="spul-serve", version="0.1.0", lifespan=_lifespan, responses=ERROR_RESPONSES)
    app.state.settings = settings
    app.state.metrics = Metrics(max_profile_labels=settings.max_profile_labels)
    app.state.runtime = None
    app.state.load_error = None
    app.state.on_load_failure = on_load_failure
    errors.install(app)
    # uploads bound their own bodies (SPUL_MAX_UPLOAD_BYTES); every other body: SPUL_MAX_REQUEST_BYTES
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, timeout_s=settings.read_timeout_s,
                       own_limit=(ADMIN_PREFIX,) if settings.admin else ())
    app.include_router(health.router)
    app.include_router(generate.router)
    app.include_router(openai.router)
    if settings.admin:
        app.include_router(admin.router)
    else:
        app.add_api_route(ADMIN_PREFIX + "{path:path}", admin.admin_disabled, include_in_schema=False,
                          methods=["GET", "PUT", "POST", "DELETE", "PATCH"])
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    loader = asyncio.create_task(_load(app))
    try:
        yield
    finally:
        loader.cancel()
        runtime: Runtime | None = app.state.runtime
        if runtime is not None:
            await runtime.scheduler.shutdown(grace_s=app.state.settings.shutdown_grace_s)
        with contextlib.suppress(asyncio.CancelledError):
            await loader


async def _load(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    try:
        runtime = await asyncio.to_thread(build_runtime, settings, app.state.metrics)
    except Exception as err:
        if isinstance(err, StartupError):  # says what to do: one line
            log.error("start-up failed: %s", err)
        else:
            log.exception("start-up failed")
        app.state.load_error = str(err)
        if app.state.on_load_failure is not None:
            app.state.on_load_failure()
        return
    runtime.scheduler.start()
    app.state.runtime = runtime
    profiles = sorted(runtime.registry.loaded())
    log.info("ready: serving %s with %d profile%s%s", settings.model or "the shipped reference model",
             len(profiles), "" if len(profiles) == 1 else "s", f" ({', '.join(profiles[:10])})" if profiles else "")
    if settings.store_poll_s > 0:
        await _poll_store(runtime, settings.store_poll_s)


async def _poll_store(runtime: Runtime, every_s: float) -> None:
    """Other processes may write the same store: reload when its change token moves."""
    while True:
        await asyncio.sleep(every_s)
        try:
            if await asyncio.to_thread(runtime.registry.refresh_if_changed):
                log.info("store changed: %d profiles active", len(runtime.registry.loaded()))
        except Exception:
            log.exception("store poll failed")
