"""The end-of-training check of BatchNorm's running statistics: left alone when they hold, recomputed when stale.

Synthetic nets and data only: the statistics are set by hand, no training.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clrcore import batchnorm_stats
from clrcore.batchnorm_stats import check_and_refresh, compare_losses, is_stale


def _batches(count: int = 12, size: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two classes told apart by the mean of channel 0, at a scale far from BatchNorm's initial statistics."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        y = torch.randint(0, 2, (size,), generator=g)
        x = torch.randn(size, 2, 4, 4, generator=g) * 30 + 200
        x[:, 0] += (y.float() * 2 - 1)[:, None, None] * 60
        out.append((x, y))
    return out


def _net(dropout: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), *([nn.Dropout(0.5)] if dropout else []), nn.Linear(4, 2)]
    net = nn.Sequential(*layers)
    with torch.no_grad():  # a classifier that separates the classes once its inputs are normalised
        net[0].weight.zero_()
        net[0].weight[:, 0, 0, 0] = torch.tensor([1.0, -1.0, 0.5, -0.5])
        net[-1].weight.copy_(torch.tensor([[-1.0, 1.0, -0.5, 0.5], [1.0, -1.0, 0.5, -0.5]]) * 4)
    return net


def _calibrated(net: nn.Module, batches: list) -> nn.Module:
    torch.optim.swa_utils.update_bn(batches, net)
    net.eval()
    return net


def _buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_held_statistics_are_left_exactly_as_they_were() -> None:
    batches = _batches()
    net = _calibrated(_net(), batches)
    before = _buffers(net)
    check = check_and_refresh(net, batches)
    assert check is not None and not check.refreshed and check.batches == 0
    assert check.running_loss <= 1.25 * check.batch_loss + 0.1
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not net.training  # the mode it came in with


def test_stale_statistics_are_recomputed_and_the_running_loss_falls_to_the_batch_loss() -> None:
    batches = _batches()
    net = _net()  # never calibrated: running mean 0 and variance 1 against activations near 200
    check = check_and_refresh(net, batches)
    assert check is not None and check.refreshed and check.batches == len(batches)
    assert check.running_loss > 10 * check.batch_loss
    running, batch = compare_losses(net, batches)
    assert running <= 1.25 * batch + 0.1
    assert "recomputed over 12 training batches" in check.note()
    bn = net[1]
    assert bn.momentum == 0.1 and float(bn.running_mean.abs().max()) > 10  # its momentum kept, its mean now real


def test_the_recomputation_reads_at_most_refresh_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batchnorm_stats, "REFRESH_BATCHES", 5)
    check = check_and_refresh(_net(), _batches())
    assert check is not None and check.refreshed and check.batches == 5


def test_comparing_leaves_weights_buffers_and_every_layers_mode_alone() -> None:
    batches = _batches()
    net = _calibrated(_net(dropout=True), batches)
    net.train()  # dropout on: the comparison must still read it off
    net[1].eval()
    modes = [m.training for m in net.modules()]
    before = _buffers(net)
    torch.manual_seed(1)
    first = compare_losses(net, batches)
    torch.manual_seed(2)
    assert compare_losses(net, batches) == first  # dropout was off in both passes: no randomness
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_net_without_batchnorm_or_a_loader_without_batches_is_not_checked() -> None:
    assert check_and_refresh(nn.Sequential(nn.Flatten(), nn.Linear(32, 2)), _batches()) is None
    assert check_and_refresh(_net(), []) is None


@pytest.mark.parametrize(("running", "batch", "stale"), [
    (0.30, 0.30, False),  # the same
    (0.10, 0.30, False),  # lower with the running statistics: healthy runs read 0.81-1.10x
    (0.47, 0.30, False),  # at the limit: 1.25 x 0.30 + 0.1
    (0.48, 0.30, True),
    (1.57, 0.98, True),  # resnet_fast on digits at 0.021, seed 2: 47 % on the test set, 95 % recomputed
    (1300.0, 0.36, True),  # the same at 0.045, seed 0: 10 %, then 97 %
    (float("inf"), 0.3, True),
    (float("nan"), 0.3, True),
    (2.0, float("nan"), False),  # the weights failed: new statistics cannot help
])
def test_is_stale(running: float, batch: float, stale: bool) -> None:
    assert is_stale(running, batch) is stale
