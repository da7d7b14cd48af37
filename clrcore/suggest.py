"""Reading an LR range-test curve: suggestion rules, the recommended LR bounds, warnings, a recipe.

Every rule reads the same curve: the bias-corrected EMA of the loss (the "smoothed" column of a range
test), cut where it diverged, with slopes taken against log10(LR) so a rule means the same thing for
any ladder. Numpy only, so the API and the CLI can re-read a stored curve without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# The suggestion rules that read the curve independently; "min_loss_div10" is derived from
# "min_loss" (always exactly one decade below), so it never counts towards the spread.
INDEPENDENT_RULES = ("steepest", "valley", "min_loss")

# Rules this many decades apart or more mean the curve has no clear shape. On a clean curve the
# steepest descent sits up to about a decade below the minimum (1.1-1.4 on the anchor-shaped curves
# in the tests, 0.7 on the digits MLP), so a 1-decade threshold would flag textbook curves; 1.5 flags
# only the ragged ones.
LOW_CONFIDENCE_DECADES = 1.5

# max_lr never falls further below the min-loss LR than this factor. The anchor: on CIFAR-10 with
# MiniGoogLeNet the min-loss LR was ~0.16; min_loss/10 (0.016) cost two accuracy points, while every
# max_lr in 0.05-0.8 trained well. min_loss/2 (0.08) stays inside that band with a third of a decade
# of margin for the lag of the EMA, which puts the smoothed minimum a little past the raw one.
MAX_LR_FLOOR_DIVISOR = 2.0

TRIANGULAR_FAMILY = ("triangular", "triangular2", "exp_range")
# Smith 2017 suggests base_lr 3-4x below max_lr, but a triangular run ends at base_lr, and with
# BatchNorm nets ending that high costs accuracy (digits, tiny_cnn, 3 seeds: /4 gave 92.8 %, /25 gave
# 95.3-96.7 %). 25 is also one-cycle's div_factor, so every policy starts at max_lr/25.
TRIANGULAR_BASE_DIVISOR = 25.0
CONSTANT_DIVISOR = 4.0  # a fixed LR must stay stable all run: a quarter of the cyclic peak
DEFAULT_STEP_EPOCHS = 4
STEP_EPOCHS_RANGE = (2, 8)  # Smith 2017: a half cycle of 2-8 epochs
DEFAULT_ONE_CYCLE_EPOCHS = 10


@dataclass(frozen=True)
class Recommendation:
    """The LR bounds to train with, which rule set them, and how much the rules agreed."""

    base_lr: float
    max_lr: float
    rule: str
    spread_decades: float | None
    low_confidence: bool
    policy: str = "triangular"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def debiased_ema(values: Any, beta: float = 0.98) -> np.ndarray:
    """The range test's smoothed loss: an EMA with bias correction, so the first value is the raw one."""
    values = np.asarray(values, dtype=float)
    out = np.empty_like(values)
    avg = 0.0
    for n, value in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * value
        out[n - 1] = avg / (1 - beta**n)
    return out


