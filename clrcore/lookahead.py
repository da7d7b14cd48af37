"""airbench94's lookahead: late in a run, the weights are pulled towards a moving average of themselves.

From `start` (a fraction of the run's steps) on, every `every` optimizer steps the average takes a step
towards the weights and the weights are set to the average. Its decay grows with progress,
0.95**every * (step / total)**3, so the run moves freely at first and averages hard at the end: the
short-run equivalent of weight averaging. Floating-point buffers (BatchNorm statistics) are averaged too.

At the end of each epoch the weights are set to the average, and the average restarts from the weights
at the start of the next epoch. So an epoch checkpoint's weights *are* the average, and a resumed run
continues exactly as the uninterrupted one would, with nothing extra saved.
"""

from __future__ import annotations

import torch
from torch import nn

LOOKAHEAD = {"start": 0.3, "every": 5, "decay_base": 0.95, "decay_pow": 3.0}  # airbench94's values


class Lookahead:
    """Drives the average for one run of `total_steps` optimizer steps on `model`."""

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        # state_dict tensors share storage with the parameters and buffers, so copies into them land there
        self.tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.total = total_steps
        self.first_active = max(1, round(LOOKAHEAD["start"] * total_steps))
        self.average: list[torch.Tensor] | None = None

    def start_epoch(self, steps_done: int) -> None:
        """Restart the average from the current weights if the run is already past `start`."""
        self.average = [t.detach().clone() for t in self.tensors] if steps_done >= self.first_active else None

    @torch.no_grad()
    def after_step(self, steps_done: int) -> None:
        """Call after every optimizer step with the run's count of steps done (1-based)."""
        every = int(LOOKAHEAD["every"])
        if steps_done < self.first_active or steps_done % every:
            return
        if self.average is None:
            self.average = [t.detach().clone() for t in self.tensors]
            return
        decay = LOOKAHEAD["decay_base"] ** every * (steps_done / self.total) ** LOOKAHEAD["decay_pow"]
        # one multi-tensor kernel per operation rather than two tiny ones per tensor (about 80 for resnet_fast)
        torch._foreach_lerp_(self.average, self.tensors, 1 - decay)
        torch._foreach_copy_(self.tensors, self.average)

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Leave the weights at the average (the steps since its last update are dropped, as in airbench)."""
        if self.average is not None:
            torch._foreach_copy_(self.tensors, self.average)
