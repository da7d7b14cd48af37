"""What a training run tells its caller and asks of it: progress, hooks, and the two ways it stops early.

Plain data and exceptions, no torch: the worker and the CLI catch `StopRequested` and
`TrainingDiverged` without loading the training stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """Where a run is, for progress bars and the job record.

    In phase "train" `step`/`steps` count optimizer steps over the whole run (so they only grow); in
    phase "eval" they count evaluation batches of the current epoch. `metrics` holds only values that
    were already read from the device.
    """

    phase: str
    epoch: int  # 1-based
    epochs: int
    step: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Share of the training run done, 0..1; evaluation counts as the end of its epoch."""
        if self.phase in ("train", "range_test"):
            return self.step / self.steps if self.steps else 1.0
        return self.epoch / self.epochs if self.epochs else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "epoch": self.epoch, "epochs": self.epochs, "step": self.step,
                "steps": self.steps, "fraction": self.fraction, "metrics": dict(self.metrics)}


@dataclass
class Hooks:
    """Plain callables from the caller: a progress sink, a stop flag (checked every batch) and a write fence.

    `may_write` is asked right before every checkpoint write (and again right before its rename): a
    caller whose right to the run folder can lapse (a worker whose job lease another worker took over
    while it was frozen) says False there, and the run stops with `StopRequested` instead of
    overwriting the new owner's checkpoint. clrcore knows nothing of leases; it only asks.
    """

    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    progress_interval: float = 0.25  # seconds between progress calls, besides one at every epoch end
    may_write: Callable[[], bool] | None = None


def check_may_write(may_write: Callable[[], bool] | None, what: str) -> None:
    """Raise `StopRequested` ("lease lost: ...") when the caller's write fence refuses `what`."""
    if may_write is not None and not may_write():
        raise StopRequested(f"lease lost: {what} not written; the run folder may be another worker's now")


class StopRequested(Exception):
    """The caller's `should_stop` said so; the checkpoint of the last complete epoch is kept."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the first bad step and its LR."""

    def __init__(self, step: int, lr: float) -> None:
        super().__init__(f"loss diverged at step {step}, lr {lr:.3g}")
        self.step = step
        self.lr = lr

    def __reduce__(self):  # keeps the exception picklable (Celery sends it back to the caller)
        return (TrainingDiverged, (self.step, self.lr))
