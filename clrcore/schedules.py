"""Learning-rate (and momentum) schedules as pure functions of the step.

Every policy is built from one small vocabulary, fastai-style, instead of one class per policy:

- annealers (`anneal_linear`, `anneal_cos`, `anneal_exp`) go from a start to an end value as progress
  `pct` goes from 0 to 1;
- `combine_phases` chains annealed phases; one-cycle is two of them (warm-up, then annealing);
- the triangular family is the same two linear phases repeated every cycle (`cycle_position`), with an
  amplitude scale (`AMPLITUDES`) shrinking each cycle: flat (triangular), halving (triangular2) or
  `gamma ** step` (exp_range), as in Smith, "Cyclical Learning Rates for Training Neural Networks" (2017).

A `Schedule` is a frozen dataclass of plain numbers and names, so it pickles and can travel in a
checkpoint; `ScheduledLR` drives a torch optimizer from one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from clrcore.json_safe import json_safe

if TYPE_CHECKING:
    from clrcore.specs import TrainSpec

logger = logging.getLogger(__name__)

POLICIES = ("triangular", "triangular2", "exp_range", "one_cycle", "constant")
CYCLIC_AMPLITUDE = {"triangular": "flat", "triangular2": "halving", "exp_range": "exp"}

# exp_range with neither gamma nor final_amplitude: shrink the cycles to a tenth by the last step, so
# the policy differs from triangular without the caller having to pick a gamma.
DEFAULT_FINAL_AMPLITUDE = 0.1

# One-cycle recipes as plain data; they override the explicit one-cycle parameters when chosen.
ONE_CYCLE_PRESETS: dict[str, dict[str, Any]] = {
    # torch.optim.lr_scheduler.OneCycleLR's defaults (two phases).
    "torch": {"pct_start": 0.3, "anneal": "cos", "div_factor": 25.0, "final_div_factor": 1e4},
    # fastai's fit_one_cycle: final LR is lr_max / div_final with div_final = 1e5; in torch's convention
    # (final = initial / final_div_factor, initial = max / 25) that is final_div_factor = 1e5 / 25.
    "fastai": {"pct_start": 0.25, "anneal": "cos", "div_factor": 25.0, "final_div_factor": 1e5 / 25.0},
}


Annealer = Callable[[float, float, float], float]


# --- annealers: value from `start` to `end` as pct goes from 0 to 1 (torch's formulas, bit for bit) ---


def anneal_linear(start: float, end: float, pct: float) -> float:
    """Straight line; the triangular policies and linear one-cycle."""
    return (end - start) * pct + start


def anneal_cos(start: float, end: float, pct: float) -> float:
    """Half a cosine: flat at both ends, which is why one-cycle defaults to it."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def anneal_exp(start: float, end: float, pct: float) -> float:
    """Geometric: equal ratios per step, as an LR sweep over decades wants."""
    return start * (end / start) ** pct


ANNEALERS: dict[str, Annealer] = {
    "linear": anneal_linear,
    "cos": anneal_cos,
    "exp": anneal_exp,
}


def combine_phases(step: float, ends: Sequence[float], points: Sequence[float], anneal: Annealer) -> float:
    """Value at `step` of consecutive phases, phase i annealing points[i] -> points[i + 1].

    Phase i runs from ends[i - 1] (0 for the first) to ends[i], the step counted inclusively as
    torch's OneCycleLR does; past the last end the last value holds.
    """
    start = 0.0
    for i, end in enumerate(ends):
        if step <= end or i == len(ends) - 1:
            pct = 1.0 if end <= start else min((step - start) / (end - start), 1.0)
            return anneal(points[i], points[i + 1], pct)
        start = end
    return points[0]


def cycle_position(step: int, period: int) -> int:
    """Where `step` falls inside its cycle; the triangular family repeats its phases with it."""
    return step % period


# --- amplitude scales: how much of the range cycle (or step) `step` still spans ---


def flat_amplitude(step: int, period: int, gamma: float) -> float:
    """Every cycle spans the whole range (triangular)."""
    return 1.0


