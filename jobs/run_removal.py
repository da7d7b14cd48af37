"""A finished job's files, removed: its run folder, or its objects when an object store holds them.

Both the API (DELETE /v1/jobs/{id}) and the workers' retention sweep remove a job's files; the record is
already gone by then, so what cannot be removed now is logged (folder) or left to the pending-deletes
sweeper (objects), never listed again.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import redis

from jobs.pending_deletes import PendingDeletes, delete_or_defer
from jobs.settings import Settings
from jobs.storage import run_key, store_for

log = logging.getLogger(__name__)


def run_folder(settings: Settings, job_id: str) -> Path:
    """Where the job's worker writes its files (local storage)."""
    return Path(settings.artifact_dir) / job_id


def remove_run_files(settings: Settings, job_id: str, client: redis.Redis | None = None) -> None:
    """Delete the job's run folder, or its objects; with `client`, objects the store cannot delete now
    go to the pending-deletes sweeper, which retries with backoff."""
    objects = store_for(settings)
    if objects.remote:
        if client is None:
            objects.delete_prefix(run_key(job_id))
        else:
            delete_or_defer(objects, PendingDeletes(client, settings.key_prefix), run_key(job_id))
        return
    root = run_folder(settings, job_id)
    if root.is_symlink() or not root.is_dir():
        return
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        log.warning("job %s: run folder %s could not be removed completely", job_id, root)
