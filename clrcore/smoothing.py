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


def residual_noise(raw: Any, smooth: Any) -> float:
    """Robust spread of the raw loss around the smoothed one (1.4826 x median absolute deviation)."""
    diff = np.asarray(raw, dtype=float) - np.asarray(smooth, dtype=float)
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))))