def usable_curve(lrs: Any, smoothed: Any, diverge_factor: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """The part of the curve before divergence: cut at the first non-finite value or the first point
    whose smoothed loss exceeds `diverge_factor` times the best so far, the same test the sweep uses."""
    lrs = np.asarray(lrs, dtype=float)
    smoothed = np.asarray(smoothed, dtype=float)
    if lrs.shape != smoothed.shape or lrs.ndim != 1:
        raise ValueError("lrs and smoothed must be 1-D and of equal length")
    end = len(smoothed)
    best = math.inf
    for i, value in enumerate(smoothed):
        if not math.isfinite(value) or not math.isfinite(lrs[i]) or lrs[i] <= 0:
            end = i
            break
        if value > diverge_factor * best:
            end = i
            break
        best = min(best, value)
    return lrs[:end], smoothed[:end]


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of the same length (shrinking window at the edges)."""
    if window <= 1 or len(y) < 3:
        return y.copy()
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(y)])
    idx = np.arange(len(y))
    lo = np.clip(idx - half, 0, len(y))
    hi = np.clip(idx + half + 1, 0, len(y))
    return (csum[hi] - csum[lo]) / (hi - lo)


def _steepest(x: np.ndarray, y: np.ndarray, i_min: int) -> float | None:
    """Most negative slope before the minimum, on a lightly re-smoothed curve with the first tenth
    trimmed, so one noisy step at the start of the sweep cannot win."""
    n = len(y)
    ys = _moving_average(y, max(3, n // 20) | 1)
    grad = np.gradient(ys, x)
    lo = max(1, n // 10)
    if i_min - lo < 2:
        return None
    segment = grad[lo : i_min + 1]
    k = int(np.argmin(segment))
    return float(10 ** x[lo + k]) if segment[k] < 0 else None


def _valley(x: np.ndarray, y: np.ndarray, max_points: int = 400) -> float | None:
    """fastai's valley idea: the longest run of decreasing loss, then a point two thirds of the way down.

    The run is the longest decreasing subsequence, counting a step only when it drops by more than a
    noise floor (0.5% of the curve's range), so a long flat start does not count as valley; like
    fastai the valley is taken to end at the subsequence's last point and to be as long as its count.
    """
    stride = max(1, math.ceil(len(y) / max_points))
    xs, ys = x[::stride], y[::stride]
    n = len(ys)
    if n < 3:
        return None
    tol = 0.005 * float(ys.max() - ys.min())
    lds = np.ones(n, dtype=int)
    for i in range(1, n):
        drops = ys[:i] - ys[i] > tol
        if drops.any():
            lds[i] = lds[:i][drops].max() + 1
    end = int(np.argmax(lds))
    count = int(lds[end])
    if count < 3:
        return None
    start = max(0, end - count + 1)
    idx = start + round((end - start) * 2 / 3)
    return float(10 ** xs[idx])


def suggest_lrs(lrs: Any, smoothed: Any, *, diverge_factor: float = 4.0) -> dict[str, float | None]:
    """Each rule's LR on the smoothed curve, or None where the curve gives that rule nothing to read.

    steepest: the most negative slope of loss vs log10(LR) before the minimum.
    valley: two thirds down the longest valley (fastai's default).
    min_loss: the LR of the lowest smoothed loss; None when the loss never fell below its start.
    min_loss_div10: min_loss / 10 (the classic fastai-v1 rule; known to land a decade too low).
    """
    lr, y = usable_curve(lrs, smoothed, diverge_factor)
    out: dict[str, float | None] = dict.fromkeys((*INDEPENDENT_RULES, "min_loss_div10"))
    if len(y) < 3:
        return out
    x = np.log10(lr)
    i_min = int(np.argmin(y))
    if i_min == 0 or y[i_min] >= y[0]:
        return out
    out["min_loss"] = float(lr[i_min])
    out["min_loss_div10"] = float(lr[i_min]) / 10
    out["steepest"] = _steepest(x, y, i_min)
    out["valley"] = _valley(x[: i_min + 1], y[: i_min + 1])
    return out


def spread_decades(suggestions: dict[str, float | None]) -> float | None:
    """log10(max/min) over the independent rules that returned a value; None with fewer than two."""
    values = [value for k in INDEPENDENT_RULES if (value := suggestions.get(k))]
    if len(values) < 2:
        return None
    return float(math.log10(max(values) / min(values)))


def recommend(
    suggestions: dict[str, float | None], policy: str = "triangular", *, div_factor: float = 25.0
) -> Recommendation:
    """The bounds to train with.

    max_lr is the geometric mean of the valley and min-loss LRs, clipped into
    [max(steepest, min_loss/2), min_loss]: it tops out where the loss stopped falling (Smith's max
    bound) and never drops to a decade below it, the mistake of the min_loss/10 rule (see
    MAX_LR_FLOOR_DIVISOR). `rule` names the bound that was active. base_lr is
    max_lr/TRIANGULAR_BASE_DIVISOR for the triangular family, max_lr/div_factor for one_cycle, and
    max_lr/CONSTANT_DIVISOR for both bounds under 'constant'
    (a fixed LR has to stay stable for the whole run, so it sits at a cycle's floor).
    """
    min_loss = suggestions.get("min_loss")
    if not min_loss:
        raise ValueError("no min_loss suggestion: the loss never fell, so there is nothing to recommend")
    valley, steepest = suggestions.get("valley"), suggestions.get("steepest")
    floor = min_loss / MAX_LR_FLOOR_DIVISOR
    floor_rule = f"min_loss/{MAX_LR_FLOOR_DIVISOR:g}"
    if steepest and steepest > floor:
        floor, floor_rule = steepest, "steepest"
    if valley:
        gmean = math.sqrt(valley * min_loss)
        if gmean < floor:
            max_lr, rule = floor, f"{floor_rule} (floor of gmean(valley, min_loss))"
        elif gmean > min_loss:
            max_lr, rule = min_loss, "min_loss (cap of gmean(valley, min_loss))"
        else:
            max_lr, rule = gmean, "gmean(valley, min_loss)"
    else:
        max_lr, rule = floor, f"{floor_rule} (no valley)"
    if policy == "one_cycle":
        base_lr = max_lr / div_factor
    elif policy == "constant":
        max_lr = base_lr = max_lr / CONSTANT_DIVISOR
        rule = f"{rule} / {CONSTANT_DIVISOR:g}"
    else:
        base_lr = max_lr / TRIANGULAR_BASE_DIVISOR
    spread = spread_decades(suggestions)
    low = spread is not None and spread >= LOW_CONFIDENCE_DECADES
    return Recommendation(base_lr, max_lr, rule, spread, low, policy)


def warnings_for(
    lrs: Any,
    smoothed: Any,
    *,
    stop_reason: str | None = None,
    diverge_factor: float = 4.0,
    min_points: int = 10,
    suggestions: dict[str, float | None] | None = None,
) -> list[str]:
    """Plain-language reasons not to trust a curve blindly, with what to change in the next sweep."""
    lr, y = usable_curve(lrs, smoothed, diverge_factor)
    out: list[str] = []
    if stop_reason == "end_lr":
        out.append("loss never diverged: raise end_lr (the sweep ended before the loss blew up)")
    elif stop_reason == "nan":
        out.append("loss became NaN or inf: the rules read only the points before it")
    elif stop_reason == "data_exhausted":
        out.append("the training data ran out before the sweep finished: the curve is partial")
    elif stop_reason == "stopped":
        out.append("the sweep was stopped before it finished: the curve is partial")
    if len(y) < min_points:
        out.append(f"only {len(y)} usable points before divergence: raise num_iter or lower start_lr")
    if len(y) == 0:
        return out
    i_min = int(np.argmin(y))
    if i_min == 0 or y[i_min] > y[0] * 0.99:
        out.append("loss never fell: lower start_lr (the loss may already rise at the first LR)")
    elif stop_reason not in (None, "end_lr") and i_min == len(y) - 1:
        out.append("the loss was still falling where the curve ends: the minimum lies further on")
    spread = spread_decades(suggestions) if suggestions else None
    if spread is not None and spread >= LOW_CONFIDENCE_DECADES:
        out.append(
            f"low confidence: the suggestion rules disagree by {spread:.1f} decades "
            f"(threshold {LOW_CONFIDENCE_DECADES:g}); read the curve before trusting the pick"
        )
    return out


def _choose_step_epochs(epochs_hint: int | None) -> int:
    """The half-cycle length in whole epochs (2-8) whose whole cycles come closest to the hint."""
    if epochs_hint is None:
        return DEFAULT_STEP_EPOCHS
    lo, hi = STEP_EPOCHS_RANGE

    def miss(step: int) -> tuple[int, int]:
        cycles = max(1, round(epochs_hint / (2 * step)))
        return abs(2 * cycles * step - epochs_hint), abs(step - DEFAULT_STEP_EPOCHS)

    return min(range(lo, hi + 1), key=miss)


def recipe(
    recommendation: Recommendation,
    *,
    policy: str | None = None,
    iters_per_epoch: int,
    epochs_hint: int | None = None,
    div_factor: float = 25.0,
) -> dict[str, Any]:
    """The whole training recipe; keys named as in TrainSpec where they are TrainSpec fields.

    Triangular family: step_size (iterations) is 2-8 epochs' worth (4 by default, or the length
    whose whole cycles land nearest `epochs_hint`), and `epochs` is a whole number of cycles, so the
    run ends at a cycle minimum where accuracy peaks (Smith 2017). one_cycle: a single cycle over
    `epochs_hint` epochs (10 if none). Informational keys: rule, low_confidence, spread_decades,
    step_epochs, cycles, iters_per_epoch.
    """
    if iters_per_epoch < 1:
        raise ValueError("iters_per_epoch must be at least 1")
    policy = policy or recommendation.policy
    if policy != recommendation.policy:
        raise ValueError(f"recommendation is for {recommendation.policy!r}; recommend() again for {policy!r}")
    out: dict[str, Any] = {
        "policy": policy,
        "base_lr": recommendation.base_lr,
        "max_lr": recommendation.max_lr,
        "rule": recommendation.rule,
        "low_confidence": recommendation.low_confidence,
        "spread_decades": recommendation.spread_decades,
        "iters_per_epoch": iters_per_epoch,
    }
    if policy in TRIANGULAR_FAMILY:
        step_epochs = _choose_step_epochs(epochs_hint)
        cycles = 1 if epochs_hint is None else max(1, round(epochs_hint / (2 * step_epochs)))
        out |= {
            "step_size": max(1, step_epochs * iters_per_epoch),
            "step_unit": "iterations",
            "step_epochs": step_epochs,
            "cycles": cycles,
            "epochs": 2 * cycles * step_epochs,
        }
    elif policy == "one_cycle":
        out |= {"epochs": epochs_hint or DEFAULT_ONE_CYCLE_EPOCHS, "div_factor": div_factor}
    else:
        out["epochs"] = epochs_hint or DEFAULT_ONE_CYCLE_EPOCHS
    return out
