"""Reading an LR range-test curve: every peer's rule and ours, the bounds, warnings, a recipe.

The peers' rules read the curve as their finders smooth it: the bias-corrected EMA (beta 0.98) of the
loss, which lags. Ours reads the same raw losses smoothed without lag (smoothing.py), so its minimum
sits where the loss really was lowest; ours steps back from the cliff (where that curve turned up)
by a margin measured on a grid of trained runs (bench/lr_regret.py). Divergence is read from that
turn, not from a lagging EMA. Slopes are taken against log10(LR), so a rule means the same on any
ladder. Numpy only: the API and the CLI re-read a stored curve without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clrcore.cycle_fit import fit_cycles
from clrcore.smoothing import SPAN_DECADES, debiased_ema, smooth_curve, smoothing_gain, span_points, step_noise

# The suggestion rules that read the curve independently; "min_loss_div10" is derived from
# "min_loss" (always exactly one decade below), so it never counts towards the spread.
INDEPENDENT_RULES = ("steepest", "valley", "min_loss")
# Every rule, peers first; blog_base is the seed blog's lower bound, not a max_lr pick.
ALL_RULES = ("steepest", "valley", "slide", "min_loss", "min_loss_div10", "blog_base", "blog", "ours")
# The rules whose pick can be a run's max_lr (blog_base is the blog's lower bound, not a peak)
PICK_RULES = ("ours", "steepest", "valley", "slide", "min_loss", "min_loss_div10", "blog")
PEER_RULES = {
    "steepest": "steepest slope (pytorch-lr-finder, Lightning)",
    "valley": "valley (fastai)",
    "slide": "slide (fastai)",
    "min_loss_div10": "minimum/10 (fastai v1)",
    "blog": "lowest loss (the seed blog's max bound)",
}

# Ours: max_lr = the cliff / CLIFF_MARGIN, the cliff being where the zero-lag curve turned up (its
# last point when it never did). Learned on the grids of bench/lr_regret.py (docs/benchmarks.md, issue 12)
# at the default sweep of 60 steps a decade: the margin that leaves the worst of its five tasks the least
# regret, over 18 sweeps a task (1.53). The picks' centre (the geometric mean of the cliff over the best
# max_lr, 1.66-1.85) let the task whose cliff sits nearest its best take the loss; a margin holds only
# for the density it was learned at (2.8 with 20 steps a decade: a faster sweep turns up later).
CLIFF_MARGIN = 1.5
# ... for every family of net and optimizer but these, whose cliffs sit further above their best max LR:
# resnet_fast, whose fixed-scale BatchNorm hides its conv weights' growth, 2.0-3.0x with SGD and 11-15x with
# AdamW. Each is the margin whose worse task of the family's two stored ones has the least regret; registered
# before a fresh batch of three resnet_fast tasks, where they read 0.38 points against 1.5's 3.64 with one seed
# and 0.16 against 3.55 with three, all three within 0.5 against none (docs/benchmarks.md, "Margins per family").
FAMILY_CLIFF_MARGINS: dict[tuple[str, str], float] = {("resnet_fast", "sgd"): 2.38, ("resnet_fast", "adamw"): 11.2}
# ... at this density (specs.STEPS_PER_DECADE, the default sweep, is the same number; a test keeps them
# equal). How long a sweep dwells at each LR moves where its loss turns up: at 20-25 steps a decade the
# benchmark's cliffs sat 0.8-3.3x where they sat at 60 (resnet_fast 6.8x its best max LR against 2.1x,
# digits 1.9x against 2.5x), at 100-120 within 1.1x (docs/benchmarks.md, "Why the sweep's density").
# Below SPARSE_STEPS_PER_DECADE where the curve turned (half the calibrated density, just above the 20-25
# measured; 25-60 never was), a result warns that ours' pick is off the density its margin holds at.
MARGIN_STEPS_PER_DECADE = 60
SPARSE_STEPS_PER_DECADE = 30

DIVERGE_FACTOR = 4.0  # the sweep's stop for runaway loss: smoothed loss above 4x its best so far
MIN_POINTS = 10  # fewer usable points than this: no rule can read the curve
# The turn: the zero-lag curve risen above its minimum by this share of its fall, or this share of
# the minimum itself, whichever is larger (minibatch noise after smoothing is a few % of the loss).
RISE_OF_FALL = 0.2
RISE_RELATIVE = 0.03
FLAT_FRACTION = 0.03  # a fall of less than 3 % of the starting loss: the sweep saw no learning
# Noisy: the fall is within NOISE_SIGMAS x the noise left after smoothing (the step-to-step noise x the
# smoother's gain at the minimum). On pure white noise the fall read that way is 2.4-2.5 of those units at the median
# and 5.3-5.7 at the 99th percentile, at 20 to 120 points a decade alike (2,000 curves each, seeded), so
# one threshold serves a dense sweep and a sparse one. Scaled by the raw spread alone (as before), a
# sparse sweep passed pure noise a fifth of the time and a dense one was called noisy while it learned.
NOISE_SIGMAS = 6.0

# Rules this many decades apart or more mean the curve has no clear shape. On a clean curve the
# steepest descent sits up to about a decade below the minimum (1.1-1.4 on the anchor-shaped curves
# in the tests, 0.7 on the digits MLP), so a 1-decade threshold would flag textbook curves; 1.5 flags
# only the ragged ones.
LOW_CONFIDENCE_DECADES = 1.5

# When no rule can pick, an `auto` job trains with this documented safe recipe instead of failing:
# a max_lr that trains every catalog model without diverging (SGD with momentum 0.9 at 0.05; AdamW
# at 1e-3, its usual default), base_lr = max_lr/25, the step fitted to the epochs.
SAFE_MAX_LR = {"sgd": 0.05, "adamw": 1e-3}

TRIANGULAR_FAMILY = ("triangular", "triangular2", "exp_range")
# Smith 2017 suggests base_lr 3-4x below max_lr, but a triangular run ends at base_lr, and with
# BatchNorm nets ending that high costs accuracy (digits, tiny_cnn, 3 seeds: /4 gave 92.8 %, /25 gave
# 95.3-96.7 %). 25 is also one-cycle's div_factor, so every policy starts at max_lr/25.
TRIANGULAR_BASE_DIVISOR = 25.0
CONSTANT_DIVISOR = 4.0  # a fixed LR must stay stable all run: a quarter of the cyclic peak
DEFAULT_STEP_EPOCHS = 4
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


@dataclass(frozen=True)
class NoSuggestion:
    """Why no rule can pick from this curve; `reason` is one of NO_SUGGESTION_REASONS."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"no suggestion ({self.reason}): {self.detail}"


