"""The CPU half of bench/gpu_bench.py runs end to end: a smoke test of the GPU script's code paths.

It asserts that every item produced a result (no errors, nothing skipped but the documented
Fashion-MNIST line), that each line is JSON, and that the plot is a PNG; never anything about time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_half_of_the_gpu_benchmark_writes_results_and_plot(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "bench/gpu_bench.py", "--cpu", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    saved = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert printed == saved
    by_what = {r["what"]: r for r in saved}
    assert not [r for r in saved if "error" in r]
    assert [r["what"] for r in saved if "skipped" in r] == ["fashion_mnist-blog"]

    for preset in ("cifar10-fast", "cifar10-fast (warm worker)", "cifar10-fast 2 epochs", "cifar10-minigooglenet-fast",
                   "cifar10-blog"):
        assert 0.0 <= by_what[preset]["accuracy"] <= 1.0 and by_what[preset]["train_s"] > 0
    assert by_what["cifar10-blog"]["extrapolated"] is True
    assert by_what["cifar10-fast at airbench's LR and decay"]["weight_decay"] == 1.33e-3
    assert by_what["cifar10-fast at airbench's LR and decay"]["max_lr"] == 0.2
    assert by_what["cifar10-fast 2 epochs"]["epochs"] == 2
    assert by_what["cifar10-fast 2 epochs"]["max_lr"] == by_what["cifar10-fast"]["max_lr"]
    assert by_what["range_test"]["recommendation"]["max_lr"] > 0
    assert any(w.startswith("lr_sweep range_test") for w in by_what)
    ablations = [r for r in saved if r["what"].startswith("ablation:")]
    assert len(ablations) == 13 and all(r["images_per_s"] > 0 for r in ablations)
    assert (tmp_path / "reports" / "cifar10-fast.txt").read_text().strip()

    with Image.open(tmp_path / "accuracy_vs_time.png") as png:
        assert png.format == "PNG" and png.size == (900, 550)
        png.load()
