"""Jobs: submit a range test or a training run, read and list them, cancel them, follow their events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import kombu.exceptions
import redis.exceptions
from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from clrcore.specs import RangeTestSpec, TrainSpec
from jobs.idempotency import body_hash
from jobs.job_status import job_status
from jobs.queues import queue_for
from jobs.records import InvalidCursor
from jobs.redis_errors import StoreUnavailable
from jobs.run_removal import remove_run_files
from jobs.settings import Settings
from jobs.states import FINAL_STATES, JobState
from jobs.store import JobStore
from jobs.webhook_addresses import allowed_networks, literal_address_problem
from jobs.webhooks import webhook_secrets
from service.deps import OwnedJob, Owner, QueueDep, SettingsDep, StoreDep
from service.errors import field_error
from service.event_reader import EventReader
from service.run_files import job_links
from service.uploads import touch_uploaded, upload_errors
from service.weight_uploads import weights_errors

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["jobs"])

FINAL = {s.value for s in FINAL_STATES}
SSE_BLOCK_MS = 2_000
SSE_PING_S = 15
ACTIVE_CAP_RETRY_S = 30  # a job takes at least this long to make room; a retry sooner is refused again
# What clients see of a job's event log. The log also keeps operators' events (`delivery`,
# `recovered`) that name workers, hosts and pids; those stay in Redis and never reach a client.
CLIENT_EVENTS = frozenset({"state", "progress", "metrics"})
EVENT_ID = r"^\d{1,19}-\d{1,19}$"  # a Redis Stream id; 19 digits stay below 2**64 (Redis refuses more)

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255,
           description="retrying with the same key and body returns the first answer instead of a new job"),
]


# ------------------------------------------------------------------------------------------ models


class Progress(BaseModel):
    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float | None = None


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str
    report: str | None = Field(None, description="present once report.json exists")
    report_text: str | None = None
    plots: dict[str, str] = Field(default_factory=dict, description="plot name -> PNG URL")
    artifacts: dict[str, str] = Field(default_factory=dict, description="artifact name -> URL")


class Job(BaseModel):
    id: str
    kind: Literal["range_test", "train"]
    state: JobState
    spec: dict[str, Any]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress | None
    metrics: dict[str, Any] = Field(description="latest metrics (loss, accuracy, lr, ...)")
    error: str | None = Field(None, description="one-line failure reason")
    result: dict[str, Any] | None = Field(None, description="summary: suggested LRs, final accuracy, ...")
    cancel_requested: bool
    queue: str | None
    deliveries: int
    links: JobLinks


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next (older) page")


def job_out(record: dict, settings: Settings) -> dict:
    """The public view of a store record, with links to the files its run folder has so far."""
    return job_status(record, job_links(record, settings))


# ------------------------------------------------------------------------------------------ submit

_RANGE_TEST_EXAMPLES = {
    "digits": {
        "summary": "Quick sweep on the bundled digits (CPU)",
        "value": {"dataset": "digits", "model": "tiny_cnn", "batch_size": 64, "start_lr": 1e-5,
                  "end_lr": 10, "num_iter": 60, "device": "cpu"},
    },
    "cifar10": {
        "summary": "CIFAR-10 sweep on a GPU, linear mode with validation loss",
        "value": {"dataset": "cifar10", "model": "resnet_fast", "batch_size": 512, "start_lr": 1e-4,
                  "end_lr": 10, "num_iter": 200, "mode": "linear", "validation": True, "device": "cuda"},
    },
}
_TRAIN_EXAMPLES = {
    "preset": {"summary": "The digits demo preset (max_lr 'auto' runs a range test first)",
               "value": {"preset": "digits-demo", "device": "cpu"}},
    "triangular": {
        "summary": "Triangular CLR with explicit bounds",
        "value": {"dataset": "digits", "model": "tiny_cnn", "epochs": 8, "batch_size": 64,
                  "policy": "triangular", "base_lr": 0.001, "max_lr": 0.05, "step_size": 2,
                  "step_unit": "epochs", "seed": 1, "device": "cpu"},
    },
    "one_cycle": {
        "summary": "One-cycle on CIFAR-10, bounds from the range test",
        "value": {"dataset": "cifar10", "model": "resnet_fast", "epochs": 10, "batch_size": 512,
                  "policy": "one_cycle", "max_lr": "auto", "label_smoothing": 0.2, "device": "cuda"},
    },
}


def _limit_errors(spec: RangeTestSpec | TrainSpec, settings: Settings) -> list[dict]:
    """Server limits (from Settings) that pydantic cannot know; each error names its field."""
    errors = []
    if spec.batch_size > settings.max_batch_size:
        errors.append(field_error("batch_size", f"must be at most {settings.max_batch_size} on this server",
                                  spec.batch_size, "less_than_equal"))
    if isinstance(spec, RangeTestSpec):
        if spec.num_iter is not None and spec.num_iter > settings.max_range_test_iter:
            errors.append(field_error("num_iter", f"must be at most {settings.max_range_test_iter} on this "
                                      "server", spec.num_iter, "less_than_equal"))
        return errors
    if spec.epochs > settings.max_epochs:
        errors.append(field_error("epochs", f"must be at most {settings.max_epochs} on this server",
                                  spec.epochs, "less_than_equal"))
    if spec.range_test.num_iter is not None and spec.range_test.num_iter > settings.max_range_test_iter:
        errors.append(field_error(("range_test", "num_iter"),
                                  f"must be at most {settings.max_range_test_iter} on this server",
                                  spec.range_test.num_iter, "less_than_equal"))
    return errors


def _notify_errors(spec: RangeTestSpec | TrainSpec, owner: str, settings: Settings) -> list[dict]:
    """Webhook checks that need the server's settings: a secret to sign with, an address allowed."""
    if spec.notify is None:
        return []
    if owner not in webhook_secrets(settings.webhook_secrets):
        return [field_error("notify", "this server has no webhook secret for your key (CLR_WEBHOOK_SECRETS), "
                            "so it cannot sign webhooks", spec.notify.url, "webhook_unsigned")]
    problem = literal_address_problem(spec.notify.url, allowed_networks(settings.webhook_allow_networks))
    if problem is not None:
        return [field_error(("notify", "url"), f"refused: {problem}", spec.notify.url, "webhook_address")]
    return []


