"""Datasets: the catalog plus the caller's uploaded archives; upload, inspect and delete them.

`POST /v1/datasets?name=flowers` takes the archive itself as the request body (not multipart), with
`Content-Type: application/zip`, `application/x-tar` or `application/gzip` (a .tar.gz). The body is
streamed to a temp file and counted as it arrives, so a large archive never sits in memory and one
over the limit is refused mid-stream. Both byte limits answer 413, with `problem` saying which:
`too_large` (CLR_MAX_UPLOAD_BYTES) or `quota_exceeded` (CLR_UPLOAD_QUOTA_BYTES, the sum of the key's
stored archives and its uploads in progress: each upload reserves its bytes before writing them, so
parallel uploads cannot together pass the quota on disk). Every other refusal is a 4xx with `detail`
naming the member and the problem; nothing is stored unless the whole archive passed.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.abc
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from clrcore import catalog
from clrcore.capped_reader import ReadStopped
from jobs.datasets import DatasetStore, QuotaExceeded, job_naming
from jobs.settings import Settings
from service.deps import Owner, SettingsDep, StoreDep
from service.schemas import DatasetOut
from service.uploads import (
    ARCHIVE_TYPES,
    RESERVE_STEP,
    ArchiveSummary,
    QuotaReservation,
    UploadRefused,
    archive_ext,
    check_magic,
    decode_cache_room,
    inspect_archive,
    upload_limit,
    write_stream,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["datasets"])


async def get_uploads(request: Request) -> DatasetStore:
    return request.app.state.uploads


UploadsDep = Annotated[DatasetStore, Depends(get_uploads)]


# ------------------------------------------------------------------------------------------ models


class DatasetListItem(DatasetOut):
    source: Literal["catalog", "upload"] = Field("catalog", description="built in, or uploaded by this key")


class DatasetList(BaseModel):
    items: list[DatasetListItem]


class UploadedDataset(BaseModel):
    id: str = Field(description="what a job spec names as `dataset`")
    name: str
    format: Literal["zip", "tar", "tar.gz"]
    bytes: int
    created_at: datetime
    validation: str = Field(description="'ok': every member was checked before the archive was kept")
    classes: list[str]
    num_classes: int
    held_out_split: Literal["test", "val"] = Field(description="the split jobs evaluate on")
    counts: dict[str, dict[str, int]] = Field(description="split -> class -> images")
    width: int
    height: int
    channels: int
    image_size: int | None = Field(description="the side of square images; null otherwise")
    input_shape: list[int] = Field(description="C, H, W")
    sizes: dict[str, Any] = Field(
        default_factory=dict, description="the files' size distribution: distinct sizes, the most common "
        "with counts, min, max and aspect ratios; mixed sizes train at width x height unless a spec sets image_size")
    grayscale_converted_to_rgb: int = Field(0, description="grayscale files made RGB to match the colour ones")
    links: dict[str, str]


class Refusal(BaseModel):
    detail: str
    problem: str = Field(description="a stable code: too_large, quota_exceeded, unsafe_member, not_an_image, ...")


def dataset_out(record: dict) -> dict:
    """The public view of a record (the owner and the file path left out)."""
    width, height, channels = record["width"], record["height"], record["channels"]
    return {
        **{k: record[k] for k in ("id", "name", "format", "bytes", "validation", "classes", "held_out_split",
                                  "counts", "width", "height", "channels")},
        "created_at": datetime.fromtimestamp(record["created_at"], UTC),
        "num_classes": len(record["classes"]),
        "image_size": width if width == height else None,
        "input_shape": [channels, height, width],
        "sizes": record.get("sizes", {}),  # absent from records written before mixed sizes were accepted
        "grayscale_converted_to_rgb": record.get("grayscale_converted_to_rgb", 0),
        "links": {"self": f"/v1/datasets/{record['id']}"},
    }


def _list_item(record: dict) -> dict:
    counts = record["counts"]
    train, held_out = sum(counts["train"].values()), sum(counts[record["held_out_split"]].values())
    width, height, channels = record["width"], record["height"], record["channels"]
    return {
        "name": record["id"], "source": "upload", "channels": channels, "offline": True,
        "description": f"uploaded {record['name']!r}: {train} train and {held_out} "
                       f"{record['held_out_split']} images",
        "image_size": width if width == height else None, "input_shape": [channels, height, width],
        "classes": record["classes"],
    }


# ------------------------------------------------------------------------------------------ checks


def _owned(uploads: DatasetStore, owner: str, dataset_id: str) -> dict:
    record = uploads.owned(owner, dataset_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="dataset not found")
    return record


# ------------------------------------------------------------------------------------------ routes


@router.get("/datasets", response_model=DatasetList)
def list_datasets(owner: Owner, uploads: UploadsDep) -> dict:
    """Built-in datasets (input shape C, H, W; null where the files decide), then the caller's uploads,
    newest first; an upload's `name` is its id, which a job spec names as `dataset`."""
    builtin = [catalog.DATASETS[name].to_dict() for name in catalog.dataset_names()]
    return {"items": [*builtin, *(_list_item(r) for r in uploads.list(owner))]}


