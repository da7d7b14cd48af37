"""A job's files over HTTP: plots, the classification report and the other artifacts.

Names are looked up in allow-lists and resolved only inside the job's own run folder
(`artifact_dir / job_id`), checked again after `Path.resolve()`, so no name (or symlink) reaches
anything else. A file that does not exist yet is a 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse

from jobs.settings import Settings
from service.deps import OwnedJob, SettingsDep
from service.run_files import ARTIFACTS, BINARY, JSON, PLOTS, REPORTS, run_file

router = APIRouter(prefix="/v1", tags=["artifacts"])

_NOT_YET: dict[int | str, dict[str, Any]] = {404: {"description": "unknown job, or the job has no such file (yet)"}}


def _serve(settings: Settings, job_id: str, relative: str, media_type: str, *,
           download: str | None = None) -> FileResponse:
    path = run_file(settings, job_id, relative)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{relative} does not exist for this job (yet)")
    return FileResponse(path, media_type=media_type, filename=download,
                        content_disposition_type="attachment" if download else "inline")


@router.get("/jobs/{job_id}/plots/{name}.png", response_class=FileResponse, responses={
    200: {"content": {"image/png": {}}, "description": "the plot"}, **_NOT_YET})
def get_plot(job: OwnedJob, name: str, settings: SettingsDep) -> FileResponse:
    """A plot: range_test, history, lr_schedule, lr_schedule_preview or confusion_matrix."""
    if name not in PLOTS:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"no plot named {name[:100]!r}; known: {sorted(PLOTS)}")
    return _serve(settings, job["id"], PLOTS[name], "image/png")


@router.get("/jobs/{job_id}/report", response_class=FileResponse, responses={
    200: {"content": {JSON: {}, "text/plain": {}}, "description": "the classification report"}, **_NOT_YET})
def get_report(
    job: OwnedJob, settings: SettingsDep, format: Annotated[Literal["json", "text"], Query()] = "json"
) -> FileResponse:
    """The classification report on the test split: JSON, or the text table with `?format=text`."""
    relative, media_type = REPORTS[format]
    return _serve(settings, job["id"], relative, media_type)


@router.get("/jobs/{job_id}/artifacts/{name}", response_class=FileResponse, responses={
    200: {"content": {JSON: {}, "text/csv": {}, BINARY: {}}, "description": "the file"}, **_NOT_YET})
def get_artifact(job: OwnedJob, name: str, settings: SettingsDep) -> FileResponse:
    """history.json, range_test.json, range_test_log.csv, spec.json, model.pt, or checkpoint (last.pt)."""
    if name not in ARTIFACTS:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"no artifact named {name[:100]!r}; known: {sorted(ARTIFACTS)}")
    relative, media_type = ARTIFACTS[name]
    download = f"{job['id']}-{Path(relative).name}" if media_type == BINARY else None
    return _serve(settings, job["id"], relative, media_type, download=download)