def _submit(spec: RangeTestSpec | TrainSpec, *, owner: str, key: str | None, store: JobStore,
            queue: QueueDep, settings: Settings) -> JSONResponse:
    """Validate limits, honour the idempotency key, store the job waiting its key's turn, then send the
    queue's next turns (`jobs.turns`) by task name."""
    if errors := (_limit_errors(spec, settings) + _notify_errors(spec, owner, settings)
                  + upload_errors(spec, owner, store, settings) + weights_errors(spec, owner, store, settings)):
        raise RequestValidationError(errors)
    # The record keeps what the client asked for (after the preset is merged), not every default: the
    # worker re-validates it, and the fields left unset are the ones the range test's recipe may fill.
    # The run folder's spec.json holds the full effective spec.
    body = {"kind": spec.kind, **spec.model_dump(mode="json", exclude_unset=True)}
    effective = spec.model_dump(mode="json")  # a default spelled out is still the same request
    try:
        json.dumps(effective, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # "\ud800" parses as JSON but cannot be stored or sent back as UTF-8
        raise RequestValidationError([field_error((), "text must be valid Unicode (a lone surrogate was sent)",
                                                  None, "string_unicode")]) from None
    fingerprint = body_hash(effective)
    if key is not None:
        outcome, first = store.idempotency.begin(owner, key, fingerprint)
        if outcome == "replay" and first is not None:
            return _accepted(first, replayed=True)
        if outcome == "mismatch":
            raise RequestValidationError([{
                "type": "idempotency_key_reused", "loc": ("header", "Idempotency-Key"),
                "msg": "this key was used with a different request body", "input": key,
            }])
        if outcome == "created" and first is not None:  # the first request stored it, then died
            return _answer_stored(first["id"], owner, key, fingerprint, store, settings)
        if outcome == "in_flight":
            return JSONResponse({"detail": "a request with this Idempotency-Key is still being handled"},
                                status.HTTP_409_CONFLICT, headers={"Retry-After": "1"})
    target = queue_for(spec.device, settings)
    if (active := store.records.active_count(owner)) >= settings.max_active_jobs_per_key:
        if key is not None:
            _abort_quietly(store, owner, key, fingerprint)
        return JSONResponse(
            {"detail": f"this key has {active} jobs queued or running, the most allowed "
                       f"(CLR_MAX_ACTIVE_JOBS_PER_KEY); retry once some have finished"},
            status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(ACTIVE_CAP_RETRY_S)})
    try:
        record = store.records.create(spec.kind, body, owner, queue=target, idempotency_key=key, wait_turn=True)
    except Exception:
        if key is not None:
            _abort_quietly(store, owner, key, fingerprint)
        raise
    touch_uploaded(spec, store, settings)
    _dispatch_quietly(store, queue, settings, target)
    store.records.notify(record, "queued")  # a transition announces itself; the first `queued` is no transition
    answer = json.loads(Job.model_validate(job_out(record, settings)).model_dump_json())
    if key is not None:
        store.idempotency.finish(owner, key, fingerprint, answer)
    logger.info("job %s (%s) accepted for %s", record["id"], spec.kind, owner)
    return _accepted(answer)


