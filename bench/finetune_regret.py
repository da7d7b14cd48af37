"""Fine-tuning: the range test's recommendation against a grid of head max LRs (issue 17).

Step 1 pretrains torchvision's resnet18 from scratch on CIFAR-10 classes 0-4 and saves its weights as
safetensors (`clrcore.weights`). Step 2 fine-tunes those weights on classes 5-9 (other images, other
classes) with the `finetune` spec: a fresh head, the body frozen for the first epoch, three layer
groups whose LRs are spread log-linearly from head / body_lr_divisor to the head's. The range test
sweeps the head's LR with the ratios fixed (several seeds); a grid of head max LRs, log-spaced over two
decades around the sweeps' zero-lag minimum, is trained with the same recipe (triangular, base =
max/25, the step fitted to the epochs: bench/lr_regret.py's, whose helpers this reuses), and so is the
`auto` pick of each sweep. Regret = the best grid accuracy (mean of the seeds) - the accuracy at the
pick. A from-scratch resnet18 (no weights, no groups, no freezing) on the same fine-tuning data, at the
best of a few LRs, shows what the pretraining is worth.

    nice -n 10 .venv/bin/python -m bench.finetune_regret --data ../shared/data/cifar10-jpg.tar.gz \
        --out runs/finetune_regret --figure docs/img/finetune_regret.png --parallel 2

CPU mode (default): 32 px, 3,000 pretraining and 1,000 fine-tuning images: 34 minutes on two cores at
load average 15-25 (six sessions sharing them), two one-thread processes. --full (for a GPU): 224 px
(CIFAR upscaled), whole class splits (25,000 + 25,000 images, 5,000 test), more epochs. Writes
results.json, table.md and the PNG; --reanalyse redraws them from results.json without training;
--extend-grid, --add-scratch and --add-plain add runs to a stored result.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.lr_regret import SGD, Task, spec_for, task_data
from bench.regret_interp import GRID_DECADES, best_lr, regrets, sweep, train_at, trained
from clrcore import catalog, finetune
from clrcore.datasets import Dataset, Split, load_dataset, make_dataset
from clrcore.runs import fresh_model
from clrcore.specs import TrainSpec
from clrcore.suggest import CLIFF_MARGIN, PEER_RULES, TRIANGULAR_BASE_DIVISOR, read_curve
from clrcore.weights import load_weights, save_weights

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)  # airplane automobile bird cat deer
FINETUNE_CLASSES = (5, 6, 7, 8, 9)  # dog frog horse ship truck
WEIGHTS_FILE = "pretrained_resnet18.safetensors"


@dataclass
class Setup:
    """Sizes of the two steps; CPU, FULL and the test's tiny one differ only here."""

    pretrain_images: int = 3000
    pretrain_test: int = 1000
    pretrain_epochs: int = 4
    pretrain_lr: float = 0.1  # fixed: step 1 only makes weights to start from
    train_images: int = 1000
    test_images: int = 1000
    epochs: int = 4
    size: int = 32  # stored CIFAR side; `image_size` above it upscales (resize_dataset)
    image_size: int | None = None
    batch_size: int = 64
    model: str = "resnet18"
    pretrain_classes: tuple[int, ...] = PRETRAIN_CLASSES
    finetune_classes: tuple[int, ...] = FINETUNE_CLASSES  # --swap-classes exchanges the two
    # fastai's recipe, with body_lr_divisor 10 (the spec's default is fastai's 100): a body pretrained on
    # 3,000 small images of other classes has more to learn than an ImageNet one
    finetune: dict[str, Any] = field(default_factory=lambda: {"freeze_epochs": 1, "groups": 3,
                                                              "body_lr_divisor": 10.0})
    sweep: dict[str, Any] = field(default_factory=lambda: {"start_lr": 1e-4, "end_lr": 10.0, "epochs": 6})
    sweep_seeds: tuple[int, ...] = (0, 1, 2)
    grid_points: int = 6
    grid_seeds: tuple[int, ...] = (0, 1)
    scratch_lrs: tuple[float, ...] = (0.03, 0.1, 0.3)
    scratch_seeds: tuple[int, ...] = (0,)


