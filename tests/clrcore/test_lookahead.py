"""Lookahead: when it starts, how hard it averages, and that epochs end on the average."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clrcore.lookahead import LOOKAHEAD, Lookahead


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([t.flatten() for t in model.state_dict().values() if t.is_floating_point()])


def step(model: nn.Module, amount: float) -> None:
    """Stand-in for an optimizer step: every weight moves by `amount`."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount)


def test_nothing_happens_before_start_then_weights_follow_the_average() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    total = 100
    lookahead = Lookahead(model, total)
    lookahead.start_epoch(0)
    first = lookahead.first_active
    assert first == 30
    for done in range(1, first):
        before = weights(model).clone()
        step(model, 1.0)
        lookahead.after_step(done)
        assert torch.allclose(weights(model), before + 1.0)  # untouched before `start`
    every = int(LOOKAHEAD["every"])
    next_active = ((first + every - 1) // every) * every
    for done in range(first, next_active + 1):
        step(model, 1.0)
        lookahead.after_step(done)
    assert lookahead.average is not None
    anchor = weights(model).clone()  # the average starts here and equals the weights
    for done in range(next_active + 1, next_active + every + 1):
        step(model, 1.0)
        lookahead.after_step(done)
    decay = LOOKAHEAD["decay_base"] ** every * ((next_active + every) / total) ** LOOKAHEAD["decay_pow"]
    moved = anchor + every  # where plain steps would have put the weights
    expected = decay * anchor + (1 - decay) * moved
    assert torch.allclose(weights(model), expected, atol=1e-5)


def test_end_of_epoch_drops_the_steps_since_the_last_update() -> None:
    model = nn.Linear(2, 2)
    lookahead = Lookahead(model, 10)
    lookahead.start_epoch(5)  # past start: the average restarts from these weights
    at_start = weights(model).clone()
    step(model, 0.5)
    lookahead.end_epoch()
    assert torch.equal(weights(model), at_start)


def test_a_model_with_batchnorm_averages_its_running_statistics_too() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    lookahead = Lookahead(model, 10)
    names = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    assert len(lookahead.tensors) == len(names) and "1.running_mean" in names
    assert "1.num_batches_tracked" not in names


@pytest.mark.parametrize("total", [1, 3])
def test_tiny_runs_start_at_the_first_step(total: int) -> None:
    assert Lookahead(nn.Linear(1, 1), total).first_active == 1


def _per_tensor_reference(model: nn.Module, total: int, steps: int) -> list[torch.Tensor]:
    """The update written out tensor by tensor (what Lookahead did before its multi-tensor kernels)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    first, every = max(1, round(LOOKAHEAD["start"] * total)), int(LOOKAHEAD["every"])
    average = None
    for done in range(1, steps + 1):
        step(model, 0.01 * done)
        if done < first or done % every:
            continue
        if average is None:
            average = [t.detach().clone() for t in tensors]
            continue
        decay = LOOKAHEAD["decay_base"] ** every * (done / total) ** LOOKAHEAD["decay_pow"]
        with torch.no_grad():
            for avg, tensor in zip(average, tensors, strict=True):
                avg.lerp_(tensor, 1 - decay)
                tensor.copy_(avg)
    return [t.clone() for t in tensors]


def test_multi_tensor_update_matches_the_per_tensor_loop_and_launches_no_per_tensor_ops() -> None:
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))

    expected = _per_tensor_reference(net(), total=40, steps=40)
    model = net()
    lookahead = Lookahead(model, 40)
    lookahead.start_epoch(0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for done in range(1, 41):
            step(model, 0.01 * done)
            lookahead.after_step(done)
    # the ops Lookahead itself called (on a CPU a foreach op runs per-tensor ops inside it)
    ops = {event.name for event in profile.events() if event.cpu_parent is None}
    assert {"aten::_foreach_lerp_", "aten::_foreach_copy_"} <= ops and "aten::lerp_" not in ops
    got = [t for t in model.state_dict().values() if t.is_floating_point()]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
