"""A preset's own recipe at fixed max LRs (base = max/25): where its best lies, to check its range test.

    .venv/bin/python -m bench.preset_grid --preset digits-demo --lo 0.05 --hi 5 --points 7 --seeds 3

Prints one JSON line per max LR (its test accuracy per seed), then each seed's range-test pick with
the preset's sweep as it is. CPU presets only: every run trains the whole preset.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from clrcore.presets import PRESETS
from clrcore.runs import run_job
from clrcore.specs import TrainSpec


def accuracy_at(preset: str, max_lr: float | str, seed: int) -> tuple[float, float]:
    """The preset trained at `max_lr` ("auto": at its range test's pick): (test accuracy, max LR trained)."""
    fixed = {} if max_lr == "auto" else {"base_lr": float(max_lr) / 25}
    with tempfile.TemporaryDirectory() as folder:
        summary = run_job(TrainSpec(preset=preset, max_lr=max_lr, seed=seed, **fixed), Path(folder),
                          data_dir=Path(folder))
    return float(summary["accuracy"]), float(summary["max_lr"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="digits-demo")
    parser.add_argument("--lo", type=float, default=0.05)
    parser.add_argument("--hi", type=float, default=5.0)
    parser.add_argument("--points", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.preset not in PRESETS:
        parser.error(f"unknown preset {args.preset!r}; known: {', '.join(PRESETS)}")
    torch.set_num_threads(args.threads)
    for lr in np.geomspace(args.lo, args.hi, args.points):
        accs = [accuracy_at(args.preset, float(lr), seed)[0] for seed in range(args.seeds)]
        print(json.dumps({"max_lr": round(float(lr), 4), "acc": accs, "mean": round(float(np.mean(accs)), 4)}),
              flush=True)
    for seed in range(args.seeds):
        acc, picked = accuracy_at(args.preset, "auto", seed)
        print(json.dumps({"auto": seed, "max_lr": round(picked, 4), "acc": acc}), flush=True)


if __name__ == "__main__":
    main()
