"""A job's run folder on disk: where its files are, which of them a client may fetch, and removal.

The worker writes the folder (`artifact_dir / job_id`); the artifact routes serve from it and the job
routes link to it and remove it with the job. Names are looked up in allow-lists and resolved only
inside the job's own folder, checked again after `Path.resolve()`, so no name (or symlink) reaches
anything else.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from jobs.settings import Settings
from jobs.states import FINAL_STATES

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