def _dispatch_quietly(store: JobStore, queue: QueueDep, settings: Settings, target: str) -> None:
    """Send the next turns of `target` (this job's, if its key is next and a worker is free).

    The job is stored and waiting its turn whatever happens here: a broker or Redis error only delays
    it to the workers' next dispatch, and a job taken from its list but not sent is re-sent by the
    stale-queued sweep.
    """
    try:
        for job_id in store.turns.dispatch_by(settings, target):
            queue.send(job_id, target)
    except (StoreUnavailable, kombu.exceptions.OperationalError, redis.exceptions.RedisError, OSError) as exc:
        logger.warning("queue %s: dispatch left to the workers: %s", target, exc)


def _answer_stored(job_id: str, owner: str, key: str, fingerprint: str, store: JobStore,
                   settings: Settings) -> JSONResponse:
    """Answer a retry whose first request stored the job but never answered (the API died between the
    steps). The job waits its turn like any other (stored in the same step), or, if it was taken from its
    list but never sent, the sweeper's stale-queued re-send sends it."""
    record = store.records.get(job_id)
    if record is None:  # deleted since: its answer is gone with it
        return JSONResponse({"detail": f"the job of this Idempotency-Key ({job_id}) was deleted"},
                            status.HTTP_409_CONFLICT)
    answer = json.loads(Job.model_validate(job_out(record, settings)).model_dump_json())
    store.idempotency.finish(owner, key, fingerprint, answer)
    return _accepted(answer, replayed=True)


def _abort_quietly(store: JobStore, owner: str, key: str, fingerprint: str) -> None:
    try:
        store.idempotency.abort(owner, key, fingerprint)
    except Exception as exc:  # the reservation expires by itself; the original error matters more
        logger.warning("idempotency key not released: %s", exc)


def _accepted(answer: dict, *, replayed: bool = False) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{answer['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(answer, status.HTTP_202_ACCEPTED, headers=headers)


_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Job, "description": "accepted; `Location` names the job"},
    409: {"description": "a request with the same Idempotency-Key is still being handled"},
    422: {"description": "invalid spec, a server limit exceeded, or an Idempotency-Key reused with "
                         "another body; `detail` names each field"},
    503: {"description": "job store or broker unavailable"},
}


@router.post("/jobs/range-test", status_code=202, response_model=Job, responses=_SUBMIT_RESPONSES)
def submit_range_test(
    spec: Annotated[RangeTestSpec, Body(openapi_examples=_RANGE_TEST_EXAMPLES)],
    owner: Owner, store: StoreDep, queue: QueueDep, settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Queue an LR range test: the sweep, its plot, and suggested bounds for the chosen policy."""
    return _submit(spec, owner=owner, key=idempotency_key, store=store, queue=queue, settings=settings)


@router.post("/jobs/train", status_code=202, response_model=Job, responses=_SUBMIT_RESPONSES)
def submit_train(
    spec: Annotated[TrainSpec, Body(openapi_examples=_TRAIN_EXAMPLES)],
    owner: Owner, store: StoreDep, queue: QueueDep, settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Queue a cyclical-LR training run; `max_lr: "auto"` runs a range test inside the job first."""
    return _submit(spec, owner=owner, key=idempotency_key, store=store, queue=queue, settings=settings)


# ------------------------------------------------------------------------------------------ read


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    owner: Owner, store: StoreDep, settings: SettingsDep,
    kind: Literal["range_test", "train"] | None = None,
    state: JobState | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict:
    """The caller's jobs, newest first; follow `next_cursor` for older ones."""
    try:
        records, next_cursor = store.records.list(owner, kind=kind, state=state.value if state else None,
                                          cursor=cursor, limit=limit)
    except InvalidCursor:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "cursor"),
                                       "msg": "invalid cursor", "input": cursor}]) from None
    return {"items": [job_out(r, settings) for r in records], "next_cursor": next_cursor}


_NO_JOB: dict[int | str, dict[str, Any]] = {404: {"description": "no such job for this key"}}


