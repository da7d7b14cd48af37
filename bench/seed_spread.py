"""How far apart do two range-test jobs land? Ours' pick across sweep seeds, pooled over stored runs.

The regret table's spread is a worst case: max/min over 6 seeds. This script pools every stored sweep
of a task (the fifth run's seeds 0-5 and the out-of-sample run's 6-11 by default), reads each as the
product does (curves the noise check refuses are left out), and draws pairs of disjoint k-seed jobs
(k = 1-5, each job's pick the geometric mean of its seeds' picks, as `range_test.seeds: k` aggregates
them): the median max/min of such a pair and how often it is under 1.5x; and the spread one 3-seed
job sees among its own seeds (median, 90th percentile), which its warning is set against. No training.

    .venv/bin/python -m bench.seed_spread bench/data/lr_regret bench/data/lr_regret_oos
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from bench.regret_variants import load
from clrcore.suggest import SEED_SPREAD_WARN, read_curve

DRAWS = 2000


def pair_ratios(log_picks: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """max/min of two disjoint k-seed jobs' picks, over DRAWS random draws of the seeds."""
    out = np.empty(DRAWS)
    for i in range(DRAWS):
        order = rng.permutation(len(log_picks))
        out[i] = math.exp(abs(log_picks[order[:k]].mean() - log_picks[order[k : 2 * k]].mean()))
    return out


def own_spreads(log_picks: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """max/min among k seeds drawn without replacement, over DRAWS draws: what one k-seed job reports."""
    return np.array([math.exp(np.ptp(log_picks[rng.choice(len(log_picks), k, replace=False)]))
                     for _ in range(DRAWS)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="--out folders of bench.lr_regret (same tasks and grids)")
    args = parser.parse_args()
    runs = [load(run) for run in args.runs]
    names = [name for name in runs[0] if all(name in run for run in runs)]
    if not names:
        raise SystemExit(f"no task has a grid and sweeps in every one of {', '.join(map(str, args.runs))}")
    rng = np.random.default_rng(0)
    ks = (1, 2, 3, 5)
    print("| task | sweeps read | SD of ln(pick) | " + " | ".join(f"two {k}-seed jobs" for k in ks)
          + " | one 3-seed job's own spread (median, 90th percentile) |")
    print("| --- | --- | --- |" + " --- |" * (len(ks) + 1))
    pooled = []
    for name in names:
        readings = [read_curve(c["lrs"], c["losses"]) for run in runs for c in run[name][1]]
        picks = np.log([r.cliff_lr for r in readings if r.problem is None])  # ours = cliff / margin: same ratios
        cells = []
        for k in ks:
            ratios = pair_ratios(picks, k, rng) if 2 * k <= len(picks) else None
            cells.append("-" if ratios is None else f"{np.median(ratios):.2f}x, {np.mean(ratios < 1.5):.0%} under 1.5x")
        own = own_spreads(picks, 3, rng)
        pooled.append(own)
        cells.append(f"{np.median(own):.2f}x, {np.percentile(own, 90):.2f}x")
        print(f"| {name} | {len(picks)} of {len(readings)} | {picks.std(ddof=1):.2f} | " + " | ".join(cells) + " |")
    every = np.concatenate(pooled)
    print(f"\nevery task: one 3-seed job's own spread {np.median(every):.2f}x at the median, "
          f"{np.percentile(every, 90):.2f}x at the 90th percentile (SEED_SPREAD_WARN {SEED_SPREAD_WARN:g})")


if __name__ == "__main__":
    main()
