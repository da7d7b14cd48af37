"""Webhooks through the whole path: the API, a real training worker, a real webhooks worker and a real
receiver on loopback. Signatures verify (and a tampered body does not), a receiver that fails or is
down is retried until it recovers, one that never answers costs the job nothing, and addresses inside
are refused at submit or at delivery without ever being connected to."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clrclient import WebhookVerificationError, verify_webhook
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.webhooks import WebhookDeliveries
from service.main import create_app
from tests.helpers import ALICE, BOB, RANGE_TEST, ROOT, TRAIN, WorkerProcess
from tests.webhooks.receiver import NEW_SECRET, OLD_SECRET, Receiver

QUICK_TRAIN = {**TRAIN, "device": "cpu", "epochs": 1, "train_subset": 300}
AUTO_TRAIN = {**QUICK_TRAIN, "max_lr": "auto", "range_test": {"num_iter": 20}}  # its own range test first


def _wait_job(client: TestClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def _wait_deliveries(client: TestClient, job_id: str, done, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.get(f"/v1/jobs/{job_id}/deliveries", headers=ALICE).json()["items"]
        if done(items):
            return items
        time.sleep(0.05)
    raise TimeoutError(f"deliveries of {job_id}: {items}")


def _cancelled_job(client: TestClient, url: str) -> str:
    """A parked job cancelled at once: its `queued` and `cancelled` webhooks come from the API alone."""
    body = {**RANGE_TEST, "notify": {"url": url, "events": ["cancelled"]}}
    job_id = client.post("/v1/jobs/range-test", json=body, headers=ALICE).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).json()["state"] == "cancelled"
    return job_id


@pytest.mark.parametrize(("notify", "loc", "words"), [
    ({"url": "ftp://example.com/hook"}, ["body", "notify", "url"], "http"),
    ({"url": "file:///etc/passwd"}, ["body", "notify", "url"], "http"),
    ({"url": "https://user:pw@example.com/hook"}, ["body", "notify", "url"], "credentials"),
    ({"url": "https://example.com/hook", "events": ["finished"]}, ["body", "notify", "events", 0], "queued"),
    ({"url": "http://169.254.169.254/latest/meta-data"}, ["body", "notify", "url"], "not public"),
    ({"url": "http://10.0.0.1/hook"}, ["body", "notify", "url"], "not public"),
    ({"url": "http://[::ffff:10.0.0.1]/hook"}, ["body", "notify", "url"], "not public"),
])
def test_bad_notify_is_422_naming_the_field(hook_client: TestClient, notify: dict, loc: list, words: str) -> None:
    response = hook_client.post("/v1/jobs/train", json={**TRAIN, "notify": notify}, headers=ALICE)
    assert response.status_code == 422, response.text
    problem = next(p for p in response.json()["detail"] if p["loc"][:3] == loc[:3])
    assert problem["loc"] == loc and words in problem["msg"]


def test_a_key_without_a_webhook_secret_cannot_ask_for_webhooks(hook_client: TestClient) -> None:
    response = hook_client.post("/v1/jobs/train", json={**TRAIN, "notify": {"url": "https://example.com/h"}},
                                headers=BOB)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "notify"]


def test_a_job_s_life_arrives_signed_with_its_status_object(
    hook_client: TestClient, worker: WorkerProcess, webhook_worker: Path
) -> None:
    receiver = Receiver()
    try:
        events = ["queued", "started", "range_test_done", "progress", "succeeded", "failed", "cancelled"]
        body = {**AUTO_TRAIN, "notify": {"url": receiver.url, "events": events}}
        submitted = hook_client.post("/v1/jobs/train", json=body, headers=ALICE)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        started = time.monotonic()
        job = _wait_job(hook_client, job_id)
        assert job["state"] == "succeeded", job
        requests = receiver.wait_for_event("job.succeeded")
        ran = time.monotonic() - started
    finally:
        receiver.close()
    # Deliveries run in parallel, so they may arrive in any order (each carries its state and timestamp).
    progress = receiver.events().count("job.progress")  # opt-in, one per 10 s (the worker's default)
    assert 1 <= progress <= 2 + ran // 10, receiver.events()
    assert sorted(e for e in receiver.events() if e != "job.progress") == [
        "job.queued", "job.range_test_done", "job.started", "job.succeeded"]
    # ... and each carries the job's sequence, counted with the change itself: sorting by it gives the life
    payloads = sorted((json.loads(r["body"]) for r in requests), key=lambda p: p["sequence"])
    assert len({p["sequence"] for p in payloads}) == len(payloads)
    assert [p["type"] for p in payloads if p["type"] != "job.progress"] == [
        "job.queued", "job.started", "job.range_test_done", "job.succeeded"]
    assert payloads[0]["sequence"] == 1 and payloads[-1]["previous"] == "running"
    done = next(json.loads(r["body"]) for r in requests if b"job.range_test_done" in r["body"])
    assert done["recommendation"]["recommendation"] is not None or done["recommendation"]["warnings"]
    for request in requests:  # rotation: signed with both secrets, each verifies alone
        assert len(request["headers"]["webhook-signature"].split(" ")) == 2
        for secret in (OLD_SECRET, NEW_SECRET):
            assert verify_webhook(secret, request["body"], request["headers"])["data"]["id"] == job_id
    last = next(r for r in requests if json.loads(r["body"])["type"] == "job.succeeded")
    tampered = last["body"].replace(b'"succeeded"', b'"failed"')
    with pytest.raises(WebhookVerificationError):
        verify_webhook(NEW_SECRET, tampered, last["headers"])
    data = json.loads(last["body"])["data"]
    for field in ("id", "kind", "state", "result", "error", "finished_at", "metrics", "spec"):
        assert data[field] == job[field], field
    items = _wait_deliveries(hook_client, job_id, lambda items: len(items) == len(requests))
    assert [d["event"] for d in items if d["event"] != "progress"] == [
        "queued", "started", "range_test_done", "succeeded"]
    assert all(d["state"] == "delivered" and d["attempt_log"][0]["status_code"] == 200 for d in items)
    assert {d["id"] for d in items} == {r["headers"]["webhook-id"] for r in requests}
    assert all(d["attempt_log"][0]["latency_ms"] > 0 for d in items)


def test_a_failing_receiver_is_retried_until_it_answers(hook_client: TestClient, webhook_worker: Path) -> None:
    receiver = Receiver([500, 503])
    try:
        job_id = _cancelled_job(hook_client, receiver.url)
        requests = receiver.wait_for(3)
    finally:
        receiver.close()
    assert len({r["headers"]["webhook-id"] for r in requests}) == 1  # one delivery, three attempts
    assert requests[2]["at"] - requests[0]["at"] > 0.3  # backed off (0.3 s, then 0.6 s, +-50%)
    (delivery,) = _wait_deliveries(hook_client, job_id, lambda items: items and items[0]["state"] == "delivered")
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 503, 200]


def test_a_receiver_that_is_down_gets_it_once_up_and_can_ask_again(
    hook_client: TestClient, webhook_worker: Path
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on, for now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job_id = _cancelled_job(hook_client, f"http://127.0.0.1:{port}/hook")
    items = _wait_deliveries(hook_client, job_id, lambda items: items and items[0]["attempts"] >= 2)
    assert items[0]["state"] == "pending" and "Connect" in items[0]["attempt_log"][0]["error"]
    receiver = Receiver(port=port)
    try:
        (delivery,) = _wait_deliveries(hook_client, job_id, lambda items: items[0]["state"] == "delivered")
        assert delivery["attempt_log"][-1]["status_code"] == 200
        again = hook_client.post(f"/v1/jobs/{job_id}/deliveries/{delivery['id']}/redeliver", headers=ALICE)
        assert again.status_code == 202, again.text
        requests = receiver.wait_for(2)
    finally:
        receiver.close()
    assert [r["headers"]["webhook-id"] for r in requests] == [delivery["id"]] * 2
    assert verify_webhook(NEW_SECRET, requests[1]["body"], requests[1]["headers"])["type"] == "job.cancelled"


def test_a_receiver_that_never_answers_costs_the_job_nothing(
    hook_client: TestClient, worker: WorkerProcess, webhook_worker: Path
) -> None:
    receiver = Receiver(hang=True)
    try:
        body = {**QUICK_TRAIN, "notify": {"url": receiver.url}}
        started = time.monotonic()
        job_id = hook_client.post("/v1/jobs/train", json=body, headers=ALICE).json()["id"]
        job = _wait_job(hook_client, job_id, timeout=60)
        took = time.monotonic() - started
        items = _wait_deliveries(hook_client, job_id,
                                 lambda items: any("Timeout" in (a["error"] or "") for d in items
                                                   for a in d["attempt_log"]))
    finally:
        receiver.close()
    assert job["state"] == "succeeded" and job["error"] is None
    assert took < 60
    assert items[0]["event"] == "queued" and items[0]["state"] == "pending"  # still being retried


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.0.0.1/hook",
                                 "http://localhost:9/hook"])
def test_the_delivery_refuses_an_address_inside_before_connecting(
    store: JobStore, hook_settings: Settings, url: str
) -> None:
    """Past the API's check (a key's default, or DNS that changed): the attempt refuses, and not again."""
    from worker.webhook_tasks import attempt

    strict = hook_settings.model_copy(update={"webhook_allow_networks": ""})
    deliveries = WebhookDeliveries(store.redis, store.prefix, strict)
    record = store.records.create("train", {**TRAIN, "notify": {"url": url, "events": ["queued"]}}, "alice")
    delivery_id = deliveries.announce(record, "queued")
    assert delivery_id is not None
    started = time.monotonic()
    assert attempt(deliveries, delivery_id, strict) == ("failed", None)
    assert time.monotonic() - started < 0.5  # refused, not a connect timeout
    (logged,) = deliveries.attempts(delivery_id)
    assert logged["status_code"] is None and "not public" in logged["error"]


def test_the_webhooks_worker_never_loads_torch() -> None:
    """It runs in the API's slim image: its task module must not pull in the training stack."""
    code = "import sys, worker.webhook_tasks; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_a_malformed_webhook_secret_stops_the_api_at_start(hook_settings: Settings) -> None:
    with pytest.raises(ValueError, match="webhook_secrets"):
        create_app(hook_settings.model_copy(update={"webhook_secrets": "alice"}))
