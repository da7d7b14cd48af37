"""Every plot writes a PNG of the documented size, also from NaN, inf, None and empty inputs."""

import math

import numpy as np
import pytest
from PIL import Image

from clrcore import plots

NAN, INF = math.nan, math.inf


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == plots.SIZE_PX == (800, 500)


def range_curve(n=60):
    lrs = np.logspace(-5, 1, n)
    x = np.log10(lrs)
    smoothed = 2.3 - 1.5 * np.exp(-((x + 2) ** 2)) + np.where(x > 0, 10.0 ** (3 * x), 0.0)
    return lrs, smoothed


def test_range_test_with_suggestions_band_divergence_and_validation(tmp_path):
    lrs, smoothed = range_curve()
    raw = smoothed + np.random.default_rng(0).normal(0, 0.05, lrs.size)
    val = {"lr": [1e-4, 1e-3, 1e-2, 1e-1], "val_loss": [2.0, 1.2, 0.9, NAN], "val_acc": [0.2, 0.5, 0.7, None]}
    path = plots.plot_range_test(
        tmp_path / "nested" / "range_test.png", lrs, smoothed, raw=raw,
        suggestions={"steepest": 3e-3, "min_loss_div10": 1e-3, "valley": None},
        band=(1e-3, 1e-2), diverged_at=2.0, val=val,
    )
    assert path == tmp_path / "nested" / "range_test.png"
    assert_png(path)


def test_range_test_survives_nan_inf_and_empty_suggestions(tmp_path):
    lrs, smoothed = range_curve()
    smoothed[-5:] = [INF, NAN, INF, NAN, -INF]
    lrs[3] = NAN
    assert_png(plots.plot_range_test(tmp_path / "a.png", lrs, smoothed, suggestions={}))
    assert_png(plots.plot_range_test(tmp_path / "b.png", [1e-3, 1e-2], [NAN, NAN], raw=[NAN, INF],
                                     suggestions={"steepest": NAN}, band=(NAN, 1.0), diverged_at=INF))


def test_range_test_clips_the_blow_up_out_of_the_y_range():
    lrs, smoothed = range_curve()
    low, high = plots._loss_limits(smoothed)
    assert low < smoothed.min() < smoothed[0] <= high < 10


def test_validation_panel_clips_a_huge_loss_at_high_lr_like_the_training_panel():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    val = {"lr": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "val_loss": [2.3, 1.9, 1.1, 0.8, 1e6],
           "val_acc": [0.1, 0.4, 0.7, 0.8, 0.1]}
    plots._validation_panel(ax, val)
    low, high = ax.get_ylim()
    assert low < 0.8 and 2.3 <= high < 10  # the dip stays readable; 1e6 is off the top


def test_history_with_missing_validation(tmp_path):
    history = {"epoch": [1, 2, 3], "train_loss": [2.0, 1.5, 1.1], "train_acc": [0.3, 0.5, 0.6],
               "val_loss": [None, 1.4, NAN], "val_acc": None}
    assert_png(plots.plot_history(tmp_path / "history.png", history))
    assert_png(plots.plot_history(tmp_path / "empty.png", {"epoch": [], "train_loss": []}))


@pytest.mark.parametrize("momentums", [None, [0.95, 0.9, NAN, 0.85]])
def test_lr_schedule_with_and_without_momentum(tmp_path, momentums):
    path = plots.plot_lr_schedule(tmp_path / "schedule.png", [0, 1, 2, 3], [1e-3, 5e-3, INF, 1e-3], momentums)
    assert_png(path)


def test_confusion_matrix_with_empty_rows(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    assert_png(plots.plot_confusion_matrix(tmp_path / "cm.png", matrix, ["cat", "dog", "bird"]))


def test_confusion_matrix_rejects_mismatched_names(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        plots.plot_confusion_matrix(tmp_path / "cm.png", np.eye(3, dtype=int), ["a", "b"])
