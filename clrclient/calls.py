"""Each API operation as a plain description of one HTTP request, shared by Client and AsyncClient,
so the two differ only in how they send it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from clrclient.retries import SAFE_METHODS
from clrcore.specs import RangeTestSpec, TrainSpec

PLOTS = ("range_test", "history", "lr_schedule", "lr_schedule_preview", "confusion_matrix")
ARCHIVE_TYPES = {".zip": "application/zip", ".tar": "application/x-tar", ".tar.gz": "application/gzip",
                 ".tgz": "application/gzip"}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def replayable(self) -> bool:
        """Safe to send twice (see retries.py)."""
        return self.method in SAFE_METHODS or "Idempotency-Key" in self.headers


def spec_body(spec: TrainSpec | RangeTestSpec | Mapping[str, Any]) -> dict[str, Any]:
    """What to send: a spec model as the fields it was given (the server fills the rest, and leaves the
    unset ones to the range test's recipe); a mapping as it is, for the server to validate."""
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json", exclude_unset=True)
    return dict(spec)


def submit(kind: Literal["train", "range-test"], spec: TrainSpec | RangeTestSpec | Mapping[str, Any],
           idempotency_key: str | None = None) -> Call:
    """A submit always carries an Idempotency-Key (a fresh one unless given), so it may be retried."""
    key = idempotency_key or f"clrclient-{uuid.uuid4()}"
    return Call("POST", f"/v1/jobs/{kind}", json=spec_body(spec), headers={"Idempotency-Key": key})


def get_job(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{job_id}")


def list_jobs(kind: str | None, state: str | None, cursor: str | None, page_size: int) -> Call:
    params = {"kind": kind, "state": state, "cursor": cursor, "limit": page_size}
    return Call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})


def cancel(job_id: str) -> Call:
    return Call("POST", f"/v1/jobs/{job_id}/cancel")


def delete(job_id: str) -> Call:
    return Call("DELETE", f"/v1/jobs/{job_id}")


def events(job_id: str, last_event_id: str | None) -> Call:
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return Call("GET", f"/v1/jobs/{job_id}/events", headers=headers)


def report(job_id: str, format: Literal["json", "text"] = "json") -> Call:
    return Call("GET", f"/v1/jobs/{job_id}/report", params={"format": format})


def plot(job_id: str, name: str) -> Call:
    return Call("GET", f"/v1/jobs/{job_id}/plots/{name}.png")


def artifact(job_id: str, name: str) -> Call:
    return Call("GET", f"/v1/jobs/{job_id}/artifacts/{name}")


# An artifact's file name in a local run folder, where it differs from its API name (as `clr train` lays it out).
RUN_FOLDER_NAMES = {"checkpoint": "checkpoints/last.pt"}


def run_files(links: Mapping[str, Any]) -> list[tuple[Call, str]]:
    """Every file a job's links name, with its path in a run folder like the one `clr train --out` writes."""
    files = [(Call("GET", url), f"{name}.png") for name, url in (links.get("plots") or {}).items()]
    artifacts = (links.get("artifacts") or {}).items()
    files += [(Call("GET", url), RUN_FOLDER_NAMES.get(name, name)) for name, url in artifacts]
    if links.get("report"):
        files.append((Call("GET", links["report"]), "report.json"))
    if links.get("report_text"):
        files.append((Call("GET", links["report_text"]), "report.txt"))
    return files


def archive_type(path: Path) -> str:
    """The Content-Type the upload route wants, from the file name."""
    name = path.name.lower()
    for suffix, media in sorted(ARCHIVE_TYPES.items(), key=lambda item: -len(item[0])):
        if name.endswith(suffix):
            return media
    raise ValueError(f"{path.name}: not an archive the API takes ({', '.join(ARCHIVE_TYPES)})")


def upload(path: Path, name: str | None) -> Call:
    """Uploads carry no idempotency key (the API has none for them): retried only if never sent."""
    headers = {"Content-Type": archive_type(path), "Content-Length": str(path.stat().st_size)}
    return Call("POST", "/v1/datasets", params={"name": name} if name else None, headers=headers)


def get_dataset(dataset_id: str) -> Call:
    return Call("GET", f"/v1/datasets/{dataset_id}")


def delete_dataset(dataset_id: str) -> Call:
    return Call("DELETE", f"/v1/datasets/{dataset_id}")


def upload_weights(path: Path, architecture: str, name: str | None) -> Call:
    """A safetensors file for `architecture`; like a dataset upload, retried only if never sent."""
    if not path.name.lower().endswith(".safetensors"):
        raise ValueError(f"{path.name}: weights are uploaded as .safetensors files (never a pickle)")
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
    params = {"architecture": architecture, **({"name": name} if name else {})}
    return Call("POST", "/v1/weights", params=params, headers=headers)


def get_weights(weights_id: str) -> Call:
    return Call("GET", f"/v1/weights/{weights_id}")


def delete_weights(weights_id: str) -> Call:
    return Call("DELETE", f"/v1/weights/{weights_id}")
