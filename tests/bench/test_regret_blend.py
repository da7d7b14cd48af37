"""bench/regret_blend.py: the blend itself, and the stored runs re-read as docs/benchmarks.md quotes them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench import regret_blend as rb
from bench.lr_regret import TASKS_CPU, TASKS_FIRST_USER, TASKS_FRESH, TASKS_HELD_OUT

DATA = Path("bench/data")


def test_a_blend_is_geometric_in_ours_weight_and_falls_back_to_ours_where_the_partner_read_nothing():
    picks = {"ours": 1.0, "valley": 0.01, "steepest": None}
    assert rb.blend(picks, rb.OURS) == 1.0
    assert rb.blend(picks, ("valley", 0.5)) == pytest.approx(0.1)
    assert rb.blend(picks, ("valley", 0.75)) == pytest.approx(10 ** -0.5)
    assert rb.blend(picks, ("steepest", 0.5)) == 1.0  # the partner read nothing: ours alone
    assert rb.blend(None, ("valley", 0.5)) is None  # the curve could not be read


def _task(name: str, best: float, cliffs: list[float]) -> rb.TaskRuns:
    """A synthetic task: regret grows as |log10(lr / best)|, steeper above the best (the cliff)."""
    def regret(lrs: np.ndarray) -> np.ndarray:
        d = np.log10(np.asarray(lrs) / best)
        return np.where(d > 0, 8 * d, 2 * -d)
    return rb.TaskRuns(name, regret, [[{"ours": c, "valley": c / 10} for c in cliffs]])


def test_the_margin_spares_the_worst_task_and_leaving_a_task_out_learns_it_on_the_others():
    near, far = _task("near", 1.0, [1.2, 1.5, 1.8]), _task("far", 1.0, [2.5, 3.0, 3.5])
    margin = rb.minimax_margin([near, far], rb.OURS)
    assert 1.5 < margin < 3.0  # between the two tasks' cliffs: neither falls off, neither is far below
    loo = rb.leave_one_out([near, far], rb.OURS)
    on_far = rb.minimax_margin([far], rb.OURS)
    assert loo[0] == pytest.approx(float(np.mean(near.regret(np.array([1.2, 1.5, 1.8]) / on_far))))
    # a blend with a rule ten times lower learns a margin that much lower (x 10^-0.5 at an even blend)
    assert rb.minimax_margin([near, far], ("valley", 0.5)) == pytest.approx(margin / 10**0.5, rel=0.02)
    s = rb.scores([near, far], rb.OURS, margin)
    assert s["three"] <= s["one"] and s["jobs_apart"] is None  # one job a task: no pair of jobs


@pytest.fixture(scope="module")
def stored() -> dict:
    tuning = rb.pooled([rb.load_set([DATA / f], TASKS_CPU)
                     for f in ("lr_regret", "lr_regret_oos", "lr_regret_fresh", "lr_regret_branched")])
    held = rb.load_set([DATA / "lr_regret_heldout"], TASKS_HELD_OUT)
    first_user = [t for f in ("lr_regret_first_user", "lr_regret_first_user_oos", "lr_regret_first_user_adamw",
                              "lr_regret_first_user_adamw_oos") for t in rb.load_set([DATA / f], TASKS_FIRST_USER)]
    fresh = rb.load_set([DATA / "lr_regret_fresh_tasks"], TASKS_FRESH)
    return {"tuning": tuning, "fresh": fresh,
            "result": rb.analyse(tuning, {"held_out": held, "first_user": first_user, "fresh": fresh})}


def test_the_stored_runs_hold_every_set_the_docs_score(stored):
    assert [t.name for t in stored["tuning"]] == [t.name for t in TASKS_CPU]
    assert all(len(t.jobs) == 8 for t in stored["tuning"])  # four sets of sweep seeds, two jobs each


def test_blending_with_a_peer_is_chosen_no_better_than_ours_alone_as_the_docs_say(stored):
    result = stored["result"]
    rows = {r["variant"]: r for r in result["rows"]}
    ours = rows["ours alone"]
    assert round(ours["margin"], 2) == 1.53 and round(ours["loo"], 2) == 0.42
    assert (round(ours["first_user"]["one"], 2), round(ours["first_user"]["three"], 2)) == (0.65, 0.33)
    assert round(ours["held_out"]["three"], 2) == 0.96
    nested = [n["regret"] for n in result["nested"]]
    assert round(float(np.mean(nested)), 2) == 0.57
    assert round(float(np.mean([n["ours"] for n in result["nested"]])), 2) == 0.42
    # chosen on all five: the even blend with steepest, which does better on the first user with one
    # seed and worse held out and with three seeds on the first user (the product's default there)
    chosen = rows[result["chosen_on_all_five"]]
    assert result["chosen_on_all_five"] == "ours^0.5 x steepest^0.5"
    assert round(chosen["loo"], 2) == 0.28
    assert chosen["held_out"]["three"] > ours["held_out"]["three"]
    assert chosen["first_user"]["three"] > ours["first_user"]["three"]
    assert chosen["first_user"]["one"] < ours["first_user"]["one"]
    assert chosen["held_out"]["sd_ln"] < ours["held_out"]["sd_ln"]  # it does spread less
    text = rb.table(result)
    assert text.count("\n| ours") == len(result["rows"]) and "nested: 0.57 against ours alone 0.42" in text
    assert not any(math.isnan(r["loo"]) for r in result["rows"])


def test_the_rule_registered_before_the_fresh_tasks_keeps_ours_alone_as_the_docs_say(stored):
    """The rule: a blend replaces ours alone only if, on the fresh tasks, its mean regret is lower with one
    seed and with three, and it reads over 0.5 with three seeds on no task where ours alone is within."""
    rows = {r["variant"]: r for r in stored["result"]["rows"]}
    ours = rows["ours alone"]
    assert [t.name for t in stored["fresh"]] == [t.name for t in TASKS_FRESH]
    assert all(len(t.jobs) == 2 for t in stored["fresh"])
    for name, margin in (("ours^0.5 x min_loss^0.5", 2.37), ("ours^0.5 x valley^0.5", 1.36)):
        blend = rows[name]
        assert round(blend["margin"], 2) == margin  # fixed before the fresh sweeps: learned on the five
        loses = blend["fresh"]["one"] >= ours["fresh"]["one"] or blend["fresh"]["three"] >= ours["fresh"]["three"]
        assert loses, name
        assert blend["fresh"]["sd_ln"] < ours["fresh"]["sd_ln"]  # though it spreads less
    per_task = {t.name: (round(rb.mean_regret(t, t.picks(rb.OURS), 1.53), 2),
                         round(rb.mean_regret(t, t.job_picks(rb.OURS), 1.53), 2)) for t in stored["fresh"]}
    assert per_task == {"fresh_gray_small_cnn_b64": (0.84, 0.77), "fresh_digits_resnet_fast": (73.87, 73.87),
                        "fresh_cifar12_tiny_cnn_adamw_b64": (0.22, 0.07)}
