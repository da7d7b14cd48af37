"""Fitting a cyclical schedule's half cycle to a run's length, so a run never ends mid-cycle.

A triangular run that stops mid-cycle ends above base_lr, off the accuracy peak at a cycle's minimum
(Smith 2017). When the user gives the epochs and leaves the step to us, the step is chosen so that the
epochs hold a whole number of cycles; when not even one cycle with a step of at least MIN_STEP_EPOCHS
fits, the run switches to one cycle (one_cycle), which ends low by construction. Numpy-free, torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFERRED_STEP_EPOCHS = 4.0  # Smith 2017: a half cycle of 2-8 epochs, 4 in the middle of it
STEP_EPOCHS_RANGE = (2.0, 8.0)
# Below this a "cycle" is too short for the LR to do anything but jitter; a shorter run gets one_cycle.
MIN_STEP_EPOCHS = 1.0


@dataclass(frozen=True)
class CycleFit:
    """The fitted plan: `policy` is the given one, or 'one_cycle' when no whole cycle fits."""

    policy: str
    step_iterations: int | None
    cycles: int | None
    epochs: int
    note: str

    @property
    def step_epochs(self) -> float | None:
        return None if self.step_iterations is None else self.step_iterations / self._iters

    _iters: int = 1


def fit_cycles(epochs: int, iters_per_epoch: int, policy: str = "triangular") -> CycleFit:
    """The half-cycle (in iterations) whose whole cycles fill `epochs` exactly, or one_cycle.

    Among the cycle counts whose step is at least MIN_STEP_EPOCHS, prefer steps that divide the run
    into whole iterations, then steps inside Smith's 2-8 epochs, then the one nearest 4 epochs.
    """
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError("epochs and iters_per_epoch must be at least 1")
    total = epochs * iters_per_epoch
    lo, hi = STEP_EPOCHS_RANGE
    candidates = []
    for cycles in range(1, epochs + 1):
        step_epochs = epochs / (2 * cycles)
        if step_epochs < MIN_STEP_EPOCHS:
            break
        exact = total % (2 * cycles) == 0
        inside = lo <= step_epochs <= hi
        candidates.append(((not exact, not inside, abs(step_epochs - PREFERRED_STEP_EPOCHS)), cycles))
    if not candidates:
        return CycleFit("one_cycle", None, None, epochs,
                        f"one_cycle: {epochs} epoch(s) cannot hold a whole cycle with a step of at least "
                        f"{MIN_STEP_EPOCHS:g} epoch(s)", iters_per_epoch)
    cycles = min(candidates)[1]
    step = total // (2 * cycles)
    note = (f"step fitted to the epochs: {cycles} whole cycle{'s' if cycles != 1 else ''} of "
            f"2 x {step} iterations ({step / iters_per_epoch:.3g} epochs each half)")
    if total % (2 * cycles):
        note += f"; the last {total % (2 * cycles)} iteration(s) start a new cycle at base_lr"
    return CycleFit(policy, step, cycles, epochs, note, iters_per_epoch)
