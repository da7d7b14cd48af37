"""Job records and their transitions: create, read, list, move through the one state machine, delete.

Every transition is one atomic Lua script (`jobs.scripts`), so the API and the workers, racing, never
break a rule: which transitions exist, that final states never change, that a job's run time is counted
once in the durations histogram.

Every transition also announces itself here, to the job's webhook when it asked for one (`notices`, a
`jobs.webhooks.JobNotices` given by whoever builds the store): the API, a training worker, a lease
keeper or a sweeper, none of them can change a job's state and forget to tell its receiver.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import secrets
import time
from typing import TYPE_CHECKING, Any

import redis

from jobs import scripts
from jobs.events import EVENTS_MAXLEN
from jobs.keys import JobKeys
from jobs.redis_errors import unavailable_on_redis_errors
from jobs.states import (
    FINAL_STATES,
    TRANSITIONS,
    InvalidTransition,
    JobNotFinished,
    JobNotFound,
    JobState,
    LeaseFenced,
)
from jobs.turns import Turns

if TYPE_CHECKING:
    from jobs.webhooks import JobNotices

# Upper bounds (seconds) of the job-duration histogram kept in Redis (`{p}:durations`); +Inf is the count.
DURATION_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)

_JSON_FIELDS = ("spec", "progress", "metrics", "result")
_ARTIFACT = "artifact:"


# The webhook's `reason` when a sweeper finds a job's lease lapsed (queued again, or a cancel honoured).
LAPSED = "lease lapsed: its worker died or hung"


class InvalidCursor(ValueError):
    """A list cursor that this store did not hand out."""


def _pairs(flat: builtins.list[str]) -> dict[str, str]:
    """A hash as a Lua script returns it (HGETALL: field, value, field, value, ...)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


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


