"""Fine-tuning: layer groups with log-spread LRs at every step, a frozen body that does not move, and the
range test's per-group bounds."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clrcore import finetune
from clrcore.datasets import load_digits_dataset
from clrcore.hooks import Hooks
from clrcore.loaders import make_loader, normalization
from clrcore.models import build_model
from clrcore.optim import build_optimizer
from clrcore.runs import fresh_model, run_job
from clrcore.schedules import schedule_from_spec
from clrcore.specs import TrainSpec
from clrcore.train_setup import config_from_spec, steps_per_epoch
from clrcore.trainer import _Ticker, train_epoch

TUNE = {"groups": 3, "body_lr_divisor": 100.0, "freeze_epochs": 1}


def test_scales_spread_log_linearly_from_body_to_head():
    assert finetune.layer_scales(3, 100.0) == pytest.approx([0.01, 0.1, 1.0])
    assert finetune.layer_scales(5, 1e4) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert finetune.layer_scales(1, 100.0) == [1.0]


def test_groups_follow_network_order_with_the_head_alone_last():
    model = finetune.prepare(build_model("resnet18", 3, 5, 32), 5, groups=3, body_lr_divisor=100.0,
                             freeze_epochs=0)
    layers = finetune.layer_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in layers[-1][1]] == ["fc.weight", "fc.bias"]
    assert names[id(layers[0][1][0])] == "conv1.weight" and len(layers) == 3
    assert sum(len(ps) for _, ps in layers) == len(list(model.parameters()))


def test_the_fresh_head_is_on_the_bodys_device():
    """prepare builds the new head on the CPU; a CUDA sweep (which moves nothing) needs it on the device.
    The meta device stands in for CUDA: a head left behind would show as a CPU parameter."""
    spec = TrainSpec(dataset="digits", model="small_cnn", epochs=1, device="cpu", finetune=TUNE)
    model = fresh_model(spec, load_digits_dataset(), torch.device("meta"))
    assert {p.device.type for p in model.parameters()} == {"meta"}


class RecordingSGD(torch.optim.SGD):
    """SGD that notes every group's LR at each step it takes (what the update really used)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[list[float]] = []

    def step(self, closure=None):  # type: ignore[override]
        self.seen.append([float(g["lr"]) for g in self.param_groups])
        return super().step(closure)


def test_every_step_gives_each_group_the_scheduled_lr_times_its_scale():
    ds = load_digits_dataset()
    spec = TrainSpec(dataset="digits", model="small_cnn", epochs=2, batch_size=128, base_lr=0.01, max_lr=0.2,
                     policy="triangular", step_size=1, device="cpu", finetune=TUNE)
    model = fresh_model(spec, ds, torch.device("cpu"))
    iters = steps_per_epoch(len(ds.train), spec.batch_size)
    schedule = schedule_from_spec(spec, base_lr=0.01, max_lr=0.2, iters_per_epoch=iters)
    config = config_from_spec(spec, schedule, "cpu")
    plain = build_optimizer(model, config)
    optimizer = RecordingSGD(plain.param_groups, lr=0.01, momentum=0.9)
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    assert scales[0] == 1.0 and sorted(set(scales)) == pytest.approx([0.01, 0.1, 1.0])
    loader = make_loader(ds.train, spec.batch_size, device="cpu", train=True, drop_last=True,
                         **normalization(ds))
    for epoch in range(2):
        finetune.set_frozen(model, epoch)
        train_epoch(model, loader, optimizer, config, epoch=epoch, steps=iters, ticker=_Ticker(Hooks()))
    assert len(optimizer.seen) == 2 * iters
    for step, lrs in enumerate(optimizer.seen):
        assert lrs == pytest.approx([schedule.lr(step) * s for s in scales], rel=1e-12)


def body_and_head(model):
    body = {id(p) for p in finetune.frozen_parameters(model)}
    named = dict(model.named_parameters())
    return ({n: p.detach().clone() for n, p in named.items() if id(p) in body},
            {n: p.detach().clone() for n, p in named.items() if id(p) not in body})


