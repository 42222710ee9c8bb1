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
    """Ready only once the model and every active profile are loaded."""
    state = request.app.state
    if state.runtime is None:
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status, "error": state.load_error}, status_code=503)
    if not state.runtime.scheduler.alive:
        return JSONResponse({"status": "failed", "error": "the engine thread has stopped"}, status_code=503)
    registry = state.runtime.registry
    return JSONResponse({"status": "ready", "profiles": len(registry.loaded()), "broken": sorted(registry.broken())})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
