"""The `clr` command: flags generated from the specs, one-line errors, a run folder."""

import json
from pathlib import Path

import pytest

from clrcore.cli import main


def test_train_with_flags_writes_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--data-dir", str(tmp_path), "--epochs", "2",
               "--base-lr", "0.01", "--max-lr", "0.2", "--step-size", "1", "--train-subset", "400",
               "--augment-flip", "false", "--optimizer-nesterov", "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["max_lr"] == 0.2
    spec = json.loads((out / "spec.json").read_text())
    assert spec["optimizer"]["nesterov"] is True and spec["augment"]["flip"] is False
    printed = capsys.readouterr().out
    assert "weighted avg" in printed and str(out) in printed


def test_range_test_prints_suggestions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["range-test", "--out", str(tmp_path), "--num-iter", "30", "--start-lr", "1e-5",
               "--train-subset", "300", "--augment-flip", "false", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "recommended: base_lr" in printed and "valley" in printed
    assert "recipe: policy triangular, base_lr" in printed and "iterations (4 epochs), epochs 8 (1 cycle)" in printed
    assert "decades; low confidence: " in printed


def test_spec_flags_without_dataset_or_preset_tweak_the_digits_demo(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--quiet", "--out", str(out), "--data-dir", str(tmp_path), "--epochs", "2"]) == 0
    spec = json.loads((out / "spec.json").read_text())
    assert spec["preset"] == "digits-demo" and spec["dataset"] == "digits" and spec["epochs"] == 2
    assert spec["augment"]["flip"] is False
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 2


def test_train_max_lr_auto_saves_the_range_test_in_the_run_folder(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--quiet", "--out", str(out), "--data-dir", str(tmp_path), "--max-lr", "auto",
               "--epochs", "1", "--train-subset", "256", "--range-test-num-iter", "20"])
    assert rc == 0
    for name in ("range_test.json", "range_test_log.csv", "range_test.png"):
        assert (out / name).stat().st_size > 0
    assert "from the range test's recipe: max_lr" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--base-lr", "0.5", "--max-lr", "0.1"], "base_lr must be below max_lr"),
    (["train", "--dataset", "nope"], "--dataset: Value error, unknown dataset"),
    (["train", "--optimizer-momentum", "2"], "--optimizer-momentum:"),
    (["range-test", "--start-lr", "1", "--end-lr", "0.1"], "start_lr must be below end_lr"),
])
def test_bad_flags_get_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_dataset_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "--dataset", "imagefolder", "--dataset-path", "missing", "--max-lr", "0.1",
               "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("clr: ") and "missing" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("what", "expected"), [("presets", "digits-demo"), ("datasets", "cifar10"),
                                                 ("models", "minigooglenet")])
def test_lists_are_json(what: str, expected: str, capsys: pytest.CaptureFixture) -> None:
    assert main([what]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert expected in listed and len(listed) >= 3


@pytest.mark.parametrize("command", ["train", "range-test"])
def test_help_lists_every_flag(command: str, capsys: pytest.CaptureFixture) -> None:
    # argparse %-formats help text: a description with "30 %" in it once crashed `clr train --help`
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--batch-size" in text and "--optimizer-momentum" in text and "--data-dir" in text
    if command == "train":
        assert "from 30 % of the run on" in " ".join(text.split())


def test_fixed_max_lr_with_epochs_gets_a_step_that_ends_on_a_whole_cycle(tmp_path: Path) -> None:
    # `clr train --max-lr 0.1 --epochs 4`: the digits-demo's 3-epoch step would end mid-cycle at the peak
    out = tmp_path / "run"
    rc = main(["train", "--quiet", "--out", str(out), "--data-dir", str(tmp_path), "--max-lr", "0.1",
               "--epochs", "4", "--train-subset", "256"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == [] and summary["epochs_run"] == 4
    iters = summary["iters_per_epoch"]
    assert summary["step_size"] == 2 * iters and summary["step_unit"] == "iterations"  # one cycle of 2 + 2
    assert "1 whole cycle" in summary["from_recipe"]["fit"]


def test_an_absolute_dataset_path_is_accepted_locally(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    archive = tmp_path / "elsewhere" / "pets.tar.gz"  # absent: the error must come from loading, not the rule
    rc = main(["train", "--quiet", "--out", str(tmp_path / "run"), "--dataset", "imagefolder",
               "--dataset-path", str(archive), "--max-lr", "0.1"])
    err = capsys.readouterr().err
    assert rc == 1 and "relative to the data directory" not in err and "pets.tar.gz" in err


def test_a_weights_file_that_does_not_fit_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from clrcore.models import build_model
    from clrcore.weights import save_weights

    save_weights(build_model("small_cnn", 1, 10, 16), tmp_path / "small.safetensors")
    rc = main(["train", "--model", "tiny_cnn", "--weights-file", str(tmp_path / "small.safetensors"),
               "--max-lr", "0.1", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("clr: small.safetensors: unknown tensor") and len(err.splitlines()) == 1
