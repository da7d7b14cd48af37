"""Why does resnet_fast under AdamW train best so far below where its sweep's loss falls? Three probes.

Issue 12's held-out task cifar_resnet_fast_adamw trains best at a max LR of 0.0016 while every sweep
kept falling to 0.035-0.13, so every rule picked 2-25x too high. Each probe trains the task's recipe at
a few max LRs (one seed) and reports test and training accuracy and how far the conv filters' norms
grew (end / start, the mean over filters of every trainable conv):
- as it is;
- BatchNorm's eps at 1e-5 instead of 1e-12 (is it the evaluation's running statistics?);
- BatchNorm shifts at 0.05x the LR (are the shifts, which Adam moves by about lr a step, the trouble?);
- the conv filters held at their starting norms after every step (BatchNorm after each conv makes only a
  filter's direction count, and a filter that grew by g turns g^2 times slower at the same LR: is it that
  growth, which stalls the low-LR end of the cycle, or the size of the steps themselves?).

    .venv/bin/python -m bench.resnet_adamw_probe --data ../shared/data/cifar10-jpg.tar.gz   # 2-3 min

`--sweep-growth TASKS` asks instead whether the growth could cap a pick: it sweeps each of bench.lr_regret's
tasks named (three seeds, as the product sweeps) with the filters' growth recorded at every step, and
prints where it first reaches 1.1x, 1.2x, 1.3x and 1.5x, over the grid's best max LR (read from the stored
runs' results.json).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from bench.lr_regret import TASKS_HELD_OUT, Task, accuracy, select_tasks, task_data, trained_model

LRS = (0.0016, 0.01, 0.03)


def _bn_eps(eps: float) -> Callable[[nn.Module], None]:
    def prepare(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = eps
    return prepare


_HELD: list[Any] = []  # the optimizer hooks of the probe that is training now (removed after it)


def _hold_filter_norms(model: nn.Module) -> None:
    """After every optimizer step, scale each trainable conv filter back to its norm at the start."""
    norms = filter_norms(model)
    params = {name: p for name, p in model.named_parameters() if name in norms}

    def hold(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for name, p in params.items():
                p.mul_((norms[name] / p.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1))

    _HELD.append(register_optimizer_step_post_hook(hold))


PROBES: dict[str, tuple[dict[str, Any], Callable[[nn.Module], None] | None]] = {
    "as it is": ({}, None),
    "BatchNorm eps 1e-5": ({}, _bn_eps(1e-5)),
    "BatchNorm shifts at 0.05x the LR": ({"bn_bias_lr_scale": 0.05}, None),
    "conv filters held at their starting norms": ({}, _hold_filter_norms),
}


def filter_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each trainable conv's per-filter norms (output channel by output channel)."""
    return {name: p.detach().flatten(1).norm(dim=1).clone() for name, p in model.named_parameters()
            if p.ndim == 4 and p.requires_grad}


def probe(task: Task, data: Any, max_lr: float, seed: int = 0, optimizer: dict[str, Any] | None = None,
          prepare: Callable[[nn.Module], None] | None = None) -> dict[str, float]:
    """Train once; test and training accuracy and the mean growth of the conv filters' norms."""
    start: dict[str, torch.Tensor] = {}

    def remember(model: nn.Module) -> None:
        if prepare is not None:
            prepare(model)
        start.update(filter_norms(model))

    run = replace(task, optimizer={**task.optimizer, **(optimizer or {})})
    try:
        model, spec, config = trained_model(run, data, max_lr, seed, prepare=remember)
    finally:
        while _HELD:
            _HELD.pop().remove()
    end = filter_norms(model)
    growth = torch.cat([end[name] / start[name] for name in start]).mean().item()
    return {"test": accuracy(model, data.test, data, spec, config),
            "train": accuracy(model, data.train, data, spec, config), "norm_growth": growth}


GROWTHS = (1.1, 1.2, 1.3, 1.5)
STORED_RUNS = (Path("bench/data/lr_regret"), Path("bench/data/lr_regret_heldout"))


def sweep_growth(task: Task, data: Any, seed: int) -> tuple[list[float], list[float], float | None]:
    """One sweep as the product runs it: (each step's LR, the filters' mean growth after it, ours' pick)."""
    from bench.sweep_noise import sweep_once

    start: dict[str, torch.Tensor] = {}
    growth: list[float] = []
    handles: list[Any] = []

    def watch(model: nn.Module) -> None:
        start.update(filter_norms(model))

        def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            now = filter_norms(model)
            growth.append(torch.cat([now[name] / start[name] for name in start]).mean().item())

        handles.append(register_optimizer_step_post_hook(record))

    try:
        result = sweep_once(task, data, seed, seed, prepare=watch)
    finally:
        for handle in handles:
            handle.remove()
    lrs = [r["lr"] for r in result.log if not r["skipped"]]
    return lrs, growth[: len(lrs)], result.suggestions.get("ours")


def first_reached(lrs: list[float], growth: list[float], level: float) -> float | None:
    """The first LR at which the growth reached `level` (None: never)."""
    return next((lr for lr, g in zip(lrs, growth, strict=False) if g >= level), None)


def growth_table(names: str, archive: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    best = {res["task"]: res["fit"]["best_lr"] for run in STORED_RUNS
            for res in json.loads((run / "results.json").read_text())["results"]}
    print(f"| task | grid's best max LR | ours' pick / best | {' | '.join(f'grown {g:g}x / best' for g in GROWTHS)} |")
    print(f"| --- | --- | --- |{' --- |' * len(GROWTHS)}")
    for task in select_tasks(names):
        data = task_data(task, archive, {})
        runs = [sweep_growth(task, data, seed) for seed in seeds]
        cells = [", ".join("-" if (v := first_reached(lrs, g, level)) is None else f"{v / best[task.name]:.2g}"
                           for lrs, g, _ in runs) for level in GROWTHS]
        ours = ", ".join("-" if p is None else f"{p / best[task.name]:.2g}" for _, _, p in runs)
        print(f"| {task.name} | {best[task.name]:.3g} | {ours} | {' | '.join(cells)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cifar10-jpg.tar.gz")
    parser.add_argument("--task", default="cifar_resnet_fast_adamw")
    parser.add_argument("--only", default="", help="run only the probes whose name holds this text")
    parser.add_argument("--sweep-growth", default=None, metavar="TASKS",
                        help="comma-separated tasks of bench.lr_regret: where their sweeps' filters grow, instead")
    args = parser.parse_args()
    tasks = {t.name: t for t in TASKS_HELD_OUT}
    if args.task not in tasks:
        raise SystemExit(f"unknown task {args.task}; known: {', '.join(tasks)}")
    torch.set_num_threads(1)
    if args.sweep_growth:
        growth_table(args.sweep_growth, args.data.resolve())
        return
    task = tasks[args.task]
    data = task_data(task, args.data, {})
    print(f"| probe | {' | '.join(f'max LR {lr:g}' for lr in LRS)} |")
    print(f"| --- |{' --- |' * len(LRS)}")
    for name, (optimizer, prepare) in PROBES.items():
        if args.only not in name:
            continue
        cells = []
        for lr in LRS:
            r = probe(task, data, lr, optimizer=optimizer, prepare=prepare)
            cells.append(f"test {100 * r['test']:.1f} %, train {100 * r['train']:.1f} %, "
                         f"filters {r['norm_growth']:.2f}x")
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
