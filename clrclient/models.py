"""What the API answers, as typed objects. Unknown fields are kept, so a newer server never breaks
an older client; the job specs themselves are clrcore's (`TrainSpec`, `RangeTestSpec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Job(Answer):
    id: str
    kind: str
    state: str  # queued, running, cancelling, succeeded, failed, cancelled
    spec: dict[str, Any] = {}
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] = {}
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    queue: str | None = None
    deliveries: int = 0
    links: dict[str, Any] = {}

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @property
    def plot_names(self) -> list[str]:
        return sorted(self.links.get("plots") or {})

    @property
    def artifact_names(self) -> list[str]:
        return sorted(self.links.get("artifacts") or {})


class UploadedDataset(Answer):
    id: str
    name: str
    format: str
    bytes: int
    validation: str
    classes: list[str]
    num_classes: int
    counts: dict[str, dict[str, int]]
    input_shape: list[int]


class UploadedWeights(Answer):
    id: str
    name: str
    architecture: str
    bytes: int
    validation: str
    tensors: int
    replaced: list[str]


@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event of a job: `state`, `progress` or `metrics`, with its stream id."""

    id: str | None
    name: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.name == "state" and self.data.get("state") in FINAL_STATES | {"deleted"}
