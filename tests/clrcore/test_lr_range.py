"""The LR sweep: ladder, smoothing, stop rules, accumulation, AMP skips, validation, restore."""

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from clrcore.lr_choice import RangeTestChoice
from clrcore.lr_range import lr_ladder, range_test, state_checksum
from clrcore.suggest import debiased_ema, picks_from_reading, read_curve, recipe

F = nn.functional


@pytest.fixture(scope="module")
def digits():
    """sklearn digits as tensors: (train batches of 64, test x, test y)."""
    d = load_digits()
    x = torch.tensor(d.data / 16, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    train = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1400, 64)]
    return train, x[1400:], y[1400:]


def mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    mid = [nn.BatchNorm1d(32), nn.Dropout(0.1)] if bn else []
    return nn.Sequential(nn.Linear(64, 32), *mid, nn.ReLU(), nn.Linear(32, 10))


class Scripted(nn.Module):
    """A 'model' whose loss is the next value of a script, so the stop rules can be tested exactly."""

    def __init__(self, losses):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.losses = list(losses)
        self.calls = 0

    def forward(self, x):
        value = self.losses[min(self.calls, len(self.losses) - 1)]
        self.calls += 1
        return self.w * 0 + value


def scripted_run(losses, **kw):
    model = Scripted(losses)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.zeros(1), torch.zeros(1))]
    return range_test(model, opt, lambda out, y: out, batches, **kw)


# ---------------------------------------------------------------------------- ladder and log


def test_exp_ladder_includes_both_ends_with_a_constant_ratio():
    lrs = lr_ladder(1e-7, 10.0, 100, "exp")
    assert len(lrs) == 100 and lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10.0)
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)


def test_linear_ladder_includes_both_ends_with_a_constant_step():
    lrs = lr_ladder(0.01, 1.0, 12, "linear")
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(lrs), (1.0 - 0.01) / 11)


def test_log_reads_back_the_applied_lr_and_momentum_per_group():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "momentum": 0.5}],
        lr=0.1,
        momentum=0.9,
    )
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    res = range_test(model, opt, F.cross_entropy, batches, start_lr=1e-4, end_lr=1e-2, num_iter=10)
    assert res.stop_reason == "end_lr"
    np.testing.assert_allclose([r["lr"] for r in res.log], lr_ladder(1e-4, 1e-2, 10))
    assert all(r["lrs"][0] == r["lrs"][1] == r["lr"] for r in res.log)
    assert all(r["momentum"] == [0.9, 0.5] for r in res.log)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]  # restored


def test_param_groups_keep_their_initial_lr_ratios_along_the_ladder():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01},
                           {"params": model[1].parameters(), "lr": 0.1}], lr=0.1)  # fmt: skip
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    res = range_test(model, opt, F.cross_entropy, batches, start_lr=1e-4, end_lr=1e-2, num_iter=10)
    ladder = lr_ladder(1e-4, 1e-2, 10)
    np.testing.assert_allclose([r["lrs"][0] for r in res.log], ladder)
    np.testing.assert_allclose([r["lrs"][1] for r in res.log], 10 * ladder)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]  # restored


def test_first_smoothed_value_equals_the_raw_loss_and_ema_is_debiased():
    losses = [3.0, 2.0, 2.5, 1.0, 1.5, 1.2]
    res = scripted_run(losses, num_iter=6, smooth=0.9)
    assert res.log[0]["smoothed"] == res.log[0]["loss"] == 3.0
    np.testing.assert_allclose([r["smoothed"] for r in res.log], debiased_ema(losses, 0.9))


# ---------------------------------------------------------------------------- stop rules


def test_divergence_fires_exactly_when_smoothed_exceeds_factor_times_best():
    # smooth=0 makes smoothed == raw: best is 0.5, so 2.0 (= 4x) is allowed and 2.01 stops
    res = scripted_run([1.0, 0.5, 1.9, 2.0, 2.01, 0.1, 0.1], num_iter=7, smooth=0.0, diverge_factor=4.0)
    assert res.stop_reason == "diverged"
    assert len(res.log) == 5 and res.stopped_at == (5, res.log[-1]["lr"])


