"""`Client`: the API from Python, synchronously (httpx). `AsyncClient` (async_client.py) is the same
surface with `await`; both build their requests with calls.py.

    with Client() as api:                          # CLR_API_URL, CLR_API_KEY
        job = api.submit_train(TrainSpec(preset="digits-demo", epochs=4))
        job = api.wait(job.id)                     # follows the event stream, resumes after drops
        api.download_plots(job.id, "plots/")
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
import stamina
from httpx_sse import connect_sse

from clrclient import calls
from clrclient.config import ClientSettings
from clrclient.errors import error_for
from clrclient.events import EventFollower
from clrclient.models import Job, JobEvent, UploadedDataset, UploadedWeights
from clrclient.progress import upload_progress
from clrclient.retries import RetryableResponse, RetryPolicy, is_retryable, retry_hook
from clrclient.transfer import Progress, iter_file, partial_path
from clrcore.specs import RangeTestSpec, TrainSpec

SpecLike = TrainSpec | RangeTestSpec | Mapping[str, Any]


def http_options(base_url: str | None, api_key: str | None, timeout: float | None) -> dict[str, Any]:
    """httpx client options from the arguments, falling back on CLR_API_URL / CLR_API_KEY."""
    settings = ClientSettings()
    key = api_key if api_key is not None else settings.api_key
    headers = {"User-Agent": "clrclient"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return {"base_url": base_url or settings.api_url, "headers": headers,
            "timeout": settings.api_timeout if timeout is None else timeout}


class Client:
    """A typed client over the API; 4xx answers raise errors.ApiError subclasses naming the field."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float | None = None,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self.http = httpx.Client(transport=transport, **http_options(base_url, api_key, timeout))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------------------ sending

    def _attempts(self, call: calls.Call) -> Iterable[stamina.Attempt]:
        p = self.retry
        return stamina.retry_context(on=retry_hook(call.replayable, p), attempts=p.attempts, timeout=p.timeout,
                                     wait_initial=p.wait_initial, wait_max=p.wait_max, wait_jitter=p.wait_jitter)

    def send(self, call: calls.Call, *, content: Callable[[], Iterator[bytes]] | None = None) -> httpx.Response:
        """One operation, retried as retries.py allows; a refusal raises."""
        try:
            for attempt in self._attempts(call):
                with attempt:
                    response = self.http.request(call.method, call.path, params=call.params, json=call.json,
                                                 headers=call.headers, content=content() if content else None)
                    if is_retryable(response, call.replayable):
                        raise RetryableResponse(response)
        except RetryableResponse as exc:
            raise error_for(exc.response) from None
        if response.is_error:
            raise error_for(response)
        return response

    def _download(self, call: calls.Call, dest: str | Path) -> Path:
        dest = Path(dest)
        part = partial_path(dest)
        try:
            for attempt in self._attempts(call):
                with attempt, self.http.stream(call.method, call.path, params=call.params,
                                               headers=call.headers) as response:
                    if response.is_error:
                        response.read()
                        raise RetryableResponse(response) if is_retryable(response, True) else error_for(response)
                    with part.open("wb") as file:
                        for chunk in response.iter_bytes():
                            file.write(chunk)
        except BaseException as exc:
            part.unlink(missing_ok=True)
            if isinstance(exc, RetryableResponse):
                raise error_for(exc.response) from None
            raise
        part.replace(dest)
        return dest

    # ------------------------------------------------------------------------------------ jobs

    def submit_train(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        """Queue a training job. A TrainSpec is checked here first; a mapping is left to the server."""
        return Job.model_validate(self.send(calls.submit("train", spec, idempotency_key)).json())

    def submit_range_test(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        return Job.model_validate(self.send(calls.submit("range-test", spec, idempotency_key)).json())

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self.send(calls.get_job(job_id)).json())

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop (Conflict if it already finished); returns the job as it is now."""
        return Job.model_validate(self.send(calls.cancel(job_id)).json())

    def delete(self, job_id: str) -> None:
        """Remove a finished job and its files for good (Conflict while it is queued or running)."""
        self.send(calls.delete(job_id))

    def list(self, *, kind: str | None = None, state: str | None = None, page_size: int = 50,
             limit: int | None = None) -> Iterator[Job]:
        """The key's jobs, newest first, page after page (at most `limit` of them)."""
        cursor, seen = None, 0
        while True:
            page = self.send(calls.list_jobs(kind, state, cursor, page_size)).json()
            for item in page["items"]:
                yield Job.model_validate(item)
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # ------------------------------------------------------------------------------------ events

    def events(self, job_id: str, *, last_event_id: str | None = None,
               timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events until its final state, reconnecting with Last-Event-ID after any drop."""
        follower = EventFollower(job_id, last_event_id=last_event_id, policy=self.retry, timeout=timeout)
        while True:
            call = follower.call()
            cause: Exception | None = None
            try:
                with connect_sse(self.http, "GET", call.path, headers=call.headers,
                                 timeout=follower.http_timeout()) as source:
                    response = source.response
                    if response.is_error:
                        response.read()
                        raise RetryableResponse(response) if is_retryable(response, True) else error_for(response)
                    for sse in source.iter_sse():
                        event = follower.take(sse)
                        if event is not None:
                            yield event
                            if event.final:
                                return
                        follower.check_deadline()
            except (httpx.TransportError, RetryableResponse) as exc:
                cause = exc
            time.sleep(follower.dropped(cause))

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_event: Callable[[JobEvent], None] | None = None) -> Job:
        """Block until the job is final (following its events, not polling); returns the final job."""
        for event in self.events(job_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)

    # ------------------------------------------------------------------------------------ files

    def report(self, job_id: str) -> dict[str, Any]:
        """The classification report as JSON (NotFound until the job wrote it)."""
        return self.send(calls.report(job_id, "json")).json()

    def report_text(self, job_id: str) -> str:
        return self.send(calls.report(job_id, "text")).text

    def download_report(self, job_id: str, dest: str | Path, *, format: Literal["json", "text"] = "json") -> Path:
        return self._download(calls.report(job_id, format), dest)

    def download_plot(self, job_id: str, name: str, dest: str | Path) -> Path:
        return self._download(calls.plot(job_id, name), dest)

    def download_plots(self, job_id: str, out_dir: str | Path) -> dict[str, Path]:
        """Every plot the job has, as out_dir/<name>.png."""
        return {name: self.download_plot(job_id, name, Path(out_dir) / f"{name}.png")
                for name in self.get(job_id).plot_names}

    def download_artifact(self, job_id: str, name: str, dest: str | Path) -> Path:
        """history.json, range_test.json, range_test_log.csv, spec.json, model.pt or checkpoint."""
        return self._download(calls.artifact(job_id, name), dest)

    def download_run(self, job_id: str, out_dir: str | Path) -> builtins.list[Path]:  # `list` is a method here
        """Every file the job has (plots, report, artifacts) into a folder laid out like `clr train --out`."""
        return [self._download(call, Path(out_dir) / name) for call, name in calls.run_files(self.get(job_id).links)]

    # ------------------------------------------------------------------------------------ datasets

    def _send_file(self, call: calls.Call, path: Path, progress: Progress | bool | None) -> httpx.Response:
        """Send `call` with the file streamed from disk as its body, reporting `progress` (one upload
        path for datasets and weights)."""
        total = path.stat().st_size
        callback, bar = upload_progress(progress, total, path.name)
        try:
            return self.send(call, content=lambda: iter_file(path, total, callback))
        finally:
            if bar is not None:
                bar.close()

    def upload_dataset(self, path: str | Path, *, name: str | None = None,
                       progress: Progress | bool | None = None) -> UploadedDataset:
        """Upload an image-folder archive (.zip, .tar, .tar.gz), streamed from disk.

        `progress`: a callback `(sent, total)`, or True for a tqdm bar on stderr.
        """
        response = self._send_file(calls.upload(Path(path), name), Path(path), progress)
        return UploadedDataset.model_validate(response.json())

    def get_dataset(self, dataset_id: str) -> UploadedDataset:
        return UploadedDataset.model_validate(self.send(calls.get_dataset(dataset_id)).json())

    def delete_dataset(self, dataset_id: str) -> None:
        self.send(calls.delete_dataset(dataset_id))

    def upload_weights(self, path: str | Path, architecture: str, *, name: str | None = None,
                       progress: Progress | bool | None = None) -> UploadedWeights:
        """Upload pretrained weights (a .safetensors file) for a catalog `architecture`; a job then
        names `finetune.weights: <id>`. A misfit raises `InvalidRequest` naming the tensor."""
        response = self._send_file(calls.upload_weights(Path(path), architecture, name), Path(path), progress)
        return UploadedWeights.model_validate(response.json())

    def get_weights(self, weights_id: str) -> UploadedWeights:
        return UploadedWeights.model_validate((self.send(calls.get_weights(weights_id))).json())

    def delete_weights(self, weights_id: str) -> None:
        self.send(calls.delete_weights(weights_id))

