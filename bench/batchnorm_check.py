"""When do BatchNorm's running statistics go stale? The trainer's end-of-run check on the regret tasks' runs.

Each (task, max LR, seed) trains with bench.lr_regret's recipe twice: as the product trains now (the check
before the final evaluation, the statistics recomputed when stale, clrcore/batchnorm_stats.py) and with the
check unable to fire (as the trainer was before it). Per run: the check's two losses on training batches
(with the running statistics, with each batch's own), their ratio, whether it recomputed, and the test
accuracy both ways. The default runs are the ones docs/benchmarks.md reports (issue 12): resnet_fast on
digits around where its grid turned into a coin toss, and healthy runs of the four nets at their best and top LRs.

    .venv/bin/python -m bench.batchnorm_check --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bench.lr_regret import accuracy, select_tasks, task_data, trained_run
from clrcore import batchnorm_stats
from clrcore.datasets import Dataset

RUNS = (
    "fresh_digits_resnet_fast:0.045:0", "fresh_digits_resnet_fast:0.021:2", "fresh_digits_resnet_fast:0.021:0",
    "fresh_digits_resnet_fast:0.0975:1", "fresh_digits_resnet_fast:0.00975:0",
    "cifar_resnet_fast:0.4:0", "cifar_resnet_fast:4:0", "fresh2_gray12_resnet_fast_b64:3:0",
    "digits_tiny_cnn:0.3:0", "digits_tiny_cnn:3:0", "cifar_minigooglenet:0.01:0", "cifar_minigooglenet:0.1:0",
    "gray_cifar_tiny_cnn:0.6:0", "cifar_small_cnn:0.1:0",
)


def run(task_name: str, max_lr: float, seed: int, data: Dataset, check: bool) -> dict:
    """Test accuracy and the check's figures of one run; `check=False` keeps the check from recomputing."""
    factor = batchnorm_stats.STALE_FACTOR
    batchnorm_stats.STALE_FACTOR = factor if check else math.inf
    try:
        model, spec, config, result = trained_run(select_tasks(task_name)[0], data, max_lr, seed)
    except Exception as exc:  # a diverged run: chance, as the grid counts it
        return {"acc": 1 / len(data.classes), "error": str(exc)[:80]}
    finally:
        batchnorm_stats.STALE_FACTOR = factor
    found = result.batchnorm_check
    assert found is not None
    return {"acc": accuracy(model, data.test, data, spec, config), "running": found.running_loss,
            "batch": found.batch_loss, "refreshed": found.refreshed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="cifar10-jpg.tar.gz (the CIFAR tasks)")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated task:max_lr:seed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    datasets: dict[str, Dataset] = {}
    print("| task | max LR | seed | loss, running statistics | loss, batch statistics | ratio | recomputed "
          "| test accuracy without the check | with it |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for item in args.runs.split(","):
        name, lr, seed = item.split(":")
        data = task_data(select_tasks(name)[0], args.data.resolve() if args.data else None, datasets)
        started = time.perf_counter()
        before = run(name, float(lr), int(seed), data, check=False)
        after = run(name, float(lr), int(seed), data, check=True)
        if "error" in after:
            print(f"| {name} | {lr} | {seed} | diverged: {after['error']} | | | | {100 * before['acc']:.1f} "
                  f"| {100 * after['acc']:.1f} |", flush=True)
            continue
        print(f"| {name} | {lr} | {seed} | {after['running']:.3g} | {after['batch']:.3g} "
              f"| {after['running'] / after['batch']:.2f} | {'yes' if after['refreshed'] else 'no'} "
              f"| {100 * before['acc']:.1f} | {100 * after['acc']:.1f} |", flush=True)
        print(json.dumps({"run": item, "before": before, "after": after,
                          "s": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
