"""bench/finetune_regret.py end to end at a tiny size: pretrain, save, sweep, grid, auto, table, PNG."""

import re

import numpy as np
import pytest
import torch

from bench.finetune_regret import (
    FINETUNE_CLASSES,
    WEIGHTS_FILE,
    Setup,
    add_runs,
    analyse,
    class_subset,
    run,
    step_data,
    tasks,
)
from clrcore.datasets import synthetic_dataset
from clrcore.weights import check_file
from tests.helpers import BENCH_SCRIPT_RUN

TINY = Setup(pretrain_images=160, pretrain_test=60, pretrain_epochs=1, train_images=120, test_images=60, epochs=2,
             batch_size=32, sweep={"start_lr": 1e-3, "end_lr": 10.0, "epochs": 4}, sweep_seeds=(0, 1),
             grid_points=3, grid_seeds=(0,), scratch_lrs=(0.1,))


def test_class_subset_keeps_and_relabels_only_those_classes():
    data = synthetic_dataset(n_train=100, n_test=50, num_classes=10, image_size=8)
    sub = class_subset(data, (5, 6, 7, 8, 9))
    assert sub.classes == [f"class{c}" for c in (5, 6, 7, 8, 9)]
    assert set(np.unique(sub.train.labels)) == set(range(5)) and len(sub.train) == 50
    rows = data.train.labels >= 5
    assert np.array_equal(sub.train.images, data.train.images[rows])
    assert np.array_equal(sub.train.labels, data.train.labels[rows] - 5)


def test_the_full_modes_upscaling_gives_the_model_image_size_crops():
    data = synthetic_dataset(n_train=100, n_test=50, num_classes=10, image_size=32)
    setup = Setup(train_images=30, test_images=20, image_size=64)
    tuned = step_data(data, tasks(setup)["finetune"], FINETUNE_CLASSES, setup)
    assert tuned.train.input_size == 64 and tuned.test.input_size == 64
    assert len(tuned.train) == 30 and len(tuned.test) == 20 and tuned.classes[0] == "class5"


@pytest.mark.slow
@BENCH_SCRIPT_RUN
def test_a_tiny_run_writes_weights_a_table_with_numbers_and_the_figure(tmp_path):
    torch.set_num_threads(1)
    data = synthetic_dataset(n_train=600, n_test=200, num_classes=10, image_size=32)
    res = run(data, TINY, tmp_path / "out", parallel=1)
    # step 1: weights saved as safetensors that fit the architecture
    assert check_file(tmp_path / "out" / WEIGHTS_FILE, "resnet18", num_classes=5, image_size=32) == []
    assert 0.0 <= res["pretrain"]["acc"] <= 1.0
    # step 2: one curve per sweep seed, the grid per grid seed, an auto job per grid seed
    assert len(res["curves"]) == 2 and all(len(c["lrs"]) > 10 for c in res["curves"])
    assert len(res["grid_lrs"]) == 3 and res["grid_lrs"][0] < res["grid_lrs"][-1]
    assert len(res["grid_acc_by_seed"]) == 1 and len(res["grid_acc_by_seed"][0]) == 3
    assert len(res["auto"]["max_lrs"]) == 1 and res["auto"]["max_lrs"][0] > 0
    assert np.isfinite(res["auto"]["regret"]) and res["auto"]["regret"] >= -100
    bounds = res["group_bounds"][0]
    assert [b["group"] for b in bounds] == ["body0", "body1", "head"]
    assert bounds[-1]["max_lr"] == pytest.approx(res["curves"][0]["auto_max_lr"])
    assert bounds[0]["max_lr"] == pytest.approx(bounds[-1]["max_lr"] / 10)
    top = res["grid_lrs"][-1]
    res = add_runs(res, data, [0.01], [0.1], 1, parallel=1)  # baselines and one grid point more, same data
    assert len(res["grid_lrs"]) == 4 and res["grid_lrs"][-1] > top and len(res["grid_acc_by_seed"][0]) == 4
    assert [r["lr"] for r in res["scratch"]] == [0.01, 0.1] and [r["lr"] for r in res["plain"]] == [0.1]
    assert all(0.0 <= r["acc"] <= 1.0 for r in res["scratch"] + res["plain"])
    text = analyse(res, tmp_path / "out", tmp_path / "fig.png")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    grid_rows = [r for r in rows if re.match(r"\| \d", r)]
    assert len(grid_rows) == 4
    for row in grid_rows:  # head LR, one seed, mean: all numbers
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(re.fullmatch(r"[\d.e+-]+", c) for c in cells), row
    auto_row = next(r for r in rows if r.startswith("| `auto` job"))
    assert re.search(r"\| -?\d+\.\d \|", auto_row), auto_row
    assert "from scratch" in text and "pretraining" in text and "without the recipe" in text
    assert (tmp_path / "fig.png").stat().st_size > 10_000



