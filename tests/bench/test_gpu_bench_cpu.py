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

from tests.helpers import BENCH_SCRIPT_RUN

ROOT = Path(__file__).resolve().parents[2]


@BENCH_SCRIPT_RUN
def test_cpu_half_of_the_gpu_benchmark_writes_results_and_plot(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "bench/gpu_bench.py", "--cpu", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]

    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    saved = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert printed == saved
    by_what = {r["what"]: r for r in saved}
    assert not [r for r in saved if "error" in r]
    assert [r["what"] for r in saved if "skipped" in r] == ["fashion_mnist-blog"]

    for preset in ("cifar10-fast", "cifar10-fast (warm worker)", "cifar10-fast 2 epochs", "cifar10-minigooglenet-fast",
                   "cifar10-blog", "cifar10-blog-fast", "cifar10-fast final seed 0", "cifar10-fast final seed 1"):
        assert 0.0 <= by_what[preset]["accuracy"] <= 1.0 and by_what[preset]["train_s"] > 0
    assert by_what["cifar10-blog"]["extrapolated"] is True and by_what["cifar10-blog-fast"]["extrapolated"] is True
    airbench = by_what["cifar10-fast at airbench's LR and decay"]
    assert airbench["weight_decay"] == 1.33e-3 and airbench["max_lr"] == 0.2
    assert airbench["fields"]["optimizer"]["norm_shift_decay"] is True
    fast_lr = by_what["cifar10-fast"]["max_lr"]
    assert by_what["cifar10-fast 2 epochs"]["epochs"] == 2 and by_what["cifar10-fast 2 epochs"]["max_lr"] == fast_lr
    assert by_what["cifar10-fast 2ep"]["epochs"] == 2 and by_what["cifar10-fast 2ep"]["max_lr"] == fast_lr
    assert by_what["cifar10-fast lookahead"]["fields"]["optimizer"]["lookahead"] is True
    assert by_what["cifar10-fast alternating-flips"]["fields"]["augment"] == {"flip_mode": "alternate"}
    # the final configuration: every change that did not lose to the preset, at two seeds
    kept = {r["variant"] for r in saved if "variant" in r and r["accuracy"] >= by_what["cifar10-fast"]["accuracy"]}
    finals = [by_what[f"cifar10-fast final seed {seed}"] for seed in (0, 1)]
    assert [f["seed"] for f in finals] == [0, 1] and finals[0]["fields"] == finals[1]["fields"]
    assert ("lookahead" in kept) == finals[0]["fields"].get("optimizer", {}).get("lookahead", False)
    assert finals[0]["max_lr"] == (0.2 if "airbench-hyper" in kept else fast_lr)
    assert by_what["range_test"]["recommendation"]["max_lr"] > 0 and by_what["range_test"]["sweep_s"] > 0
    assert any(w.startswith("lr_sweep range_test") for w in by_what)
    ablations = [r for r in saved if r["what"].startswith("ablation:")]
    assert len(ablations) == 13 and all(r["images_per_s"] > 0 for r in ablations)
    assert (tmp_path / "reports" / "cifar10-fast.txt").read_text().strip()

    with Image.open(tmp_path / "accuracy_vs_time.png") as png:
        assert png.format == "PNG" and png.size == (900, 550)
        png.load()