NO_SUGGESTION_REASONS = ("nan", "too_short", "never_fell", "flat", "noisy")


@dataclass(frozen=True)
class CurveReading:
    """One range-test curve read once: both smoothings, its minimum, its turn, and what is wrong with it.

    `ema` is the bias-corrected EMA (beta 0.98) every peer's finder smooths with (it lags); `smooth` is
    the zero-lag smoothing ours reads. Both stop at `end`, the first point past the 4x stop or a NaN.
    """

    lrs: np.ndarray
    raw: np.ndarray
    ema: np.ndarray
    smooth: np.ndarray
    i_min: int  # of `smooth`
    turn: int | None  # first point after the minimum where `smooth` rose by the margin
    still_falling: bool  # no turn, and the minimum is at the end: the cliff lies beyond end_lr
    noise: float  # the step-to-step noise left after smoothing (step_noise x smoothing_gain)
    problem: NoSuggestion | None

    @property
    def min_lr(self) -> float:
        return float(self.lrs[self.i_min])

    @property
    def turn_lr(self) -> float | None:
        return None if self.turn is None else float(self.lrs[self.turn])

    @property
    def cliff_lr(self) -> float:
        """Where the loss turned up; the curve's last point when it never did (the cliff lies beyond)."""
        return self.turn_lr if self.turn_lr is not None else float(self.lrs[-1])


