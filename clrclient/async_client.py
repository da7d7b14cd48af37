"""`AsyncClient`: Client's surface for asyncio (or trio) callers, on httpx.AsyncClient.

    async with AsyncClient() as api:
        job = await api.submit_range_test({"dataset": "digits", "num_iter": 80})
        job = await api.wait(job.id)
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import stamina
from httpx_sse import aconnect_sse

from clrclient import calls
from clrclient.client import SpecLike, http_options
from clrclient.errors import error_for
from clrclient.events import EventFollower
from clrclient.models import Job, JobEvent, UploadedDataset, UploadedWeights
from clrclient.progress import upload_progress
from clrclient.retries import RetryableResponse, RetryPolicy, is_retryable, retry_hook
from clrclient.transfer import Progress, aiter_file, partial_path


class AsyncClient:
    """The async twin of `Client`: same methods, same errors, awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float | None = None,
                 retry: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self.http = httpx.AsyncClient(transport=transport, **http_options(base_url, api_key, timeout))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------------------------ sending

    def _attempts(self, call: calls.Call) -> AsyncIterable[stamina.Attempt]:
        p = self.retry
        return stamina.retry_context(on=retry_hook(call.replayable, p), attempts=p.attempts, timeout=p.timeout,
                                     wait_initial=p.wait_initial, wait_max=p.wait_max, wait_jitter=p.wait_jitter)

    async def send(self, call: calls.Call, *,
                   content: Callable[[], AsyncIterator[bytes]] | None = None) -> httpx.Response:
        try:
            async for attempt in self._attempts(call):
                with attempt:
                    response = await self.http.request(call.method, call.path, params=call.params, json=call.json,
                                                       headers=call.headers, content=content() if content else None)
                    if is_retryable(response, call.replayable):
                        raise RetryableResponse(response)
        except RetryableResponse as exc:
            raise error_for(exc.response) from None
        if response.is_error:
            raise error_for(response)
        return response

    async def _download(self, call: calls.Call, dest: str | Path) -> Path:
        dest = Path(dest)
        part = partial_path(dest)
        try:
            async for attempt in self._attempts(call):
                with attempt:
                    async with self.http.stream(call.method, call.path, params=call.params,
                                                headers=call.headers) as response:
                        if response.is_error:
                            await response.aread()
                            raise (RetryableResponse(response) if is_retryable(response, True)
                                   else error_for(response))
                        async with await anyio.open_file(part, "wb") as file:
                            async for chunk in response.aiter_bytes():
                                await file.write(chunk)
        except BaseException as exc:
            part.unlink(missing_ok=True)
            if isinstance(exc, RetryableResponse):
                raise error_for(exc.response) from None
            raise
        part.replace(dest)
        return dest

    # ------------------------------------------------------------------------------------ jobs

    async def submit_train(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        return Job.model_validate((await self.send(calls.submit("train", spec, idempotency_key))).json())

    async def submit_range_test(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        return Job.model_validate((await self.send(calls.submit("range-test", spec, idempotency_key))).json())

    async def get(self, job_id: str) -> Job:
        return Job.model_validate((await self.send(calls.get_job(job_id))).json())

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate((await self.send(calls.cancel(job_id))).json())

    async def delete(self, job_id: str) -> None:
        await self.send(calls.delete(job_id))

    async def list(self, *, kind: str | None = None, state: str | None = None, page_size: int = 50,
                   limit: int | None = None) -> AsyncIterator[Job]:
        cursor, seen = None, 0
        while True:
            page = (await self.send(calls.list_jobs(kind, state, cursor, page_size))).json()
            for item in page["items"]:
                yield Job.model_validate(item)
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # ------------------------------------------------------------------------------------ events

    async def events(self, job_id: str, *, last_event_id: str | None = None,
                     timeout: float | None = None) -> AsyncIterator[JobEvent]:
        follower = EventFollower(job_id, last_event_id=last_event_id, policy=self.retry, timeout=timeout)
        while True:
            call = follower.call()
            cause: Exception | None = None
            try:
                async with aconnect_sse(self.http, "GET", call.path, headers=call.headers,
                                        timeout=follower.http_timeout()) as source:
                    response = source.response
                    if response.is_error:
                        await response.aread()
                        raise RetryableResponse(response) if is_retryable(response, True) else error_for(response)
                    async for sse in source.aiter_sse():
                        event = follower.take(sse)
                        if event is not None:
                            yield event
                            if event.final:
                                return
                        follower.check_deadline()
            except (httpx.TransportError, RetryableResponse) as exc:
                cause = exc
            await anyio.sleep(follower.dropped(cause))

    async def wait(self, job_id: str, *, timeout: float | None = None,
                   on_event: Callable[[JobEvent], None] | None = None) -> Job:
        async for event in self.events(job_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return await self.get(job_id)

    # ------------------------------------------------------------------------------------ files

    async def report(self, job_id: str) -> dict[str, Any]:
        return (await self.send(calls.report(job_id, "json"))).json()

    async def report_text(self, job_id: str) -> str:
        return (await self.send(calls.report(job_id, "text"))).text

    async def download_report(self, job_id: str, dest: str | Path, *,
                              format: Literal["json", "text"] = "json") -> Path:
        return await self._download(calls.report(job_id, format), dest)

    async def download_plot(self, job_id: str, name: str, dest: str | Path) -> Path:
        return await self._download(calls.plot(job_id, name), dest)

    async def download_plots(self, job_id: str, out_dir: str | Path) -> dict[str, Path]:
        job = await self.get(job_id)
        return {name: await self.download_plot(job_id, name, Path(out_dir) / f"{name}.png")
                for name in job.plot_names}

    async def download_artifact(self, job_id: str, name: str, dest: str | Path) -> Path:
        return await self._download(calls.artifact(job_id, name), dest)

    async def download_run(self, job_id: str, out_dir: str | Path) -> builtins.list[Path]:  # `list` is a method here
        job = await self.get(job_id)
        return [await self._download(call, Path(out_dir) / name) for call, name in calls.run_files(job.links)]

    # ------------------------------------------------------------------------------------ datasets

    async def _send_file(self, call: calls.Call, path: Path, progress: Progress | bool | None) -> httpx.Response:
        """Send `call` with the file streamed from disk as its body, reporting `progress` (one upload
        path for datasets and weights)."""
        total = path.stat().st_size
        callback, bar = upload_progress(progress, total, path.name)
        try:
            return await self.send(call, content=lambda: aiter_file(path, total, callback))
        finally:
            if bar is not None:
                bar.close()

    async def upload_dataset(self, path: str | Path, *, name: str | None = None,
                             progress: Progress | bool | None = None) -> UploadedDataset:
        response = await self._send_file(calls.upload(Path(path), name), Path(path), progress)
        return UploadedDataset.model_validate(response.json())

    async def get_dataset(self, dataset_id: str) -> UploadedDataset:
        return UploadedDataset.model_validate((await self.send(calls.get_dataset(dataset_id))).json())

    async def delete_dataset(self, dataset_id: str) -> None:
        await self.send(calls.delete_dataset(dataset_id))

    async def upload_weights(self, path: str | Path, architecture: str, *, name: str | None = None,
                       progress: Progress | bool | None = None) -> UploadedWeights:
        """Upload pretrained weights (a .safetensors file) for a catalog `architecture`; a job then
        names `finetune.weights: <id>`. A misfit raises `InvalidRequest` naming the tensor."""
        response = await self._send_file(calls.upload_weights(Path(path), architecture, name), Path(path), progress)
        return UploadedWeights.model_validate(response.json())

    async def get_weights(self, weights_id: str) -> UploadedWeights:
        return UploadedWeights.model_validate((await self.send(calls.get_weights(weights_id))).json())

    async def delete_weights(self, weights_id: str) -> None:
        await self.send(calls.delete_weights(weights_id))
