"""An `auto` run whose pick diverges restarts lower; a max LR the user gave still fails.

The trainer's own NaN detection is tested in test_trainer.py; here its `TrainingDiverged` is raised on
cue by a wrapper around the real trainer, so the restart logic is exercised on a real run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import clrcore.runs as runs_module
from clrcore import lr_backoff
from clrcore.hooks import TrainingDiverged
from clrcore.lr_backoff import Backoff, read_backoffs, write_backoffs
from clrcore.runs import CHECKPOINT, run_job
from clrcore.specs import TrainSpec

TINY = {"dataset": "digits", "model": "tiny_cnn", "batch_size": 64, "train_subset": 128,
        "augment": {"translate": 1, "flip": False}, "epochs": 2}
SWEEP = {"start_lr": 1e-5, "num_iter": 20}


def test_each_restart_divides_the_bounds_by_four_and_two_is_the_most() -> None:
    one = [Backoff(0.8, 22, 0.25)]
    assert lr_backoff.scale([]) == 1 and lr_backoff.scale(one) == 0.25 and lr_backoff.scale(one * 2) == 1 / 16
    assert lr_backoff.may_back_off(one) and not lr_backoff.may_back_off(one * 2)
    assert one[0].note() == ("training at max_lr 0.8 diverged at step 22 (lr 0.25); restarted from the initial "
                             "weights at max_lr 0.2")


def test_restarts_round_trip_through_the_run_folder(tmp_path: Path) -> None:
    assert read_backoffs(tmp_path) == []
    done = [Backoff(0.8, 22, 0.25), Backoff(0.2, 40, 0.11)]
    write_backoffs(tmp_path, done)
    assert read_backoffs(tmp_path) == done
    assert json.loads((tmp_path / lr_backoff.BACKOFF_FILE).read_text())["factor"] == 4.0


def _diverging_first(monkeypatch: pytest.MonkeyPatch, times: int) -> list[float]:
    """The trainer diverges on its first `times` calls (after leaving a checkpoint behind), then trains."""
    real_train = runs_module.train
    calls: list[float] = []

    def train(model, dataset, config, *, hooks=None):
        calls.append(max(config.schedule.lr_points))
        if len(calls) <= times:
            config.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            config.checkpoint_path.write_bytes(b"an epoch of the attempt that diverged")
            raise TrainingDiverged(5, calls[-1] / 2)
        return real_train(model, dataset, config, hooks=hooks)

    monkeypatch.setattr(runs_module, "train", train)
    return calls


def test_an_auto_run_that_diverges_restarts_at_a_quarter_and_a_redelivery_resumes_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _diverging_first(monkeypatch, times=1)
    spec = TrainSpec(**TINY, max_lr="auto", range_test=SWEEP)
    summary = run_job(spec, tmp_path, data_dir=tmp_path)
    pick = json.loads((tmp_path / "range_test.json").read_text())["summary"]["recommendation"]
    assert calls == [pytest.approx(pick["max_lr"]), pytest.approx(pick["max_lr"] / 4)]
    assert summary["max_lr"] == pytest.approx(pick["max_lr"] / 4)
    assert summary["base_lr"] == pytest.approx(pick["base_lr"] / 4)
    assert summary["lr_choice"]["backoffs"] == [{"max_lr": pytest.approx(pick["max_lr"]), "step": 5,
                                                 "lr": pytest.approx(pick["max_lr"] / 2)}]
    assert summary["warnings"][0].startswith(f"training at max_lr {pick['max_lr']:.3g} diverged at step 5")
    # from a clean start: the same run as one given the lowered bounds and the fitted step outright (the
    # wrapper passes every later call to the real trainer)
    direct = run_job(TrainSpec(**{**TINY, "base_lr": summary["base_lr"], "max_lr": summary["max_lr"],
                                  "step_size": summary["step_size"], "step_unit": summary["step_unit"]}),
                     tmp_path / "direct", data_dir=tmp_path)
    assert summary["epochs_run"] == 2 and summary["metrics"] == pytest.approx(direct["metrics"])
    # a redelivery finds the restart and its checkpoint: it resumes at the lowered LR, nothing retrained
    again = run_job(spec, tmp_path, data_dir=tmp_path)
    assert len(calls) == 4  # the two attempts, the direct run, the redelivery: no new diverging call
    assert again["resumed_from"] == 2 and again["max_lr"] == summary["max_lr"]
    assert again["lr_choice"]["backoffs"] == summary["lr_choice"]["backoffs"]


def test_a_checkpoint_of_the_diverged_attempt_is_not_resumed(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # an object store keeps the diverged attempt's checkpoint (deletions are not synced): a redelivery that
    # finds it beside the restart record trains the lowered attempt from the start, not from that checkpoint
    _diverging_first(monkeypatch, times=1)
    spec = TrainSpec(**TINY, max_lr="auto", range_test=SWEEP)
    summary = run_job(spec, tmp_path / "job", data_dir=tmp_path)
    first_attempt = run_job(TrainSpec(**{**TINY, "base_lr": summary["base_lr"] * 4, "max_lr": summary["max_lr"] * 4,
                                         "step_size": summary["step_size"], "step_unit": summary["step_unit"]}),
                            tmp_path / "first", data_dir=tmp_path)
    assert first_attempt["epochs_run"] == 2
    (tmp_path / "job" / CHECKPOINT).write_bytes((tmp_path / "first" / CHECKPOINT).read_bytes())
    again = run_job(spec, tmp_path / "job", data_dir=tmp_path)
    assert again["resumed_from"] is None and again["epochs_run"] == 2
    assert again["max_lr"] == summary["max_lr"] and again["metrics"] == pytest.approx(summary["metrics"])


def test_an_auto_run_that_keeps_diverging_fails_after_two_restarts(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _diverging_first(monkeypatch, times=3)
    with pytest.raises(TrainingDiverged):
        run_job(TrainSpec(**TINY, max_lr="auto", range_test=SWEEP), tmp_path, data_dir=tmp_path)
    assert len(calls) == 3 and calls[2] == pytest.approx(calls[0] / 16)
    assert len(read_backoffs(tmp_path)) == 2


def test_a_max_lr_the_user_gave_is_not_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _diverging_first(monkeypatch, times=1)
    with pytest.raises(TrainingDiverged, match="step 5"):
        run_job(TrainSpec(**TINY, base_lr=0.01, max_lr=0.5), tmp_path, data_dir=tmp_path)
    assert calls == [0.5] and not (tmp_path / lr_backoff.BACKOFF_FILE).exists()
    assert (tmp_path / CHECKPOINT).exists()  # the user's failed run keeps what it wrote
