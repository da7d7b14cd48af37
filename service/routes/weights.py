"""Pretrained weights: upload a safetensors file for an architecture, list, inspect and delete them.

`POST /v1/weights?architecture=resnet18&name=mine` takes the file itself as the request body (not
multipart), `Content-Type: application/octet-stream`. Like a dataset upload it is streamed to a temp
file and counted as it arrives (413 `too_large` past CLR_MAX_UPLOAD_BYTES, `quota_exceeded` past the
key's quota, which datasets and weights share); then checked header-first against the architecture
(`service/weight_uploads.py`): 422 naming the offending tensor (`tensor`) when a name is unknown or a
shape wrong. A job then names the upload as `finetune.weights`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from jobs.datasets import QuotaExceeded, in_flight_job
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.weights import EXT, WeightStore
from service.deps import Owner, SettingsDep, StoreDep
from service.uploads import RESERVE_STEP, QuotaReservation, UploadRefused, upload_limit, write_stream
from service.weight_uploads import WeightsRefused, check_architecture, check_content_type, inspect_weights

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["weights"])



async def get_weights(request: Request) -> WeightStore:
    return request.app.state.weights


WeightsDep = Annotated[WeightStore, Depends(get_weights)]


class UploadedWeights(BaseModel):
    id: str = Field(description="what a job spec names as `finetune.weights`")
    name: str
    architecture: str = Field(description="the catalog model these weights are for (a job's `model`)")
    format: str
    bytes: int
    created_at: datetime
    validation: str = Field(description="'ok': every tensor's name and shape was checked before the file was kept")
    tensors: int
    parameters: int = Field(description="elements over all tensors (buffers included)")
    dtypes: list[str]
    replaced: list[str] = Field(description="tensors of another shape than the architecture's at 10 classes "
                                "and 3 channels (head, stem): a job keeps its own for those, except a stem "
                                "for other input channels, whose filters it sums or tiles to the data's")
    links: dict[str, str]


class WeightsList(BaseModel):
    items: list[UploadedWeights]


class WeightsRefusal(BaseModel):
    detail: str
    problem: str = Field(description="a stable code: too_large, quota_exceeded, not_safetensors, unknown_tensor, "
                         "wrong_shape, missing_tensor, wrong_dtype, unknown_architecture, ...")
    tensor: str | None = Field(None, description="the offending tensor's name, when one is")
    problems: list[dict[str, Any]] = Field(default_factory=list, description="the first problems, each with "
                                           "tensor, problem and detail")


def weights_out(record: dict) -> dict:
    """The public view of a record (owner, path and key left out)."""
    return {
        **{k: record[k] for k in ("id", "name", "architecture", "format", "bytes", "validation", "tensors",
                                  "parameters", "dtypes", "replaced")},
        "created_at": datetime.fromtimestamp(record["created_at"], UTC),
        "links": {"self": f"/v1/weights/{record['id']}"},
    }


def _owned(weights: WeightStore, owner: str, weights_id: str) -> dict:
    record = weights.owned(owner, weights_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="weights not found")
    return record


def _job_naming(store: JobStore, owner: str, weights_id: str) -> dict | None:
    """A not yet final job of `owner` whose spec names the weights, if any."""
    return in_flight_job(store, owner, lambda spec: (spec.get("finetune") or {}).get("weights") == weights_id)


_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}, "examples": {
        "resnet18": {"summary": "a resnet18 state_dict saved with safetensors",
                     "description": "Send the file itself as the body, e.g. `curl --data-binary @resnet18.safetensors "
                                    "-H 'Content-Type: application/octet-stream' "
                                    "'.../v1/weights?architecture=resnet18&name=my-pretrain'`; in Python, "
                                    "`safetensors.torch.save_file(model.state_dict(), 'resnet18.safetensors')`.",
                     "externalValue": "resnet18.safetensors"}}}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": UploadedWeights, "description": "stored; `Location` names the weights"},
    413: {"model": WeightsRefusal, "description": "over CLR_MAX_UPLOAD_BYTES (`too_large`) or the key's quota "
                                                  "(`quota_exceeded`)"},
    415: {"model": WeightsRefusal, "description": "Content-Type is not application/octet-stream"},
    422: {"content": {"application/json": {"schema": {"anyOf": [
        {"$ref": "#/components/schemas/WeightsRefusal"}, {"$ref": "#/components/schemas/HTTPValidationError"}]}}},
          "description": "not a safetensors file, or a tensor that does not fit the architecture (`tensor` names it)"},
}


@router.post("/weights", status_code=201, response_model=UploadedWeights, responses=_RESPONSES, openapi_extra=_BODY)
async def upload_weights(
    request: Request, owner: Owner, weights: WeightsDep, settings: SettingsDep,
    architecture: Annotated[str, Query(min_length=1, max_length=100, description="a model of GET /v1/models")],
    name: Annotated[str | None, Query(min_length=1, max_length=100, description="a label for you")] = None,
) -> Response:
    """Upload pretrained weights for `architecture` as a safetensors file (the raw body); never a pickle."""
    try:
        record = await _intake(request, owner, architecture, name, weights, settings)
    except UploadRefused as refused:
        logger.info("weights upload by %s refused (%s): %s", owner, refused.problem, refused.message)
        body: dict[str, Any] = {"detail": refused.message, "problem": refused.problem}
        if isinstance(refused, WeightsRefused):
            body.update(tensor=refused.tensor, problems=refused.problems)
        return JSONResponse(body, refused.status)
    except ClientDisconnect:
        logger.info("weights upload by %s abandoned: client disconnected", owner)
        return Response(status_code=status.HTTP_400_BAD_REQUEST)
    out = UploadedWeights.model_validate(weights_out(record)).model_dump(mode="json")
    return JSONResponse(out, status.HTTP_201_CREATED, headers={"Location": out["links"]["self"]})


async def _intake(request: Request, owner: str, architecture: str, name: str | None, weights: WeightStore,
                  settings: Settings) -> dict:
    """Stream, check, commit; the temp file is gone afterwards whatever happened."""
    check_content_type(request.headers.get("content-type"))
    check_architecture(architecture)
    quota = settings.upload_quota_bytes
    used = await anyio.to_thread.run_sync(request.app.state.uploads.bytes_used, owner)
    limit, refusal = upload_limit(quota, used, settings.max_upload_bytes, "file")
    declared = request.headers.get("content-length", "")
    if limit <= 0 or (declared.isdigit() and int(declared) > limit):
        raise refusal
    reservation = QuotaReservation(request.app.state.uploads, owner, quota, "weights file")
    temp = request.app.state.uploads.incoming_path(EXT)
    try:
        await reservation.reserve(int(declared) if declared.isdigit() else min(limit, RESERVE_STEP))
        size = await write_stream(request.stream(), temp, limit, refusal, reservation)
        summary = await anyio.to_thread.run_sync(inspect_weights, temp, architecture)
        return await anyio.to_thread.run_sync(partial(weights.commit, owner, name or "", temp, size, summary, quota,
                                                      reservation.upload_id))
    except QuotaExceeded as exceeded:  # a concurrent upload spent the quota meanwhile
        raise UploadRefused(413, "quota_exceeded", str(exceeded)) from None
    finally:
        temp.unlink(missing_ok=True)
        await reservation.release()


_NO_WEIGHTS: dict[int | str, dict[str, Any]] = {404: {"description": "no such weights for this key"}}


@router.get("/weights", response_model=WeightsList)
def list_weights(owner: Owner, weights: WeightsDep) -> dict:
    """The caller's uploaded weights, newest first."""
    return {"items": [weights_out(r) for r in weights.list(owner)]}


@router.get("/weights/{weights_id}", response_model=UploadedWeights, responses=_NO_WEIGHTS)
def get_weights_record(weights_id: str, owner: Owner, weights: WeightsDep) -> dict:
    """One upload: its architecture, tensor count, dtypes and the tensors a job will not load (`replaced`)."""
    return weights_out(_owned(weights, owner, weights_id))


@router.delete("/weights/{weights_id}", status_code=204,
               responses={**_NO_WEIGHTS, 409: {"description": "a queued or running job of this key names them"}})
def delete_weights(weights_id: str, owner: Owner, weights: WeightsDep, store: StoreDep) -> Response:
    """Remove the file (or object) and its record, unless a job that has not finished yet names them."""
    record = _owned(weights, owner, weights_id)
    job = _job_naming(store, owner, weights_id)
    if job is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"weights {weights_id} are in use by job {job['id']} "
                            f"({job['state']}); cancel it or wait until it ends")
    weights.delete(record)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