@pytest.mark.parametrize(("folder", "margin", "ours", "today", "auto", "lowest", "classes"), [
    ("finetune_regret_60", "1.7", "6.4", "6.1", "6.3", "3.1", ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])),
    ("finetune_regret_swap", "1.7", "1.3", "1.0", "1.6", "0.4", ([5, 6, 7, 8, 9], [0, 1, 2, 3, 4])),  # --swap-classes
    # --model mobilenet_v2: every curve flat, no rule picks, the auto jobs train at the safe fallback
    ("finetune_regret_mobilenet", "1.7", "no pick", "no pick", "-0.4", "no pick", ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])),
    ("finetune_regret_resnet34", "1.7", "0.1", "0.1", "-0.1", "0.3", ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])),  # resnet34
    # --pretrain-images 12000 --pretrain-epochs 10: a stronger body, picked at today's margin
    ("finetune_regret_strong", "1.5", "3.0", None, "1.4", "0.0", ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])),
    # the same, classes swapped, run after fine-tuning jobs took the lowest loss by default: its auto jobs did
    ("finetune_regret_strong_swap", "1.5", "0.3", None, "0.5", "0.5", ([5, 6, 7, 8, 9], [0, 1, 2, 3, 4])),
    # --model mobilenet_v2 from the stronger pretraining, also after the default changed
    ("finetune_regret_strong_mobilenet", "1.5", "1.5", None, "4.0", "2.5", ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])),
])
def test_the_stored_runs_at_the_default_sweep_read_as_the_docs_quote_them(tmp_path, monkeypatch, capsys, folder,
                                                                          margin, ours, today, auto, lowest, classes):
    # docs/benchmarks.md: the fine-tune bench at the product's default sweep (--sweep) on each task
    import json
    import shutil
    import sys
    from pathlib import Path

    from bench import finetune_regret

    stored = Path(__file__).resolve().parents[2] / "bench/data" / folder
    shutil.copytree(stored, tmp_path / "run")  # --reanalyse rewrites table.md and the PNG
    monkeypatch.setattr(sys, "argv", ["finetune_regret", "--reanalyse", "--out", str(tmp_path / "run")])
    finetune_regret.main()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[2] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and " | " in line}
    # a run is read at the margin its sweeps picked with (the auto jobs trained there); today's margin is
    # read beside it, untrained, where the two differ
    assert rows[f"ours (the zero-lag curve's cliff / {margin})"] == ours
    assert rows.get("ours at today's margin (the cliff / 1.5), not trained") == today
    assert next(v for k, v in rows.items() if k.startswith("`auto` job")) == auto
    assert ("`auto` job (min_loss), trained (2 seeds)" in rows) == folder.startswith("finetune_regret_strong_")
    assert rows["lowest loss (the seed blog's max bound)"] == lowest
    setup = json.loads((stored / "results.json").read_text())["setup"]
    assert setup["sweep"] == {"start_lr": 1e-4, "end_lr": 10.0}
    assert (setup.get("pretrain_classes", [0, 1, 2, 3, 4]), setup.get("finetune_classes", [5, 6, 7, 8, 9])) == classes


def test_the_command_line_sets_the_sweep_the_model_and_swaps_the_classes():
    import argparse

    from bench.finetune_regret import CPU, FINETUNE_CLASSES, PRETRAIN_CLASSES, setup_from_args

    def args(**given):
        return argparse.Namespace(**{"full": False, "sweep": None, "model": None, "swap_classes": False,
                                     "pretrain_images": None, "pretrain_epochs": None, **given})

    assert setup_from_args(args()) == CPU
    setup = setup_from_args(args(sweep={"start_lr": 1e-4, "end_lr": 10.0}, model="resnet34", swap_classes=True))
    assert setup.sweep == {"start_lr": 1e-4, "end_lr": 10.0} and setup.model == "resnet34"
    assert (setup.pretrain_classes, setup.finetune_classes) == (FINETUNE_CLASSES, PRETRAIN_CLASSES)
    stronger = setup_from_args(args(pretrain_images=12_000, pretrain_epochs=10))
    assert (stronger.pretrain_images, stronger.pretrain_epochs, stronger.train_images) == (12_000, 10, CPU.train_images)
    with pytest.raises(SystemExit, match="--model tiny_cnn: not a torchvision architecture"):
        setup_from_args(args(model="tiny_cnn"))
    with pytest.raises(SystemExit, match="--model nope"):
        setup_from_args(args(model="nope"))