_ARCHIVE_LAYOUT = ("An image-folder archive: `train/<class>/<image>` plus `test/<class>/<image>` (or "
                   "`val/`), at least two classes, the same classes in both splits, one image size. "
                   "Send the file itself as the body, e.g. `curl --data-binary @flowers{ext} -H "
                   "'Content-Type: {media}' '.../v1/datasets?name=flowers'`.")


def _archive_example(media: str, ext: str) -> dict[str, Any]:
    """An example per media type: a binary body has no inline value, so it describes the file to send
    (and names one by `externalValue`), which is what a reader of /docs needs to build a request."""
    suffix = "." + ext
    return {"flowers": {"summary": f"a {ext} image-folder archive",
                        "description": _ARCHIVE_LAYOUT.format(ext=suffix, media=media),
                        "externalValue": f"flowers{suffix}"}}


_ARCHIVE_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    media: {"schema": {"type": "string", "format": "binary"}, "examples": _archive_example(media, ext)}
    for media, ext in ARCHIVE_TYPES.items()}}}
_UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": UploadedDataset, "description": "stored; `Location` names the dataset"},
    413: {"model": Refusal, "description": "over CLR_MAX_UPLOAD_BYTES (`too_large`) or the key's storage "
                                           "quota (`quota_exceeded`)"},
    415: {"model": Refusal, "description": "Content-Type is not one of the archive types"},
    # 422 also comes from FastAPI's own parameter validation (`?name=` too long): both bodies are declared.
    422: {"content": {"application/json": {"schema": {"anyOf": [
        {"$ref": "#/components/schemas/Refusal"}, {"$ref": "#/components/schemas/HTTPValidationError"}]}}},
          "description": "an unsafe member, a file that is not a readable image, or a layout the loader "
                         "cannot use; `detail` names it"},
}


@router.post("/datasets", status_code=201, response_model=UploadedDataset, responses=_UPLOAD_RESPONSES,
             openapi_extra=_ARCHIVE_BODY)
async def upload_dataset(
    request: Request, owner: Owner, uploads: UploadsDep, settings: SettingsDep,
    name: Annotated[str | None, Query(min_length=1, max_length=100, description="a label for you")] = None,
) -> Response:
    """Upload an image-folder archive (`train/<class>/<image>` plus `test/` or `val/`) as the raw body."""
    try:
        record = await _intake(request, owner, name, uploads, settings)
    except UploadRefused as refused:
        logger.info("upload by %s refused (%s): %s", owner, refused.problem, refused.message)
        return JSONResponse({"detail": refused.message, "problem": refused.problem}, refused.status)
    except ClientDisconnect:
        logger.info("upload by %s abandoned: client disconnected", owner)
        return Response(status_code=status.HTTP_400_BAD_REQUEST)
    body = UploadedDataset.model_validate(dataset_out(record)).model_dump(mode="json")
    return JSONResponse(body, status.HTTP_201_CREATED, headers={"Location": body["links"]["self"]})