@pytest.mark.parametrize("epochs", [1, 2])
def test_the_body_is_unchanged_while_frozen_and_trains_after(tmp_path, epochs):
    spec = TrainSpec(dataset="digits", model="small_cnn", epochs=epochs, batch_size=128, base_lr=0.01,
                     max_lr=0.1, step_size=1, device="cpu", finetune=TUNE)
    ds = load_digits_dataset()
    body0, head0 = body_and_head(fresh_model(spec, ds, torch.device("cpu")))
    summary = run_job(spec, tmp_path / "run", data_dir=tmp_path)
    trained = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    body_moved = [n for n in body0 if not torch.equal(body0[n], trained[n])]
    head_moved = [n for n in head0 if not torch.equal(head0[n], trained[n])]
    assert head_moved == list(head0)  # the head trains from the first step
    assert body_moved == ([] if epochs == 1 else list(body0))
    bounds = {g["group"]: g for g in summary["group_bounds"]}
    assert bounds["head"]["max_lr"] == 0.1 and bounds["body0"]["max_lr"] == pytest.approx(0.001)


def test_the_range_test_sweeps_the_head_and_reports_bounds_per_group(tmp_path):
    spec = TrainSpec(dataset="digits", model="small_cnn", epochs=1, batch_size=64, max_lr="auto", device="cpu",
                     policy="one_cycle", finetune={**TUNE, "freeze_epochs": 0},
                     range_test={"start_lr": 1e-5, "end_lr": 10.0, "num_iter": 60})
    summary = run_job(spec, tmp_path / "run", data_dir=tmp_path)
    groups = summary["group_bounds"]
    head = groups[-1]
    assert head["group"] == "head" and head["max_lr"] == summary["max_lr"]
    for group in groups:
        assert math.isclose(group["max_lr"], summary["max_lr"] * group["lr_scale"])
    sweep = json.loads((tmp_path / "run" / "range_test.json").read_text())
    assert sweep["summary"]["group_bounds"] == groups
    for record in sweep["log"]:  # every rung: the ladder is the head's LR, the groups keep their ratios
        assert record["lrs"][0] == record["lr"]
        assert {round(lr / record["lr"], 9) for lr in record["lrs"]} == {round(g["lr_scale"], 9) for g in groups}


@pytest.mark.parametrize(("freeze_epochs", "given", "rule"), [
    (1, None, "min_loss"),  # the sweep trains the head alone: the lowest loss picks
    (0, None, "ours"),  # the whole model sweeps, as a model from scratch does
    (1, "ours", "ours"),  # a rule given wins
])
def test_a_fine_tuning_job_whose_sweep_trains_the_head_alone_picks_at_the_lowest_loss(tmp_path, freeze_epochs,
                                                                                        given, rule):
    sweep = {"start_lr": 1e-4, "end_lr": 10.0, "num_iter": 40, **({"rule": given} if given else {})}
    spec = TrainSpec(dataset="digits", model="small_cnn", epochs=2, batch_size=64, max_lr="auto", device="cpu",
                     train_subset=256, finetune={**TUNE, "freeze_epochs": freeze_epochs}, range_test=sweep)
    summary = run_job(spec, tmp_path / "run", data_dir=tmp_path)
    choice = summary["lr_choice"]
    assert choice["source"] == "range_test" and choice["rule"].split(" ")[0] == rule
    assert summary["max_lr"] == pytest.approx(choice["suggestions"][rule])
    saved = json.loads((tmp_path / "run" / "range_test.json").read_text())
    assert saved["summary"]["recommendation"]["rule"].split(" ")[0] == rule


def test_a_head_only_sweep_with_several_seeds_trains_at_their_lowest_losses_geometric_mean(tmp_path):
    sweep = {"start_lr": 1e-4, "end_lr": 10.0, "num_iter": 40, "seeds": 2}
    spec = TrainSpec(dataset="digits", model="small_cnn", epochs=2, batch_size=64, max_lr="auto", device="cpu",
                     train_subset=256, finetune=TUNE, range_test=sweep)
    summary = run_job(spec, tmp_path / "run", data_dir=tmp_path)
    choice = summary["lr_choice"]
    picks = [s["suggestions"]["min_loss"] for s in choice["seeds"]]
    assert choice["rule"] == "min_loss" and len(picks) == 2 and all(picks)
    assert summary["max_lr"] == pytest.approx(math.sqrt(picks[0] * picks[1]))
