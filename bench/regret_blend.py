"""Would ours' pick do better blended with a peer's? Scored honestly on stored runs, no training.

On the issue's first-user tasks fastai's valley and slide read better than ours with one seed, and
each rule's pick scatters across seeds partly on its own: a geometric blend of ours' cliff with a
peer's pick (cliff^w x peer^(1-w), divided by a margin learned for it) averages two noisy readings.
Each blend's margin is learned as the product's is (the worst task's least mean one-seed regret, over a
wider range: a blend with an early rule wants a margin under 1), on the five tuning tasks, and scored:
- on the five, leaving each task out (the margin learned on the other four), and nested (the blend
  itself also chosen on the other four): what choosing a blend from these data would be worth;
- on data no choice saw: the held-out tasks, each first-user set and the fresh tasks (run to settle
  this question), with one seed and with each stored job's three seeds (the geometric mean of their
  picks, as a job reads them);
- for spread: the SD of ln(pick) over a task's sweeps, and how far a task's two jobs land apart.

    .venv/bin/python -m bench.regret_blend --out bench/data/lr_regret --out bench/data/lr_regret_oos \
        --out bench/data/lr_regret_fresh --out bench/data/lr_regret_branched \
        --held-out bench/data/lr_regret_heldout --first-user bench/data/lr_regret_first_user \
        --first-user bench/data/lr_regret_first_user_oos --first-user bench/data/lr_regret_first_user_adamw \
        --first-user bench/data/lr_regret_first_user_adamw_oos
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.lr_regret import TASKS_CPU, TASKS_FIRST_USER, TASKS_FRESH, TASKS_HELD_OUT
from bench.regret_fit import GridFit
from bench.regret_variants import load_jobs, top_lr
from clrcore.suggest import aggregate_picks, picks_from_reading, read_curve

PARTNERS = ("valley", "steepest", "min_loss", "slide")
WEIGHTS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  # ours' share of the blend, in log LR
MARGINS = np.geomspace(0.3, 6.0, 301)  # 1 % apart; a blend with an early peer can want a margin under 1
Variant = tuple[str | None, float]  # (partner, ours' weight); (None, 1.0) is ours alone
OURS: Variant = (None, 1.0)
Picks = dict[str, float | None]


def blend(picks: Picks | None, variant: Variant) -> float | None:
    """The variant's cliff-scale pick from one curve's rules (read with margin 1): ours' cliff alone, or
    blended geometrically with the partner's pick; ours alone where the partner read nothing."""
    if picks is None or not picks["ours"]:
        return None
    partner, weight = variant
    other = picks.get(partner) if partner else None
    if not other:
        return float(picks["ours"])
    return float(math.exp(weight * math.log(picks["ours"]) + (1 - weight) * math.log(other)))


@dataclass
class TaskRuns:
    """One task on one set of sweeps: its grid's regret (tabulated over log LR, for speed) and its stored
    jobs, each a list of per-seed rule picks (None where the curve could not be read)."""

    name: str
    regret: Callable[[np.ndarray], np.ndarray]
    jobs: list[list[Picks | None]]

    def picks(self, variant: Variant) -> list[float]:
        return [p for job in self.jobs for c in job if (p := blend(c, variant))]

    def job_picks(self, variant: Variant) -> list[float]:
        """Each job's pick as a job reads its seeds' (suggest.aggregate_picks: their geometric mean)."""
        return [pick for job in self.jobs if (pick := aggregate_picks([blend(c, variant) for c in job])[0])]


def tabulated_regret(fit: GridFit, decades_beyond: float = 2.0,
                     per_decade: int = 200) -> Callable[[np.ndarray], np.ndarray]:
    """The fit's regret in points, tabulated on a fine log ladder reaching `decades_beyond` past the grid
    (regret there is the grid edge's, as GridFit reads it) and interpolated."""
    lo, hi = math.log10(float(fit.lrs[0])) - decades_beyond, math.log10(float(fit.lrs[-1])) + decades_beyond
    x = np.linspace(lo, hi, round((hi - lo) * per_decade) + 1)
    table = np.array([100 * fit.regret(float(10**v))[0] for v in x])
    return lambda lrs: np.interp(np.log10(lrs), x, table)


def load_set(folders: list[Path], among: list[Any]) -> list[TaskRuns]:
    def read(curve: dict[str, Any]) -> Picks | None:
        """The rules' picks at margin 1, and the top (bench/regret_top.py reads it)."""
        reading = read_curve(curve["lrs"], curve["losses"])
        if reading.problem is not None:
            return None
        top = top_lr(reading.lrs, reading.raw, reading.smooth)
        return {**picks_from_reading(reading, cliff_margin=1.0), "top": top}

    return [TaskRuns(name, tabulated_regret(fit), [[read(c) for c in job] for job in jobs])
            for name, (fit, jobs) in load_jobs(folders, among).items()]


def mean_regret(task: TaskRuns, picks: list[float], margin: float) -> float:
    return float(np.mean(task.regret(np.asarray(picks) / margin))) if picks else math.nan


def minimax_margin(tasks: list[TaskRuns], variant: Variant) -> float:
    """Among MARGINS, the one whose worst task has the least mean one-seed regret (as the product's)."""
    per_task = [task.regret(np.asarray(task.picks(variant))[None, :] / MARGINS[:, None]).mean(1) for task in tasks]
    return float(MARGINS[int(np.argmin(np.max(per_task, axis=0)))])


def leave_one_out(tasks: list[TaskRuns], variant: Variant) -> list[float]:
    return [mean_regret(t, t.picks(variant), minimax_margin([k for k in tasks if k is not t], variant)) for t in tasks]


