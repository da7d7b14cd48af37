"""Where does a sweep's pick vary from? The seed's two draws apart, and two ways to calm the batches.

The issue asks ours' pick to spread less than 1.5x across sweep seeds; one sweep's cliff varies by a
factor of 1.4-1.7 (one SD) on bench/lr_regret.py's tasks, and no reading of the curve tried there
narrowed it without losing regret elsewhere. A sweep's seed draws two things: the model's initial
weights and the order (and augmentation) of its batches. This script sweeps one task `--sweeps` times
per mode, as the product sweeps it (`clrcore.runs._sweep_one`, the default 60 steps a decade), and
reports the SD of ln(pick) for ours and two peers:

- `init`: the initial weights drawn anew each time, the batch order fixed;
- `order`: the batch order drawn anew, the weights fixed;
- `both`: both drawn anew, as two real jobs differ;
- `accumN`: both, with N batches averaged into each optimizer step (`range_test.accumulation_steps`):
  less gradient and loss noise per step, at N times the cost;
- `balanced`: both, with each batch holding the classes in their proportions (a stratified order)
  instead of a plain shuffle: no batch far from the class mix;
- `branchN`: one trajectory for the first N steps (the weights and the batch order fixed), then the
  batch order drawn anew: what seeds branched from one sweep at its N-th step would read, where the
  shared first N steps are paid once (N 120: from 1e-2 of a 1e-4-to-10 sweep).

    .venv/bin/python -m bench.sweep_noise --task digits_tiny_cnn --out runs/sweep_noise
    .venv/bin/python -m bench.sweep_noise --task gray_cifar_tiny_cnn --data ../shared/data/cifar10-jpg.tar.gz \
        --out runs/sweep_noise

No grid, no training runs: picks only (about 5 s a sweep for these two tasks, 17 s with accum4).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.lr_regret import Task, select_tasks, spec_for, task_data
from clrcore import loaders, runs
from clrcore.datasets import Dataset
from clrcore.hooks import Hooks
from clrcore.lr_range import RangeTestResult
from clrcore.runs import _sweep_one, fresh_model

MODES = ("init", "order", "both", "accum2", "accum4", "balanced", "branch60", "branch120")
RULES = ("ours", "valley", "min_loss")
FIXED_SEED = 0
FIRST_SEED = 100  # the drawn seeds: 100, 101, ... (none of lr_regret's sweep seeds 0-17)


def sweep_once(task: Task, data: Dataset, init_seed: int, order_seed: int,
               range_test: dict[str, Any] | None = None,
               prepare: Callable[[nn.Module], None] | None = None) -> RangeTestResult:
    """One sweep as the product runs it (`clrcore.runs._sweep_one`, on the CPU): the initial weights of
    `init_seed`, the batch order of `order_seed`, `range_test` fields over one seed; `prepare` sees the
    fresh model first (bench/resnet_adamw_probe.py records its filters there)."""
    device = torch.device("cpu")
    fields = {"seeds": 1, **(range_test or {})}
    order = spec_for(task, order_seed, "auto", fields)
    assert order.range_test is not None
    model = fresh_model(spec_for(task, init_seed, "auto", fields), data, device)
    if prepare is not None:
        prepare(model)
    return _sweep_one(order, order.range_test, "triangular", data, model, device, Hooks())


def stratified_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A shuffled order in which every class is spread evenly: each item ranks at its (jittered) place
    within its own shuffled class, so any run of consecutive items holds the classes in proportion."""
    rank = torch.empty(len(labels))
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        k = len(members)
        places = (torch.arange(k) + torch.rand(k, generator=generator)) / k
        rank[members[torch.randperm(k, generator=generator)]] = places
    return torch.argsort(rank)


@contextlib.contextmanager
def balanced_batches(labels: np.ndarray) -> Iterator[None]:
    """While open, every training epoch the loaders plan takes a stratified order (a bench-only probe:
    the product's loaders keep the plain shuffle)."""
    plain = loaders.plan_epoch
    classes = torch.as_tensor(labels)

    def plan(n: int, **kw: Any) -> loaders.EpochPlan:
        drawn = plain(n, **kw)
        return dataclasses.replace(drawn, order=stratified_order(classes, kw["generator"])) if kw["train"] else drawn

    loaders.plan_epoch = plan
    try:
        yield
    finally:
        loaders.plan_epoch = plain


