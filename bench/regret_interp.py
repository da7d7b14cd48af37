"""The fine-tuning benchmark's runs and scoring: one sweep per seed, a 2-seed grid read by linear
interpolation in log10(LR).

This is issue 12's first scoring, kept for bench/finetune_regret.py, whose runs build their model from
pretrained weights (`build`). bench/lr_regret.py has since moved to fixed, cached grids read off a smooth
fit (bench/regret_fit.py), and to the product's multi-seed sweep; the fine-tune bench has not been re-run
that way yet.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.lr_regret import Task, planned_run, spec_for
from clrcore.datasets import Dataset
from clrcore.hooks import Hooks
from clrcore.runs import _sweep, fresh_model
from clrcore.specs import TrainSpec
from clrcore.suggest import aggregate_picks, picks_from_reading, read_curve, safe_recommendation
from clrcore.trainer import TrainResult, train

# Builds the model a run starts from (spec, data, device); bench/finetune_regret.py loads pretrained weights.
ModelBuilder = Callable[[TrainSpec, Dataset, torch.device], nn.Module]

RULES = ("steepest", "valley", "slide", "min_loss_div10", "blog", "ours")
GRID_DECADES = (-1.6, 0.4)  # the grid spans the zero-lag minimum x 10**-1.6 .. x 10**0.4: the basin below the cliff


def sweep(task: Task, data: Dataset, seed: int, build: ModelBuilder = fresh_model) -> dict[str, Any]:
    """One range test (the job's own sweep code); returns the raw curve and the job's recommendation."""
    spec = spec_for(task, seed, "auto")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(spec, data, device)
    started = time.perf_counter()
    result = _sweep(spec, spec.range_test, "triangular", data, model, device, Hooks())
    taken = [r for r in result.log if not r["skipped"]]
    # what the job's `max_lr: "auto"` trains at: its own pick by its rule, or the safe fallback without one
    pick = result.recommendation or safe_recommendation(task.optimizer["name"])
    return {"seed": seed, "lrs": [r["lr"] for r in taken], "losses": [r["loss"] for r in taken],
            "stop_reason": result.stop_reason, "warnings": result.warnings,
            "auto_max_lr": pick.max_lr, "rule": result.settings["rule"],
            "seconds": round(time.perf_counter() - started, 1)}


def trained(task: Task, data: Dataset, max_lr: float, seed: int,
            build: ModelBuilder = fresh_model) -> tuple[nn.Module, TrainResult]:
    """The model trained at `max_lr` with the product's recipe (step fitted to the epochs), and its result
    (evaluated on the whole test split every epoch)."""
    spec, config = planned_run(task, data, max_lr, seed)
    model = build(spec, data, config.device)
    return model, train(model, data, config)


def train_at(task: Task, data: Dataset, max_lr: float, seed: int, build: ModelBuilder = fresh_model) -> float:
    """Test accuracy after training at `max_lr` with the product's recipe (step fitted to the epochs)."""
    try:
        _, result = trained(task, data, max_lr, seed, build)
    except Exception as exc:  # a diverged run is a data point (chance accuracy), not a crash
        print(json.dumps({"diverged": task.name, "max_lr": max_lr, "seed": seed, "error": str(exc)[:120]}),
              flush=True)
        return 1.0 / len(data.classes)
    return float(result.history["val_acc"][-1])


def interpolate(grid_lrs: list[float], accs: list[float], lr: float) -> tuple[float, bool]:
    """Accuracy at `lr` by linear interpolation in log10(LR); True when `lr` lies outside the grid."""
    x = np.log10(grid_lrs)
    inside = x[0] - 1e-9 <= math.log10(lr) <= x[-1] + 1e-9
    return float(np.interp(math.log10(lr), x, accs)), not inside


def rule_picks(curves: list[dict[str, Any]], cliff_margin: float | None = None) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {rule: [] for rule in RULES}
    for curve in curves:
        picks = picks_from_reading(read_curve(curve["lrs"], curve["losses"]), cliff_margin)
        for rule in RULES:
            out[rule].append(picks[rule])
    return out


def best_lr(grid_lrs: list[float], accs: list[float]) -> float:
    """The grid's best max_lr, read off a parabola through the best point and its neighbours in log LR."""
    x, y = np.log10(grid_lrs), np.asarray(accs)
    k = int(np.argmax(y))
    if 0 < k < len(y) - 1:
        a, b, _ = np.polyfit(x[k - 1 : k + 2], y[k - 1 : k + 2], 2)
        if a < 0:
            return float(10 ** np.clip(-b / (2 * a), x[k - 1], x[k + 1]))
    return float(10 ** x[k])


def regrets(res: dict[str, Any], margin: float | None = None) -> dict[str, dict[str, Any]]:
    best = max(res["grid_acc"])
    out: dict[str, dict[str, Any]] = {}
    for rule, picks in rule_picks(res["curves"], margin).items():
        values, outside = [], False
        for pick in picks:
            if pick is None:
                continue
            acc, off = interpolate(res["grid_lrs"], res["grid_acc"], pick)
            values.append(best - acc)
            outside |= off
        _, spread = aggregate_picks(picks)
        out[rule] = {"regret": float(np.mean(values)) * 100 if values else None, "outside": outside,
                     "spread": spread, "picks": picks}
    return out
