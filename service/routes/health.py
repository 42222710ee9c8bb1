"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready once the model and every active profile are loaded, and while something can be served.

    Not ready (503) while loading, after a failed start, when the engine thread has stopped, and
    when the store has active profiles but none of them could be loaded for this model (e.g. all
    trained for another model): such a server can only refuse requests, so a health check on
    this route fails.
    """
    state = request.app.state
    if state.runtime is None:
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status, "error": state.load_error}, status_code=503)
    if not state.runtime.scheduler.alive:
        return JSONResponse({"status": "failed", "error": "the engine thread has stopped"}, status_code=503)
    registry = state.runtime.registry
    loaded, broken = registry.loaded(), registry.broken()
    if broken and not loaded:
        first = min(broken)
        error = (
            f"none of the {len(broken)} active profiles can be applied to this model "
            f"(e.g. {first!r}: {broken[first]}); upload profiles trained for it"
        )
        return JSONResponse(
            {"status": "no_profiles", "error": error, "profiles": 0, "broken": sorted(broken)}, status_code=503
        )
    return JSONResponse({"status": "ready", "profiles": len(loaded), "broken": sorted(broken)})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
