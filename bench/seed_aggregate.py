"""How should a 3-seed job combine its seeds? The geometric mean of the seeds' picks (what a job does)
against reading one curve: the seeds' mean or median loss, step by step. Scored on the stored sweeps of
bench/lr_regret.py (each stored job's three curves), no training:
- regret with the margin learned leaving the task out, and on the held-out tasks with the margin
  learned on all five;
- how far two jobs' picks land apart (median max/min over pairs of jobs, the share under 1.5x).

    .venv/bin/python -m bench.seed_aggregate --out bench/data/lr_regret --out bench/data/lr_regret_oos \
        --out bench/data/lr_regret_fresh --held-out bench/data/lr_regret_heldout
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.lr_regret import TASKS_CPU, TASKS_HELD_OUT
from bench.regret_variants import load_jobs, mean_regret
from clrcore.suggest import read_curve

WAYS = ("picks' geometric mean", "mean curve", "median curve")


def _cliff(lrs: Any, losses: Any) -> float | None:
    reading = read_curve(lrs, losses)
    return None if reading.problem is not None else reading.cliff_lr


def job_cliff(curves: list[dict[str, Any]], way: str) -> float | None:
    """One job's cliff, its seeds combined `way` (one of WAYS); None where nothing could be read."""
    if way == WAYS[0]:
        cliffs = [c for curve in curves if (c := _cliff(curve["lrs"], curve["losses"]))]
        return float(np.exp(np.mean(np.log(cliffs)))) if cliffs else None
    n = min(len(curve["lrs"]) for curve in curves)  # the steps every seed took (same ladder)
    losses = np.array([np.asarray(curve["losses"][:n], float) for curve in curves])
    combined = losses.mean(0) if way == WAYS[1] else np.median(losses, 0)
    return _cliff(curves[0]["lrs"][:n], combined)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, action="append", required=True,
                        help="a run's folder (repeat to pool other sweep seeds; the first holds the grid cache)")
    parser.add_argument("--held-out", type=Path, default=None, help="a run of TASKS_HELD_OUT")
    args = parser.parse_args()
    tasks = load_jobs(args.out, TASKS_CPU)
    if not tasks:
        raise SystemExit(f"{args.out[0]}: no task has both a grid and sweeps there")
    held = load_jobs([args.held_out], TASKS_HELD_OUT) if args.held_out else {}
    names = list(tasks)
    print(f"| seeds combined by | margin | leave one out: {' | '.join(names)} | mean | held out (mean) | "
          "two jobs: median max/min, share under 1.5x (worst task) |")
    print(f"| --- | --- |{' --- |' * len(names)} --- | --- | --- |")
    for way in WAYS:
        picks = {n: [c for job in tasks[n][1] if (c := job_cliff(job, way))] for n in names}
        ratio = {n: float(np.mean(np.log10(picks[n]))) - math.log10(tasks[n][0].best_lr) for n in names}
        loto = [mean_regret(tasks[n][0], picks[n], float(10 ** np.mean([ratio[k] for k in names if k != n])))
                for n in names]
        margin = float(10 ** np.mean(list(ratio.values())))
        held_scores = [mean_regret(fit, [c for job in jobs if (c := job_cliff(job, way))], margin)
                       for fit, jobs in held.values()]
        pairs = {n: [max(a, b) / min(a, b) for a, b in itertools.combinations(picks[n], 2)] for n in names}
        median = max(float(np.median(p)) for p in pairs.values())
        under = min(float(np.mean(np.asarray(p) < 1.5)) for p in pairs.values())
        cells = " | ".join(f"{v:.2f}" for v in loto)
        held_cell = f"{np.mean(held_scores):.2f}" if held_scores else "-"
        print(f"| {way} | {margin:.2f} | {cells} | {np.mean(loto):.2f} | {held_cell} | "
              f"{median:.2f}x, {under:.0%} |")


if __name__ == "__main__":
    main()
