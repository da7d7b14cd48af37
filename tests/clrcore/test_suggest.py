"""Suggestion rules, the recommendation, warnings and the recipe, on synthetic curves."""

import math
import subprocess
import sys

import numpy as np
import pytest

from clrcore.suggest import (
    LOW_CONFIDENCE_DECADES,
    TRIANGULAR_BASE_DIVISOR,
    debiased_ema,
    recipe,
    recommend,
    suggest_lrs,
    usable_curve,
    warnings_for,
)

LRS = 1e-7 * (10 / 1e-7) ** (np.arange(100) / 99)
X = np.log10(LRS)


def bowl(centre: float = -2.0, width: float = 0.5) -> np.ndarray:
    """A smooth bowl in log-LR: flat, then down to a minimum at 10**centre, then up steeply."""
    return 2.3 - 1.5 * np.exp(-((X - centre) ** 2) / (2 * width**2)) + 4 * np.clip(X - centre, 0, None) ** 2


def anchor_curve(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Shaped like the MiniGoogLeNet/CIFAR-10 anchor: falls around 1e-2, lowest near 0.16."""
    fall = 2.3 - 1.9 / (1 + np.exp(-(X + 2.0) / 0.45))
    rise = 6 * np.clip(X - math.log10(0.16), 0, None) ** 2
    raw = fall + rise + noise * np.random.default_rng(seed).standard_normal(len(X))
    return raw if noise == 0 else debiased_ema(raw, 0.98)


def test_debiased_ema_starts_at_the_raw_value_and_follows_the_formula():
    raw = np.array([3.0, 1.0, 2.0, 5.0])
    out = debiased_ema(raw, 0.9)
    assert out[0] == 3.0
    avg, expected = 0.0, []
    for n, v in enumerate(raw, 1):
        avg = 0.9 * avg + 0.1 * v
        expected.append(avg / (1 - 0.9**n))
    np.testing.assert_allclose(out, expected)


def test_rules_land_where_the_bowl_puts_them():
    s = suggest_lrs(LRS, bowl(centre=-2.0, width=0.5))
    assert abs(math.log10(s["min_loss"]) - -2.0) < 0.1
    assert s["min_loss_div10"] == pytest.approx(s["min_loss"] / 10)
    # a Gaussian bowl is steepest one width before its centre
    assert abs(math.log10(s["steepest"]) - -2.5) < 0.2
    # two thirds down the descent, which on this bowl is about where it is steepest
    assert 10**-3 < s["valley"] < s["min_loss"]
    assert abs(math.log10(s["valley"] / s["steepest"])) < 0.3


def test_noise_does_not_pull_steepest_to_the_ends():
    s = suggest_lrs(LRS, anchor_curve(noise=0.05))
    assert 1e-3 < s["steepest"] < s["min_loss"]
    assert 1e-3 < s["valley"] < s["min_loss"]


def test_rules_ignore_everything_after_divergence():
    clean = bowl()
    spiked = clean.copy()
    spiked[80] = 100.0  # diverged here; the later points must not matter
    spiked[81:] = 0.01
    assert suggest_lrs(LRS, spiked) == suggest_lrs(LRS[:80], clean[:80])
    with_nan = clean.copy()
    with_nan[70:] = np.nan
    lr, y = usable_curve(LRS, with_nan)
    assert len(y) == 70


def test_anchor_curve_gives_max_lr_in_the_good_band():
    for curve in (anchor_curve(), anchor_curve(noise=0.05)):
        s = suggest_lrs(LRS, curve)
        rec = recommend(s)
        assert 0.05 <= rec.max_lr <= 0.8, (s, rec)
        assert rec.base_lr == pytest.approx(rec.max_lr / TRIANGULAR_BASE_DIVISOR)
        assert not rec.low_confidence
    s = suggest_lrs(LRS, anchor_curve())
    assert 0.1 < s["min_loss"] < 0.25
    assert s["min_loss_div10"] < 0.05  # the old rule falls out of the band: why it is not the default


def test_recommend_per_policy_and_named_rule():
    s = {"steepest": 0.02, "valley": 0.05, "min_loss": 0.2, "min_loss_div10": 0.02}
    tri = recommend(s, "triangular")
    assert tri.max_lr == pytest.approx(0.1)  # gmean(0.05, 0.2); not below min_loss/2
    assert tri.rule == "gmean(valley, min_loss)"
    one = recommend(s, "one_cycle")
    assert one.max_lr == tri.max_lr and one.base_lr == pytest.approx(tri.max_lr / 25)
    const = recommend(s, "constant")
    assert const.base_lr == const.max_lr == pytest.approx(tri.max_lr / 4)
    far = recommend({**s, "valley": 1e-4})
    assert far.max_lr == pytest.approx(0.1) and far.rule.startswith("min_loss/2")
    steep = recommend({**s, "valley": 1e-4, "steepest": 0.15})
    assert steep.max_lr == pytest.approx(0.15) and steep.rule.startswith("steepest")
    with pytest.raises(ValueError, match="never fell"):
        recommend({"steepest": None, "valley": None, "min_loss": None, "min_loss_div10": None})


def test_low_confidence_when_rules_disagree_by_the_threshold():
    agree = recommend({"steepest": 0.03, "valley": 0.05, "min_loss": 0.2})
    assert agree.spread_decades == pytest.approx(math.log10(0.2 / 0.03))
    assert not agree.low_confidence
    at_threshold = recommend({"steepest": 0.2 / 10**LOW_CONFIDENCE_DECADES, "valley": None, "min_loss": 0.2})
    assert at_threshold.low_confidence
    wild = recommend({"steepest": 1e-5, "valley": 1e-3, "min_loss": 1.0})
    assert wild.low_confidence and wild.spread_decades == pytest.approx(5)


def test_warnings_name_the_fix():
    curve = anchor_curve()
    never = warnings_for(LRS, curve, stop_reason="end_lr")
    assert any("never diverged: raise end_lr" in w for w in never)
    rising = np.linspace(2.3, 3.0, 50)
    assert any("never fell: lower start_lr" in w for w in warnings_for(LRS[:50], rising))
    assert suggest_lrs(LRS[:50], rising)["min_loss"] is None
    few = warnings_for(LRS[:5], curve[:5], stop_reason="diverged")
    assert any("only 5 usable points" in w for w in few)
    low = warnings_for(LRS, curve, suggestions={"steepest": 1e-5, "valley": 1e-3, "min_loss": 1.0})
    assert any("low confidence" in w for w in low)
    assert warnings_for(LRS, curve, stop_reason="diverged") == []


@pytest.mark.parametrize("hint", [None, 1, 10, 16, 30, 50, 100])
def test_triangular_recipe_ends_on_a_cycle_minimum(hint):
    rec = recommend({"steepest": 0.03, "valley": 0.05, "min_loss": 0.2})
    r = recipe(rec, policy="triangular", iters_per_epoch=7, epochs_hint=hint)
    assert 2 <= r["step_epochs"] <= 8
    assert r["step_size"] == 7 * r["step_epochs"] and r["step_unit"] == "iterations"
    assert r["epochs"] == 2 * r["cycles"] * r["step_epochs"]
    if hint is None:
        assert r["step_epochs"] == 4 and r["epochs"] == 8
    if hint == 30:
        assert r["epochs"] == 30
    assert (r["base_lr"], r["max_lr"]) == (rec.base_lr, rec.max_lr)


def test_one_cycle_recipe_and_policy_mismatch():
    s = {"steepest": 0.03, "valley": 0.05, "min_loss": 0.2}
    r = recipe(recommend(s, "one_cycle"), policy="one_cycle", iters_per_epoch=3, epochs_hint=12)
    assert r["epochs"] == 12 and "step_size" not in r
    assert r["base_lr"] == pytest.approx(r["max_lr"] / r["div_factor"])
    with pytest.raises(ValueError):
        recipe(recommend(s), policy="one_cycle", iters_per_epoch=3)


def test_suggest_imports_without_torch():
    code = "import sys, clrcore.suggest; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
