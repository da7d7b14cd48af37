"""Seeds branched from one sweep: the state at the branch point carries over exactly, each branch then
draws its own batches, and everything is put back afterwards (no training beyond a few sweeps of an MLP)."""

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from clrcore.lr_range import lr_ladder, range_test, state_checksum

F = nn.functional
BRANCH_AT = 20


@pytest.fixture(scope="module")
def batches():
    """sklearn digits in 22 batches of 64, and 2 held-out batches for the validation mode."""
    d = load_digits()
    x = torch.tensor(d.data / 16, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    cut = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1536, 64)]
    return cut[:22], cut[22:]


def net() -> tuple[nn.Module, torch.optim.Optimizer]:
    """BatchNorm (buffers), dropout (the global RNG) and momentum (optimizer state): all must carry over."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Dropout(0.1), nn.ReLU(), nn.Linear(32, 10))
    return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def sweep(train, branches=(), branch_at=BRANCH_AT, **kw):
    model, opt = net()
    before = state_checksum(model, opt)
    result = range_test(model, opt, F.cross_entropy, train, start_lr=1e-4, end_lr=10.0, num_iter=60,
                        branches=branches, branch_at=branch_at if branches else 0, **kw)
    assert state_checksum(model, opt) == before  # the branches are put back too
    return result


def rows(result):
    return [(r["step"], r["iteration"], r["lr"], r["loss"], r["smoothed"]) for r in result.log]


def test_a_branch_fed_the_batches_the_sweep_went_on_with_retraces_it_exactly(batches):
    train, held = batches
    # after 20 steps the sweep has taken train[:20]; it goes on with train[20:], then from the start again
    rest = train[BRANCH_AT:] + train[:BRANCH_AT]
    result = sweep(train, branches=[lambda: rest, lambda: rest], val_batches=held, val_every=5)
    assert len(result.branches) == 2  # restoring the branch point twice gives the same state twice
    for branch in result.branches:
        assert rows(branch) == rows(result)  # weights, momentum, BN, dropout's RNG and the EMA all carried over
        assert branch.val_log == result.val_log and branch.stop_reason == result.stop_reason
    assert result.settings["branch_at"] == BRANCH_AT and len(result.log) > 40


def test_branches_share_the_first_steps_then_follow_their_own_batches_up_the_same_ladder(batches):
    train, _ = batches
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1)).tolist()
    seen = []
    result = sweep(train, branches=[lambda: [train[i] for i in order]], on_step=seen.append)
    (branch,) = result.branches
    assert rows(branch)[:BRANCH_AT] == rows(result)[:BRANCH_AT]
    assert [r[3] for r in rows(branch)[BRANCH_AT:]] != [r[3] for r in rows(result)[BRANCH_AT:len(branch.log)]]
    ladder = lr_ladder(1e-4, 10.0, 60)
    assert [r["lr"] for r in branch.log] == pytest.approx(ladder[: len(branch.log)].tolist())
    assert branch.suggestions.keys() == result.suggestions.keys() and branch.restored
    # the progress sees the branch's own steps once, tagged, going on from the branch point
    own = [r for r in seen if r.get("branch") == 1]
    assert [r["iteration"] for r in own] == list(range(BRANCH_AT + 1, len(branch.log) + 1))
    assert len(seen) == len(result.log) + len(branch.log) - BRANCH_AT


@pytest.mark.parametrize("sync_every", [3, 8])
def test_reading_losses_in_batches_branches_the_same(batches, sync_every):
    train, _ = batches
    shuffled = train[::-1]
    expected = sweep(train, branches=[lambda: shuffled])
    got = sweep(train, branches=[lambda: shuffled], sync_every=sync_every)
    assert rows(got.branches[0]) == rows(expected.branches[0]) and rows(got) == rows(expected)


class Scripted(nn.Module):
    """The loss is the next value of a script (shared by every branch: the calls go on counting)."""

    def __init__(self, losses):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.losses, self.calls = list(losses), 0

    def forward(self, x):
        value = self.losses[min(self.calls, len(self.losses) - 1)]
        self.calls += 1
        return self.w * 0 + value


def scripted(losses, branches, num_iter=10, **kw):
    model = Scripted(losses)
    one = [(torch.zeros(1), torch.zeros(1))]
    return range_test(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda out, y: out, one,
                      num_iter=num_iter, branches=[lambda: one] * branches, **kw)


def test_a_sweep_that_stops_before_the_branch_point_has_no_branches():
    result = scripted([1.0, 0.9, 9.0, 9.0, 9.0, 9.0], branches=2, branch_at=5, smooth=0.0)
    assert result.stop_reason == "diverged" and len(result.log) == 3 and result.branches == []


def test_a_stop_by_request_in_a_branch_ends_the_branches():
    seen = []
    result = scripted([1.0] * 40, branches=3, branch_at=4, on_step=seen.append,
                      should_stop=lambda: sum(r.get("branch") == 1 for r in seen) >= 2)
    assert result.stop_reason == "end_lr" and len(result.log) == 10
    (branch,) = result.branches  # the first branch stopped after its own two steps; no second one started
    assert branch.stop_reason == "stopped" and len(branch.log) == 4 + 2


@pytest.mark.parametrize("branch_at", [0, 10, 11])
def test_a_branch_point_outside_the_ladder_is_refused(branch_at):
    with pytest.raises(ValueError, match="branch_at"):
        scripted([1.0], branches=1, branch_at=branch_at)


def falls_early(branch_at: int, **kw):
    """Flat for 10 steps, then 1 % lower every step: after step n the last ten steps' mean sits
    0.01 x (n - 14.5) below the first ten's, 5 % from step 20 on."""
    return scripted([1.0] * 10 + [1.0 - 0.01 * i for i in range(1, 40)], 1, num_iter=40, start_lr=1e-5,
                    end_lr=1e-3, branch_at=branch_at, **kw)


def test_a_sweep_whose_loss_falls_before_the_branch_point_does_not_branch():
    late = falls_early(30, branch_fall=0.05)
    assert late.branches == [] and late.settings["branch_at"] is None and len(late.log) == 40
    assert len(falls_early(19, branch_fall=0.05).branches) == 1  # still flat enough at step 19
    assert len(falls_early(30).branches) == 1  # without branch_fall: wherever it is asked


@pytest.mark.parametrize("sync_every", [1, 7])
def test_whether_a_sweep_branches_does_not_depend_on_how_often_losses_are_read(batches, sync_every):
    train, _ = batches
    # the MLP's loss on digits falls 5 % between steps 20 and 50 (the fall needs 20 steps to be read)
    assert sweep(train, branches=[lambda: train[::-1]], branch_at=50, branch_fall=0.05,
                 sync_every=sync_every).branches == []
    early = sweep(train, branches=[lambda: train[::-1]], branch_at=20, branch_fall=0.05, sync_every=sync_every)
    expected = sweep(train, branches=[lambda: train[::-1]], branch_at=20)
    assert rows(early.branches[0]) == rows(expected.branches[0])


@pytest.mark.parametrize("fall", [0.0, 1.0, -0.1])
def test_a_branch_fall_outside_zero_to_one_is_refused(fall):
    with pytest.raises(ValueError, match="branch_fall"):
        scripted([1.0], branches=1, branch_at=5, branch_fall=fall)