async def _intake(request: Request, owner: str, name: str | None, uploads: DatasetStore,
                  settings: Settings) -> dict:
    """Stream, check, validate, commit; the temp file is gone afterwards whatever happened."""
    ext = archive_ext(request.headers.get("content-type"))
    quota = settings.upload_quota_bytes
    used = await anyio.to_thread.run_sync(uploads.bytes_used, owner)
    limit, refusal = upload_limit(quota, used, settings.max_upload_bytes, "archive")
    declared = request.headers.get("content-length", "")
    if limit <= 0 or (declared.isdigit() and int(declared) > limit):
        raise refusal
    reservation = QuotaReservation(uploads, owner, quota, "archive")
    temp = uploads.incoming_path(ext)
    try:
        await reservation.reserve(int(declared) if declared.isdigit() else min(limit, RESERVE_STEP))
        size = await write_stream(request.stream(), temp, limit, refusal, reservation)
        await anyio.to_thread.run_sync(check_magic, temp, ext)
        summary = await _validate(request, temp, settings)
        await anyio.to_thread.run_sync(decode_cache_room, summary, size, uploads, settings)
        return await anyio.to_thread.run_sync(
            partial(uploads.commit, owner, name or "", temp, ext, size, summary, quota, reservation.upload_id))
    except QuotaExceeded as exceeded:  # a concurrent upload spent the quota meanwhile
        raise UploadRefused(413, "quota_exceeded", str(exceeded)) from None
    finally:
        temp.unlink(missing_ok=True)
        await reservation.release()


DISCONNECT_POLL_S = 0.25


async def _validate(request: Request, temp: Path, settings: Settings) -> ArchiveSummary:
    """Validate in a worker thread while watching the connection: a client that hangs up stops the
    decompression and decoding at the next read (`ReadStopped`), instead of paying for them to the end."""
    gone = threading.Event()
    outcome: list[ArchiveSummary | Exception] = []

    async def watch() -> None:
        while not await request.is_disconnected():
            await anyio.sleep(DISCONNECT_POLL_S)
        gone.set()

    async def inspect(tasks: anyio.abc.TaskGroup) -> None:
        try:
            outcome.append(await anyio.to_thread.run_sync(partial(
                inspect_archive, temp, max_files=settings.max_upload_files,
                max_decoded_bytes=settings.max_decoded_bytes, max_ratio=settings.max_compression_ratio,
                stop=gone.is_set, memmap_min_bytes=settings.memmap_min_bytes or None)))
        except Exception as err:  # re-raised below, outside the task group (which would wrap it)
            outcome.append(err)
        finally:
            tasks.cancel_scope.cancel()  # the watcher's job is done

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        tasks.start_soon(inspect, tasks)
    result = outcome[0]
    if isinstance(result, ReadStopped):
        raise ClientDisconnect()
    if isinstance(result, Exception):
        raise result
    return result


_NO_DATASET: dict[int | str, dict[str, Any]] = {404: {"description": "no such dataset for this key"}}


@router.get("/datasets/{dataset_id}", response_model=UploadedDataset, responses=_NO_DATASET)
def get_dataset(dataset_id: str, owner: Owner, uploads: UploadsDep) -> dict:
    """One uploaded dataset: classes, image counts per split and class, image size, validation result."""
    return dataset_out(_owned(uploads, owner, dataset_id))


@router.delete("/datasets/{dataset_id}", status_code=204,
               responses={**_NO_DATASET, 409: {"description": "a queued or running job of this key names it"}})
def delete_dataset(dataset_id: str, owner: Owner, uploads: UploadsDep, store: StoreDep) -> Response:
    """Remove the archive and its record, unless a job that has not finished yet names it."""
    record = _owned(uploads, owner, dataset_id)
    job = job_naming(store, owner, dataset_id)
    if job is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"dataset {dataset_id} is in use by job {job['id']} "
                            f"({job['state']}); cancel it or wait until it ends")
    uploads.delete(record)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