class JobRecords:
    """The job hash, its owner and state indexes, and the transitions between states."""

    def __init__(self, client: redis.Redis, keys: JobKeys, notices: JobNotices | None = None,
                 turns: Turns | None = None) -> None:
        self.redis, self.keys, self.notices = client, keys, notices
        self._transition_script = client.register_script(scripts.TRANSITION_LUA)
        self._delete_script = client.register_script(scripts.DELETE_LUA)
        self._add_artifact_script = client.register_script(scripts.ADD_ARTIFACT_LUA)
        self.turns = turns or Turns(client, keys)

    @unavailable_on_redis_errors
    def create(
        self, kind: str, spec: dict, owner: str, *, queue: str | None = None,
        idempotency_key: str | None = None, idempotency_ttl: int = 86400, wait_turn: bool = False,
    ) -> dict:
        """Store a new queued job; the caller then sends the task (by name) with the returned id.

        `queue` (the Celery queue it is sent to) lets a sweeper re-send a recovered job to the same queue.
        `wait_turn` (the API's submits) puts the job in its owner's waiting list in the same transaction,
        instead of the caller sending it: `jobs.turns` dispatches it when its owner's turn comes.
        `idempotency_key` (reserved by `IdempotencyKeys.begin`) records the job id under the key in the
        same transaction, so an API that dies right after this step cannot make a retry create a second
        job (the retry answers with this one; the sweeper sends it if it was never sent).
        """
        job_id = "job_" + secrets.token_hex(8)
        now = time.time()
        seq = self.redis.incr(self.keys.seq())
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
            "notice_seq": 1,  # the `queued` webhook's sequence; each transition counts it up
        }
        event = json.dumps({"state": JobState.QUEUED.value, "previous": None, "at": now})
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.job(job_id), mapping=record)
        pipe.zadd(self.keys.owner(owner), {job_id: seq})
        pipe.zadd(self.keys.owner(owner, kind), {job_id: seq})
        pipe.sadd(self.keys.state(JobState.QUEUED.value), job_id)
        pipe.sadd(self.keys.active(owner), job_id)
        pipe.xadd(self.keys.events(job_id), {"event": "state", "data": event}, maxlen=EVENTS_MAXLEN)
        if idempotency_key is not None:
            reservation = self.keys.idempotency(owner, idempotency_key)
            pipe.hset(reservation, "job_id", job_id)
            pipe.expire(reservation, idempotency_ttl)
        if wait_turn:
            self.turns.push(pipe, job_id, owner, queue or "")
        pipe.execute()
        return self.decode(record)

    @unavailable_on_redis_errors
    def get(self, job_id: str) -> dict | None:
        """The full job record, or None. Timestamps are Unix seconds (float) or None."""
        raw = self.redis.hgetall(self.keys.job(job_id))
        return self.decode(raw) if raw else None

    def _require(self, job_id: str) -> dict:
        record = self.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    @staticmethod
    def decode(raw: dict[str, Any]) -> dict:
        """A record from its Redis hash (strings), as `get` returns it."""
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
            "run_seconds": float(raw.get("run_seconds") or 0.0),
            "cancel_requested": str(raw.get("cancel_requested", "0")) == "1",
            "notice_seq": int(raw.get("notice_seq") or 0),
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
        key = self.keys.owner(owner, kind)
        upper = "+inf" if cursor is None else f"({_decode_cursor(cursor)}"
        batch = limit + 1 if state is None else max(4 * limit, 100)
        found: list[tuple[float, dict]] = []
        while len(found) <= limit:
            rows = self.redis.zrevrangebyscore(key, upper, "-inf", start=0, num=batch, withscores=True)
            if not rows:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id, _ in rows:
                pipe.hgetall(self.keys.job(job_id))
            for (_, seq), raw in zip(rows, pipe.execute(), strict=True):
                if raw and (state is None or raw["state"] == state):
                    found.append((seq, self.decode(raw)))
            if len(rows) < batch:
                break
            upper = f"({int(rows[-1][1])}"
        if len(found) > limit:
            return [r for _, r in found[:limit]], _encode_cursor(found[limit - 1][0])
        return [r for _, r in found], None


    def _run_transition(
        self, job_id: str, mapping: dict[str, str], fields: dict[str, Any], *, require_no_lease: bool = False,
        holder: str | None = None, why: str | None = None,
    ) -> tuple[str, str, str]:
        """Run TRANSITION_LUA; a step that changed the state is announced (`notices`) before returning."""
        owner = self.redis.hget(self.keys.job(job_id), "owner") or ""  # never changes: safe to read first
        keys = [self.keys.job(job_id), self.keys.events(job_id), self.keys.lease(job_id), *self.keys.states(),
                self.keys.durations(), self.keys.finished(), self.keys.active(owner)]
        args = [
            job_id,
            json.dumps(mapping),
            repr(time.time()),
            json.dumps(fields),
            "1" if require_no_lease else "0",
            json.dumps([s.value for s in FINAL_STATES]),
            EVENTS_MAXLEN,
            json.dumps(DURATION_BUCKETS),
            holder or "",
        ]
        status, current, target, *changed = self._transition_script(keys=keys, args=args)
        if status == "missing":
            raise JobNotFound(job_id)
        if changed and self.notices is not None:
            flat = changed[0]
            self.notices.changed(self.decode(_pairs(flat)), current, why)
        return status, current, target

    @unavailable_on_redis_errors
    def transition(
        self, job_id: str, to: JobState, *, error: str | None = None, result: dict | None = None,
        holder: str | None = None, why: str | None = None,
    ) -> dict:
        """Move the job to `to` if the state machine allows it from its current state (atomic).

        A worker passes `holder` (its worker id): the step is then refused with LeaseFenced when the
        lease names another worker, or nobody holds it and the job is back in the queue (checked in the
        same atomic script). `why`: a one-line cause for the webhook when `error` is not it (a hand-back).
        """
        to = JobState(to)
        mapping = {s.value: to.value for s, targets in TRANSITIONS.items() if to in targets}
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error"] = error.strip().splitlines()[0][:500] if error.strip() else "error"
        if result is not None:
            fields["result"] = json.dumps(result)
        status, current, _ = self._run_transition(job_id, mapping, fields, holder=holder, why=why)
        if status == "fenced":
            raise LeaseFenced(job_id, current, to.value, holder or "")
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
        record = self._require(job_id)
        if current == JobState.QUEUED.value and record["queue"]:  # no longer waiting its turn
            self.turns.forget(job_id, record["owner"], record["queue"])
        return record

    @unavailable_on_redis_errors
    def delete(self, job: dict) -> None:
        """Remove a finished job's record, event log and index entries, atomically (its files are the
        caller's). Raises JobNotFound, or JobNotFinished while it is queued, running or still leased."""
        job_id = job["id"]
        keys = [self.keys.job(job_id), self.keys.events(job_id), self.keys.lease(job_id),
                self.keys.owner(job["owner"]), self.keys.owner(job["owner"], job["kind"]), self.keys.finished(),
                *self.keys.states()]
        status, current, *gone = self._delete_script(keys=keys,
                                                     args=[job_id, json.dumps([s.value for s in FINAL_STATES])])
        if status == "missing":
            raise JobNotFound(job_id)
        if status != "ok":
            raise JobNotFinished(job_id, current, leased=status == "leased")
        if gone and self.notices is not None:  # API delete and retention alike
            self.notices.deleted(self.decode(_pairs(gone[0])))

    def notify(self, record: dict, event: str, recommendation: dict | None = None) -> None:
        """Announce what is no transition: a job just sent to its queue (`queued`), `progress`, a train job's
        own range test done. Never raises; a store built without notices announces nothing."""
        if self.notices is not None:
            self.notices.noticed(record, event, recommendation)

    @unavailable_on_redis_errors
    def active_count(self, owner: str) -> int:
        """How many of the owner's jobs are not final yet (the per-key cap's count)."""
        return int(self.redis.scard(self.keys.active(owner)))

    @unavailable_on_redis_errors
    def finished_before(self, cutoff: float, limit: int = 100) -> builtins.list[str]:
        """Ids of jobs that finished before `cutoff` (Unix seconds), oldest first: retention's candidates."""
        return builtins.list(self.redis.zrangebyscore(self.keys.finished(), "-inf", f"({cutoff}", start=0, num=limit))

    @unavailable_on_redis_errors
    def forget_finished(self, job_id: str) -> None:
        """Drop an id from the finished index (its record is already gone)."""
        self.redis.zrem(self.keys.finished(), job_id)

    @unavailable_on_redis_errors
    def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was asked for; the training loop polls this every batch."""
        return self.redis.hget(self.keys.job(job_id), "cancel_requested") == "1"

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
            status, _, target = self._run_transition(job_id, mapping, {}, require_no_lease=True, why=LAPSED)
        except JobNotFound:
            return None
        return target if status == "ok" else None


    @unavailable_on_redis_errors
    def add_artifact(
        self, job_id: str, name: str, path: str, content_type: str, size: int | None = None,
        *, holder: str | None = None,
    ) -> bool:
        """Register a file of the job's run folder; `path` is relative to that folder.

        With `holder`, only while that worker holds the job's lease (atomic); False when refused.
        """
        entry = {"path": path, "content_type": content_type, "size": size}
        return bool(self._add_artifact_script(
            keys=[self.keys.lease(job_id), self.keys.job(job_id)],
            args=[holder or "", _ARTIFACT + name, json.dumps(entry)],
        ))


    @unavailable_on_redis_errors
    def counts_by_state(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys.states():
            pipe.scard(key)
        return {s.value: n for s, n in zip(JobState, pipe.execute(), strict=True)}

    @unavailable_on_redis_errors
    def duration_histograms(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every finished job's run time so far, per (kind, final state), as recorded by `transition`:
        {"buckets": [cumulative count per DURATION_BUCKETS bound], "count": n, "sum": seconds}."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for field, value in self.redis.hgetall(self.keys.durations()).items():
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
