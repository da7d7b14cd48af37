"""bench/batchnorm_check.py: one healthy run, trained with the check unable to fire and with it."""

from __future__ import annotations

import math

from bench import batchnorm_check
from bench.lr_regret import select_tasks, task_data
from clrcore import batchnorm_stats


def test_a_healthy_run_reads_the_same_both_ways_and_the_threshold_is_restored():
    data = task_data(select_tasks("digits_tiny_cnn")[0], None, {})
    without = batchnorm_check.run("digits_tiny_cnn", 0.3, 0, data, check=False)
    assert batchnorm_stats.STALE_FACTOR == 1.25  # put back after the run that disabled it
    with_check = batchnorm_check.run("digits_tiny_cnn", 0.3, 0, data, check=True)
    assert not without["refreshed"] and not with_check["refreshed"]
    assert with_check["running"] <= 1.25 * with_check["batch"] + 0.1 and math.isfinite(with_check["running"])
    assert with_check["acc"] == without["acc"] > 0.9  # the same run: the check changed nothing
