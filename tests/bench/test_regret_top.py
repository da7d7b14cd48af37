"""bench/regret_top.py: the top, the fit on every stored task, and the registered check's rule."""

from __future__ import annotations

import numpy as np
import pytest

from bench import regret_top as rt
from bench.regret_blend import TaskRuns
from bench.regret_variants import top_lr


def test_the_top_is_where_the_smoothed_loss_is_back_at_its_start_or_the_curves_end():
    x = np.geomspace(1e-4, 10, 301)
    d = np.log10(x)
    smooth = np.where(d < -1, 2.0 - 0.5 * (d + 4) / 3, 1.5 + (d + 1) ** 2)  # down to 1.5 at 0.1, then up
    top = top_lr(x, smooth, smooth)
    assert top == pytest.approx(10 ** (-1 + np.sqrt(0.5)), rel=0.02)  # back at 2.0
    never = np.where(d < -1, smooth, 1.5 + 0.1 * (d + 1))  # rises, but never back at its start
    assert top_lr(x, never, never) == x[-1]


def _task(name: str, regret: float, job_picks: list[list[dict[str, float]]]) -> TaskRuns:
    return TaskRuns(name, lambda lrs: np.full(np.shape(lrs), regret), job_picks)


def test_the_registered_rule_needs_lower_means_and_no_task_spoilt():
    picks = [[{"ours": 1.0, "top": 10.0}] * 3] * 2
    # a constant regret per task: the candidate and ours read the same, so "lower" fails
    same = rt.registered_check([_task("a", 0.3, picks)])
    assert same["lower"] is False and same["replaces"] is False and same["spoils"] == []
    assert same["per_task"][0]["apart"] == [1.0, 1.0]

    def by_lr(lrs: np.ndarray) -> np.ndarray:  # regret grows with the LR: the lower pick wins
        return np.log10(np.asarray(lrs)) + 2.0

    # the candidate picks cliff^0.65 x top^0.35 / 3.57 = 10^0.35 / 3.57 ~ 0.63, ours 1 / 1.5 ~ 0.67
    better = rt.registered_check([TaskRuns("b", by_lr, picks)])
    assert better["lower"] and better["replaces"]
    assert better["mean"]["candidate"][0] < better["mean"]["ours"][0]


@pytest.fixture(scope="module")
def stored() -> list[TaskRuns]:
    return rt.stored_tasks()


def test_the_fit_on_every_stored_task_is_the_registered_candidate(stored):
    assert len(stored) == 15
    w, m = rt.fit(stored)
    assert (w, round(m, 2)) == rt.CANDIDATE
    _, m0 = rt.fit(stored, weights=[0.0])
    assert round(m0, 2) == 1.52  # ours' constant margin fitted the same way (1.5 shipped)


def test_leaving_out_the_task_where_the_top_loses_and_one_where_it_wins_as_the_docs_say(stored):
    picked = [t for t in stored if t.name in ("cifar_small_cnn", "digits_tiny_cnn")]
    rest = {t.name: [k for k in stored if k is not t] for t in picked}
    for t in picked:
        w, m = rt.fit(rest[t.name])
        _, m0 = rt.fit(rest[t.name], weights=[0.0])
        regret = rt.mean_regret(t, t.picks(rt.top_variant(w)), m)
        ours = rt.mean_regret(t, t.picks(rt.top_variant(0.0)), m0)
        expected = {"cifar_small_cnn": (1.12, 0.49), "digits_tiny_cnn": (0.09, 0.42)}[t.name]
        assert (round(regret, 2), round(ours, 2)) == expected


def test_the_goals_rule_weighs_how_many_tasks_are_within_half_a_point_not_which_ones():
    picks = [[{"ours": 1.0, "top": 10.0}] * 3] * 2  # the candidate picks 10^0.35 / 3.57 = 0.627, ours 0.667

    def task(at: float, slope: float) -> TaskRuns:  # regret `slope` points a decade away from `at`, one side
        side = 1 if slope > 0 else -1
        return TaskRuns(f"{at}", lambda lrs: np.maximum(abs(slope) * side * np.log10(np.asarray(lrs) / at), 0), picks)

    # below its best (0.86) only ours is within 0.5; above it (0.55, steeper) only the candidate
    tasks = [task(0.86, -4.0), task(0.55, 8.0)]
    check = rt.goals_check(tasks)
    assert [round(r["candidate"][1], 2) for r in check["per_task"]] == [0.55, 0.46]
    assert [round(r["ours"][1], 2) for r in check["per_task"]] == [0.44, 0.67]
    assert check["lower"] and check["within"] == {"candidate": 1, "ours": 1} and check["replaces"]
    assert rt.registered_check(tasks)["spoils"] == ["0.86"]  # the fresh2 rule counted only the task lost


def test_the_check_registered_before_the_second_fresh_batch_keeps_ours_as_the_docs_say():
    from bench.lr_regret import TASKS_FRESH2
    from bench.regret_blend import load_set

    check = rt.registered_check(load_set([rt.DATA / "lr_regret_fresh2_tasks"], TASKS_FRESH2))
    means = {k: [round(v, 2) for v in check["mean"][k]] for k in ("candidate", "ours")}
    assert means == {"candidate": [0.39, 0.31], "ours": [0.7, 0.55]}  # the candidate halves the mean
    assert check["lower"] and check["spoils"] == ["fresh2_cifar16_small_cnn_nesterov"]  # 0.54 against 0.33
    assert not check["replaces"]


def test_the_check_registered_before_the_third_fresh_batch_keeps_ours_as_the_docs_say():
    from bench.lr_regret import TASKS_FRESH3
    from bench.regret_blend import load_set

    check = rt.goals_check(load_set([rt.DATA / "lr_regret_fresh3_tasks"], TASKS_FRESH3))
    means = {k: [round(v, 2) for v in check["mean"][k]] for k in ("candidate", "ours")}
    assert means == {"candidate": [1.64, 1.64], "ours": [1.53, 1.58]}  # gray resnet_fast with AdamW: 4.8 and 4.4
    assert check["within"] == {"candidate": 2, "ours": 2} and not check["lower"] and not check["replaces"]
