"""Fair turns across keys (issue 14 item 10) against a real Redis: the dispatch order, the queue's
fill level, cancelled and capped keys, and the stale sweep's view of waiting jobs.

Each test uses a queue of its own, which no worker consumes, so nothing here is ever run; the
end-to-end check with a real worker is `tests/worker/test_fair_turns.py`.
"""

from __future__ import annotations

import secrets

import pytest

from jobs.queues import broker_key_prefix
from jobs.states import JobState
from jobs.store import JobStore
from jobs.workers import WorkerRegistry

LIVE = 30.0


@pytest.fixture
def queue(store: JobStore) -> str:
    name = f"turns-{secrets.token_hex(3)}"
    yield name
    store.redis.delete(broker_key_prefix(store.prefix) + name, store.keys.turns(name))


def waiting_job(store: JobStore, owner: str, queue: str) -> str:
    return store.records.create("train", {"epochs": 1}, owner, queue=queue, wait_turn=True)["id"]


def drain(store: JobStore, queue: str, limit: int = 10_000) -> list[str]:
    """Dispatch turn after turn as if one worker took each message at once: the order jobs would run in."""
    order: list[str] = []
    while len(order) < limit and (sent := store.turns.dispatch(queue, live_within=LIVE)):
        assert len(sent) == 1  # no live consumer of this queue: one message at a time
        order += sent
    return order


def test_one_keys_600_waiting_jobs_do_not_starve_another_keys_one_job(store: JobStore, queue: str) -> None:
    busy, quiet = f"busy-{secrets.token_hex(3)}", f"quiet-{secrets.token_hex(3)}"
    flood = [waiting_job(store, busy, queue) for _ in range(600)]
    single = waiting_job(store, quiet, queue)
    order = drain(store, queue, limit=3)
    assert order == [flood[0], single, flood[1]]  # first in, first out would have sent it 601st
    rest = drain(store, queue)
    assert rest == flood[2:]  # the busy key's own jobs keep their order, and none is lost
    assert store.turns.depth(queue) == 0


def test_turns_go_round_the_ring_of_keys(store: JobStore, queue: str) -> None:
    owners = [f"k{i}-{secrets.token_hex(2)}" for i in range(3)]
    jobs = {o: [waiting_job(store, o, queue) for _ in range(n)] for o, n in zip(owners, (3, 1, 2), strict=True)}
    a, b, c = (jobs[o] for o in owners)
    assert drain(store, queue) == [a[0], b[0], c[0], a[1], c[1], a[2]]


def test_the_queue_is_filled_only_up_to_its_live_consumers(store: JobStore, queue: str) -> None:
    owner = f"o-{secrets.token_hex(3)}"
    jobs = [waiting_job(store, owner, queue) for _ in range(5)]
    registry = WorkerRegistry(store.redis, store.prefix)
    for n in range(2):
        registry.record_heartbeat(f"fake-{queue}-{n}", queue)
    broker = broker_key_prefix(store.prefix) + queue
    try:
        first = store.turns.dispatch(queue, live_within=LIVE)
        assert first == jobs[:2]  # two consumers: two messages' worth
        store.redis.lpush(broker, "message-1", "message-2")  # what the caller sends
        assert store.turns.dispatch(queue, live_within=LIVE) == []  # full
        store.redis.rpop(broker)  # a worker takes one
        assert store.turns.dispatch(queue, live_within=LIVE) == [jobs[2]]
        assert store.turns.depth(queue) == 2
        assert store.sends.queue_depth(queue) == 1 + 2  # a message plus the waiting jobs (/metrics)
    finally:
        for n in range(2):
            store.redis.zrem(f"{store.prefix}:workers", f"fake-{queue}-{n}")
            store.redis.delete(f"{store.prefix}:worker:fake-{queue}-{n}")


def test_a_cancelled_waiting_job_is_never_sent(store: JobStore, queue: str) -> None:
    owner = f"o-{secrets.token_hex(3)}"
    first, second, third = (waiting_job(store, owner, queue) for _ in range(3))
    assert store.records.request_cancel(second)["state"] == JobState.CANCELLED.value
    assert store.turns.waiting_ids(queue) == {first, third}
    store.redis.hset(store.keys.job(third), "state", JobState.CANCELLED.value)  # cancelled behind our back
    assert drain(store, queue) == [first]
    assert store.redis.llen(store.keys.turns(queue)) == 0


def test_a_key_at_its_running_cap_waits_while_others_take_turns(store: JobStore, queue: str) -> None:
    capped, other = f"capped-{secrets.token_hex(3)}", f"other-{secrets.token_hex(3)}"
    mine = [waiting_job(store, capped, queue) for _ in range(4)]
    theirs = [waiting_job(store, other, queue) for _ in range(3)]

    def turn() -> list[str]:
        return store.turns.dispatch(queue, live_within=LIVE, max_running_per_key=2)

    order = [*turn(), *turn(), *turn(), *turn()]
    assert order == [mine[0], theirs[0], mine[1], theirs[1]]
    assert turn() == []  # both keys have 2 jobs sent and not finished
    store.records.transition(mine[0], JobState.FAILED)  # one of the first key's jobs ends
    assert turn() == [mine[2]]
    assert turn() == []
    store.records.transition(theirs[0], JobState.FAILED)
    store.records.transition(theirs[1], JobState.FAILED)
    assert turn() == [theirs[2]]  # the capped key keeps waiting; the other takes its turns
    assert turn() == []
    assert store.turns.waiting_ids(queue) == {mine[3]}


def test_the_stale_sweep_leaves_waiting_jobs_to_their_turn_but_resends_a_job_taken_and_never_sent(
    store: JobStore, queue: str,
) -> None:
    owner = f"o-{secrets.token_hex(3)}"
    taken, waiting = waiting_job(store, owner, queue), waiting_job(store, owner, queue)
    assert store.turns.dispatch(queue, live_within=LIVE) == [taken]  # the sender then dies: never sent
    for job_id in (taken, waiting):
        store.redis.hset(store.keys.job(job_id), mapping={"created_at": "1.0", "sent_at": "1.0"})
    assert store.sends.stale_queued(queue, older_than=60) == [taken]