CPU = Setup()
FULL = Setup(pretrain_images=25_000, pretrain_test=5000, pretrain_epochs=20, train_images=25_000,
             test_images=5000, epochs=10, image_size=224, batch_size=128,
             sweep={"start_lr": 1e-5, "end_lr": 10.0, "epochs": 1}, grid_seeds=(0, 1, 2),
             scratch_lrs=(0.03, 0.1, 0.3, 1.0))


def tasks(setup: Setup) -> dict[str, Task]:
    """lr_regret Tasks for the kinds of run: pretraining, fine-tuning, from scratch, and `plain` (the
    pretrained weights with a fresh head, every layer at one LR, nothing frozen: the weights without
    the fine-tuning recipe)."""
    # lr_regret's fixed `grid` is unused here: this grid comes from the sweeps (`grid_lrs` below)
    pre = Task("pretrain", "cifar", setup.model, SGD, setup.batch_size, setup.pretrain_epochs, grid=(0.0, 0.0),
               sweep=setup.sweep, train_images=setup.pretrain_images, test_images=setup.pretrain_test,
               size=setup.size)
    tune = Task("finetune", "cifar", setup.model, SGD, setup.batch_size, setup.epochs, grid=(0.0, 0.0),
                sweep=setup.sweep, train_images=setup.train_images, test_images=setup.test_images,
                size=setup.size, extra={"finetune": setup.finetune})
    plain = {"finetune": {"freeze_epochs": 0, "groups": 1, "body_lr_divisor": 1.0}}
    return {"pretrain": pre, "finetune": tune, "scratch": replace(tune, name="scratch", extra={}),
            "plain": replace(tune, name="plain", extra=plain)}


# ------------------------------------------------------------------------------------------ data


def class_subset(data: Dataset, classes: tuple[int, ...]) -> Dataset:
    """Only `classes`, relabelled 0..k-1 in that order (statistics recomputed on what is kept)."""
    mapping = np.full(len(data.classes), -1, np.int64)
    mapping[list(classes)] = np.arange(len(classes))

    def keep(split: Split) -> Split:
        rows = np.isin(split.labels, classes)
        return Split(split.images[rows], mapping[split.labels[rows]], split.crop)

    return make_dataset(data.name, keep(data.train), keep(data.test), [data.classes[c] for c in classes])


def step_data(full: Dataset, task: Task, classes: tuple[int, ...], setup: Setup) -> Dataset:
    """A task's sample of `classes` (lr_regret.task_data draws it), upscaled to image_size if set."""
    data = task_data(task, None, {"cifar": class_subset(full, classes)})
    if setup.image_size and setup.image_size != data.train.input_size:
        from clrcore.transforms import resize_dataset

        data = resize_dataset(data, setup.image_size)
    return data


def load_cifar(archive: Path) -> Dataset:
    """CIFAR-10 from the JPEG archive (decoded once; the decode cache lives next to the run's output)."""
    return load_dataset("cifar10", archive.parent, path=archive.name, cache_dir=Path("runs/.decode_cache"))


# ------------------------------------------------------------------------------------------ runs


def from_pretrained(weights: Path, spec: TrainSpec, data: Dataset, device: torch.device) -> nn.Module:
    """What a fine-tuning job starts from: the architecture seeded as usual, the saved weights loaded
    (`load_weights` checks names and shapes first), then `finetune.prepare`: a fresh head for these
    classes and the layer groups with their LR scales."""
    tune = spec.finetune
    assert tune is not None, "from_pretrained needs a finetune spec"
    model = fresh_model(spec.model_copy(update={"finetune": None}), data, device)
    load_weights(model, weights)
    finetune.prepare(model, len(data.classes), groups=tune.groups, body_lr_divisor=tune.body_lr_divisor,
                     freeze_epochs=tune.freeze_epochs)
    return model.to(device)


@dataclass
class Job:
    kind: str  # pretrain | scratch | sweep | grid | auto
    task: Task
    data: Dataset
    seed: int
    lr: float = 0.0
    weights: Path | None = None


