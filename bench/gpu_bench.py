"""The GPU benchmark on the CIFAR-10 JPEG archive: the range test's time and recommendation, accuracy
at that recommendation against a small sweep of max LRs, every preset's train time and test accuracy,
and the speed ablations; one prepared script for one H200.

    python bench/gpu_bench.py --data .data/cifar10-jpg.tar.gz --only core   # the core items, ~5 min
    python bench/gpu_bench.py --data .data/cifar10-jpg.tar.gz               # everything, under 8 min
    .venv/bin/python bench/gpu_bench.py --cpu                                # the CPU half: tiny data

`--only core` runs, most valuable first: cifar10-fast as the preset stands, then beside it the four
changes that may lift it to airbench94's 90.7 % (airbench's LR and decay, 12 epochs, lookahead,
alternating flips), then the changes that did not lose, together, at two seeds; then the range test's
time, the MiniGoogLeNet preset and the blog's recipe as published and compiled (budget 270 s; on_device.sh
passes what its own 600 s leave). The default adds the warm-worker rerun of cifar10-fast, cifar10-fast at
8 and 14 epochs, the max-LR sweep and the ablations (budget 450 s). Compiled code is saved as it is made
(OUT/compile_artifacts.bin.gz) and loaded from --compile-artifacts when given, so a second machine
compiles in seconds.

Prints one JSON line per result and appends it to OUT/bench.jsonl (OUT: --out, else $OUT, else
runs/bench); writes OUT/accuracy_vs_time.png and each preset's classification report under
OUT/reports/. Times: `train_s` is the trainer's own clock around the batch loops (each epoch ends in a
host read of the on-device loss buffer, so it covers all queued GPU work), with compile time
(`compile_s`) and evaluation (`eval_s`) apart; `call_s` is CUDA events around the whole `train` call.
A `--budget-s` guard skips what is left (one "skipped" line each) rather than overrun.

The --cpu half swaps in scikit-learn's bundled digits, the tiny CNN, one-epoch runs and short sweeps: it
proves the script and the code paths run, and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import torch

from clrcore import compile_cache
from clrcore.datasets import Dataset, load_dataset, with_train_subset
from clrcore.hooks import Hooks
from clrcore.runs import SWEEP_SYNC_EVERY_CUDA, fresh_model, run_job
from clrcore.schedules import schedule_from_spec
from clrcore.specs import JobSpecBase, RangeTestOptions, RangeTestSpec, TrainSpec
from clrcore.train_setup import config_from_spec, resolve_device, steps_per_epoch
from clrcore.trainer import train

log = logging.getLogger("gpu_bench")

# ------------------------------------------------------------------ settings (one place, commented)

BENCH = {
    "budget_s": 450,  # stop starting new items after this many seconds (8 min limit, with margin)
    "core_budget_s": 270,  # the same guard for --only core (6 min limit: the longest item is ~1 min)
    "range_test_preset": "cifar10-minigooglenet-fast",  # whose model, batch and sweep the timed test uses
    "range_test_iter": 200,  # the issue's figure: 200 iterations in at most 2 s
    "blog_epochs": 3,  # of the blog's 96, timed and extrapolated (a full run would take minutes)
    "long_epochs": 12,  # cifar10-fast at 12 epochs beside its 10: airbench's 10 take 2.5 s of the 5 s goal
    "final_seeds": (0, 1),  # the configuration the core figures pick, at two seeds
    "sweep_preset": "cifar10-minigooglenet-fast",
    "sweep_epochs": 8,  # a shortened one-cycle: enough to rank max LRs, not to reach the preset's figure
    "sweep_max_lrs": (0.05, 0.2, 0.8),  # the README's good region is 0.05..0.8; plus the recommendation
    # cifar10-fast at other lengths, at the preset run's max LR: where 90.7 % and 5 s meet (airbench's
    # 10 epochs take it 2.5 s, so the 5 s goal leaves room for more epochs if this trainer is as fast)
    "fast_epochs": (8, 14),  # the full run only; 12 is a core item
    # airbench94's own peak LR and weight decay in this trainer's terms (mean loss, coupled decay): its
    # lr 11.5 per 1024 examples of summed loss with Nesterov 0.85 is 1.5 at batch 1024, and its decay of
    # 0.0153 x batch / 7851 per step is 2.0e-3 of the weights, i.e. weight_decay 1.33e-3 at that LR
    # (the preset: the range test's pick and 5e-4). BatchNorm shifts are decayed too, as airbench does
    # (its norm biases get wd / bias_scaler: the same pull per step as the weights).
    # Set against the preset's run, it shows which is better.
    "airbench_hyper": {"max_lr": 1.5, "weight_decay": 1.33e-3, "norm_shift_decay": True},
    "ablation_preset": "cifar10-fast",
    "ablation_epochs": 4,
    "ablation_max_lr": 1.0,  # used when the cifar10-fast run gave no range-test pick
}

# The CPU half: the same items on the bundled 16x16 digits with the tiny CNN, small enough for a
# smoke test on two shared cores.
CPU = {
    "overrides": {"dataset": "digits", "model": "tiny_cnn", "train_subset": 128, "batch_size": 32,
                  "epochs": 1, "device": "cpu",
                  "range_test": {"start_lr": 1e-3, "end_lr": 10.0, "num_iter": 40}},
    "range_test_iter": 40,
    "blog_epochs": 1,
    "sweep_epochs": 1,
    "sweep_max_lrs": (0.2,),
    "fast_epochs": (2,),
    "long_epochs": 2,
    "airbench_hyper": {"max_lr": 0.2, "weight_decay": 1.33e-3, "norm_shift_decay": True},
    "ablation_epochs": 1,
}

# Reference points measured on one H200 on the same archive (shared/data/README.md), for the plot.
ANCHORS = [
    ("airbench94 (record)", 2.5, 0.907),
    ("plain loop, MiniGoogLeNet 15 ep", 15.6, 0.877),
    ("plain loop, MiniGoogLeNet 40 ep", 42.0, 0.892),
]
GOALS = {"cifar10-fast": (5.0, 0.907), "cifar10-minigooglenet-fast": (30.0, 0.892),
         "cifar10-blog": (240.0, None), "cifar10-blog-fast": (240.0, None), "range_test": (2.0, None)}


# ------------------------------------------------------------------ output


class Recorder:
    """Prints each result as a JSON line and appends it to bench.jsonl; keeps them for the plot."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.results: list[dict[str, Any]] = []
        self.jsonl = out / "bench.jsonl"
        self.jsonl.write_text("")
        self.artifacts = out / "compile_artifacts.bin.gz"  # everything compiled so far, after each item

    def emit(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"elapsed_s": round(time.perf_counter() - self.started, 2), **record}
        line = json.dumps(record, default=_jsonable)
        print(line, flush=True)
        with self.jsonl.open("a") as handle:
            handle.write(line + "\n")
        self.results.append(record)
        return record

    def item(self, what: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        """Run one benchmark item unless the budget is spent; an error becomes a result line, not an exit."""
        if time.perf_counter() - self.started > self.budget_s:
            self.emit({"what": what, "skipped": f"time budget of {self.budget_s:.0f} s spent"})
            return None
        try:
            record = fn()
        except Exception as err:  # noqa: BLE001 - one failed item must not lose the others' figures
            log.exception("%s failed", what)
            return self.emit({"what": what, "error": f"{type(err).__name__}: {err}"[:500]})
        finally:
            compile_cache.save_artifacts(self.artifacts)  # a run cut short still leaves what it compiled
        return None if record is None else self.emit({"what": what, **record})


def _jsonable(value: Any) -> str:
    return str(value)  # paths, devices, numpy scalars: whatever json does not know, as text


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Spec fields merged one level down (two changes to `optimizer` keep both)."""
    out = dict(into)
    for key, value in extra.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _round(data: dict[str, float], digits: int = 3) -> dict[str, float]:
    return {k: round(float(v), digits) for k, v in data.items()}


# ------------------------------------------------------------------ timing


def cuda_timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds), with CUDA events and a synchronise on both sides on a GPU, else perf_counter."""
    if device.type != "cuda":
        started = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - started
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    result = fn()
    end.record()
    torch.cuda.synchronize(device)
    return result, start.elapsed_time(end) / 1000


# ------------------------------------------------------------------ specs


class Bench:
    """The items, sharing the data location, the run folders and the mode (GPU or the CPU half)."""

    def __init__(self, args: argparse.Namespace, recorder: Recorder, workdir: Path) -> None:
        self.cpu = args.cpu
        self.rec = recorder
        self.workdir = workdir
        self.settings = {**BENCH, **(CPU if self.cpu else {})}
        if self.cpu:
            self.data_dir, self.overrides = workdir / "data", dict(CPU["overrides"])
        else:
            if not torch.cuda.is_available():
                raise SystemExit("no CUDA device here: run the CPU half with --cpu")
            archive = Path(args.data).resolve()
            if not archive.is_file():
                raise SystemExit(f"--data {archive}: no such file (copy cifar10-jpg.tar.gz there)")
            self.data_dir, self.overrides = archive.parent, {"dataset_path": archive.name}
        self.device = resolve_device("cpu" if self.cpu else "auto")
        self.runs: dict[str, dict[str, Any]] = {}  # name -> summary and history, for the plot
        self.recommended_max_lr: float | None = None
        self.fast_max_lr: float | None = None

    def spec(self, preset: str, **extra: Any) -> TrainSpec:
        return TrainSpec.model_validate({"preset": preset, **self.overrides, **extra})

    def range_test_spec(self, preset: str) -> RangeTestSpec:
        """A range-test job with the preset's model, data, batch, optimizer and sweep."""
        train_spec = self.spec(preset)
        fields = train_spec.model_dump()
        base = {k: fields[k] for k in JobSpecBase.model_fields}
        sweep = {**train_spec.range_test.model_dump(), "num_iter": self.settings["range_test_iter"]}
        sweep = {k: v for k, v in sweep.items() if k in RangeTestOptions.model_fields}
        return RangeTestSpec(**base, **sweep, policy=train_spec.policy)

    def run_folder(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))

    # -------------------------------------------------------------- items

    def environment(self) -> dict[str, Any]:
        info: dict[str, Any] = {"date": date.today().isoformat(), "torch": torch.__version__,
                                "python": platform.python_version(), "cpus": os.cpu_count(),
                                "mode": "cpu" if self.cpu else "gpu", "device": str(self.device)}
        if self.device.type == "cuda":
            info.update(gpu=torch.cuda.get_device_name(self.device), cuda=torch.version.cuda,
                        bf16=torch.cuda.is_bf16_supported())
        return info

    def load(self) -> dict[str, Any]:
        """Decode (or read the cache of) the archive once, so the timed jobs below all hit the cache."""
        spec = self.spec("cifar10-fast")
        timings = {}
        for attempt in ("first", "second"):
            started = time.perf_counter()
            ds = load_dataset(spec.dataset, self.data_dir, path=spec.dataset_path)
            timings[f"{attempt}_load_s"] = time.perf_counter() - started
        return {**_round(timings), "train": len(ds.train), "test": len(ds.test),
                "shape": list(ds.train.images.shape[1:])}

    def range_test(self) -> dict[str, Any]:
        """The timed sweep: a short untimed warm-up job first (CUDA context, cuDNN autotuning)."""
        spec = self.range_test_spec(self.settings["range_test_preset"])
        run_job(spec.model_copy(update={"num_iter": 10}), self.run_folder("warmup"), data_dir=self.data_dir)
        stamps: list[tuple[int, float]] = []
        hooks = Hooks(on_progress=lambda p: stamps.append((p.step, time.perf_counter())), progress_interval=0.0)
        summary = run_job(spec, self.run_folder("range-test"), data_dir=self.data_dir, hooks=hooks)
        steps = summary["steps"]
        # the callbacks come when the losses are read (every step on a CPU, every SWEEP_SYNC_EVERY_CUDA
        # steps on CUDA, after a sync), so the clock from the first read to the last follows the device
        first_read = SWEEP_SYNC_EVERY_CUDA if self.device.type == "cuda" else 1
        ref_step, ref_t = max((s, t) for s, t in stamps if s <= first_read) if stamps else (0, 0.0)
        sweep_s = (stamps[-1][1] - ref_t) * steps / max(steps - ref_step, 1) if len(stamps) > 1 else float("nan")
        rec = summary["recommendation"] or {}
        self.recommended_max_lr = rec.get("max_lr")
        return {"preset": self.settings["range_test_preset"], "model": spec.model, "batch_size": spec.batch_size,
                "num_iter": spec.num_iter, "steps": steps, "sweep_s": round(sweep_s, 3),
                "job_s": summary["seconds"], "stop_reason": summary["stop_reason"],
                "recommendation": rec, "suggestions": summary["suggestions"],
                "low_confidence": summary["low_confidence"], "goal_s": GOALS["range_test"][0]}

    def preset(self, name: str, label: str | None = None, **extra: Any) -> dict[str, Any]:
        """One preset through `run_job`, the path a worker takes (range test included when max_lr is auto)."""
        spec = self.spec(name, **extra)
        folder = self.run_folder(label or name)
        summary, call_s = cuda_timed(self.device, lambda: run_job(spec, folder, data_dir=self.data_dir))
        history = json.loads((folder / "history.json").read_text())
        reports = self.rec.out / "reports"
        reports.mkdir(exist_ok=True)
        (reports / f"{label or name}.txt").write_text((folder / "report.txt").read_text())
        self.runs[label or name] = {"summary": summary, "history": history}
        goal_s, goal_acc = GOALS.get(name, (None, None))
        return {"preset": name, "model": spec.model, "epochs": spec.epochs, "batch_size": spec.batch_size,
                "accuracy": summary["accuracy"], **_round(summary["timings"]),
                "job_s": summary["seconds"], "call_s": round(call_s, 3),
                "max_lr": summary["max_lr"], "base_lr": summary["base_lr"],
                "lr_source": summary["lr_choice"]["source"], "compile": spec.compile,
                "precision": spec.precision, "goal_s": goal_s, "goal_accuracy": goal_acc}

    def fast_preset(self, name: str, label: str | None = None) -> dict[str, Any]:
        """A compiled preset; if compiling fails on this machine, the eager run is measured instead."""
        try:
            record = self.preset(name, label)
        except Exception as err:
            if not compile_cache.is_compile_failure(err):
                raise
            log.exception("%s with torch.compile failed; measuring it eager", name)
            record = self.preset(name, f"{label or name}-eager", compile=False)
            record["compile_error"] = f"{type(err).__name__}: {err}"[:300]
        if name == "cifar10-fast":
            self.fast_max_lr = record["max_lr"]
        return record

    def fast_epochs(self, epochs: int) -> dict[str, Any]:
        """cifar10-fast for `epochs` at the max LR its own run picked (no second range test)."""
        max_lr = self.fast_max_lr or BENCH["ablation_max_lr"]
        return self.preset("cifar10-fast", f"cifar10-fast-{epochs}ep", epochs=epochs, max_lr=max_lr)

    def fast_variants(self) -> dict[str, dict[str, Any]]:
        """The changes set beside the cifar10-fast preset, each alone: label -> spec fields."""
        hyper = self.settings["airbench_hyper"]  # nested fields merge into the preset's field by field
        return {
            "airbench-hyper": {"max_lr": hyper["max_lr"], "optimizer": {
                "weight_decay": hyper["weight_decay"], "norm_shift_decay": hyper["norm_shift_decay"]}},
            f"{self.settings['long_epochs']}ep": {"epochs": self.settings["long_epochs"]},
            "lookahead": {"optimizer": {"lookahead": True}},
            "alternating-flips": {"augment": {"flip_mode": "alternate"}},
        }

    def fast_variant(self, label: str) -> dict[str, Any]:
        """cifar10-fast with one change; the range test's pick from the preset's own run where it keeps max_lr."""
        fields = self.fast_variants()[label]
        if "max_lr" not in fields and self.fast_max_lr is not None:
            fields = {**fields, "max_lr": self.fast_max_lr}  # no second range test: the same LR as the preset
        record = self.preset("cifar10-fast", f"cifar10-fast-{label}", **fields)
        return {**record, "variant": label, "fields": fields}

    def final_fields(self) -> dict[str, Any]:
        """The changes that did not lose to the preset's run (accuracy at least the preset's), together."""
        results = {r.get("variant"): r for r in self.rec.results if "variant" in r and "accuracy" in r}
        preset = next((r for r in self.rec.results if r.get("what") == "cifar10-fast" and "accuracy" in r), None)
        fields: dict[str, Any] = {}
        for label, change in self.fast_variants().items():
            if preset is not None and label in results and results[label]["accuracy"] >= preset["accuracy"]:
                fields = _merge(fields, change)
        if "max_lr" not in fields and self.fast_max_lr is not None:
            fields["max_lr"] = self.fast_max_lr
        return fields

    def fast_final(self, seed: int) -> dict[str, Any]:
        """cifar10-fast with every change that did not lose, at `seed`: the configuration the preset takes next."""
        fields = self.final_fields()
        record = self.preset("cifar10-fast", f"cifar10-fast-final-seed{seed}", seed=seed, **fields)
        return {**record, "seed": seed, "fields": fields}

    def airbench_hyper(self) -> dict[str, Any]:
        """cifar10-fast at airbench94's peak LR and decay instead of the range test's pick and 5e-4."""
        record = self.fast_variant("airbench-hyper")
        return {**record, "weight_decay": self.settings["airbench_hyper"]["weight_decay"]}

    def blog(self, name: str = "cifar10-blog") -> dict[str, Any]:
        """The blog's recipe for a few epochs, extrapolated to its 96 from the per-epoch train time."""
        epochs = self.settings["blog_epochs"]
        record = self.preset(name, epochs=epochs)
        history = self.runs[name]["history"]
        per_epoch = [t - e for t, e in zip(history["epoch_time"], history["eval_time"], strict=True)]
        steady = statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else per_epoch[0]
        full = TrainSpec(preset=name).epochs
        record.update(epochs_measured=epochs, epochs_full=full, per_epoch_train_s=round(steady, 3),
                      extrapolated_train_s=round(steady * full, 1), extrapolated=True,
                      accuracy_note=f"after {epochs} of {full} epochs; not the recipe's final accuracy")
        return record

    def lr_sweep(self, max_lr: float, source: str) -> dict[str, Any]:
        """Shortened run of the sweep preset at one max LR: where the recommendation sits among others."""
        epochs = self.settings["sweep_epochs"]
        label = f"sweep-{source}-{max_lr:.3g}"
        spec = self.spec(self.settings["sweep_preset"], epochs=epochs, max_lr=max_lr)
        folder = self.run_folder(label)
        summary = run_job(spec, folder, data_dir=self.data_dir)
        return {"preset": self.settings["sweep_preset"], "epochs": epochs, "max_lr": max_lr, "source": source,
                "accuracy": summary["accuracy"], **_round(summary["timings"])}

    def ablation_data(self) -> Dataset:
        spec = self.spec(self.settings["ablation_preset"])
        ds = load_dataset(spec.dataset, self.data_dir, path=spec.dataset_path)
        return with_train_subset(ds, spec.train_subset)

    def ablation(self, ds: Dataset, label: str, **switches: Any) -> dict[str, Any]:
        """cifar10-fast for a few epochs at a fixed max LR with one mechanic changed; `train` called directly."""
        epochs = self.settings["ablation_epochs"]
        spec = self.spec(self.settings["ablation_preset"], epochs=epochs)
        max_lr = self.fast_max_lr or BENCH["ablation_max_lr"]
        iters = steps_per_epoch(len(ds.train), spec.batch_size)
        schedule = schedule_from_spec(spec, base_lr=max_lr / spec.div_factor, max_lr=max_lr, iters_per_epoch=iters)
        config = replace(config_from_spec(spec, schedule, self.device), **switches)
        model = fresh_model(spec, ds, self.device)
        result, call_s = cuda_timed(self.device, lambda: train(model, ds, config))
        return {"ablation": label, "switches": switches, "epochs": epochs, "max_lr": max_lr,
                "accuracy": result.metrics["test_acc"], **_round(result.timings), "call_s": round(call_s, 3),
                "images_per_s": round(epochs * iters * spec.batch_size / max(result.timings["train_s"], 1e-9), 1)}


