"""A spec in, a run folder out: the path both the `clr` command and the worker take."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from clrcore.datasets import DatasetError, load_dataset, with_train_subset
from clrcore.hooks import Hooks, Progress, StopRequested
from clrcore.lr_choice import read_range_test
from clrcore.models import build_model
from clrcore.runs import fresh_model, run_job, sweep_speed
from clrcore.specs import RangeTestSpec, TrainSpec

FAST = {"dataset": "digits", "model": "tiny_cnn", "batch_size": 64, "train_subset": 512,
        "augment": {"translate": 1, "flip": False}}


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_range_test_job_writes_result_log_and_plot(tmp_path: Path) -> None:
    spec = RangeTestSpec(**FAST, start_lr=1e-5, num_iter=40)
    summary = run_job(spec, tmp_path, data_dir=tmp_path)
    rec = summary["recommendation"]
    assert 1e-3 < rec["max_lr"] < 5 and rec["base_lr"] < rec["max_lr"]
    assert set(summary["suggestions"]) >= {"steepest", "valley", "min_loss", "min_loss_div10"}
    # 40 steps over six decades, far sparser than the 60 a decade ours' margin was learned at: it says so
    assert any(w.startswith("the sweep took 6 steps a decade") for w in summary["warnings"])
    assert summary["recipe"]["epochs"] % (2 * summary["recipe"]["step_epochs"]) == 0
    for name in ("spec.json", "range_test.json", "range_test_log.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert _png_size(tmp_path / "range_test.png") == (800, 500)
    header = (tmp_path / "range_test_log.csv").read_text().splitlines()[0]
    assert {"step", "lr", "loss", "smoothed", "skipped"} <= set(header.split(","))


def test_training_job_writes_every_artifact_and_resumes_when_run_again(tmp_path: Path) -> None:
    spec = TrainSpec(**FAST, epochs=2, base_lr=0.01, max_lr=0.2, step_size=1)
    first = run_job(spec, tmp_path, data_dir=tmp_path)
    assert first["resumed_from"] is None and first["epochs_run"] == 2
    assert first["lr_choice"]["source"] == "spec"
    for name in ("history.json", "report.txt", "report.json", "model.pt", "checkpoints/last.pt"):
        assert (tmp_path / name).stat().st_size > 0
    for plot in ("history", "lr_schedule", "lr_schedule_preview", "confusion_matrix"):
        assert _png_size(tmp_path / f"{plot}.png") == (800, 500)
    assert "macro avg" in (tmp_path / "report.txt").read_text()
    # tiny_cnn's BatchNorm statistics were checked before the final evaluation and held
    check = first["batchnorm_check"]
    assert check["refreshed"] is False and check["running_loss"] <= 1.25 * check["batch_loss"] + 0.1
    again = run_job(spec, tmp_path, data_dir=tmp_path)
    assert again["resumed_from"] == 2 and again["epochs_run"] == 0
    assert "batchnorm_check" not in again  # checked when the finished checkpoint was written
    assert again["accuracy"] == pytest.approx(first["accuracy"])


def test_auto_lr_on_digits_reaches_95_percent(tmp_path: Path) -> None:
    summary = run_job(TrainSpec(preset="digits-demo"), tmp_path, data_dir=tmp_path)
    assert summary["lr_choice"]["source"] == "range_test"
    for name in ("range_test.json", "range_test_log.csv", "range_test.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert summary["accuracy"] >= 0.95
    # the preset sets step size and epochs (12 epochs = 2 cycles of 3), so only the bounds came from the sweep
    assert set(summary["from_recipe"]) == {"max_lr", "base_lr"} and summary["warnings"] == []
    # its sweep keeps the margin's density (no warning of a sparse one) and picks inside the preset's flat best,
    # 0.05-0.5 on its grid (bench/preset_grid.py, docs/benchmarks.md), not at 1.08 or above where it reads lower
    assert 0.05 <= summary["max_lr"] <= 0.6
    assert not any("steps a decade" in w for w in summary["lr_choice"]["warnings"])


TINY = {**FAST, "train_subset": 128}  # 2 batches an epoch
SWEEP = {"start_lr": 1e-5, "num_iter": 20}


def test_auto_run_fits_its_step_to_the_epochs_so_the_run_ends_on_a_whole_cycle(tmp_path: Path) -> None:
    summary = run_job(TrainSpec(**TINY, max_lr="auto", range_test=SWEEP), tmp_path, data_dir=tmp_path)
    plan = json.loads((tmp_path / "range_test.json").read_text())["summary"]["recipe"]
    taken = summary["from_recipe"]
    assert taken["step_size"] == plan["step_size"] and taken["step_unit"] == "iterations"
    assert summary["epochs_run"] == plan["epochs"] == 10 and "epochs" not in taken  # the epochs stay
    total = summary["epochs_run"] * summary["iters_per_epoch"]
    assert total % (2 * taken["step_size"]) == 0 and summary["warnings"] == []
    assert summary["max_lr"] == taken["max_lr"] == plan["max_lr"]


def test_auto_run_keeps_the_epochs_the_user_set_and_fits_the_step_to_them(tmp_path: Path) -> None:
    summary = run_job(TrainSpec(**TINY, max_lr="auto", epochs=5, range_test=SWEEP), tmp_path, data_dir=tmp_path)
    assert summary["epochs_run"] == 5 and "epochs" not in summary["from_recipe"]
    assert summary["from_recipe"]["step_size"] == 5  # 5 epochs of 2 iterations: one cycle of 5 + 5
    assert summary["warnings"] == [] and "1 whole cycle" in summary["from_recipe"]["fit"]


def test_one_epoch_holds_no_whole_cycle_so_the_run_becomes_one_cycle(tmp_path: Path) -> None:
    summary = run_job(TrainSpec(**TINY, max_lr=0.1, epochs=1), tmp_path, data_dir=tmp_path)
    assert summary["policy"] == "one_cycle" and "one_cycle" in summary["from_recipe"]["fit"]
    assert summary["warnings"] == []


def test_auto_run_sweeps_three_seeds_when_they_are_cheap_beside_the_run_and_one_otherwise(tmp_path: Path) -> None:
    # 10 epochs of 2 batches: three 5-step sweeps, the second and third branching from the first at step 2
    # (two of its five decades), are 2 + 3 x 3 = 11 batches, at most 60 % of 20 (DEFAULT_SWEEP_SEEDS)
    sweep = {"start_lr": 1e-4, "num_iter": 5}
    long = run_job(TrainSpec(**TINY, max_lr="auto", epochs=10, range_test=sweep), tmp_path / "long",
                   data_dir=tmp_path)
    assert [s["seed"] for s in long["lr_choice"]["seeds"]] == [0, 1, 2] and long["epochs_run"] == 10
    saved = json.loads((tmp_path / "long" / "range_test.json").read_text())
    assert [c["seed"] for c in saved["seed_curves"]] == [0, 1, 2]
    given = run_job(TrainSpec(**TINY, max_lr="auto", epochs=10, range_test={**sweep, "seeds": 1}), tmp_path / "one",
                    data_dir=tmp_path)
    assert "seeds" not in given["lr_choice"]  # a given count wins: one sweep
    short = run_job(TrainSpec(**TINY, max_lr="auto", epochs=9, range_test=sweep), tmp_path / "short",
                    data_dir=tmp_path)
    assert "seeds" not in short["lr_choice"]  # 11 batches are more than 60 % of 18


def test_a_job_can_train_at_another_rules_pick_and_says_which(tmp_path: Path) -> None:
    sweep = {"start_lr": 1e-4, "num_iter": 40, "rule": "min_loss"}
    summary = run_job(TrainSpec(**TINY, max_lr="auto", epochs=2, range_test=sweep), tmp_path, data_dir=tmp_path)
    choice = summary["lr_choice"]
    assert choice["source"] == "range_test" and choice["rule"] == "min_loss"
    assert summary["max_lr"] == pytest.approx(choice["suggestions"]["min_loss"])
    assert summary["max_lr"] != pytest.approx(choice["suggestions"]["ours"])
    saved = json.loads((tmp_path / "range_test.json").read_text())
    assert saved["summary"]["recommendation"]["rule"] == "min_loss"


def test_auto_run_without_a_pick_trains_with_the_safe_fallback(tmp_path: Path) -> None:
    # a sweep over LRs too small to move the loss: no rule can pick, so the documented safe recipe trains
    flat = {"start_lr": 1e-7, "end_lr": 2e-7, "num_iter": 20}
    summary = run_job(TrainSpec(**TINY, max_lr="auto", epochs=2, range_test=flat), tmp_path, data_dir=tmp_path)
    assert summary["lr_choice"]["source"] == "safe_fallback"
    assert summary["max_lr"] == 0.05 and summary["lr_choice"]["low_confidence"]
    assert "no suggestion" in summary["lr_choice"]["rule"] and summary["epochs_run"] == 2
    saved = read_range_test(tmp_path / "range_test.json")  # written once, so a resumed job reads the same
    assert saved is not None and saved.source == "safe_fallback" and saved.max_lr == summary["max_lr"]
    assert json.loads((tmp_path / "range_test.json").read_text())["summary"]["source"] == "safe_fallback"


def test_explicit_schedule_that_ends_mid_cycle_is_warned_about_not_changed(tmp_path: Path) -> None:
    spec = TrainSpec(**TINY, epochs=3, base_lr=0.01, max_lr=0.1, step_size=1)
    summary = run_job(spec, tmp_path, data_dir=tmp_path)
    assert summary["epochs_run"] == 3 and summary["step_size"] == 1 and summary["from_recipe"] == {}
    assert "epochs=3 ends mid-cycle" in summary["warnings"][0] and "multiple of 2 epochs" in summary["warnings"][0]


def test_resnet_fast_job_fits_its_stem_to_the_data_and_resumes_to_the_same_result(tmp_path: Path) -> None:
    spec = TrainSpec(dataset="digits", model="resnet_fast", batch_size=32, train_subset=96, epochs=1,
                     policy="one_cycle", max_lr=0.2, optimizer={"nesterov": True, "bn_bias_lr_scale": 64},
                     augment={"translate": 1, "flip": False}, tta_flip=True, tta_translate=True)
    first = run_job(spec, tmp_path, data_dir=tmp_path)
    data = with_train_subset(load_dataset("digits", tmp_path), 96)
    fitted = fresh_model(spec, data, torch.device("cpu"))[0].weight
    trained = torch.load(tmp_path / "model.pt", weights_only=True)["0.weight"]
    assert torch.equal(trained, fitted)  # frozen, and set from the training images, not left random
    assert not torch.equal(fitted, build_model("resnet_fast", 1, 10, 16)[0].weight)
    again = run_job(spec, tmp_path, data_dir=tmp_path)
    assert again["resumed_from"] == 1 and again["accuracy"] == pytest.approx(first["accuracy"])


def test_range_test_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    spec = RangeTestSpec(**FAST, start_lr=1e-4, end_lr=1e-2, num_iter=6, accumulation_steps=2)
    summary = run_job(spec, tmp_path, data_dir=tmp_path)
    saved = json.loads((tmp_path / "range_test.json").read_text())
    assert summary["stop_reason"] == "end_lr" and summary["steps"] == 6
    assert saved["settings"]["accumulation_steps"] == 2
    # each field once: the raw sweep at the top, the choice (recommendation, recipe, ...) in the summary
    assert set(saved) == {"log", "val_log", "settings", "checksum", "summary"}
    assert saved["summary"] == {k: v for k, v in summary.items() if k not in ("kind", "seconds")}
    assert len((tmp_path / "range_test_log.csv").read_text().splitlines()) == 1 + 6


def test_range_test_progress_ends_on_the_last_step_even_when_throttled(tmp_path: Path) -> None:
    seen: list[Progress] = []
    spec = RangeTestSpec(**FAST, start_lr=1e-4, end_lr=1e-2, num_iter=7)
    run_job(spec, tmp_path, data_dir=tmp_path, hooks=Hooks(on_progress=seen.append, progress_interval=3600))
    assert [p.step for p in seen] == [1, 7]  # the first, then the final one despite the throttle
    assert seen[-1].steps == 7 and seen[-1].fraction == 1.0
    assert all(p.step <= p.steps and p.fraction <= 1 for p in seen)


def test_validation_mode_logs_every_val_every_steps_and_plots(tmp_path: Path) -> None:
    spec = RangeTestSpec(**FAST, start_lr=1e-4, end_lr=1e-1, num_iter=9, validation=True, val_every=3,
                         val_batches=1)
    summary = run_job(spec, tmp_path, data_dir=tmp_path)
    val_log = json.loads((tmp_path / "range_test.json").read_text())["val_log"]
    assert [v["step"] for v in val_log] == list(range(3, summary["steps"] + 1, 3)) and val_log
    assert all(v["val_loss"] > 0 and 0 <= v["val_acc"] <= 1 for v in val_log)
    assert _png_size(tmp_path / "range_test.png") == (800, 500)


def _stop_after(calls: int):
    count = iter(range(10**9))
    return lambda: next(count) >= calls


def test_stopped_training_keeps_checkpoint_and_history_of_complete_epochs(tmp_path: Path) -> None:
    spec = TrainSpec(**FAST, epochs=3, base_lr=0.01, max_lr=0.1)  # 8 batches an epoch, then evaluation
    with pytest.raises(StopRequested):
        run_job(spec, tmp_path, data_dir=tmp_path, hooks=Hooks(should_stop=_stop_after(12)))
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epoch"] == [1]
    assert (tmp_path / "checkpoints" / "last.pt").exists() and _png_size(tmp_path / "history.png")
    assert not (tmp_path / "report.json").exists()


def test_stopped_range_test_keeps_its_partial_curve_and_is_not_reused(tmp_path: Path) -> None:
    spec = TrainSpec(**FAST, epochs=1, max_lr="auto", range_test={"start_lr": 1e-4, "num_iter": 40})
    with pytest.raises(StopRequested):
        run_job(spec, tmp_path, data_dir=tmp_path, hooks=Hooks(should_stop=_stop_after(10)))
    partial = json.loads((tmp_path / "range_test.json").read_text())["summary"]
    assert partial["stop_reason"] == "stopped" and 0 < partial["steps"] < 40
    assert (tmp_path / "range_test_log.csv").exists() and (tmp_path / "range_test.png").exists()
    summary = run_job(spec, tmp_path, data_dir=tmp_path)  # the next delivery sweeps again, in full
    full = json.loads((tmp_path / "range_test.json").read_text())["summary"]
    assert full["stop_reason"] != "stopped" and summary["lr_choice"]["source"] == "range_test"


def test_missing_imagefolder_names_the_path(tmp_path: Path) -> None:
    spec = TrainSpec(dataset="imagefolder", dataset_path="nowhere.zip", epochs=1, max_lr=0.1)
    with pytest.raises(DatasetError, match="nowhere"):
        run_job(spec, tmp_path / "run", data_dir=tmp_path)


def test_fenced_off_training_writes_no_final_artifacts_and_no_partial_history(tmp_path: Path) -> None:
    # may_write is asked twice for epoch 1's checkpoint, then before the final artifacts: refuse there.
    spec = TrainSpec(**FAST, epochs=1, base_lr=0.01, max_lr=0.1)
    refuse = _stop_after(2)
    with pytest.raises(StopRequested, match="^lease lost: final artifacts"):
        run_job(spec, tmp_path, data_dir=tmp_path, hooks=Hooks(may_write=lambda: not refuse()))
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    for name in ("history.json", "report.json", "model.pt", "history.png"):
        assert not (tmp_path / name).exists(), name


def test_the_sweeps_cuda_speed_settings_leave_a_cpu_sweep_as_it_was() -> None:
    # on CUDA: channels_last, cudnn.benchmark and losses read every 20 steps; on a CPU none of them
    model = build_model("tiny_cnn", 1, 10, 16)
    assert sweep_speed(torch.device("cpu"), model) == {"channels_last": False, "sync_every": 1}
    assert all(p.is_contiguous() for p in model.parameters())


def test_range_test_with_seeds_sweeps_each_in_one_job_and_recommends_their_aggregate(tmp_path: Path) -> None:
    seen: list[Progress] = []
    spec = RangeTestSpec(**FAST, start_lr=1e-4, num_iter=20, seeds=2)  # both seeds pick at this size
    summary = run_job(spec, tmp_path, data_dir=tmp_path, hooks=Hooks(on_progress=seen.append, progress_interval=0))
    assert [s["seed"] for s in summary["seeds"]] == [spec.seed, spec.seed + 1]
    # the second seed branches from the first at step 8 (two of the ladder's five decades): progress counts the
    # first sweep's 20 steps and the branch's own 12, in order
    assert seen[-1].step == seen[-1].steps == 32
    assert [p.step for p in seen] == sorted(p.step for p in seen)
    picks = [s["suggestions"]["ours"] for s in summary["seeds"]]
    if all(picks):
        assert summary["recommendation"]["max_lr"] == pytest.approx(math.sqrt(picks[0] * picks[1]))
        assert summary["seed_spread"] == pytest.approx(max(picks) / min(picks))
        # both seeds swept 4 steps a decade: the one warning every seed gave, once and without a seed
        assert [w for w in summary["warnings"] if "steps a decade" in w] == [summary["warnings"][0]]
        assert summary["warnings"][0].startswith("the sweep took 4 steps a decade")
    saved = json.loads((tmp_path / "range_test.json").read_text())
    assert [len(c["lrs"]) for c in saved["seed_curves"]] == [s["steps"] for s in summary["seeds"]]
    first, second = saved["seed_curves"]
    assert first["losses"][:8] == second["losses"][:8] and first["losses"][8:] != second["losses"][8:]
    assert first["lrs"][:16] == second["lrs"][:16]  # one ladder: the branch goes on where it left the first
    assert saved["settings"]["branch_at"] == 8


def test_seeds_sweep_whole_where_the_first_sweeps_loss_falls_before_the_branch_point(tmp_path: Path) -> None:
    # from 1e-2 the digits loss falls more than 5 % within the 24 steps the seeds would share (of 60, three
    # decades): they would share what those steps tell, so each sweeps whole from its own initial weights
    from clrcore.runs import _prepare, _sweep

    sweep = {"start_lr": 1e-2, "num_iter": 60}
    spec = RangeTestSpec(**TINY, **sweep, seeds=2)
    summary = run_job(spec, tmp_path / "given", data_dir=tmp_path)
    saved = json.loads((tmp_path / "given" / "range_test.json").read_text())
    first, second = saved["seed_curves"]
    assert saved["settings"]["branch_at"] is None and first["losses"][0] != second["losses"][0]
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]  # a given count holds
    # a training job's default count assumed branches (24 + 3 x 36 = 132 batches, 60 % of 110 epochs of 2):
    # three whole sweeps (180) are more than 60 %, so it keeps the one it ran
    train = TrainSpec(**TINY, max_lr="auto", epochs=110, range_test=sweep)
    assert train.range_test is not None and train.range_test.sweep_seeds(60, 220, 24) == 3
    _, device, ds, model, _ = _prepare(train, tmp_path / "train", tmp_path, download=False)
    result = _sweep(train, train.range_test, "triangular", ds, model, device, Hooks(), train_epochs=110)
    assert result.seeds == [] and result.settings["branch_at"] is None


@pytest.mark.parametrize(("sweep", "steps"), [
    ({"start_lr": 1e-2, "num_iter": 60}, 120),  # its loss falls before the branch point: two whole sweeps
    ({"start_lr": 1e-4, "num_iter": 20, "shared_decades": 0}, 40),  # whole sweeps asked for
    ({"start_lr": 1e-4, "num_iter": 20}, 32),  # branched at step 8: 20 + 12
])
def test_the_sweeps_progress_never_goes_back_whether_the_seeds_branch_or_not(tmp_path: Path, sweep, steps) -> None:
    seen: list[Progress] = []
    run_job(RangeTestSpec(**TINY, **sweep, seeds=2), tmp_path, data_dir=tmp_path,
            hooks=Hooks(on_progress=seen.append, progress_interval=0))
    fractions = [p.step / p.steps for p in seen]
    assert fractions == sorted(fractions) and seen[-1].step == seen[-1].steps == steps
    assert all(p.steps >= steps for p in seen)  # the plan shown is never shorter than the sweeps run


def test_a_resnet_fast_sweep_reads_ours_with_its_familys_margin(tmp_path: Path) -> None:
    from clrcore.curve_file import resuggest

    spec = RangeTestSpec(**{**FAST, "model": "resnet_fast", "optimizer": {"name": "adamw"}}, start_lr=1e-5,
                         num_iter=40)
    summary = run_job(spec, tmp_path, data_dir=tmp_path)
    settings = json.loads((tmp_path / "range_test.json").read_text())["settings"]
    assert settings["cliff_margin"] == 11.2
    again = resuggest(tmp_path / "range_test_log.csv", cliff_margin=11.2)
    assert summary["suggestions"]["ours"] == pytest.approx(again["suggestions"]["ours"])
    assert summary["recommendation"]["rule"] == "ours (the zero-lag curve's cliff / 11.2)"
