"""The smoother, the divergence rule, every rule's pick, the fallback and the recipe, on synthetic curves.

No training here: every curve is built from a formula (plus seeded noise), so each test knows where
the loss really was lowest and where it turned.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from clrcore.cycle_fit import fit_cycles
from clrcore.smoothing import forward_backward_ema, smooth_curve, smoothing_gain, step_noise
from clrcore.suggest import (
    CLIFF_MARGIN,
    LOW_CONFIDENCE_DECADES,
    MARGIN_STEPS_PER_DECADE,
    SAFE_MAX_LR,
    SEED_SPREAD_WARN,
    TRIANGULAR_BASE_DIVISOR,
    SeedAggregate,
    aggregate_picks,
    aggregate_seeds,
    debiased_ema,
    mean_curve,
    read_curve,
    recipe,
    recommend,
    safe_recommendation,
    seed_warnings,
    sparse_sweep_warning,
    steps_per_decade,
    suggest_lrs,
    usable_curve,
    warnings_for,
)

LRS = 1e-5 * (10 / 1e-5) ** (np.arange(240) / 239)  # 6 decades, 40 points a decade
X = np.log10(LRS)
TRUE_MIN = math.log10(0.3)


def sweep_curve(noise: float = 0.0, seed: int = 0, cliff: float = TRUE_MIN, height: float = 4.0) -> np.ndarray:
    """Raw per-step loss of a sweep: flat at 2.3, falls from 1e-3 on, lowest at 10**cliff, then blows up."""
    fall = 2.3 - 1.8 / (1 + np.exp(-(X + 1.2) / 0.3))
    rise = height * np.clip(X - cliff, 0, None) ** 1.5 * 4
    return fall + rise + noise * np.random.default_rng(seed).standard_normal(len(X))


def test_debiased_ema_starts_at_the_raw_value_and_follows_the_formula():
    raw = np.array([3.0, 1.0, 2.0, 5.0])
    out = debiased_ema(raw, 0.9)
    assert out[0] == 3.0
    avg, expected = 0.0, []
    for n, v in enumerate(raw, 1):
        avg = 0.9 * avg + 0.1 * v
        expected.append(avg / (1 - 0.9**n))
    np.testing.assert_allclose(out, expected)


# ------------------------------------------------------------------------------ the smoother


def test_forward_backward_ema_has_no_lag_where_the_one_sided_ema_does():
    raw = sweep_curve()
    lagged = debiased_ema(raw, 0.98)
    zero_lag = smooth_curve(LRS, raw)
    true_min = X[int(np.argmin(raw))]
    # a steep cliff pulls a smoothed minimum a little towards the safe side, never past the real one
    assert -0.2 < X[int(np.argmin(zero_lag))] - true_min <= 0.03
    assert X[int(np.argmin(lagged))] > X[int(np.argmin(zero_lag))] + 0.05  # the sweep's EMA lags past it


def test_zero_lag_smoother_keeps_a_symmetric_bump_centred_and_averages_noise():
    bump = np.exp(-((np.arange(201) - 100) ** 2) / (2 * 15.0**2))
    smoothed = forward_backward_ema(bump, span=8)
    assert int(np.argmax(smoothed)) == 100
    noisy = 1.0 + 0.2 * np.random.default_rng(1).standard_normal(400)
    assert np.std(forward_backward_ema(noisy, span=10)[20:-20]) < 0.2 / 2.5


def test_smoothing_gain_is_the_norm_of_the_weights_the_smoother_gives_each_point():
    for n, decades in ((100, 5), (300, 5), (7, 1)):
        lrs = 1e-4 * 10 ** (np.arange(n) / (n - 1) * decades)
        # column j of the smoother's matrix: its response to an impulse at j; row `at`: the weights of `at`
        matrix = np.array([smooth_curve(lrs, np.eye(1, n, j).ravel()) for j in range(n)]).T
        for at in (0, n // 2, n - 1):
            assert smoothing_gain(lrs, at) == pytest.approx(float(np.linalg.norm(matrix[at])), rel=1e-9)
    sparse, dense = (1e-4 * 10 ** (np.arange(n) / (n - 1) * 5) for n in (100, 300))
    assert smoothing_gain(dense) < smoothing_gain(sparse) < smoothing_gain(sparse, 99)  # the ends average less


def test_step_noise_reads_the_noise_not_the_trend_at_any_density():
    rng = np.random.default_rng(3)
    for n in (100, 300, 1000):
        trend = np.linspace(2.3, 0.5, n) + 3 * np.clip(np.linspace(-1, 1, n), 0, None) ** 2
        assert step_noise(trend + 0.2 * rng.standard_normal(n)) == pytest.approx(0.2, rel=0.15)


@pytest.mark.parametrize("points", [100, 300, 600])
def test_pure_noise_is_called_noisy_at_any_sweep_density(points):
    lrs = 1e-4 * 10 ** (np.arange(points) / (points - 1) * 5)
    rng = np.random.default_rng(points)
    readings = [read_curve(lrs, 5.0 + rng.standard_normal(points)) for _ in range(200)]
    read = sum(r.problem is None for r in readings)
    assert read <= 6, read  # about 1 in 200 expected (NOISE_SIGMAS is the null's 99.5th percentile)


def test_a_dense_sweep_that_learned_a_little_is_read_not_called_noisy():
    # minigooglenet's shape on 2,000 small CIFAR images: a fall of 0.45 under minibatch noise of 0.2
    lrs = 1e-4 * 10 ** (np.arange(300) / 299 * 5)
    x = np.log10(lrs)
    shape = 2.3 - 0.45 / (1 + np.exp(-(x + 2.5) / 0.3)) + 3 * np.clip(x + 1.5, 0, None) ** 2
    for seed in range(3):
        reading = read_curve(lrs, shape + 0.2 * np.random.default_rng(seed).standard_normal(300))
        assert reading.problem is None, reading.problem
        assert 10**-1.8 < reading.cliff_lr < 10**-1.0


def test_noise_does_not_move_the_zero_lag_minimum_far():
    for seed in range(3):
        reading = read_curve(LRS, sweep_curve(noise=0.08, seed=seed))
        assert reading.problem is None
        assert abs(math.log10(reading.min_lr) - TRUE_MIN) < 0.2, seed


# ------------------------------------------------------------------------------ divergence: the turn


def test_the_turn_is_found_on_the_curve_without_the_4x_stop():
    raw = sweep_curve(height=0.4)[:220]  # rises, but never to 4x its best
    reading = read_curve(LRS[:220], raw)
    assert reading.turn is not None and reading.turn > reading.i_min
    assert reading.turn_lr < 10 ** (TRUE_MIN + 0.6)
    assert not reading.still_falling
    assert not any("never diverged" in w for w in warnings_for(LRS[:220], raw, stop_reason="end_lr"))


def test_never_diverged_only_when_the_curve_ends_still_falling():
    falling = sweep_curve()[:150]  # cut before the minimum: still going down at the end
    reading = read_curve(LRS[:150], falling)
    assert reading.turn is None and reading.still_falling
    assert any("never diverged" in w for w in warnings_for(LRS[:150], falling, stop_reason="end_lr"))
    flat_end = np.concatenate([sweep_curve()[:160], np.full(40, sweep_curve()[159])])  # flattens, never rises
    words = warnings_for(LRS[:200], flat_end, stop_reason="end_lr")
    assert not any("never diverged" in w for w in words) and any("flattened" in w for w in words)


def test_the_4x_stop_still_cuts_a_runaway_loss_and_nan():
    spiked = sweep_curve()
    spiked[200:] = 100.0
    assert len(read_curve(LRS, spiked).lrs) <= 201
    with_nan = sweep_curve()
    with_nan[180:] = np.nan
    assert len(read_curve(LRS, with_nan).lrs) == 180
    lr, y = usable_curve(LRS, with_nan)
    assert len(y) == 180


# ------------------------------------------------------------------------------ no suggestion


@pytest.mark.parametrize(
    ("curve", "reason"),
    [
        (np.full(240, 2.3) + 0.001 * np.sin(np.arange(240)), "flat"),
        (2.3 - 0.1 * (X > -1) + 0.4 * np.random.default_rng(0).standard_normal(240), "noisy"),
        (np.linspace(2.3, 3.0, 240), "never_fell"),
        (np.concatenate([[2.3] * 5, [np.nan] * 235]), "too_short"),
        (np.full(240, np.nan), "nan"),
    ],
)
def test_a_curve_no_rule_can_read_gets_a_typed_reason(curve, reason):
    reading = read_curve(LRS, curve)
    assert reading.problem is not None and reading.problem.reason == reason
    picks = suggest_lrs(LRS, curve)
    assert all(v is None for v in picks.values())
    with pytest.raises(ValueError, match="no suggestion"):
        recommend(picks)
    assert any(w.startswith(f"no suggestion ({reason})") for w in warnings_for(LRS, curve))


def test_the_safe_fallback_is_documented_and_low_confidence():
    sgd = safe_recommendation("sgd", reason="no suggestion (flat)")
    assert sgd.max_lr == SAFE_MAX_LR["sgd"] and sgd.base_lr == pytest.approx(sgd.max_lr / TRIANGULAR_BASE_DIVISOR)
    assert sgd.low_confidence and "safe fallback" in sgd.rule and "flat" in sgd.rule
    assert safe_recommendation("adamw", "one_cycle").max_lr == SAFE_MAX_LR["adamw"]
    with pytest.raises(ValueError):
        safe_recommendation("lion")


# ------------------------------------------------------------------------------ the rules


def test_every_rule_picks_and_ours_steps_back_from_the_cliff():
    picks = suggest_lrs(LRS, sweep_curve(noise=0.05))
    assert set(picks) >= {"steepest", "valley", "slide", "min_loss_div10", "blog", "blog_base", "ours"}
    assert all(picks[k] for k in picks), picks
    reading = read_curve(LRS, sweep_curve(noise=0.05))
    assert picks["ours"] == pytest.approx(reading.turn_lr / CLIFF_MARGIN)
    assert reading.min_lr < reading.turn_lr < 10 ** (TRUE_MIN + 0.5)  # the cliff: just past the minimum
    assert picks["min_loss"] > 10**TRUE_MIN  # the peers' minimum is read on the lagging EMA
    assert picks["blog_base"] < picks["steepest"] < picks["blog"]
    assert picks["min_loss_div10"] == pytest.approx(picks["min_loss"] / 10)


def test_cliff_margin_and_skips_reread_the_same_curve():
    raw = sweep_curve(noise=0.05)
    wide = suggest_lrs(LRS, raw, cliff_margin=10.0)
    narrow = suggest_lrs(LRS, raw, cliff_margin=2.0)
    assert wide["ours"] * 5 == pytest.approx(narrow["ours"])
    skipped = read_curve(LRS, raw, skip_start=20, skip_end=10)
    assert skipped.lrs[0] == LRS[20] and len(skipped.lrs) <= 210


def test_recommend_per_policy_is_ours():
    s = {"steepest": 0.02, "valley": 0.05, "min_loss": 0.2, "ours": 0.1}
    tri = recommend(s, "triangular")
    assert tri.max_lr == 0.1 and tri.rule.startswith("ours")
    one = recommend(s, "one_cycle")
    assert one.max_lr == tri.max_lr and one.base_lr == pytest.approx(tri.max_lr / 25)
    const = recommend(s, "constant")
    assert const.base_lr == const.max_lr == pytest.approx(tri.max_lr / 4)


def test_recommend_takes_another_rules_pick_when_asked_and_names_that_rule():
    import typing

    from clrcore.specs import PickRule
    from clrcore.suggest import PICK_RULES

    s = {"steepest": 0.02, "valley": 0.05, "min_loss": 0.2, "slide": None, "ours": 0.1}
    low = recommend(s, "triangular", rule="min_loss")
    assert (low.max_lr, low.rule) == (0.2, "min_loss") and low.base_lr == pytest.approx(0.2 / 25)
    assert low.spread_decades == recommend(s).spread_decades  # the rules' agreement does not depend on the choice
    with pytest.raises(ValueError, match="rule 'slide' finds nothing to read"):
        recommend(s, rule="slide")
    with pytest.raises(ValueError, match="unknown rule 'blog_base'"):
        recommend(s, rule="blog_base")  # the blog's lower bound is no peak
    assert typing.get_args(PickRule) == PICK_RULES  # the spec offers exactly the rules recommend() takes


def test_low_confidence_when_rules_disagree_by_the_threshold():
    agree = recommend({"steepest": 0.03, "valley": 0.05, "min_loss": 0.2, "ours": 0.1})
    assert agree.spread_decades == pytest.approx(math.log10(0.2 / 0.03))
    assert not agree.low_confidence
    wild = recommend({"steepest": 1e-5, "valley": 1e-3, "min_loss": 1.0, "ours": 0.1})
    assert wild.low_confidence and wild.spread_decades == pytest.approx(5) and LOW_CONFIDENCE_DECADES <= 5


def test_seeds_aggregate_to_a_geometric_mean_and_a_spread():
    assert aggregate_picks([0.1, 0.4, None]) == (pytest.approx(0.2), pytest.approx(4.0))
    assert aggregate_picks([None, None]) == (None, None)


# ------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize("epochs", [2, 3, 4, 5, 10, 12, 30, 100])
def test_a_fitted_step_never_ends_the_run_mid_cycle(epochs):
    fit = fit_cycles(epochs, 8)
    assert fit.policy == "triangular" and fit.epochs == epochs
    assert (epochs * 8) % (2 * fit.step_iterations) == 0  # whole cycles: ends at base_lr
    assert fit.step_iterations >= 8  # at least one epoch


def test_no_whole_cycle_fits_switches_to_one_cycle_and_says_so():
    fit = fit_cycles(1, 50)
    assert fit.policy == "one_cycle" and fit.step_iterations is None and "one_cycle" in fit.note
    rec = recommend({"ours": 0.1})
    plan = recipe(rec, iters_per_epoch=50, epochs_hint=1)
    assert plan["policy"] == "one_cycle" and plan["epochs"] == 1 and "one_cycle" in plan["fit"]


@pytest.mark.parametrize("hint", [None, 2, 10, 16, 30])
def test_triangular_recipe_keeps_the_epochs_and_ends_on_a_cycle_minimum(hint):
    rec = recommend({"ours": 0.1})
    r = recipe(rec, policy="triangular", iters_per_epoch=7, epochs_hint=hint)
    assert r["step_unit"] == "iterations"
    assert (r["epochs"] * 7) % (2 * r["step_size"]) == 0 and r["epochs"] * 7 == 2 * r["cycles"] * r["step_size"]
    assert r["epochs"] == (8 if hint is None else hint)
    assert (r["base_lr"], r["max_lr"]) == (rec.base_lr, rec.max_lr)


def test_one_cycle_recipe_and_policy_mismatch():
    s = {"ours": 0.1}
    r = recipe(recommend(s, "one_cycle"), policy="one_cycle", iters_per_epoch=3, epochs_hint=12)
    assert r["epochs"] == 12 and "step_size" not in r
    assert r["base_lr"] == pytest.approx(r["max_lr"] / r["div_factor"])
    with pytest.raises(ValueError):
        recipe(recommend(s), policy="one_cycle", iters_per_epoch=3)


def test_suggest_imports_without_torch():
    code = "import sys, clrcore.suggest, clrcore.curve_file; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ several seeds in one job


def test_seeds_aggregate_by_geometric_mean_and_report_each_pick_and_the_spread():
    cliffs = [math.log10(0.2), math.log10(0.3), math.log10(0.45)]
    curves = [(LRS, sweep_curve(0.01, seed=s, cliff=c)) for s, c in enumerate(cliffs)]
    agg = aggregate_seeds(curves)
    singles = [suggest_lrs(lrs, losses)["ours"] for lrs, losses in curves]
    assert agg.per_seed[1]["ours"] == pytest.approx(singles[1])
    assert agg.suggestions["ours"] == pytest.approx(math.exp(np.mean(np.log(singles))))
    assert agg.spread == pytest.approx(max(singles) / min(singles))
    assert 1.8 < agg.spread < 2.8 and agg.source == "seeds" and agg.picked == 3
    assert seed_warnings(agg, [0, 1, 2]) == []  # as far apart as three sweeps' cliffs usually are: no warning
    wide = [(LRS, sweep_curve(0.01, seed=s, cliff=math.log10(c))) for s, c in enumerate((0.1, 0.2, 0.5))]
    agg = aggregate_seeds(wide)
    assert agg.spread > SEED_SPREAD_WARN
    warned = seed_warnings(agg, [0, 1, 2])
    assert len(warned) == 1 and f"{agg.spread:.2f}x" in warned[0] and "geometric mean" in warned[0]


def test_seeds_that_agree_give_no_warning_and_a_seed_without_a_pick_is_named():
    good = [(LRS, sweep_curve(0.01, seed=s)) for s in range(2)]
    flat = (LRS, np.full(240, 2.3) + 0.001 * np.random.default_rng(5).standard_normal(240))
    agg = aggregate_seeds([*good, flat])
    assert agg.picked == 2 and agg.spread is not None and agg.spread < 1.2
    assert agg.suggestions["ours"] == pytest.approx(aggregate_picks([p["ours"] for p in agg.per_seed])[0])
    warned = seed_warnings(agg, [7, 8, 9])
    assert warned == [f"seed 9: {agg.problems[2]}"] and agg.problems[2].reason in ("flat", "never_fell")


def test_seeds_each_too_noisy_alone_are_read_through_their_mean_curve():
    curves = [(LRS, sweep_curve(0.0, cliff=math.log10(0.1)) * 0.5 + 1.2
               + 0.7 * np.random.default_rng(s).standard_normal(240)) for s in range(5)]
    alone = aggregate_seeds(curves[:1])
    assert alone.suggestions["ours"] is None and alone.problems[0].reason == "noisy" and alone.source == "none"
    agg = aggregate_seeds(curves)
    assert all(p is not None and p.reason == "noisy" for p in agg.problems)
    assert agg.source == "mean_curve" and agg.spread is None
    assert 0.1 / 3 < agg.suggestions["ours"] < 0.1 * 1.5  # the cliff read on the mean, stepped back
    assert any("mean of the 5 curves" in w for w in seed_warnings(agg, list(range(5))))


def test_the_mean_curve_averages_the_steps_every_seed_took():
    lrs, losses = mean_curve([([1.0, 2.0, 3.0], [4.0, 2.0, 9.0]), ([1.0, 2.0], [2.0, 4.0])])
    np.testing.assert_allclose(lrs, [1.0, 2.0])
    np.testing.assert_allclose(losses, [3.0, 3.0])


def test_the_seed_spread_a_job_warns_of_is_that_of_the_rule_it_trains_at():
    # ours' picks 4x apart, the lowest loss's 1.2x: a job at the lowest loss has nothing to warn of
    per_seed = [{"ours": 0.1, "min_loss": 0.5}, {"ours": 0.4, "min_loss": 0.6}]
    agg = SeedAggregate({"ours": 0.2, "min_loss": 0.55}, per_seed, [None, None], "seeds")
    assert agg.spread == pytest.approx(4.0) and agg.spread_of("min_loss") == pytest.approx(1.2)
    assert any("spread 4.00x" in w for w in seed_warnings(agg, [0, 1]))
    assert not any("spread" in w for w in seed_warnings(agg, [0, 1], "min_loss"))
    assert SeedAggregate({}, [{"ours": 0.1}, {"ours": None}], [None, None], "seeds").spread is None


# ------------------------------------------------------------------------------ the sweep's density
def test_steps_per_decade_is_the_ladders_density_where_it_is_read():
    assert steps_per_decade(LRS, 0.3) == pytest.approx(239 / 6)  # geometric: the same anywhere
    assert steps_per_decade(LRS, 10.0) == pytest.approx(239 / 6)  # at its end: half a window, same density
    linear = np.linspace(1e-3, 10, 300)  # a linear ladder is dense at its top, sparse below
    assert steps_per_decade(linear, 5.0) > 10 * steps_per_decade(linear, 0.05)
    assert steps_per_decade(np.array([1e-3, 1e-1, 10.0]), 0.1) == pytest.approx(0.5)  # too few near: the mean


def test_ours_margin_is_learned_at_the_default_sweeps_density():
    from clrcore.specs import STEPS_PER_DECADE

    assert MARGIN_STEPS_PER_DECADE == STEPS_PER_DECADE


@pytest.mark.parametrize("per_decade, warned", [(13, True), (25, True), (40, False), (60, False)])
def test_a_sweep_sparser_than_the_margins_density_warns_that_the_pick_may_be_off(per_decade, warned):
    lrs = 1e-5 * 10 ** (np.arange(6 * per_decade + 1) / per_decade)  # 1e-5 to 10, the same curve
    x = np.log10(lrs)
    losses = 2.3 - 1.8 / (1 + np.exp(-(x + 1.2) / 0.3)) + 16 * np.clip(x - TRUE_MIN, 0, None) ** 1.5
    reading = read_curve(lrs, losses)
    text = sparse_sweep_warning(lrs, reading)
    assert (text is not None) == warned
    assert any("steps a decade" in w for w in warnings_for(lrs, losses)) == warned
    if warned:
        assert text is not None and f"took {per_decade} steps a decade" in text and "num_iter" in text
    if per_decade == 60:  # a coarser reading of it (the validation loss every 4th step) is judged by its ladder
        coarse = slice(None, None, 4)
        assert any("steps a decade" in w for w in warnings_for(lrs[coarse], losses[coarse]))
        assert not any("steps a decade" in w for w in warnings_for(lrs[coarse], losses[coarse], ladder=lrs))


def test_a_curve_no_rule_can_read_gets_no_density_warning():
    lrs = 1e-5 * 10 ** (np.arange(61) / 10)  # 10 a decade, but flat: no pick to warn about
    assert sparse_sweep_warning(lrs, read_curve(lrs, np.full(61, 2.3))) is None


def test_resnet_fast_has_its_own_margins_and_every_other_family_the_one():
    from clrcore.suggest import CLIFF_MARGIN, cliff_margin_for

    assert cliff_margin_for("resnet_fast", "sgd") == 2.38 and cliff_margin_for("resnet_fast", "adamw") == 11.2
    for model, optimizer in [("tiny_cnn", "sgd"), ("small_cnn", "adamw"), ("minigooglenet", "sgd"), (None, None)]:
        assert cliff_margin_for(model, optimizer) == CLIFF_MARGIN


def test_the_bench_registered_the_margins_the_product_ships():
    from bench.regret_family import FAMILY_MARGINS
    from clrcore.suggest import FAMILY_CLIFF_MARGINS

    assert FAMILY_CLIFF_MARGINS == FAMILY_MARGINS


def test_a_recommendation_names_the_margin_ours_read_with():
    from clrcore.suggest import recommend

    picks = {"ours": 0.1, "steepest": 0.05}
    assert recommend(picks).rule == "ours (the zero-lag curve's cliff / 1.5)"
    assert recommend(picks, cliff_margin=11.2).rule == "ours (the zero-lag curve's cliff / 11.2)"
