"""Schedules: every policy through the same checks, then each against torch and Smith's closed form."""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from clrcore.schedules import (
    Schedule,
    ScheduledLR,
    build_schedule,
    preview,
    schedule_from_spec,
    set_hyperparams,
    steps_from_unit,
)
from clrcore.specs import TrainSpec

BASE, MAX, STEP, TOTAL = 0.01, 0.1, 5, 40
CLOSE = 1e-12


def make(policy: str, **kwargs) -> Schedule:
    args = {"base_lr": BASE, "max_lr": MAX, "step_size": STEP, "total_steps": TOTAL} | kwargs
    return build_schedule(policy, **args)


def sgd(momentum: float = 0.9) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0, momentum=momentum)


def drive(scheduler, steps: int) -> list[float]:
    """LRs the scheduler sets for `steps` optimizer steps (no gradients, so no parameter work)."""
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


# build_schedule kwargs, and the lowest LR the policy may reach
POLICY_CASES = [
    pytest.param({"policy": "triangular"}, BASE, id="triangular"),
    pytest.param({"policy": "triangular2"}, BASE, id="triangular2"),
    pytest.param({"policy": "exp_range", "gamma": 0.99}, BASE, id="exp_range"),
    pytest.param({"policy": "one_cycle", "one_cycle_preset": "torch"}, MAX / 25 / 1e4, id="one_cycle_torch"),
    pytest.param({"policy": "one_cycle", "one_cycle_preset": "fastai"}, MAX / 1e5, id="one_cycle_fastai"),
    pytest.param(
        {"policy": "one_cycle", "anneal": "linear", "pct_start": 0.4}, MAX / 25 / 1e4, id="one_cycle_linear"
    ),
    pytest.param({"policy": "constant"}, MAX, id="constant"),
]


@pytest.mark.parametrize(("kwargs", "lowest"), POLICY_CASES)
def test_every_policy_is_bounded_picklable_resumable_and_cycles_momentum_inversely(kwargs, lowest):
    schedule = make(cycle_momentum=True, **kwargs)
    lrs = [schedule.lr(s) for s in range(TOTAL)]
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs)
    assert all(lowest - MAX * CLOSE <= lr <= MAX * (1 + CLOSE) for lr in lrs)

    clone = pickle.loads(pickle.dumps(schedule))
    assert clone == schedule and [clone.lr(s) for s in range(TOTAL)] == lrs

    first = ScheduledLR(sgd(), schedule)
    assert drive(first, 13) == lrs[:13]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = ScheduledLR(sgd(), schedule)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert drive(second, TOTAL - 13) == drive(first, TOTAL - 13) == lrs[13:]

    moms = [schedule.momentum(s) for s in range(TOTAL)]
    if kwargs["policy"] == "constant":
        assert moms == [None] * TOTAL
        return
    assert all(0.85 - CLOSE <= m <= 0.95 + CLOSE for m in moms)
    for i in range(TOTAL - 1):
        lr_up, mom_up = lrs[i + 1] - lrs[i], moms[i + 1] - moms[i]
        assert lr_up * mom_up <= 1e-15, f"momentum follows the LR at step {i}"
    assert moms.index(min(moms)) == lrs.index(max(lrs))


@pytest.mark.parametrize(("mode", "gamma"), [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.97)])
def test_smith_modes_match_torch_cycliclr_over_three_cycles(mode, gamma):
    steps = 7 * STEP  # three and a half cycles
    ours = make(mode, gamma=gamma if mode == "exp_range" else None)
    optimizer = sgd()
    theirs = CyclicLR(optimizer, BASE, MAX, step_size_up=STEP, step_size_down=STEP, mode=mode, gamma=gamma,
                      cycle_momentum=False)
    expected = drive(theirs, steps)
    assert [ours.lr(s) for s in range(steps)] == pytest.approx(expected, rel=CLOSE)
    assert ours.cycle_length() == 2 * STEP


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_smith_modes_match_the_papers_closed_form(mode):
    gamma = 0.98
    schedule = make(mode, gamma=gamma if mode == "exp_range" else None)
    for it in range(8 * STEP):
        cycle = math.floor(1 + it / (2 * STEP))
        x = abs(it / STEP - 2 * cycle + 1)
        scale = {"triangular": 1.0, "triangular2": 1 / 2 ** (cycle - 1), "exp_range": gamma**it}[mode]
        assert schedule.lr(it) == pytest.approx(BASE + (MAX - BASE) * max(0.0, 1 - x) * scale, rel=CLOSE)


@pytest.mark.parametrize(("total", "kwargs", "torch_kwargs"), [
    (47, {"one_cycle_preset": "torch"}, {}),
    (30, {"pct_start": 0.25, "anneal": "linear", "div_factor": 10.0, "final_div_factor": 100.0},
     {"pct_start": 0.25, "anneal_strategy": "linear", "div_factor": 10.0, "final_div_factor": 100.0}),
])
def test_one_cycle_matches_torch_onecyclelr_step_by_step(total, kwargs, torch_kwargs):
    ours = make("one_cycle", total_steps=total, cycle_momentum=True, **kwargs)
    optimizer = sgd()
    theirs = OneCycleLR(optimizer, max_lr=MAX, total_steps=total, **torch_kwargs)
    for step in range(total):
        assert ours.lr(step) == optimizer.param_groups[0]["lr"]
        assert ours.momentum(step) == optimizer.param_groups[0]["momentum"]
        optimizer.step()
        theirs.step()
    assert ours.cycle_length() is None


