"""Zero-lag smoothing of a finished range-test curve (numpy only).

A one-sided EMA (the sweep's live "smoothed" column) trails the raw loss: with beta 0.98 its minimum
sits about 50 steps (1.25 decades on a 200-step, 5-decade sweep) past the raw one, inside the rising
part. The curve is complete before any rule reads it, so it can be smoothed both ways: an EMA run
forwards and then backwards has no phase lag, and a minimum stays where the data put it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# The smoothing window, in decades of LR: wide enough to average minibatch noise (tens of steps on a
# 40-50 steps-per-decade sweep), narrow next to the half decade between a curve's minimum and its cliff.
SPAN_DECADES = 0.2
MIN_SPAN_POINTS = 3


def debiased_ema(values: Any, beta: float = 0.98) -> np.ndarray:
    """An EMA with bias correction, so the first value is the raw one: the range test's (lagging)
    smoothed loss, and one pass of the zero-lag smoothing below."""
    values = np.asarray(values, dtype=float)
    out = np.empty_like(values)
    avg = 0.0
    for n, value in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * value
        out[n - 1] = avg / (1 - beta**n)
    return out


def span_points(lrs: Any, span_decades: float = SPAN_DECADES) -> float:
    """How many sweep points make `span_decades` of LR on this (log-spaced) ladder."""
    x = np.log10(np.asarray(lrs, dtype=float))
    if len(x) < 2 or not np.all(np.isfinite(x)) or x[-1] <= x[0]:
        return float(MIN_SPAN_POINTS)
    per_decade = (len(x) - 1) / (x[-1] - x[0])
    return max(float(MIN_SPAN_POINTS), span_decades * per_decade)


def forward_backward_ema(values: Any, span: float) -> np.ndarray:
    """A zero-phase EMA: forwards, then backwards over the result. `span` is the EMA's window in
    points (beta = 1 - 2 / (span + 1)); the two passes together smooth like one of about twice that."""
    values = np.asarray(values, dtype=float)
    if len(values) < 3 or span <= 1:
        return values.copy()
    beta = 1 - 2 / (span + 1)
    forward = debiased_ema(values, beta)
    return debiased_ema(forward[::-1], beta)[::-1]


def smooth_curve(lrs: Any, losses: Any, span_decades: float = SPAN_DECADES) -> np.ndarray:
    """The loss smoothed without lag, with a window of `span_decades` of LR (half per pass)."""
    span = span_points(lrs, span_decades) / 2
    return forward_backward_ema(losses, max(span, 1.0))


def step_noise(raw: Any) -> float:
    """The loss's step-to-step noise: 1.4826 x the median absolute deviation of its first differences,
    over sqrt(2). The trend moves little between neighbouring steps, so unlike the residual around a
    smoothed curve this does not depend on how densely the sweep sampled or how it was smoothed."""
    diff = np.diff(np.asarray(raw, dtype=float))
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / math.sqrt(2))


def smoothing_gain(lrs: Any, at: int | None = None, span_decades: float = SPAN_DECADES) -> float:
    """The share of white noise's SD that `smooth_curve` leaves at point `at` (the middle by default):
    the root of the sum of the squared weights that point gives the raw points. Mid-curve about 0.56 at
    20 points a decade and 0.29 at 60; at the last point, averaged by one pass only, about 1.3x that."""
    n = len(np.asarray(lrs))
    span = max(span_points(lrs, span_decades) / 2, 1.0)
    if n < 3 or span <= 1:
        return 1.0  # forward_backward_ema leaves such a curve as it is
    at = n // 2 if at is None else at
    beta = 1 - 2 / (span + 1)
    k = np.arange(at, n)
    # out[at] = sum_k back[k] fwd[k], back[k] = (1-b) b^(k-at) / (1-b^(n-at)) the backward pass's weights
    # and fwd[k] = sum_(j<=k) (1-b) b^(k-j) x[j] / (1-b^(k+1)) the forward pass: so x[j]'s weight is
    # (1-b) sum_(k>=max(j,at)) b^(k-j) u[k], u[k] = back[k] / (1-b^(k+1)), summed from the end
    u = (1 - beta) * beta ** (k - at) / (1 - beta ** (n - at)) / (1 - beta ** (k + 1))
    tail = np.empty(len(k))
    acc = 0.0
    for i in range(len(k) - 1, -1, -1):
        acc = u[i] + beta * acc
        tail[i] = acc
    weights = (1 - beta) * np.concatenate([tail[0] * beta ** np.arange(at, 0, -1), tail])
    return float(np.sqrt(np.sum(weights**2)))