class Spliced:
    """The first `shared` batches of `base` (cycled), then `branch`'s (cycled) for ever."""

    def __init__(self, base: Any, branch: Any, shared: int) -> None:
        self.base, self.branch, self.shared = base, branch, shared

    def __iter__(self) -> Iterator[Any]:
        given = 0
        while given < self.shared:
            for batch in self.base:
                if given == self.shared:
                    break
                given += 1
                yield batch
        while True:
            yield from self.branch


@contextlib.contextmanager
def branched_batches(shared: int, base_seed: int = FIXED_SEED) -> Iterator[None]:
    """While open, the sweep's training loader gives the batches of order `base_seed` for `shared` steps,
    then those of its own seed (a bench-only probe of branched seeds)."""
    plain = runs.make_loader

    def make(split: Any, batch_size: int, **kw: Any) -> Any:
        own = plain(split, batch_size, **kw)
        if not kw.get("train"):
            return own
        fixed = torch.Generator(device=kw["generator"].device).manual_seed(base_seed)
        return Spliced(plain(split, batch_size, **{**kw, "generator": fixed}), own, shared)

    runs.make_loader = make
    try:
        yield
    finally:
        runs.make_loader = plain


def sweep_picks(task_name: str, archive: Path | None, mode: str, sweeps: int) -> list[dict[str, float | None]]:
    """`sweeps` sweeps of the task in `mode`; each one's picks for RULES."""
    task = select_tasks(task_name)[0]
    data = task_data(task, archive, {})
    range_test: dict[str, Any] = {}
    if mode.startswith("accum"):
        range_test["accumulation_steps"] = int(mode.removeprefix("accum"))
    picks = []
    probe: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if mode == "balanced":
        probe = balanced_batches(data.train.labels)
    elif mode.startswith("branch"):
        probe = branched_batches(int(mode.removeprefix("branch")))
    with probe:
        for i in range(sweeps):
            fixed_init = mode == "order" or mode.startswith("branch")
            result = sweep_once(task, data, FIXED_SEED if fixed_init else FIRST_SEED + i,
                                FIXED_SEED if mode == "init" else FIRST_SEED + i, range_test)
            picks.append({rule: result.suggestions.get(rule) for rule in RULES})
            print(json.dumps({"task": task.name, "mode": mode, "sweep": i, **picks[-1]}), flush=True)
    return picks


def spread(picks: list[dict[str, float | None]], rule: str) -> tuple[float, float, int]:
    """(SD of ln(pick), max/min, sweeps that picked) of `rule` over the sweeps."""
    logs = np.log([float(v) for p in picks if (v := p[rule])])
    return float(np.std(logs, ddof=1)), math.exp(float(np.ptp(logs))), len(logs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, help="a task of bench.lr_regret (TASKS_CPU or TASKS_HELD_OUT)")
    parser.add_argument("--data", type=Path, default=None, help="cifar10-jpg.tar.gz (the CIFAR tasks)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--sweeps", type=int, default=10, help="sweeps per mode")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep_noise"))
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"unknown mode {', '.join(unknown)}; known: {', '.join(MODES)}")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    archive = args.data.resolve() if args.data else None
    results = {mode: sweep_picks(args.task, archive, mode, args.sweeps) for mode in modes}
    (args.out / f"{args.task}.json").write_text(json.dumps(results, indent=1))
    print(f"\n| {args.task}: seed draws | " + " | ".join(f"{r}: SD of ln(pick), max/min" for r in RULES) + " |")
    print("| --- |" + " --- |" * len(RULES))
    for mode, picks in results.items():
        cells = []
        for rule in RULES:
            sd, ratio, n = spread(picks, rule)
            cells.append(f"{sd:.2f}, {ratio:.1f}x" + (f" ({n} of {len(picks)})" if n < len(picks) else ""))
        print(f"| {mode} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
