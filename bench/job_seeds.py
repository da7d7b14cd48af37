"""How many seeds should a job sweep? k-seed jobs as the product runs them, their picks on the stored grids.

bench/seed_spread.py answered this for whole seeds drawn from a pool. Since the product branches its seeds
from the first sweep (where its first decades are flat), more seeds cost less but share more. This script
runs `--jobs` range-test jobs of each seed count in `--seeds` per task, from the same first seeds
(300, 310, ...: none of the other scripts'), exactly as a training job's sweep runs (`runs._sweep`: the
branching, the whole-seed fallback, the aggregate), and reads what each job's `max_lr: "auto"` would train
at (its aggregate, or the safe fallback) off the fifth run's grid fits (`bench/data/lr_regret`; no
training): the mean regret, the worst job, how far the jobs land apart (every pair's max/min: median and
share under 1.5x) and the steps a job swept.

    .venv/bin/python -m bench.job_seeds --data ../shared/data/cifar10-jpg.tar.gz --out runs/job_seeds
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.lr_regret import select_tasks, sweep_job, task_data
from bench.regret_variants import load
from bench.task_pool import run_tasks

FIRST_SEED = 300


def task_jobs(task_name: str, archive: Path | None, jobs: int, counts: list[int]) -> dict[str, Any]:
    """`jobs` jobs of each seed count in `counts` for one task: each job's stored curves."""
    torch.set_num_threads(1)
    task = select_tasks(task_name)[0]
    data = task_data(task, archive, {})
    out: dict[str, Any] = {"task": task_name, "jobs": {str(k): [] for k in counts}}
    for j in range(jobs):
        for k in counts:
            job = sweep_job(task, data, FIRST_SEED + 10 * j, seeds=k)
            job["steps_swept"] = sum(len(c["lrs"]) for c in job["curves"]) - (k - 1) * (job["branch_at"] or 0)
            out["jobs"][str(k)].append(job)
            print(json.dumps({"task": task_name, "job": j, "seeds": k, "branch_at": job["branch_at"],
                              "seconds": job["seconds"]}), flush=True)
    return out


def report(results: list[dict[str, Any]], grids: Path) -> None:
    """Per task and seed count: mean and worst regret of the jobs' picks, their pairs' max/min, the steps."""
    from bench.lr_regret import job_pick

    fits = {name: fit for name, (fit, _) in load(grids).items()}
    print(f"\n(regret in points off the fit of {grids}'s grids; pairs: every two jobs' max/min)")
    print("| task | seeds | jobs (branched) | regret: mean, worst | fallbacks | pairs: median, under 1.5x | "
          "steps a job swept |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    means: dict[str, list[float]] = {}
    for res in results:
        task = select_tasks(res["task"])[0]
        for k, jobs in res["jobs"].items():
            picks = [job_pick(task, job) for job in jobs]
            regrets = [100 * fits[res["task"]].regret(lr)[0] for lr, _ in picks]
            ratios = [max(a, b) / min(a, b) for (a, _), (b, _) in itertools.combinations(picks, 2)]
            means.setdefault(k, []).append(float(np.mean(regrets)))
            branched = sum(job["branch_at"] is not None for job in jobs)
            fallbacks = sum(source != "range_test" for _, source in picks)
            print(f"| {res['task']} | {k} | {len(jobs)} ({branched}) | {np.mean(regrets):.2f}, {max(regrets):.2f} | "
                  f"{fallbacks} | {np.median(ratios):.2f}x, {np.mean(np.array(ratios) < 1.5):.0%} | "
                  f"{np.mean([job['steps_swept'] for job in jobs]):.0f} |")
    print("| mean of the tasks | " + " | ".join(f"{k} seeds: {np.mean(v):.2f}" for k, v in means.items()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="cifar10-jpg.tar.gz (the CIFAR tasks)")
    parser.add_argument("--tasks", default="digits_tiny_cnn,gray_cifar_tiny_cnn,cifar_tiny_cnn_adamw")
    parser.add_argument("--jobs", type=int, default=4, help="jobs per task and seed count")
    parser.add_argument("--seeds", default="3,5", help="comma-separated seed counts")
    parser.add_argument("--grids", type=Path, default=Path("bench/data/lr_regret"))
    parser.add_argument("--out", type=Path, default=Path("runs/job_seeds"))
    parser.add_argument("--reanalyse", action="store_true", help="read --out's results.json, sweep nothing")
    args = parser.parse_args()
    archive = args.data.resolve() if args.data else None
    counts = [int(k) for k in args.seeds.split(",")]
    names = [t.name for t in select_tasks(args.tasks)]
    run_tasks(task_jobs, names, (archive, args.jobs, counts), args.out, args.reanalyse,
              lambda results: report(results, args.grids))


if __name__ == "__main__":
    main()
