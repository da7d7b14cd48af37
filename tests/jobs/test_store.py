"""JobStore against a real Redis: the state machine, listing, idempotency, events, leases."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
import redis

from jobs.idempotency import body_hash
from jobs.records import InvalidCursor
from jobs.redis_errors import StoreUnavailable
from jobs.states import FINAL_STATES, TRANSITIONS, InvalidTransition, JobNotFound, JobState, LeaseFenced
from jobs.store import JobStore
from tests.helpers import mark_running

# How to reach each state from queued, through allowed transitions only.
PATHS: dict[JobState, list[JobState]] = {
    JobState.QUEUED: [],
    JobState.RUNNING: [JobState.RUNNING],
    JobState.CANCELLING: [JobState.RUNNING, JobState.CANCELLING],
    JobState.SUCCEEDED: [JobState.RUNNING, JobState.SUCCEEDED],
    JobState.FAILED: [JobState.FAILED],
    JobState.CANCELLED: [JobState.CANCELLED],
}


def owner() -> str:
    return "owner-" + secrets.token_hex(4)


def job_in(store: JobStore, state: JobState, kind: str = "train", who: str | None = None) -> str:
    # parked: a session worker's sweeper re-sends a running job whose lease lapsed to the job's queue
    job_id = store.records.create(kind, {"epochs": 1}, who or owner(), queue="parked")["id"]
    for step in PATHS[state]:
        store.records.transition(job_id, step)
    return job_id


@pytest.mark.parametrize("start", list(JobState))
@pytest.mark.parametrize("target", list(JobState))
def test_transition_allowed_exactly_as_the_state_machine_says(
    store: JobStore, start: JobState, target: JobState
) -> None:
    job_id = job_in(store, start)
    if target in TRANSITIONS[start]:
        assert store.records.transition(job_id, target)["state"] == target
    else:
        with pytest.raises(InvalidTransition):
            store.records.transition(job_id, target)
        assert store.records.get(job_id)["state"] == start


def test_final_states_have_no_way_out_and_refuse_cancel(store: JobStore) -> None:
    for final in FINAL_STATES:
        assert TRANSITIONS[final] == frozenset()
        job_id = job_in(store, final)
        before = store.records.get(job_id)
        with pytest.raises(InvalidTransition):
            store.records.request_cancel(job_id)
        assert store.records.get(job_id) == before


def test_concurrent_transitions_only_one_wins(store: JobStore) -> None:
    for _ in range(20):
        job_id = job_in(store, JobState.RUNNING)
        barrier = threading.Barrier(2)
        winners: list[JobState] = []

        def attempt(
            to: JobState, job_id: str = job_id, barrier: threading.Barrier = barrier, winners: list = winners
        ) -> None:
            barrier.wait()
            try:
                store.records.transition(job_id, to)
                winners.append(to)
            except InvalidTransition:
                pass

        threads = [threading.Thread(target=attempt, args=(s,)) for s in (JobState.SUCCEEDED, JobState.FAILED)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        assert store.records.get(job_id)["state"] == winners[0]


def test_transitions_stamp_times_store_reason_and_log_state_events(store: JobStore) -> None:
    job = store.records.create("train", {"epochs": 3}, owner(), queue="gpu")
    assert job["state"] == "queued" and job["started_at"] is None and job["queue"] == "gpu"
    running = store.records.transition(job["id"], JobState.RUNNING)
    assert running["started_at"] >= job["created_at"] and running["finished_at"] is None
    reason = "loss diverged at step 3, lr 9\nmore"
    failed = store.records.transition(job["id"], JobState.FAILED, error=reason, result={"a": 1})
    assert failed["error"] == "loss diverged at step 3, lr 9"
    assert failed["result"] == {"a": 1} and failed["finished_at"] >= failed["started_at"]
    states = [(d["previous"], d["state"]) for _, e, d in store.events.read(job["id"]) if e == "state"]
    assert states == [(None, "queued"), ("queued", "running"), ("running", "failed")]


def test_unknown_job_is_not_found(store: JobStore) -> None:
    assert store.records.get("job_0000000000000000") is None
    with pytest.raises(JobNotFound):
        store.records.transition("job_0000000000000000", JobState.RUNNING)
    with pytest.raises(JobNotFound):
        store.records.request_cancel("job_0000000000000000")


def test_cancel_of_queued_job_is_final_at_once(store: JobStore) -> None:
    job_id = job_in(store, JobState.QUEUED)
    record = store.records.request_cancel(job_id)
    assert record["state"] == "cancelled" and record["cancel_requested"] and record["finished_at"]


def test_cancel_of_running_job_asks_it_to_stop_and_may_be_repeated(store: JobStore) -> None:
    job_id = job_in(store, JobState.RUNNING)
    assert not store.records.cancel_requested(job_id)
    assert store.records.request_cancel(job_id)["state"] == "cancelling"
    assert store.records.request_cancel(job_id)["state"] == "cancelling"
    assert store.records.cancel_requested(job_id)
    assert store.records.transition(job_id, JobState.CANCELLED)["state"] == "cancelled"


def test_progress_metrics_and_artifacts_are_stored_and_logged(store: JobStore) -> None:
    job_id = job_in(store, JobState.RUNNING)
    store.events.update_progress(job_id, {"epoch": 1, "epochs": 2}, {"train_loss": 0.5})
    store.records.add_artifact(job_id, "history.png", "history.png", "image/png", 123)
    record = store.records.get(job_id)
    assert record["progress"] == {"epoch": 1, "epochs": 2} and record["metrics"] == {"train_loss": 0.5}
    entry = {"path": "history.png", "content_type": "image/png", "size": 123}
    assert record["artifacts"] == {"history.png": entry}
    _, event, data = store.events.read(job_id)[-1]
    assert event == "progress" and data["metrics"] == {"train_loss": 0.5}


def test_list_pages_newest_first_and_filters(store: JobStore) -> None:
    who = owner()
    ids = [store.records.create("train" if i % 2 else "range_test", {}, who)["id"] for i in range(7)]
    store.records.create("train", {}, owner())  # another owner's job never shows
    store.records.transition(ids[1], JobState.RUNNING)
    seen, cursor = [], None
    page, cursor = store.records.list(who, limit=3)
    seen += [j["id"] for j in page]
    store.records.create("train", {}, who)  # a job created mid-way does not shift the pages
    while cursor:
        page, cursor = store.records.list(who, limit=3, cursor=cursor)
        seen += [j["id"] for j in page]
    assert seen == ids[::-1]
    trains, cursor = store.records.list(who, kind="train", limit=10)
    assert cursor is None and [j["id"] for j in trains][1:] == [ids[5], ids[3], ids[1]]
    running, _ = store.records.list(who, state="running")
    assert [j["id"] for j in running] == [ids[1]]
    page, cursor = store.records.list(who, state="queued", limit=2)
    page2, cursor2 = store.records.list(who, state="queued", limit=10, cursor=cursor)
    assert len(page) == 2 and cursor2 is None and len(page) + len(page2) == 7
    with pytest.raises(InvalidCursor):
        store.records.list(who, cursor="not-a-cursor")


def test_idempotency_new_replay_mismatch_in_flight(store: JobStore) -> None:
    who, key = owner(), "key-" + secrets.token_hex(4)
    first, other = body_hash({"a": 1, "b": 2}), body_hash({"a": 2})
    assert first == body_hash({"b": 2, "a": 1})
    assert store.idempotency.begin(who, key, first) == ("new", None)
    assert store.idempotency.begin(who, key, first) == ("in_flight", None)
    store.idempotency.finish(who, key, first, {"id": "job_1"})
    assert store.idempotency.begin(who, key, first) == ("replay", {"id": "job_1"})
    assert store.idempotency.begin(who, key, other) == ("mismatch", None)
    assert store.idempotency.begin(owner(), key, other) == ("new", None)  # keys are per owner


def test_idempotency_abort_frees_the_key(store: JobStore) -> None:
    who, key, h = owner(), "k", body_hash({})
    assert store.idempotency.begin(who, key, h)[0] == "new"
    store.idempotency.abort(who, key, h)
    assert store.idempotency.begin(who, key, h)[0] == "new"


def test_events_resume_after_an_id_and_block_for_new_ones(store: JobStore) -> None:
    job_id = job_in(store, JobState.QUEUED)
    first = store.events.append(job_id, "progress", {"n": 1})
    store.events.append(job_id, "progress", {"n": 2})
    after = store.events.read(job_id, after=first)
    assert [d["n"] for _, _, d in after] == [2]
    last = after[-1][0]
    assert store.events.read(job_id, after=last) == []
    threading.Timer(0.2, store.events.append, args=(job_id, "progress", {"n": 3})).start()
    t0 = time.monotonic()
    got = store.events.read(job_id, after=last, block_ms=3000)
    assert [d["n"] for _, _, d in got] == [3] and time.monotonic() - t0 < 2


def test_lease_claim_renew_release_and_expiry(store: JobStore) -> None:
    job_id = job_in(store, JobState.QUEUED)
    assert store.leases.claim(job_id, "w1", 5)
    assert not store.leases.claim(job_id, "w2", 5)
    assert store.leases.holder(job_id) == "w1"
    assert store.leases.renew(job_id, "w1", 5) and not store.leases.renew(job_id, "w2", 5)
    store.leases.release(job_id, "w2")
    assert store.leases.holder(job_id) == "w1"
    store.leases.release(job_id, "w1")
    assert store.leases.holder(job_id) is None
    assert store.leases.claim(job_id, "w2", 0.2)
    time.sleep(0.35)
    assert store.leases.holder(job_id) is None and not store.leases.renew(job_id, "w2", 5)
    assert store.leases.claim(job_id, "w3", 5)
    assert store.records.get(job_id)["deliveries"] == 3  # w1, w2, w3; the refused claim does not count
    assert not store.leases.claim("job_0000000000000000", "w1", 5)


def test_only_deliveries_that_ended_without_a_release_count_as_crashes(store: JobStore) -> None:
    job_id = job_in(store, JobState.QUEUED)
    for n in range(3):  # clean hand-backs (warm shutdown): released by their holder
        assert store.leases.claim(job_id, f"clean-{n}", 5)
        store.leases.release(job_id, f"clean-{n}")
    assert store.leases.claim(job_id, "killed", 0.05)  # killed: never released, the lease lapses
    time.sleep(0.1)
    assert store.leases.claim(job_id, "next", 5)
    store.leases.release(job_id, "killed")  # a woken stale worker's release is not a clean end
    assert store.records.get(job_id)["crashes"] == 1
    store.redis.delete(store.keys.lease(job_id))  # "next" hung until its lease lapsed
    assert store.leases.claim(job_id, "third", 5)
    record = store.records.get(job_id)
    assert record["crashes"] == 2 and record["deliveries"] == 6


def test_lapsed_running_job_is_recovered_once(store: JobStore) -> None:
    job_id = job_in(store, JobState.RUNNING)
    store.leases.claim(job_id, "w1", 5)
    assert job_id in store.leases.running_jobs()
    assert store.records.recover_lapsed(job_id) is None  # lease live: not touched
    store.leases.release(job_id, "w1")
    assert store.records.recover_lapsed(job_id) == "queued"
    assert store.records.recover_lapsed(job_id) is None
    cancelling = job_in(store, JobState.CANCELLING)
    assert store.records.recover_lapsed(cancelling) == "cancelled"


def test_counts_by_state(store: JobStore) -> None:
    before = store.records.counts_by_state()
    job_in(store, JobState.FAILED)
    after = store.records.counts_by_state()
    assert after["failed"] == before["failed"] + 1 and set(after) == {s.value for s in JobState}


def test_unreachable_redis_raises_store_unavailable() -> None:
    client = redis.Redis(port=1, decode_responses=True, socket_connect_timeout=0.2, retry=None)
    dead = JobStore(client, "nowhere")
    assert dead.ping() is False
    with pytest.raises(StoreUnavailable):
        dead.records.get("job_1")
    with pytest.raises(StoreUnavailable):
        dead.records.create("train", {}, "me")


def test_store_refuses_a_client_without_decoded_responses() -> None:
    with pytest.raises(ValueError):
        JobStore(redis.Redis(), "x")


def test_a_final_transition_is_refused_to_a_worker_that_lost_the_lease(store: JobStore) -> None:
    """Issue 14 item 7: worker A froze, B recovered and holds the lease; A wakes and tries to finish."""
    job_id = job_in(store, JobState.RUNNING)
    assert store.leases.claim(job_id, "worker-b", lease_seconds=60)
    events_before = store.events.read(job_id, count=1000)
    with pytest.raises(LeaseFenced):
        store.records.transition(job_id, JobState.SUCCEEDED, result={"from": "a"}, holder="worker-a")
    record = store.records.get(job_id)
    assert record["state"] == JobState.RUNNING and record["result"] is None
    assert store.events.read(job_id, count=1000) == events_before
    # the sweeper handed the job back to the queue: nobody holds it, and A may not end it either
    store.leases.release(job_id, "worker-b")
    assert store.records.recover_lapsed(job_id) == JobState.QUEUED
    with pytest.raises(LeaseFenced):
        store.records.transition(job_id, JobState.FAILED, error="late", holder="worker-a")
    assert store.records.get(job_id)["state"] == JobState.QUEUED
    # a lapsed lease on a job nobody took over: its (CPU-starved) worker still finishes it
    assert store.leases.claim(job_id, "worker-a", lease_seconds=60)
    store.records.transition(job_id, JobState.RUNNING, holder="worker-a")
    store.redis.delete(store.keys.lease(job_id))
    assert store.records.transition(job_id, JobState.SUCCEEDED, holder="worker-a")["state"] == JobState.SUCCEEDED


def test_artifacts_are_registered_only_by_the_lease_holder(store: JobStore) -> None:
    job_id = job_in(store, JobState.RUNNING)
    assert store.leases.claim(job_id, "worker-b", lease_seconds=60)
    assert not store.records.add_artifact(job_id, "model.pt", "model.pt", "application/octet-stream", 3,
                                          holder="worker-a")
    assert store.records.get(job_id)["artifacts"] == {}
    store.leases.release(job_id, "worker-b")
    assert store.records.recover_lapsed(job_id) == JobState.QUEUED  # back in the queue: nobody's files
    assert not store.records.add_artifact(job_id, "a.png", "a.png", "image/png", 3, holder="worker-a")
    assert store.leases.claim(job_id, "worker-b", lease_seconds=60)
    assert store.records.add_artifact(job_id, "model.pt", "model.pt", "application/octet-stream", 3,
                                      holder="worker-b")
    assert set(store.records.get(job_id)["artifacts"]) == {"model.pt"}


def test_a_finished_job_takes_no_artifact_from_a_worker_whose_lease_is_gone(store: JobStore) -> None:
    """Worker B finished and let go; worker A, frozen since before B took over, wakes and registers."""
    job_id = store.records.create("train", {"epochs": 1}, owner(), queue="parked")["id"]
    mark_running(store, job_id, holder="worker-b")  # leased while running, or a session sweeper hands it back
    store.records.transition(job_id, JobState.SUCCEEDED)
    store.leases.release(job_id, "worker-b")
    assert not store.records.add_artifact(job_id, "model.pt", "model.pt", "application/octet-stream", 3,
                                          holder="worker-a")
    assert store.records.get(job_id)["artifacts"] == {}


def test_stale_queued_skips_jobs_named_by_a_waiting_or_unacked_message(store: JobStore) -> None:
    """Issue 14 item 12: the queue's ids are parsed into a set once (timing: scripts/reliability/stale_sweep.py)."""
    from jobs.queues import broker_key_prefix

    queue = f"sweep-{secrets.token_hex(3)}"
    waiting, unacked, lost = (store.records.create("train", {}, owner(), queue=queue)["id"] for _ in range(3))
    for job_id in (waiting, unacked, lost):
        store.redis.hset(store.keys.job(job_id), "created_at", "1.0")
    broker = broker_key_prefix(store.prefix)
    store.redis.rpush(broker + queue, f'{{"headers": {{"argsrepr": "[\'{waiting}\']"}}}}')
    store.redis.hset(broker + "unacked", "tag-1", f'[{{"headers": {{"argsrepr": "[\'{unacked}\']"}}}}, "", "{queue}"]')
    try:
        assert store.sends.ids_in_queue(queue) >= {waiting, unacked}
        assert store.sends.stale_queued(queue, older_than=60) == [lost]
    finally:
        store.redis.delete(broker + queue)
        store.redis.hdel(broker + "unacked", "tag-1")