def read_curve(
    lrs: Any,
    losses: Any,
    *,
    skip_start: int = 0,
    skip_end: int = 0,
    diverge_factor: float = DIVERGE_FACTOR,
    span_decades: float = SPAN_DECADES,
) -> CurveReading:
    """Read a sweep's raw per-step losses: cut at NaN or the 4x stop, smooth both ways, find the turn.

    `skip_start`/`skip_end` drop that many points at either end first (the re-reading knobs of
    pytorch-lr-finder and Lightning). The turn is the first point after the smoothed minimum that
    rises above it by max(RISE_OF_FALL x the fall, RISE_RELATIVE x the minimum): divergence read from
    the curve's shape, not from a lagging EMA crossing 4x.
    """
    lrs = np.asarray(lrs, dtype=float)
    raw = np.asarray(losses, dtype=float)
    if lrs.shape != raw.shape or lrs.ndim != 1:
        raise ValueError("lrs and losses must be 1-D and of equal length")
    stop = len(raw) - max(0, skip_end)
    lrs, raw = lrs[max(0, skip_start) : max(stop, 0)], raw[max(0, skip_start) : max(stop, 0)]
    bad = ~(np.isfinite(raw) & np.isfinite(lrs) & (lrs > 0))
    end = int(np.argmax(bad)) if bad.any() else len(raw)
    ema = debiased_ema(raw[:end]) if end else np.empty(0)
    best = np.minimum.accumulate(ema) if end else ema
    over = np.nonzero(ema[1:] > diverge_factor * best[:-1])[0]
    if len(over):
        end = int(over[0]) + 1
    lrs, raw, ema = lrs[:end], raw[:end], ema[:end]
    empty = np.empty(0)
    if end < MIN_POINTS:
        reason = "nan" if bad.any() and end == 0 else "too_short"
        short = NoSuggestion(reason, f"only {end} usable points before NaN or divergence "
                                     f"(need {MIN_POINTS}): lower start_lr or lengthen the sweep")
        return CurveReading(lrs, raw, ema, raw.copy() if end else empty, 0, None, False, math.nan, short)
    smooth = smooth_curve(lrs, raw, span_decades)
    i_min = int(np.argmin(smooth))
    window = max(3, round(span_points(lrs, span_decades)))
    start = float(np.median(raw[:window]))  # the edges of a smoothed curve are its noisiest points
    fall = start - float(smooth[i_min])
    margin = max(RISE_OF_FALL * fall, RISE_RELATIVE * abs(float(smooth[i_min])))
    after = np.nonzero(smooth[i_min:] > smooth[i_min] + margin)[0]
    turn = int(i_min + after[0]) if len(after) else None
    # still falling: no turn, and the last `window` points still went down by a share of the minimum
    tail_drop = float(smooth[max(0, len(smooth) - 1 - window)] - smooth[-1])
    still_falling = turn is None and tail_drop > RISE_RELATIVE / 3 * abs(float(smooth[-1]))
    noise = step_noise(raw) * smoothing_gain(lrs, i_min, span_decades)  # what smoothing leaves of it there
    problem: NoSuggestion | None = None
    if i_min == 0:
        problem = NoSuggestion("never_fell", "the loss never fell below its first value: lower start_lr")
    elif fall < FLAT_FRACTION * abs(start):
        problem = NoSuggestion("flat", f"the loss fell only {fall:.3g} from {start:.3g} "
                                       f"(less than {FLAT_FRACTION:.0%}): lengthen the sweep or raise end_lr")
    elif fall < NOISE_SIGMAS * noise:
        problem = NoSuggestion("noisy", f"the loss fell {fall:.3g}, within {NOISE_SIGMAS:g}x the noise left "
                                        f"after smoothing ({noise:.3g}): use a larger batch or the validation mode")
    return CurveReading(lrs, raw, ema, smooth, i_min, turn, still_falling, noise, problem)


