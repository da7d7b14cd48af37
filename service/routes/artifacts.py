"""A job's files over HTTP: plots, the classification report and the other artifacts.

Names are looked up in allow-lists and resolved only inside the job's own run folder
(`artifact_dir / job_id`), checked again after `Path.resolve()`, so no name (or symlink) reaches
anything else. A file that does not exist yet is a 404.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse

from jobs.settings import Settings
from jobs.states import FINAL_STATES
from service.deps import OwnedJob, SettingsDep

router = APIRouter(prefix="/v1", tags=["artifacts"])
logger = logging.getLogger(__name__)

PLOTS: dict[str, str] = {
    name: f"{name}.png"
    for name in ("range_test", "history", "lr_schedule", "lr_schedule_preview", "confusion_matrix")
}
JSON = "application/json"
BINARY = "application/octet-stream"
ARTIFACTS: dict[str, tuple[str, str]] = {  # public name -> (path in the run folder, content type)
    "history.json": ("history.json", JSON),
    "range_test.json": ("range_test.json", JSON),
    "range_test_log.csv": ("range_test_log.csv", "text/csv; charset=utf-8"),
    "spec.json": ("spec.json", JSON),
    "model.pt": ("model.pt", BINARY),
    "checkpoint": ("checkpoints/last.pt", BINARY),
}
REPORTS: dict[str, tuple[str, str]] = {
    "json": ("report.json", JSON),
    "text": ("report.txt", "text/plain; charset=utf-8"),
}
_FINAL = {s.value for s in FINAL_STATES}
_NOT_YET = {404: {"description": "unknown job, or the job has no such file (yet)"}}


def run_folder(settings: Settings, job_id: str) -> Path:
    """Where the job's worker writes its files."""
    return Path(settings.artifact_dir) / job_id


def run_file(settings: Settings, job_id: str, relative: str) -> Path | None:
    """The file `relative` inside the job's run folder, or None if absent or outside that folder."""
    root = run_folder(settings, job_id).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def remove_run_folder(settings: Settings, job_id: str) -> None:
    """Delete the job's run folder; what cannot be removed is logged and left (the record is gone)."""
    root = run_folder(settings, job_id)
    if root.is_symlink() or not root.is_dir():
        return
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        logger.warning("job %s: run folder %s could not be removed completely", job_id, root)


def _present(record: dict, settings: Settings) -> set[str]:
    """Relative paths of the run folder's files: the worker's list once the job ended, else a listing."""
    if record["state"] in _FINAL and record["artifacts"]:
        return set(record["artifacts"])
    root = run_folder(settings, record["id"])
    try:
        names = set(os.listdir(root))
    except OSError:
        return set()
    if "checkpoints" in names:
        names.add("checkpoints/last.pt")
    return names


def job_links(record: dict, settings: Settings) -> dict:
    """URLs of the job's own endpoints and of every file it has so far."""
    base = f"/v1/jobs/{record['id']}"
    present = _present(record, settings)
    return {
        "self": base,
        "events": f"{base}/events",
        "cancel": f"{base}/cancel",
        "report": f"{base}/report" if "report.json" in present else None,
        "report_text": f"{base}/report?format=text" if "report.txt" in present else None,
        "plots": {name: f"{base}/plots/{name}.png" for name, file in PLOTS.items() if file in present},
        "artifacts": {name: f"{base}/artifacts/{name}" for name, (file, _) in ARTIFACTS.items()
                      if file in present},
    }


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
