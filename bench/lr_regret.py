"""How good is the range test's pick? Regret against a grid of trained max LRs, for every finder's rule.

Per task: the range test with several seeds (the sweep sized in epochs, from a start where the loss
moves), then a grid of max LRs log-spaced over two decades around the curve's zero-lag minimum, each
trained with two seeds and the same recipe (triangular, base = max/25, the step fitted so the run
ends on a whole cycle). A rule's regret = the best grid accuracy (mean of the seeds) - the accuracy at
the rule's pick, read off the grid by linear interpolation in log10(LR); a pick outside the grid is
read at the nearest edge and marked (a lower bound on its regret). `auto` is trained for real: the
range test's own recommendation (what a `max_lr: "auto"` job trains at) with the job's recipe.

    nice -n 10 .venv/bin/python bench/lr_regret.py --data ../shared/data/cifar10-jpg.tar.gz \
        --out runs/lr_regret > runs/lr_regret.log

CPU mode (default) uses tiny subsets at 16x16 and 2-3 epochs, about 30-40 minutes on 2 loaded cores;
--full trains the same tasks at full size (32x32, whole CIFAR-10 splits, more epochs) for a GPU.
Writes results.json, one PNG per task (docs/img/lr_regret_<task>.png with --figures) and a markdown
table (table.md) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clrcore.cycle_fit import fit_cycles
from clrcore.datasets import Dataset, Split, load_dataset, load_digits_dataset, make_dataset, sample
from clrcore.hooks import Hooks
from clrcore.runs import _sweep, fresh_model
from clrcore.schedules import schedule_from_spec
from clrcore.specs import RangeTestOptions, TrainSpec
from clrcore.suggest import (
    CLIFF_MARGIN,
    PEER_RULES,
    aggregate_picks,
    picks_from_reading,
    read_curve,
    recommend,
    safe_recommendation,
)
from clrcore.train_setup import config_from_spec, steps_per_epoch
from clrcore.trainer import TrainResult, train

# Builds the model a run starts from (spec, data, device); bench/finetune_regret.py loads pretrained weights.
ModelBuilder = Callable[[TrainSpec, Dataset, torch.device], nn.Module]

RULES = ("steepest", "valley", "slide", "min_loss_div10", "blog", "ours")
GRID_POINTS = 7
GRID_DECADES = (-1.6, 0.4)  # the grid spans the zero-lag minimum x 10**-1.6 .. x 10**0.4: the basin below the cliff
SWEEP_SEEDS = (0, 1, 2)
GRID_SEEDS = (0, 1)


@dataclass
class Task:
    """One benchmark task: data, model, optimizer, batch, epochs, and where its sweep starts and ends."""

    name: str
    data: str  # digits | cifar | cifar_gray
    model: str
    optimizer: dict[str, Any]
    batch_size: int
    epochs: int
    sweep: dict[str, Any]  # start_lr, end_lr, epochs
    train_images: int = 0  # CIFAR subsets only
    test_images: int = 0
    size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)  # more spec fields, as is (e.g. "finetune")


SGD = {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}
FAST_SGD = {"name": "sgd", "momentum": 0.85, "nesterov": True, "weight_decay": 5e-4, "bn_bias_lr_scale": 64.0}
ADAMW = {"name": "adamw", "momentum": 0.9, "weight_decay": 0.05}
# Sized for 2 shared CPU cores (one process per task, one thread each): tiny subsets, 10-16 px, 2 epochs.
# The sweep runs 2-6 epochs of the same data (90-135 steps) from 1e-4 (1e-6 for AdamW): five decades.
TASKS_CPU = [
    Task("digits_tiny_cnn", "digits", "tiny_cnn", SGD, 32, 2, {"start_lr": 1e-4, "end_lr": 10.0, "epochs": 3}),
    Task("cifar_resnet_fast", "cifar", "resnet_fast", FAST_SGD, 32, 2,
         {"start_lr": 1e-4, "end_lr": 10.0, "epochs": 6}, 480, 1000, 10),
    Task("cifar_minigooglenet", "cifar", "minigooglenet", SGD, 32, 2,
         {"start_lr": 1e-4, "end_lr": 10.0, "epochs": 6}, 480, 1000, 8),
    Task("gray_cifar_tiny_cnn", "cifar_gray", "tiny_cnn", SGD, 32, 2,
         {"start_lr": 1e-4, "end_lr": 10.0, "epochs": 2}, 2000, 1000),
    Task("cifar_tiny_cnn_adamw", "cifar", "tiny_cnn", ADAMW, 32, 2,
         {"start_lr": 1e-6, "end_lr": 1.0, "epochs": 2}, 2000, 1000),
]


def full_size(task: Task) -> Task:
    """The same task at full size for a GPU: 32x32, the whole splits, four times the epochs."""
    return Task(task.name, task.data, task.model, task.optimizer, max(task.batch_size, 128), task.epochs * 5,
                {**task.sweep, "epochs": 2}, 50_000 if task.train_images else 0, 10_000 if task.test_images else 0,
                32 if task.data != "digits" else 16, task.extra)


# ------------------------------------------------------------------------------------------ data


def _shrink(split: Split, size: int, gray: bool) -> Split:
    """Average-pool to `size` px and optionally to one luminance channel (uint8 kept)."""
    images = split.images.astype(np.float32)
    if gray:
        images = (images * np.array([0.299, 0.587, 0.114], np.float32)[None, :, None, None]).sum(1, keepdims=True)
    if images.shape[-1] != size:  # area-average resize (any size below 32)
        t = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(images), size)
        images = t.numpy()
    return Split(np.rint(images).clip(0, 255).astype(np.uint8), split.labels)


def task_data(task: Task, archive: Path | None, cache: dict[str, Dataset]) -> Dataset:
    if task.data == "digits":
        return load_digits_dataset()
    if "cifar" not in cache:
        if archive is None:
            raise SystemExit("--data cifar10-jpg.tar.gz is needed for the CIFAR tasks")
        cache["cifar"] = load_dataset("cifar10", archive.parent, path=archive.name)
    full = cache["cifar"]
    gray = task.data == "cifar_gray"
    train = _shrink(sample(full.train, task.train_images), task.size, gray)
    test = _shrink(sample(full.test, task.test_images), task.size, gray)
    return make_dataset(task.name, train, test, full.classes)


# ------------------------------------------------------------------------------------------ runs


def spec_for(task: Task, seed: int, max_lr: float | str) -> TrainSpec:
    return TrainSpec.model_validate({
        "dataset": "digits", "model": task.model, "batch_size": task.batch_size, "epochs": task.epochs,
        "optimizer": task.optimizer, "seed": seed, "device": "auto", "max_lr": max_lr,
        "augment": {"translate": 1, "flip": task.data != "digits"}, "policy": "triangular",
        "range_test": {**RangeTestOptions().model_dump(), **task.sweep}, "compile": False, **task.extra,
    })


def sweep(task: Task, data: Dataset, seed: int, build: ModelBuilder = fresh_model) -> dict[str, Any]:
    """One range test (the job's own sweep code); returns the raw curve and the job's recommendation."""
    spec = spec_for(task, seed, "auto")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(spec, data, device)
    started = time.perf_counter()
    result = _sweep(spec, spec.range_test, "triangular", data, model, device, Hooks())
    taken = [r for r in result.log if not r["skipped"]]
    return {"seed": seed, "lrs": [r["lr"] for r in taken], "losses": [r["loss"] for r in taken],
            "stop_reason": result.stop_reason, "warnings": result.warnings,
            "auto_max_lr": auto_max_lr(task, [r["lr"] for r in taken], [r["loss"] for r in taken]),
            "seconds": round(time.perf_counter() - started, 1)}


def auto_max_lr(task: Task, lrs: list[float], losses: list[float]) -> float:
    """What a `max_lr: "auto"` job trains at for this curve: ours, or the safe fallback without a pick."""
    try:
        return recommend(picks_from_reading(read_curve(lrs, losses))).max_lr
    except ValueError:
        return safe_recommendation(task.optimizer["name"]).max_lr


def trained(task: Task, data: Dataset, max_lr: float, seed: int,
            build: ModelBuilder = fresh_model) -> tuple[nn.Module, TrainResult]:
    """The model trained at `max_lr` with the product's recipe (step fitted to the epochs), and its result."""
    spec = spec_for(task, seed, max_lr)
    iters = steps_per_epoch(len(data.train), spec.batch_size)
    fit = fit_cycles(spec.epochs, iters)
    if fit.step_iterations is None:
        spec = spec.model_copy(update={"policy": "one_cycle"})
    else:
        spec = spec.model_copy(update={"step_size": fit.step_iterations, "step_unit": "iterations"})
    schedule = schedule_from_spec(spec, base_lr=max_lr / 25, max_lr=max_lr, iters_per_epoch=iters)
    config = config_from_spec(spec, schedule, "auto")
    model = build(spec, data, config.device)
    return model, train(model, data, config)


def train_at(task: Task, data: Dataset, max_lr: float, seed: int, build: ModelBuilder = fresh_model) -> float:
    """Test accuracy after training at `max_lr` with the product's recipe (step fitted to the epochs)."""
    try:
        _, result = trained(task, data, max_lr, seed, build)
    except Exception as exc:  # a diverged run is a data point (chance accuracy), not a crash
        print(json.dumps({"diverged": task.name, "max_lr": max_lr, "seed": seed, "error": str(exc)[:120]}),
              flush=True)
        return 1.0 / len(data.classes)
    return float(result.history["val_acc"][-1])


# ------------------------------------------------------------------------------------------ analysis


def interpolate(grid_lrs: list[float], accs: list[float], lr: float) -> tuple[float, bool]:
    """Accuracy at `lr` by linear interpolation in log10(LR); True when `lr` lies outside the grid."""
    x = np.log10(grid_lrs)
    inside = x[0] - 1e-9 <= math.log10(lr) <= x[-1] + 1e-9
    return float(np.interp(math.log10(lr), x, accs)), not inside


def rule_picks(curves: list[dict[str, Any]], cliff_margin: float | None = None) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {rule: [] for rule in RULES}
    for curve in curves:
        picks = picks_from_reading(read_curve(curve["lrs"], curve["losses"]), cliff_margin)
        for rule in RULES:
            out[rule].append(picks[rule])
    return out


def best_lr(grid_lrs: list[float], accs: list[float]) -> float:
    """The grid's best max_lr, read off a parabola through the best point and its neighbours in log LR."""
    x, y = np.log10(grid_lrs), np.asarray(accs)
    k = int(np.argmax(y))
    if 0 < k < len(y) - 1:
        a, b, _ = np.polyfit(x[k - 1 : k + 2], y[k - 1 : k + 2], 2)
        if a < 0:
            return float(10 ** np.clip(-b / (2 * a), x[k - 1], x[k + 1]))
    return float(10 ** x[k])


def learned_margin(results: list[dict[str, Any]], leave_out: str | None = None) -> float:
    """CLIFF_MARGIN from the grid: geometric mean over tasks of the cliff / the best grid max_lr."""
    ratios = []
    for res in results:
        if res["task"] == leave_out:
            continue
        minima = [read_curve(c["lrs"], c["losses"]).cliff_lr for c in res["curves"]]
        ratios.append(math.log10(float(np.exp(np.mean(np.log(minima)))) / best_lr(res["grid_lrs"], res["grid_acc"])))
    return float(10 ** np.mean(ratios))


def regrets(res: dict[str, Any], margin: float | None = None) -> dict[str, dict[str, Any]]:
    best = max(res["grid_acc"])
    out: dict[str, dict[str, Any]] = {}
    for rule, picks in rule_picks(res["curves"], margin).items():
        values, outside = [], False
        for pick in picks:
            if pick is None:
                continue
            acc, off = interpolate(res["grid_lrs"], res["grid_acc"], pick)
            values.append(best - acc)
            outside |= off
        _, spread = aggregate_picks(picks)
        out[rule] = {"regret": float(np.mean(values)) * 100 if values else None, "outside": outside,
                     "spread": spread, "picks": picks}
    return out


# ------------------------------------------------------------------------------------------ figures


def plot_task(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    lrs = res["grid_lrs"]
    for k, accs in enumerate(res["grid_acc_by_seed"]):
        ax.plot(lrs, np.asarray(accs) * 100, "o", color="0.6", ms=4, label="grid, each seed" if k == 0 else None)
    ax.plot(lrs, np.asarray(res["grid_acc"]) * 100, "-", color="k", label="grid, mean of seeds")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    top = max([*res["grid_acc"], *res["auto"]["acc"], *np.ravel(res["grid_acc_by_seed"])]) * 100
    for i, (rule, info) in enumerate(res["regret"].items()):
        for j, pick in enumerate(p for p in info["picks"] if p):
            ax.axvline(pick, color=colors[i % len(colors)], alpha=0.7, lw=1.2,
                       label=f"{rule} ({info['regret']:.1f} pts)" if j == 0 and info["regret"] is not None else None)
    for k, (lr, acc) in enumerate(zip(res["auto"]["max_lrs"], res["auto"]["acc"], strict=True)):
        ax.plot(lr, acc * 100, "*", color="red", ms=12, label="auto job (trained)" if k == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("max LR")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, top - 25), top + 2)
    ax.set_title(f"{res['task']}: accuracy vs max LR, each rule's pick per sweep seed")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict[str, Any]], margin: float) -> str:
    names = [r["task"] for r in results]
    lines = ["| rule | " + " | ".join(names) + " | mean | worst pick spread (max/min) |",
             "| --- | " + " | ".join("---" for _ in names) + " | --- | --- |"]
    for rule in RULES:
        cells, values, spreads = [], [], []
        for res in results:
            info = res["regret"][rule]
            if info["regret"] is None:
                cells.append("no pick")
                continue
            values.append(info["regret"])
            spreads.append(info["spread"] or 1.0)
            cells.append(f"{'≥' if info['outside'] else ''}{info['regret']:.1f}")
        label = PEER_RULES.get(rule, f"ours (the zero-lag curve's cliff / {margin:.2g})")
        mean = f"{np.mean(values):.2f}" if values else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {max(spreads, default=1):.2f}x |")
    cells = []
    for res in results:
        cells.append(f"{res['auto']['regret']:.1f}")
    lines.append("| `auto` job, trained (2 seeds) | " + " | ".join(cells)
                 + f" | {np.mean([r['auto']['regret'] for r in results]):.2f} | - |")
    loo = [r["regret_loo"]["ours"]["regret"] for r in results]
    lines.append("| ours, margin learned leaving the task out | " + " | ".join(f"{v:.1f}" for v in loo)
                 + f" | {np.mean(loo):.2f} | - |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def run_task(task: Task, data: Dataset) -> dict[str, Any]:
    started = time.perf_counter()
    curves = [sweep(task, data, seed) for seed in SWEEP_SEEDS]
    for c in curves:
        print(json.dumps({"task": task.name, "sweep_seed": c["seed"], "stop": c["stop_reason"],
                          "auto_max_lr": c["auto_max_lr"], "s": c["seconds"], "warnings": c["warnings"]}),
              flush=True)
    minima = [read_curve(c["lrs"], c["losses"]).min_lr for c in curves]
    centre = float(np.exp(np.mean(np.log(minima))))
    grid_lrs = [float(centre * 10**e) for e in np.linspace(*GRID_DECADES, GRID_POINTS)]
    by_seed = []
    for seed in GRID_SEEDS:
        by_seed.append([train_at(task, data, lr, seed) for lr in grid_lrs])
        print(json.dumps({"task": task.name, "grid_seed": seed, "lrs": grid_lrs, "acc": by_seed[-1]}), flush=True)
    grid_acc = np.mean(by_seed, axis=0).tolist()
    res = {"task": task.name, "task_setup": task.__dict__, "curves": curves, "grid_lrs": grid_lrs,
           "grid_acc_by_seed": by_seed, "grid_acc": grid_acc}
    res["auto"] = train_auto(task, data, res)
    res["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"task": task.name, "auto": res["auto"], "best_grid": max(grid_acc),
                      "s": res["seconds"]}), flush=True)
    return res


