"""Ours' cliff weighted toward the top: fitted on every task, scored leaving each task out, then the
checks registered before a second and a third fresh batch ran (both kept ours: docs/benchmarks.md, "A
reading weighted toward the top"). Stored runs only, no training.

Every margin so far was one number for every curve, and the tasks whose cliff sits near their best
(gray) or far above it (digits) took the regret. The top (where the smoothed loss is back at its start,
`regret_variants.top_lr`) says how the curve blows up: just past the turn (a sharp cliff) or decades
later (a gentle one). The reading here is cliff^(1-w) x top^w / margin: w = 0 is ours. (w, margin) are
fitted on the fifteen tasks of every stored set (the least mean one-seed regret, each task's capped at
CAP points so that the task every rule fails cannot steer the fit), and scored leaving each task out
with both refitted. The tenth session's "with the top" was w = 0.5 with a margin for the five.

    .venv/bin/python -m bench.regret_top                   # the fit and the leave-one-task-out table
    .venv/bin/python -m bench.regret_top --fresh2 DIR      # and the registered check on TASKS_FRESH2
    .venv/bin/python -m bench.regret_top --fresh3 DIR      # the one registered before TASKS_FRESH3
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.lr_regret import (
    TASKS_CPU,
    TASKS_FIRST_USER,
    TASKS_FRESH,
    TASKS_FRESH2,
    TASKS_FRESH3,
    TASKS_HELD_OUT,
)
from bench.regret_blend import TaskRuns, load_set, mean_regret, pooled
from clrcore.suggest import CLIFF_MARGIN

DATA = Path("bench/data")
STORED = [  # (tasks, folders pooled on the same grids)
    (TASKS_CPU, ["lr_regret", "lr_regret_oos", "lr_regret_fresh", "lr_regret_branched"]),
    (TASKS_HELD_OUT, ["lr_regret_heldout"]),
    (TASKS_FIRST_USER, ["lr_regret_first_user", "lr_regret_first_user_oos"]),
    (TASKS_FIRST_USER, ["lr_regret_first_user_adamw", "lr_regret_first_user_adamw_oos"]),
    (TASKS_FRESH, ["lr_regret_fresh_tasks"]),
]
TOP_WEIGHTS = np.round(np.arange(0.0, 0.61, 0.05), 2)
MARGINS = np.geomspace(0.5, 20.0, 200)
CAP = 5.0  # points: one task's most a fit may weigh
# Registered before TASKS_FRESH2 was swept: fitted as above on the fifteen tasks (fifteenth session)
CANDIDATE = (0.35, 3.57)


def top_variant(w: float) -> tuple[str, float]:
    """The regret_blend variant for cliff^(1-w) x top^w (its weight is ours', the cliff's)."""
    return ("top", round(1.0 - w, 2))


def stored_tasks(data: Path = DATA) -> list[TaskRuns]:
    out: list[TaskRuns] = []
    for tasks, folders in STORED:
        out += pooled([load_set([data / f], tasks) for f in folders])
    return out


def objective(tasks: list[TaskRuns], w: float, margin: float, cap: float = CAP) -> float:
    return float(np.mean([min(mean_regret(t, t.picks(top_variant(w)), margin), cap) for t in tasks]))


def fit(tasks: list[TaskRuns], weights: Any = TOP_WEIGHTS) -> tuple[float, float]:
    """(w, margin) with the least mean capped one-seed regret over `tasks` (every margin at once per w)."""
    best: tuple[float, float, float] | None = None
    for w in weights:
        capped = [np.minimum(t.regret(np.asarray(t.picks(top_variant(float(w))))[None, :] / MARGINS[:, None])
                             .mean(1), CAP) for t in tasks]
        score = np.mean(capped, axis=0)
        i = int(np.argmin(score))
        if best is None or score[i] < best[0]:
            best = (float(score[i]), float(w), float(MARGINS[i]))
    if best is None:
        raise ValueError("no weight to fit")
    return best[1], best[2]


def leave_one_task_out(tasks: list[TaskRuns]) -> list[dict[str, Any]]:
    rows = []
    for t in tasks:
        rest = [k for k in tasks if k is not t]
        w, m = fit(rest)
        _, m0 = fit(rest, weights=[0.0])
        rows.append({"task": t.name, "w": w, "margin": m, "regret": mean_regret(t, t.picks(top_variant(w)), m),
                     "ours_margin": m0, "ours": mean_regret(t, t.picks(top_variant(0.0)), m0)})
    return rows


def compared(tasks: list[TaskRuns]) -> dict[str, Any]:
    """The candidate against ours alone (at CLIFF_MARGIN) per task, one seed and three seeds in a job, with
    the means and how far each task's two jobs land apart."""
    w, m = CANDIDATE
    cand, ours = top_variant(w), top_variant(0.0)
    per_task = [{"task": t.name,
                 "candidate": (mean_regret(t, t.picks(cand), m), mean_regret(t, t.job_picks(cand), m)),
                 "ours": (mean_regret(t, t.picks(ours), CLIFF_MARGIN), mean_regret(t, t.job_picks(ours), CLIFF_MARGIN)),
                 "apart": [max(p) / min(p) for v in (cand, ours) if len(p := t.job_picks(v)) > 1]} for t in tasks]
    mean = {k: [float(np.mean([r[k][i] for r in per_task])) for i in (0, 1)] for k in ("candidate", "ours")}
    lower = mean["candidate"][0] < mean["ours"][0] and mean["candidate"][1] < mean["ours"][1]
    return {"per_task": per_task, "mean": mean, "lower": lower}


