"""Job records, the one job state machine, event logs, idempotency keys and job leases, all in Redis.

The API and the workers both write job state only through `JobStore`, so every rule about a job's
life (which transitions exist, that final states never change, that one worker at a time runs a job)
is enforced here, atomically, by small Lua scripts. Torch-free and FastAPI-free on purpose: the API
imports it, and so do the workers.

Key layout (every key starts with the configured prefix, so tests can share one Redis):

    {p}:job:{id}                 hash: the job record (JSON-encoded fields where structured)
    {p}:job:{id}:events          stream: "state" and "progress" events (SSE reads it, Last-Event-ID resumes)
    {p}:lease:{id}               string: worker id holding the job, with a TTL (the lease)
    {p}:owner:{owner}            sorted set: the owner's job ids by creation sequence
    {p}:owner:{owner}:{kind}     sorted set: the same, one kind only
    {p}:state:{state}            set: job ids in that state (counts, the sweeper)
    {p}:idem:{owner-hash}:{key}  hash: an idempotency key's body hash, status and stored response
    {p}:worker:{id}, {p}:workers worker liveness (hash per worker, sorted set by last seen): `jobs.workers`
    {p}:canary:{token}           a worker's reply to a readiness canary task: `jobs.workers`
    {p}:durations                hash: cumulative job-duration histogram, "kind|state|le<i>", "|count", "|sum"
    {p}:broker:...               the Celery/kombu queues (see `broker_transport_options`)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs import scripts
from jobs.queues import broker_key_prefix

if TYPE_CHECKING:
    from jobs.settings import Settings

log = logging.getLogger(__name__)

EVENTS_MAXLEN = 10_000
MAX_BLOCK_MS = 5_000  # below the client's socket timeout, so a blocking read never looks like a dead Redis
# Upper bounds (seconds) of the job-duration histogram kept in Redis (`{p}:durations`); +Inf is the count.
DURATION_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# The one state machine. running -> queued is lease loss: the worker died and the sweeper hands the
# job back to the queue, where the next worker resumes it from its checkpoint. cancelling -> succeeded
# covers a job that finished in the same moment a cancel arrived.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.CANCELLING, JobState.QUEUED}
    ),
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.FAILED, JobState.SUCCEEDED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    """The job is not in a state from which the requested state can be reached (API: 409)."""

    def __init__(self, job_id: str, current: str, wanted: str, message: str | None = None) -> None:
        super().__init__(message or f"job {job_id} is {current}; cannot become {wanted}")
        self.job_id, self.current, self.wanted = job_id, current, wanted


class JobNotFinished(InvalidTransition):
    """Delete asked of a job that is queued or running, or whose worker has not let go yet (API: 409)."""

    def __init__(self, job_id: str, current: str, leased: bool) -> None:
        why = (" and its worker is still finishing; retry in a few seconds" if leased
               else "; cancel it and wait for it to end before deleting it")
        super().__init__(job_id, current, "deleted", f"job {job_id} is {current}{why}")


class JobNotFound(KeyError):
    """No job with that id (API: 404)."""


class StoreUnavailable(Exception):
    """Redis cannot be reached or is still loading its data (API: 503 with this reason)."""


class InvalidCursor(ValueError):
    """A list cursor that this store did not hand out."""


P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def redis_errors_as_unavailable() -> Iterator[None]:
    """Turn connection trouble into one exception type the API maps to 503 (sync and asyncio clients alike)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # BusyLoadingError is a ConnectionError
        raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}: {exc}") from exc


