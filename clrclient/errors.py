"""What a failed call raises: one exception per kind of refusal, each carrying the problem's field and reason.

The API answers a refusal in one of three shapes (service/errors.py, service/routes/datasets.py):
FastAPI's 422 list `{"detail": [{"loc": ["body", "epochs"], "msg": ..., "type": ...}]}`, an upload
refusal `{"detail": "...", "problem": "too_large"}`, or a plain `{"detail": "..."}`. All three become
`Problem`s, so a caller reads `exc.field` and `exc.reason` whatever the route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

LOCATIONS = ("body", "query", "header", "path")


@dataclass(frozen=True)
class Problem:
    """One thing the server refused: the field (dotted, `range_test.num_iter`; None when the whole
    request is meant), why, and the server's stable code for it (`less_than_equal`, `too_large`)."""

    field: str | None
    reason: str
    code: str | None = None
    location: str | None = None  # body, query, header or path, when the server said


class ClientError(Exception):
    """Anything clrclient raises on purpose."""


class ApiError(ClientError):
    """A 4xx or 5xx answer (5xx only once the retries are spent)."""

    def __init__(self, status: int, problems: list[Problem], *, request_id: str | None = None) -> None:
        self.status, self.problems, self.request_id = status, problems, request_id
        super().__init__(f"HTTP {status}: " + "; ".join(_line(p) for p in problems))

    @property
    def field(self) -> str | None:
        """The first problem's field: what to fix first."""
        return self.problems[0].field if self.problems else None

    @property
    def reason(self) -> str:
        return self.problems[0].reason if self.problems else ""

    @property
    def code(self) -> str | None:
        return self.problems[0].code if self.problems else None


class Unauthorized(ApiError):
    """401: no key, or a key the server does not know."""


class NotFound(ApiError):
    """404: no such job, dataset or file for this key (a file may not exist *yet*)."""


class Conflict(ApiError):
    """409: the job's state forbids it now (cancel a finished job, delete a running one)."""


class InvalidRequest(ApiError):
    """422 (and other 4xx refusals of the request's content: 413, 415)."""


class ServerError(ApiError):
    """5xx that outlasted the retries."""


class WaitTimeout(ClientError, TimeoutError):
    """`wait()` ran out of time; the job goes on on the server."""


def _line(problem: Problem) -> str:
    return f"{problem.field}: {problem.reason}" if problem.field else problem.reason


def _problem(error: dict[str, Any]) -> Problem:
    """One entry of FastAPI's 422 list: `loc` is (location, field, subfield...)."""
    parts = [str(p) for p in error.get("loc", ())]
    location = parts.pop(0) if parts and parts[0] in LOCATIONS else None
    return Problem(".".join(parts) or None, str(error.get("msg", "")), error.get("type"), location)


def problems_of(body: Any) -> list[Problem]:
    """The problems in a refusal body, whatever its shape."""
    if not isinstance(body, dict):
        return [Problem(None, str(body)[:500])] if body else []
    detail = body.get("detail")
    if isinstance(detail, list):
        return [_problem(d) for d in detail if isinstance(d, dict)]
    if detail is not None:
        return [Problem(None, str(detail), body.get("problem"))]
    return []


_BY_STATUS: dict[int, type[ApiError]] = {401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict}


def error_for(response: httpx.Response) -> ApiError:
    """The exception for a refused response (its body already read)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    problems = problems_of(body) or [Problem(None, response.reason_phrase or f"HTTP {response.status_code}")]
    status = response.status_code
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else InvalidRequest)
    return kind(status, problems, request_id=response.headers.get("x-request-id"))
