"""Schemathesis fuzzing of the API's own OpenAPI schema, shared by the CI test and the full run.

Why a loop of our own around `APIOperation.as_strategy` instead of `schema.parametrize()`: it counts
every request it sends (the figure `docs/reliability.md` reports), records failures instead of
stopping at the first, and can point job paths at real jobs so the authenticated, owned branches
(200s, 409s, plots, reports) are exercised and not only the 404 of a random id.

Checks on every response: `not_a_server_error` (no 5xx; `/readyz` may answer its documented 503
when no worker runs) and `response_schema_conformance` (the body matches the declared schema).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

ARCHIVE_MEDIA_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-tar",
                       "application/gzip", "application/x-gzip")
CHECKS = [not_a_server_error, response_schema_conformance]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# Operations whose 503 is part of their contract (readiness with no worker taking work).
DOCUMENTED_503 = {"GET /readyz"}


@dataclass
class FuzzReport:
    """What a fuzz run sent and saw; `failures` lists one line per failed check."""

    requests: int = 0
    by_operation: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.by_status.items()))
        return (f"{self.requests} requests over {len(self.by_operation)} operations in {self.seconds:.1f} s; "
                f"5xx: {self.server_errors}; check failures: {len(self.failures)}; statuses {{{statuses}}}")


@schemathesis.serializer(*ARCHIVE_MEDIA_TYPES)
def _archive_bytes(ctx: schemathesis.SerializationContext, value: Any) -> dict[str, Any]:
    """Dataset uploads take a raw archive body: send generated values as bytes (garbage archives)."""
    data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
    return {"data": data}


def _with_real_job(strategy: st.SearchStrategy, job_ids: list[str]) -> st.SearchStrategy:
    """Half the cases keep their generated `job_id`, the rest name one of the caller's real jobs."""
    choice = st.one_of(st.none(), st.sampled_from(job_ids))

    def swap(pair: tuple[Any, str | None]) -> Any:
        case, job_id = pair
        if job_id is not None and isinstance(case.path_parameters, dict) and "job_id" in case.path_parameters:
            case.path_parameters["job_id"] = job_id
        return case

    return st.tuples(strategy, choice).map(swap)


def fuzz_app(
    app: Any,
    *,
    headers: dict[str, str],
    examples: int,
    fuzz_seed: int = 20261129,
    job_ids: list[str] | None = None,
    modes: tuple[schemathesis.GenerationMode, ...] = MODES,
    only: set[str] | None = None,
) -> FuzzReport:
    """Send `examples` generated requests per operation and mode to an ASGI app; never raises on failures.

    `headers` (the Authorization of a valid key) is sent with every request, so generated cases reach
    the code behind authentication. `fuzz_seed` fixes Hypothesis's choices, so a run is reproducible.
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = FuzzReport()
    started = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if only is not None and label not in only:
            continue
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)
            if job_ids and "{job_id}" in operation.path:
                strategy = _with_real_job(strategy, job_ids)
            try:
                _run_operation(strategy, label, headers, examples, fuzz_seed, report)
            except Unsatisfiable:  # negative mode of an operation with no inputs: nothing can be invalid
                continue
    report.seconds = time.perf_counter() - started
    return report


def _run_operation(strategy: st.SearchStrategy, label: str, headers: dict[str, str], examples: int,
                   fuzz_seed: int, report: FuzzReport) -> None:
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(fuzz_seed)
    @given(case=strategy)
    def run(case: Any) -> None:
        report.requests += 1
        report.by_operation[label] += 1
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # the in-process transport re-raises what the app's 500 handler saw
            report.server_errors += 1
            report.by_status[500] += 1
            line = f"{label} -> 500: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if line not in report.failures:
                report.failures.append(line)
            return
        report.by_status[response.status_code] += 1
        if response.status_code >= 500 and not (response.status_code == 503 and label in DOCUMENTED_503):
            report.server_errors += 1
        checks = [response_schema_conformance] if label in DOCUMENTED_503 else CHECKS
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                detail = " ".join(str(getattr(failure, "message", "")).split())[:300]
                line = f"{label} -> {response.status_code}: {failure.title}: {detail}"
                if line not in report.failures:
                    report.failures.append(line)

    run()