def run_job(job: Job) -> dict[str, Any]:
    """One run; a result row (JSON-able). Pretraining also writes the weights file."""
    started = time.perf_counter()
    row: dict[str, Any] = {"kind": job.kind, "seed": job.seed, "lr": job.lr}
    build = functools.partial(from_pretrained, job.weights) if job.weights else fresh_model
    if job.kind == "pretrain":
        assert job.weights is not None
        model, result = trained(job.task, job.data, job.lr, job.seed)
        save_weights(model, job.weights)
        row["acc"] = float(result.history["val_acc"][-1])
    elif job.kind == "sweep":
        row["curve"] = sweep(job.task, job.data, job.seed, build)
        row["curve"]["cliff_margin"] = CLIFF_MARGIN  # the margin of the process that picked, for re-reading
        row["lr"] = row["curve"]["auto_max_lr"]
        bounds_model = build(spec_for(job.task, job.seed, row["lr"]), job.data, torch.device("cpu"))
        row["group_bounds"] = finetune.group_bounds(bounds_model, row["lr"] / TRIANGULAR_BASE_DIVISOR, row["lr"])
    else:
        row["acc"] = train_at(job.task, job.data, job.lr, job.seed, build)
    row["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    return row


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_all(jobs: list[Job], parallel: int,
            on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """The jobs in `parallel` one-thread processes (started in order, results in order); inline for 1.
    `on_row` sees the rows so far after each one, so a run cut short keeps what it finished."""
    rows: list[dict[str, Any]] = []
    if parallel <= 1:
        results: Iterable[dict[str, Any]] = map(run_job, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(parallel, mp_context=get_context("spawn"), initializer=_one_thread)
        results = pool.map(run_job, jobs)
    try:
        for row in results:
            rows.append(row)
            if on_row:
                on_row(rows)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return rows


def grid_lrs(curves: list[dict[str, Any]], points: int) -> list[float]:
    """lr_regret's grid: two decades log-spaced around the sweeps' mean zero-lag minimum."""
    minima = [read_curve(c["lrs"], c["losses"]).min_lr for c in curves]
    centre = float(np.exp(np.mean(np.log(minima))))
    return [float(centre * 10**e) for e in np.linspace(*GRID_DECADES, points)]


def run(full: Dataset, setup: Setup, out: Path, parallel: int) -> dict[str, Any]:
    """Both steps; results.json is rewritten after each stage."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    kinds = tasks(setup)
    pre_data = step_data(full, kinds["pretrain"], setup.pretrain_classes, setup)
    ft_data = step_data(full, kinds["finetune"], setup.finetune_classes, setup)
    weights = (out / WEIGHTS_FILE).resolve()
    res: dict[str, Any] = {"setup": asdict(setup), "pretrain_classes": pre_data.classes,
                           "finetune_classes": ft_data.classes,
                           "train_images": [len(pre_data.train), len(ft_data.train)],
                           "test_images": [len(pre_data.test), len(ft_data.test)], "weights": str(weights)}

    def save(stage: str) -> None:
        res["stages_done"] = list(dict.fromkeys([*res.get("stages_done", []), stage]))
        res["seconds"] = round(time.perf_counter() - started, 1)
        (out / "results.json").write_text(json.dumps(res, default=str))

    # stage 1: the pretraining run, and the from-scratch baseline next to it (it needs no weights)
    rows = run_all([Job("pretrain", kinds["pretrain"], pre_data, 0, setup.pretrain_lr, weights)]
                   + [Job("scratch", kinds["scratch"], ft_data, seed, lr) for seed in setup.scratch_seeds
                      for lr in setup.scratch_lrs], parallel)
    res["pretrain"], res["scratch"] = rows[0], rows[1:]
    save("pretrain")
    print(json.dumps({"stage": "pretrain", "s": res["seconds"]}), flush=True)
    # stage 2: the range test of the fine-tuning job, one per seed
    rows = run_all([Job("sweep", kinds["finetune"], ft_data, seed, weights=weights) for seed in setup.sweep_seeds],
                   parallel)
    res["curves"] = [r["curve"] for r in rows]
    res["group_bounds"] = [r["group_bounds"] for r in rows]
    save("sweep")
    print(json.dumps({"stage": "sweep", "s": res["seconds"]}), flush=True)
    # stage 3: per grid seed, its grid then its auto job (its own sweep's pick); saved after each run
    res["grid_lrs"] = grid_lrs(res["curves"], setup.grid_points)
    picks = {r["seed"]: r["lr"] for r in rows}
    jobs = []
    for seed in setup.grid_seeds:
        jobs += [Job("grid", kinds["finetune"], ft_data, seed, lr, weights) for lr in res["grid_lrs"]]
        jobs += [Job("auto", kinds["finetune"], ft_data, seed, picks[seed], weights)] if seed in picks else []

    def keep(rows: list[dict[str, Any]]) -> None:
        grid_results(res, rows)
        save("grid_partial")

    run_all(jobs, parallel, keep)
    save("grid")
    return res


def grid_results(res: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The grid and auto runs into `res`: grid seeds with every point done, and their auto jobs."""
    seeds = sorted({r["seed"] for r in rows if r["kind"] == "grid"})
    by_seed = {s: [r["acc"] for r in rows if r["kind"] == "grid" and r["seed"] == s] for s in seeds}
    done = [s for s in seeds if len(by_seed[s]) == len(res["grid_lrs"])]
    if not done:
        return
    res["grid_seeds_done"] = done
    res["grid_acc_by_seed"] = [by_seed[s] for s in done]
    res["grid_acc"] = np.mean(res["grid_acc_by_seed"], axis=0).tolist()
    autos = [r for r in rows if r["kind"] == "auto" and r["seed"] in done]
    res["auto"] = {"max_lrs": [r["lr"] for r in autos], "acc": [r["acc"] for r in autos],
                   "regret": (max(res["grid_acc"]) - float(np.mean([r["acc"] for r in autos]))) * 100
                   if autos else math.nan, "cliff_margin": trained_margin(res)}
    res["run_seconds"] = {kind: [r["seconds"] for r in rows if r["kind"] == kind] for kind in ("grid", "auto")}


# ------------------------------------------------------------------------------------------ analysis


def trained_margin(res: dict[str, Any]) -> float:
    """The cliff margin a stored run's `auto` jobs picked with: as its sweeps recorded it (runs since the
    eleventh session), else as the run's parent process did (CLIFF_MARGIN when the run is new)."""
    recorded = res.get("curves", [{}])[0].get("cliff_margin", res.get("auto", {}).get("cliff_margin"))
    return float(CLIFF_MARGIN if recorded is None else recorded)


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """The numbers the table shows: regrets (every rule, lr_regret's scoring; ours at the margin the run's
    `auto` jobs trained with, and at the shipped one), spread, scratch, gain."""
    margin = trained_margin(res)
    scored = regrets(res, margin)
    if margin != CLIFF_MARGIN:
        scored["ours_shipped"] = regrets(res)["ours"]
    best_scratch = max(res["scratch"], key=lambda r: r["acc"])
    picks = res["auto"]["max_lrs"]
    return {"regret": scored, "best_grid": max(res["grid_acc"]),
            "best_grid_lr": best_lr(res["grid_lrs"], res["grid_acc"]),
            "auto_acc": float(np.mean(res["auto"]["acc"])), "auto_regret": res["auto"]["regret"],
            "pick_spread": max(picks) / min(picks) if picks else None,
            "sweep_picks": [c["auto_max_lr"] for c in res["curves"]],
            "scratch_best": best_scratch["acc"], "scratch_best_lr": best_scratch["lr"],
            "pretrain_acc": res["pretrain"]["acc"]}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def plain_line(res: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """The `plain` control's line, when it was run: the weights without the fine-tuning recipe."""
    if not res.get("plain"):
        return []
    runs = ", ".join(f"{r['lr']:g}: {_pct(r['acc'])}" for r in res["plain"])
    best = max(r["acc"] for r in res["plain"])
    return [f"- the pretrained weights without the recipe (fresh head, one LR for every layer, nothing frozen), "
            f"best of {len(res['plain'])}: {_pct(best)} % ({runs}); "
            f"{100 * (best - s['scratch_best']):+.1f} pts against from scratch"]


def table(res: dict[str, Any]) -> str:
    """Markdown: the grid, the picks and their regrets, the baseline."""
    s = summary(res)
    seeds = len(res["grid_acc_by_seed"])
    lines = ["| head max LR | " + " | ".join(f"seed {k}" for k in range(seeds)) + " | mean |",
             "| --- | " + " | ".join("---" for _ in range(seeds)) + " | --- |"]
    for k, lr in enumerate(res["grid_lrs"]):
        cells = [_pct(accs[k]) for accs in res["grid_acc_by_seed"]]
        lines.append(f"| {lr:.3g} | " + " | ".join(cells) + f" | {_pct(res['grid_acc'][k])} |")
    lines += ["", "| rule | picks (one per sweep seed) | regret (pts) | pick spread (max/min) |",
              "| --- | --- | --- | --- |"]
    labels = {**PEER_RULES, "ours": f"ours (the zero-lag curve's cliff / {trained_margin(res):g})",
              "ours_shipped": f"ours at today's margin (the cliff / {CLIFF_MARGIN:g}), not trained"}
    for rule, info in s["regret"].items():
        label = labels[rule]
        picks = ", ".join("-" if p is None else f"{p:.3g}" for p in info["picks"])
        regret = "no pick" if info["regret"] is None else f"{'≥' if info['outside'] else ''}{info['regret']:.1f}"
        spread = "-" if info["spread"] is None else f"{info['spread']:.2f}x"
        lines.append(f"| {label} | {picks} | {regret} | {spread} |")
    auto = res["auto"]
    rule = res["curves"][0].get("rule", "ours")  # the job's default rule when the sweeps ran
    lines.append(f"| `auto` job{'' if rule == 'ours' else f' ({rule})'}, trained ({len(auto['acc'])} seeds) | "
                 + ", ".join(f"{lr:.3g} → {_pct(a)} %" for lr, a in zip(auto["max_lrs"], auto["acc"], strict=True))
                 + f" | {auto['regret']:.1f} | {s['pick_spread']:.2f}x |")
    bounds = res["group_bounds"][0]
    scratch_runs = ", ".join(f"{r['lr']:g}: {_pct(r['acc'])}" for r in res["scratch"])
    lines += ["", f"- pretraining (classes {', '.join(res['pretrain_classes'])}): "
              f"{_pct(s['pretrain_acc'])} % test accuracy on its own classes",
              f"- best grid point (mean of {seeds} seeds): {_pct(s['best_grid'])} %; "
              f"the grid's best head max LR read off a parabola: {s['best_grid_lr']:.3g}",
              f"- from scratch (no weights, one LR for all layers), best of {len(res['scratch'])} runs: "
              f"{_pct(s['scratch_best'])} % at max LR {s['scratch_best_lr']:.3g} "
              f"({scratch_runs}); "
              f"fine-tuning gains {100 * (s['best_grid'] - s['scratch_best']):+.1f} pts (best grid)",
              *plain_line(res, s),
              *([f"- the grid's top {res['grid_extended_by']} points were trained after the first pass "
                 "(`--extend-grid`: its best point sat at the top edge)"] if res.get("grid_extended_by") else []),
              *(["- the best grid point is the grid's top edge: the regret is a lower bound"]
                if int(np.argmax(res["grid_acc"])) == len(res["grid_acc"]) - 1 else []),
              "- the recommendation per layer group (sweep seed 0): "
              + ", ".join(f"{b['group']} {b['base_lr']:.2g}-{b['max_lr']:.2g}" for b in bounds)]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    """Accuracy vs the head's max LR: the grid per seed and its mean, each sweep's pick, the auto jobs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(res)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    lrs = res["grid_lrs"]
    for k, accs in enumerate(res["grid_acc_by_seed"]):
        ax.plot(lrs, np.asarray(accs) * 100, "o", color="0.6", ms=4, label="grid, each seed" if k == 0 else None)
    ax.plot(lrs, np.asarray(res["grid_acc"]) * 100, "-", color="k", label="fine-tuned, mean of seeds")
    for k, pick in enumerate(s["sweep_picks"]):
        ax.axvline(pick, color="tab:red", alpha=0.5, lw=1.2,
                   label=f"range test's pick, {len(s['sweep_picks'])} sweep seeds" if k == 0 else None)
    for k, (lr, acc) in enumerate(zip(res["auto"]["max_lrs"], res["auto"]["acc"], strict=True)):
        ax.plot(lr, acc * 100, "*", color="tab:red", ms=13,
                label=f"auto job, trained (regret {s['auto_regret']:.1f} pts)" if k == 0 else None)
    scratch = sorted(res["scratch"], key=lambda r: r["lr"])
    ax.plot([r["lr"] for r in scratch], [r["acc"] * 100 for r in scratch], "s--", color="tab:blue", ms=5,
            label="from scratch (x axis: its one LR)")
    plain = sorted(res.get("plain", []), key=lambda r: r["lr"])
    if plain:
        ax.plot([r["lr"] for r in plain], [r["acc"] * 100 for r in plain], "D:", color="tab:green", ms=5,
                label="pretrained, no recipe (one LR, nothing frozen)")
    ax.set_xscale("log")
    scales = " and ".join(f"{b['lr_scale']:.2g}x" for b in res["group_bounds"][0][:-1])
    ax.set_xlabel(f"max LR of the head (the body's groups at {scales} of it)")
    setup = res["setup"]
    pre, tune = (setup.get(k, list(d)) for k, d in (("pretrain_classes", PRETRAIN_CLASSES),
                                                     ("finetune_classes", FINETUNE_CLASSES)))
    ax.set_ylabel(f"test accuracy, classes {tune[0]}-{tune[-1]} (%)")
    ax.set_title(f"{setup['model']} pretrained on CIFAR-10 classes {pre[0]}-{pre[-1]}, "
                 f"fine-tuned on {tune[0]}-{tune[-1]}")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def analyse(res: dict[str, Any], out: Path, figure: Path | None) -> str:
    text = table(res)
    (out / "table.md").write_text(text + "\n")
    for target in filter(None, (out / "finetune_regret.png", figure)):
        plot(res, target)
    return text


def add_runs(res: dict[str, Any], full: Dataset, scratch: list[float], plain: list[float], grid_up: int,
             parallel: int) -> dict[str, Any]:
    """More runs on a stored run's data, weights and setup: from scratch, `plain` (see `tasks`), and
    `grid_up` grid points above the grid at its spacing (every grid seed done), for a grid whose best
    point sat at its top edge. The auto jobs' regret is recomputed against the extended grid."""
    setup = Setup(**{**res["setup"], **{k: tuple(v) for k, v in res["setup"].items() if isinstance(v, list)}})
    kinds = tasks(setup)
    data = step_data(full, kinds["scratch"], setup.finetune_classes, setup)
    weights = Path(res["weights"])
    step = res["grid_lrs"][1] / res["grid_lrs"][0]
    more = [res["grid_lrs"][-1] * step**k for k in range(1, grid_up + 1)]
    seeds = res["grid_seeds_done"]
    jobs = [Job("grid", kinds["finetune"], data, seed, lr, weights) for seed in seeds for lr in more]
    jobs += [Job("scratch", kinds["scratch"], data, seed, lr) for seed in setup.scratch_seeds for lr in scratch]
    jobs += [Job("plain", kinds["plain"], data, seed, lr, weights) for seed in setup.scratch_seeds for lr in plain]
    rows = run_all(jobs, parallel)
    out = dict(res)
    for kind in ("scratch", "plain"):
        new = [r for r in rows if r["kind"] == kind]
        out[kind] = sorted([*res.get(kind, []), *new], key=lambda r: (r["seed"], r["lr"]))
    if more:
        out["grid_lrs"] = [*res["grid_lrs"], *more]
        out["grid_acc_by_seed"] = [[*accs, *(r["acc"] for r in rows if r["kind"] == "grid" and r["seed"] == seed)]
                                   for seed, accs in zip(seeds, res["grid_acc_by_seed"], strict=True)]
        out["grid_acc"] = np.mean(out["grid_acc_by_seed"], axis=0).tolist()
        out["grid_extended_by"] = len(more)
        auto = res["auto"]
        out["auto"] = {**auto, "regret": (max(out["grid_acc"]) - float(np.mean(auto["acc"]))) * 100}
    return out


def setup_from_args(args: argparse.Namespace) -> Setup:
    """The run's setup: CPU or FULL, with --sweep, --model, --swap-classes and the pretraining's size
    applied. An unknown model stops with a one-line message before anything trains."""
    setup = FULL if args.full else CPU
    if args.sweep is not None:
        setup = replace(setup, sweep=args.sweep)
    if args.pretrain_images is not None:
        setup = replace(setup, pretrain_images=args.pretrain_images)
    if args.pretrain_epochs is not None:
        setup = replace(setup, pretrain_epochs=args.pretrain_epochs)
    if args.model is not None:
        if catalog.MODELS.get(args.model) is None or catalog.MODELS[args.model].source != "torchvision":
            raise SystemExit(f"--model {args.model}: not a torchvision architecture of the catalog")
        setup = replace(setup, model=args.model)
    if args.swap_classes:
        setup = replace(setup, pretrain_classes=setup.finetune_classes, finetune_classes=setup.pretrain_classes)
    return setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-jpg.tar.gz"))
    parser.add_argument("--out", type=Path, default=Path("runs/finetune_regret"))
    parser.add_argument("--full", "--gpu", action="store_true", help="224 px, whole class splits (for a GPU)")
    parser.add_argument("--parallel", type=int, default=1, help="one-thread processes (CPU mode)")
    parser.add_argument("--figure", type=Path, default=None, help="also write the PNG here (docs/img/...)")
    parser.add_argument("--reanalyse", action="store_true", help="re-read out/results.json, train nothing")
    parser.add_argument("--add-scratch", type=float, nargs="+", default=[], metavar="LR",
                        help="train the from-scratch baseline at these LRs too (on a stored run), then analyse")
    parser.add_argument("--add-plain", type=float, nargs="+", default=[], metavar="LR",
                        help="train the pretrained weights without the recipe (one LR, nothing frozen) at these")
    parser.add_argument("--extend-grid", type=int, default=0, metavar="N",
                        help="N more grid points above the stored grid, at its spacing, every grid seed")
    parser.add_argument("--sweep", type=json.loads, default=None, metavar="JSON",
                        help='the range test\'s options instead of the setup\'s, e.g. \'{"start_lr": 1e-4}\' for the '
                        "product's default length (60 steps a decade)")
    parser.add_argument("--swap-classes", action="store_true",
                        help="pretrain on classes 5-9 and fine-tune on 0-4 (a second fine-tuning task)")
    parser.add_argument("--model", default=None, help="another torchvision architecture than resnet18")
    parser.add_argument("--pretrain-images", type=int, default=None, metavar="N",
                        help="pretrain on N images of the pretraining classes (a stronger body; CPU: 3,000)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, metavar="E", help="pretrain for E epochs (CPU: 4)")
    args = parser.parse_args()
    adding = bool(args.add_scratch or args.add_plain or args.extend_grid)
    if args.reanalyse or adding:
        res = json.loads((args.out / "results.json").read_text())
        if adding:
            torch.set_num_threads(1)
            res = add_runs(res, load_cifar(args.data.resolve()), args.add_scratch, args.add_plain,
                           args.extend_grid, args.parallel)
            (args.out / "results.json").write_text(json.dumps(res, default=str))
    else:
        if not args.full:
            torch.set_num_threads(1)
        setup = setup_from_args(args)
        res = run(load_cifar(args.data.resolve()), setup, args.out, 1 if args.full else args.parallel)
    print(analyse(res, args.out, args.figure))
    if not math.isfinite(res["auto"]["regret"]):
        raise SystemExit("no finite regret")


if __name__ == "__main__":
    main()
