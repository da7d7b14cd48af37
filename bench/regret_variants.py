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
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np

from bench.lr_regret import GRID_SEEDS, TASKS_CPU, TASKS_HELD_OUT, RunCache, Task
from bench.regret_fit import GridFit
from clrcore.smoothing import SPAN_DECADES, smooth_curve, span_points
from clrcore.suggest import RISE_OF_FALL, RISE_RELATIVE, read_curve

SPANS = (0.2, 0.3, 0.5)
RISES = (0.2, 0.5, 1.0, 2.0)
SHIPPED = (SPAN_DECADES, RISE_OF_FALL, False)


def cliff(lrs: list[float], losses: list[float], span: float, rise: float, top: bool = False) -> float | None:
    """Where the curve smoothed over `span` decades first rose `rise` x its fall above its minimum (the
    curve's last point when it never did); with `top`, the geometric mean of that and where it first rose
    by its whole fall (back at its start). None where ours reads no suggestion (the same cut and checks)."""
    reading = read_curve(lrs, losses)
    if reading.problem is not None:
        return None
    x, raw = reading.lrs, reading.raw
    smooth = smooth_curve(x, raw, span)
    i_min = int(np.argmin(smooth))
    start = float(np.median(raw[: max(3, round(span_points(x, span)))]))
    margin = max(rise * (start - smooth[i_min]), RISE_RELATIVE * abs(float(smooth[i_min])))  # as read_curve
    after = np.nonzero(smooth[i_min:] > smooth[i_min] + margin)[0]
    if not len(after):
        return float(x[-1])
    turn = float(x[i_min + after[0]])
    if not top:
        return turn
    back = np.nonzero(smooth[i_min:] >= smooth[i_min] + max(start - smooth[i_min], margin))[0]
    return math.sqrt(turn * (float(x[i_min + back[0]]) if len(back) else float(x[-1])))


def load(out: Path, *more: Path, among: list[Task] = TASKS_CPU) -> dict[str, tuple[GridFit, list[dict]]]:
    """Each task's grid fit (its whole cached seeds, read in `out`) and its stored sweep curves (those of
    `out` and of every folder in `more`: other sweep seeds of the same tasks)."""
    tasks = {}
    for task in among:
        cache = RunCache(out, task)
        rows = [[cache.get(lr, seed) for lr in task.grid_lrs()] for seed in GRID_SEEDS]
        rows = [row for row in rows if all(v is not None for v in row)]
        paths = [p for folder in (out, *more) if (p := folder / f"task_{task.name}.json").exists()]
        if paths and rows:
            curves = [c for p in paths for job in json.loads(p.read_text())["jobs"] for c in job["curves"]]
            tasks[task.name] = (GridFit(np.asarray(task.grid_lrs()), np.asarray(rows)), curves)
    return tasks


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
    args = parser.parse_args()
    folders = args.out or [Path("runs/lr_regret")]
    for folder in [*folders, *([args.held_out] if args.held_out else [])]:
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no such folder (a --out of bench.lr_regret)")
    tasks = load(*folders)
    names = list(tasks)
    if not names:
        raise SystemExit(f"{folders[0]}: no task has both a grid and sweeps there")
    variants = list(itertools.product(SPANS, RISES, (False, True)))
    picks = {v: {n: [p for c in tasks[n][1] if (p := cliff(c["lrs"], c["losses"], *v))] for n in names}
             for v in variants}

    def ratio(v: tuple[float, float, bool], name: str) -> float:  # log10(cliff / the grid's best), over the seeds
        return float(np.mean(np.log10(picks[v][name])) - math.log10(tasks[name][0].best_lr))

    def regret(v: tuple[float, float, bool], name: str, train: list[str]) -> float:
        return mean_regret(tasks[name][0], picks[v][name], 10 ** np.mean([ratio(v, k) for k in train]))

    def loto(v: tuple[float, float, bool], among: list[str]) -> list[float]:
        return [regret(v, n, [k for k in among if k != n]) for n in among]

    print(f"| span (decades), rise (x fall), with the top | margin | {' | '.join(names)} | mean | worst | "
          "pick spread |")
    print(f"| --- | --- |{' --- |' * len(names)} --- | --- | --- |")
    for v in variants:
        scores = loto(v, names)
        spread = max(max(p) / min(p) for p in picks[v].values())
        margin = 10 ** np.mean([ratio(v, n) for n in names])
        tag = " (ours)" if v == SHIPPED else ""
        cells = " | ".join(f"{s:.1f}" for s in scores)
        print(f"| {v[0]:g}, {v[1]:g}, {'yes' if v[2] else 'no'}{tag} | {margin:.2f} | {cells} | "
              f"{np.mean(scores):.2f} | {max(scores):.1f} | {spread:.1f}x |")
    nested, shipped = [], []
    for held in names:
        train = [n for n in names if n != held]
        chosen = min(variants, key=lambda v: float(np.mean(loto(v, train))))
        nested.append(regret(chosen, held, train))
        shipped.append(regret(SHIPPED, held, train))
        print(f"held out {held}: chose span {chosen[0]:g}, rise {chosen[1]:g}, top {chosen[2]} -> {nested[-1]:.2f} "
              f"(ours {shipped[-1]:.2f})")
    print(f"nested mean regret {np.mean(nested):.2f} against ours {np.mean(shipped):.2f} (points, one seed)")
    if args.held_out:
        held = load(args.held_out, among=TASKS_HELD_OUT)
        if not held:
            raise SystemExit(f"{args.held_out}: no held-out task has both a grid and sweeps there")
        print(f"\n| span (decades), rise (x fall), with the top | margin | {' | '.join(held)} | mean |")
        print(f"| --- | --- |{' --- |' * len(held)} --- |")
        for v in variants:
            margin = 10 ** np.mean([ratio(v, n) for n in names])
            scores = [mean_regret(fit, [p for c in curves if (p := cliff(c["lrs"], c["losses"], *v))], margin)
                      for fit, curves in held.values()]
            tag = " (ours)" if v == SHIPPED else ""
            cells = " | ".join(f"{s:.2f}" for s in scores)
            print(f"| {v[0]:g}, {v[1]:g}, {'yes' if v[2] else 'no'}{tag} | {margin:.2f} | {cells} | "
                  f"{np.mean(scores):.2f} |")


if __name__ == "__main__":
    main()