def unavailable_on_redis_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """`redis_errors_as_unavailable` around a whole method."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with redis_errors_as_unavailable():
            return fn(*args, **kwargs)

    return wrapper



_JSON_FIELDS = ("spec", "progress", "metrics", "result")
_ARTIFACT = "artifact:"


def body_hash(body: Any) -> str:
    """Stable hash of a JSON body, for idempotency keys (key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _encode_cursor(seq: float) -> str:
    return base64.urlsafe_b64encode(f"v1:{int(seq)}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, seq = text.split(":")
        if version != "v1":
            raise ValueError(version)
        return int(seq)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidCursor("invalid cursor") from exc


def xread_options(block_ms: int, count: int) -> dict[str, int]:
    """XREAD's count, and its block time when asked to wait (capped at MAX_BLOCK_MS)."""
    return {"count": count, "block": min(block_ms, MAX_BLOCK_MS)} if block_ms > 0 else {"count": count}


def parse_event_reply(reply: list | None) -> list[tuple[str, str, dict]]:
    """An XREAD reply on one event stream as (id, event, data) tuples."""
    if not reply:
        return []
    _, entries = reply[0]
    return [(entry_id, fields["event"], json.loads(fields["data"])) for entry_id, fields in entries]


def require_text_client(client: redis.Redis, user: str) -> None:
    """Every reader of the store's keys expects str values: refuse a bytes client at construction."""
    if not client.get_connection_kwargs().get("decode_responses"):
        raise ValueError(f"{user} needs a Redis client with decode_responses=True")


class JobStore:
    """All job state in Redis; methods are atomic where two processes may race."""

    def __init__(self, redis: redis.Redis, prefix: str = "clr") -> None:
        require_text_client(redis, "JobStore")
        self.redis = redis
        self.prefix = prefix
        self._transition = redis.register_script(scripts.TRANSITION_LUA)
        self._claim = redis.register_script(scripts.CLAIM_LUA)
        self._renew = redis.register_script(scripts.RENEW_LUA)
        self._release = redis.register_script(scripts.RELEASE_LUA)
        self._progress = redis.register_script(scripts.PROGRESS_LUA)
        self._restamp_stale = redis.register_script(scripts.RESTAMP_STALE_LUA)
        self._idem_begin = redis.register_script(scripts.IDEM_BEGIN_LUA)
        self._idem_finish = redis.register_script(scripts.IDEM_FINISH_LUA)
        self._idem_abort = redis.register_script(scripts.IDEM_ABORT_LUA)
        self._delete = redis.register_script(scripts.DELETE_LUA)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """A store on its own connection pool; short timeouts and retries so an outage is a fast 503."""
        client = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=2,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        return cls(client, settings.key_prefix)

    # -- keys ----------------------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def job_key(self, job_id: str) -> str:
        return self._k("job", job_id)

    def events_key(self, job_id: str) -> str:
        return self._k("job", job_id, "events")

    def _lease_key(self, job_id: str) -> str:
        return self._k("lease", job_id)

    def _state_keys(self) -> list[str]:
        return [self._k("state", s.value) for s in JobState]

    def _owner_key(self, owner: str, kind: str | None = None) -> str:
        return self._k("owner", owner) if kind is None else self._k("owner", owner, kind)

    def _idem_key(self, owner: str, key: str) -> str:
        owner_hash = hashlib.sha256(owner.encode()).hexdigest()[:16]
        return self._k("idem", owner_hash, hashlib.sha256(key.encode()).hexdigest())

    # -- records -------------------------------------------------------------------------------------

    @unavailable_on_redis_errors
    def create(self, kind: str, spec: dict, owner: str, *, queue: str | None = None) -> dict:
        """Store a new queued job; the caller then sends the task (by name) with the returned id.

        `queue` (the Celery queue it is sent to) lets a sweeper re-send a recovered job to the same queue.
        """
        job_id = "job_" + secrets.token_hex(8)
        now = time.time()
        seq = self.redis.incr(self._k("seq"))
        record = {
            "id": job_id,
            "kind": kind,
            "owner": owner,
            "spec": json.dumps(spec),
            "state": JobState.QUEUED.value,
            "created_at": repr(now),
            "seq": seq,
            "deliveries": 0,
            "cancel_requested": 0,
            "queue": queue or "",
        }
        event = json.dumps({"state": JobState.QUEUED.value, "previous": None, "at": now})
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.job_key(job_id), mapping=record)
        pipe.zadd(self._owner_key(owner), {job_id: seq})
        pipe.zadd(self._owner_key(owner, kind), {job_id: seq})
        pipe.sadd(self._k("state", JobState.QUEUED.value), job_id)
        pipe.xadd(self.events_key(job_id), {"event": "state", "data": event}, maxlen=EVENTS_MAXLEN)
        pipe.execute()
        return self._decode(record)

    @unavailable_on_redis_errors
    def get(self, job_id: str) -> dict | None:
        """The full job record, or None. Timestamps are Unix seconds (float) or None."""
        raw = self.redis.hgetall(self.job_key(job_id))
        return self._decode(raw) if raw else None

    def _require(self, job_id: str) -> dict:
        record = self.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    @staticmethod
    def _decode(raw: dict[str, Any]) -> dict:
        def number(name: str) -> float | None:
            value = raw.get(name)
            return float(value) if value not in (None, "") else None

        record: dict[str, Any] = {
            "id": raw["id"],
            "kind": raw["kind"],
            "owner": raw["owner"],
            "state": raw["state"],
            "created_at": number("created_at"),
            "started_at": number("started_at"),
            "finished_at": number("finished_at"),
            "error": raw.get("error") or None,
            "queue": raw.get("queue") or None,
            "deliveries": int(raw.get("deliveries") or 0),
            "crashes": int(raw.get("crashes") or 0),
            "cancel_requested": str(raw.get("cancel_requested", "0")) == "1",
            "artifacts": {},
        }
        for name in _JSON_FIELDS:
            value = raw.get(name)
            record[name] = json.loads(value) if value else None
        record["metrics"] = record["metrics"] or {}
        for field, value in raw.items():
            if field.startswith(_ARTIFACT):
                record["artifacts"][field[len(_ARTIFACT) :]] = json.loads(value)
        return record

    @unavailable_on_redis_errors
    def list(
        self,
        owner: str,
        *,
        kind: str | None = None,
        state: str | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> tuple[list[dict], str | None]:
        """The owner's jobs, newest first, and the cursor of the next page (None on the last page).

        Pages are keyed by a creation sequence number, not an offset, so jobs created while a client
        pages through do not shift what it sees. The state filter is applied while scanning.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        key = self._owner_key(owner, kind)
        upper = "+inf" if cursor is None else f"({_decode_cursor(cursor)}"
        batch = limit + 1 if state is None else max(4 * limit, 100)
        found: list[tuple[float, dict]] = []
        while len(found) <= limit:
            rows = self.redis.zrevrangebyscore(key, upper, "-inf", start=0, num=batch, withscores=True)
            if not rows:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id, _ in rows:
                pipe.hgetall(self.job_key(job_id))
            for (_, seq), raw in zip(rows, pipe.execute(), strict=True):
                if raw and (state is None or raw["state"] == state):
                    found.append((seq, self._decode(raw)))
            if len(rows) < batch:
                break
            upper = f"({int(rows[-1][1])}"
        if len(found) > limit:
            return [r for _, r in found[:limit]], _encode_cursor(found[limit - 1][0])
        return [r for _, r in found], None

    # -- state machine -------------------------------------------------------------------------------

    def _run_transition(
        self, job_id: str, mapping: dict[str, str], fields: dict[str, Any], *, require_no_lease: bool = False
    ) -> tuple[str, str, str]:
        keys = [self.job_key(job_id), self.events_key(job_id), self._lease_key(job_id), *self._state_keys(),
                self._k("durations")]
        args = [
            job_id,
            json.dumps(mapping),
            repr(time.time()),
            json.dumps(fields),
            "1" if require_no_lease else "0",
            json.dumps([s.value for s in FINAL_STATES]),
            EVENTS_MAXLEN,
            json.dumps(DURATION_BUCKETS),
        ]
        status, current, target = self._transition(keys=keys, args=args)
        if status == "missing":
            raise JobNotFound(job_id)
        return status, current, target

    @unavailable_on_redis_errors
    def transition(
        self, job_id: str, to: JobState, *, error: str | None = None, result: dict | None = None
    ) -> dict:
        """Move the job to `to` if the state machine allows it from its current state (atomic)."""
        to = JobState(to)
        mapping = {s.value: to.value for s, targets in TRANSITIONS.items() if to in targets}
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error"] = error.strip().splitlines()[0][:500] if error.strip() else "error"
        if result is not None:
            fields["result"] = json.dumps(result)
        status, current, _ = self._run_transition(job_id, mapping, fields)
        if status != "ok":
            raise InvalidTransition(job_id, current, to.value)
        return self._require(job_id)

    @unavailable_on_redis_errors
    def request_cancel(self, job_id: str) -> dict:
        """Record the cancel intent: a queued job is cancelled at once, a running one stops at its next batch.

        The intent lives in the record (not in a Celery revoke, which solo pools ignore and which is
        lost when no worker is online). Asking twice while cancelling is not an error.
        """
        mapping = {
            JobState.QUEUED.value: JobState.CANCELLED.value,
            JobState.RUNNING.value: JobState.CANCELLING.value,
            JobState.CANCELLING.value: JobState.CANCELLING.value,
        }
        status, current, _ = self._run_transition(job_id, mapping, {"cancel_requested": 1})
        if status != "ok":
            raise InvalidTransition(job_id, current, JobState.CANCELLED.value)
        return self._require(job_id)

    @unavailable_on_redis_errors
    def delete(self, job: dict) -> None:
        """Remove a finished job's record, event log and index entries, atomically (its files are the
        caller's). Raises JobNotFound, or JobNotFinished while it is queued, running or still leased."""
        job_id = job["id"]
        keys = [self.job_key(job_id), self.events_key(job_id), self._lease_key(job_id),
                self._owner_key(job["owner"]), self._owner_key(job["owner"], job["kind"]), *self._state_keys()]
        status, current = self._delete(keys=keys, args=[job_id, json.dumps([s.value for s in FINAL_STATES])])
        if status == "missing":
            raise JobNotFound(job_id)
        if status != "ok":
            raise JobNotFinished(job_id, current, leased=status == "leased")

    @unavailable_on_redis_errors
    def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was asked for; the training loop polls this every batch."""
        return self.redis.hget(self.job_key(job_id), "cancel_requested") == "1"

    @unavailable_on_redis_errors
    def recover_lapsed(self, job_id: str) -> str | None:
        """Hand back a running job whose lease lapsed (its worker died or hung); returns the new state.

        running -> queued (the caller re-sends the task; the next worker resumes from the checkpoint);
        cancelling -> cancelled (the cancel is honoured, nobody is running it). The lease check and the
        transition are one atomic step, so of several sweepers only one recovers a job.
        """
        mapping = {
            JobState.RUNNING.value: JobState.QUEUED.value,
            JobState.CANCELLING.value: JobState.CANCELLED.value,
        }
        try:
            status, _, target = self._run_transition(job_id, mapping, {}, require_no_lease=True)
        except JobNotFound:
            return None
        return target if status == "ok" else None

    # -- progress, artifacts, events -----------------------------------------------------------------

    @unavailable_on_redis_errors
    def update_progress(
        self, job_id: str, progress: dict, metrics: dict | None = None, *, holder: str | None = None
    ) -> bool:
        """Store the latest progress (and metrics) and log a "progress" event; the caller throttles.

        With `holder` the write happens only while that worker holds the job's lease, checked inside
        Redis in the same step: a worker frozen between its own lease check and this write (SIGSTOP,
        a VM pause) cannot overwrite the progress of the worker that took the job over. Returns
        whether it wrote.
        """
        fields = {"progress": json.dumps(progress)}
        if metrics is not None:
            fields["metrics"] = json.dumps(metrics)
        data = json.dumps({"progress": progress, "metrics": metrics, "at": time.time()})
        if holder is not None:
            keys = [self._lease_key(job_id), self.job_key(job_id), self.events_key(job_id)]
            return bool(self._progress(keys=keys, args=[holder, json.dumps(fields), data, EVENTS_MAXLEN]))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.job_key(job_id), mapping=fields)
        pipe.xadd(self.events_key(job_id), {"event": "progress", "data": data}, maxlen=EVENTS_MAXLEN)
        pipe.execute()
        return True

    @unavailable_on_redis_errors
    def add_artifact(
        self, job_id: str, name: str, path: str, content_type: str, size: int | None = None
    ) -> None:
        """Register a file of the job's run folder; `path` is relative to that folder."""
        entry = {"path": path, "content_type": content_type, "size": size}
        self.redis.hset(self.job_key(job_id), _ARTIFACT + name, json.dumps(entry))

    @unavailable_on_redis_errors
    def append_event(self, job_id: str, event: str, data: dict) -> str:
        """Append to the job's event log (a Redis Stream, so SSE clients can resume by id)."""
        return self.redis.xadd(
            self.events_key(job_id), {"event": event, "data": json.dumps(data)}, maxlen=EVENTS_MAXLEN
        )

    @unavailable_on_redis_errors
    def read_events(
        self, job_id: str, after: str = "0", block_ms: int = 0, count: int = 100
    ) -> list[tuple[str, str, dict]]:
        """Events after the id `after` ("0": from the start), as (id, event, data).

        With block_ms > 0 waits up to that long (capped at 5 s) for the first new event.
        """
        reply = self.redis.xread({self.events_key(job_id): after}, **xread_options(block_ms, count))
        return parse_event_reply(reply)

    # -- idempotency keys (IETF draft "The Idempotency-Key HTTP Header Field") ------------------------

    @unavailable_on_redis_errors
    def idempotency_begin(
        self, owner: str, key: str, body_hash: str, ttl: int = 86400, in_flight_ttl: int = 60
    ) -> tuple[str, dict | None]:
        """Reserve a key: "new" (go on), "replay" (first answer), "mismatch" (422) or "in_flight" (409).

        The reservation expires after `in_flight_ttl` seconds so a crashed request does not block its
        key for a day; `ttl` is how long a finished answer is kept (set by `idempotency_finish`).
        """
        status, response = self._idem_begin(
            keys=[self._idem_key(owner, key)], args=[body_hash, min(ttl, in_flight_ttl)]
        )
        return status, (json.loads(response) if status == "replay" else None)

    @unavailable_on_redis_errors
    def idempotency_finish(
        self, owner: str, key: str, body_hash: str, response: dict, ttl: int = 86400
    ) -> None:
        """Store the answer a retry with the same key and body will get."""
        self._idem_finish(keys=[self._idem_key(owner, key)], args=[body_hash, json.dumps(response), ttl])

    @unavailable_on_redis_errors
    def idempotency_abort(self, owner: str, key: str, body_hash: str) -> None:
        """Drop a reservation whose request failed before creating anything, so a retry may proceed."""
        self._idem_abort(keys=[self._idem_key(owner, key)], args=[body_hash])

    # -- leases: a job runs in at most one worker at a time -------------------------------------------

    @unavailable_on_redis_errors
    def claim(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Take the job's lease if nobody holds it; counts a delivery when it succeeds.

        Also counts a crash when the previous delivery did not `release` (its worker died or hung), so
        the delivery cap fails only jobs that keep killing their worker, not ones handed back cleanly.
        """
        ms = max(1, int(lease_seconds * 1000))
        return bool(self._claim(keys=[self._lease_key(job_id), self.job_key(job_id)], args=[worker_id, ms]))

    @unavailable_on_redis_errors
    def renew(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Extend the lease; False if it lapsed or another worker holds it (then stop training)."""
        ms = max(1, int(lease_seconds * 1000))
        return bool(self._renew(keys=[self._lease_key(job_id)], args=[worker_id, ms]))

    @unavailable_on_redis_errors
    def release(self, job_id: str, worker_id: str) -> None:
        """Give the lease up, only if this worker still holds it; marks the delivery as ended cleanly."""
        self._release(keys=[self._lease_key(job_id), self.job_key(job_id)], args=[worker_id])

    @unavailable_on_redis_errors
    def lease_holder(self, job_id: str) -> str | None:
        return self.redis.get(self._lease_key(job_id))

    @unavailable_on_redis_errors
    def running_jobs(self) -> list[str]:
        """Jobs that some worker should be running (running or cancelling), for the sweeper."""
        return sorted(
            self.redis.sunion(self._k("state", JobState.RUNNING.value), self._k("state", "cancelling"))
        )

    # -- sends: a queued job whose message never reached (or fell out of) its queue is sent again --------

    @unavailable_on_redis_errors
    def mark_sent(self, job_id: str) -> None:
        """Stamp `sent_at` after the job's task was sent (API submit, sweeper re-send, hand-back)."""
        self.redis.hset(self.job_key(job_id), "sent_at", repr(time.time()))

    @unavailable_on_redis_errors
    def stale_queued(self, queue: str, older_than: float) -> list[str]:
        """Queued jobs of `queue` with no lease, not sent (or created) within `older_than` seconds, and
        whose id is in no message of that queue or of the broker's unacknowledged set: the API died
        between storing and sending them, or their message was lost. Callers re-send them after
        `restamp_stale` (which makes one of several sweepers the one that sends)."""
        ids = sorted(self.redis.smembers(self._k("state", JobState.QUEUED.value)))
        if not ids:
            return []
        cutoff = time.time() - older_than
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.job_key(job_id), "queue", "created_at", "sent_at")
            pipe.exists(self._lease_key(job_id))
        replies = pipe.execute()
        candidates = []
        for job_id, (job_queue, created, sent), leased in zip(ids, replies[::2], replies[1::2], strict=True):
            last = float(sent or created or 0)
            if (job_queue or "") == queue and not leased and last < cutoff:
                candidates.append(job_id)
        if not candidates:
            return []
        broker = broker_key_prefix(self.prefix)
        waiting = "\n".join(self.redis.lrange(broker + queue, 0, -1))  # argsrepr names the job id
        waiting += "\n".join(self.redis.hvals(broker + "unacked"))
        return [job_id for job_id in candidates if job_id not in waiting]

    @unavailable_on_redis_errors
    def restamp_stale(self, job_id: str, older_than: float) -> bool:
        """Atomically re-check that the job is still queued, unleased and stale, and stamp `sent_at`."""
        keys = [self.job_key(job_id), self._lease_key(job_id)]
        return bool(self._restamp_stale(keys=keys, args=[repr(time.time()), older_than]))

    @unavailable_on_redis_errors
    def counts_by_state(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for key in self._state_keys():
            pipe.scard(key)
        return {s.value: n for s, n in zip(JobState, pipe.execute(), strict=True)}

    @unavailable_on_redis_errors
    def duration_histograms(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every finished job's run time so far, per (kind, final state), as recorded by `transition`:
        {"buckets": [cumulative count per DURATION_BUCKETS bound], "count": n, "sum": seconds}."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for field, value in self.redis.hgetall(self._k("durations")).items():
            kind, state, part = field.rsplit("|", 2)
            entry = out.setdefault((kind, state), {"buckets": [0] * len(DURATION_BUCKETS), "count": 0,
                                                   "sum": 0.0})
            if part == "count":
                entry["count"] = int(value)
            elif part == "sum":
                entry["sum"] = float(value)
            elif part.startswith("le") and 1 <= int(part[2:]) <= len(DURATION_BUCKETS):
                entry["buckets"][int(part[2:]) - 1] = int(value)
        return out

    @unavailable_on_redis_errors
    def queue_depth(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu keeps each queue as a Redis list)."""
        return int(self.redis.llen(broker_key_prefix(self.prefix) + queue))

    def ping(self) -> bool:
        """True when Redis answers; never raises."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    @unavailable_on_redis_errors
    def delete_all(self) -> int:
        """Remove every key under this prefix (tests; never on a shared prefix)."""
        removed = 0
        for key in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000):
            removed += self.redis.delete(key)
        return removed
