"""How far apart do two range-test jobs land? Ours' pick across sweep seeds, pooled over stored runs.

The regret table's spread is a worst case: max/min over 6 seeds. This script pools every stored sweep
of a task (the fifth run's seeds 0-5 and the out-of-sample run's 6-11 by default), reads each as the
product does (curves the noise check refuses are left out), and draws pairs of disjoint k-seed jobs
(k = 1-5, each job's pick the geometric mean of its seeds' picks, as `range_test.seeds: k` aggregates
them): the median max/min of such a pair and how often it is under 1.5x; and the spread one 3-seed
job sees among its own seeds (median, 90th percentile), which its warning is set against. Then what a
k-seed job's pick costs: the regret (points) of a job of k seeds drawn from the pool, its pick their
cliffs' geometric mean / CLIFF_MARGIN read off the task's grid fit, averaged over draws. No training.

    .venv/bin/python -m bench.seed_spread bench/data/lr_regret bench/data/lr_regret_oos
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from bench.regret_fit import GridFit
from bench.regret_variants import load
from clrcore.suggest import CLIFF_MARGIN, SEED_SPREAD_WARN, read_curve

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


def job_regrets(fit: GridFit, log_cliffs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Points of regret of a k-seed job's pick (its seeds' geometric mean / CLIFF_MARGIN), over DRAWS draws
    of k seeds without replacement."""
    return np.array([100 * fit.regret(math.exp(log_cliffs[rng.choice(len(log_cliffs), k, replace=False)].mean())
                                      / CLIFF_MARGIN)[0] for _ in range(DRAWS)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="--out folders of bench.lr_regret (same tasks and grids)")
    args = parser.parse_args()
    runs = [load(run) for run in args.runs]
    names = [name for name in runs[0] if all(name in run for run in runs)]
    if not names:
        raise SystemExit(f"no task has a grid and sweeps in every one of {', '.join(map(str, args.runs))}")
    rng = np.random.default_rng(0)
    draws = np.random.default_rng(1)  # the regrets' own: the spreads above stay as they were drawn
    ks = (1, 2, 3, 5)
    print("| task | sweeps read | SD of ln(pick) | " + " | ".join(f"two {k}-seed jobs" for k in ks)
          + " | one 3-seed job's own spread (median, 90th percentile) |")
    print("| --- | --- | --- |" + " --- |" * (len(ks) + 1))
    pooled = []
    regrets: dict[str, list[np.ndarray]] = {}
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
        regrets[name] = [job_regrets(runs[0][name][0], picks, k, draws) for k in ks]
    every = np.concatenate(pooled)
    print(f"\nevery task: one 3-seed job's own spread {np.median(every):.2f}x at the median, "
          f"{np.percentile(every, 90):.2f}x at the 90th percentile (SEED_SPREAD_WARN {SEED_SPREAD_WARN:g})")
    print(f"\n| a job of k seeds: regret (points; mean, 90th percentile) at CLIFF_MARGIN {CLIFF_MARGIN:g} | "
          + " | ".join(f"{k} seed{'s' * (k > 1)}" for k in ks) + " |")
    print("| --- |" + " --- |" * len(ks))
    for name, by_k in regrets.items():
        print(f"| {name} | " + " | ".join(f"{r.mean():.2f}, {np.percentile(r, 90):.2f}" for r in by_k) + " |")
    print("| mean of the tasks | " + " | ".join(f"{np.mean([by_k[i].mean() for by_k in regrets.values()]):.2f}"
                                              for i in range(len(ks))) + " |")


if __name__ == "__main__":
    main()