def _steepest(x: np.ndarray, y: np.ndarray, i_min: int) -> float | None:
    """Most negative slope before the minimum, on a lightly re-smoothed curve with the first tenth
    trimmed, so one noisy step at the start of the sweep cannot win (pytorch-lr-finder skips 10)."""
    n = len(y)
    ys = _moving_average(y, max(3, n // 20) | 1)
    grad = np.gradient(ys, x)
    lo = max(1, n // 10)
    if i_min - lo < 2:
        return None
    segment = grad[lo : i_min + 1]
    k = int(np.argmin(segment))
    return float(10 ** x[lo + k]) if segment[k] < 0 else None


def _slide(x: np.ndarray, y: np.ndarray, lr_diff_decades: float = 1.2, thresh: float = 0.005) -> float | None:
    """fastai's slide: walk left from the end of the curve until the slope `lr_diff` points further
    left is within `thresh` of the slope here; that left point is the pick. fastai's default sweep has
    12.5 points a decade, so its 15-point window is 1.2 decades and its slopes are per 1/12.5 decade;
    both are converted to this curve's spacing so the rule means the same on a denser sweep."""
    n = len(y)
    if n < 3 or x[-1] <= x[0]:
        return None
    per_decade = (n - 1) / (x[-1] - x[0])
    lr_diff = max(1, min(n - 1, round(lr_diff_decades * per_decade)))
    grad = np.gradient(y, x) / 12.5  # fastai's per-step gradient on its 12.5-points-a-decade sweep
    r, left = n - 1, n - 1 - lr_diff
    pick = left
    while left >= 0 and abs(grad[r] - grad[left]) > thresh:
        pick = left
        r, left = r - 1, left - 1
    return float(10 ** x[max(pick, 0)])


def _fall_start(lrs: np.ndarray, y: np.ndarray, i_min: int, fraction: float = 0.05) -> float:
    """Where the loss starts to fall: the first point below start - 5 % of the whole fall."""
    target = y[0] - fraction * (y[0] - y[i_min])
    k = int(np.argmax(y[: i_min + 1] <= target))
    return float(lrs[k])


def suggest_lrs(
    lrs: Any,
    losses: Any,
    *,
    diverge_factor: float = DIVERGE_FACTOR,
    skip_start: int = 0,
    skip_end: int = 0,
    cliff_margin: float | None = None,
) -> dict[str, float | None]:
    """Every rule's LR on one curve of raw per-step losses, or None where it has nothing to read.

    Peers read the lagging EMA, as their finders do: steepest (pytorch-lr-finder, Lightning), valley
    and slide (fastai), min_loss and min_loss_div10 (fastai's `minimum`), blog_base/blog (the seed
    blog: where the loss starts to fall and where it is lowest). `ours` reads the zero-lag curve:
    the LR where it turned up (the cliff) divided by CLIFF_MARGIN. Every rule is None when the curve has a problem.
    """
    reading = read_curve(lrs, losses, diverge_factor=diverge_factor, skip_start=skip_start, skip_end=skip_end)
    return picks_from_reading(reading, cliff_margin=cliff_margin)


def picks_from_reading(reading: CurveReading, cliff_margin: float | None = None) -> dict[str, float | None]:
    """The rules of `suggest_lrs` on an already read curve."""
    out: dict[str, float | None] = dict.fromkeys(ALL_RULES)
    if reading.problem is not None:
        return out
    x, ema = np.log10(reading.lrs), reading.ema
    i_ema = int(np.argmin(ema))
    if i_ema > 0 and ema[i_ema] < ema[0]:
        min_loss = float(reading.lrs[i_ema])
        out["min_loss"], out["min_loss_div10"] = min_loss, min_loss / 10
        out["steepest"] = _steepest(x, ema, i_ema)
        out["valley"] = _valley(x[: i_ema + 1], ema[: i_ema + 1])
        out["blog_base"] = _fall_start(reading.lrs, ema, i_ema)
        out["blog"] = out["min_loss"]
    out["slide"] = _slide(x, ema)
    out["ours"] = reading.cliff_lr / (CLIFF_MARGIN if cliff_margin is None else cliff_margin)
    return out


def aggregate_picks(picks: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Several seeds' picks as one: (geometric mean, max/min spread); None where none picked."""
    values = [p for p in picks if p]
    if not values:
        return None, None
    return float(np.exp(np.mean(np.log(values)))), float(max(values) / min(values))


# Several seeds in one job: their picks spread by more than this factor (max/min) and the job warns and is
# marked low confidence. One sweep's cliff varies by a factor of about 1.6 (one SD, bench/seed_spread.py),
# so three seeds' picks spread 2.2x at the median on the benchmark's tasks and 3.7x at the 90th
# percentile (12 sweeps a task, docs/benchmarks.md): at 1.5x nearly every job warned. 3.5 flags the
# seeds that disagree more than sweeps usually do.
SEED_SPREAD_WARN = 3.5


@dataclass(frozen=True)
class SeedAggregate:
    """Several sweeps (seeds) of one job read as one: each rule's geometric mean over the seeds that
    picked, each seed's own picks, and the spread of ours. `source` says what the aggregate read:
    "seeds" (the seeds' picks), "mean_curve" (no seed could pick alone, so their mean loss curve,
    sqrt(k) less noisy, was read) or "none" (neither could)."""

    suggestions: dict[str, float | None]
    per_seed: list[dict[str, float | None]]
    problems: list[NoSuggestion | None]
    source: str

    @property
    def picked(self) -> int:
        return sum(1 for picks in self.per_seed if picks.get("ours"))

    @property
    def spread(self) -> float | None:
        """max/min of the seeds' `ours` picks; None with fewer than two picks."""
        return self.spread_of("ours")

    def spread_of(self, rule: str) -> float | None:
        """max/min of the seeds' picks by `rule` (the one the job trains at); None with fewer than two."""
        picks = [p for seed in self.per_seed if (p := seed.get(rule))]
        return aggregate_picks(picks)[1] if len(picks) >= 2 else None


def mean_curve(curves: list[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The seeds' raw losses averaged step by step over the steps every seed took (same ladder)."""
    n = min(len(lrs) for lrs, _ in curves)
    lrs = np.asarray(curves[0][0][:n], dtype=float)
    return lrs, np.mean([np.asarray(losses[:n], dtype=float) for _, losses in curves], axis=0)


def aggregate_seeds(
    curves: list[tuple[Any, Any]], *, diverge_factor: float = DIVERGE_FACTOR, cliff_margin: float | None = None
) -> SeedAggregate:
    """Read each seed's curve (lrs, raw losses) and combine: per rule, the geometric mean of the picks.

    When no seed's curve gives a pick (each too noisy alone), the mean of the curves is read instead.
    """
    if not curves:
        raise ValueError("aggregate_seeds needs at least one curve")
    readings = [read_curve(lrs, losses, diverge_factor=diverge_factor) for lrs, losses in curves]
    per_seed = [picks_from_reading(r, cliff_margin) for r in readings]
    problems = [r.problem for r in readings]
    out: dict[str, float | None] = {}
    for rule in ALL_RULES:
        out[rule], _ = aggregate_picks([picks[rule] for picks in per_seed])
    source = "seeds" if out["ours"] else "none"
    if out["ours"] is None and len(curves) > 1:
        lrs, losses = mean_curve(curves)
        mean_picks = picks_from_reading(read_curve(lrs, losses, diverge_factor=diverge_factor), cliff_margin)
        if mean_picks["ours"]:
            out, source = mean_picks, "mean_curve"
    return SeedAggregate(out, per_seed, problems, source)


def seed_warnings(agg: SeedAggregate, seeds: list[int], rule: str = "ours") -> list[str]:
    """What a multi-seed job says about its seeds: ones that could not pick, and a wide spread of the
    picks of `rule`, the one it trains at."""
    out = [f"seed {seed}: {problem}" for seed, problem in zip(seeds, agg.problems, strict=True) if problem]
    if agg.source == "mean_curve":
        out.append(f"no seed's curve could be read alone; the pick reads the mean of the {len(seeds)} curves")
    spread = agg.spread_of(rule)
    if spread is not None and spread > SEED_SPREAD_WARN:
        out.append(f"the seeds' picks spread {spread:.2f}x (max/min, over {SEED_SPREAD_WARN:g}x): the "
                   "pick is their geometric mean; read the curves or add seeds")
    return out


def spread_decades(suggestions: dict[str, float | None]) -> float | None:
    """log10(max/min) over the independent rules that returned a value; None with fewer than two."""
    values = [value for k in INDEPENDENT_RULES if (value := suggestions.get(k))]
    if len(values) < 2:
        return None
    return float(math.log10(max(values) / min(values)))


def _bounds(max_lr: float, rule: str, policy: str, div_factor: float) -> tuple[float, float, str]:
    """(base_lr, max_lr, rule) for a policy, from a cyclic peak."""
    if policy == "one_cycle":
        return max_lr / div_factor, max_lr, rule
    if policy == "constant":
        return max_lr / CONSTANT_DIVISOR, max_lr / CONSTANT_DIVISOR, f"{rule} / {CONSTANT_DIVISOR:g}"
    return max_lr / TRIANGULAR_BASE_DIVISOR, max_lr, rule


def cliff_margin_for(model: str | None, optimizer: str | None) -> float:
    """Ours' margin for a net and optimizer: its family's (FAMILY_CLIFF_MARGINS), else CLIFF_MARGIN."""
    return FAMILY_CLIFF_MARGINS.get((str(model), str(optimizer)), CLIFF_MARGIN)


def recommend(
    suggestions: dict[str, float | None], policy: str = "triangular", *, div_factor: float = 25.0,
    rule: str = "ours", cliff_margin: float | None = None,
) -> Recommendation:
    """The bounds to train with: max_lr is `rule`'s pick, by default ours (the cliff of the zero-lag
    curve / the margin the suggestions were read with, `cliff_margin`, CLIFF_MARGIN when None).

    base_lr is max_lr/TRIANGULAR_BASE_DIVISOR for the triangular family, max_lr/div_factor for
    one_cycle, and both bounds are max_lr/CONSTANT_DIVISOR under 'constant' (a fixed LR has to stay
    stable for the whole run, so it sits at a cycle's floor). Raises ValueError without a pick.
    """
    if rule not in PICK_RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {', '.join(PICK_RULES)}")
    pick = suggestions.get(rule)
    if not pick:
        raise ValueError("no suggestion: the curve gives no rule anything to read" if rule == "ours"
                         else f"no suggestion: rule {rule!r} finds nothing to read on this curve")
    margin = CLIFF_MARGIN if cliff_margin is None else cliff_margin
    label = f"ours (the zero-lag curve's cliff / {margin:g})" if rule == "ours" else rule
    base_lr, max_lr, label = _bounds(pick, label, policy, div_factor)
    spread = spread_decades(suggestions)
    low = spread is not None and spread >= LOW_CONFIDENCE_DECADES
    return Recommendation(base_lr, max_lr, label, spread, low, policy)


def safe_recommendation(
    optimizer: str, policy: str = "triangular", *, reason: str = "", div_factor: float = 25.0
) -> Recommendation:
    """The documented fallback when no rule can pick: SAFE_MAX_LR for the optimizer, marked low confidence."""
    if optimizer not in SAFE_MAX_LR:
        raise ValueError(f"no safe max_lr known for optimizer {optimizer!r}")
    rule = f"safe fallback for {optimizer} (max_lr {SAFE_MAX_LR[optimizer]:g})" + (f": {reason}" if reason else "")
    base_lr, max_lr, rule = _bounds(SAFE_MAX_LR[optimizer], rule, policy, div_factor)
    return Recommendation(base_lr, max_lr, rule, None, True, policy)


def steps_per_decade(ladder: Any, at: float, half_width: float = 0.25) -> float:
    """How densely a sweep's ladder passed the LR `at`: its steps within `half_width` decades either side,
    per decade (a geometric ladder's density anywhere; a linear one's where it matters, at the cliff)."""
    x = np.log10(np.asarray(ladder, dtype=float))
    x = x[np.isfinite(x)]
    near = x[np.abs(x - math.log10(at)) <= half_width]
    if len(near) < 2:  # fewer than two steps in half a decade: read the whole ladder's mean density
        near = x
    span = float(near.max() - near.min()) if len(near) >= 2 else 0.0
    return (len(near) - 1) / span if span > 0 else 0.0


def sparse_sweep_warning(ladder: Any, reading: CurveReading) -> str | None:
    """A warning when the sweep passed its cliff faster than ours' margin holds for (None otherwise)."""
    if reading.problem is not None or not len(reading.lrs):
        return None
    density = steps_per_decade(ladder, reading.cliff_lr)
    if density >= SPARSE_STEPS_PER_DECADE:
        return None
    return (f"the sweep took {density:.0f} steps a decade where its loss turned up; ours' margin was learned at "
            f"{MARGIN_STEPS_PER_DECADE}, and how long a sweep dwells at each LR moves its turn (on the benchmark "
            f"0.8-3.3x at 20-25 a decade), so the pick may be off: leave num_iter and epochs out "
            f"({MARGIN_STEPS_PER_DECADE} steps a decade) or raise num_iter")


def warnings_for(
    lrs: Any,
    losses: Any,
    *,
    stop_reason: str | None = None,
    diverge_factor: float = DIVERGE_FACTOR,
    suggestions: dict[str, float | None] | None = None,
    reading: CurveReading | None = None,
    ladder: Any = None,
) -> list[str]:
    """Plain-language reasons not to trust a curve blindly, with what to change in the next sweep.

    `losses` are the raw per-step losses. "Never diverged" is said only when the zero-lag curve still
    falls where the sweep ended; a curve that turned up is a divergence even if the 4x stop never fired.
    `ladder` is the LR of every step the sweep took, where `lrs` are a coarser reading's (the validation
    loss every few steps); by default `lrs`.
    """
    if reading is None:
        reading = read_curve(lrs, losses, diverge_factor=diverge_factor)
    out: list[str] = []
    if stop_reason == "end_lr" and reading.problem is None and reading.turn is None:
        if reading.still_falling:
            out.append("loss never diverged: it was still falling at end_lr; raise end_lr")
        else:
            out.append("the loss flattened but did not rise before end_lr: raise end_lr to see the cliff")
    elif stop_reason == "nan":
        out.append("loss became NaN or inf: the rules read only the points before it")
    elif stop_reason == "data_exhausted":
        out.append("the training data ran out before the sweep finished: the curve is partial")
    elif stop_reason == "stopped":
        out.append("the sweep was stopped before it finished: the curve is partial")
    if stop_reason not in (None, "end_lr") and reading.problem is None and reading.still_falling:
        out.append("the loss was still falling where the curve ends: the minimum lies further on")
    if reading.problem is not None:
        out.append(str(reading.problem))
    spread = spread_decades(suggestions) if suggestions else None
    if spread is not None and spread >= LOW_CONFIDENCE_DECADES:
        out.append(
            f"low confidence: the suggestion rules disagree by {spread:.1f} decades "
            f"(threshold {LOW_CONFIDENCE_DECADES:g}); read the curve before trusting the pick"
        )
    sparse = sparse_sweep_warning(lrs if ladder is None else ladder, reading)
    if sparse:
        out.append(sparse)
    return out


def recipe(
    recommendation: Recommendation,
    *,
    policy: str | None = None,
    iters_per_epoch: int,
    epochs_hint: int | None = None,
    div_factor: float = 25.0,
) -> dict[str, Any]:
    """The whole training recipe; keys named as in TrainSpec where they are TrainSpec fields.

    Triangular family: without `epochs_hint`, one cycle with a 4-epoch step (8 epochs). With it, the
    epochs stay as given and the step is fitted so they hold a whole number of cycles (cycle_fit.py);
    when no whole cycle with a step of at least one epoch fits, the policy becomes one_cycle and `fit`
    says so. one_cycle: a single cycle over `epochs_hint` epochs (10 if none). Informational keys:
    rule, low_confidence, spread_decades, step_epochs, cycles, iters_per_epoch, fit.
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
        cycles: int | None  # None only with the one_cycle switch, which returns before it is used
        if epochs_hint is None:
            step, cycles, epochs = DEFAULT_STEP_EPOCHS * iters_per_epoch, 1, 2 * DEFAULT_STEP_EPOCHS
            note = f"one cycle with the default step of {DEFAULT_STEP_EPOCHS} epochs"
        else:
            fit = fit_cycles(epochs_hint, iters_per_epoch, policy)
            if fit.step_iterations is None:
                return out | {"policy": "one_cycle", "epochs": epochs_hint, "div_factor": div_factor,
                              "base_lr": recommendation.max_lr / div_factor, "fit": fit.note}
            step, cycles, epochs, note = fit.step_iterations, fit.cycles, epochs_hint, fit.note
        out |= {
            "step_size": max(1, step),
            "step_unit": "iterations",
            "step_epochs": round(step / iters_per_epoch, 4),
            "cycles": cycles,
            "epochs": epochs,
            "fit": note,
        }
    elif policy == "one_cycle":
        out |= {"epochs": epochs_hint or DEFAULT_ONE_CYCLE_EPOCHS, "div_factor": div_factor}
    else:
        out["epochs"] = epochs_hint or DEFAULT_ONE_CYCLE_EPOCHS
    return out
