"""Progress bars, for callers that ask for them (`upload_dataset(progress=True)`, `clr remote`).
tqdm is imported here only, and only when a bar is wanted."""

from __future__ import annotations

from typing import Any

from clrclient.models import JobEvent
from clrclient.transfer import Progress


class UploadBar:
    """A byte-counting bar; call it as an upload progress callback, then close it."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)

    def __call__(self, sent: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = sent
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def upload_progress(progress: Progress | bool | None, total: int, desc: str) -> tuple[Progress | None, Any]:
    """The callback to feed, and what to close afterwards (a bar when `progress` is True)."""
    if progress is True:
        bar = UploadBar(total, desc)
        return bar, bar
    return (progress or None), None


class JobBars:
    """One bar per phase of a job (range_test, train), fed with its `progress` events."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase: str | None = None

    def __call__(self, event: JobEvent) -> None:
        if event.name != "progress":
            return
        from tqdm import tqdm

        progress, metrics = event.data.get("progress") or {}, event.data.get("metrics") or {}
        phase, steps = progress.get("phase"), progress.get("steps")
        if phase in (None, "eval") or not steps:
            return
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=steps, desc=phase, unit="step", leave=True)
        self.bar.total = steps
        self.bar.n = progress.get("step") or 0
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
