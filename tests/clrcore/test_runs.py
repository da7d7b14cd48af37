"""A spec in, a run folder out: the path both the `clr` command and the worker take."""

import json
from pathlib import Path

import pytest
from PIL import Image

from clrcore.datasets import DatasetError
from clrcore.runs import RunHooks, run_job
from clrcore.specs import RangeTestSpec, TrainSpec
from clrcore.trainer import StopRequested

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
    again = run_job(spec, tmp_path, data_dir=tmp_path)
    assert again["resumed_from"] == 2 and again["epochs_run"] == 0
    assert again["accuracy"] == pytest.approx(first["accuracy"])


def test_auto_lr_on_digits_reaches_95_percent(tmp_path: Path) -> None:
    summary = run_job(TrainSpec(preset="digits-demo"), tmp_path, data_dir=tmp_path)
    assert summary["lr_choice"]["source"] == "range_test"
    assert (tmp_path / "range_test.png").exists()
    assert summary["accuracy"] >= 0.95


def _stop_after(calls: int):
    count = iter(range(10**9))
    return lambda: next(count) >= calls


def test_stopped_training_keeps_checkpoint_and_history_of_complete_epochs(tmp_path: Path) -> None:
    spec = TrainSpec(**FAST, epochs=3, base_lr=0.01, max_lr=0.1)  # 8 batches an epoch, then evaluation
    with pytest.raises(StopRequested):
        run_job(spec, tmp_path, data_dir=tmp_path, hooks=RunHooks(should_stop=_stop_after(12)))
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epoch"] == [1]
    assert (tmp_path / "checkpoints" / "last.pt").exists() and _png_size(tmp_path / "history.png")
    assert not (tmp_path / "report.json").exists()


def test_stopped_range_test_keeps_its_partial_curve_and_is_not_reused(tmp_path: Path) -> None:
    spec = TrainSpec(**FAST, epochs=1, max_lr="auto", range_test={"start_lr": 1e-5, "num_iter": 40})
    with pytest.raises(StopRequested):
        run_job(spec, tmp_path, data_dir=tmp_path, hooks=RunHooks(should_stop=_stop_after(10)))
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
