"""Would seeds branched from one sweep pick as well as whole seeds? Their regret on the stored grids.

bench/sweep_noise.py showed that sweeps sharing their first 120 of 300 steps scatter as much as whole
ones, so k seeds branched at that step would cost 120 + 180k steps instead of 300k. This script asks the
question that decides whether to build it: do their picks land as close to a grid's best? For each task
it runs `--jobs` pairs of 3-seed jobs, each pair from the same seeds: one of whole sweeps (the weights and
the batch order of seeds s, s+1, s+2, as `range_test.seeds: 3` runs them), one branched (seed s's weights
and batches for the first `--shared` steps, then each seed's own batch order), and reads every pick off
the grid fit of the stored run (`bench/data/lr_regret`, the fifth run's grids: no training here):
the mean one-seed regret, the 3-seed job's regret (its pick the geometric mean of its seeds', as a job
aggregates them) and how far the jobs land apart.

    .venv/bin/python -m bench.branch_regret --data ../shared/data/cifar10-jpg.tar.gz --out runs/branch_regret
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.lr_regret import TASKS_CPU, Task, select_tasks, task_data
from bench.regret_variants import load
from bench.sweep_noise import branched_batches, sweep_once
from bench.task_pool import run_tasks
from clrcore.datasets import Dataset
from clrcore.suggest import CLIFF_MARGIN, aggregate_picks

FIRST_SEED = 200  # none of lr_regret's sweep seeds (0-17) nor sweep_noise's (100-109)
SEEDS_PER_JOB = 3


def one_sweep(task: Task, data: Dataset, init_seed: int, order_seed: int, shared: int | None) -> float | None:
    """Ours' pick of one sweep: weights of `init_seed`, batches of `order_seed` (after `shared` steps of
    `init_seed`'s order, when given)."""
    with branched_batches(shared, base_seed=init_seed) if shared is not None else contextlib.nullcontext():
        return sweep_once(task, data, init_seed, order_seed).suggestions.get("ours")


def task_jobs(task_name: str, archive: Path | None, jobs: int, shared: int) -> dict[str, Any]:
    """`jobs` pairs of 3-seed jobs (whole, branched) of one task: each seed's pick."""
    torch.set_num_threads(1)
    task = select_tasks(task_name)[0]
    data = task_data(task, archive, {})  # once: every sweep of the task reads the same images
    out: dict[str, Any] = {"task": task_name, "shared": shared, "whole": [], "branched": []}
    for j in range(jobs):
        first = FIRST_SEED + 10 * j
        seeds = range(first, first + SEEDS_PER_JOB)
        out["whole"].append([one_sweep(task, data, s, s, None) for s in seeds])
        out["branched"].append([one_sweep(task, data, first, s, shared) for s in seeds])
        print(json.dumps({"task": task_name, "job": j, "whole": out["whole"][-1], "branched": out["branched"][-1]}),
              flush=True)
    return out


def report(results: list[dict[str, Any]], grids: Path) -> None:
    """The table: per task and kind, one-seed regret, 3-seed job regret, the jobs' max/min."""
    fits = {name: fit for name, (fit, _) in load(grids).items()}
    print(f"\n(margin {CLIFF_MARGIN}; regret in points off the fit of {grids}'s grids; "
          "spread: max/min of the jobs' picks)")
    print("| task | whole seeds: one seed | a 3-seed job | jobs' spread | branched: one seed | a 3-seed job | "
          "jobs' spread |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    means: dict[str, list[tuple[float, float]]] = {"whole": [], "branched": []}
    for res in results:
        fit = fits[res["task"]]
        cells = []
        for kind in ("whole", "branched"):
            jobs = [[p / CLIFF_MARGIN for p in job if p] for job in res[kind]]
            one = 100 * float(np.mean([fit.regret(p)[0] for job in jobs for p in job]))
            picks = [p for job in jobs if (p := aggregate_picks(job)[0])]  # a job's pick, as the product reads it
            three = 100 * float(np.mean([fit.regret(p)[0] for p in picks]))
            means[kind].append((one, three))
            cells += [f"{one:.2f}", f"{three:.2f}", f"{max(picks) / min(picks):.2f}x"]
        print(f"| {res['task']} | {' | '.join(cells)} |")
    cells = [f"{np.mean([m[i] for m in means[kind]]):.2f}" for kind in ("whole", "branched") for i in (0, 1)]
    print(f"| mean | {cells[0]} | {cells[1]} | | {cells[2]} | {cells[3]} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="cifar10-jpg.tar.gz (the CIFAR tasks)")
    parser.add_argument("--tasks", default=",".join(t.name for t in TASKS_CPU))
    parser.add_argument("--jobs", type=int, default=3, help="pairs of 3-seed jobs per task")
    parser.add_argument("--shared", type=int, default=120, help="the steps the branches share")
    parser.add_argument("--grids", type=Path, default=Path("bench/data/lr_regret"))
    parser.add_argument("--out", type=Path, default=Path("runs/branch_regret"))
    parser.add_argument("--reanalyse", action="store_true", help="read --out's results.json, sweep nothing")
    args = parser.parse_args()
    archive = args.data.resolve() if args.data else None
    names = [t.name for t in select_tasks(args.tasks)]
    run_tasks(task_jobs, names, (archive, args.jobs, args.shared), args.out, args.reanalyse,
              lambda results: report(results, args.grids))


if __name__ == "__main__":
    main()