def test_divergence_on_the_smoothed_curve_matches_the_formula():
    losses = [2.0, 1.0, 0.8, 0.7, 2.0, 5.0, 9.0, 20.0, 40.0, 80.0, 160.0, 320.0]
    smoothed = debiased_ema(losses, 0.5)
    best = np.minimum.accumulate(smoothed)
    expected = next(i for i in range(1, len(losses)) if smoothed[i] > 3.0 * best[i - 1]) + 1
    res = scripted_run(losses, num_iter=len(losses), smooth=0.5, diverge_factor=3.0)
    assert res.stop_reason == "diverged" and res.stopped_at[0] == expected


def test_nan_loss_stops_and_result_stays_json_safe(tmp_path):
    res = scripted_run([1.0, 0.9, float("nan"), 0.5], num_iter=4)
    assert res.stop_reason == "nan" and res.stopped_at[0] == 3
    payload = res.to_dict()
    json.dumps(payload, allow_nan=False)
    assert payload["log"][-1]["loss"] is None
    res.save_log(tmp_path / "log.csv")
    res.save_log(tmp_path / "log.json")
    assert len(json.loads((tmp_path / "log.json").read_text())) == 3
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("step,iteration,lr")
    with pytest.raises(ValueError):
        res.save_log(tmp_path / "log.txt")


def test_should_stop_cancels_and_on_step_sees_every_step():
    seen = []
    res = scripted_run([1.0] * 20, num_iter=20, on_step=seen.append, should_stop=lambda: len(seen) >= 4)
    assert res.stop_reason == "stopped" and len(res.log) == 4
    assert [r["step"] for r in seen] == [1, 2, 3, 4] and seen[0]["num_iter"] == 20


def test_data_that_yields_nothing_is_reported():
    model = Scripted([1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = range_test(model, opt, lambda out, y: out, [], num_iter=5)
    assert res.stop_reason == "data_exhausted" and res.log == [] and res.recommendation is None
    one_shot = ((torch.zeros(1), torch.zeros(1)) for _ in range(3))
    res = range_test(Scripted([1.0]), opt, lambda out, y: out, one_shot, num_iter=5)
    assert res.stop_reason == "data_exhausted" and len(res.log) == 3


def test_short_data_is_cycled_until_the_ladder_ends():
    res = scripted_run([1.0], num_iter=7)  # one batch, seven steps
    assert res.stop_reason == "end_lr" and len(res.log) == 7


# ---------------------------------------------------------------------------- real steps only


class Counting:
    def __init__(self, batches):
        self.batches, self.served = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.served += 1
            yield b


def test_accumulation_takes_k_micro_batches_per_step_and_averages_their_loss():
    model = Scripted([1.0, 2.0, 3.0, 4.0, 5.0, 6.0] * 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = Counting([(torch.zeros(1), torch.zeros(1))] * 4)
    res = range_test(model, opt, lambda out, y: out, data, num_iter=10, accumulation_steps=3, smooth=0.0)
    assert len(res.log) == 10 and data.served == 30
    assert [r["loss"] for r in res.log[:2]] == pytest.approx([2.0, 5.0])
    np.testing.assert_allclose([r["lr"] for r in res.log], lr_ladder(1e-7, 10.0, 10))


def test_amp_skipped_steps_are_logged_but_do_not_advance_the_ladder(digits):
    train, _, _ = digits
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scale_before = scaler.get_scale()
    calls = {"n": 0}

    def poison(grad):  # inf gradients on the 3rd and 4th backward passes, like an fp16 overflow
        calls["n"] += 1
        return grad * math.inf if calls["n"] in (3, 4) else grad

    handle = model[0].weight.register_hook(poison)
    try:
        res = range_test(
            model, opt, F.cross_entropy, train, start_lr=1e-4, end_lr=1e-1, num_iter=8, scaler=scaler
        )
    finally:
        handle.remove()
    skipped = [r["skipped"] for r in res.log]
    assert skipped == [False, False, True, True] + [False] * 6
    assert [r["iteration"] for r in res.log][:5] == [1, 2, 3, 3, 3]
    assert res.log[2]["lr"] == res.log[3]["lr"] == res.log[4]["lr"]
    assert res.log[2]["smoothed"] is None
    np.testing.assert_allclose([r["lr"] for r in res.log if not r["skipped"]], lr_ladder(1e-4, 1e-1, 8))
    assert scaler.get_scale() == scale_before
    assert any("skipped by AMP" in w for w in res.warnings)


# ---------------------------------------------------------------------------- validation and restore


def test_validation_mode_records_every_val_every_steps(digits):
    train, xt, yt = digits
    model = mlp(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    val = [(xt[:64], yt[:64]), (xt[64:128], yt[64:128])]
    res = range_test(
        model,
        opt,
        F.cross_entropy,
        train,
        start_lr=1e-4,
        end_lr=1.0,
        num_iter=20,
        val_batches=val,
        val_every=5,
    )
    assert [v["step"] for v in res.val_log] == [5, 10, 15, 20]
    assert [v["lr"] for v in res.val_log] == [res.log[s - 1]["lr"] for s in (5, 10, 15, 20)]
    assert all(0 <= v["val_acc"] <= 1 and v["val_loss"] > 0 for v in res.val_log)
    assert model.training


def test_validation_read_mode_has_the_rules_read_the_validation_curve(digits):
    train, xt, yt = digits
    val = [(xt[:64], yt[:64])]
    model = mlp(bn=True)
    res = range_test(model, torch.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy, train,
                     start_lr=1e-4, end_lr=10.0, num_iter=60, val_batches=val, val_every=2, read="validation")
    assert len(res.val_log) == 30 and res.settings["read"] == "validation"
    expected = picks_from_reading(read_curve([v["lr"] for v in res.val_log], [v["val_loss"] for v in res.val_log]))
    assert res.suggestions == expected


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    lambda p: torch.optim.AdamW(p, lr=1e-3),
], ids=["sgd", "adamw"])  # fmt: skip
def test_every_state_and_rng_is_restored(digits, make_opt):
    train, _, _ = digits
    model = mlp(bn=True)
    opt = make_opt(model.parameters())
    F.cross_entropy(model(train[0][0]), train[0][1]).backward()
    opt.step()  # so there is optimizer state and BN statistics to restore
    model_before = copy.deepcopy(model.state_dict())
    opt_before = copy.deepcopy(opt.state_dict())
    grads_before = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    checksum_before = state_checksum(model, opt)  # covers the RNG states too, so taken after seeding

    res = range_test(model, opt, F.cross_entropy, train, start_lr=1e-4, end_lr=10.0, num_iter=30)

    assert res.restored and res.checksum == checksum_before == state_checksum(model, opt)
    after = (torch.rand(3), np.random.rand(3), random.random())
    torch.set_rng_state(rng[0])
    np.random.set_state(rng[1])
    random.setstate(rng[2])
    assert torch.equal(after[0], torch.rand(3))  # as if the test had not run
    assert np.array_equal(after[1], np.random.rand(3)) and after[2] == random.random()
    state = model.state_dict()
    assert "1.running_mean" in state
    for name, tensor in model_before.items():
        assert torch.equal(state[name], tensor), name
    opt_after = opt.state_dict()
    assert opt_after["param_groups"] == opt_before["param_groups"]
    for pid, entry in opt_before["state"].items():
        for key, value in entry.items():
            assert torch.equal(opt_after["state"][pid][key], value), (pid, key)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads_before, strict=True))