def halving_amplitude(step: int, period: int, gamma: float) -> float:
    """Each cycle spans half the range of the one before (triangular2)."""
    return 1 / (2.0 ** (step // period))


def exp_amplitude(step: int, period: int, gamma: float) -> float:
    """The range shrinks by gamma every iteration (exp_range)."""
    return gamma**step


AMPLITUDES: dict[str, Callable[[int, int, float], float]] = {
    "flat": flat_amplitude,
    "halving": halving_amplitude,
    "exp": exp_amplitude,
}


@dataclass(frozen=True)
class Schedule:
    """A policy's parameters as plain data, evaluated as a pure function of the step.

    `lr_points`/`momentum_points` are the values at the start and at each phase end; `phase_ends`
    the steps (inside one cycle) where the phases end. With a `period` the phases repeat and the
    `amplitude` scale shrinks each cycle towards the first point; without one they run once and the
    last value holds. `momentum_points` is None when momentum is not cycled.
    """

    policy: str
    lr_points: tuple[float, ...]
    phase_ends: tuple[float, ...] = ()
    anneal: str = "linear"
    period: int | None = None
    amplitude: str = "flat"
    gamma: float = 1.0
    momentum_points: tuple[float, ...] | None = None

    def lr(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based)."""
        return self._value(step, self.lr_points)

    def momentum(self, step: int) -> float | None:
        """Momentum (or Adam's beta1) for `step`, inverse to the LR; None when not cycling."""
        return None if self.momentum_points is None else self._value(step, self.momentum_points)

    def cycle_length(self) -> int | None:
        """Iterations per full cycle for the cyclic policies; None for one_cycle and constant."""
        return self.period

    def _value(self, step: int, points: tuple[float, ...]) -> float:
        if not self.phase_ends:
            return points[0]
        anneal = ANNEALERS[self.anneal]
        if self.period is None:
            return combine_phases(step, self.phase_ends, points, anneal)
        value = combine_phases(cycle_position(step, self.period), self.phase_ends, points, anneal)
        scale = AMPLITUDES[self.amplitude](step, self.period, self.gamma)
        return value if scale == 1.0 else points[0] + (value - points[0]) * scale


def build_schedule(
    policy: str,
    *,
    base_lr: float,
    max_lr: float,
    step_size: int,
    total_steps: int,
    gamma: float | None = None,
    final_amplitude: float | None = None,
    pct_start: float = 0.25,
    anneal: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    one_cycle_preset: str | None = None,
    cycle_momentum: bool = False,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> Schedule:
    """Turn a policy name and its parameters (step counts in iterations) into a `Schedule`.

    triangular/triangular2/exp_range cycle between base_lr and max_lr with half-cycle `step_size`;
    exp_range takes `gamma`, or derives it from `final_amplitude` (the fraction of the range left at
    `total_steps`). one_cycle ignores base_lr: it starts at max_lr / div_factor, peaks at max_lr after
    pct_start * total_steps steps and ends at start / final_div_factor on step total_steps - 1, like
    torch's OneCycleLR; a `one_cycle_preset` ("torch" or "fastai") overrides those four parameters.
    constant holds max_lr and never cycles momentum. Raises ValueError on inconsistent parameters.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    if not 0 < max_lr < math.inf:
        raise ValueError(f"max_lr must be positive, got {max_lr}")
    if total_steps < 1 or step_size < 1:
        raise ValueError(f"total_steps and step_size must be at least 1, got {total_steps}, {step_size}")
    if cycle_momentum and not 0 <= base_momentum < max_momentum < 1:
        raise ValueError("momentum cycling needs 0 <= base_momentum < max_momentum < 1")
    momentum = (max_momentum, base_momentum, max_momentum) if cycle_momentum else None

    if policy == "constant":
        return Schedule(policy, (max_lr,))
    if policy == "one_cycle":
        return _one_cycle(
            max_lr, total_steps, pct_start, anneal, div_factor, final_div_factor, one_cycle_preset, momentum
        )
    if not 0 < base_lr < max_lr:
        raise ValueError(f"{policy} needs 0 < base_lr < max_lr, got {base_lr} and {max_lr}")
    return Schedule(
        policy,
        (base_lr, max_lr, base_lr),
        phase_ends=(float(step_size), float(2 * step_size)),
        anneal="linear",
        period=2 * step_size,
        amplitude=CYCLIC_AMPLITUDE[policy],
        gamma=_exp_range_gamma(gamma, final_amplitude, total_steps) if policy == "exp_range" else 1.0,
        momentum_points=momentum,
    )


def _exp_range_gamma(gamma: float | None, final_amplitude: float | None, total_steps: int) -> float:
    if gamma is not None and final_amplitude is not None:
        raise ValueError("give gamma or final_amplitude, not both")
    if gamma is None:
        fraction = DEFAULT_FINAL_AMPLITUDE if final_amplitude is None else final_amplitude
        if not 0 < fraction <= 1:
            raise ValueError(f"final_amplitude must be in (0, 1], got {fraction}")
        gamma = fraction ** (1 / total_steps)
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return gamma


def _one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float,
    anneal: str,
    div_factor: float,
    final_div_factor: float,
    preset: str | None,
    momentum: tuple[float, ...] | None,
) -> Schedule:
    if preset is not None:
        if preset not in ONE_CYCLE_PRESETS:
            raise ValueError(f"unknown one_cycle_preset {preset!r}; known: {', '.join(ONE_CYCLE_PRESETS)}")
        values = ONE_CYCLE_PRESETS[preset]
        pct_start, anneal = values["pct_start"], values["anneal"]
        div_factor, final_div_factor = values["div_factor"], values["final_div_factor"]
    if anneal not in ANNEALERS:
        raise ValueError(f"unknown anneal {anneal!r}; known: {', '.join(ANNEALERS)}")
    if not 0 < pct_start < 1 or div_factor <= 0 or final_div_factor <= 0:
        raise ValueError("one_cycle needs 0 < pct_start < 1 and positive div_factor, final_div_factor")
    initial = max_lr / div_factor
    return Schedule(
        "one_cycle",
        (initial, max_lr, initial / final_div_factor),
        phase_ends=(float(pct_start * total_steps) - 1, float(total_steps - 1)),
        anneal=anneal,
        momentum_points=momentum,
    )


def steps_from_unit(step_size: float, unit: str, iters_per_epoch: int) -> int:
    """A step size given in epochs or iterations, as whole iterations (at least 1, halves round up)."""
    if unit not in ("epochs", "iterations"):
        raise ValueError(f"unit must be 'epochs' or 'iterations', got {unit!r}")
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be at least 1, got {iters_per_epoch}")
    iterations = step_size * iters_per_epoch if unit == "epochs" else step_size
    return max(1, math.floor(iterations + 0.5))


def schedule_from_spec(spec: TrainSpec, *, base_lr: float, max_lr: float, iters_per_epoch: int) -> Schedule:
    """The schedule a training spec asks for, with its LR bounds already resolved (no 'auto')."""
    return build_schedule(
        spec.policy,
        base_lr=base_lr,
        max_lr=max_lr,
        step_size=steps_from_unit(spec.step_size, spec.step_unit, iters_per_epoch),
        total_steps=spec.epochs * iters_per_epoch,
        gamma=spec.gamma,
        final_amplitude=spec.final_amplitude,
        pct_start=spec.pct_start,
        anneal=spec.anneal,
        div_factor=spec.div_factor,
        final_div_factor=spec.final_div_factor,
        one_cycle_preset=spec.one_cycle_preset,
        cycle_momentum=spec.cycle_momentum,
        base_momentum=spec.base_momentum,
        max_momentum=spec.max_momentum,
    )


def preview(schedule: Schedule, total_steps: int) -> dict[str, list[float]]:
    """Step, LR and momentum series for the preview plot; "momentum" is empty when not cycled."""
    steps = list(range(total_steps))
    momentum = [] if schedule.momentum_points is None else [float(schedule.momentum(s) or 0.0) for s in steps]
    return {"step": [float(s) for s in steps], "lr": [schedule.lr(s) for s in steps], "momentum": momentum}


# --- driving a torch optimizer ---

_warned_no_momentum: weakref.WeakSet[Optimizer] = weakref.WeakSet()


def _set_group_value(group: dict[str, Any], key: str, value: float) -> None:
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def set_hyperparams(optimizer: Optimizer, lr: float, momentum: float | None) -> bool:
    """Set `lr` in every param group, and momentum (SGD, RMSprop) or beta1 (Adam family) if given.

    A group with an `lr_scale` gets `lr` times that (the trainer's BatchNorm shifts). An optimizer with
    neither momentum nor betas gets the LR only and one warning; returns whether momentum was applied.
    """
    for group in optimizer.param_groups:
        _set_group_value(group, "lr", lr * group.get("lr_scale", 1.0))
    if momentum is None:
        return False
    if not all("momentum" in group or "betas" in group for group in optimizer.param_groups):
        if optimizer not in _warned_no_momentum:
            _warned_no_momentum.add(optimizer)
            warnings.warn(
                f"{type(optimizer).__name__} has neither momentum nor betas; momentum cycling is off",
                stacklevel=2,
            )
        return False
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            _set_group_value(group, "momentum", momentum)
    return True


class ScheduledLR(LRScheduler):
    """A torch LR scheduler that follows a `Schedule` (and cycles momentum when it does).

    `last_epoch` counts optimizer steps. `state_dict()` holds only plain values (the schedule as a
    dict), so a checkpoint loads with `torch.load(weights_only=True)`; `load_state_dict()` puts the
    optimizer back on the saved step, so the following steps continue the cycle exactly.
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule, last_epoch: int = -1) -> None:
        self.schedule = schedule
        self.momentum_on = schedule.momentum_points is not None
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        """LR for every param group at `last_epoch`; momentum is set here too, as CyclicLR does."""
        step = max(self.last_epoch, 0)
        lr = self.schedule.lr(step)
        if self.momentum_on:
            self.momentum_on = set_hyperparams(self.optimizer, lr, self.schedule.momentum(step))
        return [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Scheduler state of plain values; the schedule travels as a dict, for checking on load."""
        state = super().state_dict()
        state["schedule"] = dataclasses.asdict(self.schedule)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved step, re-applying its LR and momentum to the optimizer."""
        state = dict(state_dict)
        saved = state.pop("schedule", None)
        if saved is not None and json_safe(saved) != json_safe(dataclasses.asdict(self.schedule)):  # tuples as lists
            logger.warning("resuming with a different schedule than the checkpoint's: %s", saved)
        super().load_state_dict(state)
        step = max(self.last_epoch, 0)
        momentum = self.schedule.momentum(step) if self.momentum_on else None
        self.momentum_on = set_hyperparams(self.optimizer, self.schedule.lr(step), momentum)
        self._last_lr = [
            group["lr"].clone() if isinstance(group["lr"], torch.Tensor) else group["lr"]
            for group in self.optimizer.param_groups
        ]