def test_fastai_preset_warms_up_for_a_quarter_and_ends_at_max_over_1e5():
    # the preset wins over the explicit one-cycle parameters
    schedule = make("one_cycle", total_steps=100, one_cycle_preset="fastai", pct_start=0.9, anneal="linear")
    lrs = [schedule.lr(s) for s in range(100)]
    assert lrs[0] == pytest.approx(MAX / 25)
    assert max(lrs) == pytest.approx(MAX) and lrs.index(max(lrs)) == 24
    assert lrs[12] == pytest.approx((MAX / 25 + MAX) / 2)  # cosine: halfway in time is halfway in value
    assert lrs[-1] == pytest.approx(MAX / 1e5)


def test_final_amplitude_derives_gamma_for_exp_range():
    total = 3 * 2 * STEP + STEP  # a peak lands on total_steps
    schedule = make("exp_range", total_steps=total, final_amplitude=0.1)
    assert schedule.gamma == pytest.approx(0.1 ** (1 / total))
    assert schedule.lr(total) == pytest.approx(BASE + (MAX - BASE) * 0.1)
    with pytest.raises(ValueError, match="not both"):
        make("exp_range", gamma=0.9, final_amplitude=0.1)


def test_scheduled_lr_cycles_sgd_momentum_and_adam_beta1():
    schedule = make("triangular", cycle_momentum=True)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1.0, betas=(0.9, 0.99))
    for optimizer, read in [(sgd(), lambda g: g["momentum"]), (adam, lambda g: g["betas"][0])]:
        scheduler = ScheduledLR(optimizer, schedule)
        for step in range(2 * STEP):
            assert read(optimizer.param_groups[0]) == schedule.momentum(step)
            optimizer.step()
            scheduler.step()
    assert adam.param_groups[0]["betas"][1] == 0.99


def _momentum_trace(scheduler: ScheduledLR, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["momentum"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_momentum_after_a_mid_cycle_resume_equals_the_uninterrupted_run():
    schedule = make("triangular", cycle_momentum=True)
    whole = _momentum_trace(ScheduledLR(sgd(), schedule), TOTAL)
    first = ScheduledLR(sgd(), schedule)
    _momentum_trace(first, 7)  # mid-way up the second half of the first cycle
    resumed = ScheduledLR(sgd(momentum=0.5), schedule)  # a fresh optimizer with some other momentum
    resumed.load_state_dict(first.state_dict())
    assert _momentum_trace(resumed, TOTAL - 7) == whole[7:]


def test_a_json_round_tripped_state_resumes_without_a_schedule_warning(caplog: pytest.LogCaptureFixture):
    schedule = make("one_cycle", cycle_momentum=True)
    first = ScheduledLR(sgd(), schedule)
    drive(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # tuples come back as lists
    with caplog.at_level(logging.WARNING, logger="clrcore.schedules"):
        ScheduledLR(sgd(), schedule).load_state_dict(state)
        assert not caplog.records
        ScheduledLR(sgd(), make("triangular")).load_state_dict(state)
    assert "different schedule" in caplog.text


def test_momentum_cycling_turns_itself_off_with_one_warning_without_momentum():
    optimizer = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scheduler = ScheduledLR(optimizer, make("triangular", cycle_momentum=True))
        drive(scheduler, 3)
        assert set_hyperparams(optimizer, 0.5, 0.9) is False
    assert len(caught) == 1 and "momentum cycling is off" in str(caught[0].message)
    assert not scheduler.momentum_on and optimizer.param_groups[0]["lr"] == 0.5


def test_set_hyperparams_sets_lr_everywhere_and_reports_momentum():
    optimizer = sgd()
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})
    assert set_hyperparams(optimizer, 0.3, None) is False
    assert set_hyperparams(optimizer, 0.2, 0.8) is True
    assert [(g["lr"], g["momentum"]) for g in optimizer.param_groups] == [(0.2, 0.8), (0.2, 0.8)]


def test_steps_from_unit_converts_epochs_and_keeps_at_least_one():
    assert steps_from_unit(2, "epochs", 10) == 20
    assert steps_from_unit(7.5, "epochs", 3) == 23
    assert steps_from_unit(0.01, "epochs", 3) == 1
    assert steps_from_unit(12, "iterations", 3) == 12
    with pytest.raises(ValueError):
        steps_from_unit(1, "batches", 3)


def test_schedule_from_spec_reads_the_schedule_fields():
    spec = TrainSpec(policy="triangular2", step_size=2, step_unit="epochs", epochs=8, cycle_momentum=True)
    schedule = schedule_from_spec(spec, base_lr=BASE, max_lr=MAX, iters_per_epoch=10)
    assert schedule == make("triangular2", step_size=20, total_steps=80, cycle_momentum=True)
    one_cycle = TrainSpec(policy="one_cycle", one_cycle_preset="torch", epochs=4)
    assert schedule_from_spec(one_cycle, base_lr=BASE, max_lr=MAX, iters_per_epoch=5) == make(
        "one_cycle", total_steps=20, one_cycle_preset="torch")


def test_preview_lists_steps_lr_and_momentum():
    series = preview(make("triangular", cycle_momentum=True), 2 * STEP)
    assert series["step"][:3] == [0, 1, 2] and series["lr"][STEP] == MAX and series["momentum"][STEP] == 0.85
    assert preview(make("constant"), 3) == {"step": [0, 1, 2], "lr": [MAX] * 3, "momentum": []}


@pytest.mark.parametrize("kwargs", [
    {"policy": "cosine"}, {"policy": "triangular", "base_lr": MAX}, {"policy": "one_cycle", "anneal": "step"},
    {"policy": "one_cycle", "one_cycle_preset": "keras"}, {"policy": "triangular", "step_size": 0},
])
def test_build_schedule_rejects_inconsistent_parameters(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)