def test_a_restore_that_does_not_take_raises(digits):
    train, _, _ = digits
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt.load_state_dict = lambda state: None  # the momentum buffers would survive the sweep
    with pytest.raises(RuntimeError, match="restore failed"):
        range_test(model, opt, F.cross_entropy, train, start_lr=1e-3, end_lr=0.1, num_iter=5)


def _draws_from_every_rng(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy that also advances numpy's and python's RNGs, as a user's augmentation might."""
    np.random.rand()
    random.random()
    return F.cross_entropy(out, y)


@pytest.mark.parametrize("forgotten", ["torch.set_rng_state", "numpy.random.set_state", "random.setstate"])
def test_a_restore_that_forgets_an_rng_raises(digits, monkeypatch, forgotten):
    train, _, _ = digits
    model = mlp(bn=True)  # its dropout advances the torch RNG
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monkeypatch.setattr(forgotten, lambda state: None)
    with pytest.raises(RuntimeError, match="restore failed"):
        range_test(model, opt, _draws_from_every_rng, train, start_lr=1e-3, end_lr=0.1, num_iter=5)


def test_the_checksum_covers_the_grad_scaler_state():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = state_checksum(model, opt, scaler)
    assert state_checksum(model, opt, scaler) == before
    scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0**5})  # as after a few AMP skips
    assert state_checksum(model, opt, scaler) != before


# ---------------------------------------------------------------------------- end to end