def pooled(sets: list[list[TaskRuns]]) -> list[TaskRuns]:
    """Several sets of sweeps on the same tasks (the same grids) as one set: each task's jobs together."""
    names = list(dict.fromkeys(t.name for s in sets for t in s))
    return [TaskRuns(n, next(t.regret for s in sets for t in s if t.name == n),
                     [job for s in sets for t in s if t.name == n for job in t.jobs]) for n in names]


def scores(tasks: list[TaskRuns], variant: Variant, margin: float) -> dict[str, Any]:
    """One seed and 3-seed jobs: mean and worst regret over the tasks; the mean SD of ln(pick); the
    median over tasks of how far two jobs land apart (max/min over pairs of jobs)."""
    one = [mean_regret(t, t.picks(variant), margin) for t in tasks]
    three = [mean_regret(t, t.job_picks(variant), margin) for t in tasks]
    apart = [max(a, b) / min(a, b) for t in tasks for a, b in itertools.combinations(t.job_picks(variant), 2)]
    return {"one": float(np.mean(one)), "one_worst": max(one), "three": float(np.mean(three)),
            "three_worst": max(three), "sd_ln": float(np.mean([np.std(np.log(t.picks(variant))) for t in tasks])),
            "jobs_apart": float(np.median(apart)) if apart else None}


def label(variant: Variant) -> str:
    partner, weight = variant
    return "ours alone" if partner is None else f"ours^{weight:g} x {partner}^{1 - weight:.1f}"


def analyse(tuning: list[TaskRuns], scored: dict[str, list[TaskRuns]]) -> dict[str, Any]:
    """Every variant's margin learned on `tuning`, its leave-one-out regret there, and its scores on each
    set of `scored` (data no choice saw); then the nested choice among the variants."""
    variants = [OURS, *((p, w) for p in PARTNERS for w in WEIGHTS)]
    rows = []
    for v in variants:
        margin = minimax_margin(tuning, v)
        loo = leave_one_out(tuning, v)
        rows.append({"variant": label(v), "partner": v[0], "weight": v[1], "margin": margin,
                     "loo": float(np.mean(loo)), "loo_worst": max(loo),
                     **{name: scores(tasks, v, margin) for name, tasks in scored.items() if tasks}})
    nested = []
    for left in tuning:
        train = [t for t in tuning if t is not left]
        chosen = min(variants, key=lambda v: float(np.mean(leave_one_out(train, v))))
        nested.append({"left_out": left.name, "chose": label(chosen),
                       "regret": mean_regret(left, left.picks(chosen), minimax_margin(train, chosen)),
                       "ours": mean_regret(left, left.picks(OURS), minimax_margin(train, OURS))})
    chosen = min(variants, key=lambda v: float(np.mean(leave_one_out(tuning, v))))
    return {"rows": rows, "nested": nested, "chosen_on_all_five": label(chosen),
            "sets": [name for name, tasks in scored.items() if tasks]}


def table(result: dict[str, Any]) -> str:
    def cells(s: dict[str, Any]) -> str:
        apart = "-" if s["jobs_apart"] is None else f"{s['jobs_apart']:.2f}x"
        return (f"{s['one']:.2f} ({s['one_worst']:.2f}); {s['three']:.2f} ({s['three_worst']:.2f}) | "
                f"{s['sd_ln']:.2f}; {apart}")

    sets = [name.replace("_", " ") for name in result["sets"]]
    head = "".join(f" {n}: one seed (worst); three (worst) | {n}: SD ln(pick); two jobs apart |" for n in sets)
    lines = [f"| blend | margin | five tasks, leaving each out: mean (worst) |{head}",
             "| --- | --- | --- |" + " --- | --- |" * len(sets)]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['margin']:.2f} | {r['loo']:.2f} ({r['loo_worst']:.2f}) | "
                     + " | ".join(cells(r[name]) for name in result["sets"]) + " |")
    nested = result["nested"]
    lines.append("")
    lines += [f"left out {n['left_out']}: chose {n['chose']} -> {n['regret']:.2f} (ours {n['ours']:.2f})"
              for n in nested]
    lines.append(f"nested: {np.mean([n['regret'] for n in nested]):.2f} against ours alone "
                 f"{np.mean([n['ours'] for n in nested]):.2f} (points, one seed); chosen on all five: "
                 f"{result['chosen_on_all_five']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, action="append", required=True,
                        help="a run of the five tuning tasks (repeat to pool other sweep seeds on the same grids)")
    parser.add_argument("--held-out", type=Path, default=None, help="a run of TASKS_HELD_OUT")
    parser.add_argument("--first-user", type=Path, action="append", default=[],
                        help="a run of TASKS_FIRST_USER (repeat: each is scored as its own set)")
    parser.add_argument("--fresh", type=Path, action="append", default=[],
                        help="a run of TASKS_FRESH (repeat to pool other sweep seeds on the same grids)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    for folder in [*args.out, *([args.held_out] if args.held_out else []), *args.first_user, *args.fresh]:
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no such folder (a --out of bench.lr_regret)")
    tuning = pooled([load_set([folder], TASKS_CPU) for folder in args.out])
    if len(tuning) < 3:
        raise SystemExit(f"{args.out[0]}: fewer than three tuning tasks have both a grid and sweeps there")
    held = load_set([args.held_out], TASKS_HELD_OUT) if args.held_out else []
    first_user = [t for folder in args.first_user for t in load_set([folder], TASKS_FIRST_USER)]
    fresh = pooled([load_set([folder], TASKS_FRESH) for folder in args.fresh])
    result = analyse(tuning, {"held_out": held, "first_user": first_user, "fresh": fresh})
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