@router.get("/jobs/{job_id}", response_model=Job, responses=_NO_JOB)
async def get_job(job: OwnedJob, settings: SettingsDep) -> dict:
    """One job: state, progress, latest metrics, failure reason, result summary and artifact links.

    `async`: it only formats the record (and lists the small run folder), so no threadpool hop.
    """
    return job_out(job, settings)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=Job,
             responses={404: {"description": "no such job for this key"},
                        409: {"description": "the job already finished"}})
def cancel_job(job: OwnedJob, store: StoreDep, settings: SettingsDep) -> dict:
    """Ask a job to stop: a queued job is cancelled at once, a running one stops within a few batches."""
    record = store.records.request_cancel(job["id"])  # a queued job's `cancelled` webhook is announced there
    logger.info("job %s: cancel requested (now %s)", job["id"], record["state"])
    return job_out(record, settings)


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response,
               responses={404: {"description": "no such job for this key"},
                          409: {"description": "the job is queued or running (cancel it first), or its "
                                             "worker is still finishing"}})
def delete_job(job: OwnedJob, store: StoreDep, settings: SettingsDep) -> Response:
    """Remove a finished job for good: its record, events and run folder (model, checkpoints, plots, report).

    Record first, atomically and only once the job is final and its worker has let go; then the files.
    A Redis outage answers 503 with nothing removed; a folder that cannot be removed is logged and left.
    """
    store.records.delete(job)
    remove_run_files(settings, job["id"], store.redis)
    logger.info("job %s: deleted (was %s)", job["id"], job["state"])
    return Response(status_code=204)


# ------------------------------------------------------------------------------------------ events


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`state`, `progress` and `metrics` events; ends after the final "
                                            "state"}})
async def job_events(
    job: OwnedJob, request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=EVENT_ID)] = None,
) -> Response:
    """Server-Sent Events from the job's event log; `Last-Event-ID` resumes after that event.

    One key may hold `sse_max_streams_per_key` streams open at once (in this process); more get 429,
    so one tenant cannot take every Redis connection the streams share."""
    open_streams: dict[str, int] = request.app.state.open_streams
    owner, cap = job["owner"], request.app.state.settings.sse_max_streams_per_key
    if open_streams.get(owner, 0) >= cap:
        return JSONResponse({"detail": f"this key already has {cap} event streams open "
                                       "(CLR_SSE_MAX_STREAMS_PER_KEY); close one"},
                            status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": "5"})
    open_streams[owner] = open_streams.get(owner, 0) + 1
    stream = _event_stream(request.app.state.events, job["id"], last_event_id or "0")
    return EventSourceResponse(_counted(_ending_on_outage(stream), open_streams, owner), ping=SSE_PING_S)


async def _counted(stream: AsyncIterator[ServerSentEvent], open_streams: dict[str, int],
                   owner: str) -> AsyncIterator[ServerSentEvent]:
    """Count the stream as open until it ends, however it ends (client gone, job final, outage)."""
    try:
        async for event in stream:
            yield event
    finally:
        open_streams[owner] -= 1
        if open_streams[owner] <= 0:
            del open_streams[owner]


async def _ending_on_outage(stream: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    """A Redis outage mid-stream ends it with an `error` event and a retry hint, not a traceback;
    the client reconnects with Last-Event-ID and loses nothing (the events stay in the stream)."""
    try:
        async for event in stream:
            yield event
    except StoreUnavailable as exc:
        logger.warning("event stream ended: %s", exc)
        yield ServerSentEvent(json.dumps({"detail": f"job store unavailable: {exc}"}), event="error",
                              retry=2000)


async def _event_stream(reader: EventReader, job_id: str, after: str) -> AsyncIterator[ServerSentEvent]:
    """Relay the stream until a final state event has been sent (or the job is found final)."""
    closing, state, waited = False, None, False
    while True:
        # The first read does not wait, so a stream resumed after the end closes at once.
        block_ms = SSE_BLOCK_MS if waited and not closing else 0
        events = await reader.read(job_id, after, block_ms=block_ms, count=100)
        waited = True
        for event_id, name, data in events:
            after = event_id
            if name not in CLIENT_EVENTS:
                continue
            yield ServerSentEvent(json.dumps(data), event=name, id=event_id)
            if name == "state" and data.get("state") in FINAL:
                return
        if events:
            continue
        if closing:
            # Resumed after the final event (or the log was trimmed): say how it ended, then close.
            name, error = state or ("deleted", None)
            yield ServerSentEvent(json.dumps({"state": name, "error": error}),
                                  event="state", id=after if after != "0" else None)
            return
        state = await reader.state(job_id)
        # Final now: read once more without waiting, in case the final event landed after our read.
        closing = state is None or state[0] in FINAL
