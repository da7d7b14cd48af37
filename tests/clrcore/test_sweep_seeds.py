"""The default sweep's length and start, and several seeds in one job combined (no training here)."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from clrcore.lr_range import RangeTestResult, combine_seeds
from clrcore.specs import (
    DEFAULT_START_LR,
    DEFAULT_SWEEP_SEEDS,
    HEAD_ONLY_RULE,
    SEEDS_SHARE_OF_RUN,
    SHARED_DECADES,
    SHARED_SHARE_MAX,
    STEPS_PER_DECADE,
    RangeTestOptions,
    RangeTestSpec,
    TrainSpec,
    default_sweep_steps,
)
from clrcore.suggest import picks_from_reading, read_curve

LRS = 1e-4 * (10 / 1e-4) ** (np.arange(150) / 149)


def test_the_default_sweep_holds_its_density_from_the_first_lr_to_end_lr():
    assert STEPS_PER_DECADE == 60
    assert default_sweep_steps(1e-4, 10.0) == 300  # SGD's default start to the default end: 5 decades
    assert default_sweep_steps(1e-6, 1.0) == 360
    options = RangeTestOptions()
    assert options.steps(20, "sgd") == options.steps(469, "sgd") == 300  # whatever the dataset's size
    assert options.steps(469, "adamw") == 420  # from AdamW's default start, 1e-6
    assert RangeTestOptions(start_lr=1e-3, end_lr=1.0).steps(20, "sgd") == 180
    assert RangeTestOptions(num_iter=60).steps(230, "sgd") == 60  # an explicit length wins
    assert RangeTestOptions(epochs=0.5).steps(230, "sgd") == 115


def test_the_default_start_is_where_the_optimizers_loss_moves_and_a_given_start_wins():
    assert RangeTestOptions().first_lr("sgd") == DEFAULT_START_LR["sgd"] == 1e-4
    assert RangeTestOptions().first_lr("adamw") == DEFAULT_START_LR["adamw"] == 1e-6
    assert RangeTestOptions(start_lr=1e-7).first_lr("sgd") == 1e-7
    with pytest.raises(ValidationError, match="start_lr must be below end_lr"):
        RangeTestOptions(end_lr=1e-5)  # below the default start of SGD


def test_a_training_job_sweeps_three_seeds_by_default_only_where_they_cost_at_most_60_percent_of_its_steps():
    assert (DEFAULT_SWEEP_SEEDS, SEEDS_SHARE_OF_RUN) == (3, 0.6)
    options = RangeTestOptions()
    assert options.seeds is None
    # the first user: 4 epochs of 50,000 images at batch 128 (391 steps an epoch) against three 300-step
    # sweeps: 900 <= 938
    assert options.sweep_seeds(300, 4 * 391) == 3
    assert options.sweep_seeds(300, 1500) == 3 and options.sweep_seeds(300, 1499) == 1  # the boundary
    assert options.sweep_seeds(300, 3 * 391) == 1  # a shorter run keeps one sweep
    assert options.sweep_seeds(300, None) == 1  # a range-test job: no run to weigh it against
    # a sweep of accumulated micro-batches costs that many batches a step
    assert RangeTestOptions(accumulation_steps=2).sweep_seeds(300, 2999) == 1
    assert RangeTestOptions(accumulation_steps=2).sweep_seeds(300, 3000) == 3
    assert RangeTestOptions(seeds=1).sweep_seeds(300, 10**6) == 1  # a given count always wins
    assert RangeTestOptions(seeds=2).sweep_seeds(300, None) == 2


def test_the_seeds_after_the_first_share_its_first_two_decades_and_cost_only_the_rest():
    assert (SHARED_DECADES, SHARED_SHARE_MAX) == (2.0, 0.4)
    options = RangeTestOptions()
    assert options.shared_steps(300, "sgd") == 120  # 1e-4 to 1e-2 of 1e-4 to 10
    assert options.shared_steps(420, "adamw") == 120  # 1e-6 to 1e-4 of 1e-6 to 10
    assert RangeTestOptions(start_lr=1e-3, end_lr=1.0).shared_steps(180, "sgd") == 72  # at most 40 % of three decades
    assert RangeTestOptions(shared_decades=1).shared_steps(300, "sgd") == 60
    assert RangeTestOptions(shared_decades=0).shared_steps(300, "sgd") == 0  # whole sweeps
    assert RangeTestOptions(mode="linear").shared_steps(300, "sgd") == 0  # decades mean nothing on a linear ladder
    # three seeds branched at step 120 cost 120 + 3 x 180 = 660 steps, 60 % of 1,100 (900 of 1,500 whole)
    assert options.sweep_seeds(300, 1100, shared=120) == 3 and options.sweep_seeds(300, 1099, shared=120) == 1
    with pytest.raises(ValidationError, match="shared_decades"):
        RangeTestOptions(shared_decades=-1)


@pytest.mark.parametrize("seeds", [0, 6, 2.5])
def test_seeds_out_of_range_are_refused_naming_the_field(seeds: float) -> None:
    with pytest.raises(ValidationError) as raised:
        TrainSpec.model_validate({"dataset": "digits", "range_test": {"seeds": seeds}})
    assert raised.value.errors()[0]["loc"] == ("range_test", "seeds")
    assert RangeTestSpec(dataset="digits", seeds=3).seeds == 3


def _result(losses: np.ndarray, checksum: str = "c", warnings: tuple[str, ...] = ("own",)) -> RangeTestResult:
    """A finished sweep's result as range_test() would return it, for a synthetic curve."""
    log = [{"step": i + 1, "iteration": i + 1, "lr": float(lr), "loss": float(v), "smoothed": float(v),
            "skipped": False} for i, (lr, v) in enumerate(zip(LRS, losses, strict=True))]
    picks = picks_from_reading(read_curve(LRS, losses))
    return RangeTestResult(log=log, val_log=[], stop_reason="end_lr", stopped_at=None, suggestions=picks,
                           recommendation=None, spread_decades=None, low_confidence=False, warnings=list(warnings),
                           restored=True, checksum=checksum, settings={"diverge_factor": 4.0, "read": "train"})


