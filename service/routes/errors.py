"""Every error the server answers, in OpenAI's envelope, and the one map from core exceptions to HTTP.

Body of every 4xx/5xx: ``{"error": {"message": str, "type": str, "param": str | None,
"code": str}}`` -- the shape the official `openai` client reads, so it shows the message.
`code` is a short machine-readable reason (``profile_not_found``, ``queue_full``,
``not_safetensors``, ...). Every refusal (4xx, 503) is counted in
``spul_requests_rejected_total{reason=<code>}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from spul.prompts_store import ArtifactError, InvalidProfileId, ProfileNotFound, StoreError
from spul.service.policy import EmptyPrompt, ProfileRequired, PromptTooLong
from spul.service.registry import ProfileUnavailable, UnknownProfile
from spul.service.scheduler import ContextTooLong, EngineStopped, QueueFull, ShuttingDown

LIST_HINT = "GET /v1/models lists the profiles you can use"
MAX_VALIDATION_ERRORS = 5

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


class ApiError(HTTPException):
    """An HTTP error with a machine-readable `code` and the request field (`param`) at fault."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, dict(headers) if headers else None)
        self.message = message
        self.code = code
        self.param = param


@contextmanager
def http_errors() -> Iterator[None]:
    """Translate the core's exceptions into HTTP errors with a reason the client can act on."""
    try:
        yield
    except UnknownProfile as err:
        raise ApiError(404, f"{err}; {LIST_HINT}", code="profile_not_found") from err
    except ProfileNotFound as err:
        raise ApiError(404, f"{err}; GET /admin/profiles lists the store", code="profile_not_found") from err
    except ProfileUnavailable as err:
        raise ApiError(503, str(err), code="profile_unavailable") from err
    except ProfileRequired as err:
        raise ApiError(400, str(err), code="profile_required") from err
    except InvalidProfileId as err:
        raise ApiError(400, str(err), code="invalid_profile_id") from err
    except ContextTooLong as err:
        raise ApiError(400, str(err), code="context_length") from err
    except PromptTooLong as err:
        raise ApiError(400, str(err), code="prompt_too_long") from err
    except EmptyPrompt as err:
        raise ApiError(400, str(err), code="empty_prompt") from err
    except ArtifactError as err:
        raise ApiError(413 if err.reason == "too_large" else 422, str(err), code=err.reason) from err
    except StoreError as err:
        raise ApiError(409, str(err), code="conflict") from err
    except QueueFull as err:
        raise ApiError(429, str(err), code="queue_full", headers={"Retry-After": str(err.retry_after)}) from err
    except EngineStopped as err:
        raise ApiError(503, str(err), code="engine_stopped") from err
    except ShuttingDown as err:
        raise ApiError(503, str(err), code="shutting_down", headers={"Retry-After": "5"}) from err


def install(app: FastAPI) -> None:
    """Route every HTTP and validation error of `app` through the envelope."""
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    code: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The envelope; counts the refusal. Text is made JSON-safe (lone surrogates escaped)."""
    if 400 <= status < 500 or status == 503:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.rejected.labels(code).inc()
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": _safe(message), "type": kind, "param": _safe(param) if param else None, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=dict(headers) if headers else None)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    headers = getattr(exc, "headers", None)
    if isinstance(exc, ApiError):
        return error_response(request, exc.status_code, exc.message, code=exc.code, param=exc.param,
                              headers=headers)
    # raised by Starlette/FastAPI themselves: unknown route, wrong method, ...
    status = exc.status_code
    code = _snake(HTTPStatus(status).phrase) if status in _STATUSES else "error"
    return error_response(request, status, str(exc.detail), code=code, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field. The offending input is never echoed (it may be NaN or not UTF-8)."""
    errors = list(exc.errors())
    parts, first_param = [], None
    for err in errors[:MAX_VALIDATION_ERRORS]:
        raw = [str(p)[:64] for p in err.get("loc", ())]
        where = ".".join(p for p in raw if p != "body") or ("body" if raw == ["body"] else "")
        first_param = first_param or where or None
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({_ctx_error(err)})"
        elif err.get("type") == "missing" and where == "body":
            msg = "this request needs a JSON body (content-type: application/json); see the API table in the README"
        parts.append(f"{where}: {msg}" if where else msg)
    if len(errors) > MAX_VALIDATION_ERRORS:
        parts.append(f"and {len(errors) - MAX_VALIDATION_ERRORS} more")
    return error_response(request, 422, "; ".join(parts) or "invalid request", code="validation_error",
                          param=first_param)


def _ctx_error(err: Mapping[str, Any]) -> str:
    ctx = err.get("ctx")
    return str(ctx.get("error", "")) if isinstance(ctx, Mapping) else ""


_STATUSES = {s.value for s in HTTPStatus}


def _snake(text: str) -> str:
    return "_".join(text.lower().replace("-", " ").split())


def _safe(text: str) -> str:
    """Text that encodes as UTF-8: lone surrogates (valid in a JSON string, not in UTF-8) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