def test_digits_recommendation_trains_well_above_chance(digits):
    train, xt, yt = digits
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    res = range_test(model, opt, F.cross_entropy, train, start_lr=1e-5, end_lr=10.0, num_iter=100)
    rec = res.recommendation
    assert rec is not None and 1e-3 <= rec.max_lr <= 3.0, res.suggestions
    assert not res.low_confidence
    plan = recipe(rec, iters_per_epoch=len(train), epochs_hint=12)  # the whole recipe, not one number
    assert (plan["base_lr"], plan["max_lr"], plan["policy"]) == (rec.base_lr, rec.max_lr, "triangular")
    assert plan["step_size"] == plan["step_epochs"] * len(train) and 2 <= plan["step_epochs"] <= 8
    assert plan["epochs"] == 12 == 2 * plan["cycles"] * plan["step_epochs"]  # ends on a cycle minimum

    # one triangular cycle, base -> max -> base, over four epochs
    steps, k = 4 * len(train), 0
    for _ in range(4):
        for x, y in train:
            frac = 1 - abs(2 * k / steps - 1)
            for group in opt.param_groups:
                group["lr"] = rec.base_lr + (rec.max_lr - rec.base_lr) * frac
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            k += 1
    model.eval()
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    assert accuracy > 0.8, (accuracy, rec)  # chance is 0.1; this run reaches about 0.9


def test_a_sweep_without_a_recommendation_has_no_recipe():
    res = scripted_run([1.0 + 0.01 * i for i in range(20)], num_iter=10, start_lr=1e-3, end_lr=1.0)
    choice = RangeTestChoice.from_result(res, iters_per_epoch=10, epochs_hint=None)
    assert res.recommendation is None and choice.recipe is None and choice.max_lr is None


def test_bf16_autocast_sweep_runs_and_restores(digits):
    train, _, _ = digits
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = state_checksum(model, opt)
    res = range_test(
        model,
        opt,
        F.cross_entropy,
        train,
        start_lr=1e-3,
        end_lr=1.0,
        num_iter=10,
        autocast_dtype=torch.bfloat16,
    )
    assert len(res.log) == 10 and all(math.isfinite(r["loss"]) for r in res.log)
    assert res.checksum == before


# ---------------------------------------------------------------------------- reads without per-step syncs


def _comparable(result):
    return json.dumps(result.to_dict(), sort_keys=True)  # NaN as null: NaN != NaN in a plain comparison


@pytest.mark.parametrize("sync_every", [3, 7, 50])
def test_reading_losses_in_batches_gives_the_same_sweep(digits, sync_every):
    train, x_test, y_test = digits

    def sweep(**kw):
        model = mlp(bn=True)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        return range_test(model, opt, F.cross_entropy, train, start_lr=1e-4, end_lr=10.0, num_iter=60,
                          val_batches=[(x_test, y_test)], val_every=5, **kw), model

    (expected, model_a), (got, model_b) = sweep(), sweep(sync_every=sync_every)
    assert _comparable(got) == _comparable(expected)
    assert len(expected.log) > 20 and len(expected.val_log) > 3
    assert state_checksum(model_a, torch.optim.SGD(model_a.parameters(), lr=1e-3)) == \
        state_checksum(model_b, torch.optim.SGD(model_b.parameters(), lr=1e-3))


@pytest.mark.parametrize("losses", [[1.0, 0.9, 0.8, float("nan"), 0.5, 0.4],
                                    [1.0, 0.9, 0.8, 0.7, 5.0, 9.0, 9.0, 9.0, 9.0, 9.0]])
def test_batched_reads_stop_at_the_same_step_and_drop_the_steps_run_past_it(losses):
    expected = scripted_run(losses, num_iter=10, smooth=0.0)
    got = scripted_run(losses, num_iter=10, smooth=0.0, sync_every=4)
    assert _comparable(got) == _comparable(expected)
    assert expected.stop_reason in ("nan", "diverged") and len(got.log) < 10


def test_batched_reads_leave_the_device_running_ahead_of_the_host():
    # with sync_every=5 the host learns of step 1 only after step 5 ran: no read after every step
    model = Scripted([1.0] * 20)
    seen = []
    range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda out, y: out,
               [(torch.zeros(1), torch.zeros(1))], num_iter=10, sync_every=5,
               on_step=lambda record: seen.append((record["step"], model.calls)))
    assert seen == [(step, 5 if step <= 5 else 10) for step in range(1, 11)]
