"""The client against a live API (uvicorn subprocess, real Redis): submit, get, list across pages,
cancel, refusals as exceptions naming the field, retries and idempotency through a faulty proxy,
and an upload with progress. Jobs here stay queued (parked queue): no worker is needed."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from clrclient import (
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    NotFound,
    RangeTestSpec,
    RetryPolicy,
    TrainSpec,
    Unauthorized,
)
from tests.clrclient.conftest import KEYS, FaultProxy
from tests.reliability.api_server import ApiServer
from tests.weight_files import architecture_file, architecture_tensors, safetensors_bytes

PARKED_RANGE_TEST = RangeTestSpec(dataset="digits", model="tiny_cnn", num_iter=10)  # device auto: parked
QUICK = RetryPolicy(attempts=5, timeout=20, wait_initial=0.05, wait_max=0.5, wait_jitter=0.05)


def test_submit_get_cancel_and_the_spec_sent_as_given(api: ApiServer) -> None:
    with Client(api.url, KEYS["alice"]) as client:
        job = client.submit_train(TrainSpec(preset="digits-demo", epochs=3))
        assert job.state == "queued" and job.kind == "train" and job.queue == "parked"
        # The fields set (the preset's and the caller's) travel; defaults are left to the server.
        assert job.spec["epochs"] == 3 and job.spec["preset"] == "digits-demo" and "label_smoothing" not in job.spec
        assert client.get(job.id).id == job.id
        assert client.cancel(job.id).state == "cancelled"
        with pytest.raises(Conflict) as refused:  # a final state never changes
            client.cancel(job.id)
        assert refused.value.status == 409
        client.delete(job.id)
        with pytest.raises(NotFound):
            client.get(job.id)


def test_list_follows_the_cursor_across_pages(api: ApiServer) -> None:
    with Client(api.url, KEYS["pager"]) as client:
        ids = [client.submit_range_test(PARKED_RANGE_TEST).id for _ in range(7)]
        pages: list[str] = []
        client.http.event_hooks["request"].append(
            lambda request: pages.append(str(request.url)) if request.url.path == "/v1/jobs" else None)
        listed = [job.id for job in client.list(kind="range_test", page_size=3)]
        assert listed[:7] == ids[::-1]  # newest first, each once
        assert len(pages) >= 3 and "cursor=" in pages[1] and "cursor=" in pages[2]
        assert [job.id for job in client.list(kind="range_test", page_size=3, limit=4)] == ids[::-1][:4]
        for job_id in ids:
            client.cancel(job_id)


def test_refusals_raise_with_the_field_and_reason(api: ApiServer) -> None:
    with Client(api.url, KEYS["alice"]) as client:
        with pytest.raises(InvalidRequest) as limit:  # valid for clrcore, over this server's limit
            client.submit_train(TrainSpec(preset="digits-demo", epochs=5000))
        assert limit.value.status == 422 and limit.value.field == "epochs"
        assert "at most 200" in limit.value.reason and limit.value.code == "less_than_equal"
        with pytest.raises(InvalidRequest) as nested:
            client.submit_train({"preset": "digits-demo", "range_test": {"num_iter": 2}})
        assert nested.value.field == "range_test.num_iter" and nested.value.problems[0].location == "body"
        with pytest.raises(InvalidRequest) as typo:
            client.submit_range_test({"dataset": "digits", "num_itre": 10})
        assert typo.value.field == "num_itre" and typo.value.code == "extra_forbidden"
        with pytest.raises(NotFound) as missing:
            client.get("nope")
        assert missing.value.reason == "job not found"
    with Client(api.url, "not-a-key") as stranger, pytest.raises(Unauthorized):
        stranger.get("nope")


def test_a_submit_whose_answer_was_lost_is_retried_with_the_same_key_and_makes_one_job(
        api: ApiServer, proxy: FaultProxy) -> None:
    proxy.faults = ["drop-after"]  # the API stores the job; the client never hears back
    with Client(proxy.url, KEYS["idem"], retry=QUICK) as client:
        job = client.submit_range_test(PARKED_RANGE_TEST)
        posts = [s for s in proxy.seen if s.method == "POST"]
        assert len(posts) == 2 and posts[0].idempotency_key == posts[1].idempotency_key is not None
        assert [j.id for j in client.list()] == [job.id]  # one job, not two
        client.cancel(job.id)


def test_an_explicit_key_returns_the_first_job(api: ApiServer) -> None:
    with Client(api.url, KEYS["alice"]) as client:
        first = client.submit_range_test(PARKED_RANGE_TEST, idempotency_key="nightly-1")
        again = client.submit_range_test(PARKED_RANGE_TEST, idempotency_key="nightly-1")
        assert again.id == first.id
        with pytest.raises(InvalidRequest) as reused:  # same key, another body
            client.submit_range_test(RangeTestSpec(dataset="digits", num_iter=11), idempotency_key="nightly-1")
        assert reused.value.field == "Idempotency-Key" and reused.value.problems[0].location == "header"
        client.cancel(first.id)


def test_safe_requests_wait_out_503_with_retry_after(api: ApiServer, proxy: FaultProxy) -> None:
    with Client(api.url, KEYS["alice"]) as direct:
        job_id = direct.submit_range_test(PARKED_RANGE_TEST).id
    proxy.faults = ["503", "drop-before"]
    with Client(proxy.url, KEYS["alice"], retry=QUICK) as client:
        started = time.monotonic()
        assert client.get(job_id).id == job_id
        assert time.monotonic() - started >= 1.0  # the 503's Retry-After: 1 was honoured
        assert len(proxy.seen) == 3
        client.cancel(job_id)


def test_a_post_without_a_key_is_not_resent_once_it_may_have_landed(api: ApiServer, proxy: FaultProxy) -> None:
    with Client(api.url, KEYS["alice"]) as direct:
        job_id = direct.submit_range_test(PARKED_RANGE_TEST).id
    proxy.faults = ["drop-after"]
    with Client(proxy.url, KEYS["alice"], retry=QUICK) as client, pytest.raises(httpx.RemoteProtocolError):
        client.cancel(job_id)
    assert len(proxy.seen) == 1
    with Client(api.url, KEYS["alice"]) as direct:
        assert direct.get(job_id).state == "cancelled"  # it had landed


def test_async_client_submits_lists_and_cancels(api: ApiServer) -> None:
    async def scenario() -> tuple[str, list[str], str]:
        async with AsyncClient(api.url, KEYS["alice"]) as client:
            job = await client.submit_range_test(PARKED_RANGE_TEST)
            listed = [j.id async for j in client.list(kind="range_test", limit=5)]
            cancelled = await client.cancel(job.id)
            with pytest.raises(InvalidRequest):
                await client.submit_train({"preset": "digits-demo", "epochs": 0})
            return job.id, listed, cancelled.state

    job_id, listed, state = asyncio.run(scenario())
    assert listed[0] == job_id and state == "cancelled"


def _noise_archive(path: Path, per_class: int = 60, size: int = 64) -> Path:
    """An image-folder zip of random (incompressible) PNGs, over a megabyte: several upload chunks."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for split, count in (("train", per_class), ("test", 4)):
            for label in ("cat", "dog"):
                for i in range(count):
                    out = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
                    archive.writestr(f"{split}/{label}/{i}.png", out.getvalue())
    return path


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_upload_reports_progress_and_the_dataset_is_usable(api: ApiServer, tmp_path: Path, kind: str) -> None:
    archive = _noise_archive(tmp_path / "noise.zip")
    total = archive.stat().st_size
    assert total > 1 << 20
    seen: list[tuple[int, int]] = []
    if kind == "sync":
        with Client(api.url, KEYS["alice"]) as client:
            dataset = client.upload_dataset(archive, name="noise", progress=lambda s, t: seen.append((s, t)))
    else:
        async def upload():
            async with AsyncClient(api.url, KEYS["alice"]) as client:
                return await client.upload_dataset(archive, name="noise", progress=lambda s, t: seen.append((s, t)))
        dataset = asyncio.run(upload())
    assert len(seen) >= 2 and seen[-1] == (total, total)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert dataset.id.startswith("ds_") and dataset.classes == ["cat", "dog"] and dataset.bytes == total
    assert dataset.counts["train"] == {"cat": 60, "dog": 60}
    with Client(api.url, KEYS["alice"]) as client:
        assert client.get_dataset(dataset.id).input_shape == [3, 64, 64]
        job = client.submit_range_test(RangeTestSpec(dataset=dataset.id, num_iter=10))
        assert job.spec["dataset"] == dataset.id
        client.cancel(job.id)
        client.delete_dataset(dataset.id)
        with pytest.raises(NotFound):
            client.get_dataset(dataset.id)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_weights_upload_get_misfit_and_delete(api: ApiServer, tmp_path: Path, kind: str) -> None:
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    good.write_bytes(architecture_file("small_cnn"))
    bad.write_bytes(safetensors_bytes({**architecture_tensors("small_cnn"), "extra.weight": ("F32", [2])}))

    async def run_async() -> tuple:
        async with AsyncClient(api.url, KEYS["alice"]) as client:
            weights = await client.upload_weights(good, "small_cnn", name="mine")
            with pytest.raises(InvalidRequest) as refused:
                await client.upload_weights(bad, "small_cnn")
            fetched = await client.get_weights(weights.id)
            await client.delete_weights(weights.id)
            return weights, refused.value, fetched

    if kind == "async":
        weights, refused, fetched = asyncio.run(run_async())
    else:
        with Client(api.url, KEYS["alice"]) as client:
            weights = client.upload_weights(good, "small_cnn", name="mine")
            with pytest.raises(InvalidRequest) as caught:
                client.upload_weights(bad, "small_cnn")
            refused, fetched = caught.value, client.get_weights(weights.id)
            client.delete_weights(weights.id)
    assert weights.id.startswith("wt_") and weights.architecture == "small_cnn" and weights.name == "mine"
    assert fetched.id == weights.id and fetched.tensors == len(architecture_tensors("small_cnn"))
    assert refused.code == "unknown_tensor" and "'extra.weight'" in refused.reason
    with Client(api.url, KEYS["alice"]) as client, pytest.raises(NotFound):
        client.get_weights(weights.id)


