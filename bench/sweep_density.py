"""Does the sweep's length move the cliff? The same tasks swept at several densities, read against one grid.

A range test passes quickly through every LR; a run trained at that LR as its peak holds it for many
steps. How far above the best trained max LR the sweep's loss turns up can therefore depend on how many
steps the sweep spends per decade. This script reads stored sweeps of bench/lr_regret.py made at
different lengths (the same tasks, sweep seeds and grids; `--sweep '{"num_iter": N}'` into another
`--out`) and prints, per task and density, the cliff over the grid's best max LR (the geometric mean
over the seeds), the max/min spread of one seed's cliff, and the one-seed regret of ours with the margin
learned on those sweeps, leaving the task out. Every curve's cliff is read as it lies, including curves
the product's noise check would refuse (on 20 steps a decade, all of minigooglenet's). No training.

    .venv/bin/python -m bench.sweep_density bench/data/lr_regret bench/data/lr_regret_density/600
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from bench.regret_variants import load
from clrcore.smoothing import span_points
from clrcore.suggest import read_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="--out folders of bench.lr_regret, one per sweep length")
    parser.add_argument("--grids", type=Path, default=Path("bench/data/lr_regret"),
                        help="the folder whose cache/ holds the grids (every run here shares them)")
    args = parser.parse_args()
    grids = load(args.grids)
    print("| sweep | " + " | ".join(grids) + " | the ratio's spread across tasks | mean regret (margin learned "
          "leaving the task out) |")
    print("| --- |" + " --- |" * (len(grids) + 2))
    for run in args.runs:
        cliffs: dict[str, np.ndarray] = {}
        log_ratio: dict[str, float] = {}  # log10(the seeds' mean cliff / the grid's best max LR)
        cells: list[str] = []
        steps: list[int] = []
        for name, (fit, _) in grids.items():
            path = run / f"task_{name}.json"
            if not path.exists():
                raise SystemExit(f"{path}: no sweeps of {name} (bench.lr_regret --stage sweeps --out {run})")
            curves = [c for job in json.loads(path.read_text())["jobs"] for c in job["curves"]]
            cliffs[name] = np.log10([read_curve(c["lrs"], c["losses"]).cliff_lr for c in curves])
            steps.append(round(span_points(curves[0]["lrs"], 1.0)))  # points in one decade: the density
            log_ratio[name] = float(cliffs[name].mean() - math.log10(fit.best_lr))
            cells.append(f"{10 ** log_ratio[name]:.2f}x, spread {10 ** np.ptp(cliffs[name]):.1f}x")
        regrets = []
        for name, (fit, _) in grids.items():
            margin = 10 ** np.mean([v for k, v in log_ratio.items() if k != name])
            regrets.append(100 * np.mean([fit.regret(10**c / margin)[0] for c in cliffs[name]]))
        across = 10 ** np.ptp(list(log_ratio.values()))
        dense = f"{min(steps)}" if min(steps) == max(steps) else f"{min(steps)}-{max(steps)}"
        print(f"| {run}: {dense} steps a decade | {' | '.join(cells)} | {across:.1f}x | "
              f"{np.mean(regrets):.2f} ({', '.join(f'{r:.1f}' for r in regrets)}) |")


if __name__ == "__main__":
    main()