def _curve(cliff: float, seed: int) -> np.ndarray:
    x = np.log10(LRS)
    fall = 2.3 - 1.8 / (1 + np.exp(-(x - math.log10(cliff) + 1.5) / 0.3))
    return fall + 16 * np.clip(x - math.log10(cliff), 0, None) ** 1.5 + 0.01 * np.random.default_rng(seed).normal(
        size=len(x))


def test_combined_seeds_recommend_the_geometric_mean_and_keep_each_seeds_curve():
    results = [_result(_curve(c, s), checksum=f"c{s}", warnings=("every seed's", f"sweep {s}'s own"))
               for s, c in enumerate((0.2, 0.5, 0.9))]
    combined = combine_seeds(results, [4, 5, 6])
    singles = [r.suggestions["ours"] for r in results]
    assert combined.recommendation is not None
    assert combined.recommendation.max_lr == pytest.approx(math.exp(np.mean(np.log(singles))))
    assert combined.seed_spread == pytest.approx(max(singles) / min(singles)) and combined.seed_spread > 1.5
    assert [s["seed"] for s in combined.seeds] == [4, 5, 6] and combined.seeds[2]["lrs"][0] == LRS[0]
    assert combined.low_confidence and any("spread" in w for w in combined.warnings)
    # a seed's own warning with its seed; one every seed gave, once (three sweeps too sparse: one line)
    assert "seed 5: sweep 1's own" in combined.warnings and combined.warnings.count("every seed's") == 1
    assert not any(w.endswith("every seed's") and w.startswith("seed") for w in combined.warnings)
    assert combined.checksum == "c0" and combined.settings["seeds"] == 3
    data = combined.to_dict()
    assert data["seed_spread"] == combined.seed_spread and len(data["seeds"]) == 3
    assert combine_seeds(results[:1], [0]) is results[0]  # one seed: the result as it is


def test_a_chosen_rule_that_finds_nothing_on_a_readable_curve_is_the_reason_given():
    from clrcore.lr_range import _recommend

    rec, said = _recommend({"ours": 0.1, "slide": None}, "triangular", "slide")
    assert rec is None
    assert said == ["no suggestion: rule 'slide' finds nothing to read on this curve (ours picked 0.1)"]
    # the curve's own problem says why
    assert _recommend({"ours": None, "slide": None}, "triangular", "slide") == (None, [])
    rec, said = _recommend({"ours": 0.1}, "triangular", "ours")
    assert rec is not None and rec.max_lr == 0.1 and said == []
    results = [_result(_curve(c, s), checksum=f"c{s}") for s, c in enumerate((0.2, 0.5))]
    assert combine_seeds(results, [0, 1], rule="valley").recommendation.rule == "valley"  # aggregated per rule


def test_the_default_rule_is_ours_except_on_a_head_only_sweep_and_a_given_rule_wins():
    assert RangeTestOptions().pick_rule(head_only=False) == "ours"
    assert RangeTestOptions().pick_rule(head_only=True) == HEAD_ONLY_RULE == "min_loss"
    assert RangeTestOptions(rule="valley").pick_rule(head_only=True) == "valley"
    assert RangeTestOptions(rule="ours").pick_rule(head_only=True) == "ours"
