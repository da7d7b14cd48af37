"""The client and `clr remote` with a real worker: a tiny digits job followed to its end over SSE,
its files downloaded, the wait surviving an API restart, and the exit codes of `--wait`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clrclient import AsyncClient, Client, JobEvent, NotFound, RetryPolicy, TrainSpec
from clrclient.cli_remote import main as remote
from clrclient.progress import JobBars
from jobs.settings import Settings
from tests.clrclient.conftest import KEYS
from tests.helpers import ROOT, WorkerProcess
from tests.reliability.api_server import ApiServer

pytestmark = pytest.mark.slow

TINY = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "epochs": 2, "train_subset": 400,
        "batch_size": 64, "base_lr": 0.01, "max_lr": 0.1, "step_size": 1, "augment": {"translate": 0, "flip": False}}
TINY_FLAGS = ["--dataset", "digits", "--model", "tiny_cnn", "--device", "cpu", "--train-subset", "400",
              "--batch-size", "64", "--base-lr", "0.01", "--max-lr", "0.1", "--step-size", "1",
              "--augment-translate", "0", "--augment-flip", "false"]
PATIENT = RetryPolicy(attempts=20, timeout=60, wait_initial=0.1, wait_max=1.0, wait_jitter=0.1)


@pytest.fixture(scope="module")
def trained(api: ApiServer, worker: WorkerProcess) -> tuple[str, list[JobEvent]]:
    """A tiny training job, followed to its end by `wait`; its id and every event wait saw."""
    events: list[JobEvent] = []
    with Client(api.url, KEYS["alice"]) as client:
        job = client.submit_train(TrainSpec(**TINY))
        done = client.wait(job.id, timeout=240, on_event=events.append)
    assert done.state == "succeeded", (done.error, worker.log_tail())
    return done.id, events


def test_wait_follows_the_events_to_the_final_state(api: ApiServer, trained: tuple[str, list[JobEvent]]) -> None:
    job_id, events = trained
    states = [e.data["state"] for e in events if e.name == "state"]
    assert states[0] == "queued" and "running" in states and states[-1] == "succeeded"
    assert any(e.name == "progress" and e.data["progress"]["phase"] == "train" for e in events)
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids))
    with Client(api.url, KEYS["alice"]) as client:
        job = client.get(job_id)
    assert job.succeeded and job.result["epochs_run"] == 2 and job.progress["fraction"] == 1.0


def test_report_plots_and_artifacts_download_to_files(api: ApiServer, trained: tuple[str, list[JobEvent]],
                                                      tmp_path: Path) -> None:
    job_id, _ = trained
    with Client(api.url, KEYS["alice"]) as client:
        plots = client.download_plots(job_id, tmp_path / "plots")
        assert {"history", "lr_schedule", "confusion_matrix"} <= set(plots)
        for path in plots.values():
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "weighted avg" in client.report_text(job_id)
        report = json.loads(client.download_report(job_id, tmp_path / "report.json").read_text())
        assert report == client.report(job_id) and "accuracy" in report
        model = client.download_artifact(job_id, "model.pt", tmp_path / "model.pt")
        assert model.read_bytes()[:2] == b"PK" and not (tmp_path / "model.pt.part").exists()
        spec = client.download_artifact(job_id, "spec.json", tmp_path / "spec.json")
        assert json.loads(spec.read_text())["epochs"] == 2
        with pytest.raises(NotFound):  # a training job with a given max_lr has no range test plot
            client.download_plot(job_id, "range_test", tmp_path / "rt.png")
        assert not (tmp_path / "rt.png").exists() and not (tmp_path / "rt.png.part").exists()


def test_async_client_replays_the_events_and_downloads(api: ApiServer, trained: tuple[str, list[JobEvent]],
                                                      tmp_path: Path) -> None:
    job_id, seen_by_wait = trained

    async def scenario() -> tuple[list[JobEvent], str, dict[str, Path]]:
        async with AsyncClient(api.url, KEYS["alice"]) as client:
            replayed = [event async for event in client.events(job_id)]
            job = await client.wait(job_id)
            return replayed, job.state, await client.download_plots(job_id, tmp_path)

    replayed, state, plots = asyncio.run(scenario())
    assert [e.id for e in replayed] == [e.id for e in seen_by_wait] and state == "succeeded"
    assert plots["history"].read_bytes()[:4] == b"\x89PNG"


def test_the_progress_bars_draw_from_real_events(trained: tuple[str, list[JobEvent]],
                                                 capsys: pytest.CaptureFixture) -> None:
    bars = JobBars()
    for event in trained[1]:
        bars(event)
    bars.close()
    drawn = capsys.readouterr().err
    assert "train" in drawn and "step" in drawn


def test_remote_commands_on_a_finished_job(api: ApiServer, trained: tuple[str, list[JobEvent]], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    job_id, _ = trained
    monkeypatch.setenv("CLR_API_URL", api.url)
    monkeypatch.setenv("CLR_API_KEY", KEYS["alice"])
    assert remote(["get", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "succeeded"
    assert remote(["list", "--kind", "train", "--state", "succeeded"]) == 0
    assert job_id in capsys.readouterr().out
    assert remote(["report", job_id]) == 0
    assert "weighted avg" in capsys.readouterr().out
    assert remote(["plots", job_id, "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "history.png").exists()
    capsys.readouterr()
    assert remote(["wait", job_id]) == 0  # a finished job: the stream replays to the end at once
    assert "weighted avg" in capsys.readouterr().out
    assert remote(["cancel", job_id]) == 4  # 409: it finished
    assert "HTTP 409" in capsys.readouterr().err


def _cli(*args: str, api: ApiServer) -> subprocess.Popen:
    env = {**os.environ, "CLR_API_URL": api.url, "CLR_API_KEY": KEYS["cli"]}
    return subprocess.Popen([sys.executable, "-m", "clrcore.cli", "remote", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_clr_remote_submit_wait_exits_0_and_prints_the_report(api: ApiServer, worker: WorkerProcess,
                                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _cli("submit", *TINY_FLAGS, "--epochs", "1", "--wait", "--out", str(run), api=api)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err + worker.log_tail()
    job_id = out.splitlines()[0]
    assert "weighted avg" in out and f"job {job_id} succeeded" in out
    assert f"job {job_id}: running" in err and f"job {job_id}: succeeded" in err
    # --out: the run folder `clr train --out` would have written, fetched from the service
    assert {"history.png", "report.json", "report.txt", "model.pt", "spec.json"} <= {p.name for p in run.iterdir()}
    assert (run / "checkpoints" / "last.pt").read_bytes()[:2] == b"PK"
    assert "weighted avg" in (run / "report.txt").read_text()


def test_clr_remote_submit_wait_exits_nonzero_when_the_job_is_cancelled(api: ApiServer,
                                                                         worker: WorkerProcess) -> None:
    proc = _cli("submit", *TINY_FLAGS, "--epochs", "50", "--wait", api=api)
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    with Client(api.url, KEYS["cli"]) as client:
        client.cancel(job_id)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err
        assert f"job {job_id} cancelled" in err
        client.delete(job_id)
        with pytest.raises(NotFound):
            client.get(job_id)


def test_clr_remote_refused_flag_exits_2_naming_it(api: ApiServer) -> None:
    proc = _cli("submit", "--epochs", "5000", api=api)  # valid locally, over the server's limit
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--epochs: must be at most 200" in err
    proc = _cli("submit", "--range-test-num-iter", "2", api=api)  # refused before sending
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--range-test-num-iter" in err


def test_wait_resumes_after_the_api_restarts_mid_wait(client_api_settings: Settings, worker: WorkerProcess,
                                                      tmp_path: Path) -> None:
    api = ApiServer(client_api_settings, tmp_path / "api.log")
    api.start()
    events: list[JobEvent] = []
    outcome: dict[str, object] = {}
    try:
        with Client(api.url, KEYS["alice"], retry=PATIENT) as client:
            job = client.submit_train(TrainSpec(**{**TINY, "epochs": 10, "train_subset": 1000}))

            def follow() -> None:
                try:
                    outcome["job"] = client.wait(job.id, timeout=300, on_event=events.append)
                except Exception as exc:  # reported below
                    outcome["error"] = exc

            thread = threading.Thread(target=follow)
            thread.start()
            deadline = time.monotonic() + 240
            while sum(e.name == "progress" for e in events) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            api.kill()
            seen_before = len(events)
            assert not any(e.final for e in events), "the job ended before the API was killed"
            time.sleep(1.5)  # the client keeps reconnecting into a closed port meanwhile
            api.start()
            thread.join(timeout=300)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["job"].state == "succeeded"
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
        assert len(events) > seen_before and events[-1].data["state"] == "succeeded"
    finally:
        api.stop()
