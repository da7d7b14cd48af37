"""An `auto` run whose picked LR diverges starts again lower, instead of failing.

The range test's pick can sit above what a run from its initial weights survives: on digits with
resnet_fast the sweeps trained up to LR 1 and read the cliff at 1.1-1.5, while runs from a cold start
blew up (a NaN) from max LR 0.1-0.2 (docs/benchmarks.md, issue 12). When the service chose the LR, that
NaN is the service's miss, not the user's. So a run whose max LR came from the range test restarts from
its initial weights with both bounds divided by BACKOFF_FACTOR, at most MAX_BACKOFFS times, and its
summary says so. A max LR the user gave still fails with the one-line reason.

Each restart is written to the run folder (BACKOFF_FILE) before it trains, so a redelivered job resumes
at the lowered LR, with the checkpoint that LR wrote.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from clrcore.files import write_text

BACKOFF_FACTOR = 4.0  # 0.6 decade: two restarts reach 1/16, the factor by which digits' picks overshot
MAX_BACKOFFS = 2
BACKOFF_FILE = "lr_backoff.json"


@dataclass(frozen=True)
class Backoff:
    """One attempt that diverged: its max LR, and the step and LR of the first non-finite loss."""

    max_lr: float
    step: int
    lr: float

    def note(self) -> str:
        return (f"training at max_lr {self.max_lr:.3g} diverged at step {self.step} (lr {self.lr:.3g}); "
                f"restarted from the initial weights at max_lr {self.max_lr / BACKOFF_FACTOR:.3g}")


def scale(backoffs: list[Backoff]) -> float:
    """What the range test's bounds are multiplied by after these restarts."""
    return BACKOFF_FACTOR ** -len(backoffs)


def may_back_off(backoffs: list[Backoff]) -> bool:
    return len(backoffs) < MAX_BACKOFFS


def read_backoffs(run_dir: Path) -> list[Backoff]:
    """The restarts a previous delivery of this job made (none when the file is absent)."""
    path = Path(run_dir) / BACKOFF_FILE
    if not path.exists():
        return []
    return [Backoff(**item) for item in json.loads(path.read_text())["backoffs"]]


def write_backoffs(run_dir: Path, backoffs: list[Backoff]) -> None:
    write_text(Path(run_dir) / BACKOFF_FILE, json.dumps(
        {"factor": BACKOFF_FACTOR, "backoffs": [asdict(b) for b in backoffs]}, indent=1))
