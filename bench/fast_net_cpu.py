"""CPU evidence for resnet_fast's design, on a CIFAR-10 subset: what the whitening stem, the BatchNorm
shift LR multiplier, the range test's LR pick and translate TTA each give in a short run.

The GPU benchmark measures the presets at full size; this machine has no GPU, so this runs the same
network, trainer and data path on 10,000 training images at batch 256 for 6 epochs, one variant at a
time (7-8 minutes each on 2 cores, about 35 in all), and prints one JSON line per variant:

    .venv/bin/python bench/fast_net_cpu.py --data ../shared/data/cifar10-jpg.tar.gz

The first three variants fix the LR at airbench94's value scaled to batch 256 (lr 11.5 per 1024
examples with a summed loss and Nesterov 0.85 is 1.5 at batch 1024 with a mean loss, 0.375 at 256), so
each differs from the one before in one thing; the last trains at the range test's recommendation for
the same net, batch and subset (the preset's sweep, shortened), as `max_lr: "auto"` would. Subsets are
drawn at random (seed 0). One seed per variant: differences under a point are within run-to-run noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from clrcore.datasets import load_dataset, make_dataset, sample
from clrcore.evaluation import predict
from clrcore.loaders import normalization
from clrcore.models import FixedScaleBatchNorm
from clrcore.runs import fresh_model, run_job
from clrcore.schedules import schedule_from_spec
from clrcore.specs import RangeTestSpec, TrainSpec
from clrcore.train_setup import config_from_spec, steps_per_epoch
from clrcore.trainer import train

SETUP = {"train_images": 10_000, "test_images": 5_000, "batch_size": 256, "epochs": 6, "max_lr": 0.375,
         "sweep_iter": 100, "seed": 0}  # seed: the runs' (initialisation, order, augmentation), not the subsets'

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("learned 3x3 stem (before)", {"stem": "learned", "bn_bias_lr_scale": 1.0, "max_lr": SETUP["max_lr"]}),
    ("whitening stem", {"stem": "whiten", "bn_bias_lr_scale": 1.0, "max_lr": SETUP["max_lr"]}),
    ("whitening + BN shifts at 64x LR", {"stem": "whiten", "bn_bias_lr_scale": 64.0, "max_lr": SETUP["max_lr"]}),
    ("the same at the range test's max_lr", {"stem": "whiten", "bn_bias_lr_scale": 64.0, "max_lr": "range_test"}),
    ("+ lookahead", {"stem": "whiten", "bn_bias_lr_scale": 64.0, "max_lr": "range_test", "lookahead": True}),
    # a pair at one fixed LR (the range test's earlier pick), differing only in how flips are drawn
    ("whitening + 64x shifts, random flips", {"stem": "whiten", "bn_bias_lr_scale": 64.0, "max_lr": 2.22}),
    ("whitening + 64x shifts, alternating flips",
     {"stem": "whiten", "bn_bias_lr_scale": 64.0, "max_lr": 2.22, "flip_mode": "alternate"}),
    # airbench's own LR and decay at batch 256 (weight_decay 1.33e-3 at lr 0.375: 5e-4 of the weights per
    # step), against the pair's first row (the preset's path: the range test's LR, weight_decay 5e-4)
    ("whitening + 64x shifts, airbench's LR and weight decay",
     {"stem": "whiten", "bn_bias_lr_scale": 64.0, "max_lr": SETUP["max_lr"], "weight_decay": 1.33e-3}),
]


def spec_for(archive: Path, **extra: Any) -> TrainSpec:
    return TrainSpec.model_validate({
        "preset": "cifar10-fast", "dataset_path": archive.name, "device": "cpu", "compile": False,
        "batch_size": SETUP["batch_size"], "epochs": SETUP["epochs"], "train_subset": SETUP["train_images"],
        "max_lr": SETUP["max_lr"], "tta_flip": False, "seed": SETUP["seed"], **extra})


def learned_stem(model: nn.Sequential) -> None:
    """Swap the whitening stem for the learned 3x3 conv + BatchNorm resnet_fast had before."""
    width = model[0].out_channels
    model[0] = nn.Sequential(nn.Conv2d(model[0].in_channels, width, 3, padding="same", bias=False),
                             FixedScaleBatchNorm(width))


def optimizer(bn_bias_lr_scale: float, lookahead: bool = False, weight_decay: float = 5e-4) -> dict[str, Any]:
    return {"name": "sgd", "momentum": 0.85, "nesterov": True, "weight_decay": weight_decay,
            "bn_bias_lr_scale": bn_bias_lr_scale, "lookahead": lookahead}


def range_test_pick(archive: Path, bn_bias_lr_scale: float) -> dict[str, Any]:
    """The preset's sweep (fewer steps) on the same subset, through the range-test job."""
    base = spec_for(archive, optimizer=optimizer(bn_bias_lr_scale))
    fields = base.model_dump(include={"dataset", "dataset_path", "model", "batch_size", "optimizer", "augment",
                                      "train_subset", "seed", "device", "normalize"})
    sweep = {**base.range_test.model_dump(), "num_iter": SETUP["sweep_iter"]}
    spec = RangeTestSpec(**fields, **sweep, policy=base.policy)
    summary = run_job(spec, Path(tempfile.mkdtemp(prefix="fast-net-sweep-")), data_dir=archive.parent)
    return {key: summary[key] for key in ("recommendation", "suggestions", "stop_reason", "warnings", "seconds")}


