"""A margin per model family, registered before a batch of fresh resnet_fast tasks ran.

Ours divides the sweep's cliff by one margin (`CLIFF_MARGIN`, 1.5) for every net. On the stored tasks
resnet_fast wants more, and more again with AdamW: the margin that serves cifar_resnet_fast best is 2.0,
the gray 12-px one's 3.0; with AdamW 14.8 (colour, held out) and 11.2 (gray, the third fresh batch), while
1.5 reads within 0.5 points of the best margin on 16 of the other families' 17 tasks (docs/benchmarks.md,
"Margins per family"). The candidate,
`FAMILY_MARGINS`: for each family the margin whose worse task has the least mean one-seed regret over its
two stored tasks (digits with resnet_fast left out: no margin under 29 serves it, and 29 would cost the
colour task ten points). It replaces 1.5 for those families only if, on TASKS_FRESH4, its mean regret is
lower both with one seed and with three seeds in a job, and at least as many tasks read within 0.5 points
with three seeds (`regret_top.goals_check`'s rule, the issue's own goals).

    .venv/bin/python -m bench.regret_family                        # the margins, refitted from the stored runs
    .venv/bin/python -m bench.regret_family --fresh4 DIR           # the registered check on a run of TASKS_FRESH4
    .venv/bin/python -m bench.regret_family --per-task             # every stored task's best margin
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.lr_regret import ALL_TASKS, TASKS_FRESH4, Task
from bench.regret_blend import OURS, TaskRuns, load_set, mean_regret, pooled
from clrcore.suggest import CLIFF_MARGIN

DATA = Path("bench/data")
# Registered before TASKS_FRESH4 ran (sixteenth session): `fit` on FAMILY_TASKS, rounded
FAMILY_MARGINS = {("resnet_fast", "sgd"): 2.38, ("resnet_fast", "adamw"): 11.2}
FAMILY_TASKS = {  # family: (task, the stored folders pooled for it)
    ("resnet_fast", "sgd"): [("cifar_resnet_fast", ["lr_regret", "lr_regret_oos", "lr_regret_fresh",
                                                    "lr_regret_branched"]),
                             ("fresh2_gray12_resnet_fast_b64", ["lr_regret_fresh2_tasks"])],
    ("resnet_fast", "adamw"): [("cifar_resnet_fast_adamw", ["lr_regret_heldout"]),
                               ("fresh3_gray12_resnet_fast_adamw_b64", ["lr_regret_fresh3_tasks"])],
}
MARGINS = np.geomspace(1.0, 40.0, 400)  # what `fit` chose among when the margins were registered
PER_TASK_MARGINS = np.geomspace(0.5, 40.0, 400)  # a task may be served best below 1


def family(task: Task) -> tuple[str, str]:
    return task.model, task.optimizer["name"]


def margin_for(task: Task) -> float:
    """The candidate's margin for `task`: its family's, else the one every other family uses."""
    return FAMILY_MARGINS.get(family(task), CLIFF_MARGIN)


def stored(name: str, folders: list[str], data: Path = DATA) -> TaskRuns:
    return next(t for t in pooled([load_set([data / f], ALL_TASKS) for f in folders]) if t.name == name)


def fit(tasks: list[TaskRuns]) -> float:
    """Among MARGINS, the one whose worse task has the least mean one-seed regret."""
    per_task = [t.regret(np.asarray(t.picks(OURS))[None, :] / MARGINS[:, None]).mean(1) for t in tasks]
    return float(MARGINS[int(np.argmin(np.max(per_task, axis=0)))])


def per_task_margins(data: Path = DATA) -> list[dict[str, Any]]:
    """Every stored task's best margin for ours alone (its mean one-seed regret least), the
    margins within 0.5 points of that best, and its regret at CLIFF_MARGIN: where one margin serves."""
    from bench.lr_regret import TASKS_FRESH2, TASKS_FRESH3
    from bench.regret_top import STORED

    groups = [*STORED, (TASKS_FRESH2, ["lr_regret_fresh2_tasks"]), (TASKS_FRESH3, ["lr_regret_fresh3_tasks"])]
    out = []
    for tasks, folders in groups:
        for t in pooled([load_set([data / f], tasks) for f in folders]):
            picks = np.asarray(t.picks(OURS))
            regret = np.array([float(np.mean(t.regret(picks / m))) for m in PER_TASK_MARGINS])
            best = int(np.argmin(regret))
            near = PER_TASK_MARGINS[regret <= regret[best] + 0.5]
            out.append({"task": t.name, "best": float(PER_TASK_MARGINS[best]), "regret": float(regret[best]),
                        "near": (float(near.min()), float(near.max())),
                        "at_shipped": mean_regret(t, list(picks), CLIFF_MARGIN)})
    return out


def family_check(tasks: list[TaskRuns]) -> dict[str, Any]:
    """The registered rule on `tasks` (each named in ALL_TASKS): per task one seed / three seeds in a job for
    the candidate and for ours at CLIFF_MARGIN, the means, the tasks within 0.5 with three seeds, the verdict."""
    by_name = {t.name: t for t in ALL_TASKS}
    per_task: list[dict[str, Any]] = []
    for t in tasks:
        m = margin_for(by_name[t.name])
        per_task.append({"task": t.name, "margin": m,
                         "candidate": (mean_regret(t, t.picks(OURS), m), mean_regret(t, t.job_picks(OURS), m)),
                         "ours": (mean_regret(t, t.picks(OURS), CLIFF_MARGIN),
                                  mean_regret(t, t.job_picks(OURS), CLIFF_MARGIN))})
    mean = {k: [float(np.mean([r[k][i] for r in per_task])) for i in (0, 1)] for k in ("candidate", "ours")}
    within = {k: sum(r[k][1] <= 0.5 for r in per_task) for k in ("candidate", "ours")}
    lower = mean["candidate"][0] < mean["ours"][0] and mean["candidate"][1] < mean["ours"][1]
    return {"per_task": per_task, "mean": mean, "within": within,
            "replaces": lower and within["candidate"] >= within["ours"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--fresh4", type=Path, action="append", default=[], help="a run of TASKS_FRESH4")
    parser.add_argument("--per-task", action="store_true", help="every stored task's best margin for ours")
    args = parser.parse_args()
    if args.per_task:
        print(f"| task | best margin (regret) | margins within 0.5 of it | regret at {CLIFF_MARGIN} |")
        print("| --- | --- | --- | --- |")
        for r in per_task_margins(args.data):
            print(f"| {r['task']} | {r['best']:.2f} ({r['regret']:.2f}) | {r['near'][0]:.2f}-{r['near'][1]:.2f} "
                  f"| {r['at_shipped']:.2f} |")
    for fam, named in FAMILY_TASKS.items():
        tasks = [stored(name, folders, args.data) for name, folders in named]
        m = fit(tasks)
        cells = ", ".join(f"{t.name} {mean_regret(t, t.picks(OURS), m):.2f} (at {CLIFF_MARGIN}: "
                          f"{mean_regret(t, t.picks(OURS), CLIFF_MARGIN):.2f})" for t in tasks)
        print(f"{'/'.join(fam)}: margin {m:.2f} (registered {FAMILY_MARGINS[fam]}); one seed: {cells}")
    if args.fresh4:
        check = family_check(pooled([load_set([f], TASKS_FRESH4) for f in args.fresh4]))
        print(f"\nregistered before TASKS_FRESH4: the family margins against ours (/ {CLIFF_MARGIN}), one seed / "
              "three seeds in one job:")
        for r in check["per_task"]:
            print(f"  {r['task']} (margin {r['margin']}): {r['candidate'][0]:.2f} / {r['candidate'][1]:.2f} against "
                  f"{r['ours'][0]:.2f} / {r['ours'][1]:.2f}")
        c, o = check["mean"]["candidate"], check["mean"]["ours"]
        print(f"  mean {c[0]:.2f} / {c[1]:.2f} against {o[0]:.2f} / {o[1]:.2f}; within 0.5 with three seeds "
              f"{check['within']['candidate']} against {check['within']['ours']}: "
              f"{'the family margins replace ours' if check['replaces'] else 'ours alone stays'}")


if __name__ == "__main__":
    main()