def test_an_upload_of_a_wrong_file_type_is_refused_before_sending(tmp_path: Path) -> None:
    with Client("http://127.0.0.1:9", "k") as client, pytest.raises(ValueError, match="not an archive"):
        client.upload_dataset(tmp_path / "notes.txt")


def test_clr_remote_upload_and_list(api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    from clrclient.cli_remote import main as remote

    monkeypatch.setenv("CLR_API_URL", api.url)
    monkeypatch.setenv("CLR_API_KEY", KEYS["alice"])
    archive = _noise_archive(tmp_path / "small.zip", per_class=3, size=8)
    assert remote(["upload", str(archive), "--name", "small"]) == 0
    captured = capsys.readouterr()
    dataset_id = captured.out.strip()
    assert dataset_id.startswith("ds_") and "2 classes" in captured.err
    assert remote(["range-test", "--dataset", dataset_id, "--num-iter", "10"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert remote(["list", "--kind", "range_test", "--limit", "1", "--json"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [job_id]
    assert remote(["cancel", job_id]) == 0 and remote(["delete", job_id]) == 0
    assert remote(["get", job_id]) == 4 and "job not found" in capsys.readouterr().err
    with Client(api.url, KEYS["alice"]) as client:
        client.delete_dataset(dataset_id)
