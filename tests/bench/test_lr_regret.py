"""bench/lr_regret.py's scoring, on a synthetic grid and curves (no training)."""

import math

import numpy as np
import pytest

from bench.lr_regret import best_lr, interpolate, learned_margin, regrets, table

LRS = 1e-4 * (1e5) ** (np.arange(120) / 119)


def curve(cliff: float, seed: int) -> dict:
    x = np.log10(LRS)
    loss = 2.3 - 1.8 / (1 + np.exp(-(x - math.log10(cliff) + 1.5) / 0.3))
    loss = loss + 16 * np.clip(x - math.log10(cliff), 0, None) ** 1.5
    return {"lrs": LRS.tolist(), "losses": (loss + 0.02 * np.random.default_rng(seed).standard_normal(120)).tolist()}


def task(name: str, best: float) -> dict:
    grid = [best * 10**e for e in np.linspace(-1, 1, 7)]
    acc = [0.9 - 0.05 * abs(math.log10(lr / best)) for lr in grid]
    return {"task": name, "grid_lrs": grid, "grid_acc": acc, "grid_acc_by_seed": [acc, acc],
            "curves": [curve(best * 2, s) for s in range(3)],
            "auto": {"max_lrs": [best, best], "acc": [0.9, 0.9], "regret": 0.0}}


def test_interpolation_and_the_grids_best_in_log_lr():
    assert interpolate([0.01, 0.1], [0.5, 0.7], 10**-1.5) == (pytest.approx(0.6), False)
    assert interpolate([0.01, 0.1], [0.5, 0.7], 1.0) == (pytest.approx(0.7), True)  # outside: the edge
    t = task("a", 0.1)
    assert best_lr(t["grid_lrs"], t["grid_acc"]) == pytest.approx(0.1, rel=0.05)


def test_a_margin_learned_from_the_grid_recovers_the_cliff_to_best_ratio():
    results = [task("a", 0.1), task("b", 0.003)]
    margin = learned_margin(results)
    assert 1.5 < margin < 3.5  # the curves' cliff sits at 2x the best max_lr, the turn a little past it
    scored = regrets(results[0], margin)
    assert scored["ours"]["regret"] < 1.0 and scored["ours"]["spread"] < 1.5
    for res in results:
        res["regret"] = regrets(res)
        res["regret_loo"] = regrets(res, learned_margin(results, leave_out=res["task"]))
    text = table(results, margin)
    assert len(text.splitlines()) == 2 + 6 + 2 and "valley (fastai)" in text
