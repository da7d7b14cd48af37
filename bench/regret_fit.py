"""Reading a grid of trained max LRs: a smooth fit of accuracy against log10(LR), regret, its noise.

Single grid points are noisy (a different seed moves one by a point or more on small CPU tasks), so a
pick's accuracy and the grid's best are both read off one smooth curve: a local quadratic regression
(LOESS-style, Gaussian kernel of BANDWIDTH_DECADES) over every seed's point of the basin, the grid
points whose seed mean is within BASIN_POINTS of the best mean, contiguous around it. Outside the
basin (the cliff, the far low end) a pick is read by linear interpolation of the seed means, and off
the grid at its nearest edge (marked: a lower bound). Regret's noise is shown by a bootstrap that
resamples the seeds of every grid LR and refits. Numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BANDWIDTH_DECADES = 0.4
BASIN_POINTS = 0.10  # in accuracy (10 points)
FINE = 61  # points of the fine ladder the fit's maximum is searched on


def local_quadratic(x: np.ndarray, y: np.ndarray, at: float, bandwidth: float = BANDWIDTH_DECADES) -> float:
    """Weighted least-squares quadratic around `at` (Gaussian weights on x - at), its value at `at`."""
    w = np.exp(-0.5 * ((x - at) / bandwidth) ** 2)
    design = np.stack([np.ones_like(x), x - at, (x - at) ** 2], axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
    return float(coef[0])


def basin(means: np.ndarray, within: float = BASIN_POINTS) -> tuple[int, int]:
    """Indices [lo, hi] of the contiguous grid points around the best mean that stay within `within`."""
    k = int(np.argmax(means))
    lo, hi = k, k
    while lo > 0 and means[lo - 1] >= means[k] - within:
        lo -= 1
    while hi < len(means) - 1 and means[hi + 1] >= means[k] - within:
        hi += 1
    return lo, hi


@dataclass
class GridFit:
    """A grid's accuracies [seed][lr] read as one smooth curve in log10(LR)."""

    lrs: np.ndarray
    by_seed: np.ndarray  # (seeds, lrs)
    bandwidth: float = BANDWIDTH_DECADES

    def __post_init__(self) -> None:
        self.lrs = np.asarray(self.lrs, dtype=float)
        self.by_seed = np.atleast_2d(np.asarray(self.by_seed, dtype=float))
        self.x = np.log10(self.lrs)
        self.means = self.by_seed.mean(axis=0)
        self.lo, self.hi = basin(self.means)
        if self.hi - self.lo < 2:  # too few points for a quadratic: widen to three around the best
            k = int(np.clip(np.argmax(self.means), 1, len(self.means) - 2))
            self.lo, self.hi = k - 1, k + 1
        cols = slice(self.lo, self.hi + 1)
        self._fx = np.tile(self.x[cols], self.by_seed.shape[0])
        self._fy = self.by_seed[:, cols].ravel()
        fine = np.linspace(self.x[self.lo], self.x[self.hi], FINE)
        values = np.array([self._fit(v) for v in fine])
        self.best_x, self.best = float(fine[int(np.argmax(values))]), float(values.max())

    def _fit(self, at: float) -> float:
        return local_quadratic(self._fx, self._fy, at, self.bandwidth)

    @property
    def best_lr(self) -> float:
        return float(10**self.best_x)

    def value(self, lr: float) -> tuple[float, bool]:
        """The accuracy read at `lr`, and True when `lr` lies off the grid (read at its edge)."""
        at = math.log10(lr)
        off = not (self.x[0] - 1e-9 <= at <= self.x[-1] + 1e-9)
        at = float(np.clip(at, self.x[0], self.x[-1]))
        if self.x[self.lo] <= at <= self.x[self.hi]:
            return self._fit(at), off
        return float(np.interp(at, self.x, self.means)), off

    def regret(self, lr: float) -> tuple[float, bool]:
        """The fit's best - the accuracy at `lr`, in accuracy units; True when `lr` is off the grid."""
        value, off = self.value(lr)
        return max(0.0, self.best - value), off

    def seed_noise(self) -> float:
        """Mean over the grid's LRs of the standard deviation between seeds (accuracy units)."""
        if self.by_seed.shape[0] < 2:
            return math.nan
        return float(np.mean(self.by_seed.std(axis=0, ddof=1)))

    def fit_residual(self) -> float:
        """RMS of the seed means minus the fit over the basin: how far the smooth curve sits from them."""
        diffs = [self.means[i] - self._fit(self.x[i]) for i in range(self.lo, self.hi + 1)]
        return float(np.sqrt(np.mean(np.square(diffs))))


def bootstrap_fits(lrs: list[float], by_seed: list[list[float]], *, draws: int = 200, seed: int = 0) -> list[GridFit]:
    """Refits of the grid with each LR's seeds resampled (with replacement): the fit's own noise."""
    rng = np.random.default_rng(seed)
    grid = np.asarray(by_seed, dtype=float)
    n_seeds, n_lrs = grid.shape
    return [GridFit(np.asarray(lrs), np.take_along_axis(grid, rng.integers(0, n_seeds, size=(n_seeds, n_lrs)), 0))
            for _ in range(draws)]


def interval(fits: list[GridFit], picks: list[float]) -> tuple[float, float]:
    """5th and 95th percentile, over the bootstrap refits, of the mean regret of `picks`."""
    values = [np.mean([fit.regret(p)[0] for p in picks]) for fit in fits]
    return float(np.percentile(values, 5)), float(np.percentile(values, 95))
