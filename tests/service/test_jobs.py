"""Submitting, reading, listing and cancelling jobs through the API (real Redis, no worker needed)."""

from __future__ import annotations

import secrets

import pytest
from fastapi.testclient import TestClient

from clrcore.specs import RangeTestSpec
from jobs.idempotency import body_hash
from jobs.states import JobState
from jobs.store import JobStore
from tests.helpers import ALICE, BOB, RANGE_TEST, TRAIN, mark_running


def test_submit_answers_202_with_location_and_record(client: TestClient) -> None:
    response = client.post("/v1/jobs/train", json=TRAIN, headers=ALICE)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["kind"] == "train" and job["state"] == "queued"
    assert job["spec"]["max_lr"] == 0.05 and job["spec"]["kind"] == "train"
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}"
    assert job["queue"] == "parked"  # device "auto" goes to Settings.default_queue


def test_device_picks_the_queue(client: TestClient) -> None:
    cuda = client.post("/v1/jobs/range-test", json={**RANGE_TEST, "device": "cuda"}, headers=ALICE).json()
    assert cuda["queue"] == "gpu"
    assert client.post(f"/v1/jobs/{cuda['id']}/cancel", headers=ALICE).status_code == 202


def test_get_job_shows_state_progress_metrics_and_result(client: TestClient, store: JobStore,
                                                           job_id: str) -> None:
    mark_running(store, job_id)
    store.events.update_progress(job_id, {"phase": "range_test", "epoch": 1, "epochs": 1, "step": 5, "steps": 10,
                                   "fraction": 0.5}, {"loss": 1.25})
    job = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()
    assert job["state"] == "running" and job["started_at"] is not None
    assert job["progress"]["fraction"] == 0.5 and job["metrics"] == {"loss": 1.25}
    store.records.transition(job_id, JobState.SUCCEEDED, result={"suggested_max_lr": 0.1})
    job = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()
    assert job["state"] == "succeeded" and job["result"] == {"suggested_max_lr": 0.1}
    assert job["finished_at"] is not None


def test_failed_job_shows_its_reason(client: TestClient, store: JobStore, job_id: str) -> None:
    mark_running(store, job_id)
    store.records.transition(job_id, JobState.FAILED, error="loss diverged at step 312, lr 3.2")
    assert client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["error"] == "loss diverged at step 312, lr 3.2"


@pytest.mark.parametrize("job_id", ["job_0123456789abcdef", "nope", "job_%2e%2e", "ジョブ"])
def test_unknown_job_is_404(client: TestClient, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}", headers=ALICE)
    assert response.status_code == 404 and response.json() == {"detail": "job not found"}


def test_cancel_queued_job_then_again_is_409(client: TestClient, job_id: str) -> None:
    first = client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)
    assert first.status_code == 202 and first.json()["state"] == "cancelled"
    second = client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)
    assert second.status_code == 409
    assert "cancelled" in second.json()["detail"]


def test_cancel_running_job_becomes_cancelling(client: TestClient, store: JobStore, job_id: str) -> None:
    mark_running(store, job_id)
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)
    assert response.status_code == 202 and response.json()["state"] == "cancelling"
    assert response.json()["cancel_requested"] is True
    assert store.records.cancel_requested(job_id)


def test_cancel_finished_job_is_409(client: TestClient, store: JobStore, job_id: str) -> None:
    mark_running(store, job_id)
    store.records.transition(job_id, JobState.SUCCEEDED)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).status_code == 409


# ------------------------------------------------------------------------------------------ list


def test_list_newest_first_with_filters_and_cursor_pages(tenant: tuple[TestClient, dict],
                                                          store: JobStore) -> None:
    client, headers = tenant
    made = []
    for i in range(5):
        body, path = (RANGE_TEST, "range-test") if i % 2 == 0 else (TRAIN, "train")
        made.append(client.post(f"/v1/jobs/{path}", json=body, headers=headers).json()["id"])
    mark_running(store, made[0])

    everything = client.get("/v1/jobs", headers=headers).json()
    assert [j["id"] for j in everything["items"]] == made[::-1] and everything["next_cursor"] is None

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params, headers=headers).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]

    trains = client.get("/v1/jobs", params={"kind": "train"}, headers=headers).json()["items"]
    assert [j["id"] for j in trains] == [made[3], made[1]]
    running = client.get("/v1/jobs", params={"state": "running"}, headers=headers).json()["items"]
    assert [j["id"] for j in running] == [made[0]]
    assert client.get("/v1/jobs", params={"state": "running", "kind": "train"}, headers=headers).json() == {
        "items": [], "next_cursor": None}


@pytest.mark.parametrize("params, field", [
    ({"kind": "bogus"}, "kind"), ({"state": "sleeping"}, "state"), ({"limit": 0}, "limit"),
    ({"limit": 10**30}, "limit"), ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "x" * 500}, "cursor"),
])
def test_list_rejects_bad_query_naming_it(client: TestClient, params: dict, field: str) -> None:
    response = client.get("/v1/jobs", params=params, headers=ALICE)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


def test_list_shows_only_own_jobs(client: TestClient, job_id: str) -> None:
    ids = {j["id"] for j in client.get("/v1/jobs", params={"limit": 100}, headers=BOB).json()["items"]}
    assert job_id not in ids


# ------------------------------------------------------------------------------------------ idempotency


def test_idempotency_same_key_same_body_replays_first_answer(client: TestClient) -> None:
    headers = {**ALICE, "Idempotency-Key": secrets.token_hex(8)}
    first = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=headers)
    # Same spec, keys in another order and a default spelled out: the same request.
    again = client.post("/v1/jobs/range-test", json={"mode": "exp", **dict(reversed(RANGE_TEST.items()))},
                        headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"


def test_idempotency_same_key_other_body_is_422(client: TestClient) -> None:
    headers = {**ALICE, "Idempotency-Key": secrets.token_hex(8)}
    assert client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=headers).status_code == 202
    response = client.post("/v1/jobs/range-test", json={**RANGE_TEST, "num_iter": 11}, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_idempotency_retry_while_first_in_flight_is_409(client: TestClient, store: JobStore) -> None:
    key = secrets.token_hex(8)
    fingerprint = body_hash(RangeTestSpec.model_validate(RANGE_TEST).model_dump(mode="json"))
    assert store.idempotency.begin("alice", key, fingerprint)[0] == "new"  # the first request, mid-way
    response = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers={**ALICE, "Idempotency-Key": key})
    assert response.status_code == 409


def test_idempotency_keys_are_per_tenant(client: TestClient) -> None:
    key = secrets.token_hex(8)
    a = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers={**ALICE, "Idempotency-Key": key})
    b = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers={**BOB, "Idempotency-Key": key})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]
