"""Admin: upload, list, show, activate and delete profiles (bearer token). Changes apply to the next request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from spul.prompts_store import ArtifactError, InvalidProfileId
from spul.service.routes.deps import AdminDep, RuntimeDep
from spul.service.routes.errors import ApiError, http_errors
from spul.service.runtime import Runtime
from spul.service.schemas import ActivateRequest

router = APIRouter(prefix="/admin/profiles", tags=["admin"], dependencies=[AdminDep])


@router.put("/{profile}", status_code=201)
async def upload(profile: str, request: Request, runtime: RuntimeDep, activate: bool = True) -> dict[str, Any]:
    """Body: the raw safetensors artifact. Validated against the loaded model before publishing."""
    data = await _read_bounded(request, runtime)
    with http_errors():
        try:
            info = await run_in_threadpool(runtime.registry.upload, profile, data, activate=activate)
        except (ArtifactError, InvalidProfileId) as err:
            runtime.metrics.upload_failures.labels(getattr(err, "reason", "invalid_profile_id")).inc()
            raise
    return info.to_dict()


@router.get("")
def list_profiles(runtime: RuntimeDep) -> dict[str, Any]:
    loaded = runtime.registry.handles()
    broken = runtime.registry.broken()
    rows = []
    for info in runtime.registry.store.list():
        handle = loaded.get(info.profile)
        rows.append(
            {
                "profile": info.profile,
                "active_version": info.active_version,
                "versions": info.versions,
                "serving_version": handle.version if handle else None,
                "error": broken.get(info.profile),
            }
        )
    return {"profiles": rows}


@router.get("/{profile}")
def show_profile(profile: str, runtime: RuntimeDep) -> dict[str, Any]:
    store = runtime.registry.store
    with http_errors():
        versions = [store.version_info(profile, v).to_dict() for v in store.versions(profile)]
        active = store.active_version(profile)
    handle = runtime.registry.handles().get(profile)
    serving = (
        {"version": handle.version, "sha256": handle.sha256, "num_virtual_tokens": handle.num_virtual_tokens}
        if handle
        else None
    )
    error = runtime.registry.broken().get(profile)
    return {"profile": profile, "active_version": active, "versions": versions, "serving": serving, "error": error}


@router.post("/{profile}/activate")
def activate(profile: str, body: ActivateRequest, runtime: RuntimeDep) -> dict[str, Any]:
    with http_errors():
        return runtime.registry.activate(profile, body.version).to_dict()


@router.delete("/{profile}", status_code=204)
def delete(profile: str, runtime: RuntimeDep, version: int | None = Query(None, ge=1)) -> Response:
    with http_errors():
        runtime.registry.delete(profile, version)
    return Response(status_code=204)


async def _read_bounded(request: Request, runtime: Runtime) -> bytes:
    """Read the body, refusing (413) as soon as it exceeds the upload limit."""
    limit = runtime.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(runtime)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(runtime)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(runtime: Runtime) -> ApiError:
    runtime.metrics.upload_failures.labels("too_large").inc()
    limit = runtime.settings.max_upload_bytes
    return ApiError(413, f"artifact is over the {limit}-byte limit (SPUL_MAX_UPLOAD_BYTES)", code="too_large")


async def admin_disabled(request: Request) -> None:
    """Every /admin path on a server started without a token."""
    raise ApiError(404, "admin endpoints are disabled on this server: start it with SPUL_ADMIN_TOKEN set "
                   "(16+ random characters, e.g. `export SPUL_ADMIN_TOKEN=$(openssl rand -hex 16)`) to "
                   "enable them", code="admin_disabled")
