"""A job's public status object, the one `GET /v1/jobs/{id}` returns, built from its store record.

Here and not in service/, so that webhook payloads, built beside the workers, carry the same object.
The links to the job's files are the caller's: the API lists the run folder (`service.run_files`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def _time(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def base_links(job_id: str) -> dict[str, Any]:
    """The links every job has; file links (report, plots, artifacts) are added by whoever lists files."""
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel", "report": None,
            "report_text": None, "plots": {}, "artifacts": {}}


def job_status(record: dict, links: dict[str, Any]) -> dict[str, Any]:
    """The public view of a store record (the owner and internal fields left out)."""
    return {
        "id": record["id"],
        "kind": record["kind"],
        "state": record["state"],
        "spec": record["spec"] or {},
        "created_at": _time(record["created_at"]),
        "started_at": _time(record["started_at"]),
        "finished_at": _time(record["finished_at"]),
        "progress": record["progress"],
        "metrics": record["metrics"],
        "error": record["error"],
        "result": record["result"],
        "cancel_requested": record["cancel_requested"],
        "queue": record["queue"],
        "deliveries": record["deliveries"],
        "links": links,
    }
