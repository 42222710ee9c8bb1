"""Builds the FastAPI app. The lifespan loads the model and profiles in the background (readyz
answers 503 meanwhile), polls the store for other writers, and shuts the batcher down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from spul.service.metrics import Metrics
from spul.service.routes import admin, generate, health, openai
from spul.service.routes.deps import http_exception_handler
from spul.service.runtime import Runtime, build_runtime
from spul.service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, exit_on_load_failure: bool = False) -> FastAPI:
    """`exit_on_load_failure`: stop the process (SIGTERM to itself) if the model cannot load (CLI)."""
    app = FastAPI(title="spul-serve", version="0.1.0", lifespan=_lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics(max_profile_labels=settings.max_profile_labels)
    app.state.runtime = None
    app.state.load_error = None
    app.state.exit_on_load_failure = exit_on_load_failure
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)  # type: ignore[arg-type]
    app.include_router(health.router)
    app.include_router(generate.router)
    app.include_router(openai.router)
    if settings.admin:
        app.include_router(admin.router)
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
        log.exception("start-up failed")
        app.state.load_error = str(err)
        if app.state.exit_on_load_failure:
            os.kill(os.getpid(), signal.SIGTERM)
        return
    runtime.scheduler.start()
    app.state.runtime = runtime
    log.info("ready: model %s, %d profiles", runtime.model_name, len(runtime.registry.loaded()))
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
