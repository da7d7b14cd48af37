"""Serving a job's files from wherever they are stored: the local run folder (as before) or the
object store (`CLR_STORAGE_URL`), behind the same routes, auth and URLs.

From the store a file is streamed in 1 MiB chunks (never whole in memory); the first chunk is asked
for before the response starts, so an unreachable store is a 503 with the reason, never a 500 or a
truncated body. Large binaries may instead answer `?redirect=1` with a short-lived presigned URL when
`CLR_PRESIGN_SECONDS` is set.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from jobs.settings import Settings
from jobs.storage import StorageUnavailable, run_key, store_for
from service.run_files import run_file

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


def serve_run_file(settings: Settings, job_id: str, relative: str, media_type: str, *,
                   download: str | None = None, redirect: bool = False) -> Response:
    """The file `relative` of the job's run folder, or 404 if it does not exist (yet)."""
    objects = store_for(settings)
    disposition = "attachment" if download else "inline"
    if not objects.remote:
        path = run_file(settings, job_id, relative)
        if path is None:
            raise _missing(relative)
        return FileResponse(path, media_type=media_type, filename=download, content_disposition_type=disposition)
    key = run_key(job_id, relative)
    size = objects.size(key)
    if size is None:
        raise _missing(relative)
    if redirect and settings.presign_seconds > 0:
        url = objects.presign(key, settings.presign_seconds)
        if url:
            return RedirectResponse(url, status.HTTP_307_TEMPORARY_REDIRECT)
    try:
        chunks = objects.iter_chunks(key)
    except FileNotFoundError:  # deleted between the size check and the read
        raise _missing(relative) from None
    headers = {"Content-Length": str(size)}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{download}"'
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


def _missing(relative: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{relative} does not exist for this job (yet)")


async def _storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def install(app: FastAPI) -> None:
    """An unreachable object store answers 503 with the reason (and Retry-After), whatever the route."""
    app.add_exception_handler(StorageUnavailable, _storage_unavailable)
