"""bench/preset_grid.py: a preset trained at a fixed max LR keeps its recipe, and a bad preset is one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.preset_grid import accuracy_at

ROOT = Path(__file__).resolve().parents[2]


def test_a_fixed_max_lr_trains_the_preset_at_it():
    accuracy, max_lr = accuracy_at("digits-demo", 0.3, 0)
    assert max_lr == pytest.approx(0.3) and accuracy > 0.95  # its grid reads 99.2 % there (docs/benchmarks.md)


def test_an_unknown_preset_is_refused_in_one_line():
    run = subprocess.run([sys.executable, "-m", "bench.preset_grid", "--preset", "no-such"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "unknown preset 'no-such'; known: digits-demo" in run.stderr
    assert "Traceback" not in run.stderr