def run_in_parallel(tasks: list[Task], args: argparse.Namespace) -> None:
    """Each task in its own process (logs in out/<task>.log); returns when all have finished."""
    import subprocess
    import sys

    procs = []
    for task in tasks:
        cmd = [sys.executable, "-m", "bench.lr_regret", "--out", str(args.out), "--tasks", task.name]
        cmd += ["--redo-auto"] if args.redo_auto else []
        cmd += ["--data", str(args.data)] if args.data else []
        cmd += ["--full"] if args.full else []
        with (args.out / f"{task.name}{'.auto' if args.redo_auto else ''}.log").open("w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    for proc in procs:
        proc.wait()


def train_auto(task: Task, data: Dataset, res: dict[str, Any]) -> dict[str, Any]:
    """The `auto` jobs: each grid seed trains at what its own sweep (same seed) recommends now."""
    lrs = [auto_max_lr(task, c["lrs"], c["losses"]) for c in res["curves"][: len(GRID_SEEDS)]]
    acc = [train_at(task, data, lr, seed) for lr, seed in zip(lrs, GRID_SEEDS, strict=True)]
    return {"max_lrs": lrs, "acc": acc, "regret": (max(res["grid_acc"]) - float(np.mean(acc))) * 100,
            "cliff_margin": CLIFF_MARGIN}


def redo_auto(tasks: list[Task], args: argparse.Namespace) -> None:
    """Train the `auto` jobs again on stored results (after the rule changed); the grid is kept."""
    archive = args.data.resolve() if args.data else None
    cache: dict[str, Dataset] = {}
    for task in tasks:
        path = args.out / f"task_{task.name}.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        res["auto"] = train_auto(task, task_data(task, archive, cache), res)
        print(json.dumps({"task": task.name, "auto": res["auto"]}), flush=True)
        path.write_text(json.dumps(res, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="cifar10-jpg.tar.gz")
    parser.add_argument("--out", type=Path, default=Path("runs/lr_regret"))
    parser.add_argument("--full", "--gpu", action="store_true", help="full-size tasks (for a GPU)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    parser.add_argument("--figures", type=Path, default=None, help="also write the PNGs here (docs/img)")
    parser.add_argument("--parallel", action="store_true",
                        help="one process per task (one thread each), then the analysis: on shared cores")
    parser.add_argument("--reanalyse", action="store_true", help="re-read out/task_*.json, train nothing")
    parser.add_argument("--redo-auto", action="store_true",
                        help="re-train only the auto jobs of stored tasks with the current rule, then analyse")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = [full_size(t) for t in TASKS_CPU] if args.full else TASKS_CPU
    if args.tasks:
        tasks = [t for t in tasks if t.name in args.tasks.split(",")]
    if args.parallel:
        run_in_parallel(tasks, args)
    elif args.redo_auto:
        torch.set_num_threads(1)
        redo_auto(tasks, args)
        if args.tasks:
            return
    elif not args.reanalyse:
        if not args.full:
            torch.set_num_threads(1)
        archive = args.data.resolve() if args.data else None
        cache: dict[str, Dataset] = {}
        for task in tasks:
            res = run_task(task, task_data(task, archive, cache))
            (args.out / f"task_{task.name}.json").write_text(json.dumps(res, default=str))
        if args.tasks:  # one task of a parallel run: the parent analyses
            return
    order = [t.name for t in tasks]
    results = [json.loads((args.out / f"task_{name}.json").read_text()) for name in order
               if (args.out / f"task_{name}.json").exists()]
    margin = learned_margin(results)
    for res in results:
        res["regret"] = regrets(res)
        res["regret_learned"] = regrets(res, margin)
        res["regret_loo"] = regrets(res, learned_margin(results, leave_out=res["task"]))
        for folder in filter(None, (args.out, args.figures)):
            plot_task(res, folder / f"lr_regret_{res['task']}.png")
    text = (f"shipped CLIFF_MARGIN {CLIFF_MARGIN:g}; margin learned on these grids: {margin:.3g}\n\n"
            + table(results, CLIFF_MARGIN))
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps({"results": results, "learned_margin": margin}, default=str))
    print(text)


if __name__ == "__main__":
    main()
