"""bench/regret_family.py: the margins per family, refitted from the stored runs, and the registered check."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import regret_family as rf
from bench.lr_regret import TASKS_FRESH4, select_tasks
from bench.regret_blend import load_set
from clrcore.suggest import CLIFF_MARGIN


def test_each_familys_margin_refits_from_its_stored_tasks_to_the_registered_one():
    for family, named in rf.FAMILY_TASKS.items():
        tasks = [rf.stored(name, folders) for name, folders in named]
        assert rf.fit(tasks) == pytest.approx(rf.FAMILY_MARGINS[family], rel=0.01)  # registered rounded


def test_only_resnet_fast_gets_a_margin_of_its_own():
    assert rf.margin_for(select_tasks("fresh4_cifar14_resnet_fast")[0]) == 2.38
    assert rf.margin_for(select_tasks("fresh3_gray12_resnet_fast_adamw_b64")[0]) == 11.2
    assert rf.margin_for(select_tasks("cifar_tiny_cnn_adamw")[0]) == CLIFF_MARGIN


def test_the_registered_check_on_the_fourth_batch_as_docs_benchmarks_md_quotes_it():
    check = rf.family_check(load_set([Path("bench/data/lr_regret_fresh4_tasks")], TASKS_FRESH4))
    quoted = {"fresh4_cifar14_resnet_fast": ((0.19, 0.01), (0.85, 0.67)),
              "fresh4_cifar10_resnet_fast_adamw_wd01": ((0.53, 0.44), (6.08, 6.02)),
              "fresh4_gray10_resnet_fast_adamw_b64": ((0.41, 0.04), (3.98, 3.94))}
    for row in check["per_task"]:
        candidate, ours = quoted[row["task"]]
        assert tuple(round(v, 2) for v in row["candidate"]) == candidate
        assert tuple(round(v, 2) for v in row["ours"]) == ours
    assert [round(v, 2) for v in check["mean"]["candidate"]] == [0.38, 0.16]
    assert check["within"] == {"candidate": 3, "ours": 0} and check["replaces"]


def test_one_margin_serves_every_stored_task_but_resnet_fasts_and_one():
    rows = {r["task"]: r for r in rf.per_task_margins()}
    others = [r for name, r in rows.items() if "resnet_fast" not in name]
    missed = [r["task"] for r in others if not r["near"][0] <= CLIFF_MARGIN <= r["near"][1]]
    assert len(others) == 17 and missed == ["fresh_gray_small_cnn_b64"]
    assert all(not r["near"][0] <= CLIFF_MARGIN <= r["near"][1] for name, r in rows.items()
               if "resnet_fast" in name and name != "cifar_resnet_fast")
