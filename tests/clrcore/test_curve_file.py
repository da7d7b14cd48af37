"""Re-reading a stored range_test_log.csv with other settings, without torch and without re-running."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clrcore.curve_file import read_log, resuggest

LRS = 1e-5 * (10 / 1e-5) ** (np.arange(240) / 239)
X = np.log10(LRS)


def write_log(path: Path, losses: np.ndarray, skipped_rows: int = 0) -> Path:
    """A log shaped like RangeTestResult.save_log writes it (AMP-skipped rows included)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "iteration", "lr", "loss", "smoothed", "skipped", "lr_g0"])
        writer.writeheader()
        step = 0
        for i, (lr, loss) in enumerate(zip(LRS, losses, strict=True)):
            if i == 50 and skipped_rows:
                for _ in range(skipped_rows):
                    step += 1
                    writer.writerow({"step": step, "iteration": i + 1, "lr": lr, "loss": 99.0, "smoothed": "",
                                     "skipped": True, "lr_g0": lr})
            step += 1
            writer.writerow({"step": step, "iteration": i + 1, "lr": lr, "loss": loss, "smoothed": loss,
                             "skipped": False, "lr_g0": lr})
    return path


def curve() -> np.ndarray:
    fall = 2.3 - 1.8 / (1 + np.exp(-(X + 1.2) / 0.3))
    return fall + 16 * np.clip(X - math.log10(0.3), 0, None) ** 1.5


def test_a_stored_log_is_reread_with_another_rule_and_margin(tmp_path: Path):
    path = write_log(tmp_path / "range_test_log.csv", curve(), skipped_rows=3)
    lrs, losses = read_log(path)
    assert len(lrs) == 240 and 99.0 not in losses  # AMP-skipped steps are not part of the curve
    ours = resuggest(path)
    assert ours["recommendation"]["rule"].startswith("ours") and ours["no_suggestion"] is None
    wider = resuggest(path, cliff_margin=10.0)
    assert wider["recommendation"]["max_lr"] < ours["recommendation"]["max_lr"]
    valley = resuggest(path, rule="valley", iters_per_epoch=20, epochs_hint=4)
    assert valley["recommendation"]["max_lr"] == pytest.approx(valley["suggestions"]["valley"])
    assert valley["recommendation"]["rule"] == "valley" and valley["recipe"]["epochs"] == 4
    assert resuggest(path, skip_start=30)["settings"]["skip_start"] == 30
    with pytest.raises(ValueError, match="unknown rule"):
        resuggest(path, rule="magic")


def test_a_flat_stored_log_says_why_there_is_no_suggestion(tmp_path: Path):
    path = write_log(tmp_path / "flat.csv", np.full(240, 2.3))
    out = resuggest(path)
    assert out["recommendation"] is None and out["no_suggestion"]["reason"] == "flat"


def test_rereading_needs_no_torch():
    code = "import sys, clrcore.curve_file; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