def run_variant(archive: Path, data, name: str, options: dict[str, Any], max_lr: float) -> dict[str, Any]:
    spec = spec_for(archive, optimizer=optimizer(options["bn_bias_lr_scale"], options.get("lookahead", False),
                                                 options.get("weight_decay", 5e-4)),
                    max_lr=max_lr, augment={"translate": 2, "flip": True,
                                            "flip_mode": options.get("flip_mode", "random")})
    iters = steps_per_epoch(len(data.train), spec.batch_size)
    schedule = schedule_from_spec(spec, base_lr=spec.max_lr / spec.div_factor, max_lr=spec.max_lr,
                                  iters_per_epoch=iters)
    model = fresh_model(spec, data, config_from_spec(spec, schedule, "cpu").device)
    if options["stem"] == "learned":
        learned_stem(model)
    started = time.perf_counter()
    result = train(model, data, replace(config_from_spec(spec, schedule, "cpu")))
    seconds = time.perf_counter() - started
    scaling = normalization(data, spec.normalize)
    views = {"none": {}, "flip": {"tta_flip": True}, "flip+translate": {"tta_flip": True, "tta_translate": True}}
    accuracy = {view: round(predict(model, data.test, mean=scaling["mean"], std=scaling["std"], **kw).accuracy, 4)
                for view, kw in views.items()}
    return {"variant": name, **options, "max_lr": max_lr, "test_acc": accuracy,
            "val_acc_by_epoch": result.history["val_acc"], "train_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cifar10-jpg.tar.gz")
    for name, value in SETUP.items():  # smaller values make a smoke test (tests/bench/test_fast_net_cpu.py)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))),
                        help="comma-separated indexes into VARIANTS (default: all)")
    args = parser.parse_args()
    SETUP.update({name: getattr(args, name) for name in SETUP})
    chosen = [VARIANTS[int(i)] for i in args.variants.split(",")]
    archive = args.data.resolve()
    data = load_dataset("cifar10", archive.parent, path=archive.name)
    n, m = SETUP["train_images"], SETUP["test_images"]
    data = make_dataset(data.name, sample(data.train, n), sample(data.test, m), data.classes)
    print(json.dumps({"setup": SETUP}), flush=True)
    picked = None
    for name, options in chosen:
        max_lr = options["max_lr"]
        if max_lr == "range_test":
            if picked is None:
                picked = range_test_pick(archive, options["bn_bias_lr_scale"])
                print(json.dumps({"range_test": picked}, default=str), flush=True)
            if picked["recommendation"] is None:
                print(json.dumps({"variant": name, "skipped": "the range test found no usable LR"}), flush=True)
                continue
            max_lr = picked["recommendation"]["max_lr"]
        print(json.dumps(run_variant(archive, data, name, options, max_lr)), flush=True)


if __name__ == "__main__":
    main()