# ------------------------------------------------------------------ plot


def plot_accuracy_vs_time(bench: Bench, path: Path) -> None:
    """Test accuracy after each epoch against cumulative train time (compile and eval left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    for name, run in bench.runs.items():
        if name.startswith("sweep"):
            continue
        history, timings = run["history"], run["summary"]["timings"]
        per_epoch = [t - e for t, e in zip(history["epoch_time"], history["eval_time"], strict=True)]
        if per_epoch:
            per_epoch[0] = max(per_epoch[0] - timings.get("compile_s", 0.0), 1e-3)
        elapsed, total = [], 0.0
        for seconds in per_epoch:
            total += seconds
            elapsed.append(total)
        label = name if name != "cifar10-blog" else f"cifar10-blog ({len(per_epoch)} of 96 epochs)"
        ax.plot(elapsed, [100 * a for a in history["val_acc"]], marker="o", markersize=3, label=label)
    for label, seconds, acc in ([] if bench.cpu else ANCHORS):
        ax.scatter([seconds], [100 * acc], marker="x", color="grey")
        ax.annotate(label, (seconds, 100 * acc), fontsize=7, color="grey", xytext=(4, -10),
                    textcoords="offset points")
    blog = next((r for r in bench.rec.results if r.get("what") == "cifar10-blog" and "accuracy" in r), None)
    if blog is not None:
        ax.axvline(blog["extrapolated_train_s"], color="tab:red", linestyle=":", linewidth=1)
        ax.annotate("blog, 96 epochs (extrapolated)", (blog["extrapolated_train_s"], 15), rotation=90,
                    fontsize=7, color="tab:red", xytext=(-10, 0), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training time, s (log; compile and evaluation excluded)")
    ax.set_ylabel("test accuracy, %")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    where = "digits, CPU smoke run (no timing meaning)" if bench.cpu else \
        f"CIFAR-10 (JPEG) on {bench.environment().get('gpu', 'GPU')}"
    ax.set_title(f"{where}: accuracy against time")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plot(bench: Bench, path: Path) -> dict[str, Any]:
    plot_accuracy_vs_time(bench, path)
    return {"png": str(path), "runs": sorted(name for name in bench.runs if not name.startswith("sweep"))}


# ------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or os.environ.get("OUT") or "runs/bench")
    out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(out, args.budget_s)
    if args.compile_artifacts:  # compiled code from an earlier machine: its compiles become cache hits
        recorder.emit({"what": "compile_artifacts", "path": args.compile_artifacts,
                       "loaded": compile_cache.load_artifacts(Path(args.compile_artifacts))})
    with tempfile.TemporaryDirectory(prefix="clr-gpu-bench-") as work:
        bench = Bench(args, recorder, Path(work))
        s = bench.settings
        # decode first: before CUDA is initialised the decode pool may fork (faster than forkserver)
        recorder.item("load", bench.load)
        recorder.emit({"what": "environment", **bench.environment()})
        full = args.only == "all"
        # most valuable first: the preset the goal is set for, then what may lift it to the goal
        recorder.item("cifar10-fast", lambda: bench.fast_preset("cifar10-fast"))
        recorder.item("cifar10-fast at airbench's LR and decay", bench.airbench_hyper)
        for label in list(bench.fast_variants())[1:]:
            recorder.item(f"cifar10-fast {label}", lambda lb=label: bench.fast_variant(lb))
        for seed in s["final_seeds"]:
            recorder.item(f"cifar10-fast final seed {seed}", lambda sd=seed: bench.fast_final(sd))
        recorder.item("range_test", bench.range_test)
        recorder.item("cifar10-minigooglenet-fast", lambda: bench.fast_preset("cifar10-minigooglenet-fast"))
        recorder.item("cifar10-blog-fast", lambda: bench.blog("cifar10-blog-fast"))
        recorder.item("cifar10-blog", bench.blog)
        recorder.emit({"what": "fashion_mnist-blog", "skipped": "needs the Fashion-MNIST download; "
                       "exercised on generated data by tests/clrcore/test_presets.py"})
        # the full run's extras come after the core items, so a tight budget never costs a core figure
        if full:  # the same job again in this process: the compiled net is reused, so compile_s should be ~0
            recorder.item("cifar10-fast (warm worker)",
                          lambda: bench.fast_preset("cifar10-fast", "cifar10-fast-warm"))
        for epochs in s["fast_epochs"] if full else ():
            recorder.item(f"cifar10-fast {epochs} epochs", lambda e=epochs: bench.fast_epochs(e))
        # the max-LR sweep of MiniGoogLeNet decides nothing about the goals: the full run only
        sweep = [("grid", lr) for lr in s["sweep_max_lrs"]] if full else []
        if full and bench.recommended_max_lr is not None:
            sweep.insert(0, ("range_test", bench.recommended_max_lr))
        for source, max_lr in sweep:
            recorder.item(f"lr_sweep {source} {max_lr:.3g}", lambda lr=max_lr, src=source: bench.lr_sweep(lr, src))
        ablations = [] if not full else [
            ("all on (compiled, warm)", {}),
            ("translate TTA off (flip only)", {"tta_translate": False}),
            ("BatchNorm shifts at 1x LR (not 64x)", {"bn_bias_lr_scale": 1.0}),
            ("lookahead on (airbench's weight averaging)", {"lookahead": True}),
            ("alternating flips (airbench's)", {"flip_mode": "alternate"}),
            ("eager (compile off)", {"compile": False}),
            ("eager, fp32 (bf16 off)", {"compile": False, "precision": "fp32"}),
            ("eager, channels_last off", {"compile": False, "channels_last": False}),
            ("eager, data from host DataLoader", {"compile": False, "device_data": False}),
            ("eager, host sync every step", {"compile": False, "sync_every": 1}),
            ("eager, foreach optimizer", {"compile": False, "optimizer_impl": "foreach"}),
            ("eager, per-parameter optimizer loop", {"compile": False, "optimizer_impl": "loop"}),
            ("eager, eval batch 128", {"compile": False, "eval_batch_size": 128}),
        ]
        ds = bench.ablation_data() if ablations else None
        for label, switches in ablations:
            recorder.item(f"ablation: {label}", lambda lb=label, sw=switches: bench.ablation(ds, lb, **sw))
        recorder.item("plot", lambda: write_plot(bench, out / "accuracy_vs_time.png"))
    failed = [r["what"] for r in recorder.results if "error" in r]
    recorder.emit({"what": "done", "total_s": round(time.perf_counter() - recorder.started, 1), "failed": failed})
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".data/cifar10-jpg.tar.gz", help="the CIFAR-10 JPEG archive")
    parser.add_argument("--cpu", action="store_true", help="the CPU half: generated data, tiny runs")
    parser.add_argument("--out", default=None, help="output folder (default: $OUT, else runs/bench)")
    parser.add_argument("--only", choices=("all", "core"), default="all",
                        help="core: range test, presets and max-LR sweep only (about 5 min on one H200)")
    parser.add_argument("--compile-artifacts", default=None,
                        help="a compile_artifacts.bin.gz from an earlier run to load first (absent: ignored)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"stop starting items after this long (default {BENCH['budget_s']}, "
                             f"{BENCH['core_budget_s']} with --only core)")
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = BENCH["core_budget_s"] if args.only == "core" else BENCH["budget_s"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.cpu:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
