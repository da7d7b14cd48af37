"""Would another reading of the cliff do better than ours? Variants scored honestly, on stored runs.

Ours reads the cliff where the zero-lag curve (smoothed over SPAN_DECADES) rose RISE_OF_FALL of its
fall above its minimum, then divides by a margin learned from the grids. This script re-reads the
stored sweeps of bench/lr_regret.py with other spans and rises, each alone or read together with the
top (where the curve was back at its starting loss: the geometric mean of the two), no training, and
scores each variant two ways, on the same grids as the regret table:
- leave one task out: the margin learned on the other four tasks, the regret on the fifth;
- nested: the variant itself also chosen on the other four (the lowest leave-one-out regret there),
  then scored on the fifth. Only this one says what choosing a variant from these data would be worth.

    .venv/bin/python -m bench.regret_variants --out runs/lr_regret   # after lr_regret's grid and sweeps
    .venv/bin/python -m bench.regret_variants --out bench/data/lr_regret --out bench/data/lr_regret_oos  # pooled

`--heights` scores another family instead: the turn read at several rises at once (the geometric mean of
where the curve first rose each of them), over more spans; one rise alone is the plain reading.
`--hold` scores a third: the turn counted only where the rise holds for HOLDS spans (inf: to the end of
the curve), so a wobble of the flat basin that crosses the rise and falls back is passed over.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.lr_regret import GRID_SEEDS, TASKS_CPU, TASKS_HELD_OUT, RunCache, Task
from bench.regret_fit import GridFit
from bench.regret_report import minimax_margin
from clrcore.smoothing import SPAN_DECADES, smooth_curve, span_points
from clrcore.suggest import RISE_OF_FALL, RISE_RELATIVE, read_curve

SPANS = (0.2, 0.3, 0.5)
RISES = (0.2, 0.5, 1.0, 2.0)
SHIPPED = (SPAN_DECADES, RISE_OF_FALL, False, None)
# --heights: several rises read at once, around ours and above it
HEIGHT_SPANS = (0.15, 0.2, 0.3, 0.4, 0.5)
RISE_SETS: tuple[tuple[float, ...], ...] = ((0.2,), (0.3,), (0.5,), (0.05, 0.1, 0.2), (0.1, 0.2, 0.3), (0.2, 0.3, 0.4),
                                            (0.1, 0.2, 0.3, 0.4, 0.5), (0.3, 0.5, 0.7))
# --hold: how long (in spans) the rise must last to count; None: the first crossing (ours), inf: to the end
HOLD_SPANS = (0.2, 0.3)
HOLD_RISES = (0.2, 0.3, 0.5)
HOLDS = (None, 0.5, 1.0, 2.0, math.inf)
Variant = tuple[float, float | tuple[float, ...], bool, float | None]


def is_shipped(v: Variant) -> bool:
    return (v[0] == SHIPPED[0] and v[2] == SHIPPED[2] and v[3] is None
            and tuple(np.atleast_1d(v[1])) == (SHIPPED[1],))


def label(v: Variant) -> str:
    rises = "+".join(f"{r:g}" for r in np.atleast_1d(v[1]))
    held = "" if v[3] is None else f", held {'to the end' if math.isinf(v[3]) else f'{v[3]:g} span'}"
    return f"{v[0]:g}, {rises}, {'yes' if v[2] else 'no'}{held}{' (ours)' if is_shipped(v) else ''}"


def cliff(lrs: list[float], losses: list[float], span: float, rise: float | tuple[float, ...],
          top: bool = False, hold: float | None = None) -> float | None:
    """Where the curve smoothed over `span` decades first rose `rise` x its fall above its minimum (the
    curve's last point when it never did); several rises: the geometric mean of those points; with `top`,
    the geometric mean of that and where it first rose by its whole fall (back at its start); with `hold`,
    the first point from which the rise lasts `hold` spans (inf: to the curve's end). None where ours
    reads no suggestion (the same cut and checks)."""
    reading = read_curve(lrs, losses)
    if reading.problem is not None:
        return None
    x, raw = reading.lrs, reading.raw
    smooth = smooth_curve(x, raw, span)
    i_min = int(np.argmin(smooth))
    start = float(np.median(raw[: max(3, round(span_points(x, span)))]))
    turns = []
    for each in np.atleast_1d(rise):
        margin = max(each * (start - smooth[i_min]), RISE_RELATIVE * abs(float(smooth[i_min])))  # as read_curve
        above = smooth[i_min:] > smooth[i_min] + margin
        after = np.nonzero(above)[0] if hold is None else held_from(above, hold * span_points(x, span))
        turns.append(float(x[i_min + after[0]]) if len(after) else float(x[-1]))
    turn = float(np.exp(np.mean(np.log(turns))))
    return math.sqrt(turn * top_lr(x, raw, smooth, span, float(np.max(rise)))) if top else turn


def top_lr(x: np.ndarray, raw: np.ndarray, smooth: np.ndarray, span: float = SPAN_DECADES,
           rise: float = RISE_OF_FALL) -> float:
    """The top: where the curve smoothed over `span` decades is first back at its starting loss after its
    minimum (at least `rise` x its fall above it); the curve's last point when it never is."""
    i_min = int(np.argmin(smooth))
    start = float(np.median(raw[: max(3, round(span_points(x, span)))]))
    margin = max(rise * (start - smooth[i_min]), RISE_RELATIVE * abs(float(smooth[i_min])))
    back = np.nonzero(smooth[i_min:] >= smooth[i_min] + max(start - smooth[i_min], margin))[0]
    return float(x[i_min + back[0]]) if len(back) else float(x[-1])


def held_from(above: np.ndarray, points: float) -> np.ndarray:
    """The indices from which `above` stays true for `points` points (or to its end when fewer are left;
    inf: to its end)."""
    if math.isinf(points):
        below = np.nonzero(~above)[0]
        start = int(below[-1]) + 1 if len(below) else 0
        return np.arange(start, len(above)) if start < len(above) else np.empty(0, int)
    width = max(1, round(points))
    return np.array([j for j in np.nonzero(above)[0] if above[j : j + width].all()], dtype=int)


def load_jobs(folders: list[Path], among: list[Task]) -> dict[str, tuple[GridFit, list[list[dict[str, Any]]]]]:
    """Each task's grid fit (its whole cached seeds, read in the first folder) and its stored jobs, each a
    list of seed curves (those of every folder: other sweep seeds of the same tasks)."""
    tasks = {}
    for task in among:
        cache = RunCache(folders[0], task)
        rows = [[cache.get(lr, seed) for lr in task.grid_lrs()] for seed in GRID_SEEDS]
        rows = [row for row in rows if all(v is not None for v in row)]
        jobs = [job["curves"] for folder in folders if (p := folder / f"task_{task.name}.json").exists()
                for job in json.loads(p.read_text())["jobs"]]
        if rows and jobs:
            tasks[task.name] = (GridFit(np.asarray(task.grid_lrs()), np.asarray(rows)), jobs)
    return tasks


def load(out: Path, *more: Path, among: list[Task] = TASKS_CPU) -> dict[str, tuple[GridFit, list[dict]]]:
    """Each task's grid fit (its whole cached seeds, read in `out`) and its stored sweep curves (those of
    `out` and of every folder in `more`: other sweep seeds of the same tasks)."""
    return {name: (fit, [curve for job in jobs for curve in job])
            for name, (fit, jobs) in load_jobs([out, *more], among).items()}


def mean_regret(fit: GridFit, picks: list[float], margin: float) -> float:
    """Points of regret of the picks (cliffs) divided by `margin`, averaged."""
    return 100 * float(np.mean([fit.regret(float(p / margin))[0] for p in picks]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, action="append",
                        help="a run's folder (repeat to pool other sweep seeds; the first holds the grid cache)")
    parser.add_argument("--held-out", type=Path, default=None,
                        help="a run of TASKS_HELD_OUT (grids and sweeps): each variant also scored there, its margin "
                        "learned on all of --out's tasks")
    parser.add_argument("--hold", action="store_true",
                        help="score the turn counted only where the rise lasts (HOLDS x HOLD_RISES x HOLD_SPANS)")
    parser.add_argument("--heights", action="store_true",
                        help="score the turn read at several rises at once (RISE_SETS x HEIGHT_SPANS) instead")
    args = parser.parse_args()
    folders = args.out or [Path("runs/lr_regret")]
    for folder in [*folders, *([args.held_out] if args.held_out else [])]:
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no such folder (a --out of bench.lr_regret)")
    tasks = load(*folders)
    names = list(tasks)
    if not names:
        raise SystemExit(f"{folders[0]}: no task has both a grid and sweeps there")
    variants: list[Variant] = (
        [(span, rises, False, None) for span in HEIGHT_SPANS for rises in RISE_SETS] if args.heights
        else [(span, rise, False, hold) for span in HOLD_SPANS for rise in HOLD_RISES for hold in HOLDS] if args.hold
        else [(span, rise, top, None) for span, rise, top in itertools.product(SPANS, RISES, (False, True))])
    picks = {v: {n: [p for c in tasks[n][1] if (p := cliff(c["lrs"], c["losses"], *v))] for n in names}
             for v in variants}

    def ratio(v: Variant, name: str) -> float:  # log10(cliff / the grid's best), over the seeds
        return float(np.mean(np.log10(picks[v][name])) - math.log10(tasks[name][0].best_lr))

    def regret(v: Variant, name: str, train: list[str]) -> float:
        return mean_regret(tasks[name][0], picks[v][name], float(10 ** np.mean([ratio(v, k) for k in train])))

    def loto(v: Variant, among: list[str]) -> list[float]:
        return [regret(v, n, [k for k in among if k != n]) for n in among]

    print(f"| span (decades), rise (x fall), with the top | margin | {' | '.join(names)} | mean | worst | "
          "pick spread |")
    print(f"| --- | --- |{' --- |' * len(names)} --- | --- | --- |")
    for v in variants:
        scores = loto(v, names)
        spread = max(max(p) / min(p) for p in picks[v].values())
        margin = float(10 ** np.mean([ratio(v, n) for n in names]))
        cells = " | ".join(f"{s:.1f}" for s in scores)
        print(f"| {label(v)} | {margin:.2f} | {cells} | {np.mean(scores):.2f} | {max(scores):.1f} | {spread:.1f}x |")
    ours = next(v for v in variants if is_shipped(v))
    nested, shipped = [], []
    for left_out in names:
        train = [n for n in names if n != left_out]
        chosen = min(variants, key=lambda v: float(np.mean(loto(v, train))))
        nested.append(regret(chosen, left_out, train))
        shipped.append(regret(ours, left_out, train))
        print(f"held out {left_out}: chose {label(chosen)} -> {nested[-1]:.2f} (ours {shipped[-1]:.2f})")
    print(f"nested mean regret {np.mean(nested):.2f} against ours {np.mean(shipped):.2f} (points, one seed)")
    # ours' margin learned as lr_regret learns it now (the worst task's regret least), on the pooled sweeps
    cliffs = {n: (tasks[n][0], picks[ours][n]) for n in names}
    loo_minimax = [mean_regret(cliffs[n][0], cliffs[n][1], minimax_margin([cliffs[k] for k in names if k != n]))
                   for n in names]
    minimax = minimax_margin(list(cliffs.values()))
    print(f"ours, the margin that leaves the worst task the least regret: {minimax:.2f}; "
          f"leaving each task out: mean {np.mean(loo_minimax):.2f}, worst {max(loo_minimax):.2f} "
          f"({', '.join(f'{s:.2f}' for s in loo_minimax)})")
    if args.held_out:
        held = load(args.held_out, among=TASKS_HELD_OUT)
        if not held:
            raise SystemExit(f"{args.held_out}: no held-out task has both a grid and sweeps there")
        print(f"\n| span (decades), rise (x fall), with the top | margin | {' | '.join(held)} | mean |")
        print(f"| --- | --- |{' --- |' * len(held)} --- |")
        for v in variants:
            margin = float(10 ** np.mean([ratio(v, n) for n in names]))
            scores = [mean_regret(fit, [p for c in curves if (p := cliff(c["lrs"], c["losses"], *v))], margin)
                      for fit, curves in held.values()]
            cells = " | ".join(f"{s:.2f}" for s in scores)
            print(f"| {label(v)} | {margin:.2f} | {cells} | {np.mean(scores):.2f} |")
        scores = [mean_regret(fit, [p for c in curves if (p := cliff(c["lrs"], c["losses"], *ours))], minimax)
                  for fit, curves in held.values()]
        print(f"| ours, the margin for the worst task | {minimax:.2f} | {' | '.join(f'{s:.2f}' for s in scores)} | "
              f"{np.mean(scores):.2f} |")


if __name__ == "__main__":
    main()
