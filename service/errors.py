"""Exception handlers: every failure a client can cause becomes a 4xx, and an outage a 503.

The catch-all 500 exists as a last resort only; it logs the traceback and returns the request id,
never the exception text, so nothing internal leaks.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from jobs.redis_errors import StoreUnavailable
from jobs.states import InvalidTransition, JobNotFound
from service.auth import bearer_token

logger = logging.getLogger(__name__)


def request_id_of(request: Request) -> str:
    """The id the request-id middleware stored in the request scope ('-' before it ran)."""
    return getattr(request.state, "request_id", "-")


def field_error(field: str | tuple[str | int, ...], msg: str, value: Any, kind: str = "value_error") -> dict:
    """One entry of FastAPI's standard 422 `detail` list, for checks pydantic cannot do (limits)."""
    loc = ("body", field) if isinstance(field, str) else ("body", *field)
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def unavailable(reason: str) -> JSONResponse:
    return JSONResponse({"detail": f"job store unavailable: {reason}"}, status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": "5"})


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("store unavailable (request %s): %s", request_id_of(request), exc)
    return unavailable(str(exc) or type(exc).__name__)


async def _job_not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "job not found"}, status.HTTP_404_NOT_FOUND)


async def _invalid_transition(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc) or "the job cannot change state now"}, status.HTTP_409_CONFLICT)


def _unauthenticated(request: Request) -> bool:
    """A /v1 request without a valid key: FastAPI validates the body before dependencies refuse it."""
    keys = request.app.state.keys
    if not request.url.path.startswith("/v1/") or keys.open_mode:
        return False
    token = bearer_token(request.headers.get("authorization"))
    return token is None or keys.owner_of(token) is None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's standard 422 body, but with inputs cut short: a 10 MB string is not echoed back.

    A caller without a valid key gets the 401 instead: validation must not answer strangers first.
    """
    assert isinstance(exc, RequestValidationError)
    if _unauthenticated(request):
        return JSONResponse({"detail": "missing or invalid API key"}, status.HTTP_401_UNAUTHORIZED,
                            headers={"WWW-Authenticate": "Bearer"})
    errors = []
    for err in exc.errors():
        err = dict(err)
        err["msg"] = _text(str(err.get("msg", "")))
        if "input" in err:
            err["input"] = bounded_echo(err["input"])
        if "ctx" in err:
            err["ctx"] = {k: bounded_echo(v) for k, v in err["ctx"].items()}
        errors.append(err)
    return JSONResponse({"detail": errors}, status.HTTP_422_UNPROCESSABLE_CONTENT)


def _text(value: str, limit: int = 500) -> str:
    """Cut short, and with lone surrogates (valid in JSON escapes, not in UTF-8) made visible."""
    return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def bounded_echo(value: Any, depth: int = 0) -> Any:
    """A bounded, JSON-encodable copy of a client's input to echo in a 422: strings cut short, at most
    50 items and 4 levels deep, NaN and 1e400 as text (not `clrcore.json_safe`, which keeps everything)."""
    if isinstance(value, bool | int | None):
        return value if not isinstance(value, int) or abs(value) < 2**63 else str(value)[:50]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str | bytes):
        return _text(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    if depth >= 4:
        return "..."
    if isinstance(value, dict):
        return {str(k)[:100]: bounded_echo(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [bounded_echo(v, depth + 1) for v in value[:50]]
    return str(value)[:200]


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    logger.exception("unhandled error (request %s)", request_id, exc_info=exc)
    return JSONResponse({"detail": "internal error", "request_id": request_id},
                        status.HTTP_500_INTERNAL_SERVER_ERROR, headers={"X-Request-ID": request_id})


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(redis.exceptions.ConnectionError, _store_unavailable)
    app.add_exception_handler(redis.exceptions.TimeoutError, _store_unavailable)
    app.add_exception_handler(JobNotFound, _job_not_found)
    app.add_exception_handler(InvalidTransition, _invalid_transition)
    app.add_exception_handler(Exception, _unexpected)