def registered_check(tasks: list[TaskRuns]) -> dict[str, Any]:
    """The rule set before TASKS_FRESH2 ran: the candidate replaces ours alone only if its mean regret is
    lower both with one seed and with three seeds in a job, and it reads over 0.5 with three seeds on no
    task where ours reads within 0.5."""
    out = compared(tasks)
    out["spoils"] = [r["task"] for r in out["per_task"] if r["candidate"][1] > 0.5 >= r["ours"][1]]
    out["replaces"] = out["lower"] and not out["spoils"]
    return out


def goals_check(tasks: list[TaskRuns]) -> dict[str, Any]:
    """The rule set before TASKS_FRESH3 ran, in the issue's own goals: the candidate replaces ours alone
    only if its mean regret is lower both with one seed and with three, and at least as many tasks read
    within 0.5 points with three seeds for it as for ours."""
    out = compared(tasks)
    out["within"] = {k: sum(r[k][1] <= 0.5 for r in out["per_task"]) for k in ("candidate", "ours")}
    out["replaces"] = out["lower"] and out["within"]["candidate"] >= out["within"]["ours"]
    return out


def print_check(title: str, check: dict[str, Any]) -> None:
    print(f"\n{title}, cliff^{1 - CANDIDATE[0]:g} x top^{CANDIDATE[0]:g} / {CANDIDATE[1]} against ours "
          f"(/ {CLIFF_MARGIN}), one seed / three seeds in one job:")
    for r in check["per_task"]:
        apart = ", ".join(f"{v:.2f}x" for v in r["apart"])
        print(f"  {r['task']}: {r['candidate'][0]:.2f} / {r['candidate'][1]:.2f} against "
              f"{r['ours'][0]:.2f} / {r['ours'][1]:.2f} (two jobs apart: {apart})")
    c, o = check["mean"]["candidate"], check["mean"]["ours"]
    said = (f"spoils {check['spoils'] or 'none'}" if "spoils" in check
            else f"within 0.5 with three seeds {check['within']['candidate']} against {check['within']['ours']}")
    print(f"  mean {c[0]:.2f} / {c[1]:.2f} against {o[0]:.2f} / {o[1]:.2f}; {said}: "
          f"{'the candidate replaces ours' if check['replaces'] else 'ours alone stays'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="where the stored runs are")
    parser.add_argument("--fresh2", type=Path, action="append", default=[],
                        help="a run of TASKS_FRESH2: the registered check (repeat to pool sweep seeds)")
    parser.add_argument("--fresh3", type=Path, action="append", default=[],
                        help="a run of TASKS_FRESH3: the check registered before it, in the issue's goals")
    args = parser.parse_args()
    tasks = stored_tasks(args.data)
    w, m = fit(tasks)
    _, m0 = fit(tasks, weights=[0.0])
    print(f"fitted on {len(tasks)} tasks: w {w:g}, margin {m:.2f} (objective {objective(tasks, w, m):.3f}); "
          f"w 0 (ours): margin {m0:.2f} ({objective(tasks, 0.0, m0):.3f})")
    rows = leave_one_task_out(tasks)
    print("\n| task | w, margin (fitted without it) | regret, one seed | ours: margin, regret |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']} | {r['w']:g}, {r['margin']:.2f} | {r['regret']:.2f} | {r['ours_margin']:.2f}, "
              f"{r['ours']:.2f} |")
    a, b = np.array([r["regret"] for r in rows]), np.array([r["ours"] for r in rows])
    usable = (a < CAP) & (b < CAP)  # the tasks both readings fail stay out of the means below
    print(f"mean {a.mean():.2f} against ours {b.mean():.2f}; without the tasks over {CAP:g} points for both "
          f"{a[usable].mean():.2f} against {b[usable].mean():.2f}; within 0.5: {(a <= 0.5).sum()} against "
          f"{(b <= 0.5).sum()} of {len(rows)}")
    if args.fresh2:
        print_check("registered before TASKS_FRESH2",
                    registered_check(pooled([load_set([f], TASKS_FRESH2) for f in args.fresh2])))
    if args.fresh3:
        print_check("registered before TASKS_FRESH3",
                    goals_check(pooled([load_set([f], TASKS_FRESH3) for f in args.fresh3])))

if __name__ == "__main__":
    main()
