"""Which schedule fields the range test's recipe may fill is written in the spec (`recipe_fields`), and a
training run with max_lr 'auto' fills exactly those."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from clrcore.lr_choice import RangeTestChoice, read_range_test
from clrcore.runs import run_job
from clrcore.specs import TrainSpec, parse_spec

TINY = {"dataset": "digits", "model": "tiny_cnn", "batch_size": 64, "device": "cpu", "train_subset": 128,
        "augment": {"translate": 1, "flip": False}, "max_lr": "auto", "range_test": {"start_lr": 1e-5, "num_iter": 20}}


@pytest.mark.parametrize(("request_data", "expected"), [
    ({}, ["step_size", "epochs"]),
    ({"epochs": 5}, ["step_size"]),
    ({"step_size": 2}, []),
    ({"step_unit": "iterations", "epochs": 3}, []),
    ({"preset": "digits-demo"}, []),  # a preset's values count as set: it gives the step size
])
def test_left_out_recipe_fields_are_the_schedule_fields_the_request_did_not_set(request_data, expected) -> None:
    assert TrainSpec(**request_data).recipe_fields == expected


def test_the_spelled_out_list_survives_the_stored_record_and_revalidation() -> None:
    first = TrainSpec(epochs=5)
    stored = {"kind": "train", **first.model_dump(mode="json", exclude_unset=True)}  # what the API keeps
    assert stored["recipe_fields"] == ["step_size"]
    again = parse_spec(json.loads(json.dumps(stored)))
    assert again.recipe_fields == ["step_size"] == parse_spec(again.model_dump(mode="json")).recipe_fields


def test_recipe_fields_given_explicitly_win_and_are_checked() -> None:
    assert TrainSpec(epochs=5, recipe_fields=["step_size", "epochs"]).recipe_fields == ["step_size", "epochs"]
    assert TrainSpec(recipe_fields=[]).recipe_fields == []
    assert TrainSpec(recipe_fields="epochs,step_size").recipe_fields == ["step_size", "epochs"]  # the CLI's form
    with pytest.raises(ValidationError, match="recipe_fields"):
        TrainSpec(recipe_fields=["epochs"])
    with pytest.raises(ValidationError, match="recipe_fields"):
        TrainSpec(recipe_fields=["momentum"])


def test_a_run_fills_only_the_listed_fields_from_the_one_saved_choice(tmp_path: Path) -> None:
    summary = run_job(TrainSpec(**TINY, epochs=2, recipe_fields=["step_size", "epochs"]), tmp_path,
                      data_dir=tmp_path)
    choice = read_range_test(tmp_path / "range_test.json")
    assert isinstance(choice, RangeTestChoice) and choice.recipe is not None
    # the step is fitted to the epochs, which stay: the saved recipe and the run agree on both
    assert "epochs" not in summary["from_recipe"] and choice.recipe["epochs"] == summary["epochs_run"] == 2
    assert summary["from_recipe"]["step_size"] == choice.recipe["step_size"] == summary["step_size"]
    assert summary["max_lr"] == choice.max_lr and summary["base_lr"] == choice.base_lr
    assert summary["lr_choice"]["recommendation"] == choice.summary()["recommendation"]

    kept = run_job(TrainSpec(**TINY, epochs=2, recipe_fields=[]), tmp_path / "none", data_dir=tmp_path)
    assert set(kept["from_recipe"]) == {"max_lr", "base_lr"} and kept["epochs_run"] == 2
